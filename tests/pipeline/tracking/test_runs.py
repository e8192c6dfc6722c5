"""Each ``ray.train.report`` reaches MLflow once, whoever logs it (the controller's callback or a resumed worker)."""

from __future__ import annotations

import math

from mlflow.tracking import MlflowClient

from pipeline.tracking.runs import RankZeroRun


def _run(tmp_path) -> tuple[MlflowClient, RankZeroRun]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment_id).info.run_id
    return client, RankZeroRun(uri, run_id)


def test_an_epoch_report_is_logged_once_at_its_epoch(tmp_path):
    client, run = _run(tmp_path)
    epoch_2 = {"epoch": 2.0, "train_loss": 0.5, "best_top1": -math.inf}
    assert run.log_report_once(epoch_2)
    assert not run.log_report_once({**epoch_2, "train_loss": 0.4})  # the same epoch again: already on record
    assert run.log_report_once({"epoch": 3.0, "train_loss": 0.3})
    losses = client.get_metric_history(run.run_id, "train_loss")
    assert sorted((m.step, m.value) for m in losses) == [(2, 0.5), (3, 0.3)]
    assert client.get_metric_history(run.run_id, "best_top1") == []  # not finite: not logged


def test_the_final_report_is_keyed_by_final_and_keeps_epoch_history_clean(tmp_path):
    client, run = _run(tmp_path)
    assert run.log_report_once({"epoch": 3.0, "train_loss": 0.3})
    final = {"epoch": 3.0, "test_top1": 0.75, "final": 1.0}
    assert run.log_report_once(final)
    assert not run.log_report_once(final)
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "test_top1")] == [(3, 0.75)]
    assert [m.step for m in client.get_metric_history(run.run_id, "epoch")] == [3]


def test_a_report_without_epoch_or_final_is_not_logged(tmp_path):
    client, run = _run(tmp_path)
    assert not run.log_report_once({"train_loss": 0.3})
    assert client.get_metric_history(run.run_id, "train_loss") == []
