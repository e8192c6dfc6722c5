"""Clip decoding on Ray Data: a manifest in, Arrow batches of uint8 clips out.

``build_clip_dataset`` turns a manifest (one row per video, ``pipeline.schema``) into a ``ray.data.Dataset`` whose
rows are clips: ``frames`` uint8 ``(K, T, H, W, 3)`` plus ``label`` (int64) or ``labels`` (float32 multi-hot),
``video_id`` and ``view`` (see ``pipeline.schema``). Decoding runs in ``map_batches`` on the cluster's CPUs; each
decode call samples frame indices (``pipeline.video.sampling``), reads them exactly with the manifest's ``frame_index``
(``pipeline.video.decode.read_frames``, bytes read through fsspec) and applies the spatial transforms
(``pipeline.video.transforms``). Training yields one row per video; test yields one row per view (temporal clip x
spatial crop), so an epoch has exactly ``num_decodable_videos * num_views`` rows.

Epochs and randomness. A training clip is a pure function of ``(config.seed, epoch, video_id)``
(``sampling.clip_rng``): reproducible, and different every epoch. Ray Data re-executes ``map_batches`` every time
a dataset is iterated, so there are two ways to move to the next epoch:

* ``epoch=<int>``: the caller builds one dataset per epoch (``build_clip_dataset(m, cfg, epoch=e)``); the video
  order is also shuffled per epoch on the driver.
* ``epoch=None`` (the default, for datasets handed once to a Ray Train ``TorchTrainer``, which iterates the same
  dataset every epoch): every video counts how many times it has been decoded in this dataset, and its n-th
  decode uses epoch n. The counts live in the decode ledger (below), so the k-th pass over the dataset is epoch k
  for every video, whichever worker decodes it; block order is reshuffled per execution. (A task that Ray
  retries after a worker crash counts again: its videos skip an epoch. Nothing is lost or repeated.)

Test-mode clips do not depend on the epoch.

Multi-label (Charades) labels. With TSN sampling a clip spans the whole video and carries the video's labels
(``labels``). With dense sampling a clip covers a few seconds and carries the classes of the action ``segments``
that overlap its time span (``view_labels``; the span, overlap and timestamp rule are in
``pipeline.video.sampling``'s docstring), possibly none: such a clip is a negative for every class. This holds for
training clips and for every test view (view v takes the labels of its temporal clip). Only training uses them:
evaluation combines a video's views and scores the video against its manifest ``labels``
(``pipeline.evaluation``), whatever the views carry.

Decode failures. A video that cannot be read or decoded is dropped from its batch (never replaced) and recorded
with its id, URI, reason and epoch in a *decode ledger*: a small Ray actor (``num_cpus=0``) owned by the process
that built the dataset, one per process and Ray session, shared by all datasets it builds under distinct keys.
Decode workers call it synchronously before returning their batch, so after iteration the driver's
``DecodeReport`` sees every failure of the batches it received. ``ClipConfig.strict`` fails the run on the first
failure instead.

Throughput. Decode tasks are stateless Ray tasks (worker processes are reused, so imports are paid once per
worker, not per epoch; an actor pool would start new processes every epoch). Each task gets one block of
``decode_batch_size`` manifest rows and returns numpy arrays that Ray Data turns into one Arrow block with a
fixed-shape tensor column (no per-element conversion). ``tune_context`` switches off two Ray Data mechanisms that
cost a single-operator pipeline throughput on small clusters. ``benchmarks/ingest.py`` measures the result
against the peers' loader, a torch ``DataLoader`` whose items ``decode_views`` makes.

Usage::

    report = DecodeReport.new()
    test = build_clip_dataset("s3://bucket/manifests/test.parquet", ClipConfig(train=False), report=report)
    for batch in test.iter_batches(batch_size=32, batch_format="numpy"):
        ...  # batch["frames"]: uint8 (32, K, T, S, S, 3)
    print(report.summary())
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa

from pipeline import schema
from pipeline.clips.ledger import DecodeReport
from pipeline.data.manifest import manifest_table
from pipeline.video import sampling, transforms
from pipeline.video.decode import (
    SEQUENTIAL,
    VideoDecodeError,
    VideoIndex,
    index_from_bytes,
    index_video,
    read_frames,
    read_video_bytes,
)

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

SAMPLINGS = ("tsn", "dense")
MAX_AUTO_BATCH = 48


def auto_decode_batch_size(num_videos: int, num_decoders: int, num_views: int = 1) -> int:
    """Videos per decode task when ``ClipConfig.decode_batch_size`` is None: ``ceil(videos / (2 * decoders))``,
    at most ``MAX_AUTO_BATCH`` clips (``num_views`` per video) a task. Measured on the ingest benchmark (192
    training clips, 2 CPUs): tasks of 16 clips cost the consuming process and Ray's services 1.5 ms per clip,
    tasks of 48 0.8 ms (the decoding itself 10-11 ms)."""
    return min(max(1, MAX_AUTO_BATCH // num_views), max(1, -(-num_videos // (2 * num_decoders))))


@dataclass(frozen=True)
class ClipConfig:
    """How clips are sampled, transformed and decoded (one section of the run config)."""

    num_segments: int = 8  # K
    frames_per_segment: int = 1  # T: consecutive frames per TSN segment (dense: frames per group)
    sampling: str = "tsn"  # "tsn" (K segments over the whole video) or "dense" (K*T frames at `stride`)
    stride: int = 1  # dense only: step between sampled frames
    short_side: int | None = 128  # resize the shorter side to this first; None keeps the decoded size
    crop_size: int | None = 112  # square crop side; None (test only) keeps the resized frames whole
    train: bool = True  # random sampling, multi-scale crop, flip; else deterministic multi-view test
    num_test_clips: int = 1  # test: temporal clips per video
    test_crops: int = 1  # test: spatial crops per clip, 1 (centre) or 3 (along the longer side)
    flip: bool = True  # training: horizontal flip with probability 1/2
    scales: tuple[float, ...] = (
        transforms.TSN_SCALES
    )  # training: multi-scale crop sides (fractions of short side)
    max_distort: int = 1  # training: max index distance between the height and width scales
    seed: int = 0
    # Videos per decode task (one Ray Data block each). None: auto_decode_batch_size, ceil(videos / (2 *
    # decoders)) and at most 48 clips: every decoder gets at least 2 tasks, and Ray's cost per task (about 10 ms
    # of driver and raylet CPU here, against 10-30 ms of decoding per clip) is spread over up to 48 clips.
    decode_batch_size: int | None = None
    num_decoders: int | None = None  # concurrent decode tasks; None: one per CPU of the cluster
    strict: bool = False  # fail the run on the first video that cannot be decoded instead of dropping it
    # Training clips in the decode-once cache (pipeline.clips.cache): temporal samplings stored per video, as
    # resized uncropped frames; epoch e reads sampling e % cache_samplings and draws its own crop and flip.
    cache_samplings: int = 4

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"ClipConfig.sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        for name in ("num_segments", "frames_per_segment", "stride", "num_test_clips", "cache_samplings"):
            if getattr(self, name) < 1:
                raise ValueError(f"ClipConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.test_crops not in (1, 3):
            raise ValueError(f"ClipConfig.test_crops must be 1 or 3, got {self.test_crops}")
        if self.short_side is not None and self.short_side < 1:
            raise ValueError(f"ClipConfig.short_side must be >= 1 or None, got {self.short_side}")
        if self.crop_size is not None and self.crop_size < 1:
            raise ValueError(f"ClipConfig.crop_size must be >= 1 or None, got {self.crop_size}")
        if self.short_side is not None and self.crop_size is not None and self.crop_size > self.short_side:
            raise ValueError(f"ClipConfig.crop_size {self.crop_size} exceeds short_side {self.short_side}")
        if self.train and self.crop_size is None:
            raise ValueError(
                "ClipConfig.crop_size is required in training (the multi-scale crop's output size)"
            )
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ValueError(f"ClipConfig.scales must be fractions in (0, 1], got {self.scales}")
        if self.max_distort < 0 or self.seed < 0:
            raise ValueError("ClipConfig.max_distort and seed must be >= 0")
        for name in ("decode_batch_size", "num_decoders"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"ClipConfig.{name} must be >= 1 or None, got {getattr(self, name)}")

    @property
    def num_views(self) -> int:
        """Rows per video: 1 in training, temporal clips x spatial crops at test."""
        return 1 if self.train else sampling.num_views(self.num_test_clips, self.test_crops)

    def sampling_key(self) -> dict:
        """The fields that decide a clip's pixels (not how it is scheduled): what a cache is keyed by.
        ``cache_samplings`` decides what a training cache entry holds; test clips never depend on it."""
        fields = dataclasses.asdict(self)
        for name in ("decode_batch_size", "num_decoders", "strict"):
            fields.pop(name)
        if not self.train:
            fields.pop("cache_samplings")
        fields["scales"] = list(self.scales)
        return fields


# --- one video: sampling, decoding, transforms (shared by the Ray pipeline, the cache and `stpa inspect`) --------
def sample_indices(num_frames: int, config: ClipConfig, rng: np.random.Generator | None) -> np.ndarray:
    """Frame indices of the clips of one video.

    Args:
        num_frames: Frames of a sequential decode of the video.
        config: Sampling settings.
        rng: The video's generator for this epoch (training only; see ``sampling.clip_rng``).

    Returns:
        int64 (C, K, T): C = 1 clip in training, ``num_test_clips`` temporal clips at test.
    """
    k, t = config.num_segments, config.frames_per_segment
    if config.train:
        if rng is None:
            raise ValueError("training sampling needs a random generator")
        if config.sampling == "tsn":
            return sampling.tsn_train_indices(num_frames, k, t, rng)[None]  # (1, K, T)
        return sampling.dense_train_indices(num_frames, k, t, config.stride, rng)[None]  # (1, K, T)
    clips = []
    for c in range(config.num_test_clips):
        if config.sampling == "tsn":
            clips.append(sampling.tsn_test_indices(num_frames, k, t, clip=c, num_clips=config.num_test_clips))
        else:
            clips.append(
                sampling.dense_test_indices(
                    num_frames, k, t, config.stride, c, num_clips=config.num_test_clips
                )
            )
    return np.stack(clips)  # (C, K, T)


def make_views(
    frames: np.ndarray, inverse: np.ndarray, config: ClipConfig, rng: np.random.Generator | None
) -> np.ndarray:
    """Assemble the views of one video from its decoded distinct frames.

    Args:
        frames: uint8 (U, H, W, 3), the distinct frames in sorted index order.
        inverse: int64 (C, K, T) positions in ``frames`` of each sampled index (``sampling.unique_frames``).
        config: Transform settings.
        rng: The video's generator, already used for sampling (training only).

    Returns:
        uint8 (V, K, T, S, S, 3) in [0, 255] with V = ``config.num_views`` and S = ``crop_size`` (or the resized
        frame size when ``crop_size`` is None).
    """
    if config.short_side is not None:
        frames = transforms.resize_short_side(frames, config.short_side)  # each distinct frame resized once
    if config.train:
        return train_view(frames[inverse[0]], config, rng)[None]  # (1, K, T, S, S, 3)
    views = []
    for view in range(config.num_views):
        c, crop_index = sampling.view_to_clip_crop(view, config.test_crops)
        clip = frames[inverse[c]]  # (K, T, H, W, 3)
        if config.crop_size is not None:
            clip = transforms.spatial_crop(clip, config.crop_size, crop_index, config.test_crops)
        views.append(clip)
    return np.stack(views)  # (V, K, T, S, S, 3)


def train_view(clip: np.ndarray, config: ClipConfig, rng: np.random.Generator) -> np.ndarray:
    """The training augmentation of one sampled clip: TSN's multi-scale crop, then a flip with probability 1/2.

    Shared by decoding (``make_views``) and the decode-once cache, which stores the resized frames and draws
    the crop and flip when it reads them; the draws come after the sampling's from the same generator.

    Args:
        clip: uint8 (K, T, H, W, 3), the sampled frames resized to ``config.short_side``.
        config: Transform settings (``crop_size``, ``scales``, ``max_distort``, ``flip``).
        rng: The video's generator for this epoch, already used for sampling.

    Returns:
        uint8 (K, T, S, S, 3) with S = ``config.crop_size``.
    """
    clip = transforms.random_scale_crop(clip, config.crop_size, rng, config.scales, config.max_distort)
    if config.flip and rng.random() < 0.5:
        clip = transforms.hflip(clip)
    return clip


def decode_views(
    uri: str,
    index: VideoIndex,
    config: ClipConfig,
    rng: np.random.Generator | None,
    *,
    data: bytes | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample, decode and transform the clips of one video: what every row of the clip dataset comes from.

    Raises:
        pipeline.video.decode.VideoDecodeError: the video cannot be read or returned too few frames.

    Returns:
        ``(views, indices)``: uint8 (V, K, T, S, S, 3) (see ``make_views``) and the int64 (C, K, T) frame
        indices they were taken from.
    """

    indices = sample_indices(index.num_frames, config, rng)  # (C, K, T)
    unique, inverse = sampling.unique_frames(indices)  # sorted, de-duplicated: the reader seeks forward only
    frames = read_frames(uri, unique, index=index, data=data)  # (U, H, W, 3)
    if frames.shape[0] != len(unique):
        raise VideoDecodeError(uri, f"decoder returned {frames.shape[0]} frames, {len(unique)} requested")
    return make_views(frames, inverse, config, rng), indices


