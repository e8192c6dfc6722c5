"""ResNet-18/34/50/101 backbones in plain PyTorch, with torchvision's module names, plus the temporal shift.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016; the bottleneck puts its stride on the 3x3
convolution ("ResNet v1.5"), as torchvision does. Module names follow torchvision exactly (``conv1``, ``bn1``,
``layer1..4`` of ``BasicBlock``/``Bottleneck`` with ``conv1/bn1/conv2/bn2(/conv3/bn3)/downsample.0/.1``, ``fc``),
so the state dict of a torchvision ImageNet checkpoint loads strictly (see ``stpa_model/pretrained.py``).

Temporal shift (TSM, Lin et al., "TSM: Temporal Shift Module for Efficient Video Understanding", ICCV 2019) is
the opt-in [ours] temporal-order option inside the backbone: zero extra parameters, so the keys stay the same.

Shape legend: B clips, K frames per clip, C channels, H x W spatial size. The backbone runs on frames stacked
along the batch, ``(B*K, C, H, W)``, b-major (row ``b*K + k`` is frame k of clip b).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Stage names used by the pyramid config: res2..res5 are torchvision's layer1..layer4 (strides 4, 8, 16, 32).
STAGE_NAMES: tuple[str, ...] = ("res2", "res3", "res4", "res5")


@dataclass(frozen=True)
class ResNetSpec:
    """Architecture of one ResNet depth.

    Attributes:
        block: "basic" (two 3x3 convolutions, expansion 1) or "bottleneck" (1x1-3x3-1x1, expansion 4).
        num_blocks: residual blocks per stage (layer1..layer4).
        widths: base width of each stage (output channels are width * expansion).
        stem_width: output channels of the 7x7 stem convolution.
    """

    block: str
    num_blocks: tuple[int, int, int, int]
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    stem_width: int = 64

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Output channels of res2..res5."""
        return tuple(w * self.expansion for w in self.widths)


# Block counts from torchvision's published architectures. "resnet_debug" is the same code with one block per
# stage and 1/8 of the widths: about 79k parameters, for CPU tests in milliseconds.
RESNET_SPECS: dict[str, ResNetSpec] = {
    "resnet18": ResNetSpec("basic", (2, 2, 2, 2)),
    "resnet34": ResNetSpec("basic", (3, 4, 6, 3)),
    "resnet50": ResNetSpec("bottleneck", (3, 4, 6, 3)),
    "resnet101": ResNetSpec("bottleneck", (3, 4, 23, 3)),
    "resnet_debug": ResNetSpec("basic", (1, 1, 1, 1), widths=(8, 16, 32, 64), stem_width=8),
}


def stage_index(stage: str) -> int:
    """1-based index of a stage name: "res2" -> 1 (torchvision's ``layer1``), ..., "res5" -> 4."""
    return STAGE_NAMES.index(stage) + 1


def feature_size(input_size: int, stage: str) -> int:
    """Spatial side of a stage's feature map for a square input of side ``input_size``.

    Every stride-2 layer (7x7 stem conv with padding 3, 3x3 max pool with padding 1, strided 3x3 conv with
    padding 1, strided 1x1 downsample) maps a side h to ``(h - 1) // 2 + 1``; res2 has two of them, each later
    stage one more. 224 -> 56, 28, 14, 7.
    """
    size = input_size
    for _ in range(stage_index(stage) + 1):
        size = (size - 1) // 2 + 1
    return size


