"""The run configuration: one ``ExperimentConfig`` composed of the model, clip, optimiser and training sections.

Each component receives only its own section (STYLE.md). Named presets are plain functions in
``pipeline.presets``; flat ``section.field`` overrides (``--set``, Ray Tune's ``param_space``) are applied with
``dataclasses.replace`` so every section validates again; the whole config makes a JSON round trip
(``experiment_to_json`` / ``experiment_from_dict``), which is how workflow steps, checkpoints and registered models
carry it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline import metric_names
from pipeline.clips.dataset import ClipConfig
from stpa_model import ModelConfig

# The metric that chooses epochs and trials (on the val split) and champions (on test), per dataset.
PRIMARY_METRIC = metric_names.PRIMARY


def metric_on_test_split(metric: str) -> str:
    """The name under which the test split's value of ``metric`` (``top1``, ``mAP``) is logged and tagged:
    ``metric_names.test``."""
    return metric_names.test(metric)


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "sgd"  # "sgd" (momentum, TSN-style) or "adamw"
    lr: float = 0.01  # for the reference batch size below; scaled linearly by the actual global batch
    reference_batch_size: int = 64  # global batch size (clips) at which `lr` applies
    momentum: float = 0.9
    weight_decay: float = 5e-4  # lambda of PAPER.md's total loss, as decoupled/coupled weight decay
    no_decay_on_norm_and_bias: bool = (
        True  # BN/LayerNorm weights and biases are not decayed (common practice)
    )
    schedule: str = "cosine"  # "cosine" or "step"
    warmup_steps: int = 0  # linear warm-up from warmup_start_factor * lr
    warmup_start_factor: float = 0.1
    step_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of total steps where "step" decays
    step_gamma: float = 0.1
    min_lr_factor: float = 0.0  # cosine floor as a fraction of the peak lr
    grad_clip_norm: float | None = 20.0  # None disables clipping

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule must be 'cosine' or 'step', got {self.schedule!r}")
        if self.lr <= 0 or self.reference_batch_size <= 0:
            raise ValueError("lr and reference_batch_size must be positive")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not all(0 < m < 1 for m in self.step_milestones):
            raise ValueError(f"step_milestones are fractions in (0, 1), got {self.step_milestones}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 8  # clips per worker per micro-step; global batch = batch_size * accum * world size
    grad_accum_steps: int = 1
    num_workers: int = 2  # Ray Train workers (one per GPU when use_gpu)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    placement_strategy: str = "PACK"  # Ray placement of the workers: "PACK" (fewest nodes) | "SPREAD" | ...
    precision: str = "fp32"  # "bf16" or "fp16" autocast (fp16 uses a GradScaler); bf16 also runs on CPU
    freeze_bn: str = "none"  # "none" | "partial" (TSN) | "all" (what the peers need for Charades)
    compile: bool = False  # torch.compile the model on each worker
    eval_every: int = 1  # validate every N epochs (single view) and at the end (multi-view)
    view_reduce: str = "mean"  # how views of a test video combine: "mean" (UCF101/HMDB51) or "max" (Charades)
    seed: int = 0
    num_checkpoints_kept: int = 2
    max_failures: int = 2  # worker-group restarts from the latest checkpoint before giving up
    log_every_steps: int = 20
    # A worker that waits this long for its next training batch fails the run, naming what the cluster waits for
    # (Ray's pending resource demands), instead of waiting for ever; 0 waits for ever. It is the time spent waiting
    # only, so a slow first epoch (decoding and scheduling start) is not counted against the steps themselves.
    batch_timeout_s: float = 300.0
    pretrained: str | None = None  # backbone weights (torchvision/timm ResNet state dict), path or fsspec URI
    num_heatmap_clips: int = 4  # test clips whose attention maps are logged as images
    # Final multi-view test of the chosen weights (best on val, else the last epoch) inside training. Workflows turn it off and run their own
    # evaluate step (Ray Data batch inference: pipeline.evaluation.evaluate.evaluate_weights) instead.
    final_test: bool = True

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.view_reduce not in ("mean", "max"):
            raise ValueError(f"view_reduce must be 'mean' or 'max', got {self.view_reduce!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum_steps < 1 or self.num_workers < 1:
            raise ValueError("epochs, batch_size, grad_accum_steps and num_workers must be >= 1")
        if self.placement_strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            raise ValueError(
                f"placement_strategy must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD, got {self.placement_strategy!r}"
            )
        if self.batch_timeout_s < 0:
            raise ValueError(f"batch_timeout_s must be >= 0 (0: no limit), got {self.batch_timeout_s}")
        if self.freeze_bn not in ("none", "partial", "all"):
            raise ValueError(f"freeze_bn must be none, partial or all, got {self.freeze_bn!r}")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one training run needs; each component receives only its own section."""

    dataset: str
    model: ModelConfig
    train_clips: ClipConfig
    val_clips: ClipConfig  # per-epoch validation on the val split, which chooses the weights (one view: fast)
    test_clips: ClipConfig  # final multi-view evaluation
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.dataset not in PRIMARY_METRIC:
            raise ValueError(f"dataset must be one of {sorted(PRIMARY_METRIC)}, got {self.dataset!r}")
        for name in ("train_clips", "val_clips", "test_clips"):
            clips = getattr(self, name)
            if clips.crop_size != self.model.input_size:
                raise ValueError(
                    f"{name}.crop_size ({clips.crop_size}) must equal model.input_size ({self.model.input_size})"
                )
            num_frames = clips.num_segments * clips.frames_per_segment
            if self.model.temporal_position_embedding and num_frames != self.model.num_segments:
                raise ValueError(
                    f"{name} yields {num_frames} frames per clip but model.num_segments is "
                    f"{self.model.num_segments} (the temporal position embedding's length)"
                )
        if self.train_clips.train is not True or self.val_clips.train or self.test_clips.train:
            raise ValueError("train_clips must have train=True, val_clips and test_clips train=False")

    @property
    def primary_metric(self) -> str:
        return PRIMARY_METRIC[self.dataset]


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