def decode_samplings(
    uri: str, index: VideoIndex, config: ClipConfig, rngs: list[np.random.Generator]
) -> tuple[np.ndarray, np.ndarray]:
    """The training samplings of several epochs of one video, decoded in one pass and resized, not cropped.

    What the decode-once cache stores: sampling ``n`` is ``sample_indices`` with ``rngs[n]``, so with the epoch's
    generator (``sampling.clip_rng``) it is the sampling that decoding draws in that epoch; ``train_view`` with the
    same generator then gives the epoch's clip exactly. The frames of all samplings are read together (sorted,
    de-duplicated) and each distinct frame is resized once.

    Raises:
        pipeline.video.decode.VideoDecodeError: the video cannot be read or returned too few frames.

    Returns:
        ``(clips, indices)``: uint8 (N, K, T, H, W, 3), frames resized to ``config.short_side``, and the int64
        (N, 1, K, T) frame indices they were taken from (N = ``len(rngs)``).
    """
    if not config.train:
        raise ValueError("decode_samplings samples training clips (ClipConfig.train=True)")
    indices = np.stack([sample_indices(index.num_frames, config, rng) for rng in rngs])  # (N, 1, K, T)
    unique, inverse = sampling.unique_frames(indices)
    frames = read_frames(uri, unique, index=index)  # (U, H, W, 3)
    if frames.shape[0] != len(unique):
        raise VideoDecodeError(uri, f"decoder returned {frames.shape[0]} frames, {len(unique)} requested")
    if config.short_side is not None:
        frames = transforms.resize_short_side(frames, config.short_side)
    return frames[inverse[:, 0]], indices  # (N, K, T, H, W, 3)


