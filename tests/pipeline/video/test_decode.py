"""``pipeline.video.decode`` on the container/codec grid the tests write with PyAV (each frame carries its own index),
the index's round trip through a manifest's bytes, and how bad files and requests fail. Frame exactness on the odd
real-world files and on open-GOP / B-frame encodings is in ``test_frames.py``."""

from __future__ import annotations

import pickle
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline import storage
from pipeline.schema import DECODE_METHODS
from pipeline.video.decode import (
    SEEK,
    SEQUENTIAL,
    VideoDecodeError,
    index_from_bytes,
    index_to_bytes,
    index_video,
    read_frames,
)
from pipeline.video.encode import encode_video, frame_index_of, index_frames, write_video
from tests.pipeline.conftest import VIDEO_FORMATS, WriteIndexedVideo

NUM_FRAMES = 48
# Unsorted, with duplicates, first and last frame: the order and repetition of the request must come back.
REQUEST = [40, 3, 3, 47, 0, 21, 40, 9]


def indices_of(frames: np.ndarray) -> list[int]:
    return [frame_index_of(frame) for frame in frames]


def read(path: str, indices: list[int], **kwargs) -> np.ndarray:
    return read_frames(path, indices, index=index_video(path), **kwargs)


def test_index_code_round_trip() -> None:
    frames = index_frames(256, 64, 48)
    assert frames.shape == (256, 48, 64, 3) and frames.dtype == np.uint8
    assert indices_of(frames) == list(range(256))


@pytest.mark.parametrize("name", list(VIDEO_FORMATS))
def test_index_and_read_exact_frames(write_indexed_video: WriteIndexedVideo, name: str) -> None:
    path = write_indexed_video(name, num_frames=NUM_FRAMES, **VIDEO_FORMATS[name])
    index = index_video(path)
    assert (index.num_frames, index.width, index.height) == (NUM_FRAMES, 64, 48)
    assert index.fps == pytest.approx(25.0)
    assert index.duration == pytest.approx(NUM_FRAMES / 25.0)
    assert index.method in DECODE_METHODS
    frames = read_frames(path, REQUEST, index=index)
    assert frames.shape == (len(REQUEST), 48, 64, 3) and frames.dtype == np.uint8
    assert indices_of(frames) == REQUEST
    # every method that may read the file gives the same frames
    for method in (SEQUENTIAL,) if index.method == SEQUENTIAL else (SEEK, SEQUENTIAL):
        assert indices_of(read_frames(path, REQUEST, index=index, method=method)) == REQUEST


@pytest.mark.parametrize("name", list(VIDEO_FORMATS))
def test_index_survives_the_manifest_bytes(write_indexed_video: WriteIndexedVideo, name: str) -> None:
    path = write_indexed_video(name, num_frames=NUM_FRAMES, **VIDEO_FORMATS[name])
    index = index_video(path)
    data = index_to_bytes(index)
    back = index_from_bytes(path, data)
    np.testing.assert_array_equal(back.pts, index.pts)
    np.testing.assert_array_equal(back.keyframe_pts, index.keyframe_pts)
    for name_ in (
        "num_frames",
        "fps",
        "time_base",
        "width",
        "height",
        "rotation",
        "method",
        "note",
        "reordered",
    ):
        assert getattr(back, name_) == getattr(index, name_), name_
    assert len(data) < 1000  # a constant frame rate stores in a few bytes
    assert indices_of(read_frames(path, REQUEST, index=back)) == REQUEST


def test_index_bytes_of_another_version_are_refused(write_indexed_video: WriteIndexedVideo) -> None:
    path = write_indexed_video("v.mp4", num_frames=8, container_format="mp4")
    data = index_to_bytes(index_video(path)).replace(b'"version": 1', b'"version": 99')
    with pytest.raises(ValueError, match=r"v\.mp4.*prepare the manifest again"):
        index_from_bytes(path, data)
    with pytest.raises(ValueError, match="not readable"):
        index_from_bytes(path, b"garbage\n")


def test_mpeg2_program_stream_starts_late(write_indexed_video: WriteIndexedVideo) -> None:
    path = write_indexed_video("late.mpg", num_frames=NUM_FRAMES, **VIDEO_FORMATS["mpeg2.mpg"])
    with av.open(path) as container:
        stream = container.streams.video[0]
        assert float(stream.start_time * stream.time_base) == pytest.approx(0.54, abs=0.01)
    index = index_video(path)
    assert index.num_frames == NUM_FRAMES and index.method != "decord"  # decord's frame i was frame i + 12
    assert indices_of(read_frames(path, [0, 1, 12, 13], index=index)) == [0, 1, 12, 13]


def test_odd_frame_rate(write_indexed_video: WriteIndexedVideo) -> None:
    path = write_indexed_video("ntsc.mp4", num_frames=30, fps=Fraction(30000, 1001), container_format="mp4")
    index = index_video(path)
    assert index.fps == pytest.approx(29.97, abs=1e-3)
    assert index.num_frames == 30
    assert index.duration == pytest.approx(30 * 1001 / 30000)


