"""The parts of ``pipeline.training.loop`` that subclass Ray types (a module of its own: importing it imports Ray Train
and Ray Data, which ``pipeline.training.loop`` itself leaves until a run starts)."""

from __future__ import annotations

import numpy as np
import ray.train
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from pipeline import schema
from pipeline.tracking.runs import RankZeroRun


class TrainBatchCollate(NumpyBatchCollateFn):
    """Numpy clip batch -> tensors (frames stay uint8 until the device; ids are not needed to train)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {schema.FRAMES: torch.from_numpy(np.ascontiguousarray(batch[schema.FRAMES]))}
        # Labels copied (np.array): Ray's batches can be read-only, which torch.from_numpy warns about.
        if schema.LABELS in batch:
            out[schema.LABELS] = torch.from_numpy(np.array(batch[schema.LABELS], dtype=np.float32))
        else:
            out[schema.LABEL] = torch.from_numpy(np.array(batch[schema.LABEL], dtype=np.int64))
        return out


class MlflowEpochLogger(ray.train.UserCallback):
    """Logs each report's metrics to the run's MLflow run from the Ray Train controller, after the report's
    checkpoint is registered (Ray Train calls its checkpoint manager first), so that an epoch is logged once:
    a report whose checkpoint never committed is retrained and logged then, and one whose logging was cut
    short is logged by the resumed worker from the checkpoint's ``metrics.json``."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._run: RankZeroRun | None = None

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        if not metrics:
            return
        if self._run is None:
            self._run = RankZeroRun(self.tracking_uri, self.run_id)
        try:
            self._run.log_report_once(metrics[0])  # rank 0's report
        except Exception as error:  # noqa: BLE001 - tracking trouble must not stop training; the checkpoint has them
            print(f"warning: could not log epoch metrics to MLflow run {self.run_id}: {error}", flush=True)
