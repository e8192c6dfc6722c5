"""Checks a workflow makes before Ray starts, so bad input fails in seconds with one line (``error: <message>``,
exit status 2, no traceback; ``--debug`` shows it) instead of in a retried Ray task minutes later.

Before Ray (``--dry-run`` makes the same ones):
- ``check_data``: the data root exists in the dataset's layout and its annotation files parse (the message names
  the file and line); returns the class count and the number of training videos, which size the run
  (``pipeline.presets.fit_to_dataset``).
- ``check_gpus_here``: a GPU preset on a machine without GPUs (local runs only: a cluster is checked once joined).
- ``check_tracking``: the MLflow tracking server answers within a few seconds.
- ``tracking_note``: a finished workflow re-run against another tracking URI says what it will (not) log there.

Unknown presets and malformed flags are argparse's errors; ``--set`` items are checked by
``pipeline.flags.build_experiment``.

After connecting to Ray (local or joined):
- ``check_cluster``: the cluster has the GPUs the workers need and a CPU left for Ray Data's decode tasks once the
  training workers hold theirs (else the first epoch waits for batches for ever: issue 13's silent deadlock).
"""

from __future__ import annotations

import json
import os

from pipeline import storage
from pipeline.errors import UserError

# The layout each dataset's --data-root must have (pipeline.data.prepare.dataset_root_paths).
LAYOUTS = {
    "ucf101": "UCF-101/<Class>/<video>.avi and ucfTrainTestlist/ (classInd.txt, trainlist0N.txt, testlist0N.txt)",
    "hmdb51": "hmdb51_org/<class>/<video>.avi and testTrainMulti_7030_splits/",
    "charades": "Charades_v1_480/<id>.mp4 beside Charades_v1_train.csv, Charades_v1_test.csv, "
    "Charades_v1_classes.txt",
    "folder": "<root>/<class>/<video> (one folder per class)",
}


def check_data(
    dataset: str, data_root: str, *, split: int, val_fraction: float, annotations: str | None = None
) -> tuple[int, int]:
    """Parse the dataset's annotations (no video is opened) and carve val as ``prepare`` will.

    Args:
        dataset: ``ucf101``, ``hmdb51``, ``charades`` or ``folder``.
        data_root: ``--data-root`` (path or URI).
        split: the official split.
        val_fraction: ``--val-fraction``.
        annotations: ``--annotations`` (folder datasets: a folder of UCF101-format split lists), or None.

    Returns:
        ``(num_classes, num_train_videos)``: videos the lists put in train after val is carved (some may turn out
        missing or unreadable when ``prepare`` probes them).

    Raises:
        UserError: a missing folder or annotation file, an annotation file that breaks its format (file and line),
            a layout with no videos, or a bad ``val_fraction``.
    """
    from pipeline.data.prepare import dataset_root_paths, load_index
    from pipeline.data.val_split import carve_val

    root = storage.normalize_uri(data_root)
    if not storage.exists(root):
        raise UserError(f"--data-root {root}: no such folder")
    try:
        videos, default_annotations = dataset_root_paths(dataset, root)
    except FileNotFoundError as error:
        raise UserError(f"--data-root {error}; expected {LAYOUTS[dataset]}") from None
    if not storage.exists(videos):
        raise UserError(f"--data-root {root}: {videos} does not exist; expected {LAYOUTS[dataset]}")
    annotations_uri = storage.normalize_uri(annotations) if annotations else default_annotations
    if annotations_uri and not storage.exists(annotations_uri):
        what = "--annotations" if annotations else f"--data-root {root}:"
        raise UserError(f"{what} {annotations_uri} does not exist; expected {LAYOUTS[dataset]}")
    try:
        index, _ = carve_val(load_index(dataset, videos, annotations_uri, split), val_fraction)
    except FileNotFoundError as error:
        raise UserError(f"{error.filename or error}: no such file (expected {LAYOUTS[dataset]})") from None
    except ValueError as error:  # AnnotationError names the file and line
        raise UserError(str(error)) from None
    return len(index.class_names), len(index.of_split("train"))


