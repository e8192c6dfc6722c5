"""Official annotation files -> Parquet manifests, one per split, plus a report of what was left out and why.

``prepare_manifest`` parses a dataset's annotation files (``pipeline.data.datasets``), checks that every listed video
exists (one recursive listing of the videos folder, not one request per file), indexes each video with
``pipeline.video.decode.index_video`` (by demuxing: every frame's timestamp, the keyframes, fps, size in display
orientation, and the read method that gives exact frames), and writes through fsspec:

    <out>/train.parquet, <out>/val.parquet,   columns and schema metadata of ``pipeline.schema.manifest_schema``
    <out>/test.parquet                         (val.parquet only when a val split is carved)
    <out>/report.json                          counts per split, how val was carved, missing and unreadable videos
                                               with reasons, decode-method counts (``PrepareReport.to_dict``)

The val split is carved from the official training list before any video is probed (``pipeline.data.val_split``:
UCF101 by whole groups, HMDB51 per class, Charades and folders by a hash of the video id), ``val_fraction`` of the
training videos by default 0.1; 0 carves none and no val.parquet is written. The official lists promise every
class in train and test, so a class without a usable video there is an error; val is smaller and may lack a
class (a UCF101 class of one group, a video missing): that is listed in ``val_classes_empty`` and the summary,
not an error, since val only ranks epochs and trials.

Missing and unreadable videos are left out of the manifests and listed in the report, never dropped silently:
whatever goes wrong with one video stays with that video (the report says what), the others are written.

Probing runs in parallel: a local thread pool for fewer than ``RAY_MIN_VIDEOS`` videos, Ray tasks above (joining
the cluster of ``RAY_ADDRESS`` or an already initialised Ray, else starting a local one and shutting it down).

Object stores: every path is an fsspec URI. For ``s3://`` (s3fs) the endpoint and credentials come from the
standard environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` and, for an
S3-compatible server other than AWS (MinIO, Ceph, moto), ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), which
botocore reads when s3fs creates its client. ``FSSPEC_S3_ENDPOINT_URL`` works too but is read when fsspec is
imported. Ray workers inherit the environment of the process that starts the local Ray; on a remote cluster pass
these variables in the job's ``runtime_env={"env_vars": ...}``.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema, storage
from pipeline.data.datasets import charades, folder, hmdb51, ucf101
from pipeline.data.datasets.records import DatasetIndex, VideoRecord
from pipeline.data.val_split import DEFAULT_VAL_FRACTION, DEFAULT_VAL_SEED, carve_val
from pipeline.video.decode import VideoDecodeError, VideoIndex, index_to_bytes, index_video

DATASETS = ("ucf101", "hmdb51", "charades", "folder")
RAY_MIN_VIDEOS = 64  # below this many videos a local thread pool beats Ray's start-up (5-10 s)
REPORT_FILE = "report.json"
_SEGMENT_FIELDS = tuple(schema.SEGMENT_TYPE.field(i).name for i in range(schema.SEGMENT_TYPE.num_fields))
_CHUNKS_PER_WORKER = 4  # Ray tasks per CPU: small enough to balance uneven videos, large enough to amortise


@dataclass(frozen=True)
class VideoProblem:
    """A listed video left out of the manifest: missing, or not decodable."""

    video_id: str
    split: str
    uri: str
    reason: str
    listed_at: str  # "<annotation file>:<line>"


@dataclass
class PrepareReport:
    """What ``prepare_manifest`` wrote and what it left out.

    Attributes:
        dataset: Dataset name.
        split: Official split number, or None (Charades).
        videos_uri, annotations_uri: The inputs.
        class_names: In label order.
        manifest_uris: Split -> Parquet URI written.
        report_uri: The JSON copy of this report.
        num_listed: Split -> videos the annotations list for it.
        num_written: Split -> rows written (listed minus missing minus unreadable).
        num_unused: Videos the annotations list but the split does not use (HMDB51 flag 0).
        val_split: How val was carved from the training list (``pipeline.data.val_split.ValSplit.to_dict``).
        val_classes_empty: Classes (single-label) without a usable val video (not an error; see module doc).
        missing: Listed videos not found under ``videos_uri``.
        unreadable: Videos found but not decodable, with the decoder's reason.
        decode_methods: Decode method -> number of videos written with it.
        decode_notes: Video id -> why it is read the way it is (``VideoIndex.note``), where there is a reason.
        probe_backend: ``"threads"`` or ``"ray"``.
        num_workers: Probe parallelism used.
        seconds: Wall time of the whole preparation.
    """

    dataset: str
    split: int | None
    videos_uri: str
    annotations_uri: str
    class_names: list[str]
    manifest_uris: dict[str, str]
    report_uri: str
    num_listed: dict[str, int]
    num_written: dict[str, int]
    num_unused: int
    val_split: dict = field(default_factory=dict)
    val_classes_empty: list[str] = field(default_factory=list)
    missing: list[VideoProblem] = field(default_factory=list)
    unreadable: list[VideoProblem] = field(default_factory=list)
    decode_methods: dict[str, int] = field(default_factory=dict)
    decode_notes: dict[str, str] = field(default_factory=dict)
    probe_backend: str = "threads"
    num_workers: int = 1
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return asdict(self)

    def summary(self) -> str:
        """A few human-readable lines: counts per split, what was left out, where the files are."""
        lines = [
            f"{self.dataset} split {self.split or '-'}: {len(self.class_names)} classes, {self.seconds:.1f} s"
        ]
        for split in self.manifest_uris:
            lines.append(
                f"  {split}: {self.num_written[split]} of {self.num_listed[split]} listed videos -> "
                f"{self.manifest_uris[split]}"
            )
        if self.val_split.get("method", "none") == "none":
            lines.append("  val: none carved (training keeps its last epoch)")
        else:
            lines.append(
                f"  val: {self.val_split['num_val']} of {self.val_split['num_train_listed']} training videos "
                f"(fraction {self.val_split['fraction']}, {self.val_split['method']}, seed {self.val_split['seed']})"
            )
        if self.val_classes_empty:
            shown = ", ".join(self.val_classes_empty[:5])
            more = f" and {len(self.val_classes_empty) - 5} more" if len(self.val_classes_empty) > 5 else ""
            lines.append(f"  warning: no val video for {len(self.val_classes_empty)} classes: {shown}{more}")
        if self.num_unused:
            lines.append(f"  unused by this split: {self.num_unused}")
        for title, problems in (("missing", self.missing), ("unreadable", self.unreadable)):
            if problems:
                shown = "; ".join(f"{p.video_id} ({p.reason})" for p in problems[:5])
                more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
                lines.append(f"  {title}: {len(problems)}: {shown}{more}")
        lines.append(f"  decode methods: {self.decode_methods}")
        lines.append(f"  report: {self.report_uri}")
        return "\n".join(lines)


def dataset_root_paths(dataset: str, data_root: str) -> tuple[str, str]:
    """(videos URI, annotations URI) of a dataset root laid out as the official downloads extract.

    UCF101: ``UCF-101/`` + ``ucfTrainTestlist/``; HMDB51: ``hmdb51_org/`` + ``testTrainMulti_7030_splits/``;
    Charades: ``Charades_v1_480/`` (else ``Charades_v1/``) + the root itself (CSVs and classes file);
    folder: the root itself + ``""`` (hash split).

    Raises:
        ValueError: Unknown dataset.
        FileNotFoundError: A Charades root with neither video folder.
    """
    if dataset == "ucf101":
        return storage.join(data_root, "UCF-101"), storage.join(data_root, "ucfTrainTestlist")
    if dataset == "hmdb51":
        return storage.join(data_root, "hmdb51_org"), storage.join(data_root, "testTrainMulti_7030_splits")
    if dataset == "charades":
        for name in ("Charades_v1_480", "Charades_v1"):
            if storage.exists(storage.join(data_root, name)):
                return storage.join(data_root, name), storage.normalize_uri(data_root)
        raise FileNotFoundError(f"{data_root}: neither Charades_v1_480/ nor Charades_v1/ exists")
    if dataset == "folder":
        return storage.normalize_uri(data_root), ""
    raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")


def load_index(dataset: str, videos: str, annotations: str, split: int = 1) -> DatasetIndex:
    """Parse a dataset's annotations (``pipeline.data.datasets``) into records of one official split."""
    if dataset == "ucf101":
        return ucf101.load(annotations, split)
    if dataset == "hmdb51":
        return hmdb51.load(annotations, split)
    if dataset == "charades":
        return charades.load(annotations)
    if dataset == "folder":
        return folder.load(videos, annotations, split)
    raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")


