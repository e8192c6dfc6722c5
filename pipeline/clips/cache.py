"""Decode-once cache: decoded frames materialised to Parquet on storage, so later epochs and runs read Arrow.

Decoding dominates the cost of the clip pipeline. ``cached_clip_dataset`` returns the same rows as
``pipeline.clips.dataset.build_clip_dataset`` (the clip batch of ``pipeline.schema``), read from
``<cache_root>/<key>/`` when that entry is committed, and decoded and written there first when it is not.

What is cached:
    * test mode: every view of every decodable video, cropped (test clips are deterministic);
    * training: ``ClipConfig.cache_samplings`` (N) temporal samplings of every video, stored as the sampled frames
      resized to ``short_side`` and *not* cropped. Sampling ``n`` is the one decoding draws in epoch ``n``
      (``dataset.decode_samplings``). Epoch ``e`` reads sampling ``e % N`` and draws its own multi-scale crop and
      flip from the epoch's generator (``sampling.clip_rng(seed, e, video_id)``, after replaying the sampling's
      draws), with the function decoding uses (``dataset.train_view``). So epochs ``0 .. N-1`` give exactly the
      clips that decoding gives, and every later epoch a new crop and flip of one of the N samplings: the
      augmentation is kept, only the temporal samplings repeat.

Epochs when reading a training entry follow ``build_clip_dataset``: ``epoch=<int>`` for a dataset per epoch, or
``epoch=None`` (a dataset that Ray Train iterates once per epoch) where each video's n-th read is epoch n, counted
in the decode ledger.

The key is the SHA-256 of: a cache format version, the manifest's fingerprint (SHA-256 of the Arrow IPC stream
of the whole manifest table, schema metadata included: any changed row, URI, frame count, decode method, label
or class list changes it) and the fields of ``ClipConfig`` that decide pixels (``ClipConfig.sampling_key``: not
batch size, concurrency or strictness; ``cache_samplings`` in training). A changed config or manifest therefore
never reads a stale entry. Files replaced in place under the same URI are not detected: rebuild the manifest (or
clear the cache) when videos change.

Layout of an entry: ``<key>/data/*.parquet`` (written by Ray Data in parallel, row groups of
``ROWS_PER_GROUP``) and ``<key>/_SUCCESS``, a JSON file written last with the key's inputs, the clip shape, the
row count and the decode failures of the build. An entry without ``_SUCCESS`` is incomplete and is rebuilt. The
cache root must be storage every Ray node can reach (a shared disk or an object store, not ``memory://``).

Storage format, uncompressed, without dictionary or statistics (reading a value is a copy of its bytes; Ray Data's
own tensor columns are Parquet lists of uint8, which decode one element at a time, about 20x slower here):
    * test entries: one row per view; ``frames`` one ``fixed_size_binary`` value (the C-order bytes of the view's
      uint8 ``(K, T, S, S, 3)``), ``video_id``, ``view``, ``label`` int64 or ``labels`` ``fixed_size_list<float>``;
    * training entries: one row per video; ``frames_<n>`` (n < N) one ``large_binary`` value each (the bytes of
      sampling n's uint8 ``(K, T, H, W, 3)``), ``height`` and ``width`` (the resized frame size), ``num_frames``
      (to replay the sampling's draws), ``video_id``, and ``label`` int64 or ``labels_<n>`` multi-hot per sampling
      (dense clips take the classes of the segments their sampling overlaps). A read fetches only the columns of
      the samplings it needs (one per pass).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from pipeline import schema, storage
from pipeline.clips.dataset import (
    ClipConfig,
    decode_clip_batch,
    decode_failure,
    decode_manifest,
    decode_samplings,
    label_value,
    sample_indices,
    train_view,
    tune_context,
    video_index_of,
    video_rows,
    view_labels,
)
from pipeline.clips.ledger import DecodeFailure, DecodeReport
from pipeline.data.manifest import manifest_table
from pipeline.video import sampling

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

# Bump when the stored layout or what a row holds changes. 3: dense multi-label clips carry the classes of the
# action segments they overlap. 4: training entries hold N uncropped samplings per video (crop and flip on read).
CACHE_VERSION = 4
SUCCESS_FILE = "_SUCCESS"
DATA_DIR = "data"
ROWS_PER_GROUP = 16  # Parquet row group: the unit a read task streams (16 test views, or 16 training videos)
GROUPS_PER_TASK = 4  # at most this many row groups per read task (amortises Ray's per-task cost)
HEIGHT, WIDTH = "height", "width"  # training entries: frame size after the short-side resize


def frames_column(slot: int) -> str:
    """Training entries: the column of sampling ``slot``'s frames."""
    return f"{schema.FRAMES}_{slot}"


