"""The steps of the workflows: ``fn(ctx, **upstream outputs) -> outputs`` (pipeline.workflow).

Each runs as a Ray task, possibly on another node, so everything it needs comes from ``ctx.config`` (part of the
step's key), ``ctx.settings`` (not part of the key: tracking URI and the like) and its upstream steps' outputs, and
everything it leaves goes to ``ctx.out_dir`` or MLflow. Outputs are small JSON dicts of URIs, ids and metrics.

    data ─▶ prepare ─▶ [transcode] ─▶ [cache] ─▶ train ─▶ evaluate ─▶ register   (training and sweep workflows)
                                        └──▶ [sweep] ──┘ (sweep: the best trial's overrides feed train)
    model ─▶ predict                                                   (batch prediction, workflows/predict.py)

``transcode`` (``--transcode``) returns prepare's outputs with the manifests of its seek-friendly copies in place of
prepare's, and every later step takes it as its ``prepare`` input: cache, sweep, train and evaluate read the copies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os

from pipeline import metric_names as names
from pipeline import storage
from pipeline.config import (
    ExperimentConfig,
    apply_overrides,
    experiment_from_dict,
    with_num_classes,
)
from pipeline.errors import UserError
from pipeline.workflow import StepContext

# The generated dataset's layout; a folder dataset gets UCF101's, whose UCF-101/<Class>/<video> is a class folder tree.
SYNTH_LAYOUT = {"ucf101": "ucf101", "hmdb51": "hmdb51", "charades": "charades", "folder": "ucf101"}


def dataset_name(config: dict) -> str:
    """The name of the MLflow experiment and registered model (``stpa-<name>``): ``--name`` for a folder dataset,
    else the dataset."""
    return config.get("name") or config["dataset"]


def experiment_of(config: dict, num_classes: int, extra_overrides: dict | None = None) -> ExperimentConfig:
    """The experiment the workflow built (``config["experiment"]``, JSON) for the prepared manifest's class count,
    with this step's own overrides (a sweep's trial epochs, the best trial's settings) on top."""
    exp = with_num_classes(experiment_from_dict(config["experiment"]), num_classes)
    # JSON turns tuples into lists; config fields such as ``model.pyramid_layers`` are tuples.
    extra = {k: tuple(v) if isinstance(v, list) else v for k, v in (extra_overrides or {}).items()}
    return apply_overrides(exp, extra) if extra else exp


def make_data(ctx: StepContext) -> dict:
    """A small dataset in the dataset's official layout (when no ``--data-root`` is given)."""
    from pipeline.data.synth import synthesize

    cfg = ctx.config
    root = storage.join(ctx.out_dir, "dataset")
    summary = synthesize(
        SYNTH_LAYOUT[cfg["dataset"]],
        root,
        num_classes=cfg["num_classes"],
        videos_per_class=cfg["videos_per_class"],
        seed=cfg["seed"],
        width=96,
        height=72,
        num_frames=24,
    )
    print(f"generated {len(summary.videos)} videos in {root}", flush=True)
    if cfg["dataset"] == "folder":
        root = storage.join(root, "UCF-101")  # the class folders
    return {"data_root": root, "num_videos": len(summary.videos)}


