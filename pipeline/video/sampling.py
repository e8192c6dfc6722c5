"""Clip sampling: which frames of a video make a clip. Pure index math, no I/O (pytorchvideo ``clip_sampling``).

Every sampler returns an int64 array of frame indices with layout ``(K, T)``: K segments of T frames each, where
frame ``i`` means the i-th frame of a sequential decode from the start. Indices are always in
``[0, num_frames - 1]``, non-decreasing within a segment, and segments start in temporal order (TSN windows of
neighbouring segments overlap when ``K * T > num_frames``).

Conventions (tests in ``tests/pipeline/test_sampling.py`` check them on hand-computed cases):

TSN (Wang et al., ECCV 2016), K segments of T *consecutive* frames:
    A window of T consecutive frames can start at ``L = num_frames - T + 1`` positions. Those start positions are
    cut into K equal parts (float boundaries ``k * L / K``). In training, segment k starts at a uniformly random
    integer in ``[floor(k L / K), max(floor((k + 1) L / K), floor(k L / K) + 1))``; at test time at the centre of
    its part, ``floor((k + 0.5) L / K)``. Example: ``num_frames=100, K=3, T=1`` gives ``L=100`` and test indices
    ``floor(16.67), floor(50), floor(83.33) = [16, 50, 83]``. With ``num_test_clips = C`` temporal clips,
    clip c takes the centre of the c-th of C equal sub-parts of every part: ``floor((k C + c + 0.5) L / (K C))``.

Dense (SlowFast / I3D style), one window of ``K * T`` frames at stride s, laid out as ``(K, T)`` (K consecutive
groups of T frames; use ``K = 1`` for a plain T-frame clip):
    The window spans ``span = (K T - 1) s + 1`` frames and can start at ``L = num_frames - span + 1`` positions.
    Training: a uniformly random start in ``[0, L)``; test clip c of C: ``floor((c + 0.5) L / C)`` (the centre
    of the c-th of C equal parts of the start positions; C = 1 is the centred clip).

Videos shorter than the window (``L < 1``): every window starts at frame 0 and indices past the end are *clamped*
to the last frame (``min(i, num_frames - 1)``), i.e. the last frame repeats (pytorchvideo and SlowFast do the
same). Videos with fewer than K starts (``1 <= L < K`` in TSN) give segments that share a start.

Multi-view test: ``num_clips`` temporal clips x ``num_crops`` spatial crops; view ``v`` is temporal clip
``v // num_crops`` and spatial crop ``v % num_crops`` (clip-major order).

Clip labels from action segments (Charades: each action is a ``(class, start, end)`` segment in seconds):
    Times. Frame i is at ``t_i = (pts_i - pts_0) * time_base`` seconds (``frame_times``): its presentation
    timestamp relative to the first frame's, so a variable frame rate or a stream that starts late changes
    nothing (``i / fps`` would be wrong on both).
    Span. A clip covers ``[a, b]``: ``a`` the time of its first sampled frame, ``b`` of its last, both included;
    the last frame's display duration is not added (a frame shows one instant; frames between the sampled ones
    count, only the ends matter).
    Overlap. A segment ``[s, e]`` gives the clip its class iff ``s < b and e > a and s < e``: some instant of the
    span lies strictly inside the action. That is the official Charades per-frame rule ``start < t < end``
    applied to every instant of the span, so at the boundaries it agrees with it: a clip that ends exactly where
    an action starts, or starts exactly where one ends, does not get it; an action with ``start == end`` labels
    no clip. Times are compared in float32, the manifest's precision for segment bounds, so a frame at exactly
    an annotated second is at the boundary rather than a rounding error to either side of it.
    Result. The sorted distinct classes of the overlapping segments (``clip_labels``); none when the clip
    overlaps no action: the clip is then a negative for every class.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from fractions import Fraction

import numpy as np


def _check_common(num_frames: int, num_segments: int, frames_per_segment: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if num_segments < 1 or frames_per_segment < 1:
        raise ValueError(
            f"num_segments and frames_per_segment must be >= 1, got {num_segments}, {frames_per_segment}"
        )


def _check_clip(clip: int, num_clips: int) -> None:
    if num_clips < 1 or not 0 <= clip < num_clips:
        raise ValueError(
            f"clip must be in [0, num_clips) with num_clips >= 1, got clip={clip}, num_clips={num_clips}"
        )


def windows(starts: np.ndarray, length: int, stride: int, num_frames: int) -> np.ndarray:
    """Frame indices of windows of ``length`` frames at ``stride`` from each start, clamped to the video.

    Args:
        starts: (N,) start frames.
        length: frames per window.
        stride: step between frames of a window.
        num_frames: frames in the video; indices past the end repeat the last frame.

    Returns:
        int64 (N, length) in ``[0, num_frames - 1]``.
    """
    idx = np.asarray(starts, dtype=np.int64)[:, None] + stride * np.arange(length, dtype=np.int64)[None, :]
    return np.minimum(idx, num_frames - 1)  # (N, length)


def tsn_train_indices(
    num_frames: int, num_segments: int, frames_per_segment: int, rng: np.random.Generator
) -> np.ndarray:
    """TSN training sampling: a random window of T consecutive frames in each of K equal segments.

    Returns:
        int64 (K, T) frame indices (see the module docstring for the exact convention).
    """
    _check_common(num_frames, num_segments, frames_per_segment)
    num_starts = num_frames - frames_per_segment + 1
    if num_starts < 1:
        return windows(np.zeros(num_segments, dtype=np.int64), frames_per_segment, 1, num_frames)
    k = np.arange(num_segments, dtype=np.int64)
    low = (k * num_starts) // num_segments  # floor(k L / K), exact in integers
    high = np.maximum(((k + 1) * num_starts) // num_segments, low + 1)
    starts = rng.integers(low, high)  # (K,), uniform in [low, high)
    return windows(starts, frames_per_segment, 1, num_frames)


def tsn_test_indices(
    num_frames: int, num_segments: int, frames_per_segment: int, clip: int = 0, num_clips: int = 1
) -> np.ndarray:
    """TSN test sampling: the centred window of every segment (or of its ``clip``-th of ``num_clips`` parts).

    Returns:
        int64 (K, T) frame indices, the same for the same arguments.
    """
    _check_common(num_frames, num_segments, frames_per_segment)
    _check_clip(clip, num_clips)
    num_starts = num_frames - frames_per_segment + 1
    if num_starts < 1:
        return windows(np.zeros(num_segments, dtype=np.int64), frames_per_segment, 1, num_frames)
    k = np.arange(num_segments, dtype=np.int64)
    # floor((k C + c + 0.5) L / (K C)) in integers: floor((2 (k C + c) + 1) L / (2 K C))
    starts = ((2 * (k * num_clips + clip) + 1) * num_starts) // (2 * num_segments * num_clips)
    return windows(starts, frames_per_segment, 1, num_frames)


def _dense_span(num_segments: int, frames_per_segment: int, stride: int) -> int:
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return (num_segments * frames_per_segment - 1) * stride + 1


def dense_train_indices(
    num_frames: int, num_segments: int, frames_per_segment: int, stride: int, rng: np.random.Generator
) -> np.ndarray:
    """Dense training sampling: ``K * T`` frames at ``stride`` from a random start, laid out ``(K, T)``.

    Returns:
        int64 (K, T) frame indices.
    """
    _check_common(num_frames, num_segments, frames_per_segment)
    num_starts = num_frames - _dense_span(num_segments, frames_per_segment, stride) + 1
    start = int(rng.integers(0, num_starts)) if num_starts > 1 else 0
    clip = windows(np.array([start]), num_segments * frames_per_segment, stride, num_frames)  # (1, K*T)
    return clip.reshape(num_segments, frames_per_segment)  # (K, T)


def dense_test_indices(
    num_frames: int,
    num_segments: int,
    frames_per_segment: int,
    stride: int,
    clip: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """Dense test sampling: temporal clip ``clip`` of ``num_clips`` evenly spaced clips, laid out ``(K, T)``.

    Returns:
        int64 (K, T) frame indices, the same for the same arguments.
    """
    _check_common(num_frames, num_segments, frames_per_segment)
    _check_clip(clip, num_clips)
    num_starts = num_frames - _dense_span(num_segments, frames_per_segment, stride) + 1
    start = ((2 * clip + 1) * num_starts) // (2 * num_clips) if num_starts > 1 else 0
    indices = windows(np.array([start]), num_segments * frames_per_segment, stride, num_frames)  # (1, K*T)
    return indices.reshape(num_segments, frames_per_segment)  # (K, T)


def num_views(num_clips: int, num_crops: int) -> int:
    """Test views of one video: temporal clips x spatial crops."""
    return num_clips * num_crops


def view_to_clip_crop(view: int, num_crops: int) -> tuple[int, int]:
    """``(temporal clip, spatial crop)`` of test view ``view`` (clip-major order)."""
    return view // num_crops, view % num_crops


def unique_frames(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct frames to decode, and where each requested index lies among them.

    Args:
        indices: int64 array of any shape.

    Returns:
        ``(frames, inverse)``: int64 (U,) sorted distinct indices, and int64 with the shape of ``indices`` such
        that ``frames[inverse] == indices``.
    """
    frames, inverse = np.unique(indices, return_inverse=True)
    return frames.astype(np.int64), inverse.reshape(np.shape(indices)).astype(np.int64)


