"""The MLflow Model Registry: one registered model per dataset (``stpa-<dataset>``) and its ``champion`` alias.

``register`` adds a model version with its evaluation metrics, config, manifest hashes, git commit and run id as
version tags (each fact once, none empty), writes its model card as the version's description
(``pipeline.tracking.model_card``), and moves the alias ``champion`` to it only when its primary metric (``top1``;
``mAP`` for Charades) is strictly greater than the current champion's, as read from the champion's own version
tags. The first version of a dataset becomes champion; a tie or a worse model stays a plain version.
``resolve_model`` pins a ``models:/<name>@<alias>`` URI to the version the alias points at now.

Concurrency. Read-compare-set of the alias is a critical section: two workflows registering at once (on any
machines) must not both see the old champion and both move the alias. MLflow has no compare-and-set on aliases,
so the section holds a mutex made of the registry itself: creating the registered model ``stpa-<dataset>.lock``
succeeds for exactly one caller (the backend's unique name constraint; the others get
``RESOURCE_ALREADY_EXISTS``), the holder reads, compares and sets the alias, then deletes the lock model. Waiters
retry with jittered exponential backoff. A lock whose holder died is broken once it is older than
``stale_after_s`` (the server's creation timestamp; the lock's tags name the holder, host:pid:token), which is
far longer than the section takes. Before moving the alias the holder checks that the lock is still its own.
(Residual window, after a crash only: two waiters that break the same stale lock at the same instant can both
pass; the ownership check narrows it to the gap between the check and the alias write.)

Read side: ``list_models`` (``stpa-*`` models, not locks) and ``describe`` (champion, metrics, run link, config,
versions), behind ``stpa models list|show``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline import metric_names
from pipeline.tracking.runs import git_commit, process_uris

MODEL_PREFIX = "stpa-"
LOCK_SUFFIX = ".lock"
CHAMPION = "champion"
# Version tags (all strings). Metrics are tagged "metric.<name>".
METRIC_TAG_PREFIX = "metric."
PRIMARY_METRIC_TAG = "stpa.primary_metric"  # e.g. "mAP" (pipeline.metric_names)
PRIMARY_VALUE_TAG = "stpa.primary_metric_value"  # repr of the float the champion rule compares
CONFIG_TAG = "stpa.config"  # the ExperimentConfig as JSON (dataclasses.asdict)
GIT_COMMIT_TAG = "stpa.git_commit"
RUN_ID_TAG = "stpa.run_id"
DATASET_TAG = "stpa.dataset"
MANIFEST_PARAMS = (
    "manifest.train.sha256",
    "manifest.val.sha256",
    "manifest.test.sha256",
    "manifest.train.uri",
    "manifest.val.uri",
    "manifest.test.uri",
)
# Lock model tags.
LOCK_HOLDER_TAG = "stpa.lock.holder"
LOCK_ACQUIRED_TAG = "stpa.lock.acquired_unix"

CONFIG_ARTIFACT_PATH = (
    "artifacts/experiment_config.json"  # inside a pyfunc logged by pipeline.tracking.serving
)
CLASS_NAMES_ARTIFACT_PATH = "artifacts/class_names.json"
SELECTION_PARAM = (
    "selection.split"  # the run param naming the split that chose the weights (pipeline.training.fit)
)


class ModelNotFoundError(LookupError):
    """No registered model for a dataset; the message says how to create one."""


class LockTimeoutError(TimeoutError):
    """The registry lock could not be taken in time (another registration holds it)."""


@dataclass(frozen=True)
class Registration:
    """What ``register`` did."""

    name: str  # registered model name, "stpa-<dataset>"
    version: int
    is_champion: bool  # whether the alias "champion" now points at this version
    previous_champion_version: int | None  # the champion before this registration (None: there was none)
    previous_champion_metric: float | None  # its primary metric (None: none, or not tagged)
    primary_metric: str
    value: float  # this version's primary metric


@dataclass(frozen=True)
class ModelSummary:
    """One line of ``stpa models list``."""

    name: str
    dataset: str
    num_versions: int
    champion_version: int | None
    primary_metric: str | None
    champion_value: float | None
    last_updated: str  # ISO 8601, UTC


def registered_model_name(dataset: str) -> str:
    if not dataset or "/" in dataset or dataset.endswith(LOCK_SUFFIX):
        raise ValueError(f"invalid dataset name {dataset!r}")
    return f"{MODEL_PREFIX}{dataset}"


def not_found_message(tracking_uri: str, dataset: str) -> str:
    official = dataset in ("ucf101", "hmdb51", "charades")
    workflow = f"train_{dataset}.py" if official else f"train_folder.py --name {dataset}"
    return (
        f"no registered model {registered_model_name(dataset)} at {tracking_uri}: a training or sweep workflow "
        f"registers one (python workflows/{workflow} ...; pipeline.tracking.registry.register), or pass the "
        "tracking URI it used (--tracking-uri or MLFLOW_TRACKING_URI)"
    )


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _error_code(error: Exception) -> str | None:
    return getattr(error, "error_code", None)


def _iso(timestamp_ms: int | None) -> str:
    if not timestamp_ms:
        return ""
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC).isoformat(timespec="seconds")


def _primary_value(metrics: dict[str, float], primary_metric: str) -> tuple[str, float]:
    """The primary metric's name (without the ``test/`` split) and value.

    ``metrics`` may hold the evaluation's names (``top1``, ``mAP``) or the test split's (``test/top1``,
    ``test/mAP``: ``pipeline.metric_names.test``); the plain name wins when both are there.
    """
    name = primary_metric.removeprefix(metric_names.test(""))
    for key in (name, metric_names.test(name)):
        if key in metrics:
            value = float(metrics[key])
            if not math.isfinite(value):
                raise ValueError(f"primary metric {key} is {value}: nothing to compare a champion against")
            return name, value
    raise ValueError(
        f"metrics have no primary metric {name!r} (nor {metric_names.test(name)}); got {sorted(metrics)}"
    )


def _run_id_of(model_uri: str) -> str | None:
    if model_uri.startswith("runs:/"):
        return model_uri[len("runs:/") :].split("/", 1)[0] or None
    return None


def _model_json(tracking_uri: str, model_uri: str, artifact_path: str) -> Any:
    """A JSON artifact of an stpa pyfunc (``pipeline.tracking.serving``): its config or its class names."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model_uri.rstrip('/')}/{artifact_path}", tracking_uri=tracking_uri
        )
    except (MlflowException, OSError) as error:
        raise ValueError(
            f"{model_uri} is not an stpa pyfunc model (pipeline.tracking.serving.log_pyfunc_model): cannot read its "
            f"{artifact_path} ({error})"
        ) from error
    with open(path) as f:
        return json.load(f)