def prepare(ctx: StepContext, data: dict | None = None) -> dict:
    """Manifests (Parquet) of the official split and a val split carved from its training list (``val_manifest``
    None when ``val_fraction`` is 0), every video probed; the report lists unreadable ones."""
    from pipeline.data.manifest import read_manifest
    from pipeline.data.prepare import dataset_root_paths, prepare_manifest

    cfg = ctx.config
    data_root = cfg.get("data_root") or data["data_root"]
    out = storage.join(ctx.out_dir, "manifests")
    try:
        videos, annotations = dataset_root_paths(cfg["dataset"], data_root)
        report = prepare_manifest(
            cfg["dataset"],
            videos,
            cfg.get("annotations") or annotations,
            out,
            split=cfg["split"],
            val_fraction=cfg["val_fraction"],
        )
    except (
        ValueError,
        FileNotFoundError,
    ) as error:  # the data's problem (names file, line, or video): no retry
        raise UserError(str(error)) from error
    print(report.summary(), flush=True)
    train_manifest, test_manifest = report.manifest_uris["train"], report.manifest_uris["test"]
    val_manifest = report.manifest_uris.get("val")
    train_table, class_names = read_manifest(train_manifest)
    test_table, _ = read_manifest(test_manifest)
    return {
        "data_root": data_root,
        "train_manifest": train_manifest,
        "val_manifest": val_manifest,
        "test_manifest": test_manifest,
        "train_sha256": _sha256(train_manifest),
        "val_sha256": _sha256(val_manifest) if val_manifest else None,
        "test_sha256": _sha256(test_manifest),
        "num_classes": len(class_names),
        "num_train": train_table.num_rows,
        "num_val": read_manifest(val_manifest)[0].num_rows if val_manifest else 0,
        "num_test": test_table.num_rows,
        "report": storage.join(out, "report.json"),
    }


def transcode(ctx: StepContext, prepare: dict) -> dict:
    """Seek-friendly copies of every video of prepare's manifests (``pipeline.data.transcode``, one Ray task per
    video); prepare's outputs with the new manifests, their hashes and row counts in place of prepare's. A re-run
    of the step (same key, same folder) reuses the copies already made."""
    from pipeline.data.transcode import transcode_manifests
    from pipeline.video.transcode import TranscodeSettings

    cfg = ctx.config
    settings = TranscodeSettings(short_side=cfg["short_side"], keyframe_interval=cfg["keyframe_interval"])
    splits = [name for name in ("train", "val", "test") if prepare.get(f"{name}_manifest")]
    report = transcode_manifests(
        [prepare[f"{name}_manifest"] for name in splits], storage.join(ctx.out_dir, "copies"), settings
    )
    print(report.summary(), flush=True)
    outputs = dict(prepare)
    for name in splits:
        new = report.manifest_uris[storage.normalize_uri(prepare[f"{name}_manifest"])]
        outputs[f"{name}_manifest"] = new
        outputs[f"{name}_sha256"] = _sha256(new)
        outputs[f"num_{name}"] = report.num_rows[new]
    outputs["source_manifests"] = {name: prepare[f"{name}_manifest"] for name in splits}
    outputs["transcode_report"] = report.report_uri
    outputs["num_transcode_failures"] = len(report.failures)
    return outputs


def _sha256(uri: str) -> str:
    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()


def cache(ctx: StepContext, prepare: dict) -> dict:
    """Decode the training clips once into a Parquet cache (``--clip-cache``): later epochs read, not decode
    (``train_clips.cache_samplings`` samplings per video, cropped and flipped anew every epoch)."""
    from pipeline.clips.cache import materialize_clips

    exp = experiment_of(ctx.config, prepare["num_classes"])
    root = storage.join(ctx.out_dir, "clips")
    entry = materialize_clips(prepare["train_manifest"], exp.train_clips, root)
    for failure in entry.failures:
        print(f"decode failure (cached): {failure}", flush=True)
    return {"clip_cache": root, "num_failures": len(entry.failures)}


def sweep(ctx: StepContext, prepare: dict, cache: dict | None = None) -> dict:
    """Ray Tune over the sweep axes; each trial a TorchTrainer run, nested in the sweep's MLflow run, ranked on val."""
    from pipeline.sweep.run import run_sweep

    cfg = ctx.config
    exp = experiment_of(cfg, prepare["num_classes"], {"train.epochs": cfg["trial_epochs"]})
    result = run_sweep(
        exp,
        prepare["train_manifest"],
        val_manifest=prepare.get("val_manifest"),
        num_samples=cfg["num_samples"],
        storage_path=storage.join(ctx.settings["storage"], "ray"),
        name=f"{ctx.workflow_id}-sweep-{ctx.key[:6]}",
        tracking_uri=ctx.settings["tracking_uri"],
        axes=cfg.get("axes"),
        max_concurrent_trials=cfg.get("max_concurrent_trials"),
        seed=cfg.get("seed", 0),
        clip_cache=(cache or {}).get("clip_cache"),
        dataset_name=dataset_name(cfg),
    )
    return {
        "parent_run_id": result.parent_run_id,
        "best_overrides": result.best_overrides,
        "best_metric": result.best_metric,
        "best_run_id": result.best_run_id,
        "num_trials": len(result.table),
    }


