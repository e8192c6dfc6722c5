"""ResNet backbone: torchvision key names and shapes, checkpoint loading, temporal shift, feature sizes."""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import io

import numpy as np
import pytest
import torch

from stpa_model import (
    RESNET_SPECS,
    ResNet,
    build_model,
    feature_size,
    load_pretrained_backbone,
    map_resnet_keys,
    temporal_shift,
)

# torchvision's published architectures, written out independently of stpa_model: block type, blocks per stage.
TORCHVISION_ARCHS = {
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
    "resnet101": ("bottleneck", [3, 4, 23, 3]),
}
# torchvision's parameter counts with the 1000-class classifier (torchvision docs, "num_params").
TORCHVISION_NUM_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def expected_torchvision_keys(block: str, num_blocks: list[int]) -> set[str]:
    keys = {"conv1.weight", "fc.weight", "fc.bias"} | {f"bn1.{k}" for k in BN_KEYS}
    num_convs = 3 if block == "bottleneck" else 2
    for stage, count in enumerate(num_blocks, start=1):
        for index in range(count):
            prefix = f"layer{stage}.{index}."
            for conv in range(1, num_convs + 1):
                keys.add(f"{prefix}conv{conv}.weight")
                keys |= {f"{prefix}bn{conv}.{k}" for k in BN_KEYS}
            # First block of a stage projects the shortcut when the shape changes: every stage of a bottleneck
            # network (layer1: 64 -> 256 channels), stages 2-4 of a basic one (stride 2).
            if index == 0 and (block == "bottleneck" or stage > 1):
                keys.add(f"{prefix}downsample.0.weight")
                keys |= {f"{prefix}downsample.1.{k}" for k in BN_KEYS}
    return keys


@functools.lru_cache(maxsize=2)
def classifier_resnet(name: str) -> ResNet:
    """The ImageNet classifier of one depth, kept for the next test (two at most)."""
    return ResNet(RESNET_SPECS[name], num_classes=1000)


@pytest.mark.parametrize("name", sorted(TORCHVISION_ARCHS))
def test_state_dict_keys_match_torchvision(name: str) -> None:
    model = classifier_resnet(name)
    assert set(model.state_dict()) == expected_torchvision_keys(*TORCHVISION_ARCHS[name])
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_NUM_PARAMS[name]


def test_resnet50_parameter_shapes() -> None:
    shapes = {k: tuple(v.shape) for k, v in classifier_resnet("resnet50").state_dict().items()}
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["bn1.running_mean"] == (64,)
    assert shapes["layer1.0.conv1.weight"] == (64, 64, 1, 1)
    assert shapes["layer1.0.conv2.weight"] == (64, 64, 3, 3)
    assert shapes["layer1.0.conv3.weight"] == (256, 64, 1, 1)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert shapes["layer1.1.conv1.weight"] == (64, 256, 1, 1)
    assert shapes["layer2.0.conv1.weight"] == (128, 256, 1, 1)
    assert shapes["layer2.0.conv2.weight"] == (128, 128, 3, 3)
    assert shapes["layer2.0.downsample.0.weight"] == (512, 256, 1, 1)
    assert shapes["layer3.5.bn3.weight"] == (1024,)
    assert shapes["layer4.0.downsample.1.running_var"] == (2048,)
    assert shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert shapes["fc.weight"] == (1000, 2048)
    assert shapes["fc.bias"] == (1000,)