def labels_column(slot: int) -> str:
    """Training entries of multi-label manifests: the column of sampling ``slot``'s multi-hot labels."""
    return f"{schema.LABELS}_{slot}"


@dataclass(frozen=True)
class CacheEntry:
    """A committed cache entry."""

    uri: str  # folder of the entry
    key: str
    hit: bool  # True when it was already committed; False when this call decoded and wrote it
    num_rows: int  # test: views; training: videos
    frames_shape: tuple[int, ...]  # (K, T, S, S, 3) of every clip read from it
    failures: tuple[DecodeFailure, ...]  # decode failures of the build that wrote it
    num_samplings: int  # training: samplings per video (ClipConfig.cache_samplings); test: 1

    @property
    def data_uri(self) -> str:
        return storage.join(self.uri, DATA_DIR)


def manifest_fingerprint(table: pa.Table) -> str:
    """SHA-256 of a manifest table's content and schema (metadata included)."""
    sink = pa.BufferOutputStream()
    combined = table.combine_chunks()
    with pa.ipc.new_stream(sink, combined.schema) as writer:
        writer.write_table(combined)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def cache_key(table: pa.Table, config: ClipConfig) -> tuple[str, dict]:
    """The key of an entry and the inputs it hashes (see the module docstring)."""
    inputs = {
        "version": CACHE_VERSION,
        "manifest": manifest_fingerprint(table),
        "clips": config.sampling_key(),
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return digest[:32], inputs


def clip_shape(config: ClipConfig) -> tuple[int, ...]:
    """``(K, T, S, S, 3)`` of every clip of ``config``; the cache needs a fixed crop size."""
    if config.crop_size is None:
        raise ValueError("the clip cache needs ClipConfig.crop_size (clips of one fixed size)")
    return (config.num_segments, config.frames_per_segment, config.crop_size, config.crop_size, 3)


def _pyarrow_filesystem(uri: str):
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = storage.filesystem(uri)
    return PyFileSystem(FSSpecHandler(fs)), path


# --- writing -----------------------------------------------------------------------------------------------------
def materialize_clips(manifest: str | pa.Table, config: ClipConfig, cache_root: str) -> CacheEntry:
    """Decode the clips of a manifest once into ``cache_root`` (a no-op when the entry is committed).

    Args:
        manifest: Manifest URI or table (as for ``build_clip_dataset``).
        config: Clip settings (training: ``cache_samplings`` samplings per video are stored).
        cache_root: Folder URI holding cache entries.

    Returns:
        The committed entry.

    Raises:
        ValueError: ``config.crop_size`` is None (before anything is decoded).
    """
    table = manifest_table(manifest)
    shape = clip_shape(config)  # fail before decoding anything
    num_samplings = config.cache_samplings if config.train else 1
    key, inputs = cache_key(table, config)
    entry_uri = storage.join(cache_root, key)
    marker = storage.join(entry_uri, SUCCESS_FILE)
    if storage.exists(marker):
        info = json.loads(storage.read_text(marker))
        failures = tuple(DecodeFailure(**f) for f in info["failures"])
        return CacheEntry(
            entry_uri, key, True, int(info["num_rows"]), tuple(info["frames_shape"]), failures, num_samplings
        )

    fs, path = storage.filesystem(entry_uri)
    if fs.exists(path):  # an interrupted build: start over
        fs.rm(path, recursive=True)
    report = DecodeReport.new()
    batch_fn = _decode_training_rows if config.train else _decode_test_rows
    dataset = decode_manifest(table, config, batch_fn, epoch=0, report=report)
    pa_fs, data_path = _pyarrow_filesystem(storage.join(entry_uri, DATA_DIR))
    dataset.write_parquet(
        data_path,
        filesystem=pa_fs,
        min_rows_per_file=4 * ROWS_PER_GROUP,
        row_group_size=ROWS_PER_GROUP,
        compression="none",
        use_dictionary=False,
        write_statistics=False,
    )
    num_rows = sum(groups.num_rows for groups in _row_groups(storage.join(entry_uri, DATA_DIR)))
    failures = tuple(report.failures)
    info = {
        "key": key,
        "inputs": inputs,
        "num_rows": num_rows,
        "frames_shape": list(shape),
        "num_samplings": num_samplings,
        "failures": [f.__dict__ for f in failures],
    }
    storage.write_text(marker, json.dumps(info, indent=1))
    logger.info("clip cache %s: wrote %d rows (%d decode failures)", entry_uri, num_rows, len(failures))
    return CacheEntry(entry_uri, key, False, num_rows, shape, failures, num_samplings)


def _decode_test_rows(batch: pa.Table, **kwargs) -> pa.Table:
    """Ray Data batch function: test views decoded as the pipeline does, in the test entry's layout."""
    clips = decode_clip_batch(batch, **kwargs)
    frames = np.ascontiguousarray(clips[schema.FRAMES])  # (B, K, T, S, S, 3)
    num_rows, row_bytes = len(frames), int(np.prod(frames.shape[1:]))
    columns = {
        schema.FRAMES: pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(row_bytes), num_rows, [None, pa.py_buffer(frames)]
        ),
        schema.VIDEO_ID: pa.array(clips[schema.VIDEO_ID].tolist(), pa.string()),
        schema.VIEW: pa.array(clips[schema.VIEW], pa.int32()),
    }
    if schema.LABELS in clips:
        columns[schema.LABELS] = _multi_hot_array(clips[schema.LABELS])
    else:
        columns[schema.LABEL] = pa.array(clips[schema.LABEL], pa.int64())
    return pa.table(columns)


