"""Ray Tune sweeps: the search space (pure, fast) and a smoke sweep on a real local Ray, tracked in MLflow (SQLite).

The smoke sweep trains the debug model for 2 epochs per trial with one Ray Train worker on a tiny generated
UCF101-layout dataset; the assertions are on what the sweep leaves behind: nested MLflow runs with their params
and per-epoch metrics, the comparison table and plot on the parent run, and a resumed sweep that runs nothing
again.
"""

from __future__ import annotations

import csv
import io
import math
import os

import numpy as np
import pytest
import torch

from pipeline import metric_names as names
from pipeline.config import apply_overrides
from pipeline.presets import PRESETS, preset, smoke
from pipeline.sweep.report import PARENT_TAG, SWEEP_TAG, TRIAL_TAG
from pipeline.sweep.run import run_sweep
from pipeline.sweep.space import (
    AXES,
    DEFAULT_AXES,
    K_KEY,
    check_space,
    expand_overrides,
    pyramid,
    sample_config,
    search_space,
)
from stpa_model import STPANet, total_loss
from stpa_model.attention import FUSION_MODES, RESAMPLE_MODES
from stpa_model.config import ATTENTION_MODES


def _sampled(exp, space, num_samples: int, seed: int = 0):
    rng = np.random.RandomState(seed)
    return [sample_config(space, rng) for _ in range(num_samples)]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_sampled_config_builds_a_valid_experiment(name):
    exp = preset(name, name if name != "smoke" else "ucf101", 7)
    space = search_space(exp)
    assert set(space) == {AXES[axis].key for axis in DEFAULT_AXES}
    seen: dict[str, set] = {key: set() for key in space}
    for config in _sampled(exp, space, 200):
        trial = apply_overrides(exp, expand_overrides(exp, config))
        k = config[K_KEY]
        assert trial.train_clips.num_segments == trial.val_clips.num_segments == k
        assert trial.test_clips.num_segments == k
        assert trial.model.num_segments == k * trial.train_clips.frames_per_segment
        assert trial.model.attention == config["model.attention"]
        assert trial.model.pyramid_layers == config["model.pyramid_layers"]
        assert trial.model.pyramid_layers[-1] == "res5"
        assert exp.optim.lr / 10 <= trial.optim.lr <= exp.optim.lr * 3
        for key, value in config.items():
            seen[key].add(value)
    # 200 draws cover every choice of every categorical axis.
    assert seen["model.attention"] == set(ATTENTION_MODES)
    assert seen["model.fusion"] == set(FUSION_MODES)
    assert seen["model.resample"] == set(RESAMPLE_MODES)
    assert {len(layers) for layers in seen["model.pyramid_layers"]} == {1, 2, 3, 4}
    assert 0.0 in seen["model.beta"] and 0.0 in seen["model.gamma"]
    assert exp.train_clips.num_segments in seen[K_KEY] and len(seen[K_KEY]) == 3


def test_k_is_coupled_with_the_temporal_position_embedding():
    """With a temporal position embedding the model's K must follow the clips' K, or validation fails."""
    exp = apply_overrides(smoke("ucf101", 5), {"model.temporal_position_embedding": True})
    with pytest.raises(ValueError, match="num_segments"):
        apply_overrides(exp, {"train_clips.num_segments": 6, "val_clips.num_segments": 6})
    two_frames = apply_overrides(
        exp,
        {f"{s}.frames_per_segment": 2 for s in ("train_clips", "val_clips", "test_clips")}
        | {"model.num_segments": 6},
    )
    for base in (exp, two_frames):
        for k in (1, 3, 6):
            trial = apply_overrides(base, expand_overrides(base, {K_KEY: k}))
            assert trial.model.num_segments == k * base.train_clips.frames_per_segment
            assert trial.test_clips.num_segments == k


def test_sampled_debug_models_run_forward_and_backward():
    """Every sampled architecture of the smoke preset builds, runs and yields a finite loss with gradients."""
    exp = smoke("ucf101", 5)
    space = search_space(
        exp, ["attention", "pyramid_depth", "fusion", "resample", "beta", "gamma", "num_segments"]
    )
    torch.manual_seed(0)
    for config in _sampled(exp, space, 12, seed=1):
        trial = apply_overrides(exp, expand_overrides(exp, config))
        model = STPANet(trial.model)
        k = trial.train_clips.num_segments
        clips = torch.randn(2, k, 3, trial.model.input_size, trial.model.input_size)
        loss, _ = total_loss(model(clips), torch.tensor([0, 3]), trial.model)
        loss.backward()
        assert math.isfinite(loss.item()), config


