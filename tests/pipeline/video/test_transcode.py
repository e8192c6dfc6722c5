"""Seek-friendly copies (pipeline/video/transcode.py), judged by plain PyAV and the index codes drawn into every
source frame (bar b of the top band bright when bit b of the frame's index is set), never by the project's reader:
frame i of the copy shows code i, at the source's time, with an IDR frame exactly every N frames."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline import storage
from pipeline.video.decode import SEQUENTIAL, VideoDecodeError, index_video
from pipeline.video.transcode import (
    TranscodeError,
    TranscodeSettings,
    check_copy,
    copy_size,
    encode_copy,
    transcode_video,
)
from tests.pipeline.conftest import SHARED_DATA
from tests.pipeline.video.test_frames import read_code, write_video

ODD = SHARED_DATA / "odd"
INTERVAL = 16
IDR_NAL, NON_IDR_NAL = 5, 1

# Sources: (container, codec, writer keyword arguments). 128x96, 120 frames at 25 fps unless timed otherwise.
SOURCES: dict[str, tuple[str, str, dict[str, object]]] = {
    "x264_opengop_bframes.mp4": (
        "mp4",
        "libx264",
        {"options": {"g": "24", "bf": "3", "x264-params": "open-gop=1"}},
    ),
    # keyframes every 12 frames: 12, 24, 36 are not multiples of 16 and must not become keyframes of the copy
    "closed_gop12.mp4": ("mp4", "libx264", {"options": {"g": "12", "bf": "0"}}),
    # AVI with B-frames: no presentation timestamps, read by a sequential decode (frame i at i / fps)
    "h264_bframes.avi": ("avi", "libx264", {"options": {"g": "16"}}),
    "xvid_bframes.avi": ("avi", "mpeg4", {"max_b_frames": 2}),
    # MPEG-2 program stream with B-frames whose first frame is at 0.54 s (the mpeg muxer's default delay)
    "mpeg2_late_start.mpg": ("mpeg", "mpeg2video", {"max_b_frames": 2}),
    # variable frame rate: 40 ms and 80 ms steps
    "vfr.mp4": (
        "mp4",
        "libx264",
        {
            "options": {"g": "12", "bf": "2"},
            "pts_ms": [int(t) for t in np.cumsum([0] + [40 if i % 3 else 80 for i in range(119)])],
        },
    ),
    "h264_10bit.mp4": ("mp4", "libx264", {"options": {"g": "12", "bf": "0"}, "pix_fmt": "yuv420p10le"}),
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("sources")
    return {name: write_video(folder / name, fmt, codec, **kw) for name, (fmt, codec, kw) in SOURCES.items()}


# --- plain PyAV views of a file ----------------------------------------------------------------------------------
def decoded(path: str) -> tuple[list[Fraction], list[np.ndarray], list[int]]:
    """A sequential decode of the first video stream: frame times (s, exact), RGB frames, display rotations."""
    times, frames, rotations = [], [], []
    with av.open(path) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            times.append(frame.pts * frame.time_base)
            frames.append(frame.to_ndarray(format="rgb24"))
            rotations.append(int(frame.rotation))
    return times, frames, rotations


def nal_types(payload: bytes) -> list[int]:
    """NAL unit types of an MP4 (AVCC, 4-byte lengths) H.264 sample."""
    types, position = [], 0
    while position + 4 < len(payload):
        length = int.from_bytes(payload[position : position + 4], "big")
        types.append(payload[position + 4] & 0x1F)
        position += 4 + length
    return types


def packets(path: str) -> list[tuple[int, int, bool, list[int]]]:
    """(pts, dts, keyframe flag, NAL types) of every video packet, in file order."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        return [(p.pts, p.dts, p.is_keyframe, nal_types(bytes(p))) for p in container.demux(stream) if p.size]


def upscaled_code(frame: np.ndarray, factor: int) -> int:
    """The index code of a frame scaled down by ``factor``: read after scaling it back up (nearest)."""
    return read_code(np.repeat(np.repeat(frame, factor, axis=0), factor, axis=1))