def _decode_training_rows(
    batch: pa.Table, *, config: ClipConfig, epoch: int | None, num_classes: int | None, ledger, key: str
) -> pa.Table:
    """Ray Data batch function: every video's ``cache_samplings`` training samplings, resized and uncropped."""
    import ray

    del epoch  # samplings 0 .. N-1 are those of epochs 0 .. N-1, whatever pass this is
    num_samplings = config.cache_samplings
    ids, num_frames, heights, widths, labels, failures = [], [], [], [], [], []
    frames: list[list[np.ndarray]] = [[] for _ in range(num_samplings)]
    sampling_labels: list[list[np.ndarray]] = [[] for _ in range(num_samplings)]
    for row in video_rows(batch, num_classes):
        rngs = [sampling.clip_rng(config.seed, n, row.video_id) for n in range(num_samplings)]
        try:
            index = video_index_of(row)
            clips, indices = decode_samplings(
                row.uri, index, config, rngs
            )  # (N, K, T, H, W, 3), (N, 1, K, T)
        except Exception as e:  # noqa: BLE001 - whatever one video does stays with it (as in decoding)
            failures.append(decode_failure(row, e, config, 0))
            continue
        ids.append(row.video_id)
        num_frames.append(row.num_frames)
        heights.append(clips.shape[-3])
        widths.append(clips.shape[-2])
        for n in range(num_samplings):
            frames[n].append(clips[n])
            if num_classes is not None:
                (classes,) = view_labels(indices[n], index, config, row.label or [], row.segments)
                sampling_labels[n].append(label_value(classes, num_classes, row.video_id))
        if num_classes is None:
            labels.append(label_value(row.label, None, row.video_id))
    if failures:
        ray.get(ledger.record.remote(key, failures))

    columns = {
        schema.VIDEO_ID: pa.array(ids, pa.string()),
        schema.NUM_FRAMES: pa.array(num_frames, pa.int64()),
        HEIGHT: pa.array(heights, pa.int32()),
        WIDTH: pa.array(widths, pa.int32()),
    }
    for n in range(num_samplings):
        columns[frames_column(n)] = _binary_array(frames[n])
    if num_classes is None:
        columns[schema.LABEL] = pa.array(labels, pa.int64())
    else:
        for n in range(num_samplings):
            hot = np.stack(sampling_labels[n]) if ids else np.zeros((0, num_classes), np.float32)
            columns[labels_column(n)] = _multi_hot_array(hot)
    return pa.table(columns)


