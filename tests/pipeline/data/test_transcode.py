"""``stpa transcode`` and the workflows' transcode step (pipeline/data/transcode.py) on a real local Ray: a
generated UCF101-layout dataset whose videos are replaced by index-coded ones before ``prepare``, so every copy is
judged by plain PyAV and the codes drawn into its frames. Resume, settings changes, a broken video among good
ones, bad input, and the step that replaces prepare's manifests for every later step."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pipeline import schema, storage
from pipeline.cli import main as cli_main
from pipeline.data import synth
from pipeline.data.manifest import read_manifest
from pipeline.data.prepare import dataset_root_paths, prepare_manifest
from pipeline.data.transcode import REPORT_FILE, copy_uri_of, transcode_manifests
from pipeline.errors import UserError
from pipeline.video.transcode import TranscodeSettings
from tests.pipeline.video.test_frames import read_code, write_video
from tests.pipeline.video.test_transcode import decoded, packets

NUM_FRAMES = 40
# The generator's AVI names, re-filled with index-coded video: MPEG-4 part 2 (read by seeking) and H.264 with
# B-frames (read by a sequential decode: AVI stores no presentation times).
CODECS = (("mpeg4", {}), ("libx264", {"options": {"g": "250", "bf": "2"}}))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """(data root, {split: manifest URI}) of 3 classes x 2 index-coded videos (one train, one test each)."""
    root = tmp_path_factory.mktemp("ucf")
    summary = synth.synthesize(
        "ucf101", str(root), num_classes=3, videos_per_class=2, width=64, height=48, num_frames=8
    )
    videos, annotations = dataset_root_paths("ucf101", str(root))
    for i, video in enumerate(summary.videos):
        codec, options = CODECS[i % 2]
        write_video(Path(videos) / video.path, "avi", codec, num_frames=NUM_FRAMES, **options)
    report = prepare_manifest(
        "ucf101", videos, annotations, str(root / "manifests"), val_fraction=0, use_ray=False
    )
    assert set(report.decode_methods) == {"seek", "sequential"}
    return str(root), report.manifest_uris


def assert_copies(manifest_uri: str, source_uri: str, short_side: int) -> None:
    """Every row of the new manifest: the copy decodes to codes 0..N-1 at the planned size, ids and labels kept."""
    table, _ = read_manifest(manifest_uri)
    source, _ = read_manifest(source_uri)
    assert table.column(schema.VIDEO_ID).to_pylist() == source.column(schema.VIDEO_ID).to_pylist()
    assert table.column(schema.LABEL).to_pylist() == source.column(schema.LABEL).to_pylist()
    factor = 96 // short_side
    for row in table.to_pylist():
        assert row[schema.VIDEO_URI].startswith(str(Path(manifest_uri).parent / "videos"))
        assert (row[schema.NUM_FRAMES], row[schema.WIDTH], row[schema.HEIGHT]) == (
            NUM_FRAMES,
            128 // factor,
            short_side,
        )
        assert row[schema.DECODE_METHOD] == "seek"
        _, frames, _ = decoded(row[schema.VIDEO_URI])
        big = [frame.repeat(factor, axis=0).repeat(factor, axis=1) for frame in frames]
        assert [read_code(frame) for frame in big] == list(range(NUM_FRAMES))
    metadata = json.loads(table.schema.metadata[schema.META_TRANSCODE])
    assert metadata["source_manifest"] == source_uri and metadata["settings"]["short_side"] == short_side


@pytest.mark.slow
def test_transcode_resume_settings_and_a_broken_video(
    dataset: tuple[str, dict[str, str]], tmp_path: Path, ray_local, capsys: pytest.CaptureFixture
) -> None:
    _, manifests = dataset
    out = tmp_path / "copies"
    argv = ["transcode", "--out", str(out), "--short-side", "48"]
    argv += ["--manifest", manifests["train"], "--manifest", manifests["test"]]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "6 videos" in printed and "6 transcoded, 0 reused, 0 failed" in printed
    for split in ("train", "test"):
        assert_copies(str(out / f"{split}.parquet"), manifests[split], 48)
    copies = sorted(out.glob("videos/*.mp4"))
    assert len(copies) == 6 and all(Path(f"{copy}.json").exists() for copy in copies)
    assert all(
        [key for _, _, key, _ in packets(str(copy))] == [i % 16 == 0 for i in range(NUM_FRAMES)]
        for copy in copies
    )
    stamps = {copy: copy.stat().st_mtime_ns for copy in copies}

    # Same settings: every copy reused, none rewritten, no task.
    report = transcode_manifests(
        [manifests["train"], manifests["test"]], str(out), TranscodeSettings(short_side=48)
    )
    assert (report.num_transcoded, report.num_reused, report.failures) == (0, 6, [])
    assert {copy: copy.stat().st_mtime_ns for copy in copies} == stamps

    # A source replaced by a broken file (the manifest is now stale): that video fails, the others are reused.
    train, _ = read_manifest(manifests["train"])
    broken_id, broken_uri = (
        train.column(schema.VIDEO_ID)[0].as_py(),
        train.column(schema.VIDEO_URI)[0].as_py(),
    )
    original = Path(broken_uri).read_bytes()
    Path(broken_uri).write_bytes(original[: len(original) // 3])
    try:
        report = transcode_manifests([manifests["train"]], str(out), TranscodeSettings(short_side=48))
        assert (report.num_transcoded, report.num_reused) == (0, 2)
        assert [(f.video_id, f.uri) for f in report.failures] == [(broken_id, broken_uri)]
        new_train, _ = read_manifest(str(out / "train.parquet"))
        assert broken_id not in new_train.column(schema.VIDEO_ID).to_pylist() and new_train.num_rows == 2
        written = json.loads((out / REPORT_FILE).read_text())
        assert written["failures"][0]["video_id"] == broken_id and written["failures"][0]["reason"]
    finally:
        Path(broken_uri).write_bytes(original)

    # The source restored (a new modification time) and another keyframe interval: everything is made again.
    report = transcode_manifests(
        [manifests["train"]], str(out), TranscodeSettings(short_side=48, keyframe_interval=8)
    )
    assert (report.num_transcoded, report.num_reused, report.failures) == (3, 0, [])
    for row in read_manifest(str(out / "train.parquet"))[0].to_pylist():
        assert [key for _, _, key, _ in packets(row[schema.VIDEO_URI])] == [
            i % 8 == 0 for i in range(NUM_FRAMES)
        ]


@pytest.mark.slow
def test_workflow_step_replaces_prepares_manifests(
    dataset: tuple[str, dict[str, str]], tmp_path: Path, ray_local
) -> None:
    """prepare -> transcode through the workflow engine: the step's outputs are prepare's with the copies'
    manifests (what train, evaluate and register then read); a re-run skips it."""
    from pipeline.workflow import Step, run_workflow
    from workflows import steps

    root, _ = dataset
    config = {"dataset": "ucf101", "split": 1, "val_fraction": 0.0, "data_root": root}
    prepare = Step("prepare", steps.prepare, config=config, num_cpus=1)
    transcode = Step(
        "transcode",
        steps.transcode,
        config={"short_side": 48, "keyframe_interval": 16},
        inputs={"prepare": prepare},
    )
    outputs = run_workflow([transcode], str(tmp_path / "runs"), "wf", log=lambda line: None)
    before, after = outputs["prepare"], outputs["transcode"]
    assert after["num_classes"] == before["num_classes"] == 3
    assert (after["num_train"], after["num_test"], after["val_manifest"]) == (3, 3, None)
    for split in ("train", "test"):
        assert after[f"{split}_manifest"] != before[f"{split}_manifest"]
        assert after[f"{split}_manifest"].startswith(str(tmp_path / "runs" / "wf" / "transcode"))
        assert after[f"{split}_sha256"] == steps._sha256(after[f"{split}_manifest"])
        assert after["source_manifests"][split] == before[f"{split}_manifest"]
        assert_copies(after[f"{split}_manifest"], before[f"{split}_manifest"], 48)
    assert after["num_transcode_failures"] == 0
    lines: list[str] = []
    run_workflow([transcode], str(tmp_path / "runs"), "wf", log=lines.append)
    assert [line.split(":")[0] for line in lines] == ["skip prepare", "skip transcode"]


def _workflow_args(extra: list[str], sweep: bool = False) -> argparse.Namespace:
    from workflows.training import build_parser

    return build_parser("ucf101", sweep).parse_args(["--storage", "/tmp/unused", *extra])


@pytest.mark.parametrize("sweep", [False, True])
def test_transcode_flag_feeds_every_later_step(sweep: bool) -> None:
    """With --transcode every step after prepare takes the transcode step as its ``prepare`` input; without it,
    the DAG and the workflow id are what they were."""
    from pipeline.workflow import topological_order
    from workflows.training import build_workflow

    targets, workflow_id, *_ = build_workflow(
        "ucf101", _workflow_args(["--transcode", "--clip-cache"], sweep), sweep
    )
    order = topological_order(targets)
    names = [step.name for step in order]
    assert names.index("prepare") < names.index("transcode") < names.index("cache")
    transcode = order[names.index("transcode")]
    assert transcode.config == {"short_side": 256, "keyframe_interval": 16}
    assert transcode.inputs["prepare"].name == "prepare"
    later = [step for step in order if "prepare" in step.inputs and step.name != "transcode"]
    assert {step.name for step in later} == {"cache", "train", "evaluate", "register"} | (
        {"sweep"} if sweep else set()
    )
    assert all(step.inputs["prepare"] is transcode for step in later)

    plain, plain_id, *_ = build_workflow("ucf101", _workflow_args(["--clip-cache"], sweep), sweep)
    assert "transcode" not in [step.name for step in topological_order(plain)]
    assert plain_id != workflow_id
    with pytest.raises(UserError, match="keyframe_interval"):
        build_workflow("ucf101", _workflow_args(["--transcode", "--transcode-keyframe-interval", "0"]), sweep)


def test_bad_input_fails_before_any_work(dataset: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    _, manifests = dataset
    folder = str(Path(manifests["train"]).parent)
    with pytest.raises(ValueError, match="would overwrite an input manifest"):
        transcode_manifests([manifests["train"]], folder, TranscodeSettings())
    with pytest.raises(ValueError, match="share a file name"):
        transcode_manifests(
            [manifests["train"], str(tmp_path / "other" / "train.parquet")],
            str(tmp_path),
            TranscodeSettings(),
        )
    storage.write_bytes(str(tmp_path / "bad.parquet"), b"not parquet")
    with pytest.raises(ValueError, match="bad.parquet: not a Parquet manifest"):
        transcode_manifests([str(tmp_path / "bad.parquet")], str(tmp_path / "out"), TranscodeSettings())
    for bad in ("../escape", "/abs", "a//b", "a\\b"):
        with pytest.raises(ValueError, match="cannot name a file"):
            copy_uri_of(str(tmp_path), bad)
    assert copy_uri_of("s3://bucket/out", "class/video") == "s3://bucket/out/videos/class/video.mp4"
    assert not (tmp_path / "out").exists()
