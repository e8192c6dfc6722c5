"""Decoding tests on real video files the tests write with PyAV (each frame carries its own index), plus the real
files in ../shared/data/videos when present."""

from __future__ import annotations

import io
import pickle
from fractions import Fraction
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from pipeline import storage
from pipeline.schema import DECODE_METHODS
from pipeline.video.decode import (
    MAX_MEAN_ABS_DIFF,
    VideoDecodeError,
    VideoDecoder,
    VideoProbe,
    check_positions,
    probe_video,
    read_frames,
    sequential_reference_frames,
)
from pipeline.video.encode import encode_video, frame_index_of, index_frames, write_video
from tests.pipeline.conftest import VIDEO_FORMATS, WriteIndexedVideo

NUM_FRAMES = 48
# Unsorted, with duplicates, first and last frame: the order and repetition of the request must come back.
REQUEST = [40, 3, 3, 47, 0, 21, 40, 9]


def indices_of(frames: np.ndarray) -> list[int]:
    return [frame_index_of(frame) for frame in frames]


def test_index_code_round_trip() -> None:
    frames = index_frames(256, 64, 48)
    assert frames.shape == (256, 48, 64, 3) and frames.dtype == np.uint8
    assert indices_of(frames) == list(range(256))


@pytest.mark.parametrize("name", list(VIDEO_FORMATS))
def test_probe_and_read_exact_frames(write_indexed_video: WriteIndexedVideo, name: str) -> None:
    path = write_indexed_video(name, num_frames=NUM_FRAMES, **VIDEO_FORMATS[name])
    probe = probe_video(path)
    assert (probe.num_frames, probe.width, probe.height) == (NUM_FRAMES, 64, 48)
    assert probe.fps == pytest.approx(25.0)
    assert probe.duration == pytest.approx(NUM_FRAMES / 25.0)
    assert probe.decode_method in DECODE_METHODS
    frames = read_frames(path, REQUEST, decode_method=probe.decode_method, num_frames=probe.num_frames)
    assert frames.shape == (len(REQUEST), 48, 64, 3) and frames.dtype == np.uint8
    assert indices_of(frames) == REQUEST
    assert indices_of(sequential_reference_frames(path, REQUEST)) == REQUEST


@pytest.mark.parametrize("name", ["h264_bframes.avi", "xvid_bframes.avi", "mpeg2.mpg"])
def test_probe_avoids_decord_sparse_access_where_it_is_wrong(
    write_indexed_video: WriteIndexedVideo, name: str
) -> None:
    path = write_indexed_video(name, num_frames=NUM_FRAMES, **VIDEO_FORMATS[name])
    # The file really triggers decord's bug: sparse get_batch returns other frames than requested.
    wanted = sorted(set(REQUEST))
    reader = decord.VideoReader(path, num_threads=1)
    assert indices_of(reader.get_batch(wanted).asnumpy()) != wanted
    del reader
    probe = probe_video(path)
    assert probe.decode_method != "decord"
    assert "decord wrong" in probe.note
    assert indices_of(read_frames(path, REQUEST, decode_method=probe.decode_method)) == REQUEST


def test_mpeg2_program_stream_starts_late(write_indexed_video: WriteIndexedVideo) -> None:
    path = write_indexed_video("late.mpg", num_frames=NUM_FRAMES, **VIDEO_FORMATS["mpeg2.mpg"])
    with av.open(path) as container:
        stream = container.streams.video[0]
        assert float(stream.start_time * stream.time_base) == pytest.approx(0.54, abs=0.01)
    probe = probe_video(path)
    assert probe.num_frames == NUM_FRAMES
    assert indices_of(read_frames(path, [0, 1, 12, 13], decode_method=probe.decode_method)) == [0, 1, 12, 13]


def test_odd_frame_rate(write_indexed_video: WriteIndexedVideo) -> None:
    path = write_indexed_video("ntsc.mp4", num_frames=30, fps=Fraction(30000, 1001), container_format="mp4")
    probe = probe_video(path)
    assert probe.fps == pytest.approx(29.97, abs=1e-3)
    assert probe.num_frames == 30
    assert probe.duration == pytest.approx(30 * 1001 / 30000)


@pytest.mark.timeout(60)
def test_header_over_reporting_frames(write_indexed_video: WriteIndexedVideo) -> None:
    path = write_indexed_video(
        "cut.avi", num_frames=64, container_format="avi", codec="cinepak", pix_fmt="rgb24", truncate=0.5
    )
    with av.open(path) as container:
        header_frames = container.streams.video[0].frames
    probe = probe_video(path)
    assert header_frames == 64 and 0 < probe.num_frames < header_frames
    # decord is never opened on such files (from memory it crashes the process on this one)
    assert probe.decode_method == "pyav"
    assert "header claims 64 frames" in probe.note
    # the cut lands inside the last packet, which decodes to a damaged copy of its predecessor: check the frames
    # before it by their index code, and the last one against the reference decode
    before_last = probe.num_frames - 2
    request = [before_last, 0, probe.num_frames - 1]
    frames = read_frames(path, request, decode_method=probe.decode_method)
    assert indices_of(frames[:2]) == [before_last, 0]
    np.testing.assert_array_equal(frames, sequential_reference_frames(path, request))
    with pytest.raises(VideoDecodeError, match="cut.avi"):
        read_frames(path, [probe.num_frames], decode_method="pyav")


