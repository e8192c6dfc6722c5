"""Model configuration and named variants.

``ModelConfig`` holds every choice of the model. Fields marked [paper] follow Du et al. (ECCV 2018); fields
marked [ours] are decisions PAPER.md leaves to us, each exposed here so a sweep can vary it. Named variants
live in one flat dict, ``VARIANTS``; ``model_config("r50", beta=0.0)`` applies flat overrides with
``dataclasses.replace`` (what a Ray Tune ``param_space`` holds).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from stpa_model.attention import FUSION_MODES, RESAMPLE_MODES
from stpa_model.losses import DIVERSITY_NORMALIZATIONS, INTERACTION_NORMALIZATIONS
from stpa_model.resnet import RESNET_SPECS, STAGE_NAMES, feature_size

ATTENTION_MODES: tuple[str, ...] = ("interaction", "plain", "none")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines an STPANet. Validated on construction.

    Baselines through the same config: ``attention="none"`` is TSN (average consensus of the backbone's
    pooled features), ``attention="plain"`` is the same attention layer without the interaction and diversity
    losses (beta = gamma = 0 whatever they are set to), a one-entry ``pyramid_layers`` is single-scale.
    """

    # --- backbone [ours]: torchvision-compatible ResNet so ImageNet checkpoints load.
    backbone: str = "resnet50"  # "resnet18" | "resnet34" | "resnet50" | "resnet101" | "resnet_debug"
    input_size: int = 224  # side of the square input crop; fixes d = H_i*W_i when attention_dim is None
    # --- classifier
    num_classes: int = 101  # UCF101; set per dataset (HMDB51: 51, Charades: 157)
    multi_label: bool = False  # [ours] True: BCE with logits over classes (Charades); False: cross-entropy
    dropout: float = 0.5  # [ours] dropout before the linear classifier
    # --- the attention layer
    attention: str = (
        "interaction"  # "interaction" (the paper) | "plain" (no aux losses) | "none" (TSN average)
    )
    pyramid_layers: tuple[str, ...] = (
        "res3",
        "res4",
        "res5",
    )  # [ours] levels, shallow to deep; last = layer i
    resample: str = "avg"  # [ours] R: "avg" (adaptive average pooling) | "max" | "bilinear"
    fusion: str = "sum"  # [ours] F: "sum" | "mean" | "max" | "concat" (+ learned 1x1 projection)
    attention_dim: int | None = None  # d; None = H_i*W_i at input_size ([paper], 49 for res5 at 224)
    l2_normalize: bool = True  # [paper] L2-normalise the rows of the softmax
    spatio_temporal: bool = True  # [paper] attend all K*H*W positions jointly; False: per frame + TSN average
    embed_in_backbone: bool = (
        False  # [ours] False: M_i feeds the head; True: M_i replaces f_i, later stages run
    )
    # --- losses: L = CE + beta * interaction + gamma * diversity (weight decay is the optimiser's)
    beta: float = 1e-3  # [ours] interaction weight; the orthogonality term is up to d(d-1) (~2350 at d = 49)
    gamma: float = 1.0  # [ours] diversity weight; with "mean" normalisation the loss lies in [0, 1]
    interaction_normalization: str = "position"  # [ours] "position" | "size" | "none", see losses.py
    interaction_detach_features: bool = True  # [ours] the interaction loss trains A, not X (PCA: X is data)
    diversity_normalization: str = "mean"  # [ours] "mean" (sum / N*d*P under the sqrt) | "none"
    # --- frame order, beyond the paper [ours]; both off by default so the default model is the paper's
    # Frame-ordered pooling: the head keeps one pooled vector per frame and weighs frame k with W + E_k, E_k a
    # learned, zero-initialised (num_classes x C) embedding of position k (model.py, ClassifierHead).
    temporal_position_embedding: bool = False
    temporal_shift: bool = False  # TSM in every residual block (zero extra parameters)
    temporal_shift_div: int = 8  # TSM: 1/8 of the channels shift each way (Lin et al. 2019)
    num_segments: int = 8  # K the temporal position embedding is built for (checked against the input)

    def __post_init__(self) -> None:
        _check_choice("backbone", self.backbone, tuple(RESNET_SPECS))
        _check_choice("attention", self.attention, ATTENTION_MODES)
        _check_choice("resample", self.resample, RESAMPLE_MODES)
        _check_choice("fusion", self.fusion, FUSION_MODES)
        _check_choice("interaction_normalization", self.interaction_normalization, INTERACTION_NORMALIZATIONS)
        _check_choice("diversity_normalization", self.diversity_normalization, DIVERSITY_NORMALIZATIONS)
        for name in ("num_classes", "input_size", "num_segments", "temporal_shift_div"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.temporal_shift_div < 2:
            raise ValueError(f"ModelConfig.temporal_shift_div must be >= 2, got {self.temporal_shift_div}")
        if self.attention_dim is not None and (
            isinstance(self.attention_dim, bool)
            or not isinstance(self.attention_dim, int)
            or self.attention_dim < 1
        ):
            raise ValueError(
                f"ModelConfig.attention_dim must be None or a positive int, got {self.attention_dim!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        for name in ("beta", "gamma"):
            if getattr(self, name) < 0:
                raise ValueError(f"ModelConfig.{name} must be >= 0, got {getattr(self, name)}")
        # Sweeps pass lists; store the tuple so the frozen config stays hashable.
        layers = tuple(self.pyramid_layers)
        object.__setattr__(self, "pyramid_layers", layers)
        if not layers:
            raise ValueError("ModelConfig.pyramid_layers must name at least one stage")
        for layer in layers:
            _check_choice("pyramid_layers entry", layer, STAGE_NAMES)
        if list(layers) != sorted(set(layers), key=STAGE_NAMES.index):
            raise ValueError(
                f"ModelConfig.pyramid_layers must be distinct and ordered shallow to deep (the last is the "
                f"attended layer i), got {layers}"
            )
        if self.embed_in_backbone and self.attention_dim not in (None, self.attended_size**2):
            raise ValueError(
                f"embed_in_backbone needs d = H_i*W_i = {self.attended_size**2} to reshape M_i into layer i's "
                f"shape; got attention_dim={self.attention_dim} (leave it None)"
            )
        if (
            self.temporal_position_embedding
            and self.attention != "none"
            and self.spatio_temporal
            and self.embed_in_backbone
        ):
            raise ValueError(
                "temporal_position_embedding needs a pooled vector per frame, but spatio-temporal attention "
                "embedded in the backbone aggregates the K frames into one map at layer i (use "
                "temporal_shift, or spatio_temporal=False, or embed_in_backbone=False)"
            )

    @property
    def attended_layer(self) -> str:
        """Layer i: the deepest pyramid level, the one whose features are attended."""
        return self.pyramid_layers[-1]

    @property
    def attended_size(self) -> int:
        """H_i = W_i at ``input_size``."""
        return feature_size(self.input_size, self.attended_layer)

    @property
    def num_attention_maps(self) -> int:
        """d: ``attention_dim``, or H_i*W_i at ``input_size`` when it is None."""
        return self.attention_dim if self.attention_dim is not None else self.attended_size**2

    @property
    def loss_weights(self) -> tuple[float, float]:
        """(beta, gamma) as applied: zero for "plain" and "none" attention."""
        if self.attention != "interaction":
            return 0.0, 0.0
        return float(self.beta), float(self.gamma)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"ModelConfig.{name} must be one of {choices}, got {value!r}")


# Named variants (torchtitan's flavours). "debug" is tiny: a CPU forward + backward of a (2, 3, 3, 64, 64)
# batch takes tens of milliseconds (79k parameters, 64 x 64 input, d = 4 maps).
VARIANTS: dict[str, ModelConfig] = {
    "debug": ModelConfig(backbone="resnet_debug", input_size=64, num_classes=10, num_segments=3),
    "r18": ModelConfig(backbone="resnet18"),
    "r34": ModelConfig(backbone="resnet34"),
    "r50": ModelConfig(backbone="resnet50"),
    "r101": ModelConfig(backbone="resnet101"),
}


def model_config(variant: str, **overrides: Any) -> ModelConfig:
    """The named variant with flat overrides applied (``dataclasses.replace``, validated again).

    Raises:
        ValueError: unknown variant or override name (the message lists the valid ones), or invalid values.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; valid variants: {sorted(VARIANTS)}")
    valid = [f.name for f in dataclasses.fields(ModelConfig)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown ModelConfig field(s) {unknown}; valid fields: {valid}")
    return dataclasses.replace(VARIANTS[variant], **overrides)
