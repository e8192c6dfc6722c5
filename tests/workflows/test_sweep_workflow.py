"""``python workflows/sweep_charades.py`` as a user runs it on a laptop: a local Ray started by the script, MLflow on
a SQLite file in the working directory. The sweep's best trial configuration is what the train step trains,
evaluates and registers; the dry run afterwards shows every step done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import metric_names as names
from tests.workflows.console import library_lines

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_sweep_then_retrain_best_then_register(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    command = [
        sys.executable,
        str(REPO / "workflows" / "sweep_charades.py"),
        "--storage",
        str(tmp_path / "runs"),
    ]
    command += [
        "--num-samples",
        "2",
        "--trial-epochs",
        "1",
        "--epochs",
        "1",
        "--axes",
        "attention,pyramid_depth",
    ]
    command += ["--synth-videos-per-class", "8", "--synth-classes", "4", "--workflow-id", "sweep-wf"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    # The console: the workflow's lines (each trial's progress, the steps, the summary), at most 3 from libraries
    # besides the one C++ line Ray Train's controller prints per training run (2 trials and the retrained best).
    noise = library_lines(log)
    per_training = [line for line in noise if "'PreemptionWatcher'" in line]
    others = [line for line in noise if line not in per_training]
    assert len(per_training) <= 3 and len(others) <= 3, "library lines:\n" + "\n".join(noise)
    assert "finished sweep-wf in" in log and log.index("register: done in") < log.index(
        "finished sweep-wf in"
    )
    summary = json.loads((tmp_path / "runs" / "sweep-wf" / "summary.json").read_text())

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("stpa-charades")
    runs = client.search_runs([experiment.experiment_id])
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = {t.data.tags["mlflow.parentRunId"] for t in trials}
    assert len(trials) == 2 and len(parents) == 1
    trained = client.get_run(summary["mlflow_run_id"])
    assert trained.data.tags["stpa.sweep_run_id"] == parents.pop()
    best = json.loads(
        (tmp_path / "runs" / "sweep-wf" / "sweep").glob("*/outputs.json").__next__().read_text()
    )["best_overrides"]
    for key, value in best.items():  # the retrained run uses the best trial's settings
        assert trained.data.params[key] == str(tuple(value) if isinstance(value, list) else value), key
    assert summary["champion"] is True and names.test(names.MAP) in trained.data.metrics
    assert trained.info.run_name.startswith("sweep charades smoke ")

    plan = subprocess.run([*command, "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True)
    lines = [
        line for line in plan.stdout.splitlines() if line.startswith("  ") and not line.startswith("   ")
    ]
    assert len(lines) == 6 and all(" done " in line for line in lines), plan.stdout
