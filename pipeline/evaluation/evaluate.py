"""Distributed evaluation: every video of a manifest (val or test) scored exactly once, whatever the number of workers.

Ray Train's dataset sharding (``streaming_split(equal=True)``) may drop rows to keep shards equal, which is right
for training and wrong for testing. So evaluation shards the *manifest* itself, round-robin by row, each rank
decodes and scores its own videos' views, and the per-row scores are gathered with ``all_gather_object``. Views
are combined per video (``aggregate_views``) before any metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
from torch import nn

from pipeline import metric_names as names
from pipeline import schema
from pipeline.clips.dataset import ClipConfig, build_clip_dataset
from pipeline.config import ExperimentConfig, autocast_dtype
from pipeline.data.manifest import manifest_table
from pipeline.evaluation.metrics import aggregate_views, charades_metrics, single_label_metrics
from pipeline.storage import read_bytes
from pipeline.video.transforms import frames_to_model_input
from stpa_model import STPANet

if TYPE_CHECKING:
    import ray.data

SCORES = "scores"  # ClipScorer's output column: float32 (C,) class scores of one view


def shard_rows(num_rows: int, rank: int, world_size: int) -> np.ndarray:
    """Row indices of one rank's evaluation shard: round-robin, disjoint, covering every row exactly once."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    return np.arange(rank, num_rows, world_size)


def shard_table(table: pa.Table, rank: int, world_size: int) -> pa.Table:
    return table.take(pa.array(shard_rows(table.num_rows, rank, world_size)))


@dataclass
class Predictions:
    """Per-view scores of the rows one process evaluated (or of all rows after gathering)."""

    video_ids: np.ndarray  # (N,) str
    views: np.ndarray  # (N,) int32
    scores: np.ndarray  # (N, C) float32: softmax probabilities (single-label) or sigmoids (multi-label)

    @staticmethod
    def concatenate(parts: list[Predictions]) -> Predictions:
        parts = [p for p in parts if len(p.video_ids)]
        if not parts:
            return Predictions(np.array([], dtype=object), np.array([], dtype=np.int32), np.zeros((0, 0)))
        return Predictions(
            np.concatenate([p.video_ids for p in parts]),
            np.concatenate([p.views for p in parts]),
            np.concatenate([p.scores for p in parts]),
        )


@torch.no_grad()
def predict_batches(
    model: nn.Module, batches, multi_label: bool, device: torch.device, autocast_dtype: torch.dtype | None
) -> Predictions:
    """Score every row of an iterable of numpy clip batches (``schema`` columns) with ``model`` in eval mode.

    A DistributedDataParallel (or ``torch.compile``) wrapper is taken off first: DDP's forward broadcasts the
    module's buffers (BatchNorm statistics) from rank 0, a collective every rank must join, and ranks score
    different numbers of batches (a round-robin shard of 1 video over 2 ranks gives one of them none), so scoring
    through it hangs. Scoring needs no communication; ``gather_predictions`` is the one collective.
    """
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    model.eval()
    ids, views, scores = [], [], []
    for batch in batches:
        frames = np.require(batch[schema.FRAMES], requirements=["C", "W"])  # Ray's batches can be read-only
        frames = torch.from_numpy(frames).to(device, non_blocking=True)
        x = frames_to_model_input(frames)
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            logits = model(x).logits.float()
        prob = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)
        scores.append(prob.cpu().numpy())  # host sync, once per batch
        ids.append(np.asarray(batch[schema.VIDEO_ID]))
        views.append(np.asarray(batch[schema.VIEW], dtype=np.int32))
    if not ids:
        return Predictions(np.array([], dtype=object), np.array([], dtype=np.int32), np.zeros((0, 0)))
    return Predictions(np.concatenate(ids), np.concatenate(views), np.concatenate(scores))


