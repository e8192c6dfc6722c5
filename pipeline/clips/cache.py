"""Decode-once cache: sampled clips materialised to Parquet on storage, so later epochs and runs read Arrow.

Decoding dominates the cost of the clip pipeline; a test set's views never change, and a training run can trade
augmentation diversity for speed by reusing a few epochs' samples. ``cached_clip_dataset`` returns the same rows
as ``pipeline.clips.dataset.build_clip_dataset`` (the clip batch of ``pipeline.schema``), read from
``<cache_root>/<key>/`` when that entry is committed, and decoded and written there first when it is not.

What is cached:
    * test mode: every view of every decodable video (test clips are deterministic; the epoch is ignored);
    * training: ``num_cached_epochs`` epochs of samples (epochs ``0 .. num_cached_epochs - 1``, each with its own
      random clips and crops); epoch ``e`` reads slot ``e % num_cached_epochs``, so a run sees
      ``num_cached_epochs`` distinct samples of every video and then cycles through them again.

The key is the SHA-256 of: a cache format version, the manifest's fingerprint (SHA-256 of the Arrow IPC stream
of the whole manifest table, schema metadata included: any changed row, URI, frame count, decode method, label
or class list changes it), the fields of ``ClipConfig`` that decide pixels (``ClipConfig.sampling_key``: not batch
size, concurrency or strictness) and, in training, the epoch slot. A changed config or manifest therefore never
reads a stale entry. Files replaced in place under the same URI are not detected: rebuild the manifest (or clear
the cache) when videos change.

Layout of an entry: ``<key>/data/*.parquet`` (written by Ray Data in parallel) and ``<key>/_SUCCESS``, a JSON file
written last with the key's inputs, the clip shape, the row count and the decode failures of the build. An entry
without ``_SUCCESS`` is incomplete and is rebuilt. The cache root must be storage every Ray node can reach (a
shared disk or an object store, not ``memory://``).

Storage format: each clip's frames are one ``fixed_size_binary`` value (the C-order bytes of its uint8
``(K, T, S, S, 3)`` array; the shape is in ``_SUCCESS``), written uncompressed, without dictionary or statistics.
Reading that is a copy of the bytes; Ray Data's own tensor columns are Parquet lists of uint8, which decode one
element at a time (about 20x slower here). Multi-hot labels are a ``fixed_size_list<float>``.
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
from pipeline.clips.dataset import ClipConfig, build_clip_dataset
from pipeline.clips.ledger import DecodeFailure, DecodeReport
from pipeline.data.manifest import manifest_table

if TYPE_CHECKING:
    import ray.data

logger = logging.getLogger(__name__)

# Bump when the stored layout or what a row holds changes. 3: dense multi-label clips carry the classes of the
# action segments they overlap, not the video's labels (pipeline.clips.dataset).
CACHE_VERSION = 3
SUCCESS_FILE = "_SUCCESS"
DATA_DIR = "data"


@dataclass(frozen=True)
class CacheEntry:
    """A committed cache entry."""

    uri: str  # folder of the entry
    key: str
    hit: bool  # True when it was already committed; False when this call decoded and wrote it
    num_rows: int
    frames_shape: tuple[int, ...]  # (K, T, S, S, 3) of every row
    failures: tuple[DecodeFailure, ...]  # decode failures of the build that wrote it

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


def cache_key(table: pa.Table, config: ClipConfig, epoch_slot: int) -> tuple[str, dict]:
    """The key of an entry and the inputs it hashes (see the module docstring)."""
    inputs = {
        "version": CACHE_VERSION,
        "manifest": manifest_fingerprint(table),
        "clips": config.sampling_key(),
        "epoch_slot": epoch_slot if config.train else None,
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return digest[:32], inputs


def _pyarrow_filesystem(uri: str):
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = storage.filesystem(uri)
    return PyFileSystem(FSSpecHandler(fs)), path


def materialize_clips(
    manifest: str | pa.Table, config: ClipConfig, cache_root: str, *, epoch_slot: int = 0
) -> CacheEntry:
    """Decode the clips of a manifest once into ``cache_root`` (a no-op when the entry is committed).

    Args:
        manifest: Manifest URI or table (as for ``build_clip_dataset``).
        config: Clip settings.
        cache_root: Folder URI holding cache entries.
        epoch_slot: Training epoch whose samples are stored (ignored in test mode).

    Returns:
        The committed entry.
    """
    table = manifest_table(manifest)
    clip_shape(config)  # fail before decoding anything
    key, inputs = cache_key(table, config, epoch_slot)
    entry_uri = storage.join(cache_root, key)
    marker = storage.join(entry_uri, SUCCESS_FILE)
    if storage.exists(marker):
        info = json.loads(storage.read_text(marker))
        failures = tuple(DecodeFailure(**f) for f in info["failures"])
        return CacheEntry(entry_uri, key, True, int(info["num_rows"]), tuple(info["frames_shape"]), failures)

    fs, path = storage.filesystem(entry_uri)
    if fs.exists(path):  # an interrupted build: start over
        fs.rm(path, recursive=True)
    report = DecodeReport.new()
    dataset = build_clip_dataset(table, config, epoch=epoch_slot if config.train else 0, report=report)
    pa_fs, data_path = _pyarrow_filesystem(storage.join(entry_uri, DATA_DIR))
    dataset.map_batches(_to_cache_rows, batch_size=None, batch_format="numpy").write_parquet(
        data_path,
        filesystem=pa_fs,
        min_rows_per_file=64,
        compression="none",
        use_dictionary=False,
        write_statistics=False,
    )
    num_rows = _count_rows(storage.join(entry_uri, DATA_DIR))
    failures = tuple(report.failures)
    shape = clip_shape(config)
    info = {
        "key": key,
        "inputs": inputs,
        "num_rows": num_rows,
        "frames_shape": list(shape),
        "failures": [f.__dict__ for f in failures],
    }
    storage.write_text(marker, json.dumps(info, indent=1))
    logger.info("clip cache %s: wrote %d rows (%d decode failures)", entry_uri, num_rows, len(failures))
    return CacheEntry(entry_uri, key, False, num_rows, shape, failures)


def clip_shape(config: ClipConfig) -> tuple[int, ...]:
    """``(K, T, S, S, 3)`` of every clip of ``config``; the cache needs a fixed crop size."""
    if config.crop_size is None:
        raise ValueError("the clip cache needs ClipConfig.crop_size (clips of one fixed size)")
    return (config.num_segments, config.frames_per_segment, config.crop_size, config.crop_size, 3)


def _to_cache_rows(batch: dict[str, np.ndarray]) -> pa.Table:
    """Clip batch -> the cache's Arrow layout (frames as fixed-size binary, see the module docstring)."""
    frames = np.ascontiguousarray(batch[schema.FRAMES])  # (B, K, T, S, S, 3)
    num_rows, row_bytes = len(frames), int(np.prod(frames.shape[1:]))
    columns = {
        schema.FRAMES: pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(row_bytes), num_rows, [None, pa.py_buffer(frames)]
        ),
        schema.VIDEO_ID: pa.array(batch[schema.VIDEO_ID].tolist(), pa.string()),
        schema.VIEW: pa.array(batch[schema.VIEW], pa.int32()),
    }
    if schema.LABELS in batch:
        labels = np.ascontiguousarray(batch[schema.LABELS], dtype=np.float32)  # (B, C)
        columns[schema.LABELS] = pa.FixedSizeListArray.from_arrays(pa.array(labels.ravel()), labels.shape[1])
    else:
        columns[schema.LABEL] = pa.array(batch[schema.LABEL], pa.int64())
    return pa.table(columns)


