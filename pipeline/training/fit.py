"""The training driver: ``fit`` builds the training dataset, resolves the MLflow run and runs a Ray Train
``TorchTrainer`` whose workers run ``pipeline.training.loop.train_loop_per_worker``; a second call with the same run
name resumes the run from its latest checkpoint.

What is chosen on what: the val manifest (carved from the training list by ``stpa prepare``) chooses the weights
(the epoch with the best val primary metric); without one the last epoch's weights are kept. The test manifest is
only scored, once, on the chosen weights (``train.final_test``; workflows score it in their evaluate step instead).
MLflow records the choice as the param ``selection.split`` (``SELECTION_VAL`` or ``SELECTION_LAST_EPOCH``)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import torch

from pipeline import metric_names as names
from pipeline import storage
from pipeline.clips.cache import cached_clip_dataset
from pipeline.clips.dataset import build_clip_dataset
from pipeline.clips.ledger import DecodeReport
from pipeline.config import ExperimentConfig, experiment_to_json
from pipeline.data.manifest import read_manifest
from pipeline.errors import UserError
from pipeline.storage import read_bytes
from pipeline.tracking.artifacts import log_model
from pipeline.tracking.runs import find_or_create_run, flatten_config
from pipeline.tracking.runs import tracking_uri as default_tracking_uri
from pipeline.training.checkpoint import BEST_MODEL_FILE
from pipeline.training.loop import SELECTION_LAST_EPOCH, SELECTION_VAL, steps_per_epoch, train_loop_per_worker
from pipeline.training.ray_hooks import MlflowEpochLogger, RaiseUserErrors

CONFIG_ARTIFACT = "config/experiment.json"  # the resolved ExperimentConfig of every run (JSON)


@dataclass(frozen=True)
class FitResult:
    # The final report (pipeline.metric_names): val/best_<primary>, test/* (with train.final_test), and the
    # bookkeeping counters epoch, global_step, restarts, steps_this_attempt, final.
    metrics: dict[str, float]
    checkpoint_uri: str  # latest checkpoint folder (holds state.pt and best_model.pt, the chosen weights)
    mlflow_run_id: str | None
    num_classes: int


def fit(
    exp: ExperimentConfig,
    train_manifest: str,
    test_manifest: str | None,
    *,
    val_manifest: str | None,
    storage_path: str,
    run_name: str,
    tracking_uri: str | None = None,
    tags: dict[str, str] | None = None,
    clip_cache: str | None = None,
    callbacks: list | None = None,
    title: str | None = None,
    description: str | None = None,
    dataset_name: str | None = None,
) -> FitResult:
    """Train, evaluate and track one run; a second call with the same ``run_name`` resumes it.

    Args:
        exp: the run's configuration.
        train_manifest, test_manifest: manifest Parquet URIs (``stpa prepare`` output). The test manifest is read
            by the workers only with ``train.final_test``, to score the chosen weights once; it may be ``None``
            without ``train.final_test`` (a sweep's trials).
        val_manifest: the val manifest (``stpa prepare``'s ``val.parquet``), which chooses the weights (and is what
            a sweep's scheduler compares); ``None``: no per-epoch selection, the last epoch's weights are used.
            Keyword-only and required, so no caller passes a test manifest in its place by position.
        storage_path: where Ray Train keeps checkpoints: a local folder or any fsspec URI.
        run_name: Ray Train run name and MLflow run name; the key for resuming.
        tracking_uri: MLflow tracking URI (default: ``pipeline.tracking.runs.tracking_uri()``); ``""`` disables MLflow.
        clip_cache: decode-once cache root (``pipeline.clips.cache``): ``train_clips.cache_samplings`` temporal
            samplings of every training video are decoded once, written there as Parquet (resized, not cropped),
            and every epoch reads one of them back instead of decoding, with its own multi-scale crop and flip.
        callbacks: Ray Train callbacks added to the run's ``RunConfig`` (a sweep passes Tune's
            ``TuneReportCallback`` so every epoch's report reaches the Tune scheduler).
        title: the MLflow run name people read (``pipeline.tracking.runs.run_title``); default ``run_name``.
        description: Markdown added after the run description ``fit`` writes (model, data, training, selection).
        dataset_name: names the MLflow experiment, ``stpa-<dataset_name>`` (default ``exp.dataset``; a folder
            dataset's ``--name``).

    Raises:
        ValueError: no test manifest with ``train.final_test``, manifests of different classes, or a class count
            other than ``model.num_classes``.
        pipeline.errors.UserError: too few training videos for one step; or training waited
            ``train.batch_timeout_s`` for a batch (``pipeline.training.loop.BatchTimeoutError``, not retried).
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = exp.train
    train_table, class_names = read_manifest(train_manifest)
    if cfg.final_test and not test_manifest:
        raise ValueError("train.final_test needs a test manifest")
    test_table, test_class_names = read_manifest(test_manifest) if test_manifest else (None, class_names)
    val_table, val_class_names = read_manifest(val_manifest) if val_manifest else (None, class_names)
    for other, other_class_names in ((test_manifest, test_class_names), (val_manifest, val_class_names)):
        if class_names != other_class_names:
            raise ValueError(f"{train_manifest} and {other} list different classes")
    if len(class_names) != exp.model.num_classes:
        raise ValueError(
            f"model.num_classes is {exp.model.num_classes} but {train_manifest} has {len(class_names)} classes"
        )
    num_steps = steps_per_epoch(train_table.num_rows, cfg.num_workers, cfg.batch_size)
    if num_steps == 0:
        raise UserError(
            f"{train_manifest}: {train_table.num_rows} training videos are too few for {cfg.num_workers} workers "
            f"x batch {cfg.batch_size}: lower --batch-size or --num-workers (train.batch_size, train.num_workers)"
        )

    if cfg.freeze_bn != "none" and not cfg.pretrained:
        print(
            f"warning: train.freeze_bn={cfg.freeze_bn!r} without pretrained weights: frozen BatchNorm layers keep "
            "their initial statistics (mean 0, variance 1) and normalise nothing, so a deep backbone's activations "
            "blow up (losses of ~50 here with ResNet-50). Pass --pretrained, or --set train.freeze_bn=none.",
            flush=True,
        )
    uri = default_tracking_uri() if tracking_uri is None else tracking_uri
    run_id = None
    if uri:
        num_videos = {
            "train": train_table.num_rows,
            "val": val_table.num_rows if val_table is not None else 0,
            "test": test_table.num_rows if test_table is not None and cfg.final_test else None,
        }
        text = run_description(exp, num_videos, len(class_names))
        run_id, resumed = find_or_create_run(
            uri,
            dataset_name or exp.dataset,
            run_name,
            tags,
            title=title,
            description=f"{text}\n\n{description}" if description else text,
        )
        if not resumed:
            _log_run_setup(
                uri, run_id, exp, {"train": train_manifest, "val": val_manifest, "test": test_manifest}
            )

    storage_filesystem, storage_root = storage.ray_storage(storage_path)
    train_report = DecodeReport.new()  # training videos that fail to decode are dropped and listed here
    if clip_cache:
        # Each pass Ray Train makes is the next epoch of every video (counted in the report's ledger).
        train_dataset, _ = cached_clip_dataset(train_table, exp.train_clips, clip_cache, report=train_report)
    else:
        train_dataset = build_clip_dataset(train_table, exp.train_clips, report=train_report)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": exp,
            "steps_per_epoch": num_steps,
            # The workers see the test split only to score the chosen weights once, at the end.
            "val_rows": val_table.to_pylist() if val_table is not None else None,
            "val_schema": val_table.schema if val_table is not None else None,
            "test_rows": test_table.to_pylist() if cfg.final_test else None,
            "test_schema": test_table.schema if cfg.final_test else None,
            "mlflow_tracking_uri": uri,
            "mlflow_run_id": run_id,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker},
            placement_strategy=cfg.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_root,
            storage_filesystem=storage_filesystem,
            failure_config=FailureConfig(max_failures=cfg.max_failures, controller_failure_limit=3),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.num_checkpoints_kept),
            # Ray Train's INFO lines (worker group placement and start-up) go to its log files, not the console.
            logging_config=LoggingConfig(log_level="WARNING"),
            # MLflow first: a sweep's Tune callback hands the report to a scheduler that may stop the trial.
            callbacks=[
                *([MlflowEpochLogger(uri, run_id)] if run_id else []),
                RaiseUserErrors(),
                *(callbacks or []),
            ],
            # Ray Train reroutes a worker's print() through its logger, which reaches the console twice when
            # Ray captures the worker's stdout (every epoch line printed two times); plain prints unless the
            # user set RAY_TRAIN_ENABLE_PRINT_PATCH.
            worker_runtime_env={
                "env_vars": {
                    "RAY_TRAIN_ENABLE_PRINT_PATCH": os.environ.get("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
                }
            },
        ),
        datasets={"train": train_dataset},
    )
    try:
        result = trainer.fit()
    except Exception as error:
        cause = getattr(
            error, "controller_failure", None
        )  # RaiseUserErrors' UserError, as Ray Train raises it
        if isinstance(cause, UserError):
            raise cause from None
        raise
    if result.error:
        raise result.error
    if train_report.num_failed:
        print(train_report.summary(), flush=True)
    if uri:
        _log_decode_failures(uri, run_id, train_report)
    checkpoint_uri = storage.checkpoint_uri(storage_path, result.checkpoint.path) if result.checkpoint else ""
    if uri:
        _finish_run(uri, run_id, exp, result)
    return FitResult(dict(result.metrics or {}), checkpoint_uri, run_id, len(class_names))


