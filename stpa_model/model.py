"""STPANet: ResNet backbone + interaction-aware spatio-temporal pyramid attention + linear classifier.

Du et al., "Interaction-aware Spatio-temporal Pyramid Attention Networks for Action Classification", ECCV 2018
(arXiv:1808.01106); PAPER.md describes the model equation by equation and marks our own choices [ours].

Data flow (defaults: spatio-temporal attention feeding the head):

    clips (B, K, 3, H, W) -> frames (B*K, 3, H, W) -> ResNet stages res2..res5
    pyramid levels (B*K, C_j, H_j, W_j) -> PyramidAttention over all K*H_i*W_i positions -> M (B, d, C_i)
    -> [ours] average over the d rows -> dropout -> linear -> logits (B, num_classes)

Options (``ModelConfig``): per-frame spatial attention whose per-frame class scores are averaged (TSN
consensus); no attention (TSN: average-pooled backbone features); M_i reshaped to layer i's shape and fed back
into the backbone's remaining stages (``embed_in_backbone``); temporal-order options beyond the paper (frame-
ordered pooling with a temporal position embedding in the head, temporal shift in the backbone).

Why the frame-order option lives in the head. Whatever the attention does, the pooled feature the paper's head
sees is ``sum_p c_p x_p`` with weights ``c_p = mean_m A_{m,p} >= 0`` shared by every channel, and the classifier
is linear: the logits are ``sum_k w_k h(frame k)`` with non-negative frame weights w_k and one function h for
all frames. Such a sum can weigh frames differently but cannot subtract one frame's features from another's.
An earlier design added learned per-frame vectors e_k to the features before the attention: that only shifts
attention logits per frame (w_k, still non-negative) and adds ``sum_k w_k e_k``, constant when every frame is
equally salient (a square moving among distractors). It could use single-frame cues that happen to correlate
with the direction (a right-moving square starts on the left) but not compare frames: on 4-direction moving-
square clips (three seeds) it reached 0.77/0.56/0.56, the order-blind model 0.48/0.54/0.49 (0.5 is its
ceiling), the design below 1.0/1.0/1.0 (setting in ``tests/stpa_model/test_temporal_order.py``). ``temporal_position_embedding`` now keeps one pooled vector per
frame, ``T_k``, whose mean is the paper's pooled feature, and classifies them with per-frame weights
``W + E_k`` (``E_k`` learned, zero-initialised): ``logits = b + (1/K) sum_k (W + E_k) T_k``. E_k of opposite
signs compare frames; a freshly built model computes exactly the paper's logits (in eval mode). What it cannot
do: compare frames before spatial pooling. T_k is a whole frame's pooled vector, so direction is visible only
through features that encode where things are; local motion is what ``temporal_shift`` provides, and it
generalises from far fewer clips.

Averaging per-frame logits equals applying the linear classifier to the averaged per-frame features, so every
path pools to "tokens" (B, R, C) that the head averages: R = d rows (spatio-temporal attention), K*d
(per-frame attention), K (no attention, each frame's map already averaged) or the number of remaining maps
(embedded). With dropout, the one difference is that one dropout mask is drawn for the averaged feature.
With ``temporal_position_embedding`` the tokens are always the K frames' pooled vectors in frame order (R = K);
the spatio-temporal attention's M is split by frame: ``T_k = (K/d) sum_m sum_{p in frame k} A_{m,p} x_p``.

Shape legend: B clips, K frames per clip, C channels, (H_i, W_i) attended layer, d attention maps,
P = K*H_i*W_i positions, R tokens averaged by the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from stpa_model.attention import (
    PyramidAttention,
    PyramidAttentionOutput,
    attended_to_map,
)
from stpa_model.config import ModelConfig, model_config
from stpa_model.losses import classification_loss, diversity_loss, interaction_loss
from stpa_model.resnet import RESNET_SPECS, ResNet, stage_index


@dataclass
class STPAFeatures:
    """Output of ``STPANet.forward_features``.

    Attributes:
        tokens: (B, R, C) pooled features the head averages (see the module docstring).
        losses: unweighted auxiliary losses, float32 scalars ("interaction", "diversity"); empty without
            attention.
        attention: A as (B, d, K*H_i*W_i) float32, or None without attention. Spatio-temporal: every row has
            unit L2 norm over all K*H_i*W_i positions. Per-frame: every row has unit norm within each frame's
            block of H_i*W_i positions.
        feature_hw: (H_i, W_i) of the attended layer, or None without attention.
    """

    tokens: torch.Tensor
    losses: dict[str, torch.Tensor]
    attention: torch.Tensor | None
    feature_hw: tuple[int, int] | None


@dataclass
class STPAOutput:
    """Output of ``STPANet.forward``.

    Attributes:
        logits: (B, num_classes), dtype of the computation (bfloat16 under autocast).
        losses: unweighted auxiliary losses ("interaction", "diversity" with attention on), float32 scalars
            averaged over the batch; weigh them with ``stpa_model.total_loss``.
        attention: the L2-normalised maps A, (B, d, K*H_i*W_i) float32, positions ordered (frame, row,
            column); None when ``attention="none"``.
        feature_hw: (H_i, W_i), what ``attention_heatmaps`` needs to unflatten the positions.
    """

    logits: torch.Tensor
    losses: dict[str, torch.Tensor]
    attention: torch.Tensor | None
    feature_hw: tuple[int, int] | None = None


class ClassifierHead(nn.Module):
    """[ours] Average the tokens, dropout, linear (TSN's head); optionally frame-ordered (module docstring).

    Args:
        in_channels: C of the tokens.
        num_classes: outputs.
        dropout: dropout probability before the classifier.
        num_segments: K, to add the temporal position embedding ``E`` (K, num_classes, C), zero-initialised:
            frame k's pooled vector is classified with ``fc.weight + E[k]``. None (default): no extra parameter.
    """

    def __init__(
        self, in_channels: int, num_classes: int, dropout: float, num_segments: int | None = None
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)  # TSN's initialisation of the new classifier
        nn.init.zeros_(self.fc.bias)
        self.temporal_embedding = (
            nn.Parameter(torch.zeros(num_segments, num_classes, in_channels)) if num_segments else None
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, R, C) -> (B, num_classes); with the temporal embedding R must be K, the frames in order."""
        if self.temporal_embedding is None:
            return self.fc(self.dropout(tokens.mean(dim=1)))  # (B, C) -> (B, num_classes)
        num_segments = self.temporal_embedding.shape[0]
        if tokens.shape[1] != num_segments:
            raise ValueError(
                f"temporal_position_embedding was built for num_segments={num_segments} frames per clip, "
                f"got clips of {tokens.shape[1]} frames"
            )
        frames = self.dropout(tokens)  # (B, K, C): one mask per frame's vector
        # b + (1/K) sum_k (W + E_k) T_k: the paper's head on the mean, plus each frame's own correction.
        per_frame = torch.einsum("bkc,knc->bn", frames, self.temporal_embedding.to(frames.dtype))  # (B, n)
        return self.fc(frames.mean(dim=1)) + per_frame / num_segments  # (B, num_classes)


class STPANet(nn.Module):
    """The STPA action classifier.

    Args:
        config: the model's configuration (``stpa_model.build_model`` builds one from a named variant).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.pyramid_stages = tuple(stage_index(name) for name in config.pyramid_layers)
        self.attended_stage = self.pyramid_stages[-1]
        has_attention = config.attention != "none"
        # Stages after layer i only run when M_i is fed back into the backbone; otherwise they would be
        # parameters without gradients (and DDP refuses those).
        num_stages = 4 if has_attention and config.embed_in_backbone else self.attended_stage
        self.backbone = ResNet(
            RESNET_SPECS[config.backbone],
            num_stages=num_stages,
            temporal_shift_div=config.temporal_shift_div if config.temporal_shift else None,
        )
        pyramid_channels = [self.backbone.stage_channels[s - 1] for s in self.pyramid_stages]
        self.pyramid = (
            PyramidAttention(
                pyramid_channels,
                config.num_attention_maps,
                resample=config.resample,
                fusion=config.fusion,
                l2_normalize=config.l2_normalize,
            )
            if has_attention
            else None
        )
        self.head = ClassifierHead(
            self.backbone.stage_channels[-1],
            config.num_classes,
            config.dropout,
            num_segments=config.num_segments if config.temporal_position_embedding else None,
        )

    def forward_features(self, clips: torch.Tensor) -> STPAFeatures:
        """Backbone and attention: clips (B, K, 3, H, W) float, normalised -> pooled tokens, losses, maps."""
        if clips.ndim != 5 or clips.shape[2] != 3:
            raise ValueError(f"clips must be (B, K, 3, H, W), got shape {tuple(clips.shape)}")
        b, k = clips.shape[:2]
        x = self.backbone.forward_stem(clips.reshape(b * k, *clips.shape[2:]))  # (B*K, C, H/4, W/4)
        num_frames: int | None = k  # frames per clip along the batch axis; None once aggregated over time
        levels: list[torch.Tensor] = []
        out: PyramidAttentionOutput | None = None
        for stage in range(1, self.backbone.num_stages + 1):
            x = self.backbone.forward_stage(stage, x, num_frames)  # (B*K or B, C_s, H_s, W_s)
            if self.pyramid is None or stage not in self.pyramid_stages:
                continue
            levels.append(x)
            if stage != self.attended_stage:
                continue
            # Spatio-temporal: one softmax over all K*H*W positions of a clip. Per-frame: K = 1 per item.
            out = self.pyramid(levels, num_frames=k if self.config.spatio_temporal else 1)
            if not self.config.embed_in_backbone:
                break
            x = attended_to_map(out.attended, out.feature_hw)  # (B or B*K, C_i, H_i, W_i)
            if self.config.spatio_temporal:
                num_frames = None  # one map per clip from here on: no time axis left to shift along

        ordered = self.config.temporal_position_embedding and self.config.spatio_temporal
        if out is not None and not self.config.embed_in_backbone and ordered:
            tokens = _frame_tokens(out, k)  # (B, K, C_i): M split by frame, in frame order
        elif out is not None and not self.config.embed_in_backbone:
            tokens = out.attended.mean(dim=1)  # (B or B*K, d, C_i) -> (B or B*K, C_i)
        else:
            tokens = x.mean(dim=(2, 3))  # (B or B*K, C, H, W) -> (B or B*K, C)
        tokens = tokens.reshape(b, -1, tokens.shape[-1])  # (B, R, C), R = 1 or K (b-major batch)
        if out is None:
            return STPAFeatures(tokens=tokens, losses={}, attention=None, feature_hw=None)
        return STPAFeatures(
            tokens=tokens,
            losses=self._auxiliary_losses(out),
            attention=self._clip_attention(out.attention, b),
            feature_hw=out.feature_hw,
        )

    def forward_head(self, features: STPAFeatures) -> STPAOutput:
        """Classifier on the pooled tokens."""
        return STPAOutput(
            logits=self.head(features.tokens),
            losses=features.losses,
            attention=features.attention,
            feature_hw=features.feature_hw,
        )

    def forward(self, clips: torch.Tensor) -> STPAOutput:
        """clips float (B, K, 3, H, W), ImageNet-normalised -> logits (B, num_classes), losses, attention."""
        return self.forward_head(self.forward_features(clips))

    def _auxiliary_losses(self, out: PyramidAttentionOutput) -> dict[str, torch.Tensor]:
        """Interaction and diversity losses of the layer; built without a graph when their weight is zero."""
        beta, gamma = self.config.loss_weights
        grad = torch.is_grad_enabled()
        features = out.features.detach() if self.config.interaction_detach_features else out.features
        with torch.set_grad_enabled(grad and beta > 0):
            interaction = interaction_loss(out.attention, features, self.config.interaction_normalization)
        with torch.set_grad_enabled(grad and gamma > 0):
            diversity = diversity_loss(
                out.fused_softmax, out.level_softmax, self.config.diversity_normalization
            )
        return {"interaction": interaction, "diversity": diversity}

    def _clip_attention(self, attention: torch.Tensor, num_clips: int) -> torch.Tensor:
        """A per clip, (B, d, K*H*W): per-frame maps (B*K, d, H*W) are laid side by side along positions."""
        if attention.shape[0] == num_clips:
            return attention
        bk, d, hw = attention.shape
        per_frame = attention.reshape(num_clips, bk // num_clips, d, hw)  # (B, K, d, H*W)
        return per_frame.transpose(1, 2).reshape(num_clips, d, -1)  # (B, d, K, H*W) -> (B, d, K*H*W)


def _frame_tokens(out: PyramidAttentionOutput, num_frames: int) -> torch.Tensor:
    """Frame k's share of the pooled attended feature, times K: (B, K, C), mean over k = mean of M's rows.

    ``T_k = (K/d) sum_m sum_{p in frame k} A_{m,p} x_p``; positions are ordered (frame, row, column).
    """
    b, d, _ = out.attention.shape
    attention = out.attention.reshape(b, d, num_frames, -1).to(out.features.dtype)  # (B, d, K, H*W)
    features = out.features.reshape(b, num_frames, -1, out.features.shape[-1])  # (B, K, H*W, C)
    return torch.einsum("bdkp,bkpc->bkc", attention, features) * (num_frames / d)  # (B, K, C)


def build_model(variant: str, **overrides: Any) -> STPANet:
    """An STPANet of a named variant (``stpa_model.VARIANTS``) with flat ``ModelConfig`` overrides.

    Example: ``build_model("r50", num_classes=157, multi_label=True, num_segments=8)``.

    Raises:
        ValueError: unknown variant or override name (the message lists the valid ones), or invalid values.
    """
    return STPANet(model_config(variant, **overrides))


def total_loss(
    output: STPAOutput, targets: torch.Tensor, config: ModelConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training objective: ``classification + beta * interaction + gamma * diversity``.

    Weight decay is the optimiser's. With ``attention="plain"`` the auxiliary losses are reported but weighted
    by zero (the non-interaction baseline); with ``attention="none"`` there are none.

    Args:
        output: the model's output.
        targets: see ``classification_loss``.
        config: the model's config (``multi_label``, ``beta``, ``gamma``, ``attention``).

    Returns:
        The scalar loss to backpropagate, and its unweighted parts by name ("classification", and
        "interaction" and "diversity" when the model has attention) for logging.
    """
    loss = classification_loss(output.logits, targets, config.multi_label)
    parts = {"classification": loss, **output.losses}
    beta, gamma = config.loss_weights
    if beta:
        loss = loss + beta * output.losses["interaction"]
    if gamma:
        loss = loss + gamma * output.losses["diversity"]
    return loss, parts
