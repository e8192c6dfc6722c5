"""The sweep's search space over the STPA design axes (PAPER.md, "Sweep axes"): flat ``section.field`` overrides.

The space holds what ``pipeline.config.apply_overrides`` takes, plus one coupled key, ``clips.num_segments`` (K),
which ``expand_overrides`` turns into the K of the three clip configs and the model's ``num_segments`` together,
so every sampled config passes ``ExperimentConfig`` validation. Axes have names (``AXES``) so a command line can
restrict a sweep (``--axes attention,lr``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.config import ExperimentConfig, apply_overrides
from stpa_model.attention import FUSION_MODES, RESAMPLE_MODES
from stpa_model.config import ATTENTION_MODES
from stpa_model.resnet import STAGE_NAMES

K_KEY = "clips.num_segments"  # the coupled axis: K of train/val/test clips and model.num_segments


PYRAMID_KEY = "model.pyramid_layers"


ATTENTION_KEY = "model.attention"


def pyramid(depth: int) -> tuple[str, ...]:
    """The ``depth`` deepest backbone stages, shallow to deep: 1 -> ("res5",), 3 -> ("res3", "res4", "res5")."""
    if not 1 <= depth <= len(STAGE_NAMES):
        raise ValueError(f"pyramid depth must be in 1..{len(STAGE_NAMES)}, got {depth}")
    return STAGE_NAMES[len(STAGE_NAMES) - depth :]


def _weight_choices(value: float, fallback: float) -> list[float]:
    """0 (the term off, a PAPER.md baseline) and a decade either side of the preset's weight."""
    base = value if value > 0 else fallback
    return [0.0, base / 10, base, base * 10]


