"""The registered model (``pipeline.tracking.serving``): an MLflow pyfunc that scores video files as evaluation does.

Real components: videos generated and prepared as ``stpa synth`` and ``stpa prepare`` do, a real MLflow tracking
server started by the test, a pyfunc logged into a real run and registered; the champion is loaded back through
``mlflow.pyfunc`` in a fresh Python process whose working directory is not this checkout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import schema
from pipeline.clips.dataset import decode_clip_batch, decode_views
from pipeline.config import experiment_from_dict
from pipeline.data.manifest import read_manifest
from pipeline.data.prepare import prepare_manifest
from pipeline.data.synth import synthesize
from pipeline.evaluation.evaluate import compute_metrics, predict_batches
from pipeline.presets import preset, smoke
from pipeline.tracking.runs import process_uris
from pipeline.tracking.serving import ERROR_COLUMN, VIDEO_COLUMN, STPAVideoClassifier, VideoPredictionError
from pipeline.video.decode import SEQUENTIAL, index_video
from pipeline.video.encode import index_frames, write_video
from tests.mlflow_server import mlflow_server
from tests.pipeline.serving_models import logged_model_run, smoke_model

REPO = Path(__file__).resolve().parents[3]
NUM_CLASSES = 3


# --- fast: the config round trip and decoded clips -----------------------------------------------------------
@pytest.mark.parametrize(
    "exp",
    [smoke("ucf101", 5), smoke("charades", 7), preset("charades", "charades", 157)],
    ids=["smoke-ucf101", "smoke-charades", "r50-charades"],
)
def test_experiment_config_survives_json(exp):
    data = json.loads(json.dumps(dataclasses.asdict(exp)))
    back = experiment_from_dict(data)
    assert back == exp
    assert isinstance(back.model.pyramid_layers, tuple) and isinstance(back.test_clips.scales, tuple)
    assert isinstance(back.optim.step_milestones, tuple)
    data["test_clips"]["num_test_clip"] = 3
    with pytest.raises(ValueError, match="test_clips: unknown field.*num_test_clip"):
        experiment_from_dict(data)


def test_predict_clips_multi_label_is_max_of_view_sigmoids(tmp_path):
    """Charades: per-class sigmoid, views combined by max (the Charades convention), per video."""
    exp, weights = smoke_model(str(tmp_path), "charades", 4)
    assert exp.model.multi_label and exp.train.view_reduce == "max"
    classifier = STPAVideoClassifier.from_files(weights, exp, ["a", "b", "c", "d"])
    clips = exp.test_clips
    shape = (2, clips.num_views, clips.num_segments, clips.frames_per_segment, 64, 64, 3)
    frames = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    scores = classifier.predict_clips(frames)

    model = classifier.model
    x = torch.from_numpy(frames).float().div(255.0)  # (B, V, K, T, S, S, 3)
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    x = ((x - mean) / std).reshape(
        2 * clips.num_views, clips.num_segments * clips.frames_per_segment, 64, 64, 3
    )
    x = x.permute(0, 1, 4, 2, 3)  # (B*V, K*T, 3, S, S)
    with torch.no_grad():
        expected = torch.sigmoid(model(x).logits).reshape(2, clips.num_views, 4).amax(dim=1).numpy()
    assert scores.shape == (2, 4)
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    assert not np.allclose(scores[0], scores[1], atol=1e-3)  # the inputs matter

    with pytest.raises(ValueError, match=r"\(B, V, K, T, S, S, 3\)"):
        classifier.predict_clips(frames[:, :, :, :, :32, :32])


def test_decode_uses_the_probed_method_on_h264_in_avi(tmp_path):
    """decord's sparse access gives wrong frames on H.264 in AVI: the pyfunc decodes what a sequential decode gives."""
    exp, weights = smoke_model(str(tmp_path), "ucf101", NUM_CLASSES)
    classifier = STPAVideoClassifier.from_files(weights, exp, ["a", "b", "c"])
    uri = write_video(
        str(tmp_path / "h264.avi"), index_frames(48, 96, 80), 25, container_format="avi", gop_size=16
    )
    index = index_video(uri)
    assert index.method != "decord"
    reference, _ = decode_views(uri, dataclasses.replace(index, method=SEQUENTIAL), exp.test_clips, None)
    np.testing.assert_array_equal(classifier.decode(uri), reference)