def run_description(exp: ExperimentConfig, num_videos: dict[str, int | None], num_classes: int) -> str:
    """The MLflow run description (Markdown): what was trained on what, how, and chosen how.

    Args:
        exp: the run's configuration.
        num_videos: videos per split (``train``, ``val``: 0 without a val split, ``test``: None when this run
            does not score test).
        num_classes: classes in the manifests.
    """
    model, cfg, clips = exp.model, exp.train, exp.train_clips
    kind = "multi-label" if model.multi_label else "single-label"
    pyramid = "+".join(model.pyramid_layers)
    device = f"{cfg.num_workers} GPU workers" if cfg.use_gpu else f"{cfg.num_workers} CPU workers"
    primary = exp.primary_metric
    if num_videos.get("val"):
        selection = f"the epoch with the best `{names.val(primary)}` (`{names.best(primary)}`)"
    else:
        selection = "the last epoch (no val split)"
    test = (
        f"scored once, multi-view ({exp.test_clips.num_views} views, `{cfg.view_reduce}` over views): `test/*`"
        if num_videos.get("test") is not None
        else "not scored during training (a workflow's evaluate step logs `test/*` to this run once; sweep "
        "trials never see test)"
    )
    splits = ", ".join(f"{n} {split}" for split, n in num_videos.items() if n is not None)
    return "\n".join(
        [
            f"STPA on **{exp.dataset}** ({num_classes} classes, {kind}): `{model.backbone}` backbone, attention "
            f"`{model.attention}` over `{pyramid}`, K={clips.num_segments} segments x {clips.frames_per_segment} "
            f"frame(s) at {clips.crop_size} px.",
            "",
            f"- **data**: {splits} videos (params `manifest.<split>.uri` / `.sha256`)",
            f"- **training**: {cfg.epochs} epochs, {device} x batch {cfg.batch_size} (x{cfg.grad_accum_steps} "
            f"accumulation), {exp.optim.optimizer} lr {exp.optim.lr:g} at batch {exp.optim.reference_batch_size} "
            f"(scaled to the global batch), {cfg.precision}",
            f"- **weights**: {selection}",
            f"- **test**: {test}",
            f"- **metrics**: `train/loss`, `train/lr` every {cfg.log_every_steps} steps; `train/epoch_loss`, "
            "`val/*` per epoch; bookkeeping (global step, restarts) as `stpa.*` tags",
            f"- **config**: artifact `{CONFIG_ARTIFACT}` (the resolved `ExperimentConfig`), and the params",
        ]
    )