def assert_seek_friendly(path: str, num_frames: int) -> None:
    """Keyframes (container flag) and IDR slices exactly at frames 0, N, 2N...; no B-frames (pts == dts, rising)."""
    found = packets(path)
    assert len(found) == num_frames
    wanted = [i % INTERVAL == 0 for i in range(num_frames)]
    assert [key for _, _, key, _ in found] == wanted
    assert [IDR_NAL in nals for _, _, _, nals in found] == wanted
    assert all(IDR_NAL in nals or NON_IDR_NAL in nals for _, _, _, nals in found)
    pts = [p for p, _, _, _ in found]
    assert pts == [d for _, d, _, _ in found] and pts == sorted(pts)


# --- the copies ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SOURCES))
def test_copy_frame_i_is_source_frame_i(sources: dict[str, str], name: str, tmp_path: Path) -> None:
    """Scaled to half size (short side 48 of 96): every frame's code, time, keyframe and IDR slice checked."""
    source = sources[name]
    index = index_video(source)
    result = transcode_video(source, str(tmp_path / "copy.mp4"), TranscodeSettings(short_side=48))
    times, frames, rotations = decoded(result.uri)
    assert len(frames) == index.num_frames == 120
    assert [upscaled_code(frame, 2) for frame in frames] == list(range(120))
    assert {frame.shape for frame in frames} == {(48, 64, 3)} and set(rotations) == {0}
    source_times, _, _ = decoded(source)
    if index.method == SEQUENTIAL:  # no presentation timestamps: frame i at i / fps
        assert times == [Fraction(i, 25) for i in range(120)]
    else:  # the source's own times: VFR stays VFR, a late start stays late
        assert times == sorted(source_times)
    if name == "mpeg2_late_start.mpg":
        assert times[0] == Fraction(54, 100)
    if name == "vfr.mp4":
        assert {b - a for a, b in zip(times, times[1:], strict=False)} == {
            Fraction(40, 1000),
            Fraction(80, 1000),
        }
    assert_seek_friendly(result.uri, 120)
    assert (result.index.num_frames, result.index.width, result.index.height) == (120, 64, 48)
    assert Path(source).read_bytes() == Path(source).read_bytes()  # still readable: the original is untouched
    assert index_video(source).num_frames == 120


def test_small_source_is_not_upscaled_and_keyframe_interval_is_the_setting(tmp_path: Path) -> None:
    source = write_video(
        tmp_path / "src.mp4", "mp4", "libx264", options={"g": "250", "bf": "3"}, num_frames=50
    )
    result = transcode_video(
        source, str(tmp_path / "copy.mp4"), TranscodeSettings(short_side=256, keyframe_interval=7)
    )
    _, frames, _ = decoded(result.uri)
    assert [read_code(frame) for frame in frames] == list(range(50))
    assert frames[0].shape == (96, 128, 3)
    assert [key for _, _, key, _ in packets(result.uri)] == [i % 7 == 0 for i in range(50)]