def frame_times_of(index: VideoIndex) -> np.ndarray:
    """Seconds of every frame of a video, from the first frame (what clip labels are computed from).

    Timestamps where they index frames (methods "seek" and "decord": ``sampling.frame_times``). A "sequential"
    file's stored timestamps are the decoder's, possibly out of order, duplicated or frame positions
    (``VideoIndex.pts``), so there frame i is at ``i / fps``.

    Returns:
        float64 (num_frames,).
    """
    if index.method == SEQUENTIAL:
        return np.arange(index.num_frames, dtype=np.float64) / index.fps
    return sampling.frame_times(index.pts, index.time_base)


def view_labels(
    indices: np.ndarray,
    index: VideoIndex,
    config: ClipConfig,
    video_labels: list[int],
    segments: list[tuple[int, float, float]],
) -> list[list[int]]:
    """The classes of every view of one multi-label video.

    Args:
        indices: int64 (C, K, T), the frame indices its views were taken from (``decode_views``).
        index: The video's frame index (frame timestamps).
        config: Sampling settings: TSN clips span the whole video, dense clips a few seconds.
        video_labels: The video's classes (manifest ``labels``).
        segments: Its actions, ``(class, start, end)`` in seconds (manifest ``segments``).

    Returns:
        ``config.num_views`` sorted class lists: ``video_labels`` for every view with TSN sampling; with dense
        sampling the classes whose segments overlap the view's temporal clip (``sampling.clip_labels``).
    """
    if config.sampling == "tsn":
        return [list(video_labels)] * config.num_views
    times = frame_times_of(index)
    per_clip = [sampling.clip_labels(clip, times, segments) for clip in indices]  # (C,)
    return [per_clip[sampling.view_to_clip_crop(v, config.test_crops)[0]] for v in range(config.num_views)]


