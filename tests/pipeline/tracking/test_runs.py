"""Each ``ray.train.report`` reaches MLflow once, whoever logs it (the controller's callback or a resumed worker),
with metrics named ``<split>/<name>`` at the optimiser step and bookkeeping counters as tags."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from pipeline import metric_names as names
from pipeline.tracking.runs import RankZeroRun


def _run(tmp_path) -> tuple[MlflowClient, RankZeroRun]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment_id).info.run_id
    return client, RankZeroRun(uri, run_id)


def test_an_epoch_report_is_logged_once_at_its_optimiser_step(tmp_path):
    client, run = _run(tmp_path)
    epoch_2 = {
        names.EPOCH: 2.0,
        names.GLOBAL_STEP: 20.0,
        names.RESTARTS: 0.0,
        names.TRAIN_EPOCH_LOSS: 0.5,
        names.best(names.TOP1): -math.inf,
    }
    assert run.log_report_once(epoch_2)
    assert not run.log_report_once({**epoch_2, names.TRAIN_EPOCH_LOSS: 0.4})  # the same epoch: on record
    assert run.log_report_once({names.EPOCH: 3.0, names.GLOBAL_STEP: 30.0, names.TRAIN_EPOCH_LOSS: 0.3})
    losses = client.get_metric_history(run.run_id, names.TRAIN_EPOCH_LOSS)
    assert sorted((m.step, m.value) for m in losses) == [(20, 0.5), (30, 0.3)]
    epochs = client.get_metric_history(run.run_id, names.TRAIN_EPOCH)
    assert sorted((m.step, m.value) for m in epochs) == [(20, 2.0), (30, 3.0)]
    assert client.get_metric_history(run.run_id, names.best(names.TOP1)) == []  # not finite: not logged
    logged = client.get_run(run.run_id).data
    # Bookkeeping is tags, never metrics; the latest report's values.
    assert logged.tags["stpa.global_step"] == "30" and logged.tags["stpa.restarts"] == "0"
    assert set(logged.metrics) == {names.TRAIN_EPOCH_LOSS, names.TRAIN_EPOCH}


def test_the_final_report_adds_test_metrics_once_and_marks_the_run_final(tmp_path):
    client, run = _run(tmp_path)
    assert run.log_report_once({names.EPOCH: 3.0, names.GLOBAL_STEP: 30.0, names.best(names.TOP1): 0.5})
    final = {
        names.EPOCH: 3.0,
        names.GLOBAL_STEP: 30.0,
        names.best(names.TOP1): 0.5,
        names.test(names.TOP1): 0.75,
        names.FINAL: 1.0,
    }
    assert run.log_report_once(final)
    assert not run.log_report_once(final)
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "test/top1")] == [(30, 0.75)]
    assert (
        len(client.get_metric_history(run.run_id, "val/best_top1")) == 1
    )  # not repeated by the final report
    assert [m.step for m in client.get_metric_history(run.run_id, names.TRAIN_EPOCH)] == [30]
    assert client.get_run(run.run_id).data.tags["stpa.final"] == "1"


def test_a_report_without_epoch_or_final_is_not_logged(tmp_path):
    client, run = _run(tmp_path)
    assert not run.log_report_once({names.TRAIN_EPOCH_LOSS: 0.3})
    assert client.get_metric_history(run.run_id, names.TRAIN_EPOCH_LOSS) == []


def test_report_keys_outside_the_names_module_are_refused():
    with pytest.raises(ValueError, match="train_loss"):
        names.split_report({"train_loss": 0.3})
    report = {
        "val/mAP": 0.25,
        "test/top1": 0.5,
        "test/num_videos_scored": 15.0,
        "global_step": 7.0,
        "final": 1.0,
    }
    metrics, tags = names.split_report(report)
    assert metrics == {"val/mAP": 0.25, "test/top1": 0.5}
    assert tags == {"stpa.global_step": "7", "stpa.final": "1", "stpa.test_num_videos_scored": "15"}