def prepare_manifest(
    dataset: str,
    videos: str,
    annotations: str,
    out: str,
    *,
    split: int = 1,
    num_workers: int | None = None,
    use_ray: bool | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    val_seed: int = DEFAULT_VAL_SEED,
) -> PrepareReport:
    """Parse, check and probe a dataset; write ``<out>/{train,val,test}.parquet`` and ``<out>/report.json``.

    Args:
        dataset: ``ucf101``, ``hmdb51``, ``charades`` or ``folder``.
        videos: The videos folder (``UCF-101/``, ``hmdb51_org/``, ``Charades_v1_480/`` or ``<root>`` of
            ``<root>/<class>/<video>``); any fsspec URI.
        annotations: The annotations folder (``ucfTrainTestlist/``, ``testTrainMulti_7030_splits/``, the Charades
            root); for ``folder``, ``""`` (hash split) or a folder of UCF101-format split lists.
        out: Output folder URI.
        split: Official split (UCF101, HMDB51 and folder lists: 1-3; ignored for Charades).
        num_workers: Probe parallelism (threads, or the CPUs of a Ray cluster this call starts); default: the
            machine's CPUs (at most 8 threads).
        use_ray: Probe with Ray tasks (True), a local thread pool (False), or decide by size (None: Ray from
            ``RAY_MIN_VIDEOS`` videos on).
        val_fraction: Share of the official training videos carved into the val split, in [0, 1)
            (``pipeline.data.val_split``); 0: no val split, no ``val.parquet``.
        val_seed: Seed of the carving's hash (the same inputs and seed always give the same val split).

    Returns:
        The report (also written as ``<out>/report.json``).

    Raises:
        FileNotFoundError: The videos folder or an annotation file does not exist.
        pipeline.data.datasets.AnnotationError: An annotation file breaks its format (the message names file and line).
        ValueError: ``val_fraction`` outside [0, 1), or no video of a split could be used, or a class has no
            usable video in train or test (the report is written first).
    """
    started = time.perf_counter()
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    videos = storage.normalize_uri(videos)
    annotations = storage.normalize_uri(annotations) if annotations else ""
    out = storage.normalize_uri(out)
    if not storage.exists(videos):
        raise FileNotFoundError(f"videos folder not found: {videos}")
    index, val_split = carve_val(load_index(dataset, videos, annotations, split), val_fraction, val_seed)
    splits = tuple(name for name in schema.SPLITS if name != "val" or val_split.method != "none")
    present = _files_under(videos)
    missing: list[VideoProblem] = []
    found: list[tuple[VideoRecord, str]] = []
    for record in index.records:
        path = present.get(record.path) or present.get(record.path.casefold())
        if path:
            found.append((record, storage.join(videos, *path.split("/"))))
        else:
            missing.append(_problem(record, storage.join(videos, *record.path.split("/")), "file not found"))
    if use_ray is None:
        use_ray = len(found) >= RAY_MIN_VIDEOS
    parallelism = num_workers or min(8, os.cpu_count() or 1)
    probe_all = _probe_with_ray if use_ray else _probe_with_threads
    results = probe_all([uri for _, uri in found], parallelism)

    unreadable: list[VideoProblem] = []
    rows: dict[str, list[tuple[VideoRecord, str, object]]] = {name: [] for name in splits}
    for (record, uri), (probe, reason) in zip(found, results, strict=True):
        if probe is None:
            unreadable.append(_problem(record, uri, reason))
        else:
            rows[record.split].append((record, uri, probe))

    table_schema = schema.manifest_schema(
        dataset, list(index.class_names), index.multi_label, index.split, val_split.to_dict()
    )
    manifest_uris = {name: storage.join(out, f"{name}.parquet") for name in splits}
    for name in splits:
        _write_parquet(manifest_uris[name], _table(rows[name], table_schema, index.multi_label))
    written = [probe for split_rows in rows.values() for _, _, probe in split_rows]
    report = PrepareReport(
        dataset=dataset,
        split=index.split,
        videos_uri=videos,
        annotations_uri=annotations,
        class_names=list(index.class_names),
        manifest_uris=manifest_uris,
        report_uri=storage.join(out, REPORT_FILE),
        num_listed={name: len(index.of_split(name)) for name in splits},
        num_written={name: len(rows[name]) for name in splits},
        num_unused=index.num_unused,
        val_split=val_split.to_dict(),
        val_classes_empty=_classes_without_rows(rows.get("val"), index) if "val" in splits else [],
        missing=missing,
        unreadable=unreadable,
        decode_methods=dict(Counter(probe.method for probe in written)),
        decode_notes={
            record.video_id: probe.note
            for split_rows in rows.values()
            for record, _, probe in split_rows
            if probe.note
        },
        probe_backend="ray" if use_ray else "threads",
        num_workers=parallelism,
    )
    report.seconds = time.perf_counter() - started
    storage.write_text(report.report_uri, json.dumps(report.to_dict(), indent=2) + "\n")
    empty = [name for name in splits if not rows[name]]
    if empty:
        hint = (
            " (too few training videos to carve val from: lower or zero --val-fraction)"
            if "val" in empty
            else ""
        )
        raise ValueError(
            f"no video of the {' and '.join(empty)} split could be used "
            f"({len(missing)} missing, {len(unreadable)} unreadable under {videos}){hint}; see {report.report_uri}"
        )
    if not index.multi_label and (dataset != "folder" or annotations):
        # Split lists promise every class in both splits; a class without videos there means the archive and the
        # lists disagree (a hash split of a user's small folders may leave a class out of test: not an error).
        for name in ("train", "test"):
            empty_classes = _classes_without_rows(rows[name], index)
            if empty_classes:
                raise ValueError(
                    f"class {empty_classes[0]!r} has no usable video in the {name} split"
                    + (f" ({len(empty_classes) - 1} more classes neither)" if len(empty_classes) > 1 else "")
                    + f": its videos are missing or unreadable under {videos}; see {report.report_uri}"
                )
    return report