def test_copy_on_an_fsspec_store(sources: dict[str, str]) -> None:
    """The copy goes through fsspec (here memory://), like every read and write of the project."""
    result = transcode_video(sources["vfr.mp4"], "memory://copies/vfr.mp4", TranscodeSettings(short_side=48))
    assert result.uri == "memory://copies/vfr.mp4"
    data = storage.read_bytes(result.uri)
    assert len(data) == result.num_bytes
    with av.open(io.BytesIO(data)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert [upscaled_code(frame, 2) for frame in frames] == list(range(120))
    storage.remove(result.uri)


@pytest.mark.shared_data
def test_rotation_is_applied(tmp_path: Path) -> None:
    """rotated90.mp4 (display matrix: 90 degrees): the copy's pixels are upright, 96 wide and 128 tall, and it
    carries no rotation, so a plain decode reads the codes without turning the frames."""
    if not (ODD / "rotated90.mp4").exists():
        pytest.skip("shared odd videos not found")
    result = transcode_video(str(ODD / "rotated90.mp4"), str(tmp_path / "copy.mp4"), TranscodeSettings())
    _, frames, rotations = decoded(result.uri)
    assert frames[0].shape == (128, 96, 3) and set(rotations) == {0}
    # The source's frames in display orientation: coded frames turned by its rotation (counter-clockwise, -90).
    assert [read_code(np.rot90(frame, k=1)) for frame in frames] == list(range(60))
    assert_seek_friendly(result.uri, 60)


@pytest.mark.shared_data
def test_mid_stream_size_change(tmp_path: Path) -> None:
    """reschange.mkv: 40 frames of 128x96 then 40 of 160x128 (codes 0-39 twice): one size, every frame kept."""
    if not (ODD / "reschange.mkv").exists():
        pytest.skip("shared odd videos not found")
    result = transcode_video(str(ODD / "reschange.mkv"), str(tmp_path / "copy.mp4"), TranscodeSettings())
    _, frames, _ = decoded(result.uri)
    assert {frame.shape for frame in frames} == {(96, 128, 3)}
    assert [read_code(frame) for frame in frames] == [i % 40 for i in range(80)]
    assert_seek_friendly(result.uri, 80)


# --- the check and the errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("width", "height", "short_side", "expected"),
    [
        (640, 480, 256, (342, 256)),  # FFmpeg's scale=-2:256
        (480, 640, 256, (256, 342)),  # portrait
        (320, 240, 256, (320, 240)),  # smaller: kept
        (101, 75, 256, (100, 74)),  # odd sides: rounded down to even, never up
        (1920, 1080, 256, (456, 256)),
    ],
)
def test_copy_size(width: int, height: int, short_side: int, expected: tuple[int, int]) -> None:
    assert copy_size(width, height, short_side) == expected


def test_check_refuses_a_copy_that_is_not_the_source(sources: dict[str, str], tmp_path: Path) -> None:
    source = sources["closed_gop12.mp4"]
    index = index_video(source)
    settings = TranscodeSettings(short_side=48)
    data = Path(source).read_bytes()
    copy_bytes, encoded = encode_copy(source, data, index, settings)
    copy_index = index_video("copy.mp4", data=copy_bytes)
    check_copy("copy.mp4", copy_index, index, settings, copy_bytes, encoded)  # the real copy passes
    with pytest.raises(TranscodeError, match="keyframes at frames"):
        check_copy(
            "copy.mp4",
            copy_index,
            index,
            TranscodeSettings(short_side=48, keyframe_interval=8),
            copy_bytes,
            encoded,
        )
    with pytest.raises(TranscodeError, match="is 64x48"):
        check_copy("copy.mp4", copy_index, index, TranscodeSettings(short_side=32), copy_bytes, encoded)
    shifted = {position: encoded[0] for position in encoded}  # frame 0 where the middle and last frames were
    with pytest.raises(TranscodeError, match="differs from the frame encoded there"):
        check_copy("copy.mp4", copy_index, index, settings, copy_bytes, shifted)
    other = index_video(sources["vfr.mp4"])  # another source's timestamps
    with pytest.raises(TranscodeError, match="shows frame 1 at 0.040000 s, the source at 0.080000 s"):
        check_copy("copy.mp4", copy_index, other, settings, copy_bytes, encoded)


def test_errors(sources: dict[str, str], tmp_path: Path) -> None:
    source = sources["closed_gop12.mp4"]
    with pytest.raises(TranscodeError, match="would overwrite the source"):
        transcode_video(source, source, TranscodeSettings())
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        transcode_video(str(broken), str(tmp_path / "copy.mp4"), TranscodeSettings())
    assert not (tmp_path / "copy.mp4").exists()
    for bad in ({"short_side": 0}, {"keyframe_interval": 0}, {"crf": 60}, {"preset": "ludicrous"}):
        with pytest.raises(ValueError):
            TranscodeSettings(**bad)
