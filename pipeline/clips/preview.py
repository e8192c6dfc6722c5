"""``stpa inspect``: decode one clip of a video exactly as the model sees it at test time.

The video is indexed as ``stpa prepare`` indexes it (``pipeline.video.decode.index_video``: frame timestamps and
keyframes by demuxing, and the read method that gives exact frames), then one clip is decoded with the test-time
sampling through ``pipeline.clips.dataset.decode_views``, the function behind every row of the Ray clip dataset.
"""

from __future__ import annotations

import io

import numpy as np

from pipeline import storage
from pipeline.clips.dataset import ClipConfig, decode_views, frame_times_of
from pipeline.video.decode import index_video, read_video_bytes


def contact_sheet_png(
    clip: np.ndarray, frame_indices: np.ndarray | None = None, frame_times: np.ndarray | None = None
) -> bytes:
    """A PNG grid of a clip's frames, each labelled with its segment, frame index and time.

    Frames run left to right, then top to bottom, in clip order (segment by segment), at most 4 per row (a
    clip of K = 8 single-frame segments is a 4 x 2 grid, not a 1 x 8 strip). Each cell has a caption strip
    above it: ``seg k  #i  t.tt s`` (the index and time when given).

    Args:
        clip: uint8 (K, T, H, W, 3).
        frame_indices: int (K, T): each frame's index in the video, or None.
        frame_times: float (K, T): each frame's time in seconds, or None.

    Returns:
        The PNG file's bytes.
    """
    from PIL import Image, ImageDraw

    k, t, h, w, _ = clip.shape
    frames = clip.reshape(k * t, h, w, 3)  # (K*T, H, W, 3) in clip order
    columns = min(4, k * t)
    rows = -(-len(frames) // columns)
    caption = 14
    sheet = Image.new("RGB", (columns * w, rows * (h + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for n, frame in enumerate(frames):
        x, y = (n % columns) * w, (n // columns) * (h + caption)
        sheet.paste(Image.fromarray(np.ascontiguousarray(frame)), (x, y + caption))
        label = f"seg {n // t}"
        if frame_indices is not None:
            label += f"  #{int(frame_indices.reshape(-1)[n])}"
        if frame_times is not None:
            label += f"  {float(frame_times.reshape(-1)[n]):.2f} s"
        draw.text((x + 2, y + 1), label, fill="black")
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
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
        contact_sheet: Where to save a PNG contact sheet (a labelled grid: ``contact_sheet_png``), any fsspec URI.

    Returns:
        JSON-able description: the video's frame count, fps, size, duration and decode method, the frame indices
        taken and their times in seconds (K lists of T), the clip's shape and dtype, and where it was saved.

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
    times = frame_times_of(probe)[indices[0]]  # (K, T) seconds
    if out is not None:
        buffer = io.BytesIO()
        np.save(buffer, clip)
        storage.write_bytes(out, buffer.getvalue())
    if contact_sheet is not None:
        storage.write_bytes(contact_sheet, contact_sheet_png(clip, indices[0], times))
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
        "frame_times": np.round(times, 6).tolist(),
        "shape": list(clip.shape),
        "dtype": str(clip.dtype),
        "out": storage.normalize_uri(out) if out else None,
        "contact_sheet": storage.normalize_uri(contact_sheet) if contact_sheet else None,
    }
