"""``stpa inspect``: decode one clip of a video exactly as the model sees it at test time.

The video is indexed as ``stpa prepare`` indexes it (``pipeline.video.decode.index_video``: frame timestamps and
keyframes by demuxing, and the read method that gives exact frames), then one clip is decoded with the test-time
sampling through ``pipeline.clips.dataset.decode_views``, the function behind every row of the Ray clip dataset.
"""

from __future__ import annotations

import io

import numpy as np

from pipeline import storage
from pipeline.clips.dataset import ClipConfig, decode_views
from pipeline.video.decode import index_video, read_video_bytes


def contact_sheet_png(clip: np.ndarray) -> bytes:
    """A PNG of a clip's frames: one row per segment, its T frames left to right.

    Args:
        clip: uint8 (K, T, H, W, 3).
    """
    from PIL import Image

    k, t, h, w, _ = clip.shape
    sheet = clip.transpose(0, 2, 1, 3, 4).reshape(k * h, t * w, 3)  # (K*H, T*W, 3)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(sheet)).save(buffer, format="PNG")
    return buffer.getvalue()


def inspect_video(
    uri: str,
    *,
    num_segments: int = 8,
    frames_per_segment: int = 1,
    size: int | None = None,
    out: str | None = None,
    contact_sheet: str | None = None,
) -> dict:
    """Probe a video, decode its test-time clip, optionally save it, and describe what was taken.

    Args:
        uri: Video path or fsspec URI.
        num_segments: K (TSN segments).
        frames_per_segment: T (consecutive frames per segment).
        size: Resize the shorter side to ``size`` and centre-crop ``size`` x ``size``; None keeps the decoded
            resolution.
        out: Where to save the clip as ``.npy`` (uint8 (K, T, H, W, 3)), any fsspec URI.
        contact_sheet: Where to save a PNG contact sheet (rows = segments), any fsspec URI.

    Returns:
        JSON-able description: the video's frame count, fps, size, duration and decode method, the frame indices
        taken (K lists of T), the clip's shape and dtype, and where it was saved.

    Raises:
        pipeline.video.decode.VideoDecodeError: the video cannot be decoded.
    """
    data = read_video_bytes(uri)
    probe = index_video(uri, data=data)
    config = ClipConfig(
        num_segments=num_segments,
        frames_per_segment=frames_per_segment,
        train=False,
        short_side=size,
        crop_size=size,
    )
    views, indices = decode_views(uri, probe, config, None, data=data)
    clip = views[0]  # (K, T, H, W, 3): the single test view
    if out is not None:
        buffer = io.BytesIO()
        np.save(buffer, clip)
        storage.write_bytes(out, buffer.getvalue())
    if contact_sheet is not None:
        storage.write_bytes(contact_sheet, contact_sheet_png(clip))
    return {
        "video": storage.normalize_uri(uri),
        "num_frames": probe.num_frames,
        "fps": probe.fps,
        "width": probe.width,
        "height": probe.height,
        "duration": probe.duration,
        "decode_method": probe.method,
        "rotation": probe.rotation,
        "decode_note": probe.note,
        "frame_indices": indices[0].tolist(),
        "shape": list(clip.shape),
        "dtype": str(clip.dtype),
        "out": storage.normalize_uri(out) if out else None,
        "contact_sheet": storage.normalize_uri(contact_sheet) if contact_sheet else None,
    }