@pytest.mark.parametrize("method", DECODE_METHODS)
def test_index_past_the_end_names_the_file(write_indexed_video: WriteIndexedVideo, method: str) -> None:
    path = write_indexed_video("short.mp4", num_frames=16, container_format="mp4")
    with pytest.raises(VideoDecodeError, match="short.mp4") as raised:
        read_frames(path, [2, 16], decode_method=method)
    assert raised.value.uri == path and "16" in raised.value.reason
    with pytest.raises(VideoDecodeError, match="short.mp4"):
        read_frames(path, [2, 20], decode_method=method, num_frames=16)
    assert indices_of(read_frames(path, [15], decode_method=method)) == [15]


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100, bytes(range(256)) * 64])
def test_garbage_raises_decode_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        probe_video(str(path))
    for method in DECODE_METHODS:
        with pytest.raises(VideoDecodeError, match="broken.mp4"):
            read_frames(str(path), [0], decode_method=method)


def test_missing_file_raises_decode_error(tmp_path: Path) -> None:
    with pytest.raises(VideoDecodeError, match="nowhere.mp4") as raised:
        probe_video(str(tmp_path / "nowhere.mp4"))
    assert "cannot read" in raised.value.reason


def test_truncated_mp4_raises_decode_error(tmp_path: Path) -> None:
    data = encode_video(index_frames(16), 25, container_format="mp4")
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])  # the moov atom is at the end: nothing is decodable
    with pytest.raises(VideoDecodeError, match="half.mp4"):
        probe_video(str(path))


def test_decode_error_is_picklable() -> None:
    error = pickle.loads(pickle.dumps(VideoDecodeError("s3://b/v.avi", "no video stream")))
    assert (error.uri, error.reason) == ("s3://b/v.avi", "no video stream")
    assert str(error) == "cannot decode video s3://b/v.avi: no video stream"


def test_reads_through_fsspec_memory() -> None:
    uri = "memory://stpa-test-video/clip.avi"
    write_video(uri, index_frames(NUM_FRAMES), 25, **VIDEO_FORMATS["h264_bframes.avi"])
    try:
        probe = probe_video(uri)
        assert probe.num_frames == NUM_FRAMES
        assert indices_of(read_frames(uri, REQUEST, decode_method=probe.decode_method)) == REQUEST
        # bytes the caller already holds are used as they are
        data = storage.read_bytes(uri)
        assert indices_of(read_frames("memory://elsewhere.avi", [5], decode_method="pyav", data=data)) == [5]
    finally:
        storage.filesystem(uri)[0].rm("/stpa-test-video", recursive=True)


@pytest.mark.parametrize("method", DECODE_METHODS)
def test_decoder_reads_several_clips(write_indexed_video: WriteIndexedVideo, method: str) -> None:
    path = write_indexed_video("clips.mp4", num_frames=NUM_FRAMES, container_format="mp4", gop_size=8)
    with VideoDecoder(path, decode_method=method, num_frames=NUM_FRAMES) as decoder:
        for clip in ([30, 31, 32], [2, 3, 4], [47, 46], [10, 20, 30, 40]):
            assert indices_of(decoder.read(clip)) == clip


def test_sequential_read_is_bounded_in_chunks(write_indexed_video: WriteIndexedVideo) -> None:
    # 100 frames span several SEQUENTIAL_CHUNKs; frames kept from different chunks come back in request order.
    path = write_indexed_video("long.avi", num_frames=100, **VIDEO_FORMATS["h264_bframes.avi"])
    request = [99, 15, 16, 17, 64, 0]
    assert indices_of(read_frames(path, request, decode_method="decord_sequential")) == request


@pytest.mark.parametrize("method", DECODE_METHODS)
def test_decode_time_resize(write_indexed_video: WriteIndexedVideo, method: str) -> None:
    path = write_indexed_video("big.mp4", num_frames=16, width=128, height=96, container_format="mp4")
    with VideoDecoder(path, decode_method=method, size=(48, 64)) as decoder:
        frames = decoder.read([3, 11])
        assert frames.shape == (2, 48, 64, 3) and frames.dtype == np.uint8
        assert not decoder.used_resize_fallback
    assert indices_of(frames) == [3, 11]


