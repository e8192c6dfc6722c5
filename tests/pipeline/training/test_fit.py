"""Real distributed training: 2 Ray Train workers (gloo DDP on CPU) on generated videos, tracked in MLflow (SQLite).

One local Ray cluster serves the module. Each test trains the debug model for a few steps; the assertions are on
what the run leaves behind: checkpoints, MLflow params/metrics/artifacts, resumption counters.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import numpy as np
import pytest

from pipeline import metric_names as names
from pipeline.config import apply_overrides
from pipeline.data.manifest import read_manifest
from pipeline.data.prepare import prepare_manifest
from pipeline.data.synth import synthesize
from pipeline.presets import smoke
from pipeline.tracking.runs import process_uris
from pipeline.training.fit import fit
from pipeline.training.loop import steps_per_epoch

pytestmark = pytest.mark.slow


# More logical CPUs than cores: 2 train workers hold 2 CPUs for the whole run; decode tasks need their own.
RAY_NUM_CPUS = 4


def _dataset(
    root, layout: str, num_classes: int, videos_per_class: int, mode: str = "set"
) -> tuple[str, str, str]:
    """(train, val, test) manifest paths of a generated dataset; val carved from train (10%)."""
    summary = synthesize(
        layout,
        str(root / "data"),
        num_classes=num_classes,
        videos_per_class=videos_per_class,
        width=80,
        height=72,
        num_frames=24,
        mode=mode,
    )
    out = str(root / "manifests")
    prepare_manifest(layout, summary.videos_uri, summary.annotations_uri, out, use_ray=False)
    return tuple(os.path.join(out, f"{split}.parquet") for split in ("train", "val", "test"))


@pytest.fixture(scope="module")
def ucf_data(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("ucf"), "ucf101", num_classes=5, videos_per_class=16)


@pytest.fixture(scope="module")
def order_data(tmp_path_factory):
    """One reversed pair of classes (chance and the order-blind ceiling: 0.5)."""
    return _dataset(
        tmp_path_factory.mktemp("order"), "ucf101", num_classes=2, videos_per_class=20, mode="order"
    )


def _mlflow(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _fit(
    exp,
    manifests: tuple[str, str, str],
    tmp_path,
    run_name: str,
    *,
    with_val: bool = True,
    clip_cache: str | None = None,
):
    """``fit`` on (train, val, test) manifests with the test's storage and MLflow store; without val when asked."""
    train_uri, val_uri, test_uri = manifests
    return fit(
        exp,
        train_uri,
        test_uri,
        val_manifest=val_uri if with_val else None,
        storage_path=str(tmp_path / "ray"),
        run_name=run_name,
        tracking_uri=_mlflow(tmp_path),
        clip_cache=clip_cache,
    )


def _smoke(num_classes: int, dataset: str = "ucf101", **overrides):
    return apply_overrides(smoke(dataset, num_classes), overrides)


def test_two_worker_training_learns_checkpoints_and_logs_to_mlflow(ray_local, ucf_data, tmp_path):
    """About 80 s of 2-worker training on the generator's multi-frame classes beats chance (0.2) widely.
    Epochs are chosen on val, test is scored once on the chosen weights: the two score disjoint videos."""
    from mlflow.tracking import MlflowClient

    train_uri, val_uri, test_uri = ucf_data
    # 12 epochs: at 8, one full-suite run in four this session ended at test top-1 0.35 (val 0.2 on 5 videos).
    exp = _smoke(5, **{"train.epochs": 12, "train.eval_every": 4})
    uri = _mlflow(tmp_path)
    result = _fit(exp, ucf_data, tmp_path, "r1")

    num_train = read_manifest(train_uri)[0].num_rows
    assert result.metrics[names.GLOBAL_STEP] == 12 * steps_per_epoch(num_train, 2, exp.train.batch_size)
    # Chance is 0.2. The epoch is chosen on val (5 videos), not on test as before, and 5 training videos went to
    # val: test top-1 was 0.45 in the run that introduced val (it was >= 0.5 when chosen on test itself).
    assert result.metrics[names.test(names.TOP1)] >= 0.4, result.metrics
    # Val and test score disjoint videos: each evaluation scores every video of its own manifest and none outside
    # it (check_complete raises on a video outside the evaluated manifest), and the manifests share no video.
    val_ids = set(read_manifest(val_uri)[0].column("video_id").to_pylist())
    test_ids = set(read_manifest(test_uri)[0].column("video_id").to_pylist())
    train_ids = set(read_manifest(train_uri)[0].column("video_id").to_pylist())
    assert val_ids and val_ids.isdisjoint(test_ids) and val_ids.isdisjoint(train_ids)
    assert result.metrics[names.test(names.NUM_VIDEOS_SCORED)] == len(test_ids)
    assert os.path.exists(os.path.join(result.checkpoint_uri, "state.pt"))
    assert os.path.exists(os.path.join(result.checkpoint_uri, "best_model.pt"))

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "stpa-ucf101"
    params = run.data.params
    assert params["model.backbone"] == "resnet_debug"
    assert params["train.num_workers"] == "2"
    assert params["selection.split"] == "val" and params["manifest.val.uri"] == val_uri
    assert len(params["manifest.train.sha256"]) == 64
    history = client.get_metric_history(run.info.run_id, names.train("classification"))
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(losses) == 12
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), f"training loss did not decrease: {losses}"
    assert len(client.get_metric_history(run.info.run_id, names.val(names.TOP1))) == 3  # epochs 4, 8 and 12
    assert run.data.tags["stpa.val_num_videos_scored"] == str(len(val_ids))  # a count: a tag, not a metric
    assert run.data.tags["stpa.test_num_videos_scored"] == str(len(test_ids))
    assert not any(key.endswith(names.COUNTS) for key in run.data.metrics)
    best = client.get_metric_history(run.info.run_id, names.best(names.TOP1))
    assert max(m.value for m in best) == max(
        m.value for m in client.get_metric_history(run.info.run_id, names.val(names.TOP1))
    )
    assert names.test(names.TOP1) in run.data.metrics and "test/mean_class_accuracy" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/confusion_matrix.csv"} <= artifacts
    heatmaps = client.list_artifacts(run.info.run_id, "attention")
    assert len(heatmaps) == exp.train.num_heatmap_clips
    # The run's model is an MLflow 3 logged model: listing runs:/<run>/model resolves it through MLflow's
    # process-wide tracking URI (not the client's), so point that at this store for the call.
    with process_uris(uri):
        assert client.list_artifacts(run.info.run_id, "model"), "the model was not logged"


