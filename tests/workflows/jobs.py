"""Talking to the job server of a ``LocalRayCluster`` from a test: submit a workflow, read its status and logs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.ray_cluster import LocalRayCluster, ray_executable

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / "workflows" / "train_charades.py"


def submit_workflow(
    cluster: LocalRayCluster, tracking_uri: str, args: list[str], *, wait: bool
) -> subprocess.CompletedProcess:
    """``ray job submit`` of ``workflows/train_charades.py ARGS`` with the tracking URI in the job's env."""
    command = [ray_executable(), "job", "submit", "--address", cluster.dashboard_url]
    command += ["--runtime-env-json", json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": tracking_uri}})]
    if not wait:
        command.append("--no-wait")
    command += ["--", sys.executable, str(WORKFLOW), *args]
    return subprocess.run(command, env=cluster.env(), capture_output=True, text=True, timeout=900)


def job_id_of(output: str) -> str:
    for word in output.replace("'", " ").split():
        if word.startswith("raysubmit_"):
            return word
    raise AssertionError(f"no job id in:\n{output}")


def job_status(cluster: LocalRayCluster, job_id: str) -> str:
    """The job's status from the job server's REST API (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    request = urllib.request.Request(
        f"{cluster.dashboard_url}/api/jobs/{job_id}",
        headers={"x-ray-authorization": f"Bearer {cluster.token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["status"]


def job_log_text(cluster: LocalRayCluster, job_id: str) -> str:
    """The job's log as the job server keeps it (the driver's output), from its REST API: no client lines."""
    request = urllib.request.Request(
        f"{cluster.dashboard_url}/api/jobs/{job_id}/logs",
        headers={"x-ray-authorization": f"Bearer {cluster.token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["logs"]


def job_logs(cluster: LocalRayCluster, job_id: str) -> str:
    return subprocess.run(
        [ray_executable(), "job", "logs", "--address", cluster.dashboard_url, job_id],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout


def wait_for_checkpoints(cluster: LocalRayCluster, job_id: str, storage: Path, count: int = 2) -> None:
    """Until ``count`` checkpoint folders exist (the first is committed when the second appears); fails if the
    job ends first or nothing comes within 10 minutes."""
    deadline = time.monotonic() + 600
    while len(list((storage / "ray").glob("*/checkpoint_*"))) < count:
        assert time.monotonic() < deadline, "no committed checkpoint within 10 minutes"
        status = job_status(cluster, job_id)
        assert status in ("RUNNING", "PENDING"), (
            f"job {status} before a checkpoint:\n{job_logs(cluster, job_id)[-3000:]}"
        )
        time.sleep(1)


def wait_for_end(cluster: LocalRayCluster, job_id: str, timeout_s: float = 900) -> str:
    deadline = time.monotonic() + timeout_s
    while (status := job_status(cluster, job_id)) in ("RUNNING", "PENDING"):
        assert time.monotonic() < deadline, f"job still {status} after {timeout_s} s"
        time.sleep(2)
    return status