def _count_rows(data_uri: str) -> int:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(data_uri)
    files = [f for f in fs.find(path) if f.endswith(".parquet")]
    return sum(pq.ParquetFile(fs.open(f, "rb")).metadata.num_rows for f in files)


def _read_parquet_files(
    batch: pa.Table, *, fs, frames_shape: tuple[int, ...], rows_per_batch: int
) -> Iterator[dict[str, np.ndarray]]:
    """Ray Data ``map_batches`` generator: the clip batches stored in the Parquet files named in ``batch``."""
    import pyarrow.parquet as pq
    from fsspec.implementations.local import LocalFileSystem

    for path in batch.column("path").to_pylist():
        if isinstance(fs, LocalFileSystem):
            parquet = pq.ParquetFile(path, memory_map=True)  # Arrow's own reader: several times cheaper here
        else:
            parquet = pq.ParquetFile(pa.BufferReader(fs.cat_file(path)))  # one request, not many small reads
        for record_batch in parquet.iter_batches(batch_size=rows_per_batch):
            yield _from_cache_rows(record_batch, frames_shape)


def _from_cache_rows(record_batch: pa.RecordBatch, frames_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The cache's Arrow layout -> a clip batch (frames viewed in place, no per-element decoding)."""
    num_rows = record_batch.num_rows
    frames = record_batch.column(schema.FRAMES)
    row_bytes = int(np.prod(frames_shape))
    data = np.frombuffer(frames.buffers()[1], dtype=np.uint8)
    start = frames.offset * row_bytes
    out = {
        schema.FRAMES: data[start : start + num_rows * row_bytes].reshape(num_rows, *frames_shape),
        schema.VIDEO_ID: np.array(record_batch.column(schema.VIDEO_ID).to_pylist(), dtype=object),
        schema.VIEW: record_batch.column(schema.VIEW).to_numpy(),
    }
    if schema.LABELS in record_batch.schema.names:
        labels = record_batch.column(schema.LABELS)
        out[schema.LABELS] = labels.flatten().to_numpy().reshape(num_rows, labels.type.list_size)
    else:
        out[schema.LABEL] = record_batch.column(schema.LABEL).to_numpy()
    return out


def read_cached_clips(entry: CacheEntry, *, rows_per_batch: int = 16) -> ray.data.Dataset:
    """The rows of a committed entry as a Ray Dataset (same columns as the decoding pipeline).

    The files are listed by the calling process and read by plain Ray Data tasks, one file per task, streamed in
    tables of ``rows_per_batch`` rows. (``ray.data.read_parquet`` costs one to two seconds of metadata and
    size-estimation tasks before the first row on this machine: more than reading a test set's clips.)
    """
    import ray

    fs, path = storage.filesystem(entry.data_uri)
    files = sorted(f for f in fs.find(path) if f.endswith(".parquet"))
    if not files:
        raise FileNotFoundError(
            f"clip cache entry {entry.uri} has no data files (all videos failed to decode?)"
        )
    listing = [pa.table({"path": [f]}) for f in files]
    return ray.data.from_arrow(listing).map_batches(
        _read_parquet_files,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"fs": fs, "frames_shape": entry.frames_shape, "rows_per_batch": rows_per_batch},
        num_cpus=1,
        compute=ray.data.TaskPoolStrategy(
            size=min(len(files), max(1, int(ray.cluster_resources().get("CPU", 1))))
        ),
    )


def cached_clip_dataset(
    manifest: str | pa.Table,
    config: ClipConfig,
    cache_root: str,
    *,
    epoch: int = 0,
    num_cached_epochs: int = 1,
) -> tuple[ray.data.Dataset, CacheEntry]:
    """Clips of a manifest read from the decode-once cache (decoded and written first on a miss).

    Args:
        manifest: Manifest URI or table.
        config: Clip settings.
        cache_root: Folder URI of the cache (reachable from every node).
        epoch: Training epoch; reads slot ``epoch % num_cached_epochs`` (ignored in test mode).
        num_cached_epochs: Distinct training samples per video kept in the cache.

    Returns:
        ``(dataset, entry)``; ``entry.failures`` lists the videos left out when the entry was decoded.
    """
    if num_cached_epochs < 1 or epoch < 0:
        raise ValueError(f"need num_cached_epochs >= 1 and epoch >= 0, got {num_cached_epochs}, {epoch}")
    slot = epoch % num_cached_epochs if config.train else 0
    entry = materialize_clips(manifest, config, cache_root, epoch_slot=slot)
    return read_cached_clips(entry), entry