def train(ctx: StepContext, prepare: dict, cache: dict | None = None, sweep: dict | None = None) -> dict:
    """Ray Train (DDP) on the training manifest, weights chosen on val (the last epoch's without val); resumes from
    its last checkpoint when the step is re-run. Test is not read here: the evaluate step scores it once."""
    from pipeline.tracking.runs import run_title
    from pipeline.training.fit import fit

    cfg = ctx.config
    best = (sweep or {}).get("best_overrides", {})
    exp = experiment_of(cfg, prepare["num_classes"], {**best, "train.final_test": False})
    run_name = _run_name(ctx)
    tags = {"stpa.workflow_id": ctx.workflow_id, "stpa.step_key": ctx.key, "stpa.preset": cfg["preset"]}
    if sweep:
        tags["stpa.sweep_run_id"] = sweep["parent_run_id"]
    kind = ctx.settings.get("workflow", "train")
    if ctx.settings.get("source"):  # MLflow's own tags: the run page's "Source", beside the git commit
        tags.update({"mlflow.source.name": ctx.settings["source"], "mlflow.source.type": "LOCAL"})
    result = fit(
        exp,
        prepare["train_manifest"],
        prepare["test_manifest"],  # not read: train.final_test is off, the evaluate step scores test
        val_manifest=prepare.get("val_manifest"),
        storage_path=storage.join(ctx.settings["storage"], "ray"),
        run_name=run_name,
        tracking_uri=ctx.settings["tracking_uri"],
        tags=tags,
        clip_cache=(cache or {}).get("clip_cache"),
        title=run_title(kind, dataset_name(cfg), cfg["preset"])
        + (" (best trial retrained)" if sweep else ""),
        description=_workflow_description(ctx, cfg, best, sweep),
        dataset_name=dataset_name(cfg),
    )
    return {
        "tracking_uri": ctx.settings[
            "tracking_uri"
        ],  # a re-run against another URI says so (workflows/preflight.py)
        "run_name": run_name,
        "mlflow_run_id": result.mlflow_run_id,
        "mlflow_experiment_id": _experiment_id(ctx.settings["tracking_uri"], result.mlflow_run_id),
        "checkpoint_uri": result.checkpoint_uri,
        "metrics": {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)},
        "overrides": {**cfg.get("overrides", {}), **best},
        "experiment": dataclasses.asdict(exp),
    }


def _workflow_description(ctx: StepContext, cfg: dict, best: dict, sweep: dict | None) -> str:
    """The workflow's part of the run description: how to run it again, and what it changed."""
    lines = [f"Workflow `{ctx.workflow_id}` (preset `{cfg['preset']}`), step `train` (key `{ctx.key}`)."]
    if ctx.settings.get("command"):
        lines.append(f"Run again (same id: finished steps are skipped): `{ctx.settings['command']}`")
    if cfg.get("overrides"):
        lines.append("Overrides: " + ", ".join(f"`{k}={v}`" for k, v in sorted(cfg["overrides"].items())))
    if sweep:
        lines.append(
            f"The sweep's best trial (run `{sweep['best_run_id']}`, val {sweep['best_metric']:.4g}) retrained: "
            + ", ".join(f"`{k}={v}`" for k, v in sorted(best.items()))
        )
    return "\n\n".join(lines)


def _experiment_id(uri: str, run_id: str | None) -> str | None:
    if not uri or not run_id:
        return None
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id


def _run_name(ctx: StepContext) -> str:
    """Stable across re-runs (so Ray Train resumes from the checkpoint); new when the step is forced (--rerun)."""
    path = storage.join(ctx.out_dir, "run_name.txt")
    if storage.exists(path) and not ctx.fresh:
        return storage.read_text(path).strip()
    suffix = "" if not storage.exists(path) else "-" + hashlib.sha256(os.urandom(8)).hexdigest()[:6]
    name = f"{ctx.workflow_id}-{ctx.step}-{ctx.key[:6]}{suffix}"
    storage.write_text(path, name)
    return name


