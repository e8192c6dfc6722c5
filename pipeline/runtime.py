"""Connecting to Ray: join a cluster when one is named, start a private local one when not.

- ``RAY_ADDRESS`` set (``ray job submit`` sets it for the job's driver), or ``address`` given: join that cluster.
- Otherwise: start a private local Ray on this machine, bound to 127.0.0.1, with token authentication on (Ray 2.60's
  default: the token lives in ``~/.ray/auth_token``). A cluster that ``ray start --head`` left running on this
  machine is *not* joined (plain ``ray.init()`` would join it, and refuse the CPU count a local run sets): the run
  says so and names the ``RAY_ADDRESS`` that would run it there.

Library output is configured here, once, through the libraries' own settings (``library_log_env``): Ray's, Ray
Data's and MLflow's INFO lines go to Ray's log files (``/tmp/ray/session_latest/logs``), not the console, so a
workflow's output is its own progress plus warnings and errors.

A local Ray advertises a few more logical CPUs than the machine has when training runs on CPU: Ray Train workers
each hold CPUs for the whole run, and the Ray Data decode tasks that feed them need CPUs of their own, or they
would wait for ever on a 2-core laptop. The OS shares the cores; nothing deadlocks. A joined cluster is what it is:
``describe_resource_waits`` says what it is short of when training waits for batches.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable

# Ray Train's DatasetManager passes Ray Data an option Ray Data itself deprecates (Ray 2.60): a warning per
# training run about Ray's own code, which nothing on our side can change.
RAY_TRAIN_DEPRECATION_FILTER = "ignore:`ExecutionOptions.exclude_resources`"
# How long a private local Ray keeps an idle pool worker (Ray's default: 1 s); see init_ray.
IDLE_WORKER_LIFETIME_MS = 300_000


def library_log_env() -> dict[str, str]:
    """Environment settings for every process of a run (driver, step tasks, Ray Train and Ray Data workers).

    - ``RAY_DATA_LOGGING_CONFIG``: Ray Data's logging config with the console at WARNING
      (``pipeline/ray_data_logging.yaml``); its INFO lines stay in ``ray-data.log``.
    - ``RAY_TQDM=0``: Ray Data reports progress as log lines (in that file) instead of distributed tqdm bars drawn
      by the driver.
    - ``MLFLOW_LOGGING_LEVEL=WARNING``: no INFO lines from MLflow (database creation and migration).
    - ``PYTHONWARNINGS``: ignore ``RAY_TRAIN_DEPRECATION_FILTER``'s warning.
    - ``RAY_AIR_NEW_OUTPUT=0``: Tune's legacy console output, which ``verbose=0`` silences; the new engine prints
      its experiment table and a TensorBoard hint whatever the verbosity (a sweep's trials print their own progress).
    """
    return {
        "RAY_DATA_LOGGING_CONFIG": os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "ray_data_logging.yaml"
        ),
        "RAY_TQDM": "0",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "PYTHONWARNINGS": RAY_TRAIN_DEPRECATION_FILTER,
        "RAY_AIR_NEW_OUTPUT": "0",
    }


class _TokenAuthOnFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def _quiet_environment() -> dict[str, str]:
    """``library_log_env`` without the settings the user made (theirs win), applied to this process; returned
    for the job's runtime environment, which carries them to every worker on every node."""
    env = {key: value for key, value in library_log_env().items() if key not in os.environ}
    os.environ.update(env)
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no ANSI colour codes in log files and job logs
    return env


def init_ray(
    address: str | None = None,
    *,
    num_train_workers: int = 0,
    cpus_per_worker: float = 1.0,
    num_cpus: int | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """``ray.init`` for the three ways a workflow runs (local, ``ray job submit``, ``RAY_ADDRESS``).

    Args:
        address: a cluster to join (default: ``RAY_ADDRESS``; neither: a private local Ray).
        num_train_workers, cpus_per_worker: CPU training workers the run will place; a local Ray advertises their
            CPUs on top of the machine's, so decoding keeps the machine's own.
        num_cpus: a local Ray's logical CPUs instead of that sum.
        log: where the line about a running cluster that is not joined goes.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    env = _quiet_environment()
    if address:
        ray.init(
            address=address, log_to_driver=True, logging_level=logging.WARNING, runtime_env={"env_vars": env}
        )
        return
    running = running_cluster_address()
    if running:
        log(
            f"note: a Ray cluster is running on this machine ({running}) but RAY_ADDRESS is not set: this run "
            f"starts a private local Ray. To run on that cluster: RAY_ADDRESS={running} (or ray job submit)."
        )
    if num_cpus is None:
        num_cpus = (os.cpu_count() or 1) + int(-(-num_train_workers * cpus_per_worker // 1))
    # The dashboard serves Ray's state API, which Ray Train's controller polls and whose cleanup actor frees the
    # CPUs of a stopped trial's workers (a Tune sweep with early stopping). With several Rays on one machine that
    # actor finds its own dashboard only through RAY_API_SERVER_ADDRESS, set before the cluster starts so every
    # Ray process inherits it.
    dashboard_port = _free_port()
    os.environ.setdefault("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{dashboard_port}")
    # Ray 2.60 turns token authentication on for a new local cluster and warns that it did, on every start; it is
    # what we want (README, "Security"), so that one record is dropped (a warning that it is off still shows).
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        _TokenAuthOnFilter()
    )
    # The raylet warns when more than 4x its worker start-up concurrency (min(cores, CPUs)) of worker processes
    # exist. A run holds about a dozen (step tasks, Train controller and workers, Ray Data's coordinator and decode
    # tasks), which on a 2-core laptop trips the warning without anything being wrong; allow 3x the CPUs we
    # advertise (as SkyPilot does for its clusters).
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(3 * num_cpus))
    # The raylet ends a pool worker idle for 1 s once more workers than CPUs exist, and starts a new one (importing
    # torch, pyarrow, PyAV again) for the next phase: 34 of the 79 workers of one sweep-workflow test exited idle.
    # An exiting idle worker sometimes aborts in Ray 2.60 ("Mutex corrupt", a SIGABRT stack dump on the console).
    # Idle workers live 5 minutes here, across a run's phases.
    os.environ.setdefault("RAY_idle_worker_killing_time_threshold_ms", str(IDLE_WORKER_LIFETIME_MS))
    ray.init(
        address="local",  # a new Ray even when `ray start` left one running here (see module doc)
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        _node_ip_address="127.0.0.1",
        configure_logging=True,
        logging_level=logging.WARNING,
        log_to_driver=True,
        runtime_env={"env_vars": env},
    )


def running_cluster_address() -> str | None:
    """The GCS address of a cluster ``ray start --head`` runs on this machine (the one plain ``ray.init()`` would
    join: Ray's ``ray_current_cluster`` file in its temp dir, honouring ``RAY_TMPDIR``), if it answers; else None."""
    from ray._private.services import find_bootstrap_address  # Ray's own lookup; no public API says this

    address = find_bootstrap_address(None)
    if not address:
        return None
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return address
    except (OSError, ValueError):
        return None  # a stale file of a cluster that is gone


def describe_resource_waits() -> str:
    """What the connected cluster is waiting for: its free CPUs and GPUs and the resource demands of tasks and
    actors that cannot be placed (what ``ray status`` lists as pending), in one line."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    parts = []
    for resource in ("CPU", "GPU"):
        if total.get(resource):
            parts.append(f"{free.get(resource, 0.0):g} of {total[resource]:g} {resource}s free")
    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        demands = [
            f"{request.count} x {dict(request.bundle)}"
            for demand in status.resource_demands.ray_task_actor_demand
            for request in demand.bundles_by_count
        ]
        demands += [
            f"placement group {request.count} x {dict(request.bundle)}"
            for demand in status.resource_demands.placement_group_demand
            for request in demand.bundles_by_count
        ]
    except Exception as error:  # noqa: BLE001 - a diagnosis must not hide the error it explains
        demands = [f"unknown ({type(error).__name__}: {error})"]
    line = "; ".join(parts)
    line += "; pending demands: " + (", ".join(demands) if demands else "none")
    if total.get("CPU") and free.get("CPU", 0.0) < 1 and demands:
        line += " (no CPU is free: the training workers hold them and Ray Data's decode tasks wait for one)"
    return line


def _free_port() -> int:
    """Ray's default dashboard port (8265) when free on 127.0.0.1, else any free port."""
    for port in (8265, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")
