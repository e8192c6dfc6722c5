"""Loading ResNet checkpoints into the backbone (torchvision layout is native).

One pure function, ``map_resnet_keys``, turns the key layouts people have into torchvision's (timm's
``checkpoint_filter_fn`` pattern), key by key: wrapper prefixes are stripped, the parts of known models that
are not the ResNet (their classifiers, our attention layer) are dropped by name, TSM's shift wrapper is undone.
``load_pretrained_backbone`` reads the file with ``weights_only=True``, maps the keys, drops the stages and
classifier the backbone does not build, and loads the rest strictly: any other key, missing or unexpected, is
an error that names it. This module opens local paths only: the pipeline opens fsspec URIs and passes the bytes.

Layouts (``tests/stpa_model/test_resnet.py`` builds each one as its project saves it):

- torchvision / timm ResNet: ``conv1.weight``, ``layer1.0.conv1.weight``, ..., ``fc.weight``.
- DDP / ``nn.DataParallel`` (``module.``) and ``torch.compile`` (``_orig_mod.``) around any of these.
- TSM / TSN (Lin et al., github.com/mit-han-lab/temporal-shift-module, ``main.py``): ``torch.save`` of
  ``{"epoch", "arch", "state_dict", "optimizer", "best_prec1"}`` whose ``state_dict`` is that of
  ``nn.DataParallel(TSN(...))``: ``module.base_model.<torchvision keys>`` with ``.conv1.net.`` in every shifted
  block (``TemporalShift`` holds the wrapped conv as ``.net``), ``module.new_fc.weight/bias`` (and
  ``module.base_model.fc.*`` instead when TSN's dropout is 0).
- Our STPANet (``backbone.``, ``pyramid.``, ``head.``; older ones ``temporal_embedding.``), bare, from DDP, or as the
  ``"model"`` entry of a training checkpoint (``pipeline/checkpoint.py``): fine-tuning from an earlier run.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import BinaryIO

import torch
from torch import nn

from stpa_model.resnet import ResNet

# Prefixes in front of every key of a wrapped model: DDP and nn.DataParallel ("module."), torch.compile
# ("_orig_mod."), and the attribute under which a model holds its ResNet: our STPANet ("backbone."), TSM's TSN
# ("base_model."), a generic holder such as a Lightning module ("model."). Stripped repeatedly, key by key.
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "backbone.", "base_model.", "model.")
# Parts of known models that are not the ResNet, after the wrappers are stripped. Dropped by name; a key that
# is neither one of these nor a ResNet key reaches the strict load and fails there, named.
_NON_BACKBONE_PARTS: tuple[str, ...] = (
    "new_fc.",  # TSM / TSN: the video classifier (TSN's dropout > 0)
    "temporal_embedding.",  # STPANet saved before its temporal position embedding moved into "head."
    "pyramid.",  # STPANet: the attention layer
    "head.",  # STPANet: the classifier
)
# The ImageNet classifier inside a torchvision / timm ResNet (also TSM's "base_model.fc." when its dropout is
# 0): a ResNet key, kept by ``map_resnet_keys``; dropped on loading when the backbone has no classifier.
_CLASSIFIER_PREFIX = "fc."


def resnet_key(key: str) -> str | None:
    """The torchvision name of one checkpoint key, or None for a known non-backbone part (see the module doc).

    "module.base_model.layer1.0.conv1.net.weight" -> "layer1.0.conv1.weight";
    "module.new_fc.weight" -> None; "head.fc.bias" -> None; "module.backbone.bn1.bias" -> "bn1.bias".
    """
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
    if key.startswith(_NON_BACKBONE_PARTS):
        return None
    return key.replace(".conv1.net.", ".conv1.")  # TSM's TemporalShift(conv1) keeps the conv as ".net"


def map_resnet_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a checkpoint of any layout in the module docstring to torchvision's ResNet keys. Pure.

    Returns:
        A new dict holding the ResNet's entries under torchvision's names (including its ImageNet classifier
        "fc." when the checkpoint has one); the known non-backbone parts are left out.

    Raises:
        ValueError: two keys map to the same name (e.g. a checkpoint holding both "x" and "module.x").
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = resnet_key(key)
        if name is None:
            continue
        if name in mapped:
            raise ValueError(f"checkpoint keys map to the same ResNet key {name!r}; last one: {key!r}")
        mapped[name] = value
    return mapped


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
    """Load ResNet weights into an STPANet's backbone (or into a ``ResNet``), strictly.

    Keys are mapped with ``map_resnet_keys`` (dropping the known non-backbone parts); then the classifier
    ("fc.") is dropped when the backbone has none, and the stages the backbone does not build (a pyramid
    attending res4 builds no res5). Everything else must match exactly: a missing, unexpected or mis-shaped key
    raises, naming it.

    Args:
        model: an ``STPANet`` (its ``.backbone`` is loaded) or a ``ResNet``.
        source: a local path, bytes, an open binary file object, or an already loaded state dict.

    Returns:
        The checkpoint keys that were dropped, under their names in the checkpoint, sorted.
    """
    backbone = model if isinstance(model, ResNet) else getattr(model, "backbone", None)
    if not isinstance(backbone, ResNet):
        raise TypeError(f"expected an STPANet or a ResNet, got {type(model).__name__}")
    checkpoint = dict(source) if isinstance(source, Mapping) else read_state_dict(source)
    absent = [] if hasattr(backbone, "fc") else [_CLASSIFIER_PREFIX]
    absent += [f"layer{index}." for index in range(backbone.num_stages + 1, 5)]
    names = {key: resnet_key(key) for key in checkpoint}
    dropped = {key for key, name in names.items() if name is None or name.startswith(tuple(absent))}
    state_dict = map_resnet_keys({key: value for key, value in checkpoint.items() if key not in dropped})
    backbone.load_state_dict(state_dict, strict=True)
    return sorted(dropped)


def _describe(source: object) -> str:
    return repr(os.fspath(source)) if isinstance(source, str | os.PathLike) else f"<{type(source).__name__}>"
