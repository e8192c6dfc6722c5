"""Ray Tune sweeps over the STPA design axes (PAPER.md, "Sweep axes"), each trial one distributed training run.

Shape of a sweep (DESIGN.md, Ray Train V2 inside Tune):

- The search space holds flat ``section.field`` overrides (what ``pipeline.presets.apply_overrides`` takes) plus
  one coupled key, ``clips.num_segments`` (K), which ``expand_overrides`` turns into the K of the three clip
  configs and the model's ``num_segments`` together, so every sampled config passes ``ExperimentConfig``
  validation. Axes have names (``AXES``) so a command line can restrict a sweep (``--axes attention,lr``).
- Each trial is a Tune *function* trainable (``tune.with_resources(fn, {"cpu": 0.01})``: the trial actor only
  waits) that calls ``pipeline.training.fit.fit``, which runs a ``TorchTrainer`` on the cluster. Ray Train's
  ``TuneReportCallback`` forwards every epoch's report to Tune, where ASHA compares trials on the best
  val-split value of the dataset's primary metric (``val/best_top1`` / ``val/best_mAP``: in every report, also
  the final one, which Tune's strict metric check requires) at epoch milestones. Trials never see the test
  split (``train.final_test`` is off): the sweep's best configuration is retrained and scored on test once.
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

import dataclasses
import os
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline import metric_names as names
from pipeline import storage
from pipeline.config import ExperimentConfig, TrainConfig, apply_overrides
from pipeline.runtime import init_ray
from pipeline.sweep.report import (
    PARENT_TAG,
    PLOT_FILE,
    ROLE_TAG,
    SWEEP_TAG,
    TABLE_FILE,
    TRIAL_TAG,
    attach_mlflow_runs,
    is_finite,
    log_sweep_outputs,
    log_sweep_params,
    param_text,
    plot_metric,
    trial_row,
    trials_csv,
)
from pipeline.sweep.space import axes_space, check_space, expand_overrides
from pipeline.tracking.runs import find_or_create_run, run_title
from pipeline.tracking.runs import tracking_uri as default_tracking_uri
from pipeline.training.fit import fit

TRIAL_MAX_FAILURES = 1  # Tune restarts of a failed trial (it then resumes from its own Train checkpoint)


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
    best_metric: float  # its best val-split value of the primary metric
    best_run_id: str | None  # its MLflow run
    best_checkpoint_uri: str  # its latest Ray Train checkpoint (holds best_model.pt)
    table: tuple[dict[str, Any], ...]  # one row per trial (TABLE_FILE's rows), errors included


@dataclass(frozen=True)
class _TrialSetup:
    """What every trial shares; handed to the trainable through ``tune.with_parameters``."""

    exp: ExperimentConfig
    train_manifest: str
    val_manifest: str
    storage_path: str  # Ray Train storage of the trials' runs
    sweep_name: str
    tracking_uri: str  # "" disables MLflow
    parent_run_id: str | None
    clip_cache: str | None
    dataset_name: str | None = None  # names the MLflow experiment (stpa-<name>); default exp.dataset


def _run_trial(config: dict[str, Any], setup: _TrialSetup) -> None:
    """The Tune function trainable: one distributed ``fit`` with the trial's overrides."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    exp = apply_overrides(setup.exp, expand_overrides(setup.exp, config))
    tags = {SWEEP_TAG: setup.sweep_name, TRIAL_TAG: trial_id, ROLE_TAG: "trial"}
    if setup.parent_run_id:
        tags[PARENT_TAG] = setup.parent_run_id
    sampled = ", ".join(f"{key}={param_text(value)}" for key, value in sorted(config.items()))
    fit(
        exp,
        setup.train_manifest,
        None,  # no test manifest: trials run without train.final_test
        val_manifest=setup.val_manifest,
        storage_path=setup.storage_path,
        run_name=trial_run_name(setup.sweep_name, trial_id),
        tracking_uri=setup.tracking_uri,
        tags=tags,
        clip_cache=setup.clip_cache,
        dataset_name=setup.dataset_name,
        callbacks=[TuneReportCallback()],  # [ray] each epoch's report reaches Tune (ASHA)
        title=f"trial {trial_id.rsplit('_', 1)[-1]}: {sampled}",
        description=f"Trial `{trial_id}` of sweep `{setup.sweep_name}`: {sampled}.",
    )


def _trial_dirname(trial) -> str:
    """Trial folders named by trial id, so a result (even of a trial that never reported) maps to its id."""
    return trial.trial_id