# --- slow: a real server, a registered model, a fresh process ------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A prepared synthetic UCF101-layout dataset: the test manifest (3 videos) and its class names."""
    root = tmp_path_factory.mktemp("serving_data")
    summary = synthesize(
        "ucf101",
        str(root / "data"),
        num_classes=NUM_CLASSES,
        videos_per_class=2,
        width=80,
        height=72,
        num_frames=24,
    )
    # one training video per class: nothing to carve a val split from (serving needs the test split only)
    manifests = str(root / "manifests")
    prepare_manifest(
        "ucf101", summary.videos_uri, summary.annotations_uri, manifests, use_ray=False, val_fraction=0
    )
    table, class_names = read_manifest(str(root / "manifests" / "test.parquet"))
    return table, class_names


@pytest.fixture(scope="module")
def registered(tmp_path_factory, data):
    """A server with a registered champion ``stpa-ucf101``; yields (server URI, run model URI, exp, weights)."""
    from pipeline.tracking.registry import register

    _, class_names = data
    exp, weights = smoke_model(str(tmp_path_factory.mktemp("weights")), "ucf101", NUM_CLASSES)
    with mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as server:
        _, model_uri = logged_model_run(server, exp, weights, class_names, {"test/top1": 0.5})
        assert register(server, "ucf101", model_uri, {"test/top1": 0.5}, primary_metric="top1").is_champion
        yield server, model_uri, exp, weights


def _evaluation_scores(table, exp, weights) -> tuple[list[str], np.ndarray]:
    """Per-video scores as the evaluation computes them: the manifest's probe verdicts, the clip dataset's batch
    function (called directly, without Ray), ``predict_batches`` and ``compute_metrics``' view combination."""
    from stpa_model import STPANet

    batch = decode_clip_batch(table, config=exp.test_clips, epoch=None, num_classes=None, ledger=None, key="")
    model = STPANet(exp.model)
    model.load_state_dict(torch.load(weights, weights_only=True))
    predictions = predict_batches(model, [batch], False, torch.device("cpu"), None)
    _, details = compute_metrics(predictions, table, exp.model.num_classes, False, exp.train.view_reduce)
    ids, uris = table.column(schema.VIDEO_ID).to_pylist(), table.column(schema.VIDEO_URI).to_pylist()
    uri_of = dict(zip(ids, uris, strict=True))
    return [uri_of[v] for v in details["video_ids"]], details["scores"]


@pytest.mark.slow
def test_pyfunc_scores_equal_the_evaluation_path(registered, data):
    import mlflow

    server, model_uri, exp, weights = registered
    table, class_names = data
    with process_uris(server):
        loaded = mlflow.pyfunc.load_model(model_uri)
    videos, expected = _evaluation_scores(table, exp, weights)

    out = loaded.predict(videos)  # a list; a DataFrame and a single string are also accepted
    assert list(out.columns) == [VIDEO_COLUMN, *class_names, ERROR_COLUMN]
    assert out[ERROR_COLUMN].tolist() == [""] * len(videos)
    assert out[VIDEO_COLUMN].tolist() == videos
    np.testing.assert_allclose(out[class_names].to_numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out[class_names].to_numpy().sum(axis=1), 1.0, atol=1e-6)
    assert (
        np.abs(expected[0] - expected[1]).max() > 1e-3
    )  # different videos score differently: the check bites
    import pandas as pd

    one = loaded.predict(pd.DataFrame({VIDEO_COLUMN: videos[:1]}))
    np.testing.assert_allclose(one[class_names].to_numpy(), expected[:1], atol=1e-5)
    np.testing.assert_allclose(loaded.predict(videos[1])[class_names].to_numpy(), expected[1:2], atol=1e-5)

    # Decoded clips through the unwrapped model give the same scores.
    classifier = loaded.unwrap_python_model()
    views = np.stack([classifier.decode(v) for v in videos])  # (B, V, K, T, S, S, 3)
    np.testing.assert_allclose(classifier.predict_clips(views), expected, atol=1e-5)


