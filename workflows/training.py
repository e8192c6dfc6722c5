"""The command line shared by ``workflows/train_<dataset>.py`` and ``workflows/sweep_<dataset>.py``.

Both build a DAG of steps (``workflows/steps.py``) and run it with ``pipeline.workflow.run_workflow``::

    data ─▶ prepare ─▶ [transcode] ─▶ [cache] ─▶ train ─────────────▶ evaluate ─▶ register      (train_<dataset>.py)
    data ─▶ prepare ─▶ [transcode] ─▶ [cache] ─▶ sweep ─▶ train (best config) ─▶ evaluate ─▶ register

``data`` only when no ``--data-root`` is given (a small dataset in the official layout is generated).
``transcode`` only with ``--transcode``: seek-friendly copies of every video, whose manifests replace prepare's for
every later step (cache, sweep, train and evaluate read the copies; ``stpa predict`` still decodes what it is
given, usually originals, which the copies match frame for frame but not pixel for pixel). The same
file works three ways: plain ``python`` starts a private local Ray; inside ``ray job submit`` (which sets
RAY_ADDRESS) or with ``RAY_ADDRESS`` set it joins that cluster. Re-running with the same ``--workflow-id`` (by
default derived from the configuration) skips finished steps and resumes training from its last checkpoint.

``workflows/train_folder.py`` and ``sweep_folder.py`` take a user's own videos, ``<root>/<class>/<video>``; their
``--name`` (default: the root folder's name) names the MLflow experiment and the registered model ``stpa-<name>``.

Before Ray starts, ``workflows/preflight.py`` checks the input (data root, annotations, flags, GPUs, tracking
server); a problem the user fixes (``pipeline.errors.UserError``, also one raised by a step) prints
``error: <message>`` and exits with status 2, with the traceback only under ``--debug``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import posixpath
import re
import shlex
import sys
import time
import traceback

from pipeline import storage
from pipeline.errors import EXIT_USER_ERROR, UserError
from pipeline.flags import HelpFormatter, add_experiment_flags, build_experiment

DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # an MLflow experiment and model name part


def build_parser(dataset: str, sweep: bool = False) -> argparse.ArgumentParser:
    what = "Sweep, retrain the best configuration," if sweep else "Train,"
    own = dataset == "folder"
    parser = argparse.ArgumentParser(
        prog=f"{'sweep' if sweep else 'train'}_{dataset}.py",
        description=f"{what} evaluate and register STPA on "
        + ("your own videos, <data root>/<class>/<video>" if own else dataset)
        + ": a workflow of Ray tasks, tracked in MLflow. Without --data-root a small dataset is generated "
        + ("(class folders) first." if own else "in the official layout first."),
        formatter_class=HelpFormatter,
    )
    add_experiment_flags(parser)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-root",
        default=None,
        help="a folder of class folders, <root>/<class>/<video> (path or URI)"
        if own
        else "dataset root in the official layout (path or URI)",
    )
    if own:
        data.add_argument(
            "--name",
            default=None,
            help="dataset name: the MLflow experiment and the registered model are stpa-<name> (default: the "
            "data root's folder name)",
        )
        data.add_argument(
            "--annotations",
            default=None,
            help="optional folder of split lists in UCF101's format (trainlist0N.txt, testlist0N.txt, optional "
            "classInd.txt) instead of the hashed 80/20 train/test split",
        )
    data.add_argument(
        "--split", type=int, default=1, help="official split (UCF101/HMDB51, folder lists: 1-3)"
    )
    data.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the official training videos carved into the val split that chooses epochs and sweep "
        "trials (UCF101 by whole groups); 0: no val, the last epoch is kept (sweeps need val)",
    )
    data.add_argument(
        "--synth-videos-per-class", type=int, default=12, help="generated data: videos per class"
    )
    data.add_argument("--synth-classes", type=int, default=5, help="generated data: number of classes")
    run = parser.add_argument_group("run")
    run.add_argument(
        "--storage",
        default="runs",
        help="run root shared by all nodes (path or URI): step outputs, checkpoints, generated data",
    )
    run.add_argument("--clip-cache", action="store_true", help="decode the training clips once (cache step)")
    run.add_argument(
        "--transcode",
        action="store_true",
        help="re-encode every video once into seek-friendly H.264 copies (transcode step, stpa transcode); later "
        "steps read the copies",
    )
    run.add_argument(
        "--transcode-short-side", type=int, default=256, help="transcode: shorter side of the copies"
    )
    run.add_argument(
        "--transcode-keyframe-interval", type=int, default=16, help="transcode: frames between keyframes"
    )
    run.add_argument(
        "--workflow-id", default=None, help="names the run; the same id resumes it (default: from the config)"
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check the input, print the DAG and each step's status, run nothing",
    )
    run.add_argument(
        "--rerun", action="append", default=[], metavar="STEP", help="run STEP (and what follows) again"
    )
    run.add_argument("--no-register", action="store_true", help="stop after evaluate")
    run.add_argument(
        "--eval-scorers",
        type=int,
        default=None,
        help="model replicas scoring test clips (default: 1 per GPU)",
    )
    run.add_argument(
        "--autoscaling",
        action="store_true",
        help="the cluster adds nodes on demand: do not require its present nodes to fit the run",
    )
    run.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    if sweep:
        tune = parser.add_argument_group("sweep")
        tune.add_argument("--num-samples", type=int, default=4, help="Tune trials")
        tune.add_argument(
            "--axes",
            default=None,
            help="comma-separated sweep axes (pipeline/sweep/space.py; default: all): e.g. attention,pyramid_depth,lr",
        )
        tune.add_argument(
            "--trial-epochs", type=int, default=None, help="epochs per trial (default: --epochs)"
        )
        tune.add_argument("--max-concurrent-trials", type=int, default=None, help="trials running at once")
    return parser


def dataset_name(dataset: str, args: argparse.Namespace) -> str:
    """The name of the MLflow experiment and registered model (``stpa-<name>``): the dataset, or for a folder
    dataset ``--name``, else the data root's folder name (made safe), else ``folder``.

    Raises:
        UserError: a ``--name`` that is not a plain name.
    """
    if dataset != "folder":
        return dataset
    if args.name is not None:
        if not DATASET_NAME.match(args.name):
            raise UserError(
                f"--name {args.name!r}: use letters, digits, '.', '_' and '-' (it names the MLflow experiment and "
                "the registered model stpa-<name>)"
            )
        return args.name
    if not args.data_root:
        return "folder"
    base = posixpath.basename(storage.normalize_uri(args.data_root).replace("\\", "/").rstrip("/"))
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-._")[:100]
    return name or "folder"


def build_workflow(dataset: str, args: argparse.Namespace, sweep: bool = False, log=print):
    """Check the input (``workflows/preflight.py``) and build the DAG.

    Returns:
        The DAG's final step(s), the workflow id, the run root, the run's TrainConfig (for sizing Ray) and the
        tracking URI.

    Raises:
        UserError: any input problem the preflight finds.
    """
    from pipeline.config import with_num_classes
    from pipeline.presets import NUM_CLASSES, fit_to_dataset
    from pipeline.tracking.runs import tracking_uri
    from pipeline.workflow import Step, config_id
    from workflows import preflight, steps

    name = dataset_name(dataset, args)
    annotations = getattr(args, "annotations", None)
    if annotations and not args.data_root:
        raise UserError("--annotations lists the videos of a --data-root: give both")
    # The flags and --set first (a typo fails before any file is read), then the data, which gives the class
    # count and the training set's size.
    num_classes = args.synth_classes if not args.data_root else NUM_CLASSES.get(dataset, 2)
    exp, overrides, explicit = build_experiment(args, dataset, num_classes)
    if args.data_root:
        num_classes, num_train = preflight.check_data(
            dataset, args.data_root, split=args.split, val_fraction=args.val_fraction, annotations=annotations
        )
        exp = with_num_classes(exp, num_classes)
        exp, note = fit_to_dataset(exp, num_train, explicit)
        if note:
            log(f"note: {note}")
            overrides.update(
                {"train.num_workers": exp.train.num_workers, "train.batch_size": exp.train.batch_size}
            )
    preflight.check_gpus_here(exp.train.use_gpu, exp.train.num_workers, args.preset)
    uri = tracking_uri()
    preflight.check_tracking(uri)

    experiment = {
        "dataset": dataset,
        "preset": args.preset,
        "overrides": overrides,
        "experiment": dataclasses.asdict(exp),
    }
    if name != dataset:
        experiment["name"] = name  # only then: the official datasets' step keys stay what they were
    storage_root = storage.normalize_uri(args.storage)
    settings = {
        "storage": storage_root,
        "tracking_uri": uri,
        "num_scorers": args.eval_scorers or (exp.train.num_workers if exp.train.use_gpu else 1),
        "workflow": "sweep" if sweep else "train",
        "command": " ".join(shlex.quote(word) for word in ["python", *sys.argv]),
        "source": f"workflows/{'sweep' if sweep else 'train'}_{dataset}.py",
    }

    if args.data_root:
        data = None
        source = {"data_root": storage.normalize_uri(args.data_root)}
        if annotations:
            source["annotations"] = storage.normalize_uri(annotations)
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
            **({"annotations": source["annotations"]} if "annotations" in source else {}),
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
            raise UserError(f"--transcode: {error}") from None
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
    prefix = f"{'sweep' if sweep else 'train'}-{name}-{args.preset}"
    return [final], args.workflow_id or config_id(prefix, identity), storage_root, exp.train, uri


def main(dataset: str, argv: list[str] | None = None, sweep: bool = False) -> int:
    """Run the workflow; 0 on success, 2 on an input error (one line on stderr), 1 when a step fails."""
    args = build_parser(dataset, sweep).parse_args(argv)
    try:
        return _run(dataset, args, sweep)
    except UserError as error:
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR


def _run(dataset: str, args: argparse.Namespace, sweep: bool) -> int:
    from pipeline.tracking.runs import tracking_uri
    from pipeline.workflow import WorkflowError, format_plan, plan, run_workflow
    from workflows import preflight

    targets, workflow_id, root, train_cfg, uri = build_workflow(dataset, args, sweep)
    statuses = plan(targets, root, workflow_id)
    note = preflight.tracking_note(statuses, uri) if not args.rerun else None
    if note:
        print(note, flush=True)
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
        import os

        from pipeline.runtime import init_ray

        joined = bool(os.environ.get("RAY_ADDRESS"))
        init_ray(
            num_train_workers=0 if train_cfg.use_gpu else train_cfg.num_workers,
            cpus_per_worker=train_cfg.cpus_per_worker,
        )
        if not args.autoscaling:
            preflight.check_cluster(
                train_cfg.use_gpu, train_cfg.num_workers, train_cfg.cpus_per_worker, joined=joined
            )
    try:
        outputs = run_workflow(targets, root, workflow_id, rerun=args.rerun)
    except WorkflowError as e:
        if e.user_error is not None:
            if args.debug:
                traceback.print_exception(e.user_error)
            print(f"error: {e}", file=sys.stderr, flush=True)
            return EXIT_USER_ERROR
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
