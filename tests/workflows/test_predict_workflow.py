"""The registered champion at work: batch prediction (``workflows/predict.py``), REST serving (``mlflow models
serve``) and the model card, all against a model that a real training workflow registers at the start.

One module-scoped fixture runs ``workflows/train_ucf101.py``'s workflow in this process on one local Ray (the
smoke preset, 3 generated classes, 6 videos a class, 1 epoch, 1 Ray Train worker; MLflow on a SQLite file): data,
prepare, train, evaluate, register. A second fixture runs the batch prediction once over a folder of the test
videos plus a file that is no video; the other tests reuse both. The REST test runs the real ``mlflow models
serve --env-manager local`` process on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import schema
from pipeline.config import metric_on_test_split
from pipeline.data.manifest import read_manifest
from pipeline.evaluation import predict as columns
from tests.mlflow_server import model_server

pytestmark = pytest.mark.slow

SHARD_SIZE = 3  # 6 test videos + 1 broken file: shards of 3, 3 and 1
CHAMPION = "models:/stpa-ucf101@champion"


@dataclasses.dataclass(frozen=True)
class Trained:
    root: Path
    tracking_uri: str
    run_id: str
    test_manifest: str
    class_names: list[str]
    videos: Path  # a folder: the test videos in class folders, broken.avi and notes.txt
    seconds: float


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train, evaluate and register ``stpa-ucf101`` version 1 (champion) with the training workflow."""
    import ray
    import ray.data

    from workflows.training import main as train_main

    root = tmp_path_factory.mktemp("predict_workflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ray.init(num_cpus=3, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)  # what the workflow's steps log and register to
        start = time.monotonic()
        arguments = ["--storage", str(root / "runs"), "--epochs", "1", "--num-workers", "1"]
        arguments += ["--synth-classes", "3", "--synth-videos-per-class", "6", "--workflow-id", "wf"]
        assert train_main("ucf101", arguments) == 0
        seconds = time.monotonic() - start
        prepared = json.loads(next((root / "runs" / "wf" / "prepare").glob("*/outputs.json")).read_text())
        test_table, class_names = read_manifest(prepared["test_manifest"])
        videos = root / "videos"
        for uri_of_video in test_table.column(schema.VIDEO_URI).to_pylist():
            target = videos / Path(uri_of_video).parent.name / Path(uri_of_video).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(uri_of_video, target)
        (videos / "broken.avi").write_bytes(b"not a video at all")
        (videos / "notes.txt").write_text("no video extension: not listed\n")
        registered = json.loads(next((root / "runs" / "wf" / "register").glob("*/outputs.json")).read_text())
        assert registered["version"] == "1" and registered["is_champion"]
        train = json.loads(next((root / "runs" / "wf" / "train").glob("*/outputs.json")).read_text())
        yield Trained(
            root, uri, train["mlflow_run_id"], prepared["test_manifest"], class_names, videos, seconds
        )
    ray.shutdown()


def _predict(trained: Trained, capsys, *arguments: str) -> tuple[int, dict | None, str]:
    """``workflows/predict.py`` in this process: (exit code, the JSON summary line or None, stderr)."""
    from workflows.predict import main

    code = main(["--tracking-uri", trained.tracking_uri, *arguments])
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith('{"workflow_id"')]
    return code, (json.loads(lines[-1]) if lines else None), captured.err


def _read(out: Path):
    """Every shard's rows, in shard order, as one pandas DataFrame."""
    import pandas as pd

    return pd.concat(
        [pq.read_table(p).to_pandas() for p in sorted(out.glob("part-*.parquet"))], ignore_index=True
    )


@pytest.fixture(scope="module")
def predicted(trained):
    """The champion's batch prediction over the videos folder, in shards of 3: (out folder, summary)."""
    from workflows.predict import main

    out = trained.root / "predictions"
    start = time.monotonic()
    assert main(["--tracking-uri", trained.tracking_uri, "--model", CHAMPION, "--videos", str(trained.videos),
                 "--out", str(out), "--shard-size", str(SHARD_SIZE), "--top-k", "2"]) == 0  # fmt: skip
    seconds = time.monotonic() - start
    summary = json.loads((next((out / "_workflow").glob("*/predict/*/outputs.json"))).read_text())
    return out, summary, seconds


