"""Progress inside an epoch, as PySlowFast's and MMAction2's training loggers print it: rank 0 prints a line every
``train.log_every_steps`` micro-steps and logs the same numbers to MLflow at the optimiser step::

    epoch 1/30 step 20/119  loss 4.1021  lr 1.00e-02  clips/s 41.3  data 0.012s  eta 1:02:13

``loss`` is the mean total loss over the steps since the previous line (read from the device once per line), ``data``
the seconds per step rank 0 waited for its next batch (the input pipeline's share of a step: near 0 when decoding
keeps up), ``clips/s`` all ranks' training clips per second since the previous line, and ``eta`` the remaining
micro-steps of the run times this attempt's mean seconds per step (validation not included).
"""

from __future__ import annotations

import datetime
import time

import torch

from pipeline import metric_names as names
from pipeline.tracking.runs import RankZeroRun


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` (``D days, H:MM:SS`` past a day), whole seconds."""
    return str(datetime.timedelta(seconds=max(0, round(seconds))))


class StepProgress:
    """Rank 0's per-step progress lines and per-step MLflow metrics; a no-op on other ranks or with ``every=0``.

    Args:
        every: print and log every this many micro-steps (0: never).
        num_epochs, steps_per_epoch: the run's length in micro-steps, for the ETA.
        clips_per_step: clips one micro-step trains on, all ranks together (batch x world size).
        run: the MLflow run to log ``train/loss``, ``train/lr`` and ``train/data_wait_s`` to (None: print only).
        enabled: False on ranks other than 0.
    """

    def __init__(
        self,
        every: int,
        num_epochs: int,
        steps_per_epoch: int,
        clips_per_step: int,
        run: RankZeroRun | None,
        enabled: bool,
    ) -> None:
        self.every = every if enabled else 0
        self.num_epochs = num_epochs
        self.steps_per_epoch = steps_per_epoch
        self.clips_per_step = clips_per_step
        self.run = run
        self.attempt_start = time.perf_counter()
        self.attempt_steps = 0
        self._reset_window()

    def _reset_window(self) -> None:
        self.window_start = time.perf_counter()
        self.window_steps = 0
        self.window_wait = 0.0
        self.window_loss: torch.Tensor | None = None
        self._wait_start = time.perf_counter()

    def start_epoch(self) -> None:
        """Before the epoch's first batch is requested: the wait for it counts as data time."""
        self._reset_window()

    def batch_arrived(self) -> None:
        """Right after the data iterator yielded a batch."""
        self.window_wait += time.perf_counter() - self._wait_start

    def step_done(self, epoch: int, step: int, loss: torch.Tensor, lr: float, global_step: int) -> None:
        """After micro-step ``step`` (0-based) of ``epoch`` (0-based); ``loss`` is its total loss (device tensor)."""
        self.attempt_steps += 1
        if self.every:
            self.window_steps += 1
            detached = loss.detach().float()
            self.window_loss = detached if self.window_loss is None else self.window_loss + detached
            if (step + 1) % self.every == 0:
                self._emit(epoch, step, lr, global_step)
        self._wait_start = time.perf_counter()

    def _emit(self, epoch: int, step: int, lr: float, global_step: int) -> None:
        now = time.perf_counter()
        loss = (self.window_loss / self.window_steps).item()  # host sync: once per progress line
        seconds = max(now - self.window_start, 1e-9)
        wait = self.window_wait / self.window_steps
        done = epoch * self.steps_per_epoch + step + 1
        remaining = self.num_epochs * self.steps_per_epoch - done
        eta = remaining * (now - self.attempt_start) / max(1, self.attempt_steps)
        print(
            f"epoch {epoch + 1}/{self.num_epochs} step {step + 1}/{self.steps_per_epoch}  loss {loss:.4f}  "
            f"lr {lr:.2e}  clips/s {self.window_steps * self.clips_per_step / seconds:.1f}  data {wait:.3f}s  "
            f"eta {format_eta(eta)}",
            flush=True,
        )
        if self.run is not None:
            metrics = {names.TRAIN_LOSS: loss, names.TRAIN_LR: lr, names.TRAIN_DATA_WAIT_S: wait}
            try:
                self.run.log(metrics, step=global_step)
            except Exception as error:  # noqa: BLE001 - tracking trouble must not stop training
                print(
                    f"warning: could not log step metrics to MLflow run {self.run.run_id}: {error}",
                    flush=True,
                )
        self._reset_window()