def gather_predictions(local: Predictions) -> Predictions:
    """All ranks' predictions on every rank (a no-op outside torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    parts: list[Predictions | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return Predictions.concatenate([p for p in parts if p is not None])


def check_complete(predictions: Predictions, expected_ids: np.ndarray, views_per_video: int) -> None:
    """Fail loudly if any expected video is missing (beyond decode failures) or a (video, view) row repeats."""
    keys = list(zip(predictions.video_ids.tolist(), predictions.views.tolist(), strict=True))
    if len(keys) != len(set(keys)):
        raise RuntimeError("evaluation produced duplicate (video, view) rows: sharding is broken")
    unexpected = set(predictions.video_ids.tolist()) - set(np.asarray(expected_ids).tolist())
    if unexpected:
        raise RuntimeError(
            f"evaluation scored videos outside the evaluated manifest: {sorted(unexpected)[:5]}"
        )
    counts: dict[str, int] = {}
    for vid in predictions.video_ids.tolist():
        counts[vid] = counts.get(vid, 0) + 1
    partial = [vid for vid, n in counts.items() if n != views_per_video]
    if partial:
        raise RuntimeError(f"videos with {views_per_video} views expected but not all scored: {partial[:5]}")


def compute_metrics(
    predictions: Predictions,
    test_table: pa.Table,
    num_classes: int,
    multi_label: bool,
    view_reduce: str,
) -> tuple[dict[str, float], dict]:
    """Dataset metrics from gathered per-view predictions.

    Returns:
        ``(scalars, details)``: scalar metrics named by ``pipeline.metric_names`` without a split (``top1``,
        ``top5``, ``mean_class_accuracy`` or ``mAP``, ``wAP``; ``num_videos_scored``, ``num_videos_missing``) and details for artifacts (confusion matrix or per-class AP, the
        aggregated per-video scores).
    """
    video_ids, video_scores = aggregate_views(predictions.video_ids, predictions.scores, view_reduce)
    gt_ids = np.asarray(test_table.column(schema.VIDEO_ID).to_pylist())
    if multi_label:
        gt = np.zeros((len(gt_ids), num_classes), dtype=bool)
        for i, labels in enumerate(test_table.column(schema.LABELS).to_pylist()):
            gt[i, labels] = True
        m = charades_metrics(gt_ids, gt, video_ids, video_scores)
        scalars = {
            names.MAP: m.map,
            names.WAP: m.wap,
            names.NUM_VIDEOS_SCORED: float(len(video_ids)),
            names.NUM_VIDEOS_MISSING: float(m.num_unpredicted),
        }
        return scalars, {
            "per_class_ap": m.per_class_ap,
            "num_positives": m.num_positives,
            "video_ids": video_ids,
            "scores": video_scores,
        }
    label_of = dict(zip(gt_ids.tolist(), test_table.column(schema.LABEL).to_pylist(), strict=True))
    labels = np.array([label_of[v] for v in video_ids.tolist()], dtype=np.int64)
    # Videos that failed to decode have no prediction; they count as wrong, so accuracy is over the manifest.
    num_missing = len(gt_ids) - len(video_ids)
    m = single_label_metrics(video_scores, labels) if len(labels) else None
    scale = len(video_ids) / len(gt_ids) if len(gt_ids) else 0.0
    scalars = {
        names.TOP1: (m.top1 * scale) if m else 0.0,
        names.TOP5: (m.top5 * scale) if m else 0.0,
        names.MEAN_CLASS_ACCURACY: m.mean_class_accuracy if m else 0.0,
        names.NUM_VIDEOS_SCORED: float(len(video_ids)),
        names.NUM_VIDEOS_MISSING: float(num_missing),
    }
    return scalars, {"confusion": m.confusion if m else None, "video_ids": video_ids, "scores": video_scores}


class ClipScorer:
    """A Ray Data actor that scores clip batches with one model: batch inference for offline evaluation.

    Loads the weights once per actor (any fsspec URI, ``weights_only=True``), then maps each numpy clip batch to
    its ``video_id``, ``view`` and class ``scores`` (softmax, or sigmoid for multi-label).
    """

    def __init__(self, model_config, weights_uri: str, precision: str = "fp32") -> None:
        import io

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.multi_label = model_config.multi_label
        model = STPANet(model_config)
        state = torch.load(io.BytesIO(read_bytes(weights_uri)), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        self.model = model.to(self.device).eval()
        self.autocast = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        p = predict_batches(self.model, [batch], self.multi_label, self.device, self.autocast)
        return {schema.VIDEO_ID: p.video_ids, schema.VIEW: p.views, SCORES: p.scores.astype(np.float32)}


def score_clips(
    exp,
    weights_uri: str,
    table: pa.Table,
    *,
    num_scorers: int = 1,
    use_gpu: bool = False,
    batch_size: int | None = None,
    report=None,
    video_list: bool = False,
) -> ray.data.Dataset:
    """Every test view of every video of ``table``, decoded on CPU tasks and scored by ``num_scorers`` model replicas.

    Decode tasks (``build_clip_dataset`` with ``exp.test_clips``) feed ``ClipScorer`` actors (one GPU each with
    ``use_gpu``), so scoring scales with the cluster's CPUs and GPUs. Offline evaluation and batch prediction both
    score through this one function.

    Args:
        exp: The run's ``ExperimentConfig`` (its ``test_clips``, ``model`` and ``train.precision``).
        weights_uri: The state dict to score with (any fsspec URI), loaded with ``weights_only=True``.
        table: Manifest rows (``manifest_table``), or a video list with ``video_list=True``.
        num_scorers: Model replicas (Ray Data actors).
        use_gpu: One GPU per replica.
        batch_size: Views per scoring batch (default ``exp.train.batch_size``).
        report: Where decode failures go (``DecodeReport``): those videos are absent from the output.
        video_list: ``table`` lists videos to predict (``build_clip_dataset``'s ``video_list``).

    Returns:
        A lazy Ray Dataset with one row per scored view: ``video_id`` (str), ``view`` (int32) and ``scores``
        (float32 (C,): softmax probabilities, or per-class sigmoids for multi-label models).
    """
    dataset = build_clip_dataset(table, exp.test_clips, report=report, video_list=video_list)
    return dataset.map_batches(
        ClipScorer,
        fn_constructor_kwargs={
            "model_config": exp.model,
            "weights_uri": weights_uri,
            "precision": exp.train.precision,
        },
        batch_size=batch_size or exp.train.batch_size,
        batch_format="numpy",
        compute=_actor_pool(num_scorers),
        num_gpus=1 if use_gpu else 0,
        num_cpus=0 if use_gpu else 1,
    )


def evaluate_weights(
    exp,
    weights_uri: str,
    test_manifest: str | pa.Table,
    *,
    num_scorers: int = 1,
    use_gpu: bool = False,
    batch_size: int | None = None,
    report=None,
) -> tuple[dict[str, float], dict, Predictions]:
    """Multi-view evaluation of saved weights on a test manifest with Ray Data (no Ray Train, no DDP).

    The views are scored by ``score_clips`` (decode tasks on any CPU, ``num_scorers`` model replicas), combined
    with ``exp.train.view_reduce`` and scored as in training's final evaluation.

    Returns:
        ``(scalars, details, predictions)`` as ``compute_metrics`` returns them, plus the per-view predictions.
    """

    table = manifest_table(test_manifest)
    scored = score_clips(
        exp,
        weights_uri,
        table,
        num_scorers=num_scorers,
        use_gpu=use_gpu,
        batch_size=batch_size,
        report=report,
    )
    parts = [
        Predictions(np.asarray(b[schema.VIDEO_ID]), np.asarray(b[schema.VIEW], dtype=np.int32), b[SCORES])
        for b in scored.iter_batches(batch_size=None, batch_format="numpy")
    ]
    predictions = Predictions.concatenate(parts)
    check_complete(
        predictions, np.asarray(table.column(schema.VIDEO_ID).to_pylist()), exp.test_clips.num_views
    )
    scalars, details = compute_metrics(
        predictions, table, exp.model.num_classes, exp.model.multi_label, exp.train.view_reduce
    )
    return scalars, details, predictions


def _actor_pool(size: int):
    import ray.data

    return ray.data.ActorPoolStrategy(size=max(1, size))


def evaluate_distributed(
    model: torch.nn.Module,
    test_table: pa.Table,
    clips: ClipConfig,
    exp: ExperimentConfig,
    device: torch.device,
    rank: int,
    world_size: int,
) -> tuple[dict[str, float], dict]:
    """Distributed evaluation of a manifest table (val during training, test once at the end): each rank scores its
    round-robin shard, all ranks gather; returns ``compute_metrics``' ``(scalars, details)``."""
    num_classes = exp.model.num_classes
    multi_label = exp.model.multi_label
    local = shard_table(test_table, rank, world_size)
    batches = (
        build_clip_dataset(local, clips).iter_batches(batch_size=exp.train.batch_size, batch_format="numpy")
        if local.num_rows
        else []
    )
    predictions = gather_predictions(
        predict_batches(model, batches, multi_label, device, autocast_dtype(exp.train.precision))
    )
    ids = np.asarray(test_table.column(schema.VIDEO_ID).to_pylist())
    check_complete(predictions, ids, clips.num_views)
    return compute_metrics(predictions, test_table, num_classes, multi_label, exp.train.view_reduce)
