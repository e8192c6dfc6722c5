"""Distributed training of STPANet with Ray Train (PyTorch DDP), fed by the Ray Data clip pipeline.

The driver (``fit``) builds the training dataset, resolves the MLflow run, and starts a ``TorchTrainer``; each
worker runs ``train_loop_per_worker``: one visible loop of batch, forward, loss, backward, clip, step, log,
checkpoint (STYLE.md). The Ray integration points are marked ``# [ray]``.

Selection: every ``train.eval_every`` epochs (and at the last) the model is scored on the *val* manifest, carved
from the training list, and the best epoch's weights are kept (``best_model.pt``); without a val manifest nothing is
scored per epoch and the last epoch's weights are kept. The test manifest reaches the workers only with
``train.final_test``, to score the chosen weights once after the last epoch: nothing is ever chosen on it.

Epoch length is exact and equal across ranks: Ray Train splits the training dataset with
``streaming_split(equal=True)`` and every rank iterates with ``drop_last=True``, so each rank runs
``floor(floor(N / world_size) / batch_size)`` steps (``steps_per_epoch``), and no rank waits in an all-reduce
that another never reaches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator

import pyarrow as pa
import torch

from pipeline import metric_names as names
from pipeline import schema
from pipeline.config import ExperimentConfig, autocast_dtype
from pipeline.errors import UserError
from pipeline.evaluation.evaluate import (
    evaluate_distributed,
)
from pipeline.runtime import describe_resource_waits
from pipeline.tracking.artifacts import log_evaluation_artifacts
from pipeline.tracking.runs import RankZeroRun
from pipeline.training.checkpoint import (
    BEST_MODEL_FILE,
    METRICS_FILE,
    TrainState,
    resume_from,
    save_checkpoint,
    unwrap,
)
from pipeline.training.optim import build_optimizer, build_scheduler, freeze_batchnorm, scaled_lr
from pipeline.training.progress import StepProgress, format_eta
from pipeline.training.ray_hooks import TrainBatchCollate
from pipeline.training.weights import load_backbone_weights
from pipeline.video.transforms import frames_to_model_input
from pipeline.workflow import format_seconds
from stpa_model import STPANet, total_loss

SELECTION_VAL = "val"  # MLflow param selection.split: the best epoch on the val split chose the weights
SELECTION_LAST_EPOCH = "last_epoch"  # no val split: the last epoch's weights


class BatchTimeoutError(UserError):
    """A training worker waited ``train.batch_timeout_s`` for a batch: the message says what the cluster waits for.

    A ``UserError``: Ray Train does not restart the worker group for it (``pipeline.training.ray_hooks.
    RaiseUserErrors``) and the workflow does not retry the step; the same cluster would wait again.
    """


def batches_within(batches: Iterable, timeout_s: float, describe_wait) -> Iterator:
    """The items of ``batches``, failing when one takes longer than ``timeout_s`` seconds to arrive.

    The iterator runs in a helper thread that hands over one item at a time, so only the time spent waiting for
    an item counts, not the time the consumer spends on the previous one. ``timeout_s`` 0 passes ``batches``
    through unchanged.

    Raises:
        BatchTimeoutError: no item within ``timeout_s``; its message ends with ``describe_wait()``.
    """
    if not timeout_s:
        yield from batches
        return
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item) -> None:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for batch in batches:
                put(("batch", batch))
                if stop.is_set():
                    return
            put(("end", None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            put(("error", error))

    threading.Thread(target=produce, name="batches-within", daemon=True).start()
    try:
        while True:
            try:
                kind, item = handoff.get(timeout=timeout_s)
            except queue.Empty:
                raise BatchTimeoutError(
                    f"no training batch for {timeout_s:g} s (train.batch_timeout_s): {describe_wait()}"
                ) from None
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()  # the consumer stopped early (or failed): let the helper thread end


def steps_per_epoch(num_train_rows: int, world_size: int, batch_size: int) -> int:
    """Optimiser micro-steps each rank runs per epoch (equal shards, last partial batch dropped)."""
    return (num_train_rows // world_size) // batch_size


def train_loop_per_worker(loop_config: dict) -> None:
    """The training loop on one Ray Train worker."""
    import ray.train
    import ray.train.torch

    _quiet_ray_logs()
    exp: ExperimentConfig = loop_config["experiment"]
    cfg = exp.train
    ctx = ray.train.get_context()  # [ray]
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()  # [ray]
    # CPU training: as many intra-op threads as CPUs Ray gave this worker (Ray's OMP_NUM_THREADS says 1 below 1).
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(cfg.seed + rank)
    val_table = _table_of(loop_config, "val")  # None: no val split, the last epoch's weights are kept
    test_table = _table_of(loop_config, "test")  # None unless train.final_test

    model = STPANet(exp.model)
    if cfg.pretrained and not ray.train.get_checkpoint():
        load_backbone_weights(model, cfg.pretrained)
    freeze_batchnorm(model, cfg.freeze_bn)
    # Channels-last weights: frames_to_model_input's clips are channels-last already (a permute of decoded HWC
    # frames), so weight gradients come out channels-last; with NCHW weights DDP warns that they do not match its
    # buckets. Measured on CPU (forward + backward): ResNet-50 at 224 793 ms vs 807 (NCHW weights) and 916
    # (contiguous clips); ResNet-18 at 112 181 vs 212 and 180. It is also cuDNN's fast layout under AMP.
    model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)  # [ray] device placement + DDP
    if cfg.compile:
        model = torch.compile(model)

    num_steps = loop_config["steps_per_epoch"]
    updates_per_epoch = max(1, num_steps // cfg.grad_accum_steps)
    global_batch = cfg.batch_size * cfg.grad_accum_steps * world_size
    optimizer = build_optimizer(unwrap(model), exp.optim, scaled_lr(exp.optim, global_batch))
    scheduler = build_scheduler(optimizer, cfg.epochs * updates_per_epoch, exp.optim)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    amp_dtype = autocast_dtype(cfg.precision)

    state = TrainState(epoch=0, global_step=0, best_metric=-math.inf, restarts=0)
    best_weights, reported = None, None  # reported: what the resumed checkpoint's epoch reported
    checkpoint = ray.train.get_checkpoint()  # [ray] set when resuming (worker restart or same run name)
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            state, best_weights, reported = resume_from(ckpt_dir, model, optimizer, scheduler, scaler)
    mlflow_run = _mlflow_for_rank(rank, loop_config)
    if mlflow_run is not None and checkpoint:
        if reported is not None:  # the attempt that wrote the checkpoint may have died before MLflow saw it
            mlflow_run.log_report_once(reported)
        mlflow_run.log({}, {names.tag(names.RESTARTS): str(state.restarts)}, step=state.global_step)
    if reported is not None and reported.get(names.FINAL) and state.epoch >= cfg.epochs:
        # The run had finished (killed before its driver saw the result): report the same result again.
        _report(reported, rank, model, optimizer, scheduler, scaler, state, best_weights, exp)
        return

    if rank == 0 and val_table is None:
        print("no val split: no per-epoch selection, the last epoch's weights are used", flush=True)
    train_shard = ray.train.get_dataset_shard("train")  # [ray]
    steps_this_attempt = 0
    metric_name = exp.primary_metric
    progress = StepProgress(
        cfg.log_every_steps, cfg.epochs, num_steps, cfg.batch_size * world_size, mlflow_run, enabled=rank == 0
    )
    for epoch in range(state.epoch, cfg.epochs):
        model.train()
        freeze_batchnorm(model, cfg.freeze_bn)  # model.train() resets BN layers to training mode
        epoch_start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        part_sums: dict[str, torch.Tensor] = {}
        num_batches = 0
        optimizer.zero_grad(set_to_none=True)  # an epoch's last incomplete accumulation does not carry over
        batches = train_shard.iter_torch_batches(  # [ray]
            batch_size=cfg.batch_size,
            drop_last=True,
            collate_fn=TrainBatchCollate(),
            device=device,
            prefetch_batches=2,
            local_shuffle_buffer_size=4 * cfg.batch_size,  # rows move between decode blocks every epoch
        )
        progress.start_epoch()
        first_batch_at = None
        # A cluster that cannot feed the workers (no CPU left for decoding) fails the run instead of stalling it.
        waited = batches_within(batches, cfg.batch_timeout_s, describe_resource_waits)
        for step, batch in enumerate(waited):
            if step >= num_steps:  # equal shards make this a no-op; it guards the DDP step count anyway
                break
            progress.batch_arrived()
            if first_batch_at is None:  # the epoch's start-up ends here (streaming started, one batch read)
                first_batch_at = time.perf_counter()
            clips = frames_to_model_input(batch[schema.FRAMES])
            targets = batch[schema.LABELS] if exp.model.multi_label else batch[schema.LABEL]
            is_update = (step + 1) % cfg.grad_accum_steps == 0
            # DDP all-reduces gradients on the micro-step that updates; the others accumulate locally.
            sync = contextlib.nullcontext() if is_update or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with torch.autocast(
                    device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                ):
                    output = model(clips)
                loss, parts = total_loss(output, targets, exp.model)
                loss = loss / cfg.grad_accum_steps
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
            if is_update:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if exp.optim.grad_clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), exp.optim.grad_clip_norm)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                state.global_step += 1
            loss_sum += loss.detach() * cfg.grad_accum_steps
            for name, value in parts.items():
                part_sums[name] = part_sums.get(name, 0.0) + value.detach().float()
            num_batches += 1
            steps_this_attempt += 1
            progress.step_done(
                epoch, step, loss * cfg.grad_accum_steps, optimizer.param_groups[0]["lr"], state.global_step
            )
        waited.close()  # ends its helper thread now, also after a break
        train_end = time.perf_counter()
        train_seconds = train_end - epoch_start
        # Start-up (epoch start to the first batch) and the cost of a step after it: an epoch lasts
        # startup + num_batches * step_seconds, so the two are tuned (and reported) apart.
        startup_seconds = (first_batch_at or train_end) - epoch_start
        step_seconds = (train_end - (first_batch_at or train_end)) / max(1, num_batches)
        train_loss = (loss_sum / max(1, num_batches)).item()  # host sync, once per epoch
        clips_per_second = num_batches * cfg.batch_size * world_size / max(train_seconds, 1e-9)
        metrics = {
            names.EPOCH: epoch + 1,
            names.TRAIN_EPOCH_LOSS: train_loss,
            # host sync, once per epoch: the unweighted parts (classification, interaction, diversity)
            **{names.train(name): (value / max(1, num_batches)).item() for name, value in part_sums.items()},
            names.TRAIN_CLIPS_PER_S: clips_per_second,
            names.TRAIN_EPOCH_STARTUP_S: startup_seconds,
            names.TRAIN_STEP_S: step_seconds,
            names.GLOBAL_STEP: state.global_step,
            names.STEPS_THIS_ATTEMPT: steps_this_attempt,
            names.RESTARTS: state.restarts,
        }
        is_last = epoch + 1 == cfg.epochs
        if val_table is not None and ((epoch + 1) % cfg.eval_every == 0 or is_last):
            val, _ = evaluate_distributed(model, val_table, exp.val_clips, exp, device, rank, world_size)
            metrics.update({names.val(k): v for k, v in val.items()})
            if val[metric_name] > state.best_metric:
                state.best_metric = val[metric_name]
                best_weights = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
        elif val_table is None and is_last:
            best_weights = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
        if val_table is not None:  # the best val value so far: what a sweep's scheduler compares
            metrics[names.best(metric_name)] = state.best_metric
        state.epoch = epoch + 1
        epoch_seconds = time.perf_counter() - epoch_start
        if rank == 0:
            val_text = ""
            if names.val(metric_name) in metrics:
                val_text = f"  val {metric_name} {metrics[names.val(metric_name)]:.4f} (best {state.best_metric:.4f})"
            print(
                f"epoch {epoch + 1}/{cfg.epochs} done in {format_seconds(epoch_seconds)}: loss {train_loss:.4f}"
                f"{val_text}  clips/s {clips_per_second:.1f} (start-up {startup_seconds:.2f}s, "
                f"{1000 * step_seconds:.0f} ms a step)  "
                f"eta {format_eta((cfg.epochs - state.epoch) * epoch_seconds)}",
                flush=True,
            )
        _report(metrics, rank, model, optimizer, scheduler, scaler, state, best_weights, exp)

    # Final multi-view test, once, of the chosen weights: the best epoch on val, or the last epoch without val.
    if best_weights is not None:
        unwrap(model).load_state_dict(best_weights)
    final = {names.best(metric_name): state.best_metric} if val_table is not None else {}
    if cfg.final_test:
        test, details = evaluate_distributed(model, test_table, exp.test_clips, exp, device, rank, world_size)
        final.update({names.test(k): v for k, v in test.items()})
    final[names.EPOCH] = state.epoch
    final[names.GLOBAL_STEP] = state.global_step
    final[names.RESTARTS] = state.restarts
    final[names.STEPS_THIS_ATTEMPT] = steps_this_attempt
    final[names.FINAL] = 1
    if rank == 0 and cfg.final_test:
        print("test " + "  ".join(f"{k} {v:.4g}" for k, v in test.items()), flush=True)
        if mlflow_run is not None:
            log_evaluation_artifacts(mlflow_run, unwrap(model), exp, test_table, details, device)
    _report(final, rank, model, optimizer, scheduler, scaler, state, best_weights, exp)


def _table_of(loop_config: dict, split: str) -> pa.Table | None:
    """The ``val`` or ``test`` manifest rows the driver handed over, as a table; None when it handed none."""
    rows = loop_config.get(f"{split}_rows")
    return None if rows is None else pa.Table.from_pylist(rows, schema=loop_config[f"{split}_schema"])


def _quiet_ray_logs() -> None:
    """Ray Train logs every report (a line per rank per epoch, metrics dict included) at INFO from a logger named by
    its file's path, outside ``ray.train`` (which ``RunConfig.logging_config`` quiets) and propagating to the
    worker's console. The rest of the libraries' output is configured by ``pipeline.runtime.library_log_env``."""
    import logging

    for name in list(logging.root.manager.loggerDict):
        if name.replace(os.sep, "/").endswith("ray/train/v2/_internal/execution/context.py"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _report(metrics, rank, model, optimizer, scheduler, scaler, state, best_weights, exp) -> None:
    """Every rank reports (a barrier); rank 0 attaches the checkpoint, which keeps the reported metrics.

    MLflow gets the metrics from ``pipeline.training.ray_hooks.MlflowEpochLogger`` once Ray Train has registered the
    checkpoint, not from here: a worker killed between logging and the checkpoint's commit would train that
    epoch again and log it twice.
    """
    import ray.train

    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            save_checkpoint(directory, model, optimizer, scheduler, scaler, state, dataclasses.asdict(exp))
            if best_weights is not None:
                torch.save(best_weights, os.path.join(directory, BEST_MODEL_FILE))
            with open(os.path.join(directory, METRICS_FILE), "w") as f:
                json.dump({k: float(v) for k, v in metrics.items()}, f)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)  # [ray]


def _mlflow_for_rank(rank: int, loop_config: dict) -> RankZeroRun | None:
    if rank != 0 or not loop_config.get("mlflow_run_id"):
        return None
    return RankZeroRun(loop_config["mlflow_tracking_uri"], loop_config["mlflow_run_id"])
