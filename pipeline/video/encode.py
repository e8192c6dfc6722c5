"""Writing small videos with PyAV: the encoder behind the tests, the decode benchmark and the dataset generator.

decord cannot encode; PyAV bundles FFmpeg (with libx264 here). Frames go in as uint8 ``(N, H, W, 3)`` RGB arrays
in [0, 255]. The encoded bytes are written through fsspec (``pipeline.storage.write_bytes``), so a test can put a
video on ``memory://`` as easily as on a local disk.

``index_frames`` / ``frame_index_of`` draw and read back a frame's own index as a row of black/white blocks, so a
test can assert exactly which frame a decoder returned even after lossy compression.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from fractions import Fraction

import av
import numpy as np

from pipeline import storage

# Frame-index code: NUM_INDEX_BITS blocks side by side across the top INDEX_BAND_HEIGHT rows, bit b (LSB first)
# white when set. Blocks are at least 8 px wide so 4:2:0 chroma subsampling and 8x8 DCT blocks keep them apart.
NUM_INDEX_BITS = 8
INDEX_BAND_HEIGHT = 16
_BLACK, _WHITE = 16, 235  # video-range levels: survive the RGB -> YUV -> RGB round trip without clipping


def index_frames(num_frames: int, width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    """Frames that carry their own index: a binary code in the top band and a moving texture below it.

    The texture (a diagonal ramp that drifts by 2 px per frame plus fixed noise) gives the encoder motion to
    predict, so inter-frame coding (P and B frames) is really exercised.

    Args:
        num_frames: Number of frames, at most ``2 ** NUM_INDEX_BITS``.
        width: Frame width in pixels; at least ``8 * NUM_INDEX_BITS`` and even.
        height: Frame height in pixels; at least ``INDEX_BAND_HEIGHT + 8`` and even.
        seed: Seed of the fixed noise.

    Returns:
        uint8 ``(num_frames, height, width, 3)`` RGB in [0, 255].
    """
    if not 1 <= num_frames <= 2**NUM_INDEX_BITS:
        raise ValueError(f"num_frames must be in [1, {2**NUM_INDEX_BITS}], got {num_frames}")
    if width < 8 * NUM_INDEX_BITS or width % 2 or height < INDEX_BAND_HEIGHT + 8 or height % 2:
        raise ValueError(f"frame size {width}x{height} too small or odd for the index code")
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 24, size=(height, width), dtype=np.int64)
    rows, cols = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    block_width = width // NUM_INDEX_BITS
    for i in range(num_frames):
        ramp = (rows + cols + 2 * i) % 64 * 2 + 40 + noise  # (H, W) in [40, 189]
        frame = np.stack([ramp, 255 - ramp, (ramp * 3) % 200 + 20], axis=-1)  # (H, W, 3)
        frame[:INDEX_BAND_HEIGHT] = _BLACK
        for bit in range(NUM_INDEX_BITS):
            if (i >> bit) & 1:
                frame[:INDEX_BAND_HEIGHT, bit * block_width : (bit + 1) * block_width] = _WHITE
        frames[i] = frame.astype(np.uint8)
    return frames


def frame_index_of(frame: np.ndarray) -> int:
    """The index drawn by ``index_frames`` into ``frame`` (uint8 ``(H, W, 3)``), read from block means."""
    height, width = frame.shape[:2]
    if height < INDEX_BAND_HEIGHT or width < 8 * NUM_INDEX_BITS:
        raise ValueError(f"frame of shape {frame.shape} is too small to carry an index code")
    block_width = width // NUM_INDEX_BITS
    band = frame[2 : INDEX_BAND_HEIGHT - 2].astype(np.float64).mean(axis=-1)  # (h, W), margins skipped
    index = 0
    for bit in range(NUM_INDEX_BITS):
        block = band[:, bit * block_width + 2 : (bit + 1) * block_width - 2]
        if block.mean() > (_BLACK + _WHITE) / 2:
            index |= 1 << bit
    return index


def encode_video(
    frames: np.ndarray,
    fps: float | Fraction,
    *,
    container_format: str = "mp4",
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    codec_options: Mapping[str, str] | None = None,
    container_options: Mapping[str, str] | None = None,
    gop_size: int | None = None,
    max_b_frames: int | None = None,
    start_pts: int = 0,
) -> bytes:
    """Encode frames into a video file held in memory.

    Args:
        frames: uint8 ``(N, H, W, 3)`` RGB in [0, 255].
        fps: Frame rate; a float such as 29.97 is turned into the nearest NTSC-style fraction (30000/1001).
        container_format: FFmpeg muxer name (``mp4``, ``avi``, ``mpeg``, ``matroska``, ...).
        codec: FFmpeg encoder name (``libx264``, ``mpeg4``, ``mpeg2video``, ``cinepak``, ...).
        pix_fmt: Pixel format of the encoded stream.
        codec_options: Encoder private options (e.g. ``{"bf": "0"}`` or x264's ``{"x264-params": ...}``).
        container_options: Muxer options (e.g. ``{"muxdelay": "0"}`` for the ``mpeg`` muxer).
        gop_size: Keyframe interval, when not the encoder's default.
        max_b_frames: Maximum consecutive B-frames, when not the encoder's default.
        start_pts: Presentation timestamp of the first frame, in units of ``1 / fps`` (a late-starting stream).

    Returns:
        The bytes of the encoded container.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    rate = frame_rate(fps)
    buffer = io.BytesIO()
    with av.open(
        buffer, mode="w", format=container_format, options=dict(container_options or {})
    ) as container:
        stream = container.add_stream(codec, rate=rate, options=dict(codec_options or {}))
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = pix_fmt
        stream.codec_context.time_base = 1 / rate
        if gop_size is not None:
            stream.codec_context.gop_size = gop_size
        if max_b_frames is not None:
            stream.codec_context.max_b_frames = max_b_frames
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = start_pts + i
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def write_video(uri: str, frames: np.ndarray, fps: float | Fraction, **kwargs: object) -> str:
    """Encode ``frames`` (see ``encode_video`` for the keyword arguments) and write the file to ``uri``.

    Returns:
        ``uri`` in normalised form (``pipeline.storage.normalize_uri``).
    """
    data = encode_video(frames, fps, **kwargs)  # type: ignore[arg-type]
    storage.write_bytes(uri, data)
    return storage.normalize_uri(uri)


def frame_rate(fps: float | Fraction) -> Fraction:
    """``fps`` as an exact fraction: 29.97 -> 30000/1001, 25.0 -> 25."""
    if isinstance(fps, Fraction):
        return fps
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    for base in (24, 30, 60, 120):
        ntsc = Fraction(base * 1000, 1001)
        if abs(fps - float(ntsc)) < 0.005:
            return ntsc
    return Fraction(fps).limit_denominator(1001)