def _num_segments_choices(k: int) -> list[int]:
    """Half, the preset's and twice the preset's K (TSN segments)."""
    return sorted({max(1, k // 2), k, 2 * k})


@dataclass(frozen=True)
class Axis:
    """One named sweep axis: the flat key it sets and, given the base experiment, either the values it chooses
    from (``tune.choice``) or the range it draws from log-uniformly (``tune.loguniform``)."""

    key: str
    doc: str
    choices: Callable[[ExperimentConfig], list[Any]] | None = None
    log_range: Callable[[ExperimentConfig], tuple[float, float]] | None = None

    def domain(self, exp: ExperimentConfig) -> Any:
        """The Tune distribution of this axis around ``exp``."""
        from ray import tune

        if self.log_range is not None:
            return tune.loguniform(*self.log_range(exp))
        return tune.choice(self.choices(exp))


AXES: dict[str, Axis] = {
    "attention": Axis(ATTENTION_KEY, "none (TSN) / plain / interaction", lambda exp: list(ATTENTION_MODES)),
    "pyramid_depth": Axis(
        PYRAMID_KEY,
        "N = 1..4 levels ending at res5 (layer i)",
        lambda exp: [pyramid(n) for n in range(1, len(STAGE_NAMES) + 1)],
    ),
    "fusion": Axis("model.fusion", "F: how the levels' scores combine", lambda exp: list(FUSION_MODES)),
    "resample": Axis(
        "model.resample", "R: how levels reach layer i's size", lambda exp: list(RESAMPLE_MODES)
    ),
    "beta": Axis(
        "model.beta",
        "interaction loss weight: 0 or a decade around the preset's",
        lambda exp: _weight_choices(exp.model.beta, 1e-3),
    ),
    "gamma": Axis(
        "model.gamma",
        "diversity loss weight: 0 or a decade around the preset's",
        lambda exp: _weight_choices(exp.model.gamma, 1.0),
    ),
    "num_segments": Axis(
        K_KEY,
        "K: half, equal to and twice the preset's (all clip configs and the model together)",
        lambda exp: _num_segments_choices(exp.train_clips.num_segments),
    ),
    "lr": Axis(
        "optim.lr",
        "log-uniform in [lr / 10, 3 lr] around the preset's",
        log_range=lambda exp: (exp.optim.lr / 10, exp.optim.lr * 3),
    ),
    # Further PAPER.md axes, swept only when named.
    "weight_decay": Axis(
        "optim.weight_decay",
        "0 or a decade around the preset's",
        lambda exp: _weight_choices(exp.optim.weight_decay, 1e-4),
    ),
    "spatio_temporal": Axis(
        "model.spatio_temporal",
        "joint K*H*W attention, or per frame + TSN average",
        lambda exp: [True, False],
    ),
    "l2_normalize": Axis("model.l2_normalize", "L2-normalised attention rows", lambda exp: [True, False]),
}


DEFAULT_AXES: tuple[str, ...] = (
    "attention",
    "pyramid_depth",
    "fusion",
    "resample",
    "beta",
    "gamma",
    "num_segments",
    "lr",
)


def axes_space(exp: ExperimentConfig, axes: Sequence[str] | None) -> dict[str, Any]:
    names = list(DEFAULT_AXES if axes is None else axes)
    if not names:
        raise ValueError(f"no sweep axes given; valid axes: {sorted(AXES)}")
    unknown = [name for name in names if name not in AXES]
    if unknown:
        raise ValueError(f"unknown sweep axis {unknown}; valid axes: {sorted(AXES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"sweep axes repeat: {names}")
    return {AXES[name].key: AXES[name].domain(exp) for name in names}


def search_space(exp: ExperimentConfig, axes: Sequence[str] | None = None) -> dict[str, Any]:
    """Ray Tune distributions over flat override keys, for ``Tuner(param_space=...)``.

    Args:
        exp: the base experiment (a preset): lr, beta, gamma, K and weight decay are swept around its values.
        axes: names from ``AXES``; default ``DEFAULT_AXES`` (attention, pyramid depth, fusion, resampling,
            beta, gamma, K, learning rate).

    Returns:
        ``{"model.attention": tune.choice([...]), ..., "clips.num_segments": tune.choice([...])}``; a sampled
        config becomes ``apply_overrides``-ready with ``expand_overrides``.

    Raises:
        ValueError: an unknown or repeated axis name (the message lists the valid ones).
    """
    return axes_space(exp, axes)


def expand_overrides(exp: ExperimentConfig, params: Mapping[str, Any]) -> dict[str, Any]:
    """A sampled trial config as ``apply_overrides`` overrides: ``clips.num_segments`` (K) becomes the K of the
    train, val and test clips plus ``model.num_segments`` (K times frames per segment, the frames per clip that
    a temporal position embedding is built for); every other key passes through unchanged."""
    overrides = {key: value for key, value in params.items() if key != K_KEY}
    if K_KEY in params:
        k = int(params[K_KEY])
        for section in ("train_clips", "val_clips", "test_clips"):
            overrides[f"{section}.num_segments"] = k
        frames_per_segment = overrides.get(
            "train_clips.frames_per_segment", exp.train_clips.frames_per_segment
        )
        overrides["model.num_segments"] = k * int(frames_per_segment)
    return overrides


def check_space(exp: ExperimentConfig, space: Mapping[str, Any], num_samples: int = 8, seed: int = 0) -> None:
    """Sample ``space`` a few times and build each experiment, so a bad key or value fails before any trial.

    Raises:
        ValueError: from ``apply_overrides`` / the config's validation, naming the key or field.
    """
    rng = np.random.RandomState(seed)
    for _ in range(num_samples):
        apply_overrides(exp, expand_overrides(exp, sample_config(space, rng)))


def sample_config(space: Mapping[str, Any], rng: np.random.RandomState) -> dict[str, Any]:
    """One draw from a flat space of Tune domains (constants pass through), as Tune's random search draws it."""
    from ray.tune.search.sample import Domain

    return {
        key: domain.sample(random_state=rng) if isinstance(domain, Domain) else domain
        for key, domain in space.items()
    }