def _log_run_setup(uri: str, run_id: str, exp: ExperimentConfig, manifests: dict[str, str | None]) -> None:
    """Params and setup facts, once per run, from the driver, in one batch: the config, each manifest's URI and
    SHA-256 (``None``: no such split), and ``selection.split``, the split that chooses the weights; the resolved
    config as the artifact ``CONFIG_ARTIFACT``."""
    import hashlib
    import platform

    from mlflow.entities import Param, RunTag
    from mlflow.tracking import MlflowClient

    params = {key: value[:6000] for key, value in flatten_config(exp).items()}
    params["selection.split"] = SELECTION_VAL if manifests.get("val") else SELECTION_LAST_EPOCH
    for name, manifest in manifests.items():
        if not manifest:
            continue
        params[f"manifest.{name}.uri"] = manifest
        params[f"manifest.{name}.sha256"] = hashlib.sha256(read_bytes(manifest)).hexdigest()
    tags = {
        "system.python": platform.python_version(),
        "system.torch": torch.__version__,
        "system.platform": platform.platform(),
        "system.cuda": str(torch.cuda.is_available()),
    }
    client = MlflowClient(tracking_uri=uri)
    client.log_batch(
        run_id,
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    client.log_text(run_id, experiment_to_json(exp), CONFIG_ARTIFACT)


def _log_decode_failures(uri: str, run_id: str, report: DecodeReport) -> None:
    """How many training videos were lost to decode errors, and which (ids and reasons) as a JSON artifact."""
    import json

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.set_tag(run_id, names.tag(names.TRAIN_DECODE_FAILURES), str(report.num_failed))
    if report.num_failed:
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "train_decode_failures.json")
            with open(path, "w") as f:
                json.dump(report.reasons, f, indent=1, sort_keys=True)
            client.log_artifact(run_id, path, artifact_path="data")


def _finish_run(uri, run_id, exp, result) -> None:
    """Log the best model from the final checkpoint and close the MLflow run."""
    from mlflow.tracking import MlflowClient

    with result.checkpoint.as_directory() as directory:
        log_model(uri, run_id, exp, os.path.join(directory, BEST_MODEL_FILE))
    MlflowClient(tracking_uri=uri).set_terminated(run_id, status="FINISHED")