def test_batch_prediction_scores_every_video_as_the_registered_model_does(trained, predicted):
    import mlflow

    from pipeline.tracking.runs import process_uris

    out, summary, seconds = predicted
    print(f"training workflow {trained.seconds:.0f} s, batch prediction {seconds:.0f} s")
    listed = sorted(str(p) for p in trained.videos.rglob("*.avi"))  # notes.txt is no video: not listed
    assert len(listed) == 7 and sorted(p.name for p in out.glob("part-*.parquet")) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    table = pq.read_table(out / "part-00000.parquet")
    assert json.loads(table.schema.metadata[columns.META_CLASS_NAMES]) == trained.class_names
    assert table.schema.metadata[columns.META_MODEL_URI] == b"models:/stpa-ucf101/1"  # the alias, pinned
    rows = _read(out)
    assert rows[columns.VIDEO].tolist() == listed  # every video once, in list order, shard by shard
    assert set(rows[columns.MODEL_NAME]) == {"stpa-ucf101"} and set(rows[columns.MODEL_VERSION]) == {"1"}

    broken = rows[rows[columns.VIDEO].str.endswith("broken.avi")].iloc[0]
    assert broken[columns.ERROR].startswith("PyAV cannot open it")
    assert broken[columns.SCORE_VECTOR] is None and len(broken[columns.TOP_CLASSES]) == 0
    good = rows[rows[columns.ERROR] == ""]
    assert len(good) == 6
    scores = np.stack(good[columns.SCORE_VECTOR].to_list())  # (6, 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)  # softmax probabilities
    for row, vector in zip(good.itertuples(), scores, strict=True):
        best = np.argsort(-vector, kind="stable")[:2]
        assert list(getattr(row, columns.TOP_CLASSES)) == [trained.class_names[i] for i in best]
        np.testing.assert_allclose(getattr(row, columns.TOP_SCORES), vector[best])

    # The registered pyfunc (itself checked against the evaluation path in test_serving) gives the same scores.
    with process_uris(trained.tracking_uri):
        model = mlflow.pyfunc.load_model("models:/stpa-ucf101/1")
    expected = model.predict(good[columns.VIDEO].tolist())[trained.class_names].to_numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert np.abs(scores - scores[0]).max() > 1e-4  # videos score differently: the comparison bites

    assert summary["num_videos"] == 7 and summary["num_scored"] == 6 and summary["num_failed"] == 1
    this_run = summary["this_run"]
    assert this_run["num_clips"] == 6 * 2 and this_run["clips_per_s"] > 0  # smoke test views: 2 per video
    assert this_run["shards_written"] == 3 and list(this_run["failures"]) == [
        str(trained.videos / "broken.avi")
    ]


def test_a_rerun_resumes_by_shard(trained, predicted, capsys):
    """A killed run (its step uncommitted, a shard missing) goes on from the shards already written."""
    out, _, _ = predicted
    before = {p.name: (p.stat().st_mtime_ns, pq.read_table(p)) for p in out.glob("part-*.parquet")}
    (out / "part-00001.parquet").unlink()
    marker = next((out / "_workflow").glob("*/predict/*/_SUCCESS"))
    marker.unlink()

    code, summary, _ = _predict(trained, capsys, "--model", CHAMPION, "--videos", str(trained.videos),
                                "--out", str(out), "--shard-size", str(SHARD_SIZE), "--top-k", "2")  # fmt: skip
    assert code == 0 and summary["ran"]
    assert summary["this_run"]["shards_written"] == 1 and summary["this_run"]["shards_skipped"] == 2
    assert summary["num_videos"] == 7 and summary["num_failed"] == 1  # totals over every shard
    for name, (mtime, table) in before.items():
        path = out / name
        assert pq.read_table(path).equals(table)  # the rewritten shard holds the same rows
        assert (path.stat().st_mtime_ns == mtime) == (name != "part-00001.parquet")  # the others untouched
    assert marker.exists()

    code, summary, _ = _predict(trained, capsys, "--model", CHAMPION, "--videos", str(trained.videos),
                                "--out", str(out), "--shard-size", str(SHARD_SIZE), "--top-k", "2")  # fmt: skip
    assert code == 0 and not summary["ran"]  # everything written: nothing runs