def run_sweep(
    exp: ExperimentConfig,
    train_manifest: str,
    *,
    val_manifest: str | None,
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
    dataset_name: str | None = None,
) -> SweepResult:
    """Run (or resume) a Tune sweep of ``num_samples`` trials, each a distributed ``fit``, with ASHA.

    Args:
        exp: the base experiment; each trial applies its sampled overrides to it. ``train.epochs`` is every
            trial's budget (ASHA's ``max_t``); ``train.final_test`` is turned off (trials never see test).
        train_manifest, val_manifest: manifest URIs (``stpa prepare`` output); val ranks epochs and trials. There is
            no test manifest: trials are ranked, stopped and chosen on val only.
        num_samples: trials to sample (random search).
        storage_path: local folder or fsspec URI: the Tune experiment goes to ``<storage_path>/<name>``, the
            trials' Ray Train runs and checkpoints under ``<storage_path>/<name>/trials/``.
        name: the sweep's name: Tune experiment name, MLflow parent run name, and the key for resuming.
        tracking_uri: MLflow tracking URI (default ``pipeline.tracking.runs.tracking_uri()``); ``""`` disables MLflow
            (the table and plot are still written next to the Tune experiment).
        axes: names of ``AXES`` to sweep (default ``DEFAULT_AXES``); not with ``search_space``.
        search_space: an explicit flat space (``search_space()``'s format) instead of ``axes``.
        max_concurrent_trials: trials at once; default ``default_concurrency(exp.train)``.
        grace_period: epochs every trial runs before ASHA may stop it.
        reduction_factor: ASHA keeps the best 1 / reduction_factor of the trials at each milestone.
        seed: the random search's seed.
        clip_cache: decode-once cache root handed to every trial's ``fit``.
        stop: a Tune stop criterion besides ASHA (``{"val/best_top1": 0.95}``, or ``fn(trial_id, result) -> bool``);
            a trial it ends is reported as ``stopped``, like one ASHA ends.
        dataset_name: names the MLflow experiment of the sweep and its trials, ``stpa-<dataset_name>`` (default
            ``exp.dataset``).

    Returns:
        The best trial (by its best val-split value of the primary metric) and the comparison table.

    Raises:
        ValueError: bad arguments (``val_manifest`` None: nothing to rank trials on) or a space whose samples do
            not build a valid experiment.
        RuntimeError: every trial failed (the message lists each trial's error).
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if not val_manifest:
        raise ValueError(
            "a sweep ranks trials on the val split and there is none: prepare the manifests with a --val-fraction > 0"
        )
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, final_test=False))
    if not name or "/" in name:
        raise ValueError(f"sweep name must be a non-empty folder name, got {name!r}")
    if axes is not None and search_space is not None:
        raise ValueError("give either axes or search_space, not both")
    if not 1 <= grace_period <= exp.train.epochs:
        raise ValueError(f"grace_period must be in 1..train.epochs ({exp.train.epochs}), got {grace_period}")
    space = dict(search_space) if search_space is not None else axes_space(exp, axes)
    check_space(exp, space, seed=seed)

    init_ray(num_train_workers=exp.train.num_workers)  # no-op when the caller already connected
    num_concurrent = max_concurrent_trials or default_concurrency(exp.train)
    metric = names.best(exp.primary_metric)  # the best val-split value so far: in every report
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
                time_attr=names.EPOCH,
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
            "sweep.val_manifest": val_manifest,
            "sweep.selection_split": "val",
        }
        parent_run_id = _parent_run(uri, name, exp, space, settings, dataset_name or exp.dataset)

    setup = _TrialSetup(
        exp=exp,
        train_manifest=train_manifest,
        val_manifest=val_manifest,
        storage_path=storage.join(sweep_uri, "trials"),
        sweep_name=name,
        tracking_uri=uri,
        parent_run_id=parent_run_id,
        clip_cache=clip_cache,
        dataset_name=dataset_name,
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
                # No trial status tables on the console: each trial prints its own progress, and the sweep's
                # result is the comparison table (sweep/trials.csv) and its final line.
                verbose=0,
            ),
        )
    grid = tuner.fit()

    return _summarise(grid, exp, name, storage_path, uri, parent_run_id, metric)


def _parent_run(
    uri: str, name: str, exp: ExperimentConfig, space: Mapping[str, Any], settings: dict, dataset_name: str
) -> str:
    """The sweep's parent MLflow run (found again by name when resuming); its params are logged once."""
    parent_run_id, resumed = find_or_create_run(
        uri,
        dataset_name,
        name,
        {SWEEP_TAG: name, ROLE_TAG: "parent"},
        title=run_title("sweep", dataset_name),
        description=f"Ray Tune sweep `{name}` over {', '.join(f'`{k}`' for k in space)}: trials are nested "
        f"runs, ranked on `{settings['sweep.metric']}`; artifacts `sweep/` hold the comparison table and plot.",
    )
    if not resumed:
        log_sweep_params(uri, parent_run_id, exp, space, settings)
    return parent_run_id


def _summarise(
    grid,
    exp: ExperimentConfig,
    name: str,
    storage_path: str,
    uri: str,
    parent_run_id: str | None,
    metric: str,
) -> SweepResult:
    """The comparison table and plot (beside the Tune experiment and on the parent run), and the best trial."""
    sweep_uri = storage.join(storage_path, name)
    trials = sorted((trial_row(exp, result, storage_path) for result in grid), key=lambda t: t[0]["trial_id"])
    rows = [row for row, _ in trials]
    if uri:
        attach_mlflow_runs(uri, parent_run_id, rows)
    table_csv = trials_csv(rows)
    plot = plot_metric(rows, metric)
    storage.write_text(storage.join(sweep_uri, TABLE_FILE), table_csv)
    storage.write_bytes(storage.join(sweep_uri, PLOT_FILE), plot)

    ok = [(row, config) for row, config in trials if row["status"] != "error" and is_finite(row[metric])]
    if not ok:
        if uri:
            log_sweep_outputs(uri, parent_run_id, table_csv, plot, None, {}, metric, rows)
        reasons = "\n".join(f"  {row['trial_id']}: {row['error'] or 'no result reported'}" for row in rows)
        raise RuntimeError(f"sweep {name}: no trial produced a {metric} value:\n{reasons}")
    best, best_config = max(ok, key=lambda t: t[0][metric])
    best_overrides = expand_overrides(exp, best_config)
    if uri:
        log_sweep_outputs(uri, parent_run_id, table_csv, plot, best, best_overrides, metric, rows)
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
