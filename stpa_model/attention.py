"""Interaction-aware spatio-temporal pyramid attention (Du et al., ECCV 2018, arXiv:1808.01106; PAPER.md).

The layer, for an attended layer i and a pyramid of N levels j = i-N+1..i (deepest last):

1. [paper] ``f'_j = R(f_j)``: resample every level to layer i's spatial size. [ours] R = adaptive average
   pooling by default (``resample="avg"``); "max" (adaptive max pooling) and "bilinear" are the options.
2. [paper] ``X_j``: flatten the K frames' positions into P = K*H_i*W_i rows.
3. [paper] ``Y_j = W_j X_j^T + b_j`` (d x P): a 1x1 convolution with bias per level, shared across frames.
   [paper] d = H_i*W_i by default, so that the output keeps layer i's shape.
   b_j adds the constant b_j[m] to every position of row m. With "sum", "mean" and "concat" fusion the fused
   row m gets a constant too (for "concat" also the projection's bias), which the softmax over positions
   cancels, as it does in each level's own softmax: those biases change nothing and get no gradient (zero up
   to rounding, ~1e-7). Only "max" fusion makes them matter (they decide which level wins at a position).
   They are kept, as in the paper's equation, so that every fusion has the same state-dict keys and existing
   checkpoints load strictly; dropping them would remove ``pyramid.projections.<j>.bias`` (and
   ``pyramid.fuse.bias``) for those fusions. ``test_score_biases_cancel_in_the_softmax_except_with_max_fusion``
   pins this.
4. [paper] ``a = softmax(F(Y_1..Y_N))`` over the P positions of each of the d rows, then ``A`` = row-wise L2
   normalisation of a. [ours] F = element-wise sum by default (``fusion="sum"``); "mean", "max", and "concat"
   (concatenate the N score maps along the rows, then a learned 1x1 projection N*d -> d) are the options.
   ``l2_normalize=False`` keeps A = a (rows sum to one) for the ablation.
5. [paper] ``M_i = A X_i`` (d x C_i); only layer i is attended, the other levels contribute scores.

The softmax runs over all K*H*W positions jointly, so K frames in give one map out: the spatio-temporal
version. With ``num_frames=1`` every frame is attended on its own (the spatial version).

Shape legend: B clips, K frames per clip, N pyramid levels, C_j channels of level j, (H, W) = (H_i, W_i) the
attended layer's spatial size, P = K*H*W positions, d attention maps (rows of A).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

RESAMPLE_MODES: tuple[str, ...] = ("avg", "max", "bilinear")
FUSION_MODES: tuple[str, ...] = ("sum", "mean", "max", "concat")


@dataclass
class PyramidAttentionOutput:
    """What the layer computes, for the head and for the losses.

    Attributes:
        attended: M = A X_i, (B, d, C_i), dtype of the features.
        attention: A, (B, d, P) float32, rows L2-normalised (or the softmax a when l2_normalize is off).
        fused_softmax: a = softmax(F(Y)), (B, d, P) float32, rows sum to one (the diversity loss uses it).
        level_softmax: softmax(Y_j) of every level, (N, B, d, P) float32.
        features: X_i, (B, P, C_i): the attended layer's features, positions ordered (frame, row, column).
        feature_hw: (H, W) of the attended layer.
    """

    attended: torch.Tensor
    attention: torch.Tensor
    fused_softmax: torch.Tensor
    level_softmax: torch.Tensor
    features: torch.Tensor
    feature_hw: tuple[int, int]


def resample(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """R of step 1: (N, C, H_j, W_j) -> (N, C, H, W) by adaptive average/max pooling or bilinear resizing."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "avg":
        return F.adaptive_avg_pool2d(x, size)
    if mode == "max":
        return F.adaptive_max_pool2d(x, size)
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {mode!r}")