def test_bad_arguments_are_refused_before_anything_runs(trained, predicted, tmp_path, capsys):
    out, _, _ = predicted
    same = ["--videos", str(trained.videos), "--out", str(out), "--shard-size", str(SHARD_SIZE)]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# videos\n{tmp_path / 'broken.avi'}\n\nbroken.avi\n")  # line 4 is line 2, relative
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--model", CHAMPION, *same, "--top-k", "3"], "holds predictions of something else (top_k: 2 there, 3 now)"),
        (["--model", "models:/stpa-ucf101/7", *same], "stpa-ucf101 has no version '7'"),
        (["--model", "models:/stpa-ucf101@staging", *same], "stpa-ucf101 has no alias 'staging'"),
        (["--model", "models:/stpa-hmdb51@champion", *same], "no registered model 'stpa-hmdb51'"),
        (["--model", "runs:/0123456789abcdef/model", *same], "no run '0123456789abcdef'"),
        (["--model", "stpa-ucf101", *same], "give models:/<name>@<alias>"),
        (["--model", CHAMPION, "--videos", str(empty), "--out", str(tmp_path / "o")], "no video files"),
        (["--model", CHAMPION, "--videos", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")], "no such file"),
        (["--model", CHAMPION, "--videos", str(listing), "--out", str(tmp_path / "o")],
         f"{listing}:4: broken.avi is listed twice (first on line 2)"),
        (["--model", CHAMPION, *same, "--shard-size", "0"], "--shard-size must be >= 1"),
    ]  # fmt: skip
    claim = (out / columns.CLAIM_FILE).read_text()
    for arguments, message in cases:
        code, summary, err = _predict(trained, capsys, *arguments)
        assert code == 2 and summary is None and message in err, (arguments, err)
    assert (out / columns.CLAIM_FILE).read_text() == claim and not (tmp_path / "o").exists()


def test_list_file_and_manifest_give_the_folder_runs_predictions(trained, predicted, tmp_path, capsys):
    """A list file (a relative and an absolute path) and a manifest (its frame indices used, not re-indexed)."""
    out, _, _ = predicted
    folder_rows = _read(out).set_index(columns.VIDEO)
    first, second = sorted(trained.videos.rglob("v_*.avi"))[:2]
    listing = tmp_path / "list.txt"
    shutil.copy(first, tmp_path / first.name)
    listing.write_text(f"{first.name}\n{second}\n")
    code, summary, _ = _predict(trained, capsys, "--model", "models:/stpa-ucf101/1", "--videos", str(listing),
                                "--out", str(tmp_path / "from_list"))  # fmt: skip
    assert code == 0 and summary["num_scored"] == 2
    rows = _read(tmp_path / "from_list")
    assert rows[columns.VIDEO].tolist() == [str(tmp_path / first.name), str(second)]
    for video, reference in zip(rows[columns.VIDEO], (first, second), strict=True):
        got = rows.set_index(columns.VIDEO).loc[video, columns.SCORE_VECTOR]
        np.testing.assert_allclose(got, folder_rows.loc[str(reference), columns.SCORE_VECTOR], atol=1e-6)

    run_model = f"runs:/{trained.run_id}/model"
    code, summary, _ = _predict(trained, capsys, "--model", run_model, "--videos", trained.test_manifest,
                                "--out", str(tmp_path / "from_manifest"), "--shard-size", "4")  # fmt: skip
    assert code == 0 and summary["num_scored"] == 6 and summary["num_failed"] == 0
    rows = _read(tmp_path / "from_manifest")
    assert set(rows[columns.MODEL_NAME]) == {run_model} and set(rows[columns.MODEL_VERSION]) == {
        trained.run_id
    }
    manifest, _ = read_manifest(trained.test_manifest)
    assert rows[columns.VIDEO].tolist() == manifest.column(schema.VIDEO_URI).to_pylist()
    for video, vector in zip(rows[columns.VIDEO], rows[columns.SCORE_VECTOR], strict=True):
        copy = trained.videos / Path(video).parent.name / Path(video).name
        np.testing.assert_allclose(vector, folder_rows.loc[str(copy), columns.SCORE_VECTOR], atol=1e-6)


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())  # NaN scores arrive as the JSON token NaN
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_rest_endpoint_scores_videos_and_survives_a_bad_one(trained, predicted, tmp_path):
    out, _, _ = predicted
    batch = _read(out).set_index(columns.VIDEO)
    good = sorted(str(p) for p in trained.videos.rglob("v_*.avi"))[:2]
    bad = str(trained.videos / "broken.avi")
    names = trained.class_names
    with model_server(CHAMPION, trained.tracking_uri, tmp_path) as url:
        code, answer = _post(
            url, {"dataframe_records": [{"video": good[0]}, {"video": bad}, {"video": good[1]}]}
        )
        assert code == 200
        first, broken, last = answer["predictions"]
        assert broken["video"] == bad and broken["error"].startswith("PyAV cannot open it")
        assert all(math.isnan(broken[name]) for name in names)
        for row, video in ((first, good[0]), (last, good[1])):
            assert row["video"] == video and row["error"] == ""
            np.testing.assert_allclose(
                [row[n] for n in names], batch.loc[video, columns.SCORE_VECTOR], atol=1e-5
            )

        # The other input forms MLflow documents for a one-column DataFrame.
        for body in (
            {"dataframe_split": {"columns": ["video"], "data": [[good[1]]]}},
            {"inputs": [good[1]]},
            {"instances": [good[1]]},
        ):
            code, answer = _post(url, body)
            assert code == 200, (body, answer)
            (row,) = answer["predictions"]
            np.testing.assert_allclose(
                [row[n] for n in names], batch.loc[good[1], columns.SCORE_VECTOR], atol=1e-5
            )

        # on_error=raise: a 400 that names the video; the server keeps serving.
        code, answer = _post(url, {"dataframe_records": [{"video": bad}], "params": {"on_error": "raise"}})
        assert code == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE"
        assert f"cannot score video {bad}" in answer["message"]
        code, answer = _post(url, {"dataframe_records": [{"video": good[0]}]})
        assert code == 200 and answer["predictions"][0]["error"] == ""


