"""Loading ImageNet ResNet checkpoints into the backbone (torchvision layout is native).

One pure function, ``map_resnet_keys``, turns other common key layouts into torchvision's (timm's
``checkpoint_filter_fn`` pattern); ``load_pretrained_backbone`` reads the file with ``weights_only=True``,
maps the keys, drops the parts of the checkpoint the backbone does not have (by name, explicitly) and loads
the rest strictly. This module opens local paths only: the pipeline opens fsspec URIs and passes the bytes.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import BinaryIO

import torch
from torch import nn

from stpa_model.resnet import ResNet

# Prefixes that wrappers put in front of a ResNet's own keys: DDP ("module."), a model holding the network as
# an attribute ("model.", "backbone.", e.g. our own STPANet), and the TSM repository ("base_model.").
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "model.", "backbone.", "base_model.")
# ImageNet/Kinetics classifiers of the source checkpoint (torchvision/timm "fc.", TSM "new_fc.").
_CLASSIFIER_PREFIXES: tuple[str, ...] = ("fc.", "new_fc.")


def map_resnet_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a ResNet state dict from a common layout to torchvision's key names. Pure: returns a new dict.

    - torchvision: unchanged.
    - timm: timm's ResNet (``resnet18/34/50/101``, e.g. ``resnet50.a1_in1k``) uses torchvision's module names,
      so its keys pass unchanged.
    - Wrapped checkpoints: a prefix shared by every key among "module.", "model.", "backbone.", "base_model."
      is stripped, repeatedly ("module.backbone.conv1.weight" -> "conv1.weight").
    - TSM (Lin et al.) checkpoints wrap each block's conv1 in a shift module: ".conv1.net." -> ".conv1.".
    """
    mapped = dict(state_dict)
    stripped = True
    while stripped and mapped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in mapped):
                mapped = {key[len(prefix) :]: value for key, value in mapped.items()}
                stripped = True
    return {key.replace(".conv1.net.", ".conv1."): value for key, value in mapped.items()}


def read_state_dict(source: str | os.PathLike | bytes | BinaryIO) -> dict[str, torch.Tensor]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

    Args:
        source: a local path, the file's bytes, or an open binary file object.

    Returns:
        The state dict; a {"state_dict": ...} or {"model": ...} container is unwrapped.
    """
    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"checkpoint {_describe(source)} holds a {type(checkpoint).__name__}, not a state dict"
        )
    for container in ("state_dict", "model"):
        if container in checkpoint and isinstance(checkpoint[container], Mapping):
            checkpoint = checkpoint[container]
            break
    return dict(checkpoint)


def load_pretrained_backbone(
    model: nn.Module, source: str | os.PathLike | bytes | BinaryIO | Mapping[str, torch.Tensor]
) -> list[str]:
    """Load ImageNet ResNet weights into an STPANet's backbone (or into a ``ResNet``), strictly.

    Keys are mapped with ``map_resnet_keys``; then the classifier ("fc.", "new_fc.") is dropped when the
    backbone has none, and the stages the backbone does not build (a pyramid attending res4 builds no res5)
    are dropped. Everything else must match exactly: a missing, unexpected or mis-shaped key raises.

    Args:
        model: an ``STPANet`` (its ``.backbone`` is loaded) or a ``ResNet``.
        source: a local path, bytes, an open binary file object, or an already loaded state dict.

    Returns:
        The checkpoint keys that were dropped, sorted.
    """
    backbone = model if isinstance(model, ResNet) else getattr(model, "backbone", None)
    if not isinstance(backbone, ResNet):
        raise TypeError(f"expected an STPANet or a ResNet, got {type(model).__name__}")
    state_dict = dict(source) if isinstance(source, Mapping) else read_state_dict(source)
    state_dict = map_resnet_keys(state_dict)
    absent = [] if hasattr(backbone, "fc") else list(_CLASSIFIER_PREFIXES)
    absent += [f"layer{index}." for index in range(backbone.num_stages + 1, 5)]
    dropped = sorted(key for key in state_dict if key.startswith(tuple(absent)))
    for key in dropped:
        del state_dict[key]
    backbone.load_state_dict(state_dict, strict=True)
    return dropped


def _describe(source: object) -> str:
    return repr(os.fspath(source)) if isinstance(source, str | os.PathLike) else f"<{type(source).__name__}>"