def version_tags(
    metrics: dict[str, float],
    primary_name: str,
    value: float,
    config: dict[str, Any],
    commit: str,
    run_id: str | None,
    run_params: dict[str, str],
    extra: dict[str, str],
) -> dict[str, str]:
    """A version's tags: each fact once, under one key, never empty.

    ``metric.<name>`` per metric, the primary metric's name and value, the config JSON, the git commit, the run id,
    the run's manifest URIs and hashes (``MANIFEST_PARAMS``: a split without a manifest has no tag), then
    ``extra`` (workflow facts; an extra key equal to a computed one replaces it). Empty values are left out.
    """
    tags = {f"{METRIC_TAG_PREFIX}{k}": repr(float(v)) for k, v in metrics.items()}
    tags[PRIMARY_METRIC_TAG] = primary_name
    tags[PRIMARY_VALUE_TAG] = repr(value)
    tags[CONFIG_TAG] = json.dumps(config, sort_keys=True, separators=(",", ":"))
    tags[GIT_COMMIT_TAG] = commit
    tags[RUN_ID_TAG] = run_id or ""
    tags.update({key: run_params[key] for key in MANIFEST_PARAMS if key in run_params})
    tags.update({str(k): str(v) for k, v in extra.items()})
    return {key: text for key, text in tags.items() if text.strip()}