def test_registered_version_carries_a_model_card_and_clean_tags(trained):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=trained.tracking_uri, registry_uri=trained.tracking_uri)
    version = client.get_model_version("stpa-ucf101", "1")
    run = client.get_run(trained.run_id)
    card = version.description
    test_top1 = run.data.metrics[metric_on_test_split("top1")]
    for fact in (
        "stpa-ucf101 version 1",
        "ucf101, official split 1: trained on the official training list less the val split",
        f"Test top1: {test_top1:.4f}",
        "weights chosen by the epoch with the best val top1",
        "resnet_debug backbone, K = 3 segments, 64 px input; interaction-aware pyramid attention",
        "2 views (2 temporal clip(s) x 1 crop(s))",
        f"3 classes (single-label, softmax): {', '.join(trained.class_names)}.",
        f"Training manifest SHA-256: {run.data.params['manifest.train.sha256']}.",
        'mlflow.pyfunc.load_model("models:/stpa-ucf101/1")',
        "stpa predict ucf101 /path/video.mp4 --version 1",
        "mlflow models serve -m models:/stpa-ucf101/1 --env-manager local -h 127.0.0.1",
    ):
        assert fact in card, fact
    tags = version.tags
    assert all(value.strip() for value in tags.values()), tags
    assert not {"train_manifest_sha256", "val_manifest_sha256", "config", "workflow_id", "preset"} & set(tags)
    assert list(tags.values()).count(run.data.params["manifest.train.sha256"]) == 1
    assert tags["stpa.workflow_id"] == "wf" and tags["stpa.preset"] == "smoke"
    assert json.loads(tags["stpa.overrides"]) == {"train.epochs": 1, "train.num_workers": 1}
