"""cluster/local.sh through tests/ray_cluster.py: a real head + worker raylet on this machine, token auth on.

One cluster serves the whole module (starting one takes ~20 s on 2 cores); the last test kills the worker node,
stops the cluster and checks nothing of it is left. Clients are subprocesses (see tests/ray_cluster.py on why).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ray_cluster import FAST_HEALTH_CHECKS, LocalRayCluster, ray_executable

pytestmark = pytest.mark.slow

# Connects with whatever token its environment gives, lists the alive nodes, runs one task on each node.
CLIENT = """
import json, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init(logging_level="warning")
alive = [n for n in ray.nodes() if n["Alive"]]
where = ray.get([
    ray.remote(lambda: ray.get_runtime_context().get_node_id())
    .options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
    .remote()
    for n in alive
])
print("RESULT " + json.dumps({"nodes": sorted(n["NodeID"] for n in alive), "ran_on": sorted(where)}))
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    with LocalRayCluster(num_workers=1, head_cpus=1, worker_cpus=1, node_env=FAST_HEALTH_CHECKS) as running:
        yield running


def no_token_env(cluster: LocalRayCluster, home: Path, **extra: str) -> dict[str, str]:
    """``cluster.env()`` without any token: no RAY_AUTH_TOKEN_PATH, and a HOME without ``.ray/auth_token``."""
    env = cluster.env()
    del env["RAY_AUTH_TOKEN_PATH"]
    env["HOME"] = str(home)
    env.update(extra)
    return env


def http_status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_client_with_token_sees_both_nodes_and_runs_tasks_on_each(cluster: LocalRayCluster) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CLIENT], env=cluster.env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    seen = json.loads(line.removeprefix("RESULT "))
    expected = sorted(cluster.node_ids().values())
    assert len(expected) == 2
    assert seen == {"nodes": expected, "ran_on": expected}
    assert set(cluster.node_ids()) == {"stpa-head", "stpa-worker-1"}


def test_job_submit_with_token_succeeds(cluster: LocalRayCluster, tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text(
        "import ray\nray.init()\nprint('JOB ALIVE NODES', sum(n['Alive'] for n in ray.nodes()))\n"
    )
    result = subprocess.run(
        [ray_executable(), "job", "submit", "--working-dir", str(tmp_path), "--", "python", "job.py"],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "JOB ALIVE NODES 2" in result.stdout
    assert "succeeded" in result.stdout.lower()


def test_dashboard_refuses_requests_without_the_token(cluster: LocalRayCluster) -> None:
    url = f"{cluster.dashboard_url}/api/jobs/"
    assert http_status(url, {"x-ray-authorization": f"Bearer {cluster.token}"}) == 200  # the server is up
    assert http_status(url, {}) == 401
    assert http_status(url, {"x-ray-authorization": "Bearer " + "0" * 64}) == 403


def test_job_cli_without_the_token_is_refused(cluster: LocalRayCluster, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    ray = ray_executable()
    # Same call with the token: it works, so the refusals below are about the token and nothing else.
    with_token = subprocess.run(
        [ray, "job", "list"], env=cluster.env(), capture_output=True, text=True, timeout=60
    )
    assert with_token.returncode == 0, with_token.stderr[-2000:]

    no_auth_mode = no_token_env(cluster, home)
    del no_auth_mode["RAY_AUTH_MODE"]  # the client sends no token at all: the server says 401
    missing = subprocess.run(
        [ray, "job", "list"], env=no_auth_mode, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode != 0
    assert "Missing authentication token" in missing.stderr

    wrong = no_token_env(cluster, home, RAY_AUTH_TOKEN="f" * 64)  # the server checks the value: 403
    refused = subprocess.run([ray, "job", "list"], env=wrong, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "Invalid authentication token" in refused.stderr


def test_gcs_refuses_a_driver_with_a_wrong_token(cluster: LocalRayCluster, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = no_token_env(cluster, home, RAY_AUTH_TOKEN="e" * 64)
    # ray.init retries for ~20 s before giving up; the GCS's answer is logged on the first attempt.
    driver = subprocess.Popen(
        [sys.executable, "-c", "import ray; ray.init(); print('CONNECTED')"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        assert driver.stdout is not None
        deadline = time.monotonic() + 60
        for line in driver.stdout:
            lines.append(line)
            if "Unauthenticated" in line or "CONNECTED" in line or time.monotonic() > deadline:
                break
    finally:
        driver.kill()
        driver.wait()
    output = "".join(lines)
    assert "CONNECTED" not in output
    assert "InvalidAuthToken" in output, output[-3000:]


def cluster_pids(cluster: LocalRayCluster) -> list[int]:
    """Processes carrying this cluster's marker (set by local.sh on every node, inherited by workers and jobs)."""
    marker = f"STPA_LOCAL_CLUSTER={cluster.temp_dir}".encode()
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            pids.append(int(pid))
    return pids


def running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped by its (re)parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_until_gone(pids: list[int], timeout_s: float) -> list[int]:
    """The pids still running after up to ``timeout_s`` seconds (SIGKILL is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    left = [p for p in pids if running(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in left if running(p)]
    return left


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc (Linux)")
def test_node_loss_then_stop_leaves_no_process(cluster: LocalRayCluster) -> None:
    """Runs last: kills worker node 1, waits for Ray to declare it dead, stops the cluster, checks it is gone."""
    before = cluster.node_ids()
    worker_pids = [p for p in cluster_pids(cluster) if os.getpgid(p) in cluster.worker_pgids()]
    assert worker_pids, "the worker node's raylet should be running"
    cluster.kill_worker(1)
    alive = cluster.wait_for_alive_nodes(1, timeout_s=60)
    assert alive == {"stpa-head": before["stpa-head"]}
    dead = [n for n in cluster.nodes() if n["node_name"] == "stpa-worker-1"]
    assert [n["state"] for n in dead] == ["DEAD"]
    assert wait_until_gone(worker_pids, timeout_s=10) == []

    assert cluster_pids(cluster), "the head should still be running"
    cluster.stop()
    assert wait_until_gone(cluster_pids(cluster), timeout_s=10) == []
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{cluster.dashboard_url}/api/version", timeout=5)