def _manifest_metadata(uri: str | None) -> dict[bytes, bytes]:
    """A manifest's Parquet schema metadata (nothing else is read); empty when it cannot be read."""
    import pyarrow.parquet as pq

    from pipeline import storage

    if not uri:
        return {}
    try:
        fs, path = storage.filesystem(uri)
        with fs.open(path, "rb") as f:
            return pq.read_schema(f).metadata or {}
    except (OSError, ValueError):
        return {}


def card_facts(
    name: str,
    version: int,
    dataset: str,
    primary_name: str,
    value: float,
    config: dict[str, Any],
    class_names: list[str],
    run_params: dict[str, str],
):
    """The model card's facts (``pipeline.tracking.model_card.CardFacts``) from what ``register`` reads: the model's
    config and class names, the run's params, and the training manifest's metadata (official split, val carving)."""
    from pipeline import schema
    from pipeline.config import experiment_from_dict
    from pipeline.tracking.model_card import CardFacts

    metadata = _manifest_metadata(run_params.get("manifest.train.uri"))
    val_split = metadata.get(schema.META_VAL_SPLIT, b"").decode()
    return CardFacts(
        name=name,
        version=version,
        dataset=dataset,
        official_split=metadata.get(schema.META_SPLIT, b"").decode(),
        val_split=json.loads(val_split) if val_split else None,
        primary_metric=primary_name,
        test_value=value,
        selection_split=run_params.get(SELECTION_PARAM, ""),
        exp=experiment_from_dict(config),
        class_names=list(class_names),
        train_manifest_sha256=run_params.get("manifest.train.sha256", ""),
    )


