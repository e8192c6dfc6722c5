"""Pretrained backbone weights from a local path or any fsspec URI (the model package does no I/O of its own)."""

from __future__ import annotations

import io

from torch import nn

from pipeline.storage import read_bytes
from stpa_model import load_pretrained_backbone


def load_backbone_weights(model: nn.Module, uri: str) -> None:
    """Load a torchvision- (or timm-) layout ResNet state dict from ``uri`` into ``model``'s backbone, strictly."""

    load_pretrained_backbone(model, io.BytesIO(read_bytes(uri)))