@pytest.mark.parametrize("method", ["decord", "decord_sequential"])
def test_decode_time_resize_falls_back_when_decord_breaks(
    write_indexed_video: WriteIndexedVideo, method: str
) -> None:
    path = write_indexed_video("small.mp4", num_frames=16, container_format="mp4")
    # decord 0.6.0's resize fails on this output size ("Check failed: from_size == to_size" in get_batch)
    with pytest.raises(decord.DECORDError):
        decord.VideoReader(path, width=16, height=16, num_threads=1).get_batch([0]).asnumpy()
    with VideoDecoder(path, decode_method=method, size=(16, 16)) as decoder:
        frames = decoder.read([5, 1])
        assert decoder.used_resize_fallback
    assert frames.shape == (2, 16, 16, 3) and frames.dtype == np.uint8
    full = read_frames(path, [5, 1], decode_method="pyav")
    assert [frame_index_of(f) for f in full] == [5, 1]
    # the fallback is a plain resize of the right frames: compare with a resize of the reference frames
    from pipeline.video.transforms import resize

    assert np.abs(frames.astype(int) - resize(full, 16, 16).astype(int)).mean() < MAX_MEAN_ABS_DIFF


def test_check_positions() -> None:
    assert check_positions(64, 4).tolist() == [8, 26, 45, 63]
    assert check_positions(1, 4).tolist() == [0]
    assert check_positions(3, 4).tolist() == [0, 1, 2]
    positions = check_positions(1000, 6)
    assert len(positions) == 6 and positions[-1] == 999 and np.all(np.diff(positions) > 0)


def test_probe_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="decode_method"):
        VideoProbe(num_frames=1, fps=25.0, width=2, height=2, duration=0.04, decode_method="opencv")
    with pytest.raises(ValueError):
        VideoProbe(num_frames=0, fps=25.0, width=2, height=2, duration=0.0, decode_method="pyav")


def test_bad_requests_are_refused(write_indexed_video: WriteIndexedVideo) -> None:
    path = write_indexed_video("ok.mp4", num_frames=8, container_format="mp4")
    with pytest.raises(ValueError, match="negative"):
        read_frames(path, [-1])
    with pytest.raises(ValueError, match="non-empty"):
        read_frames(path, [])
    with pytest.raises(ValueError, match="decode_method"):
        read_frames(path, [0], decode_method="opencv")


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
def test_real_files_decode_like_pyav(shared_videos: Path, name: str) -> None:
    path = shared_videos / name
    if not path.is_file():
        pytest.skip(f"{path} absent")
    data = path.read_bytes()
    probe = probe_video(str(path), data=data)
    assert (probe.num_frames, probe.fps) == (
        SHARED_FILES[name][0],
        pytest.approx(SHARED_FILES[name][1], abs=1e-3),
    )
    request = [probe.num_frames - 1, 0, probe.num_frames // 3, probe.num_frames // 3 + 1, 7]
    frames = read_frames(str(path), request, decode_method=probe.decode_method, data=data)
    reference = sequential_reference_frames(str(path), request, data=data)
    assert frames.shape == reference.shape == (len(request), probe.height, probe.width, 3)
    diffs = np.abs(frames.astype(np.int16) - reference.astype(np.int16)).mean(axis=(1, 2, 3))
    assert np.all(diffs < MAX_MEAN_ABS_DIFF), diffs


@pytest.mark.shared_data
@pytest.mark.timeout(60)
def test_tree_avi_over_reports_and_does_not_hang(shared_videos: Path) -> None:
    path = shared_videos / "tree.avi"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 444
    probe = probe_video(str(path))
    assert probe.num_frames == 68 and probe.decode_method == "pyav"
    assert read_frames(str(path), [67, 0], decode_method=probe.decode_method).shape == (2, 240, 320, 3)
    with pytest.raises(VideoDecodeError, match="tree.avi"):
        read_frames(str(path), [68], decode_method=probe.decode_method)


def test_decord_reads_from_memory_like_from_path(write_indexed_video: WriteIndexedVideo) -> None:
    # The probe's premise: decord on a BytesIO of the file behaves like decord on the path.
    path = write_indexed_video("bytes.mp4", num_frames=16, container_format="mp4")
    from_path = decord.VideoReader(path, num_threads=1).get_batch([1, 9]).asnumpy()
    from_bytes = (
        decord.VideoReader(io.BytesIO(Path(path).read_bytes()), num_threads=1).get_batch([1, 9]).asnumpy()
    )
    np.testing.assert_array_equal(from_path, from_bytes)


def test_cut_file_counts_the_frames_before_the_damage(write_indexed_video: WriteIndexedVideo) -> None:
    # Cut inside a JPEG: PyAV decodes the frames before it and then fails on the damaged packet.
    path = write_indexed_video(
        "cut_mjpeg.avi", num_frames=NUM_FRAMES, truncate=0.8, **VIDEO_FORMATS["mjpeg.avi"]
    )
    probe = probe_video(path)
    assert probe.decode_method == "pyav" and "stops after" in probe.note
    assert 0 < probe.num_frames < NUM_FRAMES
    last = probe.num_frames - 1
    assert indices_of(read_frames(path, [last, 0], decode_method="pyav")) == [last, 0]
    with pytest.raises(VideoDecodeError, match="cut_mjpeg.avi"):
        read_frames(path, [probe.num_frames], decode_method="pyav")