def _classes_without_rows(rows: list[tuple[VideoRecord, str, object]], index: DatasetIndex) -> list[str]:
    """Class names (single-label) that no row of ``rows`` has; ``[]`` for a multi-label index."""
    if index.multi_label:
        return []
    counts = Counter(record.label for record, _, _ in rows)
    return [name for label, name in enumerate(index.class_names) if not counts[label]]


def _problem(record: VideoRecord, uri: str, reason: str) -> VideoProblem:
    return VideoProblem(
        record.video_id, record.split, uri, reason, f"{record.source_path}:{record.source_line}"
    )


def _files_under(videos: str) -> dict[str, str]:
    """Every file below ``videos``, from one recursive listing: its relative ``/``-separated path, found under
    itself and under its case-folded form.

    The case-folded entries match list files to archives that spell a folder differently: the official UCF101
    lists say ``HandstandPushups/v_HandStandPushups_g01_c01.avi`` while repacked archives name the folder
    ``HandStandPushups``. A case-folded form shared by two files matches neither.
    """
    fs, root = storage.filesystem(videos)
    root = root.rstrip("/")
    paths = [posixpath.relpath(path, root) for path in fs.find(root)]
    folded = Counter(path.casefold() for path in paths)
    by_fold = {path.casefold(): path for path in paths if folded[path.casefold()] == 1}
    return {**by_fold, **{path: path for path in paths}}


