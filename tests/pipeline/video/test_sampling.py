"""Exact-index tests of clip sampling (conventions in pipeline/sampling.py's docstring)."""

from __future__ import annotations

import os
import subprocess
import sys

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