SECTIONS = ("model", "train_clips", "val_clips", "test_clips", "optim", "train")


def _close(word: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the nearest of ``choices``, or ``""``."""
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _resolve_key(exp: ExperimentConfig, key: str) -> tuple[str, str]:
    """``(section, field)`` of a flat override key, or a ValueError naming the nearest valid name."""
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise ValueError(
            f"{section!r} is not a section{_close(section, list(SECTIONS))}; sections: {', '.join(SECTIONS)}"
        )
    if not name:
        raise ValueError(
            f"expected <section>.<field>, e.g. {section}.{dataclasses.fields(getattr(exp, section))[0].name}"
        )
    valid = [f.name for f in dataclasses.fields(getattr(exp, section))]
    if name not in valid:
        raise ValueError(
            f"{section} has no field {name!r}{_close(name, valid)}; valid: {', '.join(sorted(valid))}"
        )
    return section, name


def apply_overrides(exp: ExperimentConfig, overrides: dict[str, object]) -> ExperimentConfig:
    """Flat ``section.field`` overrides (``{"model.beta": 0.0, "train.epochs": 3}``), as Ray Tune's param_space
    holds them, applied with ``dataclasses.replace`` so every section validates again.

    Raises:
        ValueError: an unknown section or field (with the nearest valid name), or a value the section refuses.
    """
    sections: dict[str, dict[str, object]] = {}
    for key, value in overrides.items():
        try:
            section, name = _resolve_key(exp, key)
        except ValueError as error:
            raise ValueError(f"override {key!r}: {error}") from None
        sections.setdefault(section, {})[name] = value
    changes = {s: dataclasses.replace(getattr(exp, s), **fields) for s, fields in sections.items()}
    return dataclasses.replace(exp, **changes)


def _section_from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """One config dataclass from its ``dataclasses.asdict`` form: JSON lists back to tuples, unknown keys refused."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} for {cls.__name__}; valid: {sorted(fields)}")
    values = {}
    for name, value in data.items():
        # Tuple-typed fields (ModelConfig.pyramid_layers, ClipConfig.scales, OptimConfig.step_milestones) come
        # back from JSON as lists; the frozen configs are meant to hold tuples (hashable, equal to the original).
        if isinstance(value, list) and str(fields[name].type).startswith("tuple"):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def experiment_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """The inverse of ``dataclasses.asdict(exp)`` (also after a JSON round trip), validated again.

    Raises:
        ValueError: a section or field is missing or unknown, or a value is invalid (names the field).
    """
    sections = {
        "model": ModelConfig,
        "train_clips": ClipConfig,
        "val_clips": ClipConfig,
        "test_clips": ClipConfig,
        "optim": OptimConfig,
        "train": TrainConfig,
    }
    unknown = sorted(set(data) - set(sections) - {"dataset"})
    if unknown:
        raise ValueError(f"experiment config: unknown section(s) {unknown}")
    missing = sorted({"dataset", "model", "train_clips", "val_clips", "test_clips"} - set(data))
    if missing:
        raise ValueError(f"experiment config: missing section(s) {missing}")
    kwargs = {
        name: _section_from_dict(cls, data[name], name) for name, cls in sections.items() if name in data
    }
    return ExperimentConfig(dataset=data["dataset"], **kwargs)


