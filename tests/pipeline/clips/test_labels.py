"""Per-view labels of multi-label videos (pure: hand-made frame indexes, no Ray, no video files)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from pipeline.clips.dataset import ClipConfig, frame_times_of, sample_indices, view_labels
from pipeline.video import sampling
from pipeline.video.decode import DECORD, SEEK, SEQUENTIAL, VideoIndex

# 30 s at 10 fps; actions at the start, in the middle and at the end (Charades-like).
ACTIONS = [(1, 0.0, 0.5), (3, 14.0, 15.0), (5, 25.0, 29.9)]
VIDEO_LABELS = [1, 3, 5]


def frame_index(
    pts: list[int] | np.ndarray, time_base: Fraction, fps: float, method: str = SEEK
) -> VideoIndex:
    pts = np.asarray(pts, dtype=np.int64)
    return VideoIndex(
        uri="memory://v.mp4",
        num_frames=len(pts),
        fps=fps,
        time_base=time_base,
        pts=pts,
        keyframe_pts=pts[:1],
        width=64,
        height=48,
        coded_width=64,
        coded_height=48,
        rotation=0,
        codec="h264",
        pixel_format="yuv420p",
        container_format="mov,mp4,m4a,3gp,3g2,mj2",
        stream_index=0,
        reordered=False,
        header_frames=len(pts),
        method=method,
    )


# 300 frames at 10 fps in 1/12800 s ticks (an MP4 time base), starting at 0.5 s: times are relative to frame 0.
THIRTY_SECONDS = frame_index(6400 + np.arange(300) * 1280, Fraction(1, 12800), 10.0)


@pytest.mark.parametrize("train", [True, False])
def test_tsn_views_keep_the_video_labels(train):
    config = ClipConfig(num_segments=3, train=train, num_test_clips=2, test_crops=3)
    indices = sample_indices(300, config, np.random.default_rng(0) if train else None)
    got = view_labels(indices, THIRTY_SECONDS, config, VIDEO_LABELS, ACTIONS)
    assert got == [VIDEO_LABELS] * config.num_views
    # The span rule would drop actions the TSN frames straddle: clip 0's frames run from 2.5 s to 22.5 s.
    if not train:
        np.testing.assert_array_equal(indices[0, :, 0], [25, 125, 225])
        assert sampling.clip_labels(indices[0], frame_times_of(THIRTY_SECONDS), ACTIONS) == [3]


def test_dense_test_views_take_their_temporal_clips_labels():
    config = ClipConfig(
        num_segments=1,
        frames_per_segment=8,
        sampling="dense",
        stride=4,
        train=False,
        num_test_clips=3,
        test_crops=3,
    )
    indices = sample_indices(300, config, None)  # span 29 frames, 272 starts: clips start at 45, 136, 226
    np.testing.assert_array_equal(indices[:, 0, [0, -1]], [[45, 73], [136, 164], [226, 254]])
    # Spans 4.5-7.3 s, 13.6-16.4 s and 22.6-25.4 s; view v shows temporal clip v // 3.
    got = view_labels(indices, THIRTY_SECONDS, config, VIDEO_LABELS, ACTIONS)
    assert got == [[]] * 3 + [[3]] * 3 + [[5]] * 3


def test_dense_training_clip_in_a_gap_is_a_negative_for_every_class():
    config = ClipConfig(num_segments=2, frames_per_segment=4, sampling="dense", stride=2)
    indices = np.arange(100, 116, 2).reshape(1, 2, 4)  # 10.0-11.4 s, between the actions
    assert view_labels(indices, THIRTY_SECONDS, config, VIDEO_LABELS, ACTIONS) == [[]]


def test_frame_times_come_from_timestamps_except_for_sequential_files():
    vfr_ms = [0, 100, 200, 1000, 1100]  # a 0.8 s pause after frame 2; average rate 4 / 1.1 s
    index = frame_index(vfr_ms, Fraction(1, 1000), 4 / 1.1)
    np.testing.assert_allclose(frame_times_of(index), [0.0, 0.1, 0.2, 1.0, 1.1], rtol=0, atol=1e-12)
    decord = frame_index(vfr_ms, Fraction(1, 1000), 4 / 1.1, method=DECORD)
    np.testing.assert_array_equal(frame_times_of(decord), frame_times_of(index))
    # A "sequential" file's timestamps are the decoder's output (here out of order): frame i is at i / fps.
    sequential = frame_index([0, 1, 3, 2, 4], Fraction(1, 25), 25.0, method=SEQUENTIAL)
    np.testing.assert_allclose(frame_times_of(sequential), np.arange(5) / 25.0)
