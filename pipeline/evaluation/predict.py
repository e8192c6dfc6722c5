"""Batch prediction: every video of a list scored as evaluation scores a test video, written as Parquet shards.

``predict_to_shards`` takes a ``VideoList`` (``pipeline.data.video_list``) and a model's weights and config, and
scores the videos through the evaluation's own path (``score_clips``: Ray Data decode tasks on the cluster's CPUs,
the model's multi-view test sampling, ``num_scorers`` model replicas, one GPU each with ``use_gpu``); a video's
views are combined with the run's ``view_reduce`` as ``compute_metrics`` combines them. Output, under ``out``
(any fsspec URI)::

    part-00000.parquet     videos [0, shard_size) of the list, in list order; part-00001.parquet the next ...
    _predict.json          what the shards are predictions of (model, videos, settings): ``claim_output``

Each shard is written whole once its videos are all scored or failed (to a temporary name, then moved), so a shard
file that exists is complete: a re-run scores only the shards that are missing. Columns (``PREDICTION_SCHEMA``):

    video           string          the video's path or URI, as listed
    error           string          "" when the video was scored; else why it could not be (read, index, decode)
    top_classes     list<string>    the ``top_k`` most probable classes, best first (empty when ``error``)
    top_scores      list<double>    their scores
    scores          list<double>    every class's score, in class-index order (null when ``error``): softmax
                                    probabilities, or per-class sigmoids for a multi-label model
    model_name      string          the registered model (``stpa-<dataset>``), or the run's model URI
    model_version   string          its version, or the run id for a run's model

Schema metadata: ``stpa.class_names`` (JSON list: the classes of ``scores``) and ``stpa.model_uri`` (the pinned URI).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema, storage
from pipeline.clips.ledger import DecodeReport
from pipeline.data.video_list import VideoList
from pipeline.evaluation.evaluate import SCORES, score_clips
from pipeline.evaluation.metrics import aggregate_views

VIDEO = "video"
ERROR = "error"
TOP_CLASSES = "top_classes"
TOP_SCORES = "top_scores"
SCORE_VECTOR = "scores"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
PREDICTION_FIELDS = [
    pa.field(VIDEO, pa.string()),
    pa.field(ERROR, pa.string()),
    pa.field(TOP_CLASSES, pa.list_(pa.string())),
    pa.field(TOP_SCORES, pa.list_(pa.float64())),
    pa.field(SCORE_VECTOR, pa.list_(pa.float64())),
    pa.field(MODEL_NAME, pa.string()),
    pa.field(MODEL_VERSION, pa.string()),
]
META_CLASS_NAMES = schema.META_CLASS_NAMES
META_MODEL_URI = b"stpa.model_uri"
CLAIM_FILE = "_predict.json"
FAILURE_POLL_S = 1.0  # how often the driver asks the decode ledger for failed videos while scoring


@dataclass(frozen=True)
class ModelRef:
    """The model the rows name: a pinned URI (``models:/stpa-ucf101/3`` or ``runs:/<id>/model``), name, version."""

    uri: str
    name: str
    version: str


def prediction_schema(class_names: list[str], model_uri: str) -> pa.Schema:
    return pa.schema(
        PREDICTION_FIELDS,
        metadata={META_CLASS_NAMES: json.dumps(class_names).encode(), META_MODEL_URI: model_uri.encode()},
    )


def shard_uri(out: str, shard: int) -> str:
    return storage.join(out, f"part-{shard:05d}.parquet")


def num_shards(num_videos: int, shard_size: int) -> int:
    return -(-num_videos // shard_size)


def claim_output(out: str, identity: dict, *, write: bool = True) -> None:
    """Record what ``out`` holds predictions of, or check that a resumed run predicts the same.

    Args:
        out: The output folder (any fsspec URI).
        identity: JSON-able facts that decide the rows (pinned model URI, the videos and their fingerprint, shard
            size, top-k).
        write: Record ``identity`` when ``out`` holds no claim yet (False: only check).

    Raises:
        ValueError: ``out`` holds predictions of something else (names each differing field); nothing is written.
    """
    path = storage.join(out, CLAIM_FILE)
    if storage.exists(path):
        found = json.loads(storage.read_text(path))
        differ = sorted(k for k in set(found) | set(identity) if found.get(k) != identity.get(k))
        if differ:
            details = "; ".join(f"{k}: {found.get(k)!r} there, {identity.get(k)!r} now" for k in differ)
            raise ValueError(
                f"--out {out} holds predictions of something else ({details}): give another --out, or delete "
                "it to start over"
            )
        return
    if write:
        storage.write_text(path, json.dumps(identity, indent=1, sort_keys=True))


def prediction_table(
    videos: list[str],
    scores: np.ndarray,
    errors: list[str],
    class_names: list[str],
    top_k: int,
    model: ModelRef,
) -> pa.Table:
    """One shard's rows.

    Args:
        videos: (N,) URIs in list order.
        scores: float64 (N, C); the rows of failed videos are ignored.
        errors: (N,) "" for a scored video, else the reason.
        class_names: (C,) in class-index order.
        top_k: Classes in ``top_classes`` (at most C).
        model: What ``model_name`` and ``model_version`` say.
    """
    k = min(top_k, len(class_names))
    top_classes, top_scores, vectors = [], [], []
    for row, error in zip(scores, errors, strict=True):
        if error:
            top_classes.append([])
            top_scores.append([])
            vectors.append(None)
            continue
        best = np.argsort(-row, kind="stable")[:k]  # ties: the lower class index first
        top_classes.append([class_names[i] for i in best])
        top_scores.append(row[best].tolist())
        vectors.append(row.tolist())
    n = len(videos)
    return pa.Table.from_pydict(
        {
            VIDEO: videos,
            ERROR: errors,
            TOP_CLASSES: top_classes,
            TOP_SCORES: top_scores,
            SCORE_VECTOR: vectors,
            MODEL_NAME: [model.name] * n,
            MODEL_VERSION: [model.version] * n,
        },
        schema=prediction_schema(class_names, model.uri),
    )


def write_shard(uri: str, table: pa.Table) -> None:
    """Write a shard whole: to a temporary name beside it, then moved, so an existing shard file is complete."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    temporary = f"{uri}.tmp"
    storage.write_bytes(temporary, sink.getvalue().to_pybytes())
    fs, path = storage.filesystem(uri)
    fs.mv(storage.filesystem(temporary)[1], path)