def test_resnet18_parameter_shapes() -> None:
    shapes = {k: tuple(v.shape) for k, v in classifier_resnet("resnet18").state_dict().items()}
    assert shapes["layer1.0.conv1.weight"] == (64, 64, 3, 3)
    assert shapes["layer2.0.conv1.weight"] == (128, 64, 3, 3)
    assert shapes["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["fc.weight"] == (1000, 512)


def test_stride_two_on_3x3_conv_of_bottleneck() -> None:
    """torchvision's ResNet v1.5: the stride sits on conv2 (3x3), not conv1 (1x1)."""
    model = classifier_resnet("resnet50")
    assert model.layer2[0].conv1.stride == (1, 1)
    assert model.layer2[0].conv2.stride == (2, 2)
    assert model.layer2[0].downsample[0].stride == (2, 2)


@pytest.mark.parametrize("input_size", [32, 64, 97, 224])
def test_feature_size_matches_forward(input_size: int) -> None:
    model = ResNet(RESNET_SPECS["resnet_debug"]).eval()
    x = model.forward_stem(torch.zeros(1, 3, input_size, input_size))
    for index, stage in enumerate(("res2", "res3", "res4", "res5"), start=1):
        x = model.forward_stage(index, x)
        assert x.shape[-2:] == (feature_size(input_size, stage),) * 2
    assert feature_size(224, "res5") == 7 and feature_size(224, "res3") == 28


def test_temporal_shift_against_loops() -> None:
    torch.manual_seed(0)
    b, k, c, h, w, div = 2, 4, 16, 3, 2, 8
    x = torch.randn(b * k, c, h, w)
    out = temporal_shift(x, k, div).reshape(b, k, c, h, w)
    frames = x.reshape(b, k, c, h, w).numpy()
    expected = np.zeros_like(frames)
    fold = c // div
    for i in range(b):
        for t in range(k):
            for ch in range(c):
                if ch < fold:
                    expected[i, t, ch] = frames[i, t + 1, ch] if t + 1 < k else 0.0
                elif ch < 2 * fold:
                    expected[i, t, ch] = frames[i, t - 1, ch] if t >= 1 else 0.0
                else:
                    expected[i, t, ch] = frames[i, t, ch]
    np.testing.assert_array_equal(out.numpy(), expected)


def test_temporal_shift_adds_no_parameters_and_changes_output() -> None:
    torch.manual_seed(0)
    plain = ResNet(RESNET_SPECS["resnet_debug"]).eval()
    shifted = ResNet(RESNET_SPECS["resnet_debug"], temporal_shift_div=8).eval()
    shifted.load_state_dict(plain.state_dict(), strict=True)  # same keys: TSM has no parameters
    x = plain.forward_stem(torch.randn(6, 3, 32, 32))
    assert torch.equal(plain.forward_stage(1, x), shifted.forward_stage(1, x))  # no num_frames: no shift
    assert not torch.allclose(plain.forward_stage(1, x, 3), shifted.forward_stage(1, x, 3))


# --- checkpoint loading ----------------------------------------------------------------------------------------


def torchvision_layout_checkpoint(name: str = "resnet_debug") -> dict[str, torch.Tensor]:
    """A full classifier's state dict (with "fc.") with random BN statistics, as an ImageNet .pth holds."""
    torch.manual_seed(1)
    model = ResNet(RESNET_SPECS[name], num_classes=1000)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


def assert_backbone_equals(model, checkpoint: dict[str, torch.Tensor]) -> None:
    loaded = model.backbone.state_dict()
    assert loaded, "empty backbone"
    for key, value in loaded.items():
        assert torch.equal(value, checkpoint[key]), key


@pytest.mark.parametrize("form", ["path", "str_path", "bytes", "file", "state_dict"])
def test_load_pretrained_from_every_source(tmp_path, form: str) -> None:
    checkpoint = torchvision_layout_checkpoint()
    path = tmp_path / "resnet_debug.pth"
    torch.save(checkpoint, path)
    source = {
        "path": path,
        "str_path": str(path),
        "bytes": path.read_bytes(),
        "file": open(path, "rb"),  # noqa: SIM115 - closed below
        "state_dict": checkpoint,
    }[form]
    model = build_model("debug")
    dropped = load_pretrained_backbone(model, source)
    if form == "file":
        source.close()
    assert dropped == ["fc.bias", "fc.weight"]
    assert_backbone_equals(model, checkpoint)


def test_load_into_truncated_backbone_drops_unbuilt_stage() -> None:
    checkpoint = torchvision_layout_checkpoint()
    model = build_model("debug", pyramid_layers=("res3", "res4"))
    assert not hasattr(model.backbone, "layer4")
    dropped = load_pretrained_backbone(model, checkpoint)
    assert "fc.weight" in dropped and "layer4.0.conv1.weight" in dropped
    assert all(key.startswith(("fc.", "layer4.")) for key in dropped)
    assert_backbone_equals(model, checkpoint)


def test_load_into_classifier_resnet_keeps_fc() -> None:
    checkpoint = torchvision_layout_checkpoint()
    model = ResNet(RESNET_SPECS["resnet_debug"], num_classes=1000)
    assert load_pretrained_backbone(model, checkpoint) == []
    assert torch.equal(model.fc.weight, checkpoint["fc.weight"])


def randomize_batch_norm(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so that an exact comparison means something."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()


def assert_backbone_equals_resnet(backbone: torch.nn.Module, source: torch.nn.Module) -> None:
    """Every tensor of the loaded backbone equals the source ResNet's tensor of the same torchvision name."""
    expected = source.state_dict()
    loaded = backbone.state_dict()
    assert loaded
    for key, value in loaded.items():
        assert torch.equal(value, expected[key]), key


# TSM (Lin et al., github.com/mit-han-lab/temporal-shift-module), its module structure rebuilt from real
# nn.Modules with the repository's attribute names: ops/temporal_shift.py and ops/models.py.
class TemporalShift(torch.nn.Module):
    """TSM's shift wrapper: holds the wrapped convolution as ``self.net`` (no parameters of its own)."""

    def __init__(self, net: torch.nn.Module, n_segment: int = 8, n_div: int = 8) -> None:
        super().__init__()
        self.net = net
        self.n_segment = n_segment
        self.fold_div = n_div


class ConsensusModule(torch.nn.Module):
    """TSN's average consensus: no parameters."""


class TSN(torch.nn.Module):
    """TSM's ``TSN`` with a ResNet base model and ``is_shift=True, shift_place="blockres"``.

    ``_prepare_base_model``: ``self.base_model`` is a torchvision ResNet (ours has the same keys, see
    ``test_state_dict_keys_match_torchvision``); ``make_temporal_shift``: every ``n_round``-th block's conv1 is
    wrapped in ``TemporalShift`` (n_round = 2 when layer3 has >= 23 blocks, i.e. ResNet-101);
    ``_prepare_tsn``: the base model's ``fc`` becomes ``Dropout`` and ``self.new_fc`` the classifier, or with
    dropout 0 the base model's ``fc`` is replaced by the new classifier and ``new_fc`` is None.
    """

    def __init__(self, base_model: ResNet, num_class: int, dropout: float) -> None:
        super().__init__()
        self.base_model = base_model
        n_round = 2 if len(base_model.layer3) >= 23 else 1
        for stage in (base_model.layer1, base_model.layer2, base_model.layer3, base_model.layer4):
            for index, block in enumerate(stage):
                if index % n_round == 0:
                    block.conv1 = TemporalShift(block.conv1)
        feature_dim = base_model.fc.in_features
        if dropout == 0:
            base_model.fc = torch.nn.Linear(feature_dim, num_class)
            self.new_fc = None
        else:
            base_model.fc = torch.nn.Dropout(p=dropout)
            self.new_fc = torch.nn.Linear(feature_dim, num_class)
        self.consensus = ConsensusModule()


def tsm_checkpoint_bytes(source: ResNet, dropout: float) -> bytes:
    """What TSM's main.py writes: save_checkpoint({epoch, arch, state_dict, optimizer, best_prec1}) of
    ``nn.DataParallel(TSN(...))``, with an SGD optimizer over named parameter groups after one step."""
    tsn = TSN(copy.deepcopy(source), num_class=174, dropout=dropout)
    model = torch.nn.DataParallel(tsn)  # no GPU here: it only wraps, its state dict gets "module."
    policies = [
        {
            "params": [p for n, p in model.named_parameters() if "fc" not in n],
            "lr_mult": 1,
            "decay_mult": 1,
            "name": "normal_weight",
        },
        {
            "params": [p for n, p in model.named_parameters() if "fc" in n],
            "lr_mult": 5,
            "decay_mult": 1,
            "name": "lr5_weight",
        },
    ]
    optimizer = torch.optim.SGD(policies, 0.01, momentum=0.9)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # momentum buffers in the optimizer state; zero gradients leave the weights as they are
    state = {
        "epoch": 25,
        "arch": "resnet50",
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "best_prec1": 47.25,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("dropout", [0.5, 0.0])
def test_load_tsm_repository_checkpoint(dropout: float) -> None:
    torch.manual_seed(3)
    source = ResNet(RESNET_SPECS["resnet_debug"], num_classes=1000)
    randomize_batch_norm(source)
    blob = tsm_checkpoint_bytes(source, dropout)
    keys = torch.load(io.BytesIO(blob), weights_only=True)["state_dict"].keys()
    assert "module.base_model.layer1.0.conv1.net.weight" in keys  # the layout really is TSM's
    assert ("module.new_fc.weight" in keys) == (dropout > 0)
    model = build_model("debug")
    dropped = load_pretrained_backbone(model, blob)
    classifier = "module.new_fc." if dropout > 0 else "module.base_model.fc."
    assert dropped == [classifier + "bias", classifier + "weight"]
    assert_backbone_equals_resnet(model.backbone, source)


def test_load_tsm_resnet101_layout_shifts_every_other_block() -> None:
    """TSM shifts every second block when layer3 has >= 23 blocks: plain and ".net" conv1 keys mixed."""
    spec = dataclasses.replace(RESNET_SPECS["resnet_debug"], num_blocks=(1, 2, 23, 1))
    torch.manual_seed(4)
    source = ResNet(spec, num_classes=1000)
    randomize_batch_norm(source)
    checkpoint = torch.nn.DataParallel(TSN(copy.deepcopy(source), 10, 0.5)).state_dict()
    assert "module.base_model.layer3.0.conv1.net.weight" in checkpoint
    assert "module.base_model.layer3.1.conv1.weight" in checkpoint
    backbone = ResNet(spec)
    assert load_pretrained_backbone(backbone, checkpoint) == ["module.new_fc.bias", "module.new_fc.weight"]
    assert_backbone_equals_resnet(backbone, source)


def stpa_source_model(**overrides) -> torch.nn.Module:
    """An STPANet with every optional part built (concat fusion, temporal embedding) and non-trivial BN."""
    torch.manual_seed(5)
    model = build_model("debug", fusion="concat", temporal_position_embedding=True, **overrides)
    randomize_batch_norm(model)
    return model


@pytest.mark.parametrize("form", ["bare", "ddp", "training_checkpoint"])
def test_load_our_own_stpanet_checkpoint(tmp_path, form: str) -> None:
    """Fine-tuning from an earlier run: a whole STPANet's state dict passed as --pretrained."""
    source = stpa_source_model()
    if form == "ddp":
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
        )
        try:
            checkpoint = torch.nn.parallel.DistributedDataParallel(source).state_dict()
        finally:
            torch.distributed.destroy_process_group()
        assert next(iter(checkpoint)).startswith("module.backbone.")
    else:
        checkpoint = source.state_dict()
    path = tmp_path / "state.pt"
    if form == "training_checkpoint":  # pipeline/checkpoint.py's layout
        torch.save({"model": checkpoint, "optimizer": {}, "epoch": 3, "config": {"lr": 0.1}}, path)
    else:
        torch.save(checkpoint, path)
    model = build_model("debug")
    dropped = load_pretrained_backbone(model, path)
    prefix = "module." if form == "ddp" else ""
    assert dropped == sorted(k for k in checkpoint if not k.startswith(prefix + "backbone."))
    assert {k.split(".")[1 if prefix else 0] for k in dropped} == {"pyramid", "head"}
    assert_backbone_equals_resnet(model.backbone, source.backbone)


def test_map_resnet_keys_is_key_by_key_and_pure() -> None:
    checkpoint = torchvision_layout_checkpoint()
    ddp = {f"module.backbone.{k}": v for k, v in checkpoint.items()}
    assert map_resnet_keys(ddp).keys() == checkpoint.keys()
    mixed = {"module.base_model.layer1.0.conv1.net.weight": 1, "module.new_fc.weight": 2, "bn1.weight": 3}
    assert map_resnet_keys(mixed) == {"layer1.0.conv1.weight": 1, "bn1.weight": 3}
    assert list(mixed) == [
        "module.base_model.layer1.0.conv1.net.weight",
        "module.new_fc.weight",
        "bn1.weight",
    ]
    with pytest.raises(ValueError, match="same ResNet key 'bn1.weight'"):
        map_resnet_keys({"bn1.weight": 1, "module.bn1.weight": 2})


def test_load_of_wrapped_layouts_stays_strict() -> None:
    """Only the named parts are dropped: an unknown part or a missing backbone key is an error naming it."""
    torch.manual_seed(3)
    source = ResNet(RESNET_SPECS["resnet_debug"], num_classes=1000)
    tsm = torch.nn.DataParallel(TSN(source, 10, 0.5)).state_dict()
    with pytest.raises(RuntimeError, match="aux_head.weight"):
        load_pretrained_backbone(
            build_model("debug"), dict(tsm, **{"module.aux_head.weight": torch.zeros(1)})
        )
    del tsm["module.base_model.layer2.0.conv1.net.weight"]
    with pytest.raises(RuntimeError, match="layer2.0.conv1.weight"):
        load_pretrained_backbone(build_model("debug"), tsm)
    ours = stpa_source_model().state_dict()
    # Saved before the temporal position embedding moved into the head: "temporal_embedding.embeddings.<j>".
    old_embedding = {"temporal_embedding.embeddings.0": torch.zeros(3, 16)}
    assert (
        load_pretrained_backbone(build_model("debug"), ours | old_embedding)[-1]
        == "temporal_embedding.embeddings.0"
    )
    del ours["backbone.layer3.0.bn2.running_var"]
    with pytest.raises(RuntimeError, match="layer3.0.bn2.running_var"):
        load_pretrained_backbone(build_model("debug"), ours)


def test_load_unwraps_state_dict_container() -> None:
    checkpoint = torchvision_layout_checkpoint()
    buffer = io.BytesIO()
    torch.save({"state_dict": {f"module.{k}": v for k, v in checkpoint.items()}, "epoch": 90}, buffer)
    model = build_model("debug")
    load_pretrained_backbone(model, buffer.getvalue())
    assert_backbone_equals(model, checkpoint)


def test_load_is_strict() -> None:
    checkpoint = torchvision_layout_checkpoint()
    missing = {k: v for k, v in checkpoint.items() if k != "layer2.0.bn1.running_var"}
    with pytest.raises(RuntimeError, match="layer2.0.bn1.running_var"):
        load_pretrained_backbone(build_model("debug"), missing)
    extra = dict(checkpoint, **{"layer1.0.se.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="layer1.0.se.weight"):
        load_pretrained_backbone(build_model("debug"), extra)
    wrong_depth = torchvision_layout_checkpoint("resnet18")
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_pretrained_backbone(build_model("debug"), wrong_depth)


class _NotATensor:
    pass


def test_load_refuses_pickled_objects(tmp_path) -> None:
    """weights_only=True: a checkpoint carrying arbitrary Python objects is refused, not executed."""
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _NotATensor()}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_pretrained_backbone(build_model("debug"), path)


# --- numerical parity with torchvision (needs torchvision: installed on the lent GPU machines) ----------------


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision is not installed")
@pytest.mark.parametrize("name", sorted(TORCHVISION_ARCHS))
def test_resnet_matches_torchvision_numerically(name: str) -> None:
    """Same weights, same outputs: torchvision's model loaded strictly into ours (CPU or the GPU in the lent
    machines). Run it with ``pip install torchvision`` (the build matching torch) and
    ``pytest tests/stpa_model/test_resnet.py -k numerically``."""
    import torchvision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None)
    for module in reference.modules():  # non-trivial BN statistics so eval mode tests them too
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0.0, 0.1)
    ours = ResNet(RESNET_SPECS[name], num_classes=1000)
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.to(device).eval()
    ours.to(device).eval()
    x = torch.randn(2, 3, 224, 224, device=device)
    with torch.no_grad():
        diff = (ours(x) - reference(x)).abs().max().item()
    assert diff < 1e-4, diff
