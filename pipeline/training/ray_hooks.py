"""The parts of ``pipeline.training.loop`` that subclass Ray types (a module of its own: importing it imports Ray Train
and Ray Data, which ``pipeline.training.loop`` itself leaves until a run starts)."""

from __future__ import annotations

import numpy as np
import ray.train
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from pipeline import schema
from pipeline.errors import UserError
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


class RaiseUserErrors(ray.train.UserCallback):
    """Ends the run at a worker's ``UserError`` (a batch timeout) instead of restarting the worker group.

    Ray Train retries every worker error up to ``FailureConfig.max_failures`` times, which is right for a lost node
    and wrong for a cluster that cannot feed the workers: each attempt would wait ``train.batch_timeout_s`` again.
    An error raised by a controller callback is not retried (Ray Train's ``DefaultFailurePolicy`` raises a
    ``ControllerError`` whose cause is not a worker-group start-up failure); ``fit`` unwraps it.
    """

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        for error in worker_exceptions.values():
            # Ray Train wraps a worker's exception with its traceback text (UserExceptionWithTraceback); the
            # exception itself is its _base_exc.
            cause = getattr(error, "_base_exc", error)
            if isinstance(cause, UserError):
                raise cause


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