def evaluate(ctx: StepContext, prepare: dict, train: dict) -> dict:
    """Multi-view test, once, of the chosen weights (best epoch on val, or the last) with Ray Data batch inference;
    metrics (``test/*``: ``pipeline.metric_names``), the decode-failure count (a tag) and plots go to the training
    run."""
    import torch

    from pipeline.clips.ledger import DecodeReport
    from pipeline.evaluation.evaluate import evaluate_weights
    from pipeline.training.checkpoint import BEST_MODEL_FILE

    exp = experiment_from_dict(train["experiment"])
    weights_uri = storage.join(train["checkpoint_uri"], BEST_MODEL_FILE)
    report = DecodeReport.new()
    scalars, details, _ = evaluate_weights(
        exp,
        weights_uri,
        prepare["test_manifest"],
        num_scorers=ctx.settings.get("num_scorers", 1),
        use_gpu=exp.train.use_gpu,
        report=report,
    )
    metrics = {names.test(k): float(v) for k, v in scalars.items()}
    print(
        f"test ({exp.test_clips.num_views} views a video): {_format_scores(scalars)}; "
        f"{int(scalars[names.NUM_VIDEOS_SCORED])} videos scored, {report.num_failed} could not be decoded",
        flush=True,
    )
    storage.write_text(
        storage.join(ctx.out_dir, "decode_failures.json"),
        json.dumps(report.reasons, indent=1, sort_keys=True),
    )
    uri, run_id = ctx.settings["tracking_uri"], train["mlflow_run_id"]
    if uri and run_id:
        from pipeline.data.manifest import read_manifest
        from pipeline.tracking.artifacts import log_evaluation_artifacts
        from pipeline.tracking.runs import RankZeroRun
        from stpa_model import STPANet

        run = RankZeroRun(uri, run_id)
        logged, tags = names.split_report({**metrics, names.TEST_DECODE_FAILURES: report.num_failed})
        run.log(logged, tags, step=int(train["metrics"].get(names.GLOBAL_STEP, 0)))
        model = STPANet(exp.model)
        state = torch.load(io.BytesIO(storage.read_bytes(weights_uri)), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        test_table, _ = read_manifest(prepare["test_manifest"])
        log_evaluation_artifacts(run, model.eval(), exp, test_table, details, torch.device("cpu"))
    return {"metrics": metrics, "primary_metric": exp.primary_metric, "decode_failures": report.num_failed}


def _format_scores(scalars: dict[str, float]) -> str:
    """The quality metrics (not the counts) to 4 significant digits: ``mAP 0.4032  wAP 0.4411``."""
    counts = (names.NUM_VIDEOS_SCORED, names.NUM_VIDEOS_MISSING)
    return "  ".join(f"{k} {v:.4g}" for k, v in scalars.items() if k not in counts)


@contextlib.contextmanager
def _mlflow_event_lines_off():
    """MLflow's fluent registry announces each call on stderr, whatever ``MLFLOW_LOGGING_LEVEL`` says ("Successfully
    registered model", "Created version", and that it resolved a ``runs:/`` URI to MLflow 3's logged model): three
    lines of a workflow's output that the step's own line says better. Failures still raise."""
    from mlflow.utils.logging_utils import disable_logging, enable_logging

    disable_logging()
    try:
        yield
    finally:
        enable_logging()


def register(ctx: StepContext, prepare: dict, train: dict, evaluate: dict) -> dict:
    """Register the run's model as ``stpa-<dataset>``; the ``champion`` alias moves only to a better model."""
    from pipeline.tracking.registry import register as register_model

    uri = ctx.settings["tracking_uri"]
    if not uri or not train["mlflow_run_id"]:
        raise ValueError("register: MLflow tracking is off (no tracking URI): nothing to register")
    metrics = evaluate["metrics"]
    primary = names.test(evaluate["primary_metric"])
    overrides = json.dumps(train["overrides"], sort_keys=True)[:5000] if train["overrides"] else ""
    with _mlflow_event_lines_off():
        registration = register_model(
            uri,
            dataset_name(ctx.config),
            f"runs:/{train['mlflow_run_id']}/model",
            metrics,
            primary_metric=primary,
            # The manifests' URIs and hashes come from the run's params (registry.MANIFEST_PARAMS), the whole
            # config from the model: here only what the registry cannot know. No empty tags (registry.version_tags).
            tags={
                "stpa.workflow_id": ctx.workflow_id,
                "stpa.preset": ctx.config["preset"],
                "stpa.overrides": overrides,
            },
        )
    if registration.is_champion:
        verdict = "the new champion"
    elif registration.previous_champion_version is not None:
        verdict = (
            f"a plain version (champion version {registration.previous_champion_version} has "
            f"{registration.primary_metric} {registration.previous_champion_metric:.4g})"
        )
    else:
        verdict = "a plain version"
    print(
        f"registered {registration.name} version {registration.version} "
        f"({registration.primary_metric} {registration.value:.4g}): {verdict}",
        flush=True,
    )
    return {
        "name": registration.name,
        "version": str(registration.version),
        "is_champion": registration.is_champion,
        "metric": primary,
        "value": metrics[primary],
    }


# --- batch prediction (workflows/predict.py) ---------------------------------------------------------------------
def fetch_model(ctx: StepContext) -> dict:
    """The pinned model's weights, config and class names, copied from MLflow to the step's folder, which every
    node of the cluster reads (the scoring replicas load the weights from there, not from the tracking server)."""
    import tempfile

    from pipeline.tracking.serving import download_model_files

    cfg = ctx.config
    with tempfile.TemporaryDirectory() as directory:
        weights, exp, class_names = download_model_files(
            ctx.settings["tracking_uri"], cfg["model_uri"], directory
        )
        weights_uri = storage.join(ctx.out_dir, os.path.basename(weights))
        with open(weights, "rb") as f:
            storage.write_bytes(weights_uri, f.read())
    print(f"model {cfg['model_uri']}: {len(class_names)} classes, weights in {weights_uri}", flush=True)
    return {
        "weights_uri": weights_uri,
        "experiment": dataclasses.asdict(exp),
        "class_names": class_names,
    }


def predict(ctx: StepContext, model: dict) -> dict:
    """Score the listed videos into Parquet shards under ``out``; shards already written are skipped (resume)."""
    import pyarrow.parquet as pq

    from pipeline.data.video_list import VideoList
    from pipeline.evaluation.predict import ERROR, ModelRef, num_shards, predict_to_shards, shard_uri

    cfg, settings = ctx.config, ctx.settings
    fs, path = storage.filesystem(cfg["video_list_uri"])
    videos = VideoList(cfg["videos"], cfg["videos_kind"], pq.read_table(path, filesystem=fs))
    if videos.fingerprint() != cfg["videos_sha256"]:
        raise ValueError(f"{cfg['video_list_uri']} is not the video list this prediction was started with")
    summary = predict_to_shards(
        experiment_from_dict(model["experiment"]),
        model["weights_uri"],
        model["class_names"],
        videos,
        cfg["out"],
        model=ModelRef(cfg["model_uri"], cfg["model_name"], cfg["model_version"]),
        shard_size=cfg["shard_size"],
        top_k=cfg["top_k"],
        num_scorers=settings["num_replicas"],
        use_gpu=settings["use_gpu"],
        batch_size=settings.get("batch_size"),
        log=lambda line: print(line, flush=True),
    )
    for video, reason in summary.failures.items():
        print(f"could not score {video}: {reason}", flush=True)
    errors = []
    for shard in range(num_shards(videos.table.num_rows, cfg["shard_size"])):
        fs, path = storage.filesystem(shard_uri(cfg["out"], shard))
        errors += pq.read_table(path, columns=[ERROR], filesystem=fs).column(ERROR).to_pylist()
    failed = sum(1 for error in errors if error)
    return {
        "out": cfg["out"],
        "num_videos": len(errors),
        "num_scored": len(errors) - failed,
        "num_failed": failed,
        "this_run": summary.to_dict(),
    }
