"""Named run configurations: plain functions returning an ``ExperimentConfig`` (STYLE.md: no config inheritance).

- ``smoke``: the debug model for two epochs on a small generated dataset, 2 CPU workers; a CI-sized check that
  everything connects (well under a minute here).
- ``ucf101``, ``hmdb51``: ResNet-50 STPA, K = 3 TSN segments, 224 crops, SGD with cosine schedule and warm-up,
  multi-view test (2 clips x 3 crops, mean over views).
- ``charades``: ResNet-50 STPA, K = 8, multi-label BCE over 157 classes, frozen BatchNorm (small per-GPU batches;
  what the peers found Charades needs), max over views at test (the Charades convention).

Batch sizes are per worker; ``OptimConfig.lr`` is given for ``reference_batch_size`` clips and scaled linearly with
the global batch (workers x batch x accumulation), so the same preset runs on 1 GPU or 64.
"""

from __future__ import annotations

import dataclasses

from pipeline.clips.dataset import ClipConfig
from pipeline.config import ExperimentConfig, OptimConfig, TrainConfig
from pipeline.errors import UserError
from stpa_model import model_config

NUM_CLASSES = {"ucf101": 101, "hmdb51": 51, "charades": 157}


def _clips(num_segments: int, short_side: int, crop_size: int, num_test_clips: int, test_crops: int):
    """(train, val, test) clip settings: random TSN sampling; one centred view; multi-view test."""
    train = ClipConfig(num_segments=num_segments, short_side=short_side, crop_size=crop_size, train=True)
    val = dataclasses.replace(train, train=False, flip=False, num_test_clips=1, test_crops=1)
    test = dataclasses.replace(val, num_test_clips=num_test_clips, test_crops=test_crops)
    return train, val, test


def smoke(dataset: str, num_classes: int) -> ExperimentConfig:
    multi_label = dataset == "charades"
    train, val, test = _clips(num_segments=3, short_side=72, crop_size=64, num_test_clips=2, test_crops=1)
    return ExperimentConfig(
        dataset=dataset,
        model=model_config(
            "debug",
            num_classes=num_classes,
            multi_label=multi_label,
            num_segments=3,
            input_size=64,
            dropout=0.2,
        ),
        train_clips=train,
        val_clips=val,
        test_clips=test,
        optim=OptimConfig(
            optimizer="adamw",
            lr=5e-3,
            reference_batch_size=8,
            weight_decay=1e-4,
            warmup_steps=2,
            min_lr_factor=0.1,
        ),
        train=TrainConfig(
            epochs=2,
            batch_size=4,
            num_workers=2,
            view_reduce="max" if multi_label else "mean",
            log_every_steps=2,  # a progress line every 2 steps: a handful per epoch on the generated data
            num_heatmap_clips=2,
        ),
    )


def _r50(dataset: str, num_classes: int, num_segments: int) -> ExperimentConfig:
    multi_label = dataset == "charades"
    train, val, test = _clips(
        num_segments=num_segments, short_side=256, crop_size=224, num_test_clips=2, test_crops=3
    )
    return ExperimentConfig(
        dataset=dataset,
        model=model_config(
            "r50", num_classes=num_classes, multi_label=multi_label, num_segments=num_segments, input_size=224
        ),
        train_clips=train,
        val_clips=val,
        test_clips=test,
        optim=OptimConfig(
            optimizer="sgd", lr=0.01, reference_batch_size=64, weight_decay=5e-4, warmup_steps=200
        ),
        train=TrainConfig(
            epochs=30 if not multi_label else 20,
            batch_size=8,
            num_workers=1,
            use_gpu=True,
            precision="bf16",
            freeze_bn="all" if multi_label else "partial",
            view_reduce="max" if multi_label else "mean",
            eval_every=2,
        ),
    )


def ucf101(dataset: str = "ucf101", num_classes: int = 101) -> ExperimentConfig:
    return _r50(dataset, num_classes, num_segments=3)


def hmdb51(dataset: str = "hmdb51", num_classes: int = 51) -> ExperimentConfig:
    return _r50(dataset, num_classes, num_segments=3)


def charades(dataset: str = "charades", num_classes: int = 157) -> ExperimentConfig:
    return _r50(dataset, num_classes, num_segments=8)


# One flat dict of named presets; each takes (dataset, num_classes) so a preset can be applied to a user's own
# "folder" dataset or to a generated dataset with fewer classes.
PRESETS = {"smoke": smoke, "ucf101": ucf101, "hmdb51": hmdb51, "charades": charades}


def preset(name: str, dataset: str, num_classes: int) -> ExperimentConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {sorted(PRESETS)}")
    return PRESETS[name](dataset, num_classes)


# The flags that set the two sizes fit_to_dataset may lower (workflows/training.py), for its messages.
BATCH_FLAG = "--batch-size"
WORKERS_FLAG = "--num-workers"


def fit_to_dataset(
    exp: ExperimentConfig, num_train_videos: int, explicit: frozenset[str] | set[str] = frozenset()
) -> tuple[ExperimentConfig, str | None]:
    """The experiment with the preset's per-worker batch, then its worker count, lowered until each worker gets
    at least one step per epoch (``(videos // workers) // batch >= 1``: equal shards, last partial batch dropped).

    A preset is sized for its dataset; a user's 7 videos should still train. Values the user chose
    (``explicit`` holds their keys, ``"train.batch_size"``, ``"train.num_workers"``) are never changed.

    Returns:
        ``(experiment, note)``: the note says what was lowered (None when nothing was).

    Raises:
        pipeline.errors.UserError: even the lowest allowed sizes give no step; the message names the flags.
    """
    cfg = exp.train
    workers, batch = cfg.num_workers, cfg.batch_size
    if num_train_videos < 1:
        raise UserError("no training videos: the training split is empty")
    if (num_train_videos // workers) // batch >= 1:
        return exp, None
    if "train.num_workers" not in explicit and num_train_videos < workers:
        workers = num_train_videos
    if "train.batch_size" not in explicit:
        batch = max(1, min(batch, num_train_videos // workers))
    if (num_train_videos // workers) // batch < 1:
        fixed = [
            flag
            for key, flag in (("train.batch_size", BATCH_FLAG), ("train.num_workers", WORKERS_FLAG))
            if key in explicit
        ]
        raise UserError(
            f"{num_train_videos} training videos are too few for {workers} workers x batch {batch} (each worker "
            f"needs a full batch per step): lower {' or '.join(fixed or [BATCH_FLAG, WORKERS_FLAG])}"
        )
    changes = []
    if workers != cfg.num_workers:
        changes.append(f"workers {cfg.num_workers} -> {workers} ({WORKERS_FLAG} sets it)")
    if batch != cfg.batch_size:
        changes.append(f"batch {cfg.batch_size} -> {batch} per worker ({BATCH_FLAG} sets it)")
    note = f"{num_train_videos} training videos: the preset's " + ", ".join(changes)
    train = dataclasses.replace(cfg, num_workers=workers, batch_size=batch)
    return dataclasses.replace(exp, train=train), note