def _binary_array(arrays: list[np.ndarray]) -> pa.Array:
    """One ``large_binary`` value per array (its C-order bytes), built from one buffer."""
    sizes = np.array([a.nbytes for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # (n + 1,)
    data = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0, np.uint8)
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(arrays), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _multi_hot_array(labels: np.ndarray) -> pa.Array:
    """float32 (B, C) -> ``fixed_size_list<float>`` of size C."""
    labels = np.ascontiguousarray(labels, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(labels.ravel()), labels.shape[1])


# --- reading -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _FileGroups:
    path: str
    num_groups: int
    num_rows: int
    columns: tuple[str, ...]


def _row_groups(data_uri: str) -> list[_FileGroups]:
    """Every Parquet file of an entry with its row-group count (footers only)."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(data_uri)
    files = sorted(f for f in fs.find(path) if f.endswith(".parquet"))
    out = []
    for f in files:
        with fs.open(f, "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
        out.append(
            _FileGroups(
                f, metadata.num_row_groups, metadata.num_rows, tuple(metadata.schema.to_arrow_schema().names)
            )
        )
    return out


def _open_parquet(fs, path: str):
    import pyarrow.parquet as pq
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return pq.ParquetFile(path, memory_map=True)  # Arrow's own reader: several times cheaper here
    return pq.ParquetFile(fs.open(path, "rb"))  # ranged reads: the footer, then the wanted column chunks


def _binary_values(column: pa.ChunkedArray) -> list[np.ndarray]:
    """The values of a ``large_binary`` column as uint8 arrays viewing Arrow's buffers (no copy)."""
    values = []
    for chunk in column.chunks:
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int64)[
            chunk.offset : chunk.offset + len(chunk) + 1
        ]
        data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)
        values += [data[offsets[i] : offsets[i + 1]] for i in range(len(chunk))]
    return values