# --- the batch function ------------------------------------------------------------------------------------------
class VideoRow(NamedTuple):
    """One manifest row as a decode task sees it."""

    video_id: str
    uri: str
    num_frames: int
    frame_index: bytes | None
    label: int | list[int] | None  # int (single-label) or class list (multi-label)
    segments: list[tuple[int, float, float]] | None  # (class, start, end) in seconds; None for single-label


def video_rows(batch: pa.Table, num_classes: int | None) -> list[VideoRow]:
    """The rows of a block of manifest rows (the columns ``build_clip_dataset`` keeps)."""
    multi_label = num_classes is not None
    if multi_label:
        segments = [
            [(s["label"], s["start"], s["end"]) for s in row or []]
            for row in batch.column(schema.SEGMENTS).to_pylist()
        ]
    else:
        segments = [None] * batch.num_rows
    label_column = schema.LABELS if multi_label else schema.LABEL
    # A video list to predict (``pipeline.data.video_list``) has no label column.
    labels = (
        batch.column(label_column).to_pylist()
        if label_column in batch.column_names
        else [None] * batch.num_rows
    )
    return [
        VideoRow(*fields)
        for fields in zip(
            batch.column(schema.VIDEO_ID).to_pylist(),
            batch.column(schema.VIDEO_URI).to_pylist(),
            batch.column(schema.NUM_FRAMES).to_pylist(),
            batch.column(schema.FRAME_INDEX).to_pylist(),
            labels,
            segments,
            strict=True,
        )
    ]