def check_gpus_here(use_gpu: bool, num_workers: int, preset: str) -> None:
    """A run that trains on GPUs on this machine (no ``RAY_ADDRESS``) needs one GPU per worker here.

    Raises:
        UserError: fewer GPUs than workers; the message says how to train on CPUs.
    """
    if not use_gpu or os.environ.get("RAY_ADDRESS"):
        return
    import torch

    found = torch.cuda.device_count()
    if found == 0:
        raise UserError(
            f"preset {preset} trains on GPUs (train.use_gpu) and this machine has none: add --cpu (or "
            "--no-use-gpu) to train on its CPUs, or submit the workflow to a GPU cluster (ray job submit)"
        )
    if found < num_workers:
        raise UserError(
            f"training on GPUs needs one per worker: {num_workers} workers, and this machine has {found} GPU(s); "
            f"pass --num-workers {found}"
        )


def check_cluster(use_gpu: bool, num_workers: int, cpus_per_worker: float, *, joined: bool) -> None:
    """After connecting: the cluster's GPUs for the workers and at least one CPU beside them for decoding.

    Ray Train places the workers (each holding ``cpus_per_worker`` CPUs, and a GPU with ``use_gpu``) for the whole
    run; the Ray Data tasks that decode their clips need CPUs of their own. Without one they wait for ever and so
    does training. A cluster that adds nodes on demand is not checked (``--autoscaling``: the caller skips this).

    Raises:
        UserError: too few GPUs, or no CPU left once the workers are placed; the message says what to change.
    """
    import ray

    where = "the cluster" if joined else "the local Ray"
    total = ray.cluster_resources()
    if use_gpu and total.get("GPU", 0.0) < num_workers:
        raise UserError(
            f"{where} has {total.get('GPU', 0.0):g} GPU(s) and training needs {num_workers} (one per worker): "
            "lower --num-workers, add --cpu to train on CPUs, or add GPU nodes (an autoscaling cluster: "
            "--autoscaling)"
        )
    cpus = total.get("CPU", 0.0)
    held = num_workers * cpus_per_worker
    if cpus - held < 1:
        raise UserError(
            f"{where} has {cpus:g} CPUs and the {num_workers} training workers hold {held:g} of them for the "
            "whole run: none is left for the Ray Data tasks that decode their clips, so training would wait for "
            "batches for ever. Lower --num-workers, or give the cluster more CPUs (ray start --num-cpus N, "
            "another node; an autoscaling cluster: --autoscaling)"
        )


def check_tracking(uri: str) -> None:
    """The MLflow tracking server answers (``pipeline.tracking.runs.check_tracking_server``).

    Raises:
        UserError: it does not answer within a few seconds.
    """
    from pipeline.tracking.runs import check_tracking_server

    check_tracking_server(uri)


def tracking_note(statuses, tracking_uri: str) -> str | None:
    """What a re-run does when its committed ``train`` step logged to another tracking URI than this run's.

    Args:
        statuses: ``pipeline.workflow.plan``'s step statuses.
        tracking_uri: this run's tracking URI.

    Returns:
        A note when every step is committed (nothing is logged to this URI), else None.

    Raises:
        UserError: later steps would run and log to this URI, which does not hold the train step's run.
    """
    from pipeline.tracking.runs import display_uri

    train = next((s for s in statuses if s.name == "train"), None)
    if train is None or not train.done:
        return None
    outputs_uri = storage.join(train.out_dir, "outputs.json")
    logged_to = (
        json.loads(storage.read_text(outputs_uri)).get("tracking_uri")
        if storage.exists(outputs_uri)
        else None
    )
    if not logged_to or logged_to == tracking_uri:
        return None
    rerun = "add --rerun train to train and log a new run there, or use a new --workflow-id"
    if all(s.done for s in statuses):
        return (
            f"note: this workflow finished earlier and logged to {display_uri(logged_to)}; every step is skipped and "
            f"nothing is logged to {display_uri(tracking_uri)} ({rerun})"
        )
    raise UserError(
        f"the train step of this workflow finished earlier and logged its run to {display_uri(logged_to)}; the "
        f"remaining steps would log to {display_uri(tracking_uri)}, which does not have that run: set "
        f"MLFLOW_TRACKING_URI={display_uri(logged_to)}, or {rerun}"
    )
