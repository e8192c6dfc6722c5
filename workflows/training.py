"""The command line shared by ``workflows/train_<dataset>.py`` and ``workflows/sweep_<dataset>.py``.

Both build a DAG of steps (``workflows/steps.py``) and run it with ``pipeline.workflow.run_workflow``::

    data ─▶ prepare ─▶ [transcode] ─▶ [cache] ─▶ train ─────────────▶ evaluate ─▶ register      (train_<dataset>.py)
    data ─▶ prepare ─▶ [transcode] ─▶ [cache] ─▶ sweep ─▶ train (best config) ─▶ evaluate ─▶ register

``data`` only when no ``--data-root`` is given (a small dataset in the official layout is generated).
``transcode`` only with ``--transcode``: seek-friendly copies of every video, whose manifests replace prepare's for
every later step (cache, sweep, train and evaluate read the copies; ``stpa predict`` still decodes what it is
given, usually originals, which the copies match frame for frame but not pixel for pixel). The same
file works three ways: plain ``python`` starts a local Ray; inside ``ray job submit`` (which sets RAY_ADDRESS) or with
``RAY_ADDRESS`` set it joins that cluster. Re-running with the same ``--workflow-id`` (by default derived from the
configuration) skips finished steps and resumes training from its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time

from pipeline import storage


def build_parser(dataset: str, sweep: bool = False) -> argparse.ArgumentParser:
    what = "Sweep, retrain the best configuration," if sweep else "Train"
    parser = argparse.ArgumentParser(
        prog=f"{'sweep' if sweep else 'train'}_{dataset}.py",
        description=f"{what} evaluate and register STPA on {dataset}: a workflow of Ray tasks, tracked in MLflow. "
        "Without --data-root a small dataset is generated in the official layout first.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--preset", default="smoke", help="smoke | ucf101 | hmdb51 | charades (pipeline/presets.py)"
    )
    parser.add_argument("--data-root", default=None, help="dataset root in the official layout (path or URI)")
    parser.add_argument("--split", type=int, default=1, help="official split (UCF101/HMDB51: 1-3)")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the official training videos carved into the val split that chooses epochs and sweep "
        "trials (UCF101 by whole groups); 0: no val, the last epoch is kept (sweeps need val)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--num-workers", type=int, default=None, help="Ray Train workers (one per GPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per worker per step")
    parser.add_argument("--use-gpu", action="store_true", default=None, help="train on GPUs (NCCL)")
    parser.add_argument(
        "--storage",
        default="runs",
        help="run root shared by all nodes (path or URI): step outputs, checkpoints, generated data",
    )
    parser.add_argument("--pretrained", default=None, help="ImageNet ResNet state dict for the backbone")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=JSON",
        help="config override, e.g. --set model.beta=0.01 --set train_clips.num_segments=4",
    )
    parser.add_argument(
        "--clip-cache", action="store_true", help="decode the training clips once (cache step)"
    )
    parser.add_argument(
        "--transcode",
        action="store_true",
        help="re-encode every video once into seek-friendly H.264 copies (transcode step, stpa transcode); later "
        "steps read the copies",
    )
    parser.add_argument(
        "--transcode-short-side", type=int, default=256, help="transcode: shorter side of the copies"
    )
    parser.add_argument(
        "--transcode-keyframe-interval", type=int, default=16, help="transcode: frames between keyframes"
    )
    parser.add_argument(
        "--workflow-id", default=None, help="names the run; the same id resumes it (default: from the config)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the DAG and each step's status, run nothing"
    )
    parser.add_argument(
        "--rerun", action="append", default=[], metavar="STEP", help="run STEP (and what follows) again"
    )
    parser.add_argument("--no-register", action="store_true", help="stop after evaluate")
    parser.add_argument(
        "--eval-scorers",
        type=int,
        default=None,
        help="model replicas scoring test clips (default: 1 per GPU)",
    )
    parser.add_argument(
        "--synth-videos-per-class", type=int, default=12, help="generated data: videos per class"
    )
    parser.add_argument("--synth-classes", type=int, default=5, help="generated data: number of classes")
    if sweep:
        parser.add_argument("--num-samples", type=int, default=4, help="Tune trials")
        parser.add_argument(
            "--axes",
            default=None,
            help="comma-separated sweep axes (pipeline/sweep.py; default: all): e.g. attention,pyramid_depth,lr",
        )
        parser.add_argument(
            "--trial-epochs", type=int, default=None, help="epochs per trial (default: --epochs)"
        )
        parser.add_argument("--max-concurrent-trials", type=int, default=None, help="trials running at once")
    return parser


def experiment_overrides(args: argparse.Namespace) -> dict[str, object]:
    """``--set`` values, then the dedicated flags (which win)."""
    from pipeline.config import parse_overrides  # imports torch: not needed for --help

    try:
        flat = parse_overrides(args.set)  # a malformed item fails here, before Ray starts
    except ValueError as error:
        raise SystemExit(str(error)) from None
    for flag, key in (
        ("epochs", "train.epochs"),
        ("num_workers", "train.num_workers"),
        ("batch_size", "train.batch_size"),
        ("use_gpu", "train.use_gpu"),
        ("pretrained", "train.pretrained"),
    ):
        if getattr(args, flag) is not None:
            flat[key] = getattr(args, flag)
    return flat


def build_workflow(dataset: str, args: argparse.Namespace, sweep: bool = False):
    """The DAG's final step(s), the workflow id, the run root, and the run's TrainConfig (for sizing Ray)."""
    from pipeline.config import apply_overrides
    from pipeline.presets import NUM_CLASSES, preset
    from pipeline.tracking.runs import tracking_uri
    from pipeline.workflow import Step, config_id
    from workflows import steps

    overrides = experiment_overrides(args)
    # The experiment is built here, once, and travels to every step as JSON; a bad --set fails now, not in step 3.
    # Steps change only the class count, which the prepared manifest decides.
    num_classes = NUM_CLASSES.get(dataset, 2) if args.data_root else args.synth_classes
    exp = apply_overrides(preset(args.preset, dataset, num_classes), overrides)
    experiment = {
        "dataset": dataset,
        "preset": args.preset,
        "overrides": overrides,
        "experiment": dataclasses.asdict(exp),
    }
    storage_root = storage.normalize_uri(args.storage)
    settings = {
        "storage": storage_root,
        "tracking_uri": tracking_uri(),
        "num_scorers": args.eval_scorers or (exp.train.num_workers if exp.train.use_gpu else 1),
        "workflow": "sweep" if sweep else "train",
        "command": " ".join(shlex.quote(word) for word in ["python", *sys.argv]),
        "source": f"workflows/{'sweep' if sweep else 'train'}_{dataset}.py",
    }

    if args.data_root:
        data = None
        source = {"data_root": storage.normalize_uri(args.data_root)}
    else:
        source = {
            "num_classes": args.synth_classes,
            "videos_per_class": args.synth_videos_per_class,
            "seed": 0,
        }
        data = Step("data", steps.make_data, config={"dataset": dataset, **source}, num_cpus=1)
    prepare = Step(
        "prepare",
        steps.prepare,
        config={
            "dataset": dataset,
            "split": args.split,
            "val_fraction": args.val_fraction,
            "data_root": source.get("data_root"),
        },
        inputs={"data": data} if data else {},
        num_cpus=1,
    )
    transcode_config = None
    if args.transcode:
        from pipeline.video.transcode import TranscodeSettings

        try:  # a bad value fails here, before Ray starts
            TranscodeSettings(
                short_side=args.transcode_short_side, keyframe_interval=args.transcode_keyframe_interval
            )
        except ValueError as error:
            raise SystemExit(f"--transcode: {error}") from None
        transcode_config = {
            "short_side": args.transcode_short_side,
            "keyframe_interval": args.transcode_keyframe_interval,
        }
        # Its outputs are prepare's with the copies' manifests: every later step takes it as its "prepare" input.
        prepare = Step(
            "transcode", steps.transcode, config=transcode_config, inputs={"prepare": prepare}, num_cpus=0
        )
    upstream = {"prepare": prepare}
    if args.clip_cache:
        upstream["cache"] = Step("cache", steps.cache, config=experiment, inputs={"prepare": prepare})
    train_inputs = dict(upstream)
    identity = {
        **experiment,
        "source": source,
        "split": args.split,
        "val_fraction": args.val_fraction,
        "clip_cache": args.clip_cache,
    }
    if transcode_config:  # only when on: workflow ids of runs without it stay what they were
        identity["transcode"] = transcode_config
    if sweep:
        sweep_config = {
            **experiment,
            "num_samples": args.num_samples,
            "axes": args.axes.split(",") if args.axes else None,
            "trial_epochs": args.trial_epochs or exp.train.epochs,
            "max_concurrent_trials": args.max_concurrent_trials,
        }
        train_inputs["sweep"] = Step(
            "sweep", steps.sweep, config=sweep_config, inputs=dict(upstream), settings=settings
        )
        identity["sweep"] = sweep_config
    train = Step(
        "train", steps.train, config=experiment, inputs=train_inputs, settings=settings, max_retries=1
    )
    evaluate = Step(
        "evaluate",
        steps.evaluate,
        config=experiment,
        inputs={"prepare": prepare, "train": train},
        settings=settings,
    )
    final = evaluate
    if not args.no_register:
        final = Step(
            "register",
            steps.register,
            config=experiment,
            inputs={"prepare": prepare, "train": train, "evaluate": evaluate},
            settings=settings,
        )
    prefix = f"{'sweep' if sweep else 'train'}-{dataset}-{args.preset}"
    return [final], args.workflow_id or config_id(prefix, identity), storage_root, exp.train


def main(dataset: str, argv: list[str] | None = None, sweep: bool = False) -> int:
    args = build_parser(dataset, sweep).parse_args(argv)
    from pipeline.runtime import init_ray
    from pipeline.tracking.runs import tracking_uri
    from pipeline.workflow import WorkflowError, format_plan, plan, run_workflow

    targets, workflow_id, root, train_cfg = build_workflow(dataset, args, sweep)
    statuses = plan(targets, root, workflow_id)
    if args.dry_run:
        print(format_plan(statuses, workflow_id), flush=True)
        return 0
    num_done = sum(s.done for s in statuses)
    print(
        f"workflow {workflow_id}: {len(statuses)} steps ({num_done} done before), outputs in "
        f"{storage.join(root, workflow_id)}",
        flush=True,
    )
    start = time.monotonic()
    if args.rerun or num_done < len(statuses):  # nothing to run: no cluster needed
        init_ray(num_train_workers=0 if train_cfg.use_gpu else train_cfg.num_workers)
    try:
        outputs = run_workflow(targets, root, workflow_id, rerun=args.rerun)
    except WorkflowError as e:
        print(str(e), flush=True)
        return 1
    summary = workflow_summary(workflow_id, outputs, tracking_uri())
    summary_uri = storage.join(root, workflow_id, SUMMARY_FILE)
    storage.write_text(summary_uri, json.dumps(summary, indent=1, sort_keys=True, default=str))
    print(format_summary(summary, time.monotonic() - start, summary_uri), flush=True)
    return 0


SUMMARY_FILE = "summary.json"  # <run root>/<workflow id>/summary.json: the final summary, for programs


def workflow_summary(workflow_id: str, outputs: dict[str, dict], uri: str) -> dict:
    """What a finished workflow produced: the run, its test metrics (``test/*``), the registered version."""
    from pipeline import metric_names as names
    from pipeline.tracking.runs import run_url

    train, evaluate = outputs["train"], outputs["evaluate"]
    summary = {
        "workflow_id": workflow_id,
        "mlflow_run_id": train["mlflow_run_id"],
        "mlflow_experiment_id": train.get("mlflow_experiment_id"),
        "tracking_uri": uri,
        "primary_metric": evaluate["primary_metric"],
        "metrics": evaluate["metrics"],
        names.TEST_DECODE_FAILURES: evaluate.get("decode_failures"),
    }
    if uri and train["mlflow_run_id"] and train.get("mlflow_experiment_id"):
        summary["mlflow_run_url"], summary["mlflow_ui_command"] = run_url(
            uri, train["mlflow_experiment_id"], train["mlflow_run_id"]
        )
    if "register" in outputs:
        summary["registered_model"] = outputs["register"]["name"]
        summary["registered_version"] = outputs["register"]["version"]
        summary["champion"] = outputs["register"]["is_champion"]
    return summary


def format_summary(summary: dict, seconds: float, summary_uri: str) -> str:
    """The summary for people: test metrics to 4 significant digits, the model version, where to look."""
    from pipeline import metric_names as names
    from pipeline.workflow import format_seconds

    metrics = summary["metrics"]
    primary = names.test(summary["primary_metric"])
    quality = [
        k for k in metrics if k != primary and not k.endswith(("num_videos_scored", "num_videos_missing"))
    ]
    scores = "  ".join(f"{k.split('/', 1)[1]} {metrics[k]:.4g}" for k in [primary, *quality] if k in metrics)
    scored = int(metrics.get(names.test(names.NUM_VIDEOS_SCORED), 0))
    missing = int(metrics.get(names.test(names.NUM_VIDEOS_MISSING), 0))
    lines = [
        f"finished {summary['workflow_id']} in {format_seconds(seconds)}",
        f"  test     {scores}   ({scored} of {scored + missing} videos scored)",
    ]
    if "registered_version" in summary:
        state = (
            "the champion" if summary["champion"] else "not the champion (an earlier version scores higher)"
        )
        lines.append(
            f"  model    {summary['registered_model']} version {summary['registered_version']}, {state}"
        )
    if summary.get("mlflow_run_url"):
        lines.append(f"  MLflow   {summary['mlflow_run_url']}")
        if summary.get("mlflow_ui_command"):
            lines.append(f"           (serve it first: {summary['mlflow_ui_command']})")
    lines.append(f"  summary  {summary_uri}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit("run workflows/train_<dataset>.py or workflows/sweep_<dataset>.py")
