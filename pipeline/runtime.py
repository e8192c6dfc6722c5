"""Connecting to Ray: join a cluster when one is named, start a private local one when not.

- ``RAY_ADDRESS`` set (``ray job submit`` sets it for the job's driver), or ``address`` given: join that cluster.
- Otherwise: start a private local Ray on this machine, bound to 127.0.0.1, with token authentication on (Ray 2.60's
  default: the token lives in ``~/.ray/auth_token``). A cluster that ``ray start --head`` left running on this
  machine is *not* joined (plain ``ray.init()`` would join it, and refuse the CPU count a local run sets): the run
  says so and names the ``RAY_ADDRESS`` that would run it there.

A local Ray advertises a few more logical CPUs than the machine has when training runs on CPU: Ray Train workers
each hold CPUs for the whole run, and the Ray Data decode tasks that feed them need CPUs of their own, or they
would wait for ever on a 2-core laptop. The OS shares the cores; nothing deadlocks. A joined cluster is what it is:
``describe_resource_waits`` says what it is short of when training waits for batches.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable


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
    if address:
        ray.init(address=address, log_to_driver=True)
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
    ray.init(
        address="local",  # a new Ray even when `ray start` left one running here (see module doc)
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        _node_ip_address="127.0.0.1",
        configure_logging=True,
        log_to_driver=True,
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