@pytest.mark.parametrize("option", ["temporal_shift", "temporal_position_embedding"])
def test_frame_order_option_learns_direction_through_the_pipeline(ray_local, order_data, option, tmp_path):
    """Issue 14: a class and its time-reversed copy (the generator's "order" mode: objects a then b, or b then a).
    Both classes show the same set of frames, so the paper's order-blind model cannot beat 0.5; each frame-order
    option must, trained and scored through Ray Data, Ray Train and the evaluation like any run. A trial run
    before this test (16 videos per class, 12 epochs, 8 test videos) gave test top-1 1.0 for both options, with
    temporal_shift still at val top-1 0.5 after 4 epochs; at 8 epochs temporal_shift failed twice in about five
    runs (test top-1 0.5 and 0.6), so the test trains the trial's 12 epochs.

    No val split: the last epoch's weights are scored. With the 10% val split (3 videos) choosing the epoch, CI saw
    val top-1 1.0 at an early evaluation and test top-1 0.6 from those weights (3 videos reach 1.0 by chance one
    time in eight): a test of epoch selection on 3 videos, not of learning order. Selection on val is tested by
    ``test_two_worker_training_learns_checkpoints_and_logs_to_mlflow``."""
    exp = _smoke(2, **{"train.epochs": 12, "train.num_heatmap_clips": 0, f"model.{option}": True})
    result = _fit(exp, order_data, tmp_path, option, with_val=False)
    num_test = read_manifest(order_data[2])[0].num_rows
    assert result.metrics[names.test(names.NUM_VIDEOS_SCORED)] == num_test >= 8
    assert result.metrics[names.test(names.TOP1)] >= 0.75, result.metrics


