"""Training checkpoints: one ``state.pt`` file of plain tensors and containers, loaded with ``weights_only=True``.

A checkpoint holds the model (unwrapped from DDP), optimiser, LR scheduler, AMP grad scaler, the next epoch to run,
the global step, the best validation metric so far, and the run config as a plain dict (for the record: the
config used to resume is the one the run is started with).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

STATE_FILE = "state.pt"
BEST_MODEL_FILE = "best_model.pt"  # the best epoch's weights so far (a state dict), beside state.pt
METRICS_FILE = "metrics.json"  # in each checkpoint: the metrics reported with it


@dataclass
class TrainState:
    epoch: int  # next epoch to run (0-based)
    global_step: int
    best_metric: float
    restarts: int  # how many times this run resumed from a checkpoint


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel (or torch.compile) wrapper."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_checkpoint(
    directory: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    state: TrainState,
    config: dict[str, Any],
) -> str:
    """Write ``<directory>/state.pt`` and return its path."""
    path = os.path.join(directory, STATE_FILE)
    torch.save(
        {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": state.epoch,
            "global_step": state.global_step,
            "best_metric": state.best_metric,
            "restarts": state.restarts,
            "config": config,
        },
        path,
    )
    return path


def load_checkpoint(
    directory: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> TrainState:
    """Restore what ``save_checkpoint`` wrote (strictly for the model) and return the training state."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {directory!r} has no {STATE_FILE}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    unwrap(model).load_state_dict(blob["model"], strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(blob["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(blob["scheduler"])
    if scaler is not None and blob["scaler"] is not None:
        scaler.load_state_dict(blob["scaler"])
    return TrainState(blob["epoch"], blob["global_step"], blob["best_metric"], blob["restarts"])


def load_model_weights(path: str, model: nn.Module) -> dict[str, Any]:
    """Load only the model weights of a training checkpoint file; returns the stored config dict."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    unwrap(model).load_state_dict(blob["model"], strict=True)
    return blob["config"]


def resume_from(
    directory: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
) -> tuple[TrainState, dict[str, torch.Tensor] | None, dict[str, float] | None]:
    """Resume training from a checkpoint folder written by the training loop.

    Restores model, optimiser, scheduler and scaler in place and counts the restart.

    Returns:
        ``(state, best_weights, reported)``: the training state (``restarts`` already incremented), the best
        weights so far (``BEST_MODEL_FILE``; None when the run never validated) and the metrics reported with the
        checkpoint (``METRICS_FILE``; None in checkpoints that predate it).
    """
    state = load_checkpoint(directory, model, optimizer, scheduler, scaler)
    state.restarts += 1
    best_weights, reported = None, None
    best_path = os.path.join(directory, BEST_MODEL_FILE)
    if os.path.exists(best_path):
        best_weights = torch.load(best_path, map_location="cpu", weights_only=True)
    metrics_path = os.path.join(directory, METRICS_FILE)
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            reported = json.load(f)
    return state, best_weights, reported
