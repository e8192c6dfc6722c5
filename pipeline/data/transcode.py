"""Seek-friendly copies of every video of one or more manifests, one Ray task per video, and new manifests that
point at them (``stpa transcode``, the workflows' ``--transcode`` step).

Each video is re-encoded by ``pipeline.video.transcode.transcode_video`` (H.264 MP4, shorter side at most
``short_side``, an IDR frame every ``keyframe_interval`` frames, frame i of the copy = frame i of the source, checked
after writing). The originals are never written. Everything goes through fsspec, so sources and copies may live on
any store (``s3://``, ``gs://``, local paths)::

    <out>/videos/<video_id>.mp4         the copies (a video id with ``/``, as the folder dataset makes, is a path)
    <out>/videos/<video_id>.mp4.json    its sidecar, written after the copy: the settings, the source's identity,
                                        the copy's size and frame index
    <out>/<manifest file name>          one new manifest per input manifest (train.parquet, val.parquet, ...):
                                        the same rows, schema and metadata, with ``video_uri``, ``fps``, ``width``,
                                        ``height``, ``decode_method`` and ``frame_index`` of the copy; metadata
                                        ``stpa.transcode`` says what it was made from and how
    <out>/transcode_report.json         counts, and every video that failed with the reason

Resuming: a video whose sidecar records the same settings (``TranscodeSettings.to_dict``, which carries
``TRANSCODE_VERSION``) and the same source identity (its URI, size, modification time or ETag as the store reports
them, and the hash of the frame index the manifest holds) and whose copy still has the recorded size is reused
without a task; the others are transcoded again. A copy is written before its sidecar, so a run stopped half way
leaves nothing that a re-run would take for finished.

Failures: a video that cannot be decoded, encoded or checked (or whose task's worker dies after its retries) is
left out of the new manifests and listed in the report with the reason; the other videos go on. A manifest left
without any video is an error (raised after the report is written).

Ray: joins the cluster of ``RAY_ADDRESS`` or an already initialised Ray (a workflow step), else starts a local one
and shuts it down; no Ray at all when every copy is reused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import posixpath
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema, storage
from pipeline.data.manifest import read_manifest
from pipeline.video.decode import VideoDecodeError, index_from_bytes, index_to_bytes
from pipeline.video.transcode import TranscodeError, TranscodeSettings, transcode_video

REPORT_FILE = "transcode_report.json"
VIDEOS_FOLDER = "videos"
SIDECAR_SUFFIX = ".json"
# What fsspec's ``info`` reports that changes when a file is replaced: local mtime, S3 ETag and LastModified, GCS
# generation and md5Hash; ``created`` only where nothing else is reported (memory://).
_IDENTITY_KEYS = ("mtime", "ETag", "LastModified", "generation", "md5Hash")
_IO_THREADS = 16  # sidecar and identity look-ups are store round trips, not CPU work


@dataclass(frozen=True)
class TranscodeFailure:
    """A video left out of the new manifests."""

    video_id: str
    uri: str
    reason: str


@dataclass
class TranscodeReport:
    """What ``transcode_manifests`` did.

    Attributes:
        out: The output folder.
        settings: ``TranscodeSettings.to_dict()``.
        manifest_uris: Each input manifest's URI -> its new manifest's URI.
        num_rows: Each new manifest's URI -> rows written.
        num_videos: Distinct videos in the inputs.
        num_transcoded: Copies made by this call.
        num_reused: Copies of an earlier call reused (same settings, same source).
        failures: Videos left out, with the reason.
        source_bytes, copy_bytes: Sizes of the sources and copies in the new manifests.
        task_cpu_seconds: CPU seconds the transcoding tasks of this call spent (summed over tasks).
        seconds: Wall-clock seconds of the call.
    """

    out: str
    settings: dict
    manifest_uris: dict[str, str] = field(default_factory=dict)
    num_rows: dict[str, int] = field(default_factory=dict)
    num_videos: int = 0
    num_transcoded: int = 0
    num_reused: int = 0
    failures: list[TranscodeFailure] = field(default_factory=list)
    source_bytes: int = 0
    copy_bytes: int = 0
    task_cpu_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def report_uri(self) -> str:
        return storage.join(self.out, REPORT_FILE)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"transcode: {self.num_videos} videos -> {self.out} (short side {self.settings['short_side']}, "
            f"keyframe every {self.settings['keyframe_interval']} frames): {self.num_transcoded} transcoded, "
            f"{self.num_reused} reused, {len(self.failures)} failed in {self.seconds:.1f}s "
            f"({self.task_cpu_seconds:.1f} CPU s in tasks); copies {self.copy_bytes / 1e6:.1f} MB, "
            f"sources {self.source_bytes / 1e6:.1f} MB"
        ]
        lines += [
            f"  {source} -> {new} ({self.num_rows[new]} rows)" for source, new in self.manifest_uris.items()
        ]
        lines += [f"  failed: {f.video_id} ({f.uri}): {f.reason}" for f in self.failures[:20]]
        if len(self.failures) > 20:
            lines.append(f"  ... {len(self.failures) - 20} more failures in {self.report_uri}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Job:
    """One video to copy: where from, where to, and what the sidecar must say for a copy to be reused."""

    video_id: str
    source_uri: str
    copy_uri: str
    frame_index: bytes
    identity: dict


def copy_uri_of(out: str, video_id: str) -> str:
    """``<out>/videos/<video_id>.mp4``.

    Raises:
        ValueError: the id is not a safe relative path (empty part, ``.``, ``..``, a leading ``/`` or a backslash).
    """
    parts = video_id.split("/")
    if "\\" in video_id or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"video id {video_id!r} cannot name a file under {out}")
    return storage.join(out, VIDEOS_FOLDER, *parts[:-1], parts[-1] + ".mp4")


def source_identity(uri: str, frame_index: bytes) -> dict:
    """What changes when the file at ``uri`` is replaced: its URI, size and the store's modification stamps,
    and the hash of the frame index a manifest holds for it (JSON-ready strings)."""
    fs, path = storage.filesystem(uri)
    info = fs.info(path)
    identity = {
        "uri": uri,
        "size": str(info.get("size")),
        "frame_index_sha256": hashlib.sha256(frame_index).hexdigest(),
    }
    stamps = {key: str(info[key]) for key in _IDENTITY_KEYS if key in info}
    if not stamps and "created" in info:
        stamps["created"] = str(info["created"])
    return {**identity, **stamps}


def _read_sidecar(job: _Job) -> dict | None:
    sidecar = job.copy_uri + SIDECAR_SUFFIX
    if not storage.exists(sidecar):
        return None
    try:
        return json.loads(storage.read_text(sidecar))
    except (OSError, ValueError):
        return None  # unreadable or half written: transcode again


def _reusable(job: _Job, settings: dict) -> dict | None:
    """The sidecar of a finished copy of ``job`` with ``settings``, or None when it must be (re)made."""
    sidecar = _read_sidecar(job)
    if not sidecar or sidecar.get("settings") != settings or sidecar.get("source") != job.identity:
        return None
    fs, path = storage.filesystem(job.copy_uri)
    if not fs.exists(path) or fs.info(path).get("size") != sidecar["copy"]["num_bytes"]:
        return None
    return sidecar


def transcode_job(job: _Job, settings: TranscodeSettings) -> dict:
    """Ray task body: copy one video, write its sidecar; a failure of this video is returned, not raised.

    Returns:
        The sidecar (``{"settings", "source", "copy"}``), or ``{"error": reason}``.
    """
    try:
        index = index_from_bytes(job.source_uri, job.frame_index)
        result = transcode_video(job.source_uri, job.copy_uri, settings, index=index)
    except (VideoDecodeError, TranscodeError) as error:
        return {"error": error.reason}
    except Exception as error:  # noqa: BLE001 - whatever one file does (a store's OSError, a decoder's surprise), it stays with that file
        return {"error": f"{type(error).__name__}: {error}"}
    sidecar = {
        "settings": settings.to_dict(),
        "source": job.identity,
        "copy": {
            "uri": result.uri,
            "num_bytes": result.num_bytes,
            "num_frames": result.index.num_frames,
            "fps": result.index.fps,
            "width": result.index.width,
            "height": result.index.height,
            "decode_method": result.index.method,
            "frame_index": base64.b64encode(index_to_bytes(result.index)).decode("ascii"),
            "source_bytes": int(job.identity["size"]) if job.identity["size"].isdigit() else 0,
            "seconds": result.seconds,
            "cpu_seconds": result.cpu_seconds,
        },
    }
    storage.write_text(job.copy_uri + SIDECAR_SUFFIX, json.dumps(sidecar, indent=1, sort_keys=True))
    return sidecar


def _plan(manifests: dict[str, pa.Table], out: str) -> dict[str, tuple[str, str, bytes]]:
    """video id -> (source URI, copy URI, frame index) over all manifests; fails fast on conflicts."""
    videos: dict[str, tuple[str, str, bytes]] = {}
    sources = {
        storage.normalize_uri(uri)
        for table in manifests.values()
        for uri in table.column(schema.VIDEO_URI).to_pylist()
    }
    for manifest_uri, table in manifests.items():
        columns = table.select([schema.VIDEO_ID, schema.VIDEO_URI, schema.FRAME_INDEX]).to_pydict()
        for video_id, uri, frame_index in zip(*columns.values(), strict=True):
            try:
                copy = copy_uri_of(out, video_id)
            except ValueError as error:
                raise ValueError(f"{manifest_uri}: {error}") from None
            if copy in sources:
                raise ValueError(
                    f"{manifest_uri}: the copy of {video_id!r} would overwrite a source video, {copy}"
                )
            if video_id in videos and videos[video_id][0] != uri:
                raise ValueError(
                    f"{manifest_uri}: video id {video_id!r} names {uri} here and {videos[video_id][0]} in another "
                    "manifest: their copies would collide"
                )
            videos[video_id] = (uri, copy, frame_index)
    return videos


def _run_tasks(
    jobs: list[_Job], settings: TranscodeSettings, num_workers: int | None, log: Callable[[str], None]
) -> dict[str, dict]:
    """video id -> sidecar or ``{"error": ...}``, one Ray task per video (1 CPU each)."""
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        local = "RAY_ADDRESS" not in os.environ
        ray.init(
            num_cpus=(num_workers or os.cpu_count() or 1) if local else None,
            include_dashboard=False if local else None,
            log_to_driver=False,
        )
    try:
        task = ray.remote(num_cpus=1, max_retries=2)(transcode_job)
        pending = {task.remote(job, settings): job for job in jobs}  # [ray] one task per video
        results: dict[str, dict] = {}
        reported = 0
        while pending:
            # Every finished task at once (a wait per task would rescan thousands of pending refs each time).
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=5.0)
            for ref in done:
                job = pending.pop(ref)
                try:
                    results[job.video_id] = ray.get(ref)
                except ray.exceptions.RayError as error:  # the worker died on every retry (FFmpeg crash, OOM)
                    results[job.video_id] = {
                        "error": f"the transcoding task failed: {type(error).__name__}: {error}"
                    }
            if len(results) - reported >= max(1, len(jobs) // 10) or not pending:
                reported = len(results)
                log(f"transcode: {len(results)}/{len(jobs)} videos done")
    finally:
        if started_here:
            ray.shutdown()
    return results


def _new_table(table: pa.Table, sidecars: dict[str, dict], meta: dict) -> pa.Table:
    """``table``'s rows whose video has a copy, pointing at it (same schema, plus ``stpa.transcode`` metadata)."""
    ids = table.column(schema.VIDEO_ID).to_pylist()
    kept = table.filter(pa.array([video_id in sidecars for video_id in ids]))
    copies = [sidecars[video_id]["copy"] for video_id in kept.column(schema.VIDEO_ID).to_pylist()]
    replaced = {
        schema.VIDEO_URI: [c["uri"] for c in copies],
        schema.NUM_FRAMES: [c["num_frames"] for c in copies],
        schema.FPS: [c["fps"] for c in copies],
        schema.WIDTH: [c["width"] for c in copies],
        schema.HEIGHT: [c["height"] for c in copies],
        schema.DECODE_METHOD: [c["decode_method"] for c in copies],
        schema.FRAME_INDEX: [base64.b64decode(c["frame_index"]) for c in copies],
    }
    for name, values in replaced.items():
        position = kept.schema.get_field_index(name)
        kept = kept.set_column(
            position, kept.schema.field(name), pa.array(values, kept.schema.field(name).type)
        )
    metadata = {
        **(table.schema.metadata or {}),
        schema.META_TRANSCODE: json.dumps(meta, sort_keys=True).encode(),
    }
    return kept.replace_schema_metadata(metadata)


