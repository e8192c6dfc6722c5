"""Pretrained backbone weights read through fsspec (here memory://) into the model, strictly."""

from __future__ import annotations

import io

import pytest
import torch

from pipeline import storage
from pipeline.training.weights import load_backbone_weights
from stpa_model import build_model


def test_backbone_weights_load_from_a_uri():
    source = build_model("debug", num_classes=4)
    blob = io.BytesIO()
    torch.save({"module." + k: v for k, v in source.backbone.state_dict().items()}, blob)  # a DDP-saved file
    storage.write_bytes("memory://weights/resnet.pth", blob.getvalue())

    target = build_model("debug", num_classes=4)
    assert not torch.equal(target.backbone.conv1.weight, source.backbone.conv1.weight)
    load_backbone_weights(target, "memory://weights/resnet.pth")
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(target.backbone.state_dict()[key], value), key


def test_mismatched_weights_are_refused():
    other = build_model("r18", num_classes=4)
    blob = io.BytesIO()
    torch.save(other.backbone.state_dict(), blob)
    storage.write_bytes("memory://weights/r18.pth", blob.getvalue())
    with pytest.raises(RuntimeError):
        load_backbone_weights(build_model("debug", num_classes=4), "memory://weights/r18.pth")
