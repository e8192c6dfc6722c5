"""Exact-index tests of clip sampling (conventions in pipeline/sampling.py's docstring)."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from pipeline.video import sampling


def test_tsn_test_hand_example():
    # L = 100 start positions in 3 parts; centres at 16.67, 50, 83.33.
    np.testing.assert_array_equal(sampling.tsn_test_indices(100, 3, 1), [[16], [50], [83]])


def test_tsn_test_consecutive_frames():
    # L = 100 - 4 + 1 = 97; starts floor(97 / 6) = 16, floor(291 / 6) = 48, floor(485 / 6) = 80.
    expected = [[16, 17, 18, 19], [48, 49, 50, 51], [80, 81, 82, 83]]
    np.testing.assert_array_equal(sampling.tsn_test_indices(100, 3, 4), expected)


def test_tsn_test_temporal_clips():
    # K = 2, C = 2, L = 100: starts floor((k C + c + 0.5) * 100 / 4).
    np.testing.assert_array_equal(sampling.tsn_test_indices(100, 2, 1, clip=0, num_clips=2), [[12], [62]])
    np.testing.assert_array_equal(sampling.tsn_test_indices(100, 2, 1, clip=1, num_clips=2), [[37], [87]])


def test_tsn_fewer_starts_than_segments_share_starts():
    # L = 2, K = 4: floor(0.25), floor(0.75), floor(1.25), floor(1.75).
    np.testing.assert_array_equal(sampling.tsn_test_indices(2, 4, 1), [[0], [0], [1], [1]])


@pytest.mark.parametrize("train", [False, True])
def test_tsn_video_shorter_than_window_clamps_to_last_frame(train):
    rng = np.random.default_rng(0)
    out = sampling.tsn_train_indices(2, 3, 4, rng) if train else sampling.tsn_test_indices(2, 3, 4)
    np.testing.assert_array_equal(out, [[0, 1, 1, 1]] * 3)


def test_dense_test_centred_and_clips():
    # span = 7 * 4 + 1 = 29, L = 72, start floor(72 / 2) = 36.
    np.testing.assert_array_equal(sampling.dense_test_indices(100, 1, 8, 4), [np.arange(36, 65, 4)])
    # K = 2, T = 4, stride 2: span 15, L = 86; clip 1 of 3 starts at floor(3 * 86 / 6) = 43.
    out = sampling.dense_test_indices(100, 2, 4, 2, clip=1, num_clips=3)
    np.testing.assert_array_equal(out, [[43, 45, 47, 49], [51, 53, 55, 57]])
    assert out.shape == (2, 4) and out.dtype == np.int64


def test_dense_short_video_clamps():
    np.testing.assert_array_equal(sampling.dense_test_indices(10, 1, 8, 2), [[0, 2, 4, 6, 8, 9, 9, 9]])
    rng = np.random.default_rng(1)
    np.testing.assert_array_equal(sampling.dense_train_indices(10, 1, 8, 2, rng), [[0, 2, 4, 6, 8, 9, 9, 9]])


def test_tsn_train_within_segments_and_covers_them():
    # L = 100, K = 3: segment start ranges [0, 33), [33, 66), [66, 100).
    rng = np.random.default_rng(0)
    draws = np.stack([sampling.tsn_train_indices(100, 3, 1, rng)[:, 0] for _ in range(3000)])  # (3000, K)
    for k, (low, high) in enumerate([(0, 33), (33, 66), (66, 100)]):
        assert draws[:, k].min() == low and draws[:, k].max() == high - 1
        assert len(np.unique(draws[:, k])) == high - low


@pytest.mark.parametrize("num_frames", [1, 3, 7, 16, 31, 150, 1001])
@pytest.mark.parametrize(("k", "t"), [(1, 1), (3, 1), (8, 1), (3, 5), (4, 8)])
def test_properties_in_range_sorted_deterministic(num_frames, k, t):
    rng = np.random.default_rng(num_frames)
    for out in (
        sampling.tsn_train_indices(num_frames, k, t, rng),
        sampling.tsn_test_indices(num_frames, k, t, clip=1, num_clips=2),
        sampling.dense_train_indices(num_frames, k, t, 2, rng),
        sampling.dense_test_indices(num_frames, k, t, 3, clip=2, num_clips=3),
    ):
        assert out.shape == (k, t) and out.dtype == np.int64
        assert out.min() >= 0 and out.max() <= num_frames - 1
        assert np.all(np.diff(out, axis=1) >= 0)  # sorted within a segment
        assert np.all(np.diff(out[:, 0]) >= 0)  # segment starts in temporal order
    np.testing.assert_array_equal(
        sampling.tsn_test_indices(num_frames, k, t), sampling.tsn_test_indices(num_frames, k, t)
    )


def test_training_sampling_differs_per_epoch_and_is_reproducible():
    a0 = sampling.tsn_train_indices(300, 8, 1, sampling.clip_rng(7, 0, "v_x"))
    a0_again = sampling.tsn_train_indices(300, 8, 1, sampling.clip_rng(7, 0, "v_x"))
    a1 = sampling.tsn_train_indices(300, 8, 1, sampling.clip_rng(7, 1, "v_x"))
    other = sampling.tsn_train_indices(300, 8, 1, sampling.clip_rng(7, 0, "v_y"))
    np.testing.assert_array_equal(a0, a0_again)
    assert not np.array_equal(a0, a1)
    assert not np.array_equal(a0, other)


def test_clip_rng_same_in_another_process():
    # Python's hash() is salted per process; clip_rng must not depend on it.
    code = "from pipeline.video.sampling import clip_rng; print(clip_rng(3, 2, 'v_a').integers(1 << 40))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert int(out.stdout) == sampling.clip_rng(3, 2, "v_a").integers(1 << 40)


def test_views_and_unique_frames():
    assert sampling.num_views(3, 3) == 9
    assert [sampling.view_to_clip_crop(v, 3) for v in (0, 2, 3, 8)] == [(0, 0), (0, 2), (1, 0), (2, 2)]
    indices = np.array([[5, 5], [2, 9]])
    frames, inverse = sampling.unique_frames(indices)
    np.testing.assert_array_equal(frames, [2, 5, 9])
    np.testing.assert_array_equal(frames[inverse], indices)


@pytest.mark.parametrize(
    "call",
    [
        lambda: sampling.tsn_test_indices(0, 3, 1),
        lambda: sampling.tsn_test_indices(10, 0, 1),
        lambda: sampling.tsn_test_indices(10, 3, 1, clip=2, num_clips=2),
        lambda: sampling.dense_test_indices(10, 1, 4, 0),
    ],
)
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


# --- clip labels from action segments (rule in pipeline/video/sampling.py's docstring) ----------------------------
TEN_FPS = sampling.frame_times(np.arange(100) * 100, Fraction(1, 1000))  # frame i at i / 10 s, exactly
ACTIONS = [(3, 1.0, 4.0), (5, 5.0, 8.0)]  # a gap with no action in (4.0, 5.0)


def frames(first: int, last: int) -> np.ndarray:
    return np.arange(first, last + 1).reshape(1, -1)  # (K=1, T)


def test_frame_times_are_pts_seconds_from_the_first_frame():
    # An MPEG-PS stream starting at 0.54 s (48600 in 1/90000 s) at 25 fps: frame 2 is 0.08 s after frame 0.
    times = sampling.frame_times(np.array([48600, 52200, 55800]), Fraction(1, 90000))
    assert times.dtype == np.float64
    np.testing.assert_allclose(times, [0.0, 0.04, 0.08], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("first", "last", "expected"),
    [
        (20, 30, [3]),  # 2.0-3.0 s, inside the first action only
        (35, 55, [3, 5]),  # 3.5-5.5 s, across both actions
        (42, 48, []),  # 4.2-4.8 s, in the gap: a negative for every class
        (40, 50, []),  # 4.0-5.0 s: starts where action 3 ends and ends where action 5 starts (strict)
        (39, 49, [3]),  # 3.9-4.9 s: one frame earlier, inside action 3's end
        (41, 51, [5]),  # 4.1-5.1 s: one frame later, past action 5's start
        (0, 10, []),  # 0.0-1.0 s: ends exactly where action 3 starts
        (80, 90, []),  # 8.0-9.0 s: starts exactly where action 5 ends
        (79, 79, [5]),  # a one-frame span at 7.9 s, strictly inside action 5
        (50, 50, []),  # a one-frame span at 5.0 s, action 5's start
        (0, 99, [3, 5]),  # the whole video
    ],
)
def test_clip_labels_exact_spans(first, last, expected):
    assert sampling.clip_labels(frames(first, last), TEN_FPS, ACTIONS) == expected


def test_clip_span_is_first_to_last_sampled_frame_of_any_layout():
    # Dense (K=2, T=3) at stride 4 from frame 18: 1.8 s to 3.8 s; only the ends matter.
    indices = sampling.windows(np.array([18]), 6, 4, 100).reshape(2, 3)
    np.testing.assert_array_equal(indices, [[18, 22, 26], [30, 34, 38]])
    assert sampling.clip_labels(indices, TEN_FPS, [(1, 3.8, 5.0)]) == []  # starts at the last frame
    assert sampling.clip_labels(indices, TEN_FPS, [(1, 3.7, 5.0)]) == [1]
    assert sampling.clip_labels(indices, TEN_FPS, [(2, 0.0, 1.8)]) == []  # ends at the first frame
    assert sampling.clip_labels(indices, TEN_FPS, [(2, 0.0, 1.85)]) == [2]
    assert sampling.clip_labels(indices, TEN_FPS, [(4, 2.5, 2.55)]) == [4]  # between two sampled frames


def test_boundaries_compare_at_the_manifests_float32_precision():
    # The manifest stores float32 seconds: float32(1.3) is below 1.3 and float32(2.2) above 2.2, so compared with
    # the float64 times of frames 13 (1.3 s) and 22 (2.2 s) both boundaries would fall on the wrong side.
    assert np.float32(1.3) < TEN_FPS[13] and np.float32(2.2) > TEN_FPS[22]
    segment = [(7, float(np.float32(1.3)), float(np.float32(2.2)))]
    assert sampling.clip_labels(frames(2, 13), TEN_FPS, segment) == []  # ends exactly at the start
    assert sampling.clip_labels(frames(2, 14), TEN_FPS, segment) == [7]
    assert sampling.clip_labels(frames(22, 30), TEN_FPS, segment) == []  # starts exactly at the end
    assert sampling.clip_labels(frames(21, 30), TEN_FPS, segment) == [7]


def test_zero_length_action_and_duplicates():
    assert sampling.span_labels(0.0, 10.0, [(2, 4.0, 4.0)]) == []  # no instant strictly inside
    assert sampling.span_labels(0.0, 10.0, [(2, 1.0, 2.0), (2, 3.0, 4.0), (0, 5.0, 6.0)]) == [0, 2]


def test_variable_frame_rate_uses_timestamps_not_index_over_fps():
    # 10 frames at 10 fps, a 2.1 s pause, 10 more: frame 10 is at 3.0 s. The average rate is 20 / 4 = 5 fps.
    pts_ms = [i * 100 for i in range(10)] + [3000 + i * 100 for i in range(10)]
    times = sampling.frame_times(np.array(pts_ms), Fraction(1, 1000))
    by_index = np.arange(20) / 5.0  # i / fps: frame 10 at 2.0 s, frame 15 at 3.0 s
    actions = [(2, 3.2, 4.0), (6, 1.0, 2.2)]
    clip = frames(10, 15)
    assert sampling.clip_labels(clip, times, actions) == [2]  # 3.0-3.5 s
    assert sampling.clip_labels(clip, by_index, actions) == [6]  # 2.0-3.0 s: what index / fps would give
