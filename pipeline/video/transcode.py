"""Seek-friendly copies of one video: decode with PyAV, re-encode to H.264 in MP4 at a chosen short side and a fixed
keyframe interval, then re-index the copy and check it against the source.

Why: a sparse read decodes from the keyframe before each wanted frame (``pipeline.video.decode``), so its cost
grows with the distance between keyframes and with the frame size. Sources such as Charades (480p H.264, a keyframe
every 250 frames as x264 writes by default) cost several times more per training clip than a copy at short side
256 with a keyframe every 16 frames (``benchmarks/transcode.py``). MMAction2 and PySlowFast recommend the same
re-encoding (``ffmpeg -vf scale=-2:256 -g 16``); this module does it without the ffmpeg command-line tool (PyAV
bundles libx264), one video per call, so ``pipeline.data.transcode`` can spread a manifest over Ray tasks.

What a copy is, for a source indexed by ``index_video`` (``VideoIndex``):

- **Frame i of the copy is frame i of the source** (``pipeline.video.decode``'s "frame i": the i-th frame of a
  sequential decode of the main stream, in display orientation, frames after a mid-stream size change scaled to
  one size): the same number of frames, in the same order, none dropped or duplicated.
- **Timestamps**: frame i keeps the source's presentation time (``pts[i] * time_base`` seconds, exactly: the copy's
  stream uses the source's time base, or a power-of-two multiple of it, which is what the MP4 muxer chooses), so a
  variable-frame-rate source stays variable and a source that starts late (an MPEG program stream at 0.54 s) starts
  late. Sources read by a sequential decode ("sequential": their timestamps do not index frames) get frame i at
  ``i / fps``, the time ``pipeline.clips.dataset.frame_times_of`` gives them.
- **Size**: the shorter side scaled down to ``short_side`` (aspect ratio kept, both sides even as 4:2:0 needs,
  bicubic as FFmpeg's ``scale`` filter by default); never scaled up (a smaller source keeps its size, rounded down
  to even sides).
- **Rotation applied**: the pixels are turned to display orientation (as the reader shows them) and the copy
  carries no display matrix.
- **Keyframes**: an IDR frame exactly at frames 0, N, 2N, ... and nowhere else (x264 ``keyint=min-keyint=N``,
  ``scenecut=0``, closed GOP), no B-frames, so frames are stored in presentation order and a read of frame i
  decodes at most N frames. Decoded frames keep the picture type the source coded them with; libx264 turns every
  frame marked I into a keyframe (FFmpeg's libx264 wrapper maps ``AV_PICTURE_TYPE_I`` to ``X264_TYPE_KEYFRAME``),
  which would add the source's keyframes to the copy's, so the picture type is cleared before encoding.

``transcode_video`` then indexes the copy (``index_video``) and raises ``TranscodeError`` unless the copy has the
source's frame count and frame times, keyframes exactly every N frames, no reordering, the planned size and no
rotation, and a few frames (first, middle, last) decoded from the copy match the frames that were encoded there.
"""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Final

import av
import numpy as np

from pipeline import storage
from pipeline.video.decode import (
    SEEK,
    SEQUENTIAL,
    VideoDecodeError,
    VideoIndex,
    index_video,
    open_video,
    read_frames,
    read_video_bytes,
)
from pipeline.video.encode import frame_rate

# Bump when a copy made by this code would differ in meaning from one made before (what pipeline.data.transcode
# compares, with the settings, before reusing a copy).
TRANSCODE_VERSION: Final = 1
PRESETS: Final = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
)
# Mean absolute difference (grey levels, RGB) between a frame decoded from the copy and the frame encoded there,
# above which the copy is refused. At CRF 20 the coding error is about 1-3 levels on synthetic and real frames;
# this catches a shifted or wrong frame between unlike frames, not between near-identical neighbours (frame
# identity is proven by the timestamps and the tests' index codes).
MAX_CHECK_MEAN_ABS_DIFF: Final = 12.0
_NUM_CHECK_FRAMES: Final = 3


