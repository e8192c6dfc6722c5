"""MLflow tracking: where runs go, how a config becomes params, and finding a run again to resume it.

Embedded default: a SQLite file at an absolute path under the working directory (``sqlite:///<cwd>/mlflow.db``).
``MLFLOW_TRACKING_URI`` (for example ``http://127.0.0.1:5000`` for a tracking server, which a multi-node run needs
because SQLite allows one writer) overrides it. The URI is resolved once in the driver and handed to the workers
as an absolute URI: Ray workers chdir into the session folder, where a relative path would land elsewhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from pipeline import metric_names as names

RUN_NAME_TAG = "stpa.run_name"
DATASET_TAG = "stpa.dataset"
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own tag: the run page shows it
DESCRIPTION_TAG = "mlflow.note.content"  # MLflow's own tag: the run page's description (Markdown)


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an absolute SQLite URI in the current directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{os.path.abspath('mlflow.db')}"


TRACKING_TIMEOUT_S = 5.0  # how long a tracking server may take to answer before a command gives up on it


def display_uri(uri: str) -> str:
    """``uri`` without a user name or password (``http://user:secret@host`` -> ``http://host``), for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if not parts.username and not parts.password:
        return uri
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")))


def check_tracking_server(uri: str, timeout_s: float | None = None) -> None:
    """Fail fast when an MLflow tracking server does not answer (MLflow's client retries for minutes, silently).

    Only ``http(s)://`` URIs are checked: ``GET <uri>/health`` (any HTTP answer counts: a proxy's 404 still shows
    the server is reachable); SQLite and other local stores have nothing to reach.

    Args:
        uri: the tracking URI.
        timeout_s: seconds to wait for an answer (default ``TRACKING_TIMEOUT_S``).

    Raises:
        pipeline.errors.UserError: no answer within ``timeout_s`` seconds (refused, unresolvable, silent).
    """
    import base64
    import urllib.error
    import urllib.parse
    import urllib.request

    from pipeline.errors import UserError

    if not uri.startswith(("http://", "https://")):
        return
    timeout_s = TRACKING_TIMEOUT_S if timeout_s is None else timeout_s
    parts = urllib.parse.urlsplit(uri)
    request = urllib.request.Request(f"{display_uri(uri).rstrip('/')}/health")
    if parts.username:  # user:password@host: urllib wants them as a header
        token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        why = f"no answer within {timeout_s:g} s" if isinstance(reason, TimeoutError) else str(reason)
        raise UserError(
            f"the MLflow tracking server {display_uri(uri)} does not answer ({why}): "
            "start it (mlflow server --host 127.0.0.1 --port PORT ...) or set MLFLOW_TRACKING_URI "
            "(or --tracking-uri) to one that runs"
        ) from None


def tracking_store_exists(uri: str) -> bool:
    """False for a ``sqlite:///`` URI whose database file does not exist (reading it would create an empty one),
    True otherwise. Read-only commands check this before they open a store."""
    if uri.startswith("sqlite:///"):
        return os.path.exists(uri[len("sqlite:///") :])
    return True


def default_artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite-tracked experiment go beside the database (``<db dir>/mlartifacts/<experiment>``),
    not into ``./mlruns`` of whatever directory the process happens to run in; a server decides for itself."""
    if not uri.startswith("sqlite:///"):
        return None
    import pathlib

    database = pathlib.Path(uri[len("sqlite:///") :])
    return (database.parent / "mlartifacts" / experiment).resolve().as_uri()


def experiment_name(dataset: str) -> str:
    return f"stpa-{dataset}"


def flatten_config(config: Any, prefix: str = "") -> dict[str, str]:
    """A (nested) dataclass or dict as flat ``section.field -> str`` params for ``mlflow.log_params``."""
    if dataclasses.is_dataclass(config):
        config = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) or isinstance(value, dict):
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def git_commit() -> str:
    """The project's commit: ``STPA_GIT_COMMIT`` when set (an image build without ``.git``), else ``git rev-parse
    HEAD`` of the checkout this package runs from with ``-dirty`` for uncommitted changes, else ``"unknown"``."""
    if os.environ.get("STPA_GIT_COMMIT"):
        return os.environ["STPA_GIT_COMMIT"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


def find_or_create_run(
    uri: str,
    dataset: str,
    run_name: str,
    tags: dict[str, str] | None = None,
    *,
    title: str | None = None,
    description: str | None = None,
) -> tuple[str, bool]:
    """The id of this run name's MLflow run in the dataset's experiment, creating it when there is none.

    A re-run with the same run name (a driver restart) continues the same MLflow run, as Ray Train continues the
    same training run from its latest checkpoint.

    Args:
        uri: MLflow tracking URI.
        dataset: names the experiment, ``stpa-<dataset>``.
        run_name: the resume key (tag ``stpa.run_name``); also the MLflow run name unless ``title`` is given.
        tags: more tags for a new run.
        title: the run name people read in the MLflow UI (``workflow dataset preset date``).
        description: the run's description (Markdown, MLflow's ``mlflow.note.content``).

    A new run is tagged with the code's git commit (``mlflow.source.git.commit``, which the UI shows).

    Returns:
        ``(run_id, resumed)``.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    name = experiment_name(dataset)
    experiment = client.get_experiment_by_name(name)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(name, artifact_location=default_artifact_location(uri, name))
    )
    existing = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}' and attributes.status != 'DELETED'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if existing:
        client.set_terminated(existing[0].info.run_id, status="RUNNING")
        return existing[0].info.run_id, True
    new_tags = {RUN_NAME_TAG: run_name, DATASET_TAG: dataset, GIT_COMMIT_TAG: git_commit(), **(tags or {})}
    if description:
        new_tags[DESCRIPTION_TAG] = description
    run = client.create_run(experiment_id, run_name=title or run_name, tags=new_tags)
    return run.info.run_id, False


