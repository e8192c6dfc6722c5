"""The summary a workflow prints last: test metrics to 4 significant digits, the registered version, the MLflow run's
address (and how to serve it for a SQLite store); ``summary.json`` holds the same for programs."""

from __future__ import annotations

from pipeline import metric_names as names
from workflows.training import format_summary, workflow_summary

OUTPUTS = {
    "train": {"mlflow_run_id": "abc123", "mlflow_experiment_id": "4"},
    "evaluate": {
        "primary_metric": names.MAP,
        "decode_failures": 1,
        "metrics": {
            names.test(names.WAP): 0.44111277611277605,
            names.test(names.MAP): 0.4031584156584156,
            names.test(names.NUM_VIDEOS_SCORED): 14.0,
            names.test(names.NUM_VIDEOS_MISSING): 1.0,
        },
    },
    "register": {"name": "stpa-charades", "version": "3", "is_champion": False},
}


def test_summary_for_people_and_programs():
    summary = workflow_summary("wf-1", OUTPUTS, "http://127.0.0.1:5000")
    assert summary["mlflow_run_url"] == "http://127.0.0.1:5000/#/experiments/4/runs/abc123"
    assert summary["mlflow_ui_command"] is None and summary[names.TEST_DECODE_FAILURES] == 1
    text = format_summary(summary, 71.2, "runs/wf-1/summary.json").splitlines()
    assert text == [
        "finished wf-1 in 1m11s",
        "  test     mAP 0.4032  wAP 0.4411   (14 of 15 videos scored)",
        "  model    stpa-charades version 3, not the champion (an earlier version scores higher)",
        "  MLflow   http://127.0.0.1:5000/#/experiments/4/runs/abc123",
        "  summary  runs/wf-1/summary.json",
    ]


def test_a_sqlite_store_says_how_to_serve_the_page():
    outputs = {k: v for k, v in OUTPUTS.items() if k != "register"}
    summary = workflow_summary("wf-1", outputs, "sqlite:////home/me/mlflow.db")
    text = format_summary(summary, 5, "s.json")
    assert "  MLflow   http://127.0.0.1:5000/#/experiments/4/runs/abc123\n" in text
    assert "(serve it first: mlflow ui --backend-store-uri sqlite:////home/me/mlflow.db)" in text
    assert "model" not in text