# --- the lock ----------------------------------------------------------------------------------------------------
class RegistryLock:
    """A held registry lock (see the module docstring); ``verify`` checks it is still this holder's."""

    def __init__(self, client, lock_name: str, holder: str) -> None:
        self.client = client
        self.lock_name = lock_name
        self.holder = holder

    def holder_now(self) -> str | None:
        """The current holder of the lock model, or None when there is no lock."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(self.lock_name).tags.get(LOCK_HOLDER_TAG, "")
        except MlflowException as error:
            if _error_code(error) == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def verify(self) -> None:
        holder = self.holder_now()
        if holder != self.holder:
            raise RuntimeError(
                f"registry lock {self.lock_name} was taken over (holder now {holder!r}, this is "
                f"{self.holder!r}): a registration took longer than the stale-lock timeout"
            )


@contextlib.contextmanager
def registry_lock(
    client,
    name: str,
    *,
    timeout_s: float = 600.0,
    stale_after_s: float = 120.0,
    poll_s: float = 0.1,
) -> Iterator[RegistryLock]:
    """Hold the mutex of registered model ``name`` (the model ``<name>.lock``) for the ``with`` block.

    Args:
        client: An ``MlflowClient`` on the registry.
        name: The registered model the lock protects.
        timeout_s: Give up (``LockTimeoutError``) after waiting this long.
        stale_after_s: A lock older than this (server creation time) is taken to be left by a dead holder and
            deleted.
        poll_s: First retry delay; doubles per retry up to 2 s, with jitter.
    """
    from mlflow.exceptions import MlflowException

    lock_name = f"{name}{LOCK_SUFFIX}"
    lock = RegistryLock(client, lock_name, f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}")
    deadline = time.monotonic() + timeout_s
    delay = poll_s
    while True:
        try:
            client.create_registered_model(
                lock_name,
                tags={LOCK_HOLDER_TAG: lock.holder, LOCK_ACQUIRED_TAG: f"{time.time():.3f}"},
                description=f"mutex of {name}'s champion alias (pipeline.tracking.registry); safe to delete if stale",
            )
            break
        except MlflowException as error:
            if _error_code(error) != "RESOURCE_ALREADY_EXISTS":
                raise
        # Ours after all? (An HTTP retry of a create that the server had committed answers "already exists".)
        if lock.holder_now() == lock.holder:
            break
        _break_if_stale(client, lock_name, stale_after_s)
        if time.monotonic() > deadline:
            raise LockTimeoutError(
                f"could not take the registry lock {lock_name} in {timeout_s:.0f} s (held by "
                f"{lock.holder_now()!r}); if no registration is running, delete the registered model {lock_name}"
            )
        time.sleep(delay * (0.5 + random.random()))
        delay = min(2.0, delay * 2)
    try:
        yield lock
    finally:
        with contextlib.suppress(MlflowException):
            if lock.holder_now() == lock.holder:
                client.delete_registered_model(lock_name)


def _break_if_stale(client, lock_name: str, stale_after_s: float) -> None:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(lock_name)
    except MlflowException as error:
        if _error_code(error) == "RESOURCE_DOES_NOT_EXIST":
            return  # released meanwhile
        raise
    age_s = time.time() - model.creation_timestamp / 1000
    if age_s <= stale_after_s:
        return
    holder = model.tags.get(LOCK_HOLDER_TAG)
    with contextlib.suppress(MlflowException):
        # Delete only the lock we judged stale: not one that a faster waiter has just broken and re-taken.
        if client.get_registered_model(lock_name).tags.get(LOCK_HOLDER_TAG) == holder:
            print(
                f"breaking stale registry lock {lock_name} (holder {holder}, {age_s:.0f} s old)", flush=True
            )
            client.delete_registered_model(lock_name)


# --- register ----------------------------------------------------------------------------------------------------
def _champion(client, name: str):
    """The version the champion alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if _error_code(error) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _tagged_value(version) -> float | None:
    text = (version.tags or {}).get(PRIMARY_VALUE_TAG) if version is not None else None
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def register(
    tracking_uri: str,
    dataset: str,
    model_uri: str,
    metrics: dict[str, float],
    *,
    primary_metric: str,
    tags: dict[str, str] | None = None,
    lock_timeout_s: float = 600.0,
    stale_lock_after_s: float = 120.0,
) -> Registration:
    """Register a model as a new version of ``stpa-<dataset>`` and move ``champion`` to it if it is better.

    Args:
        tracking_uri: MLflow tracking (and registry) URI; an HTTP server when several machines register.
        dataset: Dataset name (``ucf101``, ``hmdb51``, ``charades``, ``folder``).
        model_uri: The stpa pyfunc to register (``runs:/<run_id>/model`` as ``fit`` logs it).
        metrics: Its evaluation metrics; all are tagged as ``metric.<name>``.
        primary_metric: The metric the champion rule compares (``ExperimentConfig.primary_metric``: ``top1`` or
            ``mAP``); ``metrics`` holds it under that name or the test split's (``test/mAP``). Higher is better.
        tags: More version tags (they override the computed ones of the same key).
        lock_timeout_s, stale_lock_after_s: See ``registry_lock``.

    ``mlflow.register_model`` works on the process-wide URIs: they point at ``tracking_uri`` during the call and
    are restored afterwards (``pipeline.tracking.runs.process_uris``).

    Returns:
        The version, and whether it became champion (and the champion before it).

    Raises:
        ValueError: the primary metric is missing or not finite, the model is not an stpa pyfunc, or the champion
            was chosen by a different metric.
        LockTimeoutError: another registration held the lock for longer than ``lock_timeout_s``.
    """
    import mlflow

    from pipeline.tracking.model_card import model_card

    name = registered_model_name(dataset)
    primary_name, value = _primary_value(metrics, primary_metric)
    client = _client(tracking_uri)
    run_id = _run_id_of(model_uri)
    run_params = client.get_run(run_id).data.params if run_id else {}
    with process_uris(tracking_uri):  # artifact resolution of runs:/ URIs and register_model read the globals
        config = _model_json(tracking_uri, model_uri, CONFIG_ARTIFACT_PATH)
        class_names = _model_json(tracking_uri, model_uri, CLASS_NAMES_ARTIFACT_PATH)
        tags_of_version = version_tags(
            metrics, primary_name, value, config, git_commit(), run_id, run_params, tags or {}
        )
        # Creates the registered model if needed (a concurrent creation is handled by MLflow: "already exists").
        model_version = mlflow.register_model(model_uri, name, tags=tags_of_version)
    version = int(model_version.version)
    facts = card_facts(name, version, dataset, primary_name, value, config, class_names, run_params)
    client.update_model_version(name, str(version), description=model_card(facts))

    with registry_lock(client, name, timeout_s=lock_timeout_s, stale_after_s=stale_lock_after_s) as lock:
        champion = _champion(client, name)
        previous_value = _tagged_value(champion)
        if champion is not None:
            champion_metric = (champion.tags or {}).get(PRIMARY_METRIC_TAG, primary_name)
            if champion_metric != primary_name:
                raise ValueError(
                    f"{name}: the champion (version {champion.version}) was chosen by {champion_metric!r}, this "
                    f"registration compares {primary_name!r}; version {version} stays a plain version"
                )
        # Under the lock: MLflow's SQL store inserts a new tag after a check, so two first registrations setting
        # the same registered-model tag at once collide on its unique key (seen in CI).
        model_tags = client.get_registered_model(name).tags or {}
        for key, tag_value in ((DATASET_TAG, dataset), (PRIMARY_METRIC_TAG, primary_name)):
            if model_tags.get(key) != tag_value:
                client.set_registered_model_tag(name, key, tag_value)
        # A champion without a readable metric tag (an alias set by hand) is replaced.
        is_champion = champion is None or previous_value is None or value > previous_value
        if is_champion:
            lock.verify()
            client.set_registered_model_alias(name, CHAMPION, str(version))
    return Registration(
        name=name,
        version=version,
        is_champion=is_champion,
        previous_champion_version=int(champion.version) if champion is not None else None,
        previous_champion_metric=previous_value,
        primary_metric=primary_name,
        value=value,
    )