@pytest.mark.timeout(60)
def test_header_over_reporting_frames(write_indexed_video: WriteIndexedVideo) -> None:
    path = write_indexed_video(
        "cut.avi", num_frames=64, container_format="avi", codec="cinepak", pix_fmt="rgb24", truncate=0.5
    )
    with av.open(path) as container:
        header_frames = container.streams.video[0].frames
    index = index_video(path)
    assert header_frames == 64 and 0 < index.num_frames < header_frames
    assert index.method != "decord"  # decord deadlocks in get_batch on over-reporting headers
    before_last = index.num_frames - 2
    assert indices_of(read_frames(path, [before_last, 0], index=index)) == [before_last, 0]
    with pytest.raises(VideoDecodeError, match="cut.avi"):
        read_frames(path, [index.num_frames], index=index)


@pytest.mark.parametrize("name", ["h264.mp4", "h264_bframes.avi", "mpeg2.mpg"])
def test_index_past_the_end_names_the_file(write_indexed_video: WriteIndexedVideo, name: str) -> None:
    path = write_indexed_video("short" + Path(name).suffix, num_frames=16, **VIDEO_FORMATS[name])
    index = index_video(path)
    with pytest.raises(VideoDecodeError, match="short") as raised:
        read_frames(path, [2, 16], index=index)
    assert raised.value.uri == path and "16" in raised.value.reason
    assert indices_of(read_frames(path, [15], index=index)) == [15]


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100, bytes(range(256)) * 64])
def test_garbage_raises_decode_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        index_video(str(path))


def test_missing_file_raises_decode_error(tmp_path: Path) -> None:
    with pytest.raises(VideoDecodeError, match="nowhere.mp4") as raised:
        index_video(str(tmp_path / "nowhere.mp4"))
    assert "cannot read" in raised.value.reason


def test_truncated_mp4_raises_decode_error(tmp_path: Path) -> None:
    data = encode_video(index_frames(16), 25, container_format="mp4")
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])  # the moov atom is at the end: nothing is decodable
    with pytest.raises(VideoDecodeError, match="half.mp4"):
        index_video(str(path))


def test_decode_error_is_picklable() -> None:
    error = pickle.loads(pickle.dumps(VideoDecodeError("s3://b/v.avi", "no video stream")))
    assert (error.uri, error.reason) == ("s3://b/v.avi", "no video stream")
    assert str(error) == "cannot decode video s3://b/v.avi: no video stream"


def test_reads_through_fsspec_memory() -> None:
    uri = "memory://stpa-test-video/clip.avi"
    write_video(uri, index_frames(NUM_FRAMES), 25, **VIDEO_FORMATS["h264_bframes.avi"])
    try:
        index = index_video(uri)
        assert index.num_frames == NUM_FRAMES
        assert indices_of(read_frames(uri, REQUEST, index=index)) == REQUEST
        # bytes the caller already holds are used as they are
        data = storage.read_bytes(uri)
        assert indices_of(read_frames("memory://elsewhere.avi", [5], index=index, data=data)) == [5]
    finally:
        storage.filesystem(uri)[0].rm("/stpa-test-video", recursive=True)


def test_bad_requests_are_refused(write_indexed_video: WriteIndexedVideo) -> None:
    path = write_indexed_video("ok.mp4", num_frames=8, container_format="mp4")
    with pytest.raises(ValueError, match="negative"):
        read(path, [-1])
    with pytest.raises(ValueError, match="non-empty"):
        read(path, [])
    with pytest.raises(ValueError, match="method"):
        read(path, [0], method="opencv")


# --- the real files in ../shared/data/videos (see ../shared/data/SOURCES.md) -------------------------------------
SHARED_FILES = {
    # name: (frames of a sequential decode, fps)
    "bikes.mp4": (250, 25.0),
    "carphone_pristine.mp4": (120, 30000 / 1001),
    "carphone_distorted.mp4": (120, 30000 / 1001),
    "single_face.mp4": (72, 30.0),
    "tree.avi": (68, 15.0),
    "test.avi": (164, 25.0),
    "demo.mp4": (280, 28.0),
}


@pytest.mark.shared_data
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(SHARED_FILES))
def test_real_files_read_like_a_sequential_decode(shared_videos: Path, name: str) -> None:
    path = shared_videos / name
    if not path.is_file():
        pytest.skip(f"{path} absent")
    data = path.read_bytes()
    index = index_video(str(path), data=data)
    assert (index.num_frames, index.fps) == (
        SHARED_FILES[name][0],
        pytest.approx(SHARED_FILES[name][1], abs=1e-3),
    )
    request = [index.num_frames - 1, 0, index.num_frames // 3, index.num_frames // 3 + 1, 7]
    frames = read_frames(str(path), request, index=index, data=data)
    reference = read_frames(str(path), request, index=index, data=data, method=SEQUENTIAL)
    assert frames.shape == reference.shape == (len(request), index.height, index.width, 3)
    diffs = np.abs(frames.astype(np.int16) - reference.astype(np.int16)).mean(axis=(1, 2, 3))
    assert np.all(diffs < index.max_mean_abs_diff), diffs


@pytest.mark.shared_data
@pytest.mark.timeout(60)
def test_tree_avi_over_reports_and_does_not_hang(shared_videos: Path) -> None:
    path = shared_videos / "tree.avi"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 444
    index = index_video(str(path))
    assert index.num_frames == 68 and index.method != "decord"
    assert read_frames(str(path), [67, 0], index=index).shape == (2, 240, 320, 3)
    with pytest.raises(VideoDecodeError, match="tree.avi"):
        read_frames(str(path), [68], index=index)