def experiment_from_json(text: str) -> ExperimentConfig:
    """The inverse of ``experiment_to_json``."""
    return experiment_from_dict(json.loads(text))


def with_num_classes(exp: ExperimentConfig, num_classes: int) -> ExperimentConfig:
    """The same experiment for a dataset of ``num_classes`` classes: the one field the prepared manifest decides
    (a generated dataset or a user's own folders have fewer classes than the official ones)."""
    return dataclasses.replace(exp, model=dataclasses.replace(exp.model, num_classes=num_classes))


def parse_overrides(items: list[str], exp: ExperimentConfig) -> dict[str, object]:
    """``SECTION.FIELD=VALUE`` strings (``--set``) as flat overrides, each VALUE parsed to its field's type.

    Types come from the section dataclass's annotations: ``int``, ``float``, ``bool`` (true/false, yes/no, 1/0),
    ``str``, ``X | None`` (``none`` or ``null`` for None) and ``tuple[X, ...]`` (a JSON list or comma-separated
    items). The values are not validated beyond their type here: ``apply_overrides`` builds the sections, whose
    ``__post_init__`` checks them.

    Raises:
        ValueError: an item without ``=``, an unknown section or field (with the nearest valid name), or a value
            that is not of the field's type; the message names the item and the field.
    """
    overrides: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected SECTION.FIELD=VALUE")
        try:
            section, name = _resolve_key(exp, key.strip())
        except ValueError as error:
            raise ValueError(f"--set {item}: {error}") from None
        cls = type(getattr(exp, section))
        try:
            overrides[f"{section}.{name}"] = _parse_value(text.strip(), typing.get_type_hints(cls)[name])
        except ValueError as error:
            raise ValueError(f"--set {item}: {section}.{name} {error}") from None
    return overrides


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _parse_value(text: str, annotation: Any) -> Any:
    """``text`` as a value of ``annotation``; a ValueError says what the field takes."""
    args = typing.get_args(annotation)
    if type(None) in args:  # X | None
        if text.lower() in ("none", "null"):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        try:
            return _parse_value(text, inner)
        except ValueError:
            raise ValueError(f"takes {_TYPE_WORDS.get(inner, inner)} or none, got {text!r}") from None
    if typing.get_origin(annotation) is tuple:
        item_type = args[0]
        try:
            items = json.loads(text) if text.startswith("[") else [t for t in text.split(",") if t.strip()]
        except json.JSONDecodeError:
            raise ValueError(f"takes a list (e.g. [a, b] or a,b), got {text!r}") from None
        if not isinstance(items, list):
            raise ValueError(f"takes a list, got {text!r}")
        return tuple(_parse_value(str(item).strip(), item_type) for item in items)
    if annotation is bool:
        word = text.lower()
        if word in ("true", "yes", "1", "on"):
            return True
        if word in ("false", "no", "0", "off"):
            return False
    elif annotation is int:
        try:
            return int(text)
        except ValueError:
            pass
    elif annotation is float:
        try:
            return float(text)
        except ValueError:
            pass
    elif annotation is str:
        return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" else text
    raise ValueError(f"takes {_TYPE_WORDS.get(annotation, annotation)}, got {text!r}")


def experiment_to_json(exp: ExperimentConfig) -> str:
    return json.dumps(dataclasses.asdict(exp), indent=1, sort_keys=True)