def _read_test_groups(
    batch: pa.Table, *, fs, frames_shape: tuple[int, ...]
) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data ``map_batches`` generator: the test views stored in the row groups named in ``batch``."""
    for path, group in zip(batch.column("path").to_pylist(), batch.column("group").to_pylist(), strict=True):
        table = _open_parquet(fs, path).read_row_group(group)
        num_rows = table.num_rows
        frames = table.column(schema.FRAMES).combine_chunks()
        row_bytes = int(np.prod(frames_shape))
        data = np.frombuffer(frames.buffers()[1], dtype=np.uint8)
        start = frames.offset * row_bytes
        out = {
            schema.FRAMES: data[start : start + num_rows * row_bytes].reshape(num_rows, *frames_shape),
            schema.VIDEO_ID: np.array(table.column(schema.VIDEO_ID).to_pylist(), dtype=object),
            schema.VIEW: table.column(schema.VIEW).to_numpy(),
        }
        if schema.LABELS in table.column_names:
            labels = table.column(schema.LABELS).combine_chunks()
            out[schema.LABELS] = labels.flatten().to_numpy().reshape(num_rows, labels.type.list_size)
        else:
            out[schema.LABEL] = table.column(schema.LABEL).to_numpy()
        yield out


def _read_training_groups(
    batch: pa.Table,
    *,
    fs,
    config: ClipConfig,
    num_samplings: int,
    multi_label: bool,
    epoch: int | None,
    ledger,
    key: str,
) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data ``map_batches`` generator: the training clips of the row groups named in ``batch``.

    Per row group: the ids (and frame counts, sizes, labels) first, then each video's epoch (``epoch`` or the
    ledger's count), then only the frame columns of the samplings those epochs read; each clip is the sampling's
    frames through ``train_view`` with the epoch's generator.
    """
    import ray

    k, t, s = config.num_segments, config.frames_per_segment, config.crop_size
    for path, group in zip(batch.column("path").to_pylist(), batch.column("group").to_pylist(), strict=True):
        parquet = _open_parquet(fs, path)
        meta_columns = [schema.VIDEO_ID, schema.NUM_FRAMES, HEIGHT, WIDTH] + (
            [] if multi_label else [schema.LABEL]
        )
        meta = parquet.read_row_group(group, columns=meta_columns)
        ids = meta.column(schema.VIDEO_ID).to_pylist()
        epochs = ray.get(ledger.next_epochs.remote(key, ids)) if epoch is None else [epoch] * len(ids)
        slots = sorted({e % num_samplings for e in epochs})
        wanted = [frames_column(n) for n in slots] + (
            [labels_column(n) for n in slots] if multi_label else []
        )
        stored = parquet.read_row_group(group, columns=wanted)
        frames = {n: _binary_values(stored.column(frames_column(n))) for n in slots}
        if multi_label:
            hot = {n: stored.column(labels_column(n)).combine_chunks() for n in slots}
            hot = {n: a.flatten().to_numpy().reshape(len(a), a.type.list_size) for n, a in hot.items()}
        num_frames = meta.column(schema.NUM_FRAMES).to_pylist()
        heights, widths = meta.column(HEIGHT).to_pylist(), meta.column(WIDTH).to_pylist()
        clips = np.empty((len(ids), k, t, s, s, 3), dtype=np.uint8)
        for i, (video_id, video_epoch) in enumerate(zip(ids, epochs, strict=True)):
            rng = sampling.clip_rng(config.seed, video_epoch, video_id)
            # Replay the sampling's draws: the crop's and the flip's come after them.
            sample_indices(num_frames[i], config, rng)
            stored_clip = frames[video_epoch % num_samplings][i].reshape(k, t, heights[i], widths[i], 3)
            clips[i] = train_view(stored_clip, config, rng)  # (K, T, S, S, 3)
        out = {
            schema.FRAMES: clips,
            schema.VIDEO_ID: np.array(ids, dtype=object),
            schema.VIEW: np.zeros(len(ids), dtype=np.int32),
        }
        if multi_label:
            out[schema.LABELS] = np.stack([hot[e % num_samplings][i] for i, e in enumerate(epochs)])
        else:
            out[schema.LABEL] = meta.column(schema.LABEL).to_numpy().astype(np.int64)
        yield out


