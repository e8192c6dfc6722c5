"""A real MLflow tracking server for tests: ``mlflow server`` on 127.0.0.1 with a SQLite backend.

The server runs as a subprocess of the test (the venv's own ``mlflow`` executable, one worker), stores runs and
the registry in ``<root>/mlflow.db`` and serves artifacts from ``<root>/artifacts`` through its artifact proxy,
so clients see ``mlflow-artifacts:/`` locations exactly as they would against a shared server. Usage::

    with mlflow_server(tmp_path) as uri:  # "http://127.0.0.1:<port>"
        MlflowClient(tracking_uri=uri).create_experiment("x")

or, as a pytest fixture, ``mlflow_server_uri = pytest.fixture(scope="module")(mlflow_server_fixture)``.
``model_server`` likewise runs MLflow's scoring server (``mlflow models serve``) for a registered model.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

MLFLOW = Path(sys.executable).parent / "mlflow"
STARTUP_TIMEOUT_S = 90.0


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    """True when a GET of ``url`` returns 200 within 2 s (a server's health or ping route)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


@contextlib.contextmanager
def mlflow_server(root: str | os.PathLike, *, port: int | None = None) -> Iterator[str]:
    """Start an MLflow tracking server, wait until ``/health`` answers, yield its URI, then stop it.

    Args:
        root: Folder for the SQLite database (``mlflow.db``), the artifacts and the server's log
            (``server.log``, shown in the error when the server does not come up).
        port: Port to listen on (default: a free one).

    Yields:
        The server's tracking URI, ``http://127.0.0.1:<port>``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [
        str(MLFLOW),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        # A session of its own: the CLI starts the web server as a child process, and the whole group is stopped.
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            start_new_session=True,
            # No job-execution runner (a second process, for GenAI evaluation jobs): tests need none of it.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
    try:
        _wait_until_up(
            process, log_path, lambda: _answers(f"{uri}/health"), f"mlflow server on {uri}", "/health"
        )
        yield uri
    finally:
        _stop(process)


@contextlib.contextmanager
def model_server(
    model_uri: str, tracking_uri: str, root: str | os.PathLike, *, port: int | None = None
) -> Iterator[str]:
    """``mlflow models serve -m MODEL_URI --env-manager local -h 127.0.0.1``: wait until ``/ping`` answers, yield
    its URL, then stop it.

    Args:
        model_uri: What to serve (``models:/stpa-ucf101@champion``), resolved through ``tracking_uri``.
        tracking_uri: The tracking and registry URI the server reads the model from (``MLFLOW_TRACKING_URI``).
        root: Folder for the server's log (``model_server.log``, shown when it does not come up).
        port: Port to listen on (default: a free one).

    Yields:
        ``http://127.0.0.1:<port>``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(MLFLOW), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    log_path = root / "model_server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            start_new_session=True,
            # The CLI starts ``uvicorn`` by name: the venv's bin folder must be on PATH (as after activating it).
            env={
                **os.environ,
                "MLFLOW_TRACKING_URI": tracking_uri,
                "PATH": f"{MLFLOW.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            },
        )
    try:
        _wait_until_up(
            process, log_path, lambda: _answers(f"{url}/ping"), f"mlflow models serve on {url}", "/ping"
        )
        yield url
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (the CLI and its web server workers), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def mlflow_server_fixture(tmp_path_factory) -> Iterator[str]:
    """Pytest fixture body: a server in a fresh temporary folder; wrap it with ``pytest.fixture(scope=...)``."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as uri:
        yield uri


def _wait_until_up(process, log_path, answered, what: str, endpoint: str) -> None:
    """Poll ``answered()`` until it is true; raise with the server's log tail if it exits or times out first."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not answered():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-3000:]
            state = f"exited with {process.returncode}" if process.poll() is not None else "timed out"
            raise RuntimeError(f"{what} {state} before {endpoint} answered:\n{tail}")
        time.sleep(0.25)