def temporal_shift(x: torch.Tensor, num_frames: int, fold_div: int) -> torch.Tensor:
    """Shift 1/fold_div of the channels one frame back in time and another 1/fold_div one frame forward.

    TSM (Lin et al. 2019), zero-padded at the clip ends: frame t receives channels [0, fold) from frame t+1 and
    channels [fold, 2*fold) from frame t-1; the other channels stay. A pure function of its input.

    Args:
        x: (B*K, C, H, W) frames stacked b-major.
        num_frames: K.
        fold_div: 1/fold_div of the channels moves in each direction (TSM uses 8).

    Returns:
        (B*K, C, H, W), same dtype.
    """
    bk, c, h, w = x.shape
    frames = x.reshape(bk // num_frames, num_frames, c, h, w)  # (B, K, C, H, W)
    fold = c // fold_div
    pad = frames.new_zeros(frames.shape[0], 1, fold, h, w)  # (B, 1, fold, H, W)
    from_next = torch.cat([frames[:, 1:, :fold], pad], dim=1)  # (B, K, fold, H, W): frame t <- t+1
    from_prev = torch.cat([pad, frames[:, :-1, fold : 2 * fold]], dim=1)  # (B, K, fold, H, W): frame t <- t-1
    shifted = torch.cat([from_next, from_prev, frames[:, :, 2 * fold :]], dim=2)  # (B, K, C, H, W)
    return shifted.reshape(bk, c, h, w)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, shift_div: int | None) -> None:
        super().__init__()
        self.shift_div = shift_div
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes, stride)

    def forward(self, x: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """(B*K, C_in, H, W) -> (B*K, C_out, H/stride, W/stride). num_frames enables the shift when set."""
        identity = x if self.downsample is None else self.downsample(x)
        # TSM's "residual shift": only the residual branch sees the shifted channels.
        out = (
            x
            if self.shift_div is None or num_frames is None
            else temporal_shift(x, num_frames, self.shift_div)
        )
        out = self.relu(self.bn1(self.conv1(out)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a residual connection (ResNet-50/101)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, shift_div: int | None) -> None:
        super().__init__()
        self.shift_div = shift_div
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * 4, stride)

    def forward(self, x: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """(B*K, C_in, H, W) -> (B*K, 4*planes, H/stride, W/stride). num_frames enables the shift when set."""
        identity = x if self.downsample is None else self.downsample(x)
        out = (
            x
            if self.shift_div is None or num_frames is None
            else temporal_shift(x, num_frames, self.shift_div)
        )
        out = self.relu(self.bn1(self.conv1(out)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(inplanes: int, outplanes: int, stride: int) -> nn.Sequential | None:
    """torchvision's projection shortcut (``downsample.0`` conv, ``downsample.1`` BN) when the shape changes."""
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(
        nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), nn.BatchNorm2d(outplanes)
    )


class ResNet(nn.Module):
    """torchvision-compatible ResNet that exposes its stages one by one.

    Args:
        spec: the depth's architecture (``RESNET_SPECS[name]``).
        num_stages: build layer1..layer{num_stages} only (a pyramid attending res4 needs no res5).
        num_classes: add torchvision's ``avgpool`` + ``fc`` ImageNet classifier (all four stages needed); None
            for a feature extractor.
        temporal_shift_div: enable TSM in every residual block with this fold divisor; None disables it.
    """

    def __init__(
        self,
        spec: ResNetSpec,
        num_stages: int = 4,
        num_classes: int | None = None,
        temporal_shift_div: int | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= num_stages <= 4:
            raise ValueError(f"num_stages must be in 1..4, got {num_stages}")
        if num_classes is not None and num_stages != 4:
            raise ValueError("the ImageNet classifier (num_classes) needs all four stages")
        self.num_stages = num_stages
        self.stage_channels = spec.stage_channels[:num_stages]
        self.conv1 = nn.Conv2d(3, spec.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(spec.stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        block = Bottleneck if spec.block == "bottleneck" else BasicBlock
        inplanes = spec.stem_width
        for index in range(num_stages):
            stride = 1 if index == 0 else 2
            planes = spec.widths[index]
            blocks = []
            for block_index in range(spec.num_blocks[index]):
                blocks.append(block(inplanes, planes, stride if block_index == 0 else 1, temporal_shift_div))
                inplanes = planes * block.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(inplanes, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's initialisation: Kaiming-normal (fan_out) convolutions, BN weight 1 and bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, stem_width, H/4, W/4)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_stage(self, index: int, x: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Run stage ``layer{index}`` (1-based).

        Args:
            index: 1..num_stages.
            x: (B*K, C, H, W) frames stacked b-major, or (B, C, H, W) maps without a time axis.
            num_frames: K when x holds frames and the temporal shift should run; None otherwise.
        """
        for block in self.get_submodule(f"layer{index}"):
            x = block(x, num_frames)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's ImageNet forward: (N, 3, H, W) -> (N, num_classes) logits. Needs num_classes."""
        x = self.forward_stem(x)
        for index in range(1, self.num_stages + 1):
            x = self.forward_stage(index, x)
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (N, C) -> (N, num_classes)
