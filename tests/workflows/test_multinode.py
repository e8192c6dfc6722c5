"""The Charades workflow on a 2-node cluster (cluster/local.sh: a head and a worker raylet on loopback, token auth),
submitted with ``ray job submit``, surviving the loss of the worker node in the middle of training.

Checked through Ray's state API (an independent record, not our logs): decode tasks ran on both nodes and Ray
Train workers were placed on both; then the worker node is SIGKILLed (raylet, agents, workers) after the first
epoch's checkpoint is committed; the job still finishes on the head, MLflow records the restart, and epoch 1 is
not trained again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.mlflow_server import mlflow_server
from tests.ray_cluster import LocalRayCluster, ray_executable

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "workflows" / "train_charades.py"
# A killed node is declared dead after a few missed health checks: seconds instead of ~30 s by default.
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def state(cluster: LocalRayCluster, resource: str, **filters: str) -> list[dict]:
    """Rows of Ray's state API (``/api/v0/<resource>``), over HTTP with the cluster token."""
    query = {"limit": "10000", "detail": "true"}
    if filters:
        query.update(
            filter_keys=list(filters),
            filter_predicates=["="] * len(filters),
            filter_values=list(filters.values()),
        )
    url = f"{cluster.dashboard_url}/api/v0/{resource}?{urllib.parse.urlencode(query, doseq=True)}"
    request = urllib.request.Request(url, headers={"x-ray-authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["data"]["result"]["result"]


def job_status(cluster: LocalRayCluster, job_id: str) -> str:
    """The job's status from the job server's REST API (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    request = urllib.request.Request(
        f"{cluster.dashboard_url}/api/jobs/{job_id}",
        headers={"x-ray-authorization": f"Bearer {cluster.token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["status"]


def test_two_nodes_then_node_loss(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "runs"
    with (
        mlflow_server(tmp_path / "mlflow") as tracking_uri,
        LocalRayCluster(num_workers=1, head_cpus=3, worker_cpus=2, node_env=FAST_HEALTH_CHECKS) as cluster,
    ):
        nodes = cluster.wait_for_alive_nodes(2)
        head, worker = nodes["stpa-head"], nodes["stpa-worker-1"]
        command = [ray_executable(), "job", "submit", "--address", cluster.dashboard_url, "--no-wait"]
        command += ["--runtime-env-json", json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": tracking_uri}})]
        command += [
            "--",
            sys.executable,
            str(WORKFLOW),
            "--storage",
            str(storage),
            "--workflow-id",
            "two-nodes",
        ]
        command += ["--epochs", "3", "--synth-videos-per-class", "8", "--synth-classes", "4", "--no-register"]
        command += ["--set", "train.placement_strategy=SPREAD"]
        submitted = subprocess.run(command, env=cluster.env(), capture_output=True, text=True, timeout=120)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job_id = next(
            w for w in (submitted.stdout + submitted.stderr).replace("'", " ").split() if "raysubmit_" in w
        )

        # Wait for the first epoch's checkpoint to be committed (the second checkpoint folder appears after it).
        deadline = time.monotonic() + 600
        while len(list((storage / "ray").glob("*/checkpoint_*"))) < 2:
            assert time.monotonic() < deadline, "no committed checkpoint within 10 minutes"
            assert job_status(cluster, job_id) in ("RUNNING", "PENDING"), job_status(cluster, job_id)
            time.sleep(1)
        train_workers = state(cluster, "actors", class_name="RayTrainWorker")
        assert {a["node_id"] for a in train_workers if a["state"] == "ALIVE"} == {head, worker}

        cluster.kill_worker(1)  # node loss
        cluster.wait_for_alive_nodes(1)

        deadline = time.monotonic() + 900
        while (status := job_status(cluster, job_id)) in ("RUNNING", "PENDING"):
            assert time.monotonic() < deadline, "job did not finish within 15 minutes of the node loss"
            time.sleep(2)
        logs = subprocess.run(
            [ray_executable(), "job", "logs", "--address", cluster.dashboard_url, job_id],
            env=cluster.env(),
            capture_output=True,
            text=True,
        ).stdout
        assert status == "SUCCEEDED", logs[-5000:]

        decode_nodes = {t["node_id"] for t in state(cluster, "tasks") if "decode_clip_batch" in t["name"]}
        assert {head, worker} <= decode_nodes, decode_nodes
        summary = json.loads([line for line in logs.splitlines() if line.startswith('{"workflow_id"')][-1])
        client = MlflowClient(tracking_uri=tracking_uri)
        run_id = summary["mlflow_run_id"]
        assert max(m.value for m in client.get_metric_history(run_id, "restarts")) >= 1
        epochs = [int(m.value) for m in client.get_metric_history(run_id, "epoch")]
        assert epochs.count(1) == 1 and max(epochs) == 3, epochs  # epoch 1 was not trained again
        steps = client.get_metric_history(run_id, "steps_this_attempt")
        first_epoch = min(m.value for m in steps if m.step == 1)
        last = max(m.value for m in steps if m.step == 3)
        assert last <= 2 * first_epoch, (first_epoch, last)  # the last attempt ran epochs 2-3 only
