"""`stpa inspect` on real video files: the indices it reports are the frames it saved."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline import storage
from pipeline.cli import main
from pipeline.clips.preview import inspect_video
from pipeline.video import sampling
from pipeline.video.decode import VideoDecodeError
from pipeline.video.encode import index_frames, write_video
from tests.pipeline.clip_data import frame_indices_of


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "clip.avi"
    # H.264 in AVI with B-frames: the file kind decord misreads on sparse access (probe picks a safe method).
    return write_video(str(path), index_frames(30, 64, 48), 10.0, container_format="avi")


def test_keeps_decoded_size_and_saves_the_reported_frames(video, tmp_path):
    out, sheet = str(tmp_path / "clip.npy"), str(tmp_path / "sheet.png")
    info = inspect_video(video, num_segments=4, frames_per_segment=2, out=out, contact_sheet=sheet)
    json.dumps(info)  # JSON-able
    assert info["num_frames"] == 30 and info["fps"] == pytest.approx(10.0)
    assert info["shape"] == [4, 2, 48, 64, 3] and info["dtype"] == "uint8"
    expected = sampling.tsn_test_indices(30, 4, 2)  # L = 29: starts 3, 10, 18, 25
    assert info["frame_indices"] == expected.tolist() == [[3, 4], [10, 11], [18, 19], [25, 26]]
    clip = np.load(out)
    assert clip.dtype == np.uint8 and clip.shape == (4, 2, 48, 64, 3)
    np.testing.assert_array_equal(frame_indices_of(clip), expected)
    assert info["frame_times"] == [[0.3, 0.4], [1.0, 1.1], [1.8, 1.9], [2.5, 2.6]]  # 10 fps from 0
    # A grid of 4 columns, frames in clip order, each under a 14-pixel caption (segment, index, time).
    grid = np.asarray(Image.open(sheet).convert("RGB"))
    assert grid.shape == (2 * (14 + 48), 4 * 64, 3)
    for n, frame in enumerate(clip.reshape(8, 48, 64, 3)):
        row, column = divmod(n, 4)
        cell = grid[row * 62 + 14 : row * 62 + 62, column * 64 : (column + 1) * 64]
        np.testing.assert_array_equal(cell, frame)
    assert (grid[:14] < 128).any()  # the caption is drawn


def test_size_resizes_and_centre_crops_and_writes_to_fsspec(video):
    info = inspect_video(video, num_segments=3, size=32, out="memory://inspect/clip.npy")
    assert info["shape"] == [3, 1, 32, 32, 3]
    clip = np.load(io.BytesIO(storage.read_bytes("memory://inspect/clip.npy")))
    assert clip.shape == (3, 1, 32, 32, 3) and clip.dtype == np.uint8


def test_cli_prints_json(video, tmp_path, capsys):
    assert main(["inspect", video, "--num-segments", "2", "--out", str(tmp_path / "c.npy"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["frame_indices"] == [[7], [22]]  # L = 30: floor(7.5), floor(22.5)
    assert np.load(tmp_path / "c.npy").shape == (2, 1, 48, 64, 3)


def test_cli_prints_text_by_default(video, capsys):
    assert main(["inspect", video, "--num-segments", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == video and lines[1].startswith("  30 frames, 10.000 fps, 3.00 s, 64x48, read by ")
    assert lines[-2:] == ["  segment 0: frames 7 (0.70 s)", "  segment 1: frames 22 (2.20 s)"]


def test_undecodable_file_raises_naming_it(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        inspect_video(str(bad))