def run_title(kind: str, dataset: str, preset: str | None = None, when: float | None = None) -> str:
    """A run name people can read: ``train charades smoke 2026-12-04 19:17`` (local time)."""
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(when))
    return " ".join(part for part in (kind, dataset, preset, stamp) if part)


def run_url(uri: str, experiment_id: str, run_id: str) -> tuple[str, str | None]:
    """Where to look at a run: ``(url, command)``. An HTTP(S) tracking server serves the page itself (command
    None); for a SQLite store the page is served by ``mlflow ui`` on its default address, started by ``command``."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}", None
    return f"http://127.0.0.1:5000/{page}", f"mlflow ui --backend-store-uri {uri}"


@contextlib.contextmanager
def process_uris(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs at ``uri`` for the block, then put back exactly what
    was set before (including "nothing": the environment decides again).

    For the fluent APIs that read only the process-wide URIs (``mlflow.register_model``, ``mlflow.start_run``);
    leaving them set would send a later ``MlflowClient(tracking_uri=other)`` to this registry.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")  # set_tracking_uri exports the URI to the env too
    previous = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    previous_env = {name: os.environ.get(name) for name in names}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = previous
        for name, value in previous_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class RankZeroRun:
    """Logs to one MLflow run from rank 0 through the client API (no global active-run state in workers)."""

    def __init__(self, uri: str, run_id: str) -> None:
        from mlflow.tracking import MlflowClient  # mlflow is heavy: imported when a run logs

        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = run_id
        self.uri = uri

    def log_report_once(self, report: dict[str, float]) -> bool:
        """Log one ``ray.train.report`` unless it is on record already; True if logged.

        Metrics (``<split>/<name>``) go at the report's optimiser step (``global_step``), bookkeeping counters as
        tags (``pipeline.metric_names.split_report``). An epoch's report is on record when ``train/epoch`` has a
        point of its epoch. The final report (``final``) adds the test metrics, if any, and is on record when they
        have a point at its step (a run resumed for more epochs reports a second final at a later step); its other
        metrics were logged with the last epoch and are not repeated, and tags alone are idempotent.
        """
        metrics, tags = names.split_report(report)
        step = int(report.get(names.GLOBAL_STEP, 0))
        if report.get(names.FINAL):
            metrics = {k: v for k, v in metrics.items() if k.startswith(names.TEST + "/")}
            first = next(iter(sorted(metrics)), None)
            if first and any(m.step == step for m in self.client.get_metric_history(self.run_id, first)):
                return False
        elif names.EPOCH in report:
            epoch = float(report[names.EPOCH])
            if any(m.value == epoch for m in self.client.get_metric_history(self.run_id, names.TRAIN_EPOCH)):
                return False
            metrics[names.TRAIN_EPOCH] = epoch
        else:
            return False
        self.log(metrics, tags, step=step)
        return True

    def log(self, metrics: dict[str, float], tags: dict[str, str] | None = None, *, step: int) -> None:
        """Metrics at ``step`` and tags in one request (one transaction: a marker tag and its metrics land
        together); non-finite values (``val/best_*`` before the first validation) are left out."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(v)],
            tags=[RunTag(k, v) for k, v in (tags or {}).items()],
        )
