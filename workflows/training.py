"""The command line shared by ``workflows/train_<dataset>.py`` and ``workflows/sweep_<dataset>.py``.

Both build a DAG of steps (``workflows/steps.py``) and run it with ``pipeline.workflow.run_workflow``::

    data ─▶ prepare ─▶ [cache] ─▶ train ─────────────▶ evaluate ─▶ register      (train_<dataset>.py)
    data ─▶ prepare ─▶ [cache] ─▶ sweep ─▶ train (best config) ─▶ evaluate ─▶ register   (sweep_<dataset>.py)

``data`` only when no ``--data-root`` is given (a small dataset in the official layout is generated). The same
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
import sys
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
    from pipeline.workflow import WorkflowError, format_plan, plan, run_workflow
    from workflows import preflight

    targets, workflow_id, root, train_cfg, uri = build_workflow(dataset, args, sweep)
    statuses = plan(targets, root, workflow_id)
    print(format_plan(statuses, workflow_id), flush=True)
    note = preflight.tracking_note(statuses, uri) if not args.rerun else None
    if note:
        print(note, flush=True)
    if args.dry_run:
        return 0
    if args.rerun or not all(s.done for s in statuses):  # nothing to run: no cluster needed
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
    summary = {
        "workflow_id": workflow_id,
        "mlflow_run_id": outputs["train"]["mlflow_run_id"],
        **outputs["evaluate"]["metrics"],
    }
    if "register" in outputs:
        summary.update(
            registered_version=outputs["register"]["version"], champion=outputs["register"]["is_champion"]
        )
    print(json.dumps(summary, default=str), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit("run workflows/train_<dataset>.py or workflows/sweep_<dataset>.py")