# --- resolving a model URI ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedModel:
    """A model URI pinned to what it points at now.

    Attributes:
        uri: ``models:/<name>/<version>`` for a registered model (an alias resolved), else the ``runs:/`` URI.
        name: The registered model's name, or "" for a run's model.
        version: Its version, or "" for a run's model.
        run_id: The run that logged it ("" when the registry does not say).
    """

    uri: str
    name: str
    version: str
    run_id: str


def resolve_model(tracking_uri: str, model_uri: str) -> ResolvedModel:
    """Pin ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or ``runs:/<run id>/<path>`` (checks it exists).

    An alias may move while a long job runs: callers pin it once and use ``uri`` from then on.

    Raises:
        ValueError: another URI form, or no such registered model, alias, version or run (the message says which).
    """
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    if model_uri.startswith("runs:/"):
        run_id = _run_id_of(model_uri)
        try:
            client.get_run(run_id or "")
        except MlflowException:
            raise ValueError(f"{model_uri}: no run {run_id!r} at {tracking_uri}") from None
        return ResolvedModel(model_uri.rstrip("/"), "", "", run_id or "")
    if not model_uri.startswith("models:/") or (model_uri.count("/") != 2 and "@" not in model_uri):
        raise ValueError(
            f"{model_uri}: give models:/<name>@<alias>, models:/<name>/<version> or runs:/<run id>/<path>"
        )
    rest = model_uri[len("models:/") :].rstrip("/")
    name, alias = rest.split("@", 1) if "@" in rest else (rest.rsplit("/", 1)[0], None)
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise ValueError(f"{model_uri}: no registered model {name!r} at {tracking_uri}") from None
    try:
        if alias is not None:
            found = client.get_model_version_by_alias(name, alias)
        else:
            found = client.get_model_version(name, rest.rsplit("/", 1)[1])
    except MlflowException:
        what = f"alias {alias!r}" if alias is not None else f"version {rest.rsplit('/', 1)[1]!r}"
        raise ValueError(f"{model_uri}: {name} has no {what} (see stpa models show)") from None
    return ResolvedModel(f"models:/{name}/{found.version}", name, str(found.version), found.run_id or "")


# --- read side ---------------------------------------------------------------------------------------------------
def _versions(client, name: str) -> list:
    found = client.search_model_versions(f"name = '{name}'")
    return sorted(found, key=lambda v: int(v.version))


