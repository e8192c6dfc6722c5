"""Ray Tune sweeps over the STPA design axes (PAPER.md, "Sweep axes"), each trial one distributed training run.

Shape of a sweep (DESIGN.md, Ray Train V2 inside Tune):

- The search space holds flat ``section.field`` overrides (what ``pipeline.presets.apply_overrides`` takes) plus
  one coupled key, ``clips.num_segments`` (K), which ``expand_overrides`` turns into the K of the three clip
  configs and the model's ``num_segments`` together, so every sampled config passes ``ExperimentConfig``
  validation. Axes have names (``AXES``) so a command line can restrict a sweep (``--axes attention,lr``).
- Each trial is a Tune *function* trainable (``tune.with_resources(fn, {"cpu": 0.01})``: the trial actor only
  waits) that calls ``pipeline.train.fit``, which runs a ``TorchTrainer`` on the cluster. Ray Train's
  ``TuneReportCallback`` forwards every epoch's report to Tune, where ASHA compares trials on the best
  validation value of the dataset's primary metric (``best_top1`` / ``best_map``: present in every report, also
  the final one, which Tune's strict metric check requires) at epoch milestones.
- MLflow: the sweep has a parent run (found again by its name); every trial's ``fit`` run carries the tags
  ``mlflow.parentRunId`` (nested under the parent in the UI) and ``stpa.sweep``. At the end the parent gets a
  comparison table (CSV, one row per trial, errors included), a plot of the primary metric by attention type
  and pyramid depth, and the best value.
- Resuming: the Tune experiment lives at ``<storage_path>/<name>``; calling ``run_sweep`` again with the same
  name restores it (``Tuner.restore(..., resume_errored=True)``): finished trials are kept, unfinished and
  errored ones run again, and each of those resumes from its own Ray Train checkpoint because its run name
  (``<name>-<trial id>``) is stable. A sweep that never started a trial is built anew.

Early stopping needs the Ray State API (the dashboard, part of ``ray[default]``; ``pipeline.runtime.init_ray``
starts it): Tune ends a stopped trial by killing its actor and Train controller, and only Ray Train's
``PlacementGroupCleaner``, which polls through the State API, then frees the trial's workers. Without it the
sweep runs every trial to the end (FIFO) and says so, rather than leaking a stopped trial's CPUs/GPUs.

Failures are bounded at both levels: Ray Train restarts a trial's worker group ``train.max_failures`` times and
its controller 3 times (``fit``), Tune restarts a failed trial ``TRIAL_MAX_FAILURES`` times.

Concurrency: a trial holds ``num_workers * cpus_per_worker`` CPUs (or ``num_workers`` GPUs) for its whole run,
and its Ray Data decode tasks need CPUs of their own. Without ``max_concurrent_trials`` the sweep runs as many
trials at once as the cluster holds, counting one spare CPU per CPU trial for decoding (``default_concurrency``):
one at a time on a 2-core laptop, where two trials would starve each other's decode tasks.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import posixpath
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.config import ExperimentConfig, TrainConfig, apply_overrides
from stpa_model.attention import FUSION_MODES, RESAMPLE_MODES
from stpa_model.config import ATTENTION_MODES
from stpa_model.resnet import STAGE_NAMES

K_KEY = "clips.num_segments"  # the coupled axis: K of train/val/test clips and model.num_segments
PYRAMID_KEY = "model.pyramid_layers"
ATTENTION_KEY = "model.attention"
SWEEP_TAG = "stpa.sweep"
TRIAL_TAG = "stpa.sweep_trial"
ROLE_TAG = "stpa.sweep_role"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a run under this parent
TRIAL_MAX_FAILURES = 1  # Tune restarts of a failed trial (it then resumes from its own Train checkpoint)
TABLE_FILE = "trials.csv"
PLOT_FILE = "metric_by_attention_and_depth.png"
STATUSES = ("completed", "stopped", "error")  # stopped: ASHA (or a stop criterion) ended it early


def pyramid(depth: int) -> tuple[str, ...]:
    """The ``depth`` deepest backbone stages, shallow to deep: 1 -> ("res5",), 3 -> ("res3", "res4", "res5")."""
    if not 1 <= depth <= len(STAGE_NAMES):
        raise ValueError(f"pyramid depth must be in 1..{len(STAGE_NAMES)}, got {depth}")
    return STAGE_NAMES[len(STAGE_NAMES) - depth :]


def _weight_choices(value: float, fallback: float) -> list[float]:
    """0 (the term off, a PAPER.md baseline) and a decade either side of the preset's weight."""
    base = value if value > 0 else fallback
    return [0.0, base / 10, base, base * 10]


