"""What every number a run records is called: one module, imported by training, evaluation, tracking, sweeps,
the registry and the workflows, so a name changes in one place.

Metrics (MLflow metrics, Ray Train reports, Tune's ``metric``) are ``<split>/<name>``, so the MLflow UI groups their
charts by split::

    train/loss  train/lr  train/data_wait_s  train/clips_per_s       every train.log_every_steps optimiser steps
    train/epoch  train/epoch_loss  train/<loss part>                  once per epoch
    train/epoch_startup_s  train/step_s                               once per epoch (rank 0: to the first batch; a step)
    val/top1  val/mAP ...  val/best_<primary>                          each validation (val/best_*: the best so far)
    test/top1  test/top5  test/mean_class_accuracy  test/mAP  test/wAP  the final multi-view test, once

The MLflow step of every metric is the optimiser step (``global_step``), so per-step and per-epoch charts share an
x-axis. Evaluation scalars without a split (``compute_metrics``' keys) are the bare names (``top1``, ``mAP``).

Bookkeeping counters (``BOOKKEEPING``: epoch, global step, restarts, ...) travel in Ray Train reports beside the
metrics (Tune's ASHA reads ``epoch``) but go to MLflow as run tags ``stpa.<name>`` (``tag``), not as metrics; so do
the evaluations' video counts (``val/num_videos_scored`` -> tag ``stpa.val_num_videos_scored``).
"""

from __future__ import annotations

TRAIN, VAL, TEST = "train", "val", "test"

# Evaluation scalars (pipeline.evaluation.evaluate.compute_metrics): single-label ...
TOP1 = "top1"
TOP5 = "top5"
MEAN_CLASS_ACCURACY = "mean_class_accuracy"
# ... multi-label (Charades' mean AP over classes, and the AP weighted by positives per class) ...
MAP = "mAP"
WAP = "wAP"
# ... and how many videos the metric covers (decode failures leave videos unscored): counts, so MLflow tags
# ``stpa.<split>_<name>`` rather than metrics (``split_report``).
NUM_VIDEOS_SCORED = "num_videos_scored"
NUM_VIDEOS_MISSING = "num_videos_missing"
COUNTS = (NUM_VIDEOS_SCORED, NUM_VIDEOS_MISSING)

# The metric that chooses epochs and trials (on val) and champions (on test), per dataset family.
PRIMARY = {"ucf101": TOP1, "hmdb51": TOP1, "folder": TOP1, "charades": MAP}

# Training metrics.
TRAIN_LOSS = "train/loss"  # mean total loss over the optimiser steps since the last logged step
TRAIN_LR = "train/lr"  # learning rate of the first parameter group after the step
TRAIN_DATA_WAIT_S = "train/data_wait_s"  # seconds per step rank 0 waited for its next batch (input pipeline)
TRAIN_CLIPS_PER_S = "train/clips_per_s"  # training clips per second, all ranks together
TRAIN_EPOCH_STARTUP_S = "train/epoch_startup_s"  # seconds from an epoch's start to its first batch (rank 0)
TRAIN_STEP_S = "train/step_s"  # seconds per micro-step after the first batch, over the epoch (rank 0)
TRAIN_EPOCH = "train/epoch"  # the epoch just finished (1-based): maps the step axis to epochs
TRAIN_EPOCH_LOSS = "train/epoch_loss"  # mean total loss over the epoch

# Bookkeeping: Ray Train report keys, MLflow tags (``tag``).
EPOCH = "epoch"  # epochs finished (Tune's time_attr)
GLOBAL_STEP = "global_step"  # optimiser steps so far
RESTARTS = "restarts"  # times training resumed from a checkpoint
STEPS_THIS_ATTEMPT = "steps_this_attempt"  # micro-steps run since the last (re)start
FINAL = "final"  # 1 in the report after the last epoch (and the final test, if any)
TRAIN_DECODE_FAILURES = "train_decode_failures"  # training videos dropped by decode errors
TEST_DECODE_FAILURES = "test_decode_failures"  # test videos that could not be decoded (scored as missing)
BOOKKEEPING = (
    EPOCH,
    GLOBAL_STEP,
    RESTARTS,
    STEPS_THIS_ATTEMPT,
    FINAL,
    TRAIN_DECODE_FAILURES,
    TEST_DECODE_FAILURES,
)
TAG_PREFIX = "stpa."


def train(name: str) -> str:
    """``train/<name>``: a training quantity, e.g. a loss part (``train/classification``)."""
    return f"{TRAIN}/{name}"


def val(name: str) -> str:
    """``val/<name>``: an evaluation scalar on the val split, e.g. ``val/top1``."""
    return f"{VAL}/{name}"


def test(name: str) -> str:
    """``test/<name>``: an evaluation scalar on the test split, e.g. ``test/mAP``."""
    return f"{TEST}/{name}"


def best(name: str) -> str:
    """``val/best_<name>``: the best val value of ``name`` so far (what chooses weights and sweep trials)."""
    return f"{VAL}/best_{name}"


def tag(name: str) -> str:
    """The MLflow run tag of a bookkeeping counter: ``stpa.<name>``."""
    return f"{TAG_PREFIX}{name}"


def is_metric(key: str) -> bool:
    """Whether a report key is an MLflow metric (``<split>/<name>``) rather than bookkeeping."""
    return key.split("/", 1)[0] in (TRAIN, VAL, TEST) and "/" in key


def _tag_value(value: float) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def split_report(report: dict[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    """A Ray Train report (or an evaluation's ``test/*`` dict) as MLflow ``(metrics, tags)``: ``<split>/<name>``
    keys are metrics, except the video counts (``COUNTS``), which are tags ``stpa.<split>_<name>`` like the
    bookkeeping counters' ``stpa.<name>`` (integers as ``"3"``).

    Raises:
        ValueError: a key is neither a metric nor a bookkeeping counter (a name that bypassed this module).
    """
    metrics, tags = {}, {}
    for key, value in report.items():
        if is_metric(key) and key.split("/", 1)[1] in COUNTS:
            tags[tag(key.replace("/", "_"))] = _tag_value(value)
        elif is_metric(key):
            metrics[key] = float(value)
        elif key in BOOKKEEPING:
            tags[tag(key)] = _tag_value(value)
        else:
            raise ValueError(
                f"report key {key!r} is neither <train|val|test>/<name> nor one of {BOOKKEEPING}"
            )
    return metrics, tags