def list_models(tracking_uri: str) -> list[ModelSummary]:
    """The datasets' registered models (``stpa-*``, lock models left out), by name."""
    client = _client(tracking_uri)
    models, token = [], None
    while True:
        page = client.search_registered_models(
            filter_string=f"name LIKE '{MODEL_PREFIX}%'", max_results=100, page_token=token
        )
        models += [m for m in page if not m.name.endswith(LOCK_SUFFIX)]
        token = page.token
        if not token:
            break
    summaries = []
    for model in sorted(models, key=lambda m: m.name):
        champion_version = (model.aliases or {}).get(CHAMPION)
        champion = client.get_model_version(model.name, champion_version) if champion_version else None
        summaries.append(
            ModelSummary(
                name=model.name,
                dataset=(model.tags or {}).get(DATASET_TAG, model.name.removeprefix(MODEL_PREFIX)),
                num_versions=len(_versions(client, model.name)),
                champion_version=int(champion_version) if champion_version else None,
                primary_metric=(model.tags or {}).get(PRIMARY_METRIC_TAG),
                champion_value=_tagged_value(champion),
                last_updated=_iso(model.last_updated_timestamp),
            )
        )
    return summaries


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI, for an HTTP(S) tracking server (None otherwise)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _version_metrics(version) -> dict[str, float]:
    metrics = {}
    for key, text in (version.tags or {}).items():
        if key.startswith(METRIC_TAG_PREFIX):
            with contextlib.suppress(ValueError):
                metrics[key[len(METRIC_TAG_PREFIX) :]] = float(text)
    return metrics


def describe(tracking_uri: str, dataset: str) -> dict[str, Any]:
    """Everything ``stpa models show`` prints, as a JSON-able dict.

    Returns:
        ``name``, ``dataset``, ``primary_metric``, ``champion`` (None without the alias; else its ``version``,
        ``value``, ``metrics``, ``run_id``, ``run_link``, ``experiment_id``, ``git_commit``, manifest hashes,
        ``config`` and ``created``) and ``versions`` (each ``version``, ``value``, ``run_id``, ``champion``,
        ``created``), oldest first.

    Raises:
        ModelNotFoundError: no registered model for the dataset.
    """
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    name = registered_model_name(dataset)
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if _error_code(error) == "RESOURCE_DOES_NOT_EXIST":
            raise ModelNotFoundError(not_found_message(tracking_uri, dataset)) from None
        raise
    champion_version = (model.aliases or {}).get(CHAMPION)
    versions = _versions(client, name)
    champion = None
    for version in versions:
        if champion_version is not None and int(version.version) == int(champion_version):
            tags = version.tags or {}
            run_id = version.run_id or tags.get(RUN_ID_TAG)
            experiment_id = None
            if run_id:
                with contextlib.suppress(MlflowException):
                    experiment_id = client.get_run(run_id).info.experiment_id
            champion = {
                "version": int(version.version),
                "value": _tagged_value(version),
                "metrics": _version_metrics(version),
                "run_id": run_id,
                "experiment_id": experiment_id,
                "run_link": run_link(tracking_uri, experiment_id, run_id) if experiment_id else None,
                "git_commit": tags.get(GIT_COMMIT_TAG),
                "manifests": {key: tags[key] for key in MANIFEST_PARAMS if key in tags},
                "config": json.loads(tags[CONFIG_TAG]) if CONFIG_TAG in tags else None,
                "created": _iso(version.creation_timestamp),
                "source": version.source,
            }
    return {
        "name": name,
        "dataset": (model.tags or {}).get(DATASET_TAG, dataset),
        "primary_metric": (model.tags or {}).get(PRIMARY_METRIC_TAG),
        "champion": champion,
        "versions": [
            {
                "version": int(v.version),
                "value": _tagged_value(v),
                "run_id": v.run_id or (v.tags or {}).get(RUN_ID_TAG),
                "champion": champion_version is not None and int(v.version) == int(champion_version),
                "created": _iso(v.creation_timestamp),
            }
            for v in versions
        ],
    }