def video_index_of(row: VideoRow) -> VideoIndex:
    """The frame index a manifest row carries.

    Raises:
        pipeline.video.decode.VideoDecodeError: the row has no index, or its frame count disagrees with it.
    """
    if not row.frame_index:
        raise VideoDecodeError(row.uri, "the manifest gives no frame index")
    index = index_from_bytes(row.uri, row.frame_index)
    if row.num_frames != index.num_frames:  # an edited or stale manifest: its row and its index disagree
        raise VideoDecodeError(
            row.uri,
            f"the manifest row says {row.num_frames} frames, its frame index {index.num_frames} frames",
        )
    return index


def decode_failure(
    row: VideoRow, error: Exception, config: ClipConfig, epoch: int
) -> tuple[str, str, str, int]:
    """The ledger record of a video that could not be decoded (raises instead when ``config.strict``)."""
    reason = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
    if config.strict:
        raise RuntimeError(f"video {row.video_id} ({row.uri}) could not be decoded: {reason}") from error
    logger.warning("dropping video %s (%s): %s", row.video_id, row.uri, reason)
    return row.video_id, row.uri, reason, epoch


def decode_clip_batch(
    batch: pa.Table,
    *,
    config: ClipConfig,
    epoch: int | None,
    num_classes: int | None,
    ledger,
    key: str,
    index_unindexed: bool = False,
) -> dict[str, np.ndarray]:
    """Decode the clips of a batch of manifest rows (Ray Data ``map_batches`` function).

    Args:
        batch: Manifest rows (``schema.VIDEO_ID``, ``VIDEO_URI``, ``NUM_FRAMES``, ``FRAME_INDEX``, the label column
            and, for multi-label manifests, ``SEGMENTS``). Rows of a video list (``pipeline.data.video_list``)
            have no label column: the batch then has none either.
        config: Clip settings.
        epoch: The training epoch, or None to take each video's epoch from its decode count in the ledger.
        num_classes: Classes of a multi-label manifest (None for single-label).
        ledger: The decode ledger actor.
        key: This dataset's key in the ledger.
        index_unindexed: Index a row without a frame index from the file (by demuxing, ``index_video``: the bytes
            are read once for the index and the frames) instead of failing it: a listed video, not a prepared one.

    Returns:
        The clip batch of ``pipeline.schema``: one row per view of every video that decoded; videos that failed
        are absent (recorded in the ledger, or raised when ``config.strict``).
    """
    import ray

    rows = video_rows(batch, num_classes)
    multi_label = num_classes is not None
    labelled = multi_label or schema.LABEL in batch.column_names  # a video list to predict has no labels
    if not config.train:
        epochs = [0] * len(rows)
    elif epoch is None:
        epochs = ray.get(ledger.next_epochs.remote(key, [row.video_id for row in rows]))
    else:
        epochs = [epoch] * len(rows)

    frames, out_labels, out_ids, out_views, failures = [], [], [], [], []
    for row, video_epoch in zip(rows, epochs, strict=True):
        rng = sampling.clip_rng(config.seed, video_epoch, row.video_id) if config.train else None
        try:
            data = None
            if not row.frame_index and index_unindexed:
                # A listed video (batch prediction): its bytes are read once, to index it and to decode.
                data = read_video_bytes(row.uri)
                index = index_video(row.uri, data=data)
            else:
                index = video_index_of(row)
            views, indices = decode_views(row.uri, index, config, rng, data=data)
        except Exception as e:  # noqa: BLE001 - whatever one video does (decoder, store, transform) stays with it
            failures.append(decode_failure(row, e, config, video_epoch))
            continue
        frames.append(views)  # (V, K, T, S, S, 3)
        out_ids += [row.video_id] * len(views)
        out_views += list(range(len(views)))
        if not labelled:
            continue
        if multi_label:
            label_sets = view_labels(indices, index, config, row.label or [], row.segments)
            out_labels += [
                label_value(labels_of_view, num_classes, row.video_id) for labels_of_view in label_sets
            ]
        else:
            out_labels += [label_value(row.label, num_classes, row.video_id)] * len(views)
    if failures:
        ray.get(ledger.record.remote(key, failures))  # synchronous: recorded before this batch is delivered

    k, t = config.num_segments, config.frames_per_segment
    s = config.crop_size or 0
    out = {
        schema.FRAMES: np.concatenate(frames) if frames else np.zeros((0, k, t, s, s, 3), dtype=np.uint8),
        schema.VIDEO_ID: np.array(out_ids, dtype=object),
        schema.VIEW: np.array(out_views, dtype=np.int32),
    }
    if multi_label:
        out[schema.LABELS] = (
            np.stack(out_labels) if out_labels else np.zeros((0, num_classes), dtype=np.float32)
        )
    elif labelled:
        out[schema.LABEL] = np.array(out_labels, dtype=np.int64)
    return out


