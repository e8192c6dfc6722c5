"""``python workflows/train_folder.py --data-root "my vids"`` as a new user runs it on their own class folders: a
local Ray started by the script, MLflow on a SQLite file in the working directory.

The smallest set that exercises what issue 13 found broken: 12 videos in 3 class folders (one named with a space),
hash-split to 6 training videos, 1 val and 4 test (fewer than the smoke preset's 2 workers x batch 4, so the preset
is fitted; one val video over 2 workers, which hung evaluation inside DDP), video ids ``<class>/<stem>`` that become
heat-map artifact names. Then the same command against another tracking URI says that nothing is logged there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_own_class_folders_train_evaluate_register(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from pipeline.data.synth import synthesize

    synthesize(
        "ucf101", str(tmp_path / "gen"), num_classes=3, videos_per_class=4, width=64, height=48, num_frames=16
    )
    data = tmp_path / "my vids"
    shutil.move(tmp_path / "gen" / "UCF-101", data)
    first = sorted(p for p in data.iterdir())[0]
    first.rename(data / "Blue Triangle")  # a class folder with a space

    command = [sys.executable, str(REPO / "workflows" / "train_folder.py"), "--data-root", str(data)]
    command += ["--epochs", "1", "--storage", str(tmp_path / "runs")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    assert "note: 6 training videos: the preset's batch 4 -> 3 per worker (--batch-size sets it)" in log
    (summary_file,) = (tmp_path / "runs").glob("*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["workflow_id"].startswith("train-my-vids-smoke-")
    assert summary["registered_version"] == "1" and summary["champion"] is True

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert (
        client.get_experiment(run.info.experiment_id).name == "stpa-my-vids"
    )  # --name defaults to the folder
    assert run.data.params["train.batch_size"] == "3" and "test/top1" in run.data.metrics
    assert client.get_model_version_by_alias("stpa-my-vids", "champion").run_id == run.info.run_id
    heatmaps = [a.path for a in client.list_artifacts(run.info.run_id, "attention")]
    assert len(heatmaps) == 2 and all("/" not in p.removeprefix("attention/") for p in heatmaps), heatmaps

    # The same workflow against another tracking server: every step is committed, nothing goes there, and it says so.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    again = subprocess.run(
        command, cwd=tmp_path, env={**env, "MLFLOW_TRACKING_URI": other}, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"nothing is logged to {other} (add --rerun train" in again.stdout
    assert not (tmp_path / "other.db").exists()