def _read(uri: str) -> pa.Table:
    try:
        return read_manifest(uri)[0]
    except pa.ArrowInvalid as error:
        raise ValueError(f"{uri}: not a Parquet manifest ({error})") from None


def transcode_manifests(
    manifest_uris: Sequence[str],
    out: str,
    settings: TranscodeSettings,
    *,
    num_workers: int | None = None,
    log: Callable[[str], None] = print,
) -> TranscodeReport:
    """Copy every video of the manifests (see the module docstring) and write a new manifest for each.

    Args:
        manifest_uris: Manifests written by ``stpa prepare`` (any fsspec URIs); distinct file names.
        out: Output folder URI (copies, sidecars, new manifests, report).
        settings: Short side, keyframe interval and encoder settings of the copies.
        num_workers: CPUs of the local Ray this call starts when none is running (default: all).
        log: Where progress lines go.

    Returns:
        The report (also written to ``<out>/transcode_report.json``).

    Raises:
        ValueError: a manifest is not valid (names the file and column), two manifests share a file name, a new
            manifest would overwrite an input, a video id cannot name a file, or no video of a manifest could be
            copied (raised after the report is written).
    """
    started = time.perf_counter()
    out = storage.normalize_uri(out)
    sources = [storage.normalize_uri(uri) for uri in manifest_uris]
    if not sources:
        raise ValueError("no manifest given")
    targets = {uri: storage.join(out, posixpath.basename(uri)) for uri in sources}
    if len(set(targets.values())) != len(targets):
        raise ValueError(f"manifests {sources} share a file name: their new manifests in {out} would collide")
    overwritten = sorted(set(targets.values()) & set(sources))
    if overwritten:
        raise ValueError(
            f"the new manifest {overwritten[0]} would overwrite an input manifest: choose another --out"
        )
    manifests = {uri: _read(uri) for uri in sources}  # validated before any work
    videos = _plan(manifests, out)
    config = settings.to_dict()

    def job_of(item: tuple[str, tuple[str, str, bytes]]) -> _Job:
        video_id, (uri, copy, frame_index) = item
        try:
            identity = source_identity(uri, frame_index)
        except (OSError, ValueError) as error:
            identity = {"uri": uri, "error": f"{type(error).__name__}: {error}"}
        return _Job(video_id, uri, copy, frame_index, identity)

    with ThreadPoolExecutor(max_workers=_IO_THREADS) as pool:
        jobs = list(pool.map(job_of, videos.items()))
        previous = list(pool.map(lambda job: _reusable(job, config), jobs))
    sidecars = {job.video_id: sidecar for job, sidecar in zip(jobs, previous, strict=True) if sidecar}
    report = TranscodeReport(out=out, settings=config, num_videos=len(jobs), num_reused=len(sidecars))
    missing = [job for job in jobs if "error" in job.identity]
    for job in missing:
        report.failures.append(
            TranscodeFailure(job.video_id, job.source_uri, f"cannot read the file ({job.identity['error']})")
        )
    todo = [job for job in jobs if job.video_id not in sidecars and "error" not in job.identity]
    log(f"transcode: {len(jobs)} videos, {len(sidecars)} copies reused, {len(todo)} to transcode")
    if todo:
        outcomes = _run_tasks(todo, settings, num_workers, log)
        for job in todo:
            outcome = outcomes[job.video_id]
            if "error" in outcome:
                report.failures.append(TranscodeFailure(job.video_id, job.source_uri, outcome["error"]))
            else:
                sidecars[job.video_id] = outcome
                report.num_transcoded += 1
                report.task_cpu_seconds += outcome["copy"]["cpu_seconds"]

    meta_common = {"settings": config, "out": out}
    empty = []
    for source, target in targets.items():
        table = _new_table(manifests[source], sidecars, {**meta_common, "source_manifest": source})
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        storage.write_bytes(target, buffer.getvalue().to_pybytes())
        report.manifest_uris[source] = target
        report.num_rows[target] = table.num_rows
        if table.num_rows == 0:
            empty.append(source)
    used = {
        video_id for table in manifests.values() for video_id in table.column(schema.VIDEO_ID).to_pylist()
    }
    report.copy_bytes = sum(sidecars[v]["copy"]["num_bytes"] for v in used if v in sidecars)
    report.source_bytes = sum(sidecars[v]["copy"]["source_bytes"] for v in used if v in sidecars)
    report.seconds = time.perf_counter() - started
    storage.write_text(report.report_uri, json.dumps(report.to_dict(), indent=1) + "\n")
    if empty:
        raise ValueError(
            f"no video of {empty[0]} could be transcoded ({len(report.failures)} failures); see {report.report_uri}"
        )
    return report