@pytest.mark.slow
def test_pyfunc_names_an_undecodable_video(registered, data, tmp_path):
    import mlflow

    server, model_uri, _, _ = registered
    table, class_names = data
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with process_uris(server):
        loaded = mlflow.pyfunc.load_model(model_uri)
    from mlflow.exceptions import MlflowException

    with pytest.raises(VideoPredictionError, match="broken.mp4") as raised:
        loaded.predict([str(broken)], params={"on_error": "raise"})
    assert isinstance(raised.value, MlflowException) and raised.value.get_http_status_code() == 400
    good = table.column(schema.VIDEO_URI).to_pylist()[0]
    out = loaded.predict([good, str(broken)])  # the default: the bad video's row says why
    assert out[ERROR_COLUMN].tolist()[0] == "" and "PyAV cannot open it" in out[ERROR_COLUMN].tolist()[1]
    assert (
        np.isfinite(out[class_names].to_numpy()[0]).all() and np.isnan(out[class_names].to_numpy()[1]).all()
    )


FRESH_PROCESS = """
import json, sys
import mlflow
model = mlflow.pyfunc.load_model("models:/stpa-ucf101@champion")
out = model.predict(sys.argv[1:])
import pipeline
print(json.dumps({"pipeline": pipeline.__file__, "columns": list(out.columns), "rows": out.values.tolist()}))
"""


@pytest.mark.slow
def test_champion_loads_and_predicts_in_a_fresh_process(registered, data, tmp_path):
    """``models:/stpa-ucf101@champion`` from a plain Python process outside the checkout: the model's own copy of
    the ``pipeline`` source (code_paths) is what runs, and it gives the evaluation's scores."""
    server, _, exp, weights = registered
    table, class_names = data
    videos, expected = _evaluation_scores(table, exp, weights)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = server
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, *videos],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["pipeline"].startswith(str(REPO) + os.sep), result["pipeline"]
    assert result["columns"] == [VIDEO_COLUMN, *class_names, ERROR_COLUMN]
    rows = result["rows"]
    assert [row[0] for row in rows] == videos and [row[-1] for row in rows] == [""] * len(videos)
    scores = np.array([row[1:-1] for row in rows], dtype=np.float64)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.slow
def test_stpa_predict_command(registered, data, tmp_path, capsys):
    from pipeline.cli import main

    server, _, exp, weights = registered
    table, class_names = data
    videos, expected = _evaluation_scores(table, exp, weights)
    missing = str(tmp_path / "missing.mp4")
    env = {**os.environ, "MLFLOW_TRACKING_URI": server}
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "predict",
        "ucf101",
        *videos[:2],
        missing,
        "--top-k",
        "2",
    ]
    done = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, env=env, timeout=180, cwd=REPO
    )
    assert done.returncode == 1, done.stderr[-3000:]  # one video could not be decoded
    assert "1 video(s) could not be decoded" in done.stderr and "missing.mp4" in done.stderr
    result = json.loads(done.stdout)
    assert result["model"] == "models:/stpa-ucf101@champion"
    assert (
        result["version"] == "1" and result["scores"] == "softmax"
    )  # what the alias resolved to; score kind
    *decoded, failed = result["predictions"]
    for prediction, scores in zip(decoded, expected[:2], strict=True):
        best = np.argsort(-scores, kind="stable")[:2]
        assert [entry["class"] for entry in prediction["top"]] == [class_names[i] for i in best]
        np.testing.assert_allclose([e["probability"] for e in prediction["top"]], scores[best], atol=1e-5)
    assert failed["video"] == missing and failed["error"].startswith("cannot read the file")

    # The same command line in-process (no interpreter start-up): text output, a missing alias, a missing model.
    assert main(["predict", "ucf101", videos[0], "--top-k", "1", "--tracking-uri", server]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "model models:/stpa-ucf101@champion (version 1); softmax probabilities"
    assert out.splitlines()[1:] == [
        videos[0],
        f"  1. {class_names[int(np.argmax(expected[0]))]}  {expected[0].max():.4f}",
    ]
    with pytest.raises(SystemExit, match="has no 'staging' alias"):
        main(["predict", "ucf101", videos[0], "--alias", "staging", "--tracking-uri", server])
    with pytest.raises(SystemExit, match="no registered model stpa-hmdb51"):
        main(["predict", "hmdb51", videos[0], "--tracking-uri", server])