def label_value(label, num_classes: int | None, video_id: str):
    """A row's label: the int itself (single-label), or float32 (num_classes,) multi-hot."""
    if num_classes is None:
        return int(label)
    hot = np.zeros(num_classes, dtype=np.float32)
    indices = np.asarray(label or [], dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= num_classes):
        raise ValueError(f"manifest row {video_id}: labels {indices.tolist()} outside [0, {num_classes})")
    hot[indices] = 1.0
    return hot


def _check_one_frame_size(table: pa.Table) -> None:
    """``crop_size=None`` keeps each video's frame size; a batch's ``frames`` column has one shape, so the
    manifest's videos must share one size (refused here, before any decoding, rather than failing a decode block
    on a numpy concatenation that names no video)."""
    widths, heights = table.column(schema.WIDTH).to_pylist(), table.column(schema.HEIGHT).to_pylist()
    sizes = sorted(set(zip(widths, heights, strict=True)))
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sizes[:4]) + (" ..." if len(sizes) > 4 else "")
        raise ValueError(
            f"ClipConfig(crop_size=None) keeps each video's frame size, but the manifest's videos come in "
            f"{len(sizes)} sizes ({shown}): clips of different sizes cannot share a batch. Set crop_size "
            "(for example crop_size=short_side, a centre crop), or give the videos one size"
        )