ProbeResult = tuple[VideoIndex | None, str]  # (index, "") or (None, reason)


def _probe_one(uri: str) -> ProbeResult:
    """Probe one video; a file that cannot be read or decoded gives ``(None, reason)``."""

    try:
        return index_video(uri), ""
    except VideoDecodeError as error:
        return None, error.reason
    except Exception as error:  # noqa: BLE001 - whatever one file does (a store's OSError, a decoder's surprise), it stays with that file
        return None, f"{type(error).__name__}: {error}"


def _probe_chunk(uris: list[str]) -> list[ProbeResult]:
    return [_probe_one(uri) for uri in uris]


def _probe_with_threads(uris: list[str], num_workers: int) -> list[ProbeResult]:
    if not uris:
        return []
    with ThreadPoolExecutor(max_workers=min(num_workers, len(uris))) as pool:
        return list(pool.map(_probe_one, uris))


def _probe_with_ray(uris: list[str], num_workers: int) -> list[ProbeResult]:
    """Probe with Ray tasks of a few videos each, in the order of ``uris``."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        if "RAY_ADDRESS" in os.environ:
            ray.init()
        else:  # a private local Ray, also when `ray start` left a cluster running here (pipeline.runtime)
            ray.init(address="local", num_cpus=num_workers, include_dashboard=False)
    try:
        num_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        num_chunks = max(1, min(len(uris), num_cpus * _CHUNKS_PER_WORKER))
        chunks = [uris[i::num_chunks] for i in range(num_chunks)]  # interleaved: spreads long videos
        probe_chunk: Callable = ray.remote(num_cpus=1, max_retries=2)(_probe_chunk)
        chunk_results = ray.get([probe_chunk.remote(chunk) for chunk in chunks])
    finally:
        if started_here:
            ray.shutdown()
    results: list[ProbeResult | None] = [None] * len(uris)
    for i, chunk_result in enumerate(chunk_results):
        results[i::num_chunks] = chunk_result
    return results  # type: ignore[return-value]


def _table(
    rows: list[tuple[VideoRecord, str, object]], table_schema: pa.Schema, multi_label: bool
) -> pa.Table:
    """The manifest table of one split's rows (record, video URI, VideoIndex)."""
    columns: dict[str, list] = {name: [] for name in table_schema.names}
    for record, uri, probe in rows:
        columns[schema.VIDEO_ID].append(record.video_id)
        columns[schema.VIDEO_URI].append(uri)
        columns[schema.SPLIT].append(record.split)
        # Charades gives each video's length in its CSV; elsewhere the probe's frames / fps.
        columns[schema.DURATION].append(record.duration if record.duration is not None else probe.duration)
        columns[schema.NUM_FRAMES].append(probe.num_frames)
        columns[schema.FPS].append(probe.fps)
        columns[schema.WIDTH].append(probe.width)
        columns[schema.HEIGHT].append(probe.height)
        columns[schema.DECODE_METHOD].append(probe.method)
        columns[schema.FRAME_INDEX].append(index_to_bytes(probe))
        if multi_label:
            columns[schema.LABELS].append(list(record.labels))
            columns[schema.SEGMENTS].append(
                [dict(zip(_SEGMENT_FIELDS, (s.label, s.start, s.end), strict=True)) for s in record.segments]
            )
        else:
            columns[schema.LABEL].append(record.label)
    return pa.Table.from_pydict(columns, schema=table_schema)


def _write_parquet(uri: str, table: pa.Table) -> None:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    storage.write_bytes(uri, buffer.getvalue().to_pybytes())
