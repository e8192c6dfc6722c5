"""Connecting to Ray: join a cluster when there is one, start a local one when there is not.

- ``RAY_ADDRESS`` set (``ray job submit`` sets it for the job's driver), or ``address`` given: join that cluster.
- Otherwise: start a local Ray on this machine, bound to 127.0.0.1, with token authentication on (Ray 2.60's
  default: the token lives in ``~/.ray/auth_token``).

A local Ray advertises a few more logical CPUs than the machine has when training runs on CPU: Ray Train workers
each hold a CPU for the whole run, and the Ray Data decode tasks that feed them need CPUs of their own, or they
would wait for ever on a 2-core laptop. The OS shares the cores; nothing deadlocks.
"""

from __future__ import annotations

import os


def init_ray(address: str | None = None, *, num_train_workers: int = 0, num_cpus: int | None = None) -> None:
    """``ray.init`` for the three ways a workflow runs (local, ``ray job submit``, ``RAY_ADDRESS``)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    if num_cpus is None:
        num_cpus = (os.cpu_count() or 1) + num_train_workers
    # The dashboard serves Ray's state API, which Ray Train's controller polls and whose cleanup actor frees the
    # CPUs of a stopped trial's workers (a Tune sweep with early stopping). With several Rays on one machine that
    # actor finds its own dashboard only through RAY_API_SERVER_ADDRESS, set before the cluster starts so every
    # Ray process inherits it.
    dashboard_port = _free_port()
    os.environ.setdefault("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{dashboard_port}")
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        _node_ip_address="127.0.0.1",
        configure_logging=True,
        log_to_driver=True,
    )


def _free_port() -> int:
    """Ray's default dashboard port (8265) when free on 127.0.0.1, else any free port."""
    import socket

    for port in (8265, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")
