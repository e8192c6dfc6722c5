"""Manifest preparation end to end on generated datasets: Parquet through fsspec with the schema of
pipeline.schema, missing and unreadable videos reported (never dropped silently), the Ray probe path once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schema, storage
from pipeline.cli import main as cli_main
from pipeline.data import synth
from pipeline.data.datasets import AnnotationError
from pipeline.data.manifest import read_manifest
from pipeline.data.prepare import dataset_root_paths, prepare_manifest
from pipeline.video.decode import index_from_bytes, read_frames
from pipeline.video.encode import encode_video, frame_index_of, index_frames

SMALL = {"width": 64, "height": 48, "num_frames": 16, "fps": 8.0}


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.SynthSummary]:
    root = tmp_path_factory.mktemp("ucf")
    return root, synth.synthesize("ucf101", str(root), num_classes=3, videos_per_class=4, seed=1, **SMALL)


def _copy(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    return copy


def test_ucf101_manifest_rows_schema_and_report(
    ucf_root: tuple[Path, synth.SynthSummary], tmp_path: Path
) -> None:
    root, summary = ucf_root
    videos, annotations = dataset_root_paths("ucf101", str(root))
    report = prepare_manifest("ucf101", videos, annotations, str(tmp_path / "out"), split=2)
    # 3 classes x 3 training videos, each its own group (g01..): one group per class goes to val.
    assert report.num_listed == {"train": 6, "val": 3, "test": 3} and report.num_written == report.num_listed
    assert report.val_split == {
        "method": "groups",
        "fraction": 0.1,
        "seed": 0,
        "num_train_listed": 9,
        "num_val": 3,
        "num_groups": 3,
        "classes_without_val": [],
    }
    assert report.val_classes_empty == []
    assert report.missing == [] and report.unreadable == []
    assert report.decode_methods == {
        "seek": 12
    }  # MPEG-4 part 2 in AVI: exact by seeking, decord not proven there
    assert report.probe_backend == "threads"
    truth = {v.video_id: v for v in summary.videos}
    for split in schema.SPLITS:
        uri = str(tmp_path / "out" / f"{split}.parquet")
        assert report.manifest_uris[split] == uri
        table, class_names = read_manifest(uri)
        assert class_names == list(summary.class_names)
        assert table.schema.metadata[schema.META_DATASET] == b"ucf101"
        assert table.schema.metadata[schema.META_SPLIT] == b"2"
        assert json.loads(table.schema.metadata[schema.META_VAL_SPLIT]) == report.val_split
        assert (
            table.schema.remove_metadata()
            == schema.manifest_schema("ucf101", class_names, False, 2).remove_metadata()
        )
        for row in table.to_pylist():
            assert row[schema.SPLIT] == split
            assert row[schema.LABEL] == truth[row[schema.VIDEO_ID]].label
            assert row[schema.VIDEO_URI] == str(root / "UCF-101" / truth[row[schema.VIDEO_ID]].path)
            assert (row[schema.NUM_FRAMES], row[schema.FPS], row[schema.WIDTH], row[schema.HEIGHT]) == (
                16,
                8.0,
                64,
                48,
            )
            assert row[schema.DURATION] == pytest.approx(2.0)
            assert row[schema.DECODE_METHOD] == "seek"
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["num_written"] == {"train": 6, "val": 3, "test": 3}
    assert written["val_split"]["method"] == "groups"
    assert written["decode_methods"] == {"seek": 12}
    assert "train: 6 of 6 listed videos" in report.summary()
    assert "val: 3 of 9 training videos (fraction 0.1, groups, seed 0)" in report.summary()


def test_val_fraction_zero_writes_no_val_manifest(
    ucf_root: tuple[Path, synth.SynthSummary], tmp_path: Path
) -> None:
    root, _ = ucf_root
    out = tmp_path / "out"
    report = prepare_manifest("ucf101", *dataset_root_paths("ucf101", str(root)), str(out), val_fraction=0)
    assert report.num_written == {"train": 9, "test": 3} and set(report.manifest_uris) == {"train", "test"}
    assert not (out / "val.parquet").exists() and report.val_split["method"] == "none"
    assert "val: none carved" in report.summary()
    with pytest.raises(ValueError, match="val fraction must be in"):
        prepare_manifest("ucf101", *dataset_root_paths("ucf101", str(root)), str(out), val_fraction=1.0)


def test_a_class_without_val_videos_is_reported_not_an_error(
    ucf_root: tuple[Path, synth.SynthSummary], tmp_path: Path
) -> None:
    """Val is small: a class may lose its only val video (here: deleted). Train and test keep their check."""
    root = _copy(ucf_root[0], tmp_path)
    first = prepare_manifest("ucf101", *dataset_root_paths("ucf101", str(root)), str(tmp_path / "a"))
    table, class_names = read_manifest(first.manifest_uris["val"])
    gone = table.to_pylist()[0]
    Path(gone[schema.VIDEO_URI]).unlink()
    report = prepare_manifest("ucf101", *dataset_root_paths("ucf101", str(root)), str(tmp_path / "b"))
    assert report.val_classes_empty == [class_names[gone[schema.LABEL]]]
    assert report.num_written["val"] == 2 and "warning: no val video for 1 classes" in report.summary()


def test_missing_and_unreadable_videos_are_reported_and_left_out(
    ucf_root: tuple[Path, synth.SynthSummary], tmp_path: Path
) -> None:
    root = _copy(ucf_root[0], tmp_path)
    train = [v for v in ucf_root[1].videos if v.split == "train"]
    (root / "UCF-101" / train[0].path).unlink()
    (root / "UCF-101" / train[1].path).write_bytes(b"RIFF this is not a video at all" * 10)
    videos, annotations = dataset_root_paths("ucf101", str(root))
    report = prepare_manifest("ucf101", videos, annotations, str(tmp_path / "out"))
    assert report.num_listed["train"] + report.num_listed["val"] == 9
    assert report.num_written["train"] + report.num_written["val"] == 7
    [missing] = report.missing
    assert (missing.video_id, missing.reason) == (train[0].video_id, "file not found")
    assert missing.split in ("train", "val")  # the official training list, possibly carved into val
    assert missing.uri == str(root / "UCF-101" / train[0].path)
    assert missing.listed_at == f"{annotations}/trainlist01.txt:1"
    [unreadable] = report.unreadable
    assert unreadable.video_id == train[1].video_id and unreadable.reason
    for split in ("train", "val"):
        table, _ = read_manifest(report.manifest_uris[split])
        assert set(table[schema.VIDEO_ID].to_pylist()).isdisjoint({train[0].video_id, train[1].video_id})
    written = json.loads(Path(report.report_uri).read_text())
    assert [p["video_id"] for p in written["missing"]] == [train[0].video_id]
    assert [p["video_id"] for p in written["unreadable"]] == [train[1].video_id]
    assert "missing: 1" in report.summary() and "unreadable: 1" in report.summary()


def test_a_split_with_no_usable_video_fails_after_writing_the_report(
    ucf_root: tuple[Path, synth.SynthSummary], tmp_path: Path
) -> None:
    root = _copy(ucf_root[0], tmp_path)
    for video in ucf_root[1].videos:
        if video.split == "test":
            (root / "UCF-101" / video.path).unlink()
    videos, annotations = dataset_root_paths("ucf101", str(root))
    with pytest.raises(ValueError, match="no video of the test split could be used"):
        prepare_manifest("ucf101", videos, annotations, str(tmp_path / "out"))
    assert len(json.loads((tmp_path / "out" / "report.json").read_text())["missing"]) == 3
    with pytest.raises(FileNotFoundError, match="videos folder not found"):
        prepare_manifest("ucf101", str(root / "nope"), annotations, str(tmp_path / "out"))
    (root / "ucfTrainTestlist" / "trainlist01.txt").write_text("Unknown/v_x.avi 1\r\n")
    with pytest.raises(AnnotationError, match=r"trainlist01.txt:1: unknown class 'Unknown'"):
        prepare_manifest("ucf101", videos, annotations, str(tmp_path / "out"))


def test_class_folder_spelled_differently_from_the_lists_is_matched(
    ucf_root: tuple[Path, synth.SynthSummary], tmp_path: Path
) -> None:
    """Repacked UCF101 archives spell a class folder otherwise than the list files (``HandStandPushups`` on disk,
    ``HandstandPushups/...`` in the lists): the videos are found, not reported missing."""
    root = _copy(ucf_root[0], tmp_path)
    class_name = ucf_root[1].class_names[1]
    renamed = class_name.swapcase()
    (root / "UCF-101" / class_name).rename(root / "UCF-101" / renamed)
    report = prepare_manifest("ucf101", *dataset_root_paths("ucf101", str(root)), str(tmp_path / "out"))
    assert report.missing == [] and report.num_written == report.num_listed
    table, _ = read_manifest(report.manifest_uris["train"])
    moved = [uri for uri in table[schema.VIDEO_URI].to_pylist() if f"/{renamed}/" in uri]
    assert moved and all(Path(uri).is_file() for uri in moved)


def test_a_class_without_videos_in_a_split_is_an_error_naming_it(
    ucf_root: tuple[Path, synth.SynthSummary], tmp_path: Path
) -> None:
    root = _copy(ucf_root[0], tmp_path)
    class_name = ucf_root[1].class_names[2]
    for video in ucf_root[1].videos:
        if video.split == "test" and video.path.startswith(class_name + "/"):
            (root / "UCF-101" / video.path).unlink()
    with pytest.raises(ValueError, match=f"class '{class_name}' has no usable video in the test split"):
        prepare_manifest("ucf101", *dataset_root_paths("ucf101", str(root)), str(tmp_path / "out"))
    assert (tmp_path / "out" / "report.json").is_file()


def test_one_bad_video_stays_with_that_video(
    ucf_root: tuple[Path, synth.SynthSummary], tmp_path: Path
) -> None:
    """A video whose frame size changes mid-stream (joined files) is written, read at one size; a file that only
    looks like a video is reported; the other videos of the folder are written either way."""
    root = _copy(ucf_root[0], tmp_path)
    folder = root / "UCF-101"
    class_name = ucf_root[1].class_names[0]
    joined = str(folder / class_name / "joined.ts")
    first = index_frames(10, 64, 48)
    second = index_frames(10, 80, 64)
    parts = [
        encode_video(first, 8, container_format="mpegts"),
        encode_video(second, 8, container_format="mpegts"),
    ]
    Path(joined).write_bytes(b"".join(parts))  # MPEG-TS parts join by concatenation, as `cat a.ts b.ts` does
    (folder / class_name / "fake.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really" * 20)
    report = prepare_manifest("folder", str(folder), "", str(tmp_path / "out"))
    assert [p.video_id for p in report.unreadable] == [f"{class_name}/fake"]
    assert sum(report.num_written.values()) == 13
    rows = {
        r[schema.VIDEO_ID]: r
        for split in schema.SPLITS
        for r in read_manifest(report.manifest_uris[split])[0].to_pylist()
    }
    row = rows[f"{class_name}/joined"]
    assert (row[schema.NUM_FRAMES], row[schema.WIDTH], row[schema.HEIGHT]) == (20, 64, 48)
    index = index_from_bytes(row[schema.VIDEO_URI], row[schema.FRAME_INDEX])
    frames = read_frames(row[schema.VIDEO_URI], [9, 10, 19], index=index)
    assert frames.shape == (3, 48, 64, 3)  # after the size change: scaled to the first frame's size
    assert [frame_index_of(f) for f in frames] == [9, 0, 9]


def test_charades_manifest_takes_duration_from_csv_and_keeps_segments(tmp_path: Path) -> None:
    summary = synth.synthesize("charades", str(tmp_path / "data"), num_classes=4, videos_per_class=3, **SMALL)
    # A video whose CSV length differs from its decoded length: the manifest keeps the annotation's.
    train_csv = tmp_path / "data" / "Charades_v1_train.csv"
    lines = train_csv.read_text().split("\n")
    lines[1] = lines[1].rsplit(",", 1)[0] + ",9.75"
    train_csv.write_text("\n".join(lines))
    changed = lines[1].split(",")[0]
    videos, annotations = dataset_root_paths("charades", str(tmp_path / "data"))
    assert videos == str(tmp_path / "data" / "Charades_v1_480") and annotations == str(tmp_path / "data")
    report = prepare_manifest("charades", videos, annotations, "memory://stpa-test-prepare/charades")
    # 9 training videos, each in val with probability 0.1 by its hashed id: one here.
    assert report.split is None and report.num_written == {"train": 8, "val": 1, "test": 3}
    assert report.val_split["method"] == "hash"
    truth = {v.video_id: v for v in summary.videos}
    rows = []
    for split in schema.SPLITS:
        table, class_names = read_manifest(f"memory://stpa-test-prepare/charades/{split}.parquet")
        assert class_names == ["red square", "green disk", "blue triangle", "yellow cross"]
        assert schema.is_multi_label(table.schema) and schema.LABEL not in table.column_names
        rows += table.to_pylist()
    assert len(rows) == 12 and {row[schema.SPLIT] for row in rows} == set(schema.SPLITS)
    for row in rows:
        video = truth[row[schema.VIDEO_ID]]
        assert tuple(row[schema.LABELS]) == video.labels
        assert [(s["label"], s["start"], s["end"]) for s in row[schema.SEGMENTS]] == [
            (s.label, pytest.approx(s.start), pytest.approx(s.end)) for s in video.segments
        ]
        assert row[schema.DURATION] == (9.75 if row[schema.VIDEO_ID] == changed else 2.0)
    assert any(not row[schema.LABELS] for row in rows)  # a video with no action stays, with no labels


def test_hmdb51_manifest_labels_follow_sorted_class_names(tmp_path: Path) -> None:
    summary = synth.synthesize(
        "hmdb51", str(tmp_path / "d"), num_classes=3, videos_per_class=5, seed=4, **SMALL
    )
    videos, annotations = dataset_root_paths("hmdb51", str(tmp_path / "d"))
    report = prepare_manifest("hmdb51", videos, annotations, str(tmp_path / "out"), split=3)
    assert report.num_unused == 3
    assert sum(report.num_written.values()) == 12
    table, class_names = read_manifest(report.manifest_uris["train"])
    assert class_names == sorted(class_names) == list(summary.class_names)
    truth = {v.video_id: v.label for v in summary.videos}
    assert all(truth[r[schema.VIDEO_ID]] == r[schema.LABEL] for r in table.to_pylist())


def test_folder_dataset_by_hash_and_by_lists(
    ucf_root: tuple[Path, synth.SynthSummary], tmp_path: Path
) -> None:
    root, summary = ucf_root
    report = prepare_manifest("folder", str(root / "UCF-101"), "", str(tmp_path / "hash"))
    assert sum(report.num_written.values()) == 12
    table, class_names = read_manifest(report.manifest_uris["test"])
    assert class_names == sorted(summary.class_names)
    assert all(r[schema.VIDEO_ID].count("/") == 1 for r in table.to_pylist())
    report = prepare_manifest(
        "folder", str(root / "UCF-101"), str(root / "ucfTrainTestlist"), str(tmp_path / "lists")
    )
    # folder: val by hashed id (0.1 each), not by groups: 2 of the 9 training videos here.
    assert report.num_written == {"train": 7, "val": 2, "test": 3} and report.val_split["method"] == "hash"
    _, class_names = read_manifest(report.manifest_uris["train"])
    assert class_names == list(summary.class_names)  # classInd.txt order


def test_memory_filesystem_end_to_end_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    root = "memory://stpa-test-prepare/cli"
    assert cli_main(["synth", "ucf101", "--out", root, "--num-classes", "3", "--videos-per-class", "2",
                     "--width", "64", "--height", "48", "--num-frames", "8"]) == 0  # fmt: skip
    # One training video per class: no group to spare for val, so --val-fraction 0 (the last epoch is kept).
    assert cli_main(["prepare", "ucf101", "--data-root", root, "--out", f"{root}/manifest",
                     "--val-fraction", "0"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "train: 3 of 3 listed videos" in printed and "val: none carved" in printed
    table, class_names = read_manifest(f"{root}/manifest/train.parquet")
    assert table.num_rows == 3 and len(class_names) == 3
    assert all(uri.startswith("memory://") for uri in table[schema.VIDEO_URI].to_pylist())
    assert json.loads(storage.read_text(f"{root}/manifest/report.json"))["num_written"] == {
        "train": 3,
        "test": 3,
    }


def test_read_manifest_refuses_what_is_not_a_valid_manifest(
    ucf_root: tuple[Path, synth.SynthSummary], tmp_path: Path
) -> None:
    root, _ = ucf_root
    report = prepare_manifest("ucf101", *dataset_root_paths("ucf101", str(root)), str(tmp_path / "out"))
    table, _ = read_manifest(report.manifest_uris["train"])
    cases = {
        "no_metadata.parquet": (table.replace_schema_metadata(None), "not an stpa manifest"),
        "bad_label.parquet": (
            table.set_column(
                table.column_names.index(schema.LABEL), schema.LABEL, pa.array([7] * table.num_rows)
            ),
            "label 7 out of range for 3 classes",
        ),
        "no_fps.parquet": (table.drop_columns([schema.FPS]), "column 'fps' is missing"),
        "bad_split.parquet": (
            table.set_column(
                table.column_names.index(schema.SPLIT), schema.SPLIT, pa.array(["dev"] * table.num_rows)
            ),
            "column 'split' holds 'dev'",
        ),
        "duplicate.parquet": (pa.concat_tables([table, table]), "appears more than once"),
    }
    for name, (bad_table, message) in cases.items():
        pq.write_table(bad_table, tmp_path / name)
        with pytest.raises(ValueError, match=message):
            read_manifest(str(tmp_path / name))


@pytest.mark.slow
def test_ray_probe_path_gives_the_same_manifest(
    ucf_root: tuple[Path, synth.SynthSummary], tmp_path: Path
) -> None:
    import ray

    root, _ = ucf_root
    videos, annotations = dataset_root_paths("ucf101", str(root))
    threads = prepare_manifest("ucf101", videos, annotations, str(tmp_path / "threads"), use_ray=False)
    assert not ray.is_initialized()
    with_ray = prepare_manifest(
        "ucf101", videos, annotations, str(tmp_path / "ray"), use_ray=True, num_workers=1
    )
    assert not ray.is_initialized()  # the local Ray it started is shut down
    assert with_ray.probe_backend == "ray" and threads.probe_backend == "threads"
    for split in schema.SPLITS:
        assert read_manifest(with_ray.manifest_uris[split])[0].equals(
            read_manifest(threads.manifest_uris[split])[0]
        )


def test_dataset_root_paths_follow_the_official_layouts(tmp_path: Path) -> None:
    assert dataset_root_paths("ucf101", "s3://b/ucf") == ("s3://b/ucf/UCF-101", "s3://b/ucf/ucfTrainTestlist")
    assert dataset_root_paths("hmdb51", "/d") == ("/d/hmdb51_org", "/d/testTrainMulti_7030_splits")
    assert dataset_root_paths("folder", "/d/own") == ("/d/own", "")
    (tmp_path / "Charades_v1").mkdir()
    assert dataset_root_paths("charades", str(tmp_path)) == (str(tmp_path / "Charades_v1"), str(tmp_path))
    (tmp_path / "Charades_v1_480").mkdir()
    assert dataset_root_paths("charades", str(tmp_path))[0] == str(tmp_path / "Charades_v1_480")
    with pytest.raises(FileNotFoundError, match="neither Charades_v1_480/ nor Charades_v1/"):
        dataset_root_paths("charades", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="dataset must be one of"):
        dataset_root_paths("kinetics", "/d")