def read_cached_clips(
    entry: CacheEntry,
    config: ClipConfig,
    *,
    epoch: int | None = None,
    report: DecodeReport | None = None,
) -> ray.data.Dataset:
    """The clips of a committed entry as a Ray Dataset (same columns as the decoding pipeline).

    The calling process lists the entry's row groups (Parquet footers) and Ray Data tasks read them, up to
    ``GROUPS_PER_TASK`` row groups per task, streamed one row group at a time, on as many CPUs as the cluster has.
    (``ray.data.read_parquet`` costs one to two seconds of metadata and size-estimation tasks before the first
    row on this machine: more than reading a test set's clips.)

    Args:
        entry: The entry (``materialize_clips``).
        config: The clip settings it was written with.
        epoch: Training entries: the epoch, or None for each video's next epoch from the ledger (a dataset that
            Ray Train iterates once per epoch). Ignored for test entries.
        report: Training entries with ``epoch=None``: whose ledger key counts the epochs (default: a new one).

    Raises:
        FileNotFoundError: the entry has no data files (every video failed to decode).
    """
    import ray

    groups = _row_groups(entry.data_uri)
    if not groups:
        raise FileNotFoundError(
            f"clip cache entry {entry.uri} has no data files (all videos failed to decode?)"
        )
    listing = pa.table(
        {
            "path": [g.path for g in groups for _ in range(g.num_groups)],
            "group": [i for g in groups for i in range(g.num_groups)],
        }
    )
    num_readers = config.num_decoders or max(1, int(ray.cluster_resources().get("CPU", 1)))
    per_task = min(GROUPS_PER_TASK, max(1, -(-listing.num_rows // (2 * num_readers))))
    blocks = [listing.slice(i, per_task) for i in range(0, listing.num_rows, per_task)]
    fs, _ = storage.filesystem(entry.data_uri)
    ds = ray.data.from_arrow(blocks)
    if config.train:
        report = report or DecodeReport.new()
        if epoch is None:
            seed = ray.data.RandomSeedConfig(seed=config.seed, reseed_after_execution=True)
            ds = ds.randomize_block_order(seed=seed)
        else:
            ds = ds.randomize_block_order(seed=config.seed + epoch)
        fn, fn_kwargs = (
            _read_training_groups,
            {
                "fs": fs,
                "config": config,
                "num_samplings": entry.num_samplings,
                "multi_label": labels_column(0) in groups[0].columns,
                "epoch": epoch,
                "ledger": report.ledger,
                "key": report.key,
            },
        )
    else:
        fn, fn_kwargs = _read_test_groups, {"fs": fs, "frames_shape": entry.frames_shape}
    ds = ds.map_batches(
        fn,
        batch_size=per_task,
        batch_format="pyarrow",
        fn_kwargs=fn_kwargs,
        num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=min(len(blocks), num_readers)),
    )
    tune_context(ds.context)
    return ds


def cached_clip_dataset(
    manifest: str | pa.Table,
    config: ClipConfig,
    cache_root: str,
    *,
    epoch: int | None = None,
    report: DecodeReport | None = None,
) -> tuple[ray.data.Dataset, CacheEntry]:
    """Clips of a manifest read from the decode-once cache (decoded and written first on a miss).

    Args:
        manifest: Manifest URI or table.
        config: Clip settings.
        cache_root: Folder URI of the cache (reachable from every node).
        epoch: Training: the epoch (reads sampling ``epoch % config.cache_samplings``), or None: each pass over
            the dataset is the next epoch of every video. Ignored in test mode.
        report: Where the entry's decode failures are recorded (and, training with ``epoch=None``, the epochs
            counted): the same ``DecodeReport`` a decoding dataset would take.

    Returns:
        ``(dataset, entry)``; ``entry.failures`` lists the videos left out when the entry was decoded.

    Raises:
        ValueError: ``epoch < 0``, or ``config.crop_size`` is None.
    """
    import ray

    if epoch is not None and epoch < 0:
        raise ValueError(f"epoch must be >= 0 or None, got {epoch}")
    if not ray.is_initialized():
        ray.init()
    entry = materialize_clips(manifest, config, cache_root)
    report = report or DecodeReport.new()
    if entry.failures:
        failures = [(f.video_id, f.video_uri, f.reason, f.epoch) for f in entry.failures]
        ray.get(report.ledger.record.remote(report.key, failures))
    return read_cached_clips(entry, config, epoch=epoch, report=report), entry