class TranscodeError(RuntimeError):
    """A copy that could not be made or failed its check against the source; names the file and the reason."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"cannot transcode video {uri}: {reason}")
        self.uri = uri
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across Ray workers
        return (type(self), (self.uri, self.reason))


@dataclass(frozen=True)
class TranscodeSettings:
    """How copies are encoded (``stpa transcode``'s flags); what a copy is reused by, with the source's identity.

    Attributes:
        short_side: The copy's shorter side in pixels (sources whose shorter side is smaller keep their size).
        keyframe_interval: Frames from one keyframe (IDR) to the next: a read decodes at most this many frames.
        crf: x264's constant rate factor (quality: 0 lossless, 18 visually lossless, 23 x264's default).
        preset: x264's speed preset (slower: smaller files at the same quality, more CPU).
    """

    short_side: int = 256
    keyframe_interval: int = 16
    crf: int = 20
    preset: str = "veryfast"

    def __post_init__(self) -> None:
        if self.short_side < 2:
            raise ValueError(f"short_side must be >= 2 pixels, got {self.short_side}")
        if self.keyframe_interval < 1:
            raise ValueError(f"keyframe_interval must be >= 1 frame, got {self.keyframe_interval}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {self.crf}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")

    def to_dict(self) -> dict:
        """The settings and ``TRANSCODE_VERSION``: equal dicts mean interchangeable copies."""
        return {**dataclasses.asdict(self), "version": TRANSCODE_VERSION}


@dataclass(frozen=True)
class TranscodeResult:
    """What ``transcode_video`` wrote.

    Attributes:
        uri: The copy.
        index: The copy's frame index (``index_video`` on the written bytes, URI ``uri``).
        num_bytes: Size of the copy.
        source_width, source_height: The source's frame size in display orientation, pixels.
        seconds: Wall-clock seconds of the whole call (decode, encode, write, check).
        cpu_seconds: CPU seconds of this process during the call.
    """

    uri: str
    index: VideoIndex
    num_bytes: int
    source_width: int
    source_height: int
    seconds: float
    cpu_seconds: float


def copy_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """``(width, height)`` of the copy of a ``width`` x ``height`` frame (display orientation): the shorter side
    scaled to ``short_side`` unless it is shorter already, the longer side in proportion, both rounded to even
    (FFmpeg's ``scale=-2:256``; 4:2:0 needs even sides).

    Raises:
        ValueError: a side would be under 2 pixels.
    """
    short = min(width, height)
    if short <= short_side:  # never scaled up, not even by the rounding
        new_width, new_height = width - width % 2, height - height % 2
    else:
        scale = short_side / short
        new_width, new_height = (2 * round(side * scale / 2) for side in (width, height))
    if min(new_width, new_height) < 2:
        raise ValueError(f"a {width}x{height} frame is too small to encode in 4:2:0")
    return new_width, new_height


def _encoder_options(settings: TranscodeSettings) -> dict[str, str]:
    n = settings.keyframe_interval
    return {
        "preset": settings.preset,
        "crf": str(settings.crf),
        # keyint = min-keyint and no scene cuts: keyframes exactly every n frames (x264 clamps min-keyint to
        # keyint / 2 + 1, which scenecut=0 makes irrelevant); closed GOP: every keyframe is an IDR frame.
        "x264-params": f"keyint={n}:min-keyint={n}:scenecut=0:bframes=0:open-gop=0:log-level=error",
    }


def _output_timing(index: VideoIndex) -> tuple[Fraction, np.ndarray]:
    """The copy's time base and frame i's pts in it: the source's own, or ``i / fps`` for sequential sources."""
    if index.method == SEQUENTIAL:
        rate = frame_rate(index.fps)
        return 1 / rate, np.arange(index.num_frames, dtype=np.int64)
    return index.time_base, index.pts


def _prepare_frame(
    frame: av.VideoFrame, index: VideoIndex, coded_size: tuple[int, int], pts: int, time_base: Fraction
) -> tuple[av.VideoFrame, np.ndarray | None]:
    """The frame to encode (yuv420p at the copy's size, display orientation, picture type cleared, pts set), and
    its RGB pixels when they were made on the way (rotated sources), else None."""
    rgb = None
    if index.rotation:
        # Scaled in coded orientation, then turned as pipeline.video.decode._to_rgb turns frames (np.rot90 by the
        # counter-clockwise rotation), then converted to the encoder's format.
        coded = frame.reformat(
            width=coded_size[0], height=coded_size[1], format="rgb24", interpolation="BICUBIC"
        )
        rgb = np.ascontiguousarray(np.rot90(coded.to_ndarray(), k=index.rotation // 90))  # (H, W, 3)
        out = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    else:
        out = frame.reformat(
            width=coded_size[0], height=coded_size[1], format="yuv420p", interpolation="BICUBIC"
        )
    out.pict_type = av.video.frame.PictureType.NONE  # or libx264 makes the source's I-frames keyframes
    out.pts = pts
    out.time_base = time_base
    return out, rgb


def encode_copy(
    uri: str, data: bytes, index: VideoIndex, settings: TranscodeSettings
) -> tuple[bytes, dict[int, np.ndarray]]:
    """Decode the source sequentially and encode the copy (see the module docstring).

    Args:
        uri: The source (for messages).
        data: The source's bytes.
        index: ``index_video``'s result for the source.
        settings: Encoder settings.

    Returns:
        The MP4 bytes, and uint8 ``(height, width, 3)`` RGB of the frames encoded at the check positions (first,
        middle, last), by frame index.

    Raises:
        VideoDecodeError: the source does not decode to the frames its index lists (count, timestamps).
    """
    width, height = copy_size(index.width, index.height, settings.short_side)
    coded_size = (height, width) if index.rotation in (90, 270) else (width, height)
    time_base, out_pts = _output_timing(index)
    check_positions = {0, index.num_frames // 2, index.num_frames - 1}
    checked: dict[int, np.ndarray] = {}
    buffer = io.BytesIO()
    container, stream = open_video(uri, data, index.stream_index)
    position = 0
    try:
        with av.open(buffer, mode="w", format="mp4") as output:
            rate = frame_rate(index.fps)
            video = output.add_stream("libx264", rate=rate, options=_encoder_options(settings))
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.codec_context.time_base = time_base
            video.time_base = time_base
            video.codec_context.gop_size = settings.keyframe_interval
            video.codec_context.max_b_frames = 0
            video.codec_context.thread_count = 1  # one CPU per copy: parallelism comes from Ray tasks
            try:
                for frame in container.decode(stream):
                    if position == index.num_frames:
                        raise VideoDecodeError(
                            uri, f"the decode gives more than the {index.num_frames} indexed frames"
                        )
                    if index.method != SEQUENTIAL and frame.pts != index.pts[position]:
                        raise VideoDecodeError(
                            uri,
                            f"frame {position} decodes with pts {frame.pts}, the index says {index.pts[position]}",
                        )
                    out, rgb = _prepare_frame(frame, index, coded_size, int(out_pts[position]), time_base)
                    if position in check_positions:
                        checked[position] = rgb if rgb is not None else out.to_ndarray(format="rgb24")
                    output.mux(video.encode(out))
                    position += 1
            except av.error.FFmpegError as error:
                # A damaged tail: the index counted the frames that decode (sequential sources), keep them.
                if position < index.num_frames:
                    raise VideoDecodeError(
                        uri, f"PyAV decode failed at frame {position} ({error})"
                    ) from error
            if position < index.num_frames:
                raise VideoDecodeError(
                    uri, f"the decode gives {position} frames, the index {index.num_frames}"
                )
            output.mux(video.encode(None))
    finally:
        container.close()
    return buffer.getvalue(), checked


def check_copy(
    uri: str,
    copy: VideoIndex,
    source: VideoIndex,
    settings: TranscodeSettings,
    data: bytes,
    encoded: dict[int, np.ndarray],
) -> None:
    """Raise ``TranscodeError`` unless ``copy`` (the copy's index) is what ``source`` should have become.

    Checks: frame count; every frame's time in seconds, exactly (rational pts x time base); keyframes at frames
    0, N, 2N, ... and no others; no reordering; read method "seek"; size ``copy_size``; no rotation; the frames at
    the positions in ``encoded`` decoded from ``data`` (the copy) against the RGB encoded there.
    """

    def fail(reason: str) -> None:
        raise TranscodeError(source.uri, f"the copy {uri} {reason}")

    if copy.num_frames != source.num_frames:
        fail(f"has {copy.num_frames} frames, the source {source.num_frames}")
    time_base, out_pts = _output_timing(source)
    expected = [p * time_base for p in out_pts.tolist()]  # seconds, exact
    got = [p * copy.time_base for p in copy.pts.tolist()]
    if got != expected:
        first = next(i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b)
        fail(
            f"shows frame {first} at {float(got[first]):.6f} s, the source at {float(expected[first]):.6f} s"
        )
    keyframes = np.searchsorted(copy.pts, copy.keyframe_pts).tolist()
    wanted = list(range(0, copy.num_frames, settings.keyframe_interval))
    if keyframes != wanted:
        fail(f"has keyframes at frames {keyframes[:8]}..., expected every {settings.keyframe_interval}")
    if copy.reordered or copy.method != SEEK:
        fail(f"reorders frames or is not read by seeking (method {copy.method}, {copy.note})")
    size = copy_size(source.width, source.height, settings.short_side)
    if (copy.width, copy.height, copy.rotation) != (*size, 0):
        fail(f"is {copy.width}x{copy.height} rotated {copy.rotation}, expected {size[0]}x{size[1]} unrotated")
    positions = sorted(encoded)
    frames = read_frames(uri, positions, index=copy, data=data)  # (P, H, W, 3)
    for position, frame in zip(positions, frames, strict=True):
        difference = np.abs(frame.astype(np.int16) - encoded[position]).mean()
        if difference > MAX_CHECK_MEAN_ABS_DIFF:
            fail(f"frame {position} differs from the frame encoded there by {difference:.1f} grey levels")


def transcode_video(
    source_uri: str,
    copy_uri: str,
    settings: TranscodeSettings,
    *,
    index: VideoIndex | None = None,
    data: bytes | None = None,
) -> TranscodeResult:
    """Write a seek-friendly H.264 MP4 copy of one video and check it (see the module docstring).

    Args:
        source_uri: The video (fsspec URI or local path); never written.
        copy_uri: Where the copy goes (fsspec URI or local path; overwritten).
        settings: Short side, keyframe interval and encoder settings.
        index: The source's ``index_video`` result, when the caller has it (a manifest's ``frame_index``).
        data: The source's bytes, when the caller has them.

    Returns:
        The copy's URI, index, size and the time it took.

    Raises:
        VideoDecodeError: the source cannot be read or decoded.
        TranscodeError: the copy would overwrite the source, could not be encoded, or failed its check.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    source_uri, copy_uri = storage.normalize_uri(source_uri), storage.normalize_uri(copy_uri)
    if source_uri == copy_uri:
        raise TranscodeError(source_uri, "the copy would overwrite the source")
    data = read_video_bytes(source_uri, data)
    index = index if index is not None else index_video(source_uri, data=data)
    try:
        copy_bytes, encoded = encode_copy(source_uri, data, index, settings)
    except (av.error.FFmpegError, ValueError) as error:
        raise TranscodeError(source_uri, f"encoding failed ({type(error).__name__}: {error})") from error
    try:
        copy_index = index_video(copy_uri, data=copy_bytes)
    except VideoDecodeError as error:
        raise TranscodeError(source_uri, f"the copy does not index ({error.reason})") from error
    check_copy(copy_uri, copy_index, index, settings, copy_bytes, encoded)
    storage.write_bytes(copy_uri, copy_bytes)
    return TranscodeResult(
        uri=copy_uri,
        index=copy_index,
        num_bytes=len(copy_bytes),
        source_width=index.width,
        source_height=index.height,
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
    )