def frames_to_positions(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B*K, C, H, W) frames stacked b-major -> (B, C, K*H*W) with positions ordered (frame, row, column)."""
    bk, c, h, w = x.shape
    x = x.reshape(bk // num_frames, num_frames, c, h * w)  # (B, K, C, H*W)
    return x.transpose(1, 2).reshape(bk // num_frames, c, num_frames * h * w)  # (B, C, K*H*W)


def attended_to_map(attended: torch.Tensor, feature_hw: tuple[int, int]) -> torch.Tensor:
    """Reshape M (B, d, C) with d = H*W into layer i's shape (B, C, H, W): the paper's "preserve the size".

    Row m of M is placed at spatial position m (row-major), which is what lets the layer replace f_i inside a
    backbone.
    """
    b, d, c = attended.shape
    h, w = feature_hw
    if d != h * w:
        raise ValueError(
            f"cannot reshape {d} attention maps into a {h}x{w} feature map: d must equal H_i*W_i = {h * w} "
            "(attention_dim=None and an input of the configured input_size)"
        )
    return attended.transpose(1, 2).reshape(b, c, h, w)  # (B, d, C) -> (B, C, d) -> (B, C, H, W)


class PyramidAttention(nn.Module):
    """The STPA layer on a list of N feature maps, deepest (the attended layer i) last.

    Args:
        in_channels: C_j of every level, in the order the features are passed (deepest last).
        attention_dim: d, the number of attention maps (rows of A); the paper uses H_i*W_i.
        resample: R, "avg" | "max" | "bilinear" ([ours] default "avg").
        fusion: F, "sum" | "mean" | "max" | "concat" ([ours] default "sum").
        l2_normalize: L2-normalise each row of the softmax ([paper]: True).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        attention_dim: int,
        resample: str = "avg",
        fusion: str = "sum",
        l2_normalize: bool = True,
    ) -> None:
        super().__init__()
        if len(in_channels) < 1:
            raise ValueError("PyramidAttention needs at least one level")
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
        if fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {fusion!r}")
        self.attention_dim = attention_dim
        self.resample = resample
        self.fusion = fusion
        self.l2_normalize = l2_normalize
        # W_j, b_j of Eq. (3): a 1x1 convolution with bias per level (nn.Conv2d's default initialisation). b_j
        # only matters with "max" fusion; the softmax cancels it otherwise (module docstring, step 3).
        self.projections = nn.ModuleList(nn.Conv2d(c, attention_dim, kernel_size=1) for c in in_channels)
        # [ours] "concat" fusion: a learned 1x1 projection of the N stacked score maps back to d rows.
        self.fuse = (
            nn.Conv1d(len(in_channels) * attention_dim, attention_dim, 1) if fusion == "concat" else None
        )

    def forward(self, features: Sequence[torch.Tensor], num_frames: int = 1) -> PyramidAttentionOutput:
        """Attend the last (deepest) feature map with scores from all levels.

        Args:
            features: N maps, level j of shape (B*K, C_j, H_j, W_j), frames stacked b-major (row b*K + k is
                frame k of clip b); the last one is the attended layer i.
            num_frames: K, the frames attended jointly. K > 1 is the spatio-temporal layer (one map per clip);
                1 attends every item of the batch on its own.

        Returns:
            The attended features M (B, d, C_i), the maps A and what the losses need.
        """
        if len(features) != len(self.projections):
            raise ValueError(f"expected {len(self.projections)} feature maps, got {len(features)}")
        attended_layer = features[-1]
        bk, _, h, w = attended_layer.shape
        if bk % num_frames:
            raise ValueError(f"batch of {bk} frames is not a multiple of num_frames={num_frames}")
        scores = []
        for f, projection in zip(features, self.projections, strict=True):
            y = projection(resample(f, (h, w), self.resample))  # (B*K, d, H, W): Y_j = W_j X_j^T + b_j
            scores.append(frames_to_positions(y, num_frames))  # (B, d, P)
        stacked = torch.stack(scores)  # (N, B, d, P)
        if self.fusion == "sum":
            fused = stacked.sum(0)  # (B, d, P)
        elif self.fusion == "mean":
            fused = stacked.mean(0)  # (B, d, P)
        elif self.fusion == "max":
            fused = stacked.amax(0)  # (B, d, P)
        else:
            fused = self.fuse(torch.cat(scores, dim=1))  # (B, N*d, P) -> (B, d, P)
        # Softmax in float32 (also under autocast): P can be thousands of positions.
        fused_softmax = fused.float().softmax(dim=-1)  # (B, d, P): a, each row sums to one over positions
        level_softmax = stacked.float().softmax(dim=-1)  # (N, B, d, P)
        attention = F.normalize(fused_softmax, dim=-1) if self.l2_normalize else fused_softmax  # (B, d, P): A
        x = frames_to_positions(attended_layer, num_frames).transpose(1, 2)  # (B, C_i, P) -> (B, P, C_i): X_i
        attended = torch.bmm(attention.to(x.dtype), x)  # (B, d, P) @ (B, P, C_i) -> (B, d, C_i): M = A X_i
        return PyramidAttentionOutput(
            attended=attended,
            attention=attention,
            fused_softmax=fused_softmax,
            level_softmax=level_softmax,
            features=x,
            feature_hw=(h, w),
        )


def attention_heatmaps(
    attention: torch.Tensor,
    feature_hw: tuple[int, int],
    num_frames: int,
    input_hw: tuple[int, int],
) -> torch.Tensor:
    """Per-frame heat maps of the attention, upsampled to the input size, for visualisation.

    [ours] The heat at a position is the total attention it receives, sum over the d rows of A; maps are
    bilinearly upsampled and min-max scaled per clip (all K frames together, so frames stay comparable).

    Args:
        attention: A, (B, d, K*H*W) as returned in ``STPAOutput.attention``.
        feature_hw: (H, W) of the attended layer (``STPAOutput.feature_hw``).
        num_frames: K.
        input_hw: (H_in, W_in) of the model input.

    Returns:
        float32 (B, K, H_in, W_in) in [0, 1]; all zeros for a clip whose attention is uniform.
    """
    b, _, p = attention.shape
    h, w = feature_hw
    if p != num_frames * h * w:
        raise ValueError(f"attention has {p} positions, expected num_frames * H * W = {num_frames}*{h}*{w}")
    heat = attention.float().sum(dim=1)  # (B, K*H*W)
    heat = heat.reshape(b * num_frames, 1, h, w)  # (B*K, 1, H, W)
    heat = F.interpolate(
        heat, size=tuple(input_hw), mode="bilinear", align_corners=False
    )  # (B*K, 1, H_in, W_in)
    heat = heat.reshape(b, num_frames, *input_hw)  # (B, K, H_in, W_in)
    low = heat.amin(dim=(1, 2, 3), keepdim=True)
    high = heat.amax(dim=(1, 2, 3), keepdim=True)
    return ((heat - low) / (high - low).clamp_min(1e-12)).clamp(0.0, 1.0)