def clip_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The random generator of one video in one epoch: a pure function of ``(seed, epoch, key)``.

    The key (a video id) is hashed with BLAKE2b rather than Python's ``hash``, which is salted per process, so the
    same triple gives the same draws on every worker, node and run.
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng([seed, epoch, int.from_bytes(digest, "little")])


def frame_times(pts: np.ndarray, time_base: Fraction) -> np.ndarray:
    """Presentation time of every frame in seconds, from the first frame: ``(pts - pts[0]) * time_base``.

    Args:
        pts: int64 (N,) presentation timestamps of frames 0..N-1, sorted, in ``time_base`` ticks.
        time_base: Seconds per tick.

    Returns:
        float64 (N,), 0 at frame 0.
    """
    ticks = np.asarray(pts, dtype=np.int64) - np.int64(pts[0])
    return (ticks * time_base.numerator) / time_base.denominator  # exact integer product, one rounding


def span_labels(first: float, last: float, segments: Sequence[tuple[int, float, float]]) -> list[int]:
    """Classes of the segments that overlap the span ``[first, last]``: ``s < last and e > first and s < e``.

    Args:
        first: Time of the clip's first sampled frame, seconds.
        last: Time of its last sampled frame, seconds (``>= first``).
        segments: ``(class, start, end)`` actions in seconds.

    Returns:
        Sorted distinct class indices; empty when no segment overlaps.
    """
    a, b = np.float32(first), np.float32(last)
    overlapping = set()
    for c, s, e in segments:
        s, e = np.float32(s), np.float32(e)
        if s < b and e > a and s < e:  # some t in [a, b] with s < t < e (Charades' per-frame rule)
            overlapping.add(int(c))
    return sorted(overlapping)


def clip_labels(
    indices: np.ndarray, times: np.ndarray, segments: Sequence[tuple[int, float, float]]
) -> list[int]:
    """Classes of one clip from the action segments (the rule of the module docstring).

    Args:
        indices: int64 frame indices of the clip, any shape (e.g. ``(K, T)``).
        times: float64 (N,) seconds of every frame of the video (``frame_times``).
        segments: ``(class, start, end)`` actions in seconds.

    Returns:
        Sorted distinct class indices whose segments overlap the span from the earliest to the latest sampled
        frame; empty when none does.
    """
    indices = np.asarray(indices)
    return span_labels(float(times[indices.min()]), float(times[indices.max()]), segments)