def _check_segments_give_labels(table: pa.Table) -> None:
    """Dense multi-label clips take their classes from ``segments``; a row whose ``labels`` are not exactly the
    classes of its segments (a manifest made elsewhere, or without segments) would silently train on other labels
    than its video-level ones, so it is refused before decoding."""
    if schema.SEGMENTS not in table.column_names:
        raise ValueError(
            f"ClipConfig(sampling='dense') labels multi-label clips from the manifest's {schema.SEGMENTS!r} "
            "column, which this manifest lacks: prepare it again (stpa prepare) or use sampling='tsn'"
        )
    rows = zip(
        table.column(schema.VIDEO_ID).to_pylist(),
        table.column(schema.LABELS).to_pylist(),
        table.column(schema.SEGMENTS).to_pylist(),
        strict=True,
    )
    for video_id, labels, segments in rows:
        from_segments = sorted({s["label"] for s in segments or []})
        if sorted(set(labels or [])) != from_segments:
            raise ValueError(
                f"manifest row {video_id}: labels {sorted(set(labels or []))} but its segments give "
                f"{from_segments}; dense clips are labelled from the segments, so they must agree "
                "(use sampling='tsn' for video-level labels)"
            )


# --- the dataset -------------------------------------------------------------------------------------------------
def build_clip_dataset(
    manifest: str | pa.Table,
    config: ClipConfig,
    *,
    epoch: int | None = None,
    report: DecodeReport | None = None,
    video_list: bool = False,
) -> ray.data.Dataset:
    """A Ray Dataset of decoded clips (the clip batch of ``pipeline.schema``), one row per video and view.

    The manifest is small (one row per video): the calling process reads it, keeps the columns decoding needs,
    (in training) shuffles its rows, and slices it into blocks of ``decode_batch_size`` rows, so every decode
    task gets exactly one block and the CPUs stay evenly loaded to the last batch.

    Args:
        manifest: Manifest Parquet URI (any fsspec URI) or an Arrow table with the manifest's columns and schema
            metadata (class names are needed for multi-label manifests).
        config: Clip settings.
        epoch: Training epoch (see the module docstring); None lets each pass over the dataset be the next epoch.
        report: Where decode failures are reported (``DecodeReport.new()``); without one they are still dropped,
            logged by the workers and recorded under a private key.
        video_list: The rows are a list of videos to predict (``pipeline.data.video_list``), not a prepared
            manifest: no label columns (the clips have none), and a row without a frame index is indexed by the
            task that decodes it (``decode_clip_batch``'s ``index_unindexed``).

    Returns:
        A lazy ``ray.data.Dataset``; iterate it with ``iter_batches(batch_format="numpy")`` or
        ``iter_torch_batches``. Rows: ``frames`` uint8 (K, T, S, S, 3), ``label`` int64 or ``labels`` float32
        (num_classes,) (dense multi-label clips: from the segments, see the module docstring), ``video_id`` str,
        ``view`` int32.

    Raises:
        ValueError: With dense sampling of a multi-label manifest, a row whose ``labels`` are not the classes of
            its ``segments`` (or no ``segments`` column).
    """
    return decode_manifest(
        manifest, config, decode_clip_batch, epoch=epoch, report=report, video_list=video_list
    )


