"""Optimiser, learning-rate schedule with warm-up, and BatchNorm freezing for training.

The schedule is a function of the optimiser step (not the epoch) so that gradient accumulation, resumption from a
checkpoint mid-epoch and different world sizes all give the same curve.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.config import OptimConfig


def scaled_lr(config: OptimConfig, global_batch_size: int) -> float:
    """The linear scaling rule: lr grows with the global batch (clips per optimiser step, all ranks)."""
    return config.lr * global_batch_size / config.reference_batch_size


def build_optimizer(model: nn.Module, config: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over the trainable parameters, without weight decay on norms and biases."""
    decay, no_decay = [], []
    for module in model.modules():
        is_norm = isinstance(module, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            skip = config.no_decay_on_norm_and_bias and (is_norm or name == "bias")
            (no_decay if skip else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=lr)


def lr_factor(step: int, total_steps: int, config: OptimConfig) -> float:
    """Multiplier of the peak lr at optimiser step ``step`` (0-based) of ``total_steps``."""
    if step < config.warmup_steps:
        start = config.warmup_start_factor
        return start + (1.0 - start) * step / config.warmup_steps
    if config.schedule == "step":
        passed = sum(step >= m * total_steps for m in config.step_milestones)
        return config.step_gamma**passed
    span = max(1, total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr_factor + (1.0 - config.min_lr_factor) * cosine


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, config: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR following ``lr_factor``; call ``scheduler.step()`` after each optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, config))


def freeze_batchnorm(model: nn.Module, mode: str) -> int:
    """Freeze BatchNorm statistics and affine parameters; returns how many BN layers were frozen.

    Args:
        mode: ``"none"``; ``"all"`` (every BN layer in eval mode with frozen weights, as the Charades baselines
            of the peers need with small per-GPU batches); ``"partial"`` (TSN's partial BN: every BN layer but the
            first). Must be re-applied after each ``model.train()``, which resets BN layers to training mode.
    """
    if mode not in ("none", "all", "partial"):
        raise ValueError(f"freeze_bn must be 'none', 'all' or 'partial', got {mode!r}")
    if mode == "none":
        return 0
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    frozen = norms[1:] if mode == "partial" else norms
    for module in frozen:
        module.eval()
        for param in module.parameters():
            param.requires_grad_(False)
    return len(frozen)
