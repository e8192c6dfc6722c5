"""The Charades workflow on a 2-node cluster (cluster/local.sh: a head and a worker raylet on loopback, token auth),
submitted with ``ray job submit``, surviving the loss of the worker node in the middle of training.

Checked through Ray's state API (an independent record, not our logs): decode tasks ran on both nodes and Ray
Train workers were placed on both; then the worker node is SIGKILLed (raylet, agents, workers) after the first
epoch's checkpoint is committed; the job still finishes on the head, MLflow records the restart, epoch 1 is
not trained again, and each epoch is logged once (the epoch cut short by the loss is logged by the attempt
that finishes it).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from pipeline import metric_names as names
from tests.mlflow_server import mlflow_server
from tests.ray_cluster import FAST_HEALTH_CHECKS, LocalRayCluster
from tests.workflows.jobs import job_id_of, job_logs, submit_workflow, wait_for_checkpoints, wait_for_end

pytestmark = pytest.mark.slow


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


def test_two_nodes_then_node_loss(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "runs"
    with (
        mlflow_server(tmp_path / "mlflow") as tracking_uri,
        LocalRayCluster(num_workers=1, head_cpus=3, worker_cpus=2, node_env=FAST_HEALTH_CHECKS) as cluster,
    ):
        nodes = cluster.wait_for_alive_nodes(2)
        head, worker = nodes["stpa-head"], nodes["stpa-worker-1"]
        args = ["--storage", str(storage), "--workflow-id", "two-nodes", "--epochs", "3", "--no-register"]
        args += [
            "--synth-videos-per-class",
            "8",
            "--synth-classes",
            "4",
            "--set",
            "train.placement_strategy=SPREAD",
        ]
        submitted = submit_workflow(cluster, tracking_uri, args, wait=False)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        job_id = job_id_of(submitted.stdout + submitted.stderr)
        wait_for_checkpoints(cluster, job_id, storage)  # the first epoch's checkpoint is committed
        train_workers = state(cluster, "actors", class_name="RayTrainWorker")
        assert {a["node_id"] for a in train_workers if a["state"] == "ALIVE"} == {head, worker}

        cluster.kill_worker(1)  # node loss
        cluster.wait_for_alive_nodes(1)

        status = wait_for_end(cluster, job_id)
        logs = job_logs(cluster, job_id)
        assert status == "SUCCEEDED", logs[-5000:]

        decode_nodes = {t["node_id"] for t in state(cluster, "tasks") if "decode_clip_batch" in t["name"]}
        assert {head, worker} <= decode_nodes, decode_nodes
        summary = json.loads((storage / "two-nodes" / "summary.json").read_text())
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        run_id = summary["mlflow_run_id"]
        tags = client.get_run(run_id).data.tags
        assert int(tags["stpa.restarts"]) >= 1
        epochs = [int(m.value) for m in client.get_metric_history(run_id, names.TRAIN_EPOCH)]
        assert sorted(epochs) == [1, 2, 3], epochs  # each epoch on record once; epoch 1 was not trained again
        per_epoch = int(tags["stpa.global_step"]) // 3
        last = int(tags["stpa.steps_this_attempt"])
        assert last <= 2 * per_epoch, (per_epoch, last)  # the last attempt ran epochs 2-3 only