def test_axes_restrict_the_space_and_unknown_axes_fail():
    exp = smoke("ucf101", 5)
    space = search_space(exp, ["attention", "pyramid_depth", "lr"])
    assert set(space) == {"model.attention", "model.pyramid_layers", "optim.lr"}
    assert set(search_space(exp, ["spatio_temporal"])) == {"model.spatio_temporal"}
    with pytest.raises(ValueError, match=r"unknown sweep axis \['depth'\].*pyramid_depth"):
        search_space(exp, ["attention", "depth"])
    with pytest.raises(ValueError, match="no sweep axes"):
        search_space(exp, [])
    with pytest.raises(ValueError, match="repeat"):
        search_space(exp, ["lr", "lr"])


def test_check_space_names_a_bad_key_or_value():
    from ray import tune

    exp = smoke("ucf101", 5)
    with pytest.raises(ValueError, match="model has no field 'pyramid'"):
        check_space(exp, {"model.pyramid": tune.choice([("res5",)])})
    with pytest.raises(ValueError, match="fusion"):
        check_space(exp, {"model.fusion": tune.choice(["sum", "product"])})
    check_space(exp, {"model.fusion": "mean", K_KEY: 4})  # constants are fine


def test_pyramid_depths():
    assert pyramid(1) == ("res5",)
    assert pyramid(3) == ("res3", "res4", "res5")
    assert pyramid(4) == ("res2", "res3", "res4", "res5")
    with pytest.raises(ValueError, match="1..4"):
        pyramid(5)


# --- a real sweep ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_with_state_api():
    """A local Ray with the dashboard, which serves the State API that Ray Train's placement group cleaner needs
    to free the workers of a trial Tune stops early. 3 logical CPUs: one trial at a time (its worker holds one
    CPU, its decode tasks need another). RAY_API_SERVER_ADDRESS points Ray's own processes at this cluster's
    dashboard: without it they look for "the" local cluster and fail when several run on one machine."""
    import socket

    import ray

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"  # inherited by the raylet and workers
    ray.init(
        num_cpus=3,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    yield
    ray.shutdown()
    if saved is None:
        del os.environ["RAY_API_SERVER_ADDRESS"]
    else:
        os.environ["RAY_API_SERVER_ADDRESS"] = saved


@pytest.fixture(scope="module")
def tiny_ucf(tmp_path_factory):
    from pipeline.data.prepare import prepare_manifest
    from pipeline.data.synth import synthesize

    root = tmp_path_factory.mktemp("sweep_data")
    summary = synthesize(
        "ucf101", str(root / "data"), num_classes=3, videos_per_class=6, width=64, height=48, num_frames=16
    )
    out = str(root / "manifests")
    prepare_manifest("ucf101", summary.videos_uri, summary.annotations_uri, out, use_ray=False)
    # Trials are ranked on val (carved from train: one group of each class's 4 training videos); no test here.
    return os.path.join(out, "train.parquet"), os.path.join(out, "val.parquet")


def _stop_all_but_the_first_trial(trial_id: str, result: dict) -> bool:
    """Tune stop criterion: trials after the first end after one epoch (ASHA's own decisions depend on metrics,
    which tie at chance level on this data), so the sweep has completed and stopped trials."""
    return not trial_id.endswith("_00000") and result.get(names.EPOCH, 0) >= 1


def _tiny_exp():
    return apply_overrides(
        smoke("ucf101", 3),
        {
            "train.epochs": 2,
            "train.num_workers": 1,
            "train.num_heatmap_clips": 0,
            "test_clips.num_test_clips": 1,
        },
    )


@pytest.mark.slow
def test_smoke_sweep_nests_trials_in_mlflow_and_resumes(ray_with_state_api, tiny_ucf, tmp_path):
    from mlflow.tracking import MlflowClient

    train_uri, val_uri = tiny_ucf
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = _tiny_exp()
    kwargs = dict(
        val_manifest=val_uri,
        num_samples=3,
        storage_path=str(tmp_path / "ray"),
        name="sweep1",
        tracking_uri=uri,
        axes=["attention", "pyramid_depth", "lr"],
        seed=3,
        stop=_stop_all_but_the_first_trial,
    )
    result = run_sweep(exp, train_uri, **kwargs)

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert client.get_experiment(parent.info.experiment_id).name == "stpa-ucf101"
    assert parent.data.params["sweep.num_samples"] == "3"
    assert parent.data.params["space.model.attention"].startswith("choice(")
    assert parent.data.params["base.train.epochs"] == "2"
    assert parent.data.params["sweep.selection_split"] == "val"
    assert parent.data.params["base.train.final_test"] == "False"  # trials never score test
    assert parent.data.metrics[names.best(names.TOP1)] == pytest.approx(result.best_metric)
    assert parent.info.run_name.startswith("sweep ucf101 ")  # a readable name, not the sweep's key

    runs = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
    )
    assert len(runs) == 3 == len(result.table)
    rows = {row["trial_id"]: row for row in result.table}
    assert {run.data.tags[TRIAL_TAG] for run in runs} == set(rows)
    lrs = set()
    for run in runs:
        row = rows[run.data.tags[TRIAL_TAG]]
        assert run.data.tags[SWEEP_TAG] == "sweep1"
        assert row["mlflow_run_id"] == run.info.run_id
        # The run's params are the trial's sampled ones; the per-epoch metrics are there, one per epoch run.
        params = run.data.params
        assert params["model.attention"] == row["model.attention"]
        assert params["model.pyramid_layers"] == str(pyramid(row["pyramid_depth"]))
        assert float(params["optim.lr"]) == pytest.approx(row["optim.lr"])
        assert params["train.num_workers"] == "1"
        lrs.add(params["optim.lr"])
        epochs = client.get_metric_history(run.info.run_id, names.TRAIN_EPOCH)
        assert sorted(m.value for m in epochs) == list(range(1, row["epochs"] + 1))
        assert len(client.get_metric_history(run.info.run_id, names.TRAIN_EPOCH_LOSS)) == row["epochs"]
        assert len(client.get_metric_history(run.info.run_id, names.val(names.TOP1))) == row["epochs"]
        assert run.info.run_name.startswith("trial ") and "model.attention=" in run.info.run_name
        if row["trial_id"].endswith("_00000"):
            assert row["status"] == "completed", row
            assert row["epochs"] == 2 and run.info.status == "FINISHED"
            assert names.test(names.TOP1) not in row and params["selection.split"] == "val"
        else:  # ended after one epoch: the run is closed as KILLED, and the next trial got its CPU
            assert row["status"] == "stopped", row
            assert row["epochs"] == 1 and run.info.status == "KILLED"
    assert len(lrs) == 3, "trials did not get different params"

    # The best trial, its checkpoint and its overrides.
    best = max(result.table, key=lambda row: row[names.best(names.TOP1)])
    assert result.best_metric == best[names.best(names.TOP1)] and result.best_run_id == best["mlflow_run_id"]
    assert os.path.exists(os.path.join(result.best_checkpoint_uri, "best_model.pt"))
    assert set(result.best_overrides) == {"model.attention", "model.pyramid_layers", "optim.lr"}
    assert apply_overrides(exp, result.best_overrides).model.attention == best["model.attention"]

    # The comparison table and the plot on the parent run.
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {
        "sweep/trials.csv",
        "sweep/metric_by_attention_and_depth.png",
        "sweep/best_overrides.json",
    } <= artifacts
    with open(client.download_artifacts(parent.info.run_id, "sweep/trials.csv", str(tmp_path))) as f:
        table_text = f.read()
    table = list(csv.DictReader(io.StringIO(table_text)))
    assert {row["trial_id"] for row in table} == set(rows)
    assert {
        "mlflow_run_id",
        "model.attention",
        "pyramid_depth",
        "optim.lr",
        "val/best_top1",
        "status",
    } <= set(table[0])
    png = client.download_artifacts(
        parent.info.run_id, "sweep/metric_by_attention_and_depth.png", str(tmp_path)
    )
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "ray" / "sweep1" / "trials.csv") as f:  # also next to the Tune experiment
        assert f.read() == table_text

    # Re-running the same sweep restores it: nothing trains again, the same best comes back.
    again = run_sweep(exp, train_uri, **kwargs)
    assert again.parent_run_id == result.parent_run_id
    runs_after = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
    )
    assert len(runs_after) == 3
    for run in runs_after:
        row = rows[run.data.tags[TRIAL_TAG]]
        assert len(client.get_metric_history(run.info.run_id, names.TRAIN_EPOCH_LOSS)) == row["epochs"]
    assert again.best_run_id == result.best_run_id and again.best_metric == result.best_metric
    assert [row["trial_id"] for row in again.table] == [row["trial_id"] for row in result.table]


