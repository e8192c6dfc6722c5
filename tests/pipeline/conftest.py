"""Shared fixtures for pipeline tests: small real video files written with PyAV, and the shared test material.

Videos come from ``pipeline.video.encode``: ``index_frames`` draws each frame's own index into it, so a test can
check exactly which frame a decoder returned with ``frame_index_of``. Usage::

    def test_x(write_indexed_video):
        path = write_indexed_video("a.avi", num_frames=32, container_format="avi", codec="libx264")
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipeline.video.encode import encode_video, index_frames

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHARED_VIDEOS = SHARED_DATA / "videos"

# Encoder settings of the formats the decoding tests cover (all encodable by the FFmpeg bundled with PyAV).
# decord's sparse access returns wrong frames on H.264-in-AVI (libx264 defaults with B-frames, GOP 16; also
# without B-frames), MPEG-4 part 2 with B-frames in AVI, and MPEG-2 program streams (first timestamp 0.54 s).
VIDEO_FORMATS: dict[str, dict[str, object]] = {
    "h264.mp4": {"container_format": "mp4", "codec": "libx264", "gop_size": 16},
    "h264_bframes.avi": {"container_format": "avi", "codec": "libx264", "gop_size": 16},
    # The mpeg muxer's default mux delay makes the first timestamp 0.54 s (48600 in 1/90000 s).
    "mpeg2.mpg": {"container_format": "mpeg", "codec": "mpeg2video"},
    "xvid.avi": {"container_format": "avi", "codec": "mpeg4"},
    # MPEG-4 part 2 with B-frames in AVI (xvid/divx "packed bitstream" style): decord's sparse access is wrong too
    "xvid_bframes.avi": {"container_format": "avi", "codec": "mpeg4", "max_b_frames": 2},
    "msmpeg4.avi": {"container_format": "avi", "codec": "msmpeg4"},
    "mjpeg.avi": {"container_format": "avi", "codec": "mjpeg", "pix_fmt": "yuvj420p"},
    "cinepak.avi": {"container_format": "avi", "codec": "cinepak", "pix_fmt": "rgb24"},
    "hevc.mp4": {
        "container_format": "mp4",
        "codec": "libx265",
        "codec_options": {"x265-params": "log-level=error"},
    },
    "vp9.webm": {"container_format": "webm", "codec": "libvpx-vp9"},
}

WriteIndexedVideo = Callable[..., str]


@pytest.fixture
def write_indexed_video(tmp_path: Path) -> WriteIndexedVideo:
    """A function ``(name, num_frames=32, fps=25, width=64, height=48, truncate=None, **encode_kwargs) -> path``.

    It writes ``index_frames(num_frames, width, height)`` encoded with ``encode_video(**encode_kwargs)`` to
    ``tmp_path / name``. ``truncate`` (a fraction in (0, 1)) keeps only that leading part of the file's bytes:
    a truncated AVI keeps a header that over-reports its frame count (like ../shared/data/videos/tree.avi).
    """

    def write(
        name: str,
        num_frames: int = 32,
        fps: float | Fraction = 25,
        width: int = 64,
        height: int = 48,
        truncate: float | None = None,
        **encode_kwargs: object,
    ) -> str:
        data = encode_video(index_frames(num_frames, width, height), fps, **encode_kwargs)  # type: ignore[arg-type]
        if truncate is not None:
            data = data[: int(len(data) * truncate)]
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)

    return write


@pytest.fixture
def indexed_frames() -> Callable[..., np.ndarray]:
    """``index_frames`` itself, for tests that need the raw frames they encoded."""
    return index_frames


@pytest.fixture
def shared_videos() -> Path:
    """``../shared/data/videos`` beside the repository; the test is skipped when it is absent."""
    if not SHARED_VIDEOS.is_dir():
        pytest.skip(f"shared test videos not found at {SHARED_VIDEOS}")
    return SHARED_VIDEOS


@pytest.fixture(scope="module")
def ray_local(request: pytest.FixtureRequest):
    """A real local Ray for one test module, bound to loopback. A module sets ``RAY_NUM_CPUS`` to ask for more
    logical CPUs than the default 2 (training holds one per Ray Train worker; decoding needs its own)."""
    import ray
    import ray.data

    ray.init(
        num_cpus=getattr(request.module, "RAY_NUM_CPUS", 2),
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()