def test_charades_multilabel_run_writes_submission(ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    manifests = _dataset(tmp_path, "charades", num_classes=6, videos_per_class=6)
    train_uri, _, test_uri = manifests
    exp = _smoke(
        6,
        dataset="charades",
        **{"train.epochs": 1, "train.num_heatmap_clips": 0, "train.grad_accum_steps": 2},
    )
    uri = _mlflow(tmp_path)
    result = _fit(exp, manifests, tmp_path, "c1")
    assert 0.0 <= result.metrics[names.test(names.MAP)] <= 1.0
    micro_steps = steps_per_epoch(read_manifest(train_uri)[0].num_rows, 2, exp.train.batch_size)
    assert micro_steps >= 2
    assert (
        result.metrics[names.GLOBAL_STEP] == micro_steps // 2
    )  # one optimiser update per 2 accumulated batches
    client = MlflowClient(tracking_uri=uri)
    local = client.download_artifacts(
        result.mlflow_run_id, "evaluation/charades_submission.txt", str(tmp_path)
    )
    with open(local) as f:
        lines = f.read().splitlines()
    test_table, class_names = read_manifest(test_uri)
    assert len(lines) == test_table.num_rows
    assert {line.split()[0] for line in lines} == set(test_table.column("video_id").to_pylist())
    assert all(len(line.split()) == 1 + len(class_names) for line in lines)


def test_resume_after_driver_restart_same_run_name(ray_local, ucf_data, tmp_path):
    """Resuming, and a run without a val split: no per-epoch selection, the last epoch's weights are kept. The
    training clips come from the decode-once cache (``fit(clip_cache=...)``): written by the first call, read by
    the others, with exact epoch lengths on both ranks."""
    from mlflow.tracking import MlflowClient

    from pipeline.clips.cache import SUCCESS_FILE

    train_uri = ucf_data[0]
    uri = _mlflow(tmp_path)
    cache = tmp_path / "clips"

    def run(epochs: int):
        exp = _smoke(5, **{"train.epochs": epochs})
        return _fit(exp, ucf_data, tmp_path, "r", with_val=False, clip_cache=str(cache))

    first = run(2)
    (entry,) = list(cache.iterdir())  # one entry: the training clips of the smoke preset
    written = (entry / SUCCESS_FILE).stat().st_mtime_ns
    second = run(3)
    assert [p.name for p in cache.iterdir()] == [entry.name]
    assert (entry / SUCCESS_FILE).stat().st_mtime_ns == written  # a hit: not decoded again
    per_epoch = steps_per_epoch(read_manifest(train_uri)[0].num_rows, 2, 4)
    assert second.mlflow_run_id == first.mlflow_run_id
    assert second.metrics[names.RESTARTS] == 1
    assert second.metrics[names.STEPS_THIS_ATTEMPT] == per_epoch  # only the third epoch ran
    assert second.metrics[names.GLOBAL_STEP] == 3 * per_epoch

    # A finished run asked again for what it did: the same result, nothing trained, evaluated or logged again.
    third = run(3)
    assert third.metrics[names.test(names.TOP1)] == second.metrics[names.test(names.TOP1)]
    assert third.metrics[names.GLOBAL_STEP] == 3 * per_epoch
    assert (
        third.metrics[names.RESTARTS] == 1
    )  # the second run's report, sent again (a new evaluation would say 2)
    client = MlflowClient(tracking_uri=uri)
    epochs = client.get_metric_history(first.mlflow_run_id, names.TRAIN_EPOCH)
    assert sorted(m.value for m in epochs) == [1, 2, 3]
    finals = client.get_metric_history(
        first.mlflow_run_id, names.test(names.TOP1)
    )  # each final report's test
    assert sorted(m.step for m in finals) == [2 * per_epoch, 3 * per_epoch]
    logged = client.get_run(first.mlflow_run_id).data
    assert logged.params["selection.split"] == "last_epoch"
    # Bookkeeping as tags: the third call resumed too (and found the run finished), so two restarts.
    assert logged.tags["stpa.restarts"] == "2" and logged.tags["stpa.global_step"] == str(3 * per_epoch)
    assert names.RESTARTS not in logged.metrics and names.GLOBAL_STEP not in logged.metrics
    assert not client.get_metric_history(
        first.mlflow_run_id, names.val(names.TOP1)
    )  # nothing scored per epoch
    assert names.best(names.TOP1) not in third.metrics
    assert os.path.exists(os.path.join(third.checkpoint_uri, "best_model.pt"))  # the last epoch's weights


def test_killed_worker_restarts_from_last_checkpoint(ray_local, ucf_data, tmp_path):
    """The kill lands while the second checkpoint uploads, after that epoch trained: the epoch is trained again,
    and MLflow still has each epoch once (metrics are logged when Ray Train registers their checkpoint)."""
    import psutil
    from mlflow.tracking import MlflowClient

    train_uri, val_uri, test_uri = ucf_data
    storage = tmp_path / "ray"
    exp = _smoke(5, **{"train.epochs": 4, "train.max_failures": 2})
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, num_heatmap_clips=0))
    killed: list[int] = []
    started = time.time()

    def kill_a_worker_after_first_checkpoint():
        """SIGKILL one of this run's train workers (created after the test started) once a checkpoint is committed.

        A checkpoint folder appears when its upload starts; once a second one appears, the first is committed.
        """
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            run_dir = storage / "k"
            if run_dir.exists() and sum(p.name.startswith("checkpoint_") for p in run_dir.iterdir()) >= 2:
                for proc in psutil.process_iter(["pid", "cmdline", "create_time", "status"]):
                    is_worker = "RayTrainWorker" in " ".join(proc.info["cmdline"] or [])
                    alive = proc.info["status"] not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
                    if is_worker and alive and proc.info["create_time"] >= started:
                        os.kill(proc.info["pid"], signal.SIGKILL)
                        killed.append(proc.info["pid"])
                        return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_worker_after_first_checkpoint, daemon=True)
    killer.start()
    uri = _mlflow(tmp_path)
    result = _fit(exp, ucf_data, tmp_path, "k")
    killer.join(timeout=1)
    per_epoch = steps_per_epoch(read_manifest(train_uri)[0].num_rows, 2, 4)
    assert killed, "no train worker was found to kill"
    assert result.metrics[names.RESTARTS] >= 1
    assert result.metrics[names.GLOBAL_STEP] == 4 * per_epoch
    assert result.metrics[names.STEPS_THIS_ATTEMPT] < 4 * per_epoch  # resumed, not retrained from scratch
    assert np.isfinite(result.metrics[names.test(names.TOP1)])
    client = MlflowClient(tracking_uri=uri)
    epochs = [int(m.value) for m in client.get_metric_history(result.mlflow_run_id, names.TRAIN_EPOCH)]
    assert sorted(epochs) == [1, 2, 3, 4], epochs
    assert int(client.get_run(result.mlflow_run_id).data.tags["stpa.restarts"]) >= 1