@pytest.mark.slow
def test_failed_trials_are_reported(ray_with_state_api, tiny_ucf, tmp_path):
    """A trial whose fit fails (batch larger than the training set) is a table row with its reason; a sweep
    where every trial fails raises with the reasons and marks the parent run FAILED."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    train_uri, val_uri = tiny_ucf
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = _tiny_exp()
    with pytest.raises(ValueError, match="ranks trials on the val split"):
        run_sweep(exp, train_uri, val_manifest=None, num_samples=1, storage_path=str(tmp_path), name="x")
    with pytest.raises(RuntimeError, match="too few") as info:
        run_sweep(
            exp,
            train_uri,
            val_manifest=val_uri,
            num_samples=1,
            storage_path=str(tmp_path / "ray"),
            name="broken",
            tracking_uri=uri,
            search_space={"train.batch_size": tune.choice([1000])},
        )
    assert "broken" in str(info.value)
    client = MlflowClient(tracking_uri=uri)
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("stpa-ucf101").experiment_id],
        filter_string="tags.`stpa.sweep_role` = 'parent'",
    )
    assert parent.info.status == "FAILED"
    with open(client.download_artifacts(parent.info.run_id, "sweep/trials.csv", str(tmp_path))) as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "error" and "too few" in row["error"] and row["train.batch_size"] == "1000"