@dataclass
class PredictionSummary:
    """What one ``predict_to_shards`` call did (skipped shards count only in ``shards_skipped``)."""

    num_videos: int = 0  # videos in the shards written by this call
    num_scored: int = 0
    num_failed: int = 0
    num_clips: int = 0  # views decoded and scored
    seconds: float = 0.0
    shards_written: int = 0
    shards_skipped: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # video -> reason

    @property
    def clips_per_s(self) -> float:
        return self.num_clips / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "num_videos": self.num_videos,
            "num_scored": self.num_scored,
            "num_failed": self.num_failed,
            "num_clips": self.num_clips,
            "seconds": round(self.seconds, 3),
            "clips_per_s": round(self.clips_per_s, 3),
            "shards_written": self.shards_written,
            "shards_skipped": self.shards_skipped,
            "failures": self.failures,
        }


def predict_to_shards(
    exp,
    weights_uri: str,
    class_names: list[str],
    videos: VideoList,
    out: str,
    *,
    model: ModelRef,
    shard_size: int = 256,
    top_k: int = 5,
    num_scorers: int = 1,
    use_gpu: bool = False,
    batch_size: int | None = None,
    log: Callable[[str], None] = print,
) -> PredictionSummary:
    """Score the videos of the shards of ``out`` that are missing and write those shards (module docstring).

    Args:
        exp: The model's ``ExperimentConfig`` (test views, model, ``view_reduce``, precision).
        weights_uri: Its state dict (any fsspec URI).
        class_names: Its classes in index order.
        videos: The videos, in the order shards are cut.
        out: Output folder (any fsspec URI).
        model: What the rows name.
        shard_size: Videos per shard.
        top_k: Classes in ``top_classes``.
        num_scorers, use_gpu, batch_size: See ``score_clips``.
        log: Where progress lines go (one per shard written).

    Returns:
        The counts, time and clips/s of this call.
    """
    start = time.monotonic()
    total = num_shards(videos.table.num_rows, shard_size)
    bounds = {s: (s * shard_size, min((s + 1) * shard_size, videos.table.num_rows)) for s in range(total)}
    pending = [s for s in range(total) if not storage.exists(shard_uri(out, s))]
    summary = PredictionSummary(shards_skipped=total - len(pending))
    if summary.shards_skipped:
        log(f"{summary.shards_skipped} of {total} shards already written in {out}: skipped")
    if not pending:
        return summary
    table = pa.concat_tables([videos.slice(*bounds[s]) for s in pending])
    ids = table.column(schema.VIDEO_ID).to_pylist()
    shard_of = {video_id: s for s in pending for video_id in videos.uris[slice(*bounds[s])]}
    waiting = {s: set(videos.uris[slice(*bounds[s])]) for s in pending}  # videos not yet scored or failed
    num_views = exp.test_clips.num_views
    views: dict[str, list[tuple[int, np.ndarray]]] = {video_id: [] for video_id in ids}
    failures: dict[str, str] = {}
    report = DecodeReport.new()
    scored = score_clips(
        exp,
        weights_uri,
        table,
        num_scorers=num_scorers,
        use_gpu=use_gpu,
        batch_size=batch_size,
        report=report,
        video_list=True,
    )

    def settle(video_id: str) -> None:
        waiting.get(shard_of[video_id], set()).discard(video_id)  # (its shard may be written already)

    def write_finished() -> None:
        for s in [s for s, left in waiting.items() if not left]:
            del waiting[s]
            write(s)

    def write(s: int) -> None:
        uris = videos.uris[slice(*bounds[s])]
        scores = np.full((len(uris), len(class_names)), np.nan)
        errors = [failures.get(uri, "") for uri in uris]
        for i, uri in enumerate(uris):
            if not errors[i]:
                rows = sorted(views.pop(uri), key=lambda r: r[0])  # by view: the same sum whatever the order
                _, combined = aggregate_views(
                    np.array([uri] * len(rows)), np.stack([r[1] for r in rows]), exp.train.view_reduce
                )
                scores[i] = combined[0]
        write_shard(shard_uri(out, s), prediction_table(uris, scores, errors, class_names, top_k, model))
        failed = sum(1 for e in errors if e)
        summary.shards_written += 1
        summary.num_videos += len(uris)
        summary.num_failed += failed
        summary.num_scored += len(uris) - failed
        seconds = time.monotonic() - start
        log(
            f"shard {s + 1}/{total} written: {len(uris)} videos, {failed} failed; "
            f"{summary.num_videos}/{table.num_rows} videos this run, {summary.num_clips / seconds:.1f} clips/s"
        )

    last_poll = time.monotonic()
    for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
        for video_id, view, row in zip(
            batch[schema.VIDEO_ID], batch[schema.VIEW], batch[SCORES], strict=True
        ):
            views[video_id].append((int(view), row))
            if len(views[video_id]) == num_views:
                settle(video_id)
        summary.num_clips += len(batch[schema.VIDEO_ID])
        if time.monotonic() - last_poll > FAILURE_POLL_S:  # failures are recorded before their batch arrives
            failures.update(report.reasons)
            for video_id in failures:
                settle(video_id)
            last_poll = time.monotonic()
        write_finished()
    failures.update(report.reasons)
    for video_id in failures:
        settle(video_id)
    write_finished()
    if waiting:
        missing = sorted(v for left in waiting.values() for v in left)
        raise RuntimeError(
            f"batch prediction lost {len(missing)} video(s), neither scored nor failed: {missing[:5]}"
        )
    summary.failures = {uri: failures[uri] for uri in ids if uri in failures}
    summary.seconds = time.monotonic() - start
    return summary
