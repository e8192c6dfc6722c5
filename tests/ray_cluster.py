"""A real multi-node Ray cluster on this machine for tests: a head plus N worker raylets, token auth on.

``LocalRayCluster`` drives ``cluster/local.sh`` (the same script developers use) in a private temp dir, on free
ports, with its own token file, so it coexists with a ``ray.init()`` local Ray that another test module holds
open in the same pytest process (``tests/pipeline/conftest.py``'s ``ray_local``): different GCS, dashboard, client
server and agent ports, a different temp dir and token. What cannot coexist is a *driver*: one Python process
holds one ``ray.init`` connection, and Ray's token loader reads the token once per process. Talk to this
cluster from subprocesses (``ray job submit``, ``python -c ...``) with ``cluster.env()``, never with
``ray.init`` in the pytest process. Usage::

    with LocalRayCluster(num_workers=1) as cluster:
        subprocess.run(["ray", "job", "submit", "--", "python", "-c", "..."], env=cluster.env(), check=True)
        cluster.kill_worker(1)  # node loss: SIGKILL worker node 1's raylet, agents and Ray workers
        cluster.wait_for_alive_nodes(1)

The cluster is stopped on ``__exit__`` also when the test fails, and only its own processes are signalled
(``ray stop`` would stop every Ray of this user on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_SH = REPO_ROOT / "cluster" / "local.sh"

# node_env for tests that kill a node: it is declared dead after a few missed health checks, ~3 s instead of ~15 s.
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
# Variables of the caller that would point a client at some other cluster or token.
_CLIENT_VARIABLES = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_AUTH_MODE",
)


def free_port() -> int:
    """A TCP port free on every interface right now (Ray's GCS binds all interfaces)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def ray_executable() -> str:
    """The ``ray`` CLI of the Python running the tests (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


class LocalRayCluster:
    """A head and ``num_workers`` worker raylets on loopback, started by ``cluster/local.sh`` (heavy state).

    Args:
        num_workers: worker nodes besides the head.
        head_cpus: logical CPUs of the head node.
        worker_cpus: logical CPUs of each worker node.
        start_timeout_s: how long ``start`` waits for every node to be alive.
        stop_grace_s: seconds between SIGTERM and SIGKILL when stopping.
        keep_temp_dir: keep the temp dir (Ray logs) after ``stop``; it is kept anyway when ``start`` fails.
        node_env: extra environment of every node's processes, e.g. Ray system config such as
            ``{"RAY_health_check_period_ms": "1000"}`` (a killed node is declared dead sooner).
    """

    def __init__(
        self,
        num_workers: int = 1,
        *,
        head_cpus: int = 1,
        worker_cpus: int = 1,
        start_timeout_s: float = 120.0,
        stop_grace_s: float = 3.0,
        keep_temp_dir: bool = False,
        node_env: dict[str, str] | None = None,
    ) -> None:
        if num_workers < 0 or head_cpus < 0 or worker_cpus < 0:
            raise ValueError(f"negative size: {num_workers=} {head_cpus=} {worker_cpus=}")
        self.num_workers = num_workers
        self.head_cpus = head_cpus
        self.worker_cpus = worker_cpus
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self.keep_temp_dir = keep_temp_dir
        self.node_env = dict(node_env or {})
        self.temp_dir: Path | None = None
        self.port = 0
        self.dashboard_port = 0
        self.client_server_port = 0
        self._running = False

    # --- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> LocalRayCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the head and the workers; returns when all ``num_workers + 1`` nodes are alive."""
        if self._running:
            raise RuntimeError("this LocalRayCluster is already running")
        # Short path: Ray's unix sockets live under it (limit 107 characters).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="stpa-ray-", dir="/tmp"))
        self.port, self.dashboard_port, self.client_server_port = free_port(), free_port(), free_port()
        self._running = True  # from here on, stop() has something to clean up even if start fails
        try:
            result = self._start()
        except BaseException:
            self.keep_temp_dir = True
            self.stop()
            raise
        if result.returncode != 0:
            logs = self.temp_dir
            self.keep_temp_dir = True
            self.stop()
            raise RuntimeError(
                f"cluster/local.sh start failed (exit {result.returncode}; Ray logs in {logs}):\n"
                f"{result.stdout}\n{result.stderr}"
            )

    def _start(self) -> subprocess.CompletedProcess[str]:
        return self._local_sh(
            "start",
            "--workers", str(self.num_workers),
            "--head-cpus", str(self.head_cpus),
            "--worker-cpus", str(self.worker_cpus),
            "--port", str(self.port),
            "--dashboard-port", str(self.dashboard_port),
            "--client-server-port", str(self.client_server_port),
            "--timeout", str(int(self.start_timeout_s)),
            timeout_s=self.start_timeout_s + 60,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop every process of this cluster (and only those); remove the temp dir unless asked to keep it."""
        if not self._running or self.temp_dir is None:
            return
        try:
            self._local_sh("stop", "--grace", str(int(self.stop_grace_s)), timeout_s=self.stop_grace_s + 60)
        finally:
            self._running = False
            if not self.keep_temp_dir:
                shutil.rmtree(self.temp_dir, ignore_errors=True)

    # --- what a client needs -----------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """The GCS address, ``127.0.0.1:<port>`` (``ray.init(address=...)``, ``ray status --address``)."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard and job server, ``http://127.0.0.1:<port>`` (``ray job submit --address``)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def token_path(self) -> Path:
        """The file holding this cluster's token (``RAY_AUTH_TOKEN_PATH`` of every node and client)."""
        if self.temp_dir is None:
            raise RuntimeError("the cluster has not been started")
        return self.temp_dir / "auth_token"

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a client process (``ray job submit``, a driver's ``ray.init()``).

        ``RAY_ADDRESS`` is the GCS address (``ray.init`` reads it), ``RAY_API_SERVER_ADDRESS`` the job server
        (the ``ray job`` CLI prefers it), ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` the token file.
        ``PATH`` starts with the test's Python environment, so ``python`` there is the venv's.

        Args:
            base: the environment to extend (default: this process's); its Ray client variables are replaced.
        """
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _CLIENT_VARIABLES}
        env.update(
            RAY_ADDRESS=self.address,
            RAY_API_SERVER_ADDRESS=self.dashboard_url,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_path),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        )
        return env

    # --- inspection and node loss ------------------------------------------------------------------------------
    def nodes(self) -> list[dict[str, object]]:
        """Every node the cluster has seen (also dead ones): ``node_id``, ``node_name``, ``state``, ...

        Read from the dashboard's state API over HTTP with the token header, so this process needs no Ray
        connection. Node names are ``stpa-head`` and ``stpa-worker-<i>`` (1-based).
        """
        request = urllib.request.Request(
            f"{self.dashboard_url}/api/v0/nodes?limit=1000&detail=false",
            headers={"x-ray-authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)["data"]["result"]["result"]

    def node_ids(self) -> dict[str, str]:
        """Alive nodes: node name (``stpa-head``, ``stpa-worker-1``, ...) to Ray node id (hex)."""
        return {str(n["node_name"]): str(n["node_id"]) for n in self.nodes() if n["state"] == "ALIVE"}

    def wait_for_alive_nodes(self, num_nodes: int, timeout_s: float = 60.0) -> dict[str, str]:
        """Wait until exactly ``num_nodes`` nodes are alive (Ray marks a killed node dead after its health
        checks fail); returns ``node_ids()``."""
        deadline = time.monotonic() + timeout_s
        alive = self.node_ids()
        while len(alive) != num_nodes:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(alive)} nodes alive after {timeout_s} s, expected {num_nodes}: {alive}"
                )
            time.sleep(0.5)
            alive = self.node_ids()
        return alive

    def worker_pgids(self) -> list[int]:
        """Process group of each worker node (its raylet and agents), in start order (worker 1 first)."""
        state = self._state()
        return [int(p) for p in state["WORKER_PGIDS"].split()]

    def kill_worker(self, index: int) -> None:
        """Node loss: SIGKILL worker node ``index`` (1-based): its raylet, agents and Ray worker processes."""
        result = self._local_sh("kill-worker", "--index", str(index), timeout_s=60)
        if result.returncode != 0:
            raise RuntimeError(
                f"cluster/local.sh kill-worker {index} failed:\n{result.stdout}\n{result.stderr}"
            )

    # --- internals ---------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, str]:
        if self.temp_dir is None:
            raise RuntimeError("the cluster has not been started")
        state = {}
        for line in (self.temp_dir / "stpa-cluster.env").read_text().splitlines():
            key, _, value = line.partition("=")
            state[key] = value.strip('"')
        return state

    def _local_sh(self, command: str, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        assert self.temp_dir is not None
        env = {k: v for k, v in os.environ.items() if k not in _CLIENT_VARIABLES}
        env.update(self.node_env)
        env.update(STPA_RAY=ray_executable(), RAY_AUTH_TOKEN_PATH=str(self.token_path))
        return subprocess.run(
            ["bash", str(LOCAL_SH), command, "--temp-dir", str(self.temp_dir), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
