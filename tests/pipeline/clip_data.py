"""Small real videos and manifests for the clip pipeline tests (written with PyAV, frames carry their index)."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema
from pipeline.video.decode import index_to_bytes, index_video
from pipeline.video.encode import index_frames, write_video

WIDTH, HEIGHT = 64, 48


def write_videos(folder: str, num_videos: int, num_frames: int = 24, fps: float = 8.0) -> list[dict]:
    """``num_videos`` H.264 MP4s whose frames carry their index; manifest rows (single-label, 3 classes)."""
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i in range(num_videos):
        n = num_frames + 2 * i  # different lengths, so sampled indices differ between videos
        uri = write_video(os.path.join(folder, f"v{i:02d}.mp4"), index_frames(n, WIDTH, HEIGHT, seed=i), fps)
        index = index_video(uri)
        rows.append(
            {
                schema.VIDEO_ID: f"v{i:02d}",
                schema.VIDEO_URI: uri,
                schema.SPLIT: "test",
                schema.DURATION: n / fps,
                schema.NUM_FRAMES: n,
                schema.FPS: fps,
                schema.WIDTH: WIDTH,
                schema.HEIGHT: HEIGHT,
                schema.DECODE_METHOD: index.method,
                schema.FRAME_INDEX: index_to_bytes(index),
                schema.LABEL: i % 3,
            }
        )
    return rows


def write_corrupt(folder: str, video_id: str) -> dict:
    """A manifest row for a file that is not a video."""
    uri = os.path.join(folder, f"{video_id}.mp4")
    with open(uri, "wb") as f:
        f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {
        schema.VIDEO_ID: video_id,
        schema.VIDEO_URI: uri,
        schema.SPLIT: "test",
        schema.DURATION: 3.0,
        schema.NUM_FRAMES: 24,
        schema.FPS: 8.0,
        schema.WIDTH: WIDTH,
        schema.HEIGHT: HEIGHT,
        schema.DECODE_METHOD: "seek",
        schema.FRAME_INDEX: None,  # a file that is not a video has no index (prepare leaves it out)
        schema.LABEL: 0,
    }


def manifest_table(rows: list[dict], num_classes: int = 3, multi_label: bool = False) -> pa.Table:
    names = [f"class{c}" for c in range(num_classes)]
    return pa.Table.from_pylist(rows, schema=schema.manifest_schema("folder", names, multi_label, 1))


Segment = tuple[int, float, float]  # (class, start, end) in seconds


def multi_label_rows(
    rows: list[dict], label_sets: list[list[int]] | None, segment_sets: list[list[Segment]] | None = None
) -> list[dict]:
    """Charades-like rows: ``labels`` and their action ``segments``.

    Args:
        rows: Single-label rows (``write_videos``).
        label_sets: Each video's classes, each an action over the whole video (``[0, duration]``); None when
            ``segment_sets`` gives the actions.
        segment_sets: Each video's actions; its ``labels`` are then their distinct classes (as in Charades).
    """
    if segment_sets is None:
        segment_sets = [
            [(c, 0.0, row[schema.DURATION]) for c in labels]
            for row, labels in zip(rows, label_sets, strict=True)
        ]
    out = []
    for row, segments in zip(rows, segment_sets, strict=True):
        row = {k: v for k, v in row.items() if k != schema.LABEL}
        labels = sorted({c for c, _, _ in segments})
        segments = [{"label": c, "start": s, "end": e} for c, s, e in segments]
        out.append({**row, schema.LABELS: labels, schema.SEGMENTS: segments})
    return out


def write_vfr_video(folder: str, video_id: str, pts_ms: list[int]) -> dict:
    """A variable-frame-rate H.264 MP4 (frame i shown at ``pts_ms[i]`` milliseconds, frames carry their index)
    and its single-label manifest row (label 0); its ``fps`` is the average rate, so ``i / fps`` is not frame
    i's time."""
    import av

    frames = index_frames(len(pts_ms), WIDTH, HEIGHT, seed=7)
    uri = os.path.join(folder, f"{video_id}.mp4")
    time_base = Fraction(1, 1000)
    with av.open(uri, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10, options={"bf": "0"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.time_base = time_base
        stream.time_base = time_base
        for pts, array in zip(pts_ms, frames, strict=True):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    index = index_video(uri)
    return {
        schema.VIDEO_ID: video_id,
        schema.VIDEO_URI: uri,
        schema.SPLIT: "test",
        schema.DURATION: index.duration,
        schema.NUM_FRAMES: index.num_frames,
        schema.FPS: index.fps,
        schema.WIDTH: WIDTH,
        schema.HEIGHT: HEIGHT,
        schema.DECODE_METHOD: index.method,
        schema.FRAME_INDEX: index_to_bytes(index),
        schema.LABEL: 0,
    }


def write_manifest(path: str, table: pa.Table) -> str:
    pq.write_table(table, path)
    return path


def frame_indices_of(clip: np.ndarray) -> np.ndarray:
    """The index code of every frame of a (..., H, W, 3) clip at the decoded size."""
    from pipeline.video.encode import frame_index_of

    flat = clip.reshape(-1, *clip.shape[-3:])
    return np.array([frame_index_of(f) for f in flat]).reshape(clip.shape[:-3])
