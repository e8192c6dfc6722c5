"""STPA: Interaction-aware Spatio-temporal Pyramid Attention networks (Du et al., ECCV 2018), plain PyTorch.

Public API:

- ``build_model(variant, **overrides) -> STPANet`` and ``model_config(variant, **overrides) -> ModelConfig``;
  variants in ``VARIANTS`` ("debug", "r18", "r34", "r50", "r101").
- ``STPANet(config).forward(clips)``: clips float (B, K, 3, H, W) -> ``STPAOutput(logits, losses, attention,
  feature_hw)``; ``forward_features`` / ``forward_head`` split it.
- ``total_loss(output, targets, config) -> (loss, parts)``: CE or BCE + beta * interaction + gamma * diversity.
- ``load_pretrained_backbone(model, path_or_bytes_or_file_or_state_dict)``; ``map_resnet_keys``.
- ``attention_heatmaps(attention, feature_hw, num_frames, input_hw) -> (B, K, H_in, W_in)`` in [0, 1].
- ``PyramidAttention``: the attention layer on its own, on a list of (B*K, C_j, H_j, W_j) maps.

This package imports neither ray, mlflow, decord nor fsspec.
"""

from stpa_model.attention import (
    PyramidAttention,
    PyramidAttentionOutput,
    attended_to_map,
    attention_heatmaps,
)
from stpa_model.config import VARIANTS, ModelConfig, model_config
from stpa_model.losses import classification_loss, diversity_loss, interaction_loss
from stpa_model.model import STPAFeatures, STPANet, STPAOutput, build_model, total_loss
from stpa_model.pretrained import load_pretrained_backbone, map_resnet_keys, read_state_dict
from stpa_model.resnet import RESNET_SPECS, STAGE_NAMES, ResNet, feature_size, temporal_shift

__all__ = [
    "RESNET_SPECS",
    "STAGE_NAMES",
    "VARIANTS",
    "ModelConfig",
    "PyramidAttention",
    "PyramidAttentionOutput",
    "ResNet",
    "STPAFeatures",
    "STPANet",
    "STPAOutput",
    "attended_to_map",
    "attention_heatmaps",
    "build_model",
    "classification_loss",
    "diversity_loss",
    "feature_size",
    "interaction_loss",
    "load_pretrained_backbone",
    "map_resnet_keys",
    "model_config",
    "read_state_dict",
    "temporal_shift",
    "total_loss",
]