def _num_segments_choices(k: int) -> list[int]:
    """Half, the preset's and twice the preset's K (TSN segments)."""
    return sorted({max(1, k // 2), k, 2 * k})


@dataclass(frozen=True)
class Axis:
    """One named sweep axis: the flat key it sets and, given the base experiment, either the values it chooses
    from (``tune.choice``) or the range it draws from log-uniformly (``tune.loguniform``)."""

    key: str
    doc: str
    choices: Callable[[ExperimentConfig], list[Any]] | None = None
    log_range: Callable[[ExperimentConfig], tuple[float, float]] | None = None

    def domain(self, exp: ExperimentConfig) -> Any:
        """The Tune distribution of this axis around ``exp``."""
        from ray import tune

        if self.log_range is not None:
            return tune.loguniform(*self.log_range(exp))
        return tune.choice(self.choices(exp))


AXES: dict[str, Axis] = {
    "attention": Axis(ATTENTION_KEY, "none (TSN) / plain / interaction", lambda exp: list(ATTENTION_MODES)),
    "pyramid_depth": Axis(
        PYRAMID_KEY,
        "N = 1..4 levels ending at res5 (layer i)",
        lambda exp: [pyramid(n) for n in range(1, len(STAGE_NAMES) + 1)],
    ),
    "fusion": Axis("model.fusion", "F: how the levels' scores combine", lambda exp: list(FUSION_MODES)),
    "resample": Axis(
        "model.resample", "R: how levels reach layer i's size", lambda exp: list(RESAMPLE_MODES)
    ),
    "beta": Axis(
        "model.beta",
        "interaction loss weight: 0 or a decade around the preset's",
        lambda exp: _weight_choices(exp.model.beta, 1e-3),
    ),
    "gamma": Axis(
        "model.gamma",
        "diversity loss weight: 0 or a decade around the preset's",
        lambda exp: _weight_choices(exp.model.gamma, 1.0),
    ),
    "num_segments": Axis(
        K_KEY,
        "K: half, equal to and twice the preset's (all clip configs and the model together)",
        lambda exp: _num_segments_choices(exp.train_clips.num_segments),
    ),
    "lr": Axis(
        "optim.lr",
        "log-uniform in [lr / 10, 3 lr] around the preset's",
        log_range=lambda exp: (exp.optim.lr / 10, exp.optim.lr * 3),
    ),
    # Further PAPER.md axes, swept only when named.
    "weight_decay": Axis(
        "optim.weight_decay",
        "0 or a decade around the preset's",
        lambda exp: _weight_choices(exp.optim.weight_decay, 1e-4),
    ),
    "spatio_temporal": Axis(
        "model.spatio_temporal",
        "joint K*H*W attention, or per frame + TSN average",
        lambda exp: [True, False],
    ),
    "l2_normalize": Axis("model.l2_normalize", "L2-normalised attention rows", lambda exp: [True, False]),
}
DEFAULT_AXES: tuple[str, ...] = (
    "attention",
    "pyramid_depth",
    "fusion",
    "resample",
    "beta",
    "gamma",
    "num_segments",
    "lr",
)


def _space(exp: ExperimentConfig, axes: Sequence[str] | None) -> dict[str, Any]:
    names = list(DEFAULT_AXES if axes is None else axes)
    if not names:
        raise ValueError(f"no sweep axes given; valid axes: {sorted(AXES)}")
    unknown = [name for name in names if name not in AXES]
    if unknown:
        raise ValueError(f"unknown sweep axis {unknown}; valid axes: {sorted(AXES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"sweep axes repeat: {names}")
    return {AXES[name].key: AXES[name].domain(exp) for name in names}


def search_space(exp: ExperimentConfig, axes: Sequence[str] | None = None) -> dict[str, Any]:
    """Ray Tune distributions over flat override keys, for ``Tuner(param_space=...)``.

    Args:
        exp: the base experiment (a preset): lr, beta, gamma, K and weight decay are swept around its values.
        axes: names from ``AXES``; default ``DEFAULT_AXES`` (attention, pyramid depth, fusion, resampling,
            beta, gamma, K, learning rate).

    Returns:
        ``{"model.attention": tune.choice([...]), ..., "clips.num_segments": tune.choice([...])}``; a sampled
        config becomes ``apply_overrides``-ready with ``expand_overrides``.

    Raises:
        ValueError: an unknown or repeated axis name (the message lists the valid ones).
    """
    return _space(exp, axes)


def expand_overrides(exp: ExperimentConfig, params: Mapping[str, Any]) -> dict[str, Any]:
    """A sampled trial config as ``apply_overrides`` overrides: ``clips.num_segments`` (K) becomes the K of the
    train, val and test clips plus ``model.num_segments`` (K times frames per segment, the frames per clip that
    a temporal position embedding is built for); every other key passes through unchanged."""
    overrides = {key: value for key, value in params.items() if key != K_KEY}
    if K_KEY in params:
        k = int(params[K_KEY])
        for section in ("train_clips", "val_clips", "test_clips"):
            overrides[f"{section}.num_segments"] = k
        frames_per_segment = overrides.get(
            "train_clips.frames_per_segment", exp.train_clips.frames_per_segment
        )
        overrides["model.num_segments"] = k * int(frames_per_segment)
    return overrides


def check_space(exp: ExperimentConfig, space: Mapping[str, Any], num_samples: int = 8, seed: int = 0) -> None:
    """Sample ``space`` a few times and build each experiment, so a bad key or value fails before any trial.

    Raises:
        ValueError: from ``apply_overrides`` / the config's validation, naming the key or field.
    """
    rng = np.random.RandomState(seed)
    for _ in range(num_samples):
        apply_overrides(exp, expand_overrides(exp, sample_config(space, rng)))


def sample_config(space: Mapping[str, Any], rng: np.random.RandomState) -> dict[str, Any]:
    """One draw from a flat space of Tune domains (constants pass through), as Tune's random search draws it."""
    from ray.tune.search.sample import Domain

    return {
        key: domain.sample(random_state=rng) if isinstance(domain, Domain) else domain
        for key, domain in space.items()
    }


def default_concurrency(train: TrainConfig) -> int:
    """Trials that fit on the connected Ray cluster at once: GPUs // workers on GPU, and on CPU
    CPUs // (workers * cpus per worker + 1), the extra CPU for the trial's decode tasks; at least 1."""
    import ray

    resources = ray.cluster_resources()
    if train.use_gpu:
        available, per_trial = resources.get("GPU", 0.0), float(train.num_workers)
    else:
        available, per_trial = resources.get("CPU", 0.0), train.num_workers * train.cpus_per_worker + 1
    return max(1, int(available // per_trial))


def trial_run_name(sweep_name: str, trial_id: str) -> str:
    """Ray Train run name and MLflow run name of one trial (stable across restores: the resume key)."""
    return f"{sweep_name}-{trial_id}"


@dataclass(frozen=True)
class SweepResult:
    parent_run_id: str | None  # the sweep's MLflow run (None when MLflow is disabled)
    best_overrides: dict[str, Any]  # the best trial's overrides, for apply_overrides
    best_metric: float  # its best validation value of the primary metric
    best_run_id: str | None  # its MLflow run
    best_checkpoint_uri: str  # its latest Ray Train checkpoint (holds best_model.pt)
    table: tuple[dict[str, Any], ...]  # one row per trial (TABLE_FILE's rows), errors included


@dataclass(frozen=True)
class _TrialSetup:
    """What every trial shares; handed to the trainable through ``tune.with_parameters``."""

    exp: ExperimentConfig
    train_manifest: str
    test_manifest: str
    storage_path: str  # Ray Train storage of the trials' runs
    sweep_name: str
    tracking_uri: str  # "" disables MLflow
    parent_run_id: str | None
    clip_cache: str | None


def _run_trial(config: dict[str, Any], setup: _TrialSetup) -> None:
    """The Tune function trainable: one distributed ``fit`` with the trial's overrides."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.train import fit

    trial_id = tune.get_context().get_trial_id()
    exp = apply_overrides(setup.exp, expand_overrides(setup.exp, config))
    tags = {SWEEP_TAG: setup.sweep_name, TRIAL_TAG: trial_id, ROLE_TAG: "trial"}
    if setup.parent_run_id:
        tags[PARENT_TAG] = setup.parent_run_id
    fit(
        exp,
        setup.train_manifest,
        setup.test_manifest,
        storage_path=setup.storage_path,
        run_name=trial_run_name(setup.sweep_name, trial_id),
        tracking_uri=setup.tracking_uri,
        tags=tags,
        clip_cache=setup.clip_cache,
        callbacks=[TuneReportCallback()],  # [ray] each epoch's report reaches Tune (ASHA)
    )


def _trial_dirname(trial) -> str:
    """Trial folders named by trial id, so a result (even of a trial that never reported) maps to its id."""
    return trial.trial_id


def run_sweep(
    exp: ExperimentConfig,
    train_manifest: str,
    test_manifest: str,
    *,
    num_samples: int,
    storage_path: str,
    name: str,
    tracking_uri: str | None = None,
    axes: Sequence[str] | None = None,
    search_space: Mapping[str, Any] | None = None,
    max_concurrent_trials: int | None = None,
    grace_period: int = 1,
    reduction_factor: float = 3,
    seed: int = 0,
    clip_cache: str | None = None,
    stop: Mapping[str, float] | Callable[[str, dict], bool] | None = None,
) -> SweepResult:
    """Run (or resume) a Tune sweep of ``num_samples`` trials, each a distributed ``fit``, with ASHA.

    Args:
        exp: the base experiment; each trial applies its sampled overrides to it. ``train.epochs`` is every
            trial's budget (ASHA's ``max_t``).
        train_manifest, test_manifest: manifest URIs (``stpa prepare`` output).
        num_samples: trials to sample (random search).
        storage_path: local folder or fsspec URI: the Tune experiment goes to ``<storage_path>/<name>``, the
            trials' Ray Train runs and checkpoints under ``<storage_path>/<name>/trials/``.
        name: the sweep's name: Tune experiment name, MLflow parent run name, and the key for resuming.
        tracking_uri: MLflow tracking URI (default ``pipeline.tracking.tracking_uri()``); ``""`` disables MLflow
            (the table and plot are still written next to the Tune experiment).
        axes: names of ``AXES`` to sweep (default ``DEFAULT_AXES``); not with ``search_space``.
        search_space: an explicit flat space (``search_space()``'s format) instead of ``axes``.
        max_concurrent_trials: trials at once; default ``default_concurrency(exp.train)``.
        grace_period: epochs every trial runs before ASHA may stop it.
        reduction_factor: ASHA keeps the best 1 / reduction_factor of the trials at each milestone.
        seed: the random search's seed.
        clip_cache: decode-once cache root handed to every trial's ``fit``.
        stop: a Tune stop criterion besides ASHA (``{"best_top1": 0.95}``, or ``fn(trial_id, result) -> bool``);
            a trial it ends is reported as ``stopped``, like one ASHA ends.

    Returns:
        The best trial (by its best validation value of the primary metric) and the comparison table.

    Raises:
        ValueError: bad arguments or a space whose samples do not build a valid experiment.
        RuntimeError: every trial failed (the message lists each trial's error).
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from pipeline.runtime import init_ray
    from pipeline.tracking import find_or_create_run
    from pipeline.tracking import tracking_uri as default_tracking_uri

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not name or "/" in name:
        raise ValueError(f"sweep name must be a non-empty folder name, got {name!r}")
    if axes is not None and search_space is not None:
        raise ValueError("give either axes or search_space, not both")
    if not 1 <= grace_period <= exp.train.epochs:
        raise ValueError(f"grace_period must be in 1..train.epochs ({exp.train.epochs}), got {grace_period}")
    space = dict(search_space) if search_space is not None else _space(exp, axes)
    check_space(exp, space, seed=seed)

    init_ray(num_train_workers=exp.train.num_workers)  # no-op when the caller already connected
    num_concurrent = max_concurrent_trials or default_concurrency(exp.train)
    metric = "best_" + exp.primary_metric  # the best validation value so far: in every report
    storage_filesystem, storage_root = storage.ray_storage(storage_path)
    # The experiment's path inside the storage filesystem (local, or an fsspec path without its scheme).
    experiment_path = (
        posixpath.join(storage_root, name) if storage_filesystem else os.path.join(storage_root, name)
    )
    sweep_uri = storage.join(storage_path, name)
    resuming = tune.Tuner.can_restore(experiment_path, storage_filesystem=storage_filesystem)
    scheduler = None
    if not resuming:
        # max_t one past the last epoch: ASHA stops a trial whose time reaches max_t, and the last epoch's
        # report must not stop it before its final evaluation and model logging.
        scheduler = (
            ASHAScheduler(
                time_attr="epoch",
                max_t=exp.train.epochs + 1,
                grace_period=grace_period,
                reduction_factor=reduction_factor,
            )
            if _stopped_trials_release_resources()
            else FIFOScheduler()
        )

    uri = default_tracking_uri() if tracking_uri is None else tracking_uri
    parent_run_id = None
    if uri:
        parent_run_id, resumed = find_or_create_run(
            uri, exp.dataset, name, {SWEEP_TAG: name, ROLE_TAG: "parent"}
        )
        if not resumed:
            settings = {
                "sweep.num_samples": num_samples,
                "sweep.metric": metric,
                "sweep.scheduler": f"ASHA(time_attr=epoch, grace_period={grace_period}, reduction_factor="
                f"{reduction_factor}, max_t={exp.train.epochs + 1})"
                if isinstance(scheduler, ASHAScheduler)
                else "FIFO (no early stopping)",
                "sweep.max_concurrent_trials": num_concurrent,
                "sweep.seed": seed,
                "sweep.stop": stop
                if stop is None or isinstance(stop, Mapping)
                else getattr(stop, "__name__", stop),
                "sweep.train_manifest": train_manifest,
                "sweep.test_manifest": test_manifest,
            }
            _log_sweep_params(uri, parent_run_id, exp, space, settings)

    setup = _TrialSetup(
        exp=exp,
        train_manifest=train_manifest,
        test_manifest=test_manifest,
        storage_path=storage.join(sweep_uri, "trials"),
        sweep_name=name,
        tracking_uri=uri,
        parent_run_id=parent_run_id,
        clip_cache=clip_cache,
    )
    trainable = tune.with_resources(tune.with_parameters(_run_trial, setup=setup), {"cpu": 0.01})
    if resuming:
        # Finished trials stay; unfinished and errored ones run again (each resumes its own Train checkpoint).
        # The space, scheduler and sample count are the original ones, restored from the experiment state.
        print(f"sweep {name}: resuming from {sweep_uri}", flush=True)
        tuner = tune.Tuner.restore(
            experiment_path, trainable=trainable, resume_errored=True, storage_filesystem=storage_filesystem
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode="max",
                scheduler=scheduler,
                # The concurrency limit goes to the generator: Tune ignores TuneConfig.max_concurrent_trials
                # when a search_alg is given (and oversubscribed trials starve each other's decode tasks).
                search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=num_concurrent),
                num_samples=num_samples,
                trial_name_creator=_trial_dirname,
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_root,
                storage_filesystem=storage_filesystem,
                failure_config=tune.FailureConfig(max_failures=TRIAL_MAX_FAILURES),
                stop=stop,
                verbose=1,
            ),
        )
    grid = tuner.fit()

    trials = sorted(
        (_trial_row(exp, result, storage_path) for result in grid), key=lambda t: t[0]["trial_id"]
    )
    rows = [row for row, _ in trials]
    if uri:
        _attach_mlflow_runs(uri, parent_run_id, rows)
    table_csv = _table_csv(rows)
    plot = _plot(rows, metric)
    storage.write_text(storage.join(sweep_uri, TABLE_FILE), table_csv)
    storage.write_bytes(storage.join(sweep_uri, PLOT_FILE), plot)

    ok = [(row, config) for row, config in trials if row["status"] != "error" and _finite(row[metric])]
    if not ok:
        if uri:
            _log_sweep_outputs(uri, parent_run_id, table_csv, plot, None, {}, metric, rows)
        reasons = "\n".join(f"  {row['trial_id']}: {row['error'] or 'no result reported'}" for row in rows)
        raise RuntimeError(f"sweep {name}: no trial produced a {metric} value:\n{reasons}")
    best, best_config = max(ok, key=lambda t: t[0][metric])
    best_overrides = expand_overrides(exp, best_config)
    if uri:
        _log_sweep_outputs(uri, parent_run_id, table_csv, plot, best, best_overrides, metric, rows)
    print(f"sweep {name}: best {metric} {best[metric]:.4f} (trial {best['trial_id']})", flush=True)
    return SweepResult(
        parent_run_id=parent_run_id,
        best_overrides=best_overrides,
        best_metric=float(best[metric]),
        best_run_id=best["mlflow_run_id"],
        best_checkpoint_uri=best["checkpoint_uri"],
        table=tuple(rows),
    )


def _stopped_trials_release_resources() -> bool:
    """Whether Ray Train can free the workers of a trial that Tune stops early.

    Tune ends a stopped trial by killing its actor, and with it the trial's Train controller, before the
    controller can remove its workers' placement group (a placement group lives as long as its job, not its
    creator). Ray Train's detached ``PlacementGroupCleaner`` removes it, polling the controller through the
    State API, which the dashboard serves. Without it every stopped trial keeps its CPUs/GPUs until the sweep
    ends and later trials wait for ever (seen here: a sweep on a Ray without dashboard hung after the first
    early stop). So early stopping is only used when the State API answers.
    """
    from ray.util.state import list_placement_groups

    try:
        list_placement_groups(limit=1, timeout=10, raise_on_missing_output=False)
    except Exception as error:  # any failure means the same thing here: no State API to clean up with
        print(
            f"warning: the Ray State API is unavailable ({type(error).__name__}: {error}); start Ray with the "
            "dashboard (ray[default]) for ASHA early stopping. Running every trial to the end instead.",
            flush=True,
        )
        return False
    return True


def _finite(value: float | None) -> bool:
    """A usable metric value: reported (not None) and finite (``best_*`` is -inf before the first validation)."""
    return value is not None and math.isfinite(value)


def _param_text(value: Any) -> Any:
    """A trial's param value as one table cell: pyramid tuples as ``res4+res5``."""
    return "+".join(value) if isinstance(value, (tuple, list)) else value


def _error_text(error: BaseException) -> str:
    """The exception line of a (Ray-wrapped) trial error: its last non-empty line."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]


def _trial_row(exp: ExperimentConfig, result, storage_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One row of the comparison table, and the trial's sampled config, from a Tune ``Result``."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    metrics = dict(result.metrics or {})
    config = dict(result.config or {})
    trial_exp = apply_overrides(exp, expand_overrides(exp, config))
    if result.error is not None:
        status = "error"
    elif metrics.get("final") == 1:
        status = "completed"
    else:
        status = "stopped"
    metric = "best_" + exp.primary_metric
    row: dict[str, Any] = {
        "trial_id": os.path.basename(result.path.rstrip("/")),
        "mlflow_run_id": None,
        "status": status,
        "epochs": int(metrics.get("epoch", 0)),
        "attention": trial_exp.model.attention,
        "pyramid_depth": len(trial_exp.model.pyramid_layers),
        **{key: _param_text(value) for key, value in config.items()},  # the sampled param_space entries
        metric: float(metrics[metric]) if metric in metrics else None,  # None: never reported
    }
    val_key = "val_" + exp.primary_metric
    history = result.metrics_dataframe
    if history is not None and val_key in history:
        values = history[val_key].dropna()
        row[val_key] = float(values.iloc[-1]) if len(values) else None
    row.update({key: float(metrics[key]) for key in sorted(metrics) if key.startswith("test_")})
    checkpoint_path = metrics.get(CHECKPOINT_PATH_KEY)
    row["checkpoint_uri"] = storage.checkpoint_uri(storage_path, checkpoint_path) if checkpoint_path else ""
    row["error"] = _error_text(result.error) if result.error is not None else ""
    return row, config


def _attach_mlflow_runs(uri: str, parent_run_id: str, rows: list[dict[str, Any]]) -> None:
    """Fill each row's MLflow run id (the nested run tagged with its trial id) and close the runs of trials
    that did not finish: ASHA-stopped ones as KILLED, failed ones as FAILED (``fit`` never got to close them)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
        max_results=10000,
    )
    by_trial = {run.data.tags.get(TRIAL_TAG): run for run in runs}
    for row in rows:
        run = by_trial.get(row["trial_id"])
        if run is None:
            continue
        row["mlflow_run_id"] = run.info.run_id
        if run.info.status == "RUNNING" and row["status"] != "completed":
            client.set_terminated(
                run.info.run_id, status="KILLED" if row["status"] == "stopped" else "FAILED"
            )


def _table_csv(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _plot(rows: list[dict[str, Any]], metric: str) -> bytes:
    """PNG: grouped bars of the best trial's ``metric`` per (attention type, pyramid depth) cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        if row["status"] != "error" and _finite(row[metric]):
            cells.setdefault((row["attention"], row["pyramid_depth"]), []).append(row[metric])
    attentions = [mode for mode in ATTENTION_MODES if any(a == mode for a, _ in cells)]
    depths = sorted({d for _, d in cells})
    fig, ax = plt.subplots(figsize=(1.5 + 1.8 * max(1, len(attentions)), 3.5))
    width = 0.8 / max(1, len(depths))
    for j, depth in enumerate(depths):
        label = f"depth {depth}"  # on the first bar of this depth only: one legend entry each
        for i, attention in enumerate(attentions):
            values = cells.get((attention, depth))
            if not values:
                continue
            x = i + (j - (len(depths) - 1) / 2) * width
            ax.bar(x, max(values), width, color=f"C{j}", label=label)
            ax.text(x, max(values), f"n={len(values)}", ha="center", va="bottom", fontsize=7)
            label = None
    ax.set_xticks(range(len(attentions)), attentions)
    ax.set_xlim(-0.5, max(1, len(attentions)) - 0.5)
    ax.set_xlabel("attention")
    ax.set_ylabel(f"{metric} (best trial per cell)")
    ax.set_title(f"{metric} by attention type and pyramid depth")
    if depths:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no trial reported a result", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _describe(domain: Any) -> str:
    """A Tune domain as text for an MLflow param: ``choice([...])`` or ``loguniform(a, b)``."""
    from ray.tune.search.sample import Categorical, Float, Integer

    if isinstance(domain, Categorical):
        return f"choice({[_param_text(c) for c in domain.categories]})"
    if isinstance(domain, (Float, Integer)):
        return f"{type(domain.get_sampler()).__name__.lower()}({domain.lower}, {domain.upper})"
    return repr(domain)


def _log_sweep_params(
    uri: str, run_id: str, exp: ExperimentConfig, space: Mapping[str, Any], settings: dict[str, Any]
) -> None:
    """Once per sweep: its settings, the space, and the base experiment (``base.<section>.<field>``)."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import flatten_config

    params = {key: str(value) for key, value in settings.items()}
    params.update({f"space.{key}": _describe(domain) for key, domain in space.items()})
    params.update({f"base.{key}": value for key, value in flatten_config(exp).items()})
    MlflowClient(tracking_uri=uri).log_batch(run_id, params=[Param(k, v[:6000]) for k, v in params.items()])


def _log_sweep_outputs(
    uri: str,
    run_id: str,
    table_csv: str,
    plot: bytes,
    best: dict[str, Any] | None,
    best_overrides: dict[str, Any],
    metric: str,
    rows: list[dict[str, Any]],
) -> None:
    """The comparison table, the plot, counts and the best trial on the parent run, which is then closed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    with tempfile.TemporaryDirectory() as directory:
        files = {TABLE_FILE: table_csv.encode(), PLOT_FILE: plot}
        if best is not None:
            files["best_overrides.json"] = json.dumps(best_overrides, indent=1, sort_keys=True).encode()
        for file_name, data in files.items():
            path = os.path.join(directory, file_name)
            with open(path, "wb") as f:
                f.write(data)
            client.log_artifact(run_id, path, artifact_path="sweep")
    counts = {f"num_{status}": sum(row["status"] == status for row in rows) for status in STATUSES}
    for key, value in {"num_trials": len(rows), **counts}.items():
        client.log_metric(run_id, key, value)
    if best is not None:
        client.log_metric(run_id, metric, best[metric])
        client.set_tag(run_id, "stpa.best_trial_id", best["trial_id"])
        if best["mlflow_run_id"]:
            client.set_tag(run_id, "stpa.best_run_id", best["mlflow_run_id"])
    client.set_terminated(run_id, status="FINISHED" if best is not None else "FAILED")