def decode_manifest(
    manifest: str | pa.Table,
    config: ClipConfig,
    batch_fn: Callable[..., dict[str, np.ndarray] | pa.Table],
    *,
    epoch: int | None = None,
    report: DecodeReport | None = None,
    video_list: bool = False,
) -> ray.data.Dataset:
    """The manifest's rows in blocks of ``decode_batch_size``, mapped by ``batch_fn`` on the cluster's CPUs.

    What ``build_clip_dataset`` does with ``decode_clip_batch``; the decode-once cache maps its own batch function
    over the same blocks. ``batch_fn(block, config=, epoch=, num_classes=, ledger=, key=)`` gets a pyarrow table
    of manifest rows (``video_rows`` reads it); with ``video_list`` (as ``build_clip_dataset``) also
    ``index_unindexed=True``.

    Raises:
        ValueError: As ``build_clip_dataset``.
    """
    import ray

    if epoch is not None and epoch < 0:
        raise ValueError(f"epoch must be >= 0 or None, got {epoch}")
    if not ray.is_initialized():
        ray.init()  # what Ray Data does on first use; needed earlier here for the ledger and the CPU count
    table = manifest_table(manifest, labelled=not video_list)
    if video_list:  # labels, if the list came from a manifest, are not the prediction's business
        table = table.drop_columns([c for c in (schema.LABEL, schema.LABELS) if c in table.column_names])
    if config.crop_size is None:
        _check_one_frame_size(table)
    multi_label = schema.LABELS in table.column_names
    num_classes = len(schema.class_names_of(table.schema)) if multi_label else None
    if multi_label and config.sampling == "dense":
        _check_segments_give_labels(table)
    if video_list:
        label_columns = []  # dropped above
    elif multi_label:
        label_columns = [schema.LABELS, schema.SEGMENTS]
    else:
        label_columns = [schema.LABEL]
    if (
        multi_label and schema.SEGMENTS not in table.column_names
    ):  # TSN: segments unused, but one batch layout
        table = table.append_column(schema.SEGMENTS, pa.nulls(table.num_rows, pa.list_(schema.SEGMENT_TYPE)))
    table = table.select(
        [schema.VIDEO_ID, schema.VIDEO_URI, schema.NUM_FRAMES, schema.FRAME_INDEX, *label_columns]
    )
    if config.train:
        # Manifests list videos class by class; a block (and so a batch) of consecutive rows would hold one class.
        # With a fixed epoch, the order is drawn per epoch; with epoch=None (one dataset re-iterated by Ray Train),
        # it is drawn once and the block order is randomised per pass below (the training loop adds a local
        # shuffle buffer so rows also move between blocks).
        stream = [config.seed] if epoch is None else [config.seed, epoch]
        order = np.random.default_rng(stream).permutation(table.num_rows)
        table = table.take(pa.array(order))
    num_decoders = config.num_decoders or max(1, int(ray.cluster_resources().get("CPU", 1)))
    size = config.decode_batch_size or auto_decode_batch_size(table.num_rows, num_decoders, config.num_views)
    blocks = [table.slice(i, size) for i in range(0, table.num_rows, size)] or [table]
    report = report or DecodeReport.new()

    ds = ray.data.from_arrow(blocks)
    if config.train and epoch is None:
        seed = ray.data.RandomSeedConfig(seed=config.seed, reseed_after_execution=True)
        ds = ds.randomize_block_order(seed=seed)
    ds = ds.map_batches(
        batch_fn,
        batch_size=size,
        batch_format="pyarrow",
        fn_kwargs={
            "config": config,
            "epoch": epoch,
            "num_classes": num_classes,
            "ledger": report.ledger,
            "key": report.key,
            **({"index_unindexed": True} if video_list else {}),
        },
        num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=min(len(blocks), num_decoders)),
    )
    tune_context(ds.context)
    return ds


def tune_context(context: ray.data.DataContext) -> None:
    """Ray Data settings of a clip dataset (its own context: the process-wide one is left alone).

    Measured here with 2 CPUs: the operator resource reservation held the single decode operator to about 1.3
    concurrent tasks of 2 (eight 0.5 s tasks took 3.1 s instead of 2.0 s; 2.2 s without it), and the per-task
    memory poller reads ``/proc/<pid>/smaps`` of a worker that holds torch and decord. Decoding is the only heavy
    operator, so neither buys anything here. Rows need no order.
    """
    context.op_resource_reservation_enabled = False
    context.memory_usage_poll_interval_s = None
    context.execution_options.preserve_order = False
