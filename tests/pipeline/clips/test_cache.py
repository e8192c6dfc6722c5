"""The decode-once clip cache on a real local Ray with real (tiny) videos."""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest

from pipeline import schema
from pipeline.clips.cache import (
    SUCCESS_FILE,
    cache_key,
    cached_clip_dataset,
    frames_column,
)
from pipeline.clips.dataset import ClipConfig, build_clip_dataset, decode_samplings
from pipeline.video import sampling, transforms
from pipeline.video.decode import index_from_bytes
from tests.pipeline import clip_data

pytestmark = pytest.mark.slow

TEST = ClipConfig(
    num_segments=3, frames_per_segment=2, train=False, short_side=32, crop_size=24, test_crops=3
)
# Two samplings per video: epochs 0 and 1 are decoding's own, epoch 2 re-reads sampling 0.
TRAIN = ClipConfig(
    num_segments=3, frames_per_segment=1, short_side=32, crop_size=24, decode_batch_size=2, cache_samplings=2
)


def collect(ds) -> dict[str, np.ndarray]:
    batches = [b for b in ds.iter_batches(batch_size=None, batch_format="numpy") if len(b[schema.VIDEO_ID])]
    out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    order = np.lexsort((out[schema.VIEW], out[schema.VIDEO_ID].astype(str)))
    return {k: v[order] for k, v in out.items()}


def assert_same_rows(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_miss_then_hit_reads_identical_clips_without_the_videos(ray_local, tmp_path):
    rows = clip_data.write_videos(str(tmp_path / "videos"), 4)
    table = clip_data.manifest_table([*rows, clip_data.write_corrupt(str(tmp_path), "broken")])
    cache = str(tmp_path / "cache")
    decoded = collect(build_clip_dataset(table, TEST))

    ds, entry = cached_clip_dataset(table, TEST, cache)
    assert not entry.hit and entry.num_rows == 4 * 3
    assert [f.video_id for f in entry.failures] == ["broken"]
    assert_same_rows(collect(ds), decoded)
    assert collect(ds)[schema.FRAMES].dtype == np.uint8

    shutil.rmtree(tmp_path / "videos")  # a hit must not decode
    ds, hit = cached_clip_dataset(table, TEST, cache)
    assert hit.hit and hit.key == entry.key and [f.video_id for f in hit.failures] == ["broken"]
    assert_same_rows(collect(ds), decoded)


def test_changed_config_or_manifest_misses(ray_local, tmp_path):
    rows = clip_data.write_videos(str(tmp_path / "videos"), 2)
    table = clip_data.manifest_table(rows)
    cache = str(tmp_path / "cache")
    _, first = cached_clip_dataset(table, TEST, cache)
    _, same_pixels = cached_clip_dataset(
        table, dataclasses.replace(TEST, decode_batch_size=7, strict=True), cache
    )
    assert same_pixels.hit and same_pixels.key == first.key  # scheduling settings do not change the clips
    ds, other = cached_clip_dataset(table, dataclasses.replace(TEST, test_crops=1), cache)
    assert not other.hit and other.key != first.key
    assert collect(ds)[schema.FRAMES].shape == (2, 3, 2, 24, 24, 3)
    relabelled = clip_data.manifest_table([dict(rows[0], label=2), rows[1]])
    assert cache_key(relabelled, TEST)[0] != first.key
    assert sorted(os.listdir(cache)) == sorted([first.key, other.key])
    # Test clips do not depend on the training samplings; a training entry holds that many, so it is keyed by it.
    assert cache_key(table, dataclasses.replace(TEST, cache_samplings=9))[0] == first.key
    assert cache_key(table, TRAIN)[0] != cache_key(table, dataclasses.replace(TRAIN, cache_samplings=3))[0]


def passes(ds, num_passes: int) -> list[dict[str, np.ndarray]]:
    """Iterate one dataset ``num_passes`` times, as Ray Train does once per epoch."""
    return [collect(ds) for _ in range(num_passes)]


def applied_augmentation(clip: np.ndarray, candidates: np.ndarray, config: ClipConfig) -> tuple:
    """Which stored sampling, crop box and flip turn into ``clip``: found by trying every one of them (the crop
    sides and the 13 grid offsets of ``transforms.multi_scale_crop_box``, flipped or not), not by replaying draws.

    Args:
        clip: uint8 (K, T, S, S, 3), a training clip read from the cache.
        candidates: uint8 (N, K, T, H, W, 3), the video's stored samplings.

    Returns:
        ``(sampling, (top, left, height, width), flipped)`` of the first match.
    """
    height, width = candidates.shape[-3:-1]
    sides = [int(min(height, width) * s) for s in config.scales]
    sides = [config.crop_size if abs(s - config.crop_size) < 3 else s for s in sides]
    for n, frames in enumerate(candidates):
        for crop_h in sides:
            for crop_w in sides:
                for row in range(5):
                    for col in range(5):
                        box = (row * ((height - crop_h) // 4), col * ((width - crop_w) // 4), crop_h, crop_w)
                        cropped = transforms.resize(
                            transforms.crop(frames, box), config.crop_size, config.crop_size
                        )
                        for flipped in (False, True):
                            if np.array_equal(transforms.hflip(cropped) if flipped else cropped, clip):
                                return n, box, flipped
    raise AssertionError("the clip is no crop of any stored sampling")


def test_training_epochs_keep_sampling_crop_and_flip(ray_local, tmp_path):
    """N=2 samplings: passes 0 and 1 over one dataset (epoch=None, as Ray Train iterates it) are exactly what
    decoding gives in epochs 0 and 1; pass 2 is sampling 0 again with a crop and flip of its own."""
    import pyarrow.parquet as pq

    rows = clip_data.write_videos(str(tmp_path / "videos"), 4)
    table = clip_data.manifest_table(rows)
    cache = str(tmp_path / "cache")
    ds, entry = cached_clip_dataset(table, TRAIN, cache)
    assert not entry.hit and entry.num_rows == 4 and entry.num_samplings == 2
    stored_columns = pq.read_schema(next((tmp_path / "cache" / entry.key / "data").glob("*.parquet"))).names
    assert [c for c in stored_columns if c.startswith(schema.FRAMES)] == [frames_column(0), frames_column(1)]
    epochs = passes(ds, 3)
    decoded = [collect(build_clip_dataset(table, TRAIN, epoch=e)) for e in range(3)]
    assert_same_rows(epochs[0], decoded[0])
    assert_same_rows(epochs[1], decoded[1])
    assert epochs[2][schema.FRAMES].shape == (4, 3, 1, 24, 24, 3)
    assert_same_rows(collect(cached_clip_dataset(table, TRAIN, cache, epoch=2)[0]), epochs[2])  # epoch=<int>

    applied = {}  # (video, epoch) -> (sampling, box, flipped)
    for i, row in enumerate(rows):
        video_id = row[schema.VIDEO_ID]
        index = index_from_bytes(row[schema.VIDEO_URI], row[schema.FRAME_INDEX])
        rngs = [sampling.clip_rng(TRAIN.seed, n, video_id) for n in range(2)]
        stored, indices = decode_samplings(row[schema.VIDEO_URI], index, TRAIN, rngs)  # (2, K, T, H, W, 3)
        assert not np.array_equal(indices[0], indices[1])  # the two samplings take different frames
        for e in range(3):
            applied[i, e] = applied_augmentation(epochs[e][schema.FRAMES][i], stored, TRAIN)
    assert [applied[i, e][0] for i in range(4) for e in range(3)] == [0, 1, 0] * 4  # epoch e: sampling e % 2
    # Epoch 2 re-reads sampling 0 with new draws: a different crop or flip for every video, and both kinds occur.
    assert all(applied[i, 2][1:] != applied[i, 0][1:] for i in range(4))
    assert any(applied[i, 2][1] != applied[i, 0][1] for i in range(4))  # crop boxes
    assert any(applied[i, 2][2] != applied[i, 0][2] for i in range(4))  # flips
    assert not np.array_equal(epochs[2][schema.FRAMES], decoded[2][schema.FRAMES])  # not epoch 2's sampling


def test_dense_multi_label_samplings_carry_their_own_labels(ray_local, tmp_path):
    """Dense clips take the classes of the segments their sampling overlaps: cached epochs equal decoding's, labels
    included, and pass N re-reads sampling 0's labels."""
    rows = clip_data.write_videos(str(tmp_path / "videos"), 3, num_frames=40)  # 5 s at 8 fps
    segments = [[(0, 0.0, 1.5), (2, 3.0, 5.0)], [(1, 0.0, 2.5)], [(3, 2.0, 2.6)]]
    table = clip_data.manifest_table(clip_data.multi_label_rows(rows, None, segments), 4, multi_label=True)
    config = ClipConfig(
        num_segments=2, frames_per_segment=2, sampling="dense", stride=2, short_side=32, crop_size=24,
        cache_samplings=2,
    )  # fmt: skip
    ds, _ = cached_clip_dataset(table, config, str(tmp_path / "cache"))
    epochs = passes(ds, 3)
    decoded = [collect(build_clip_dataset(table, config, epoch=e)) for e in range(2)]
    assert_same_rows(epochs[0], decoded[0])
    assert_same_rows(epochs[1], decoded[1])
    np.testing.assert_array_equal(epochs[2][schema.LABELS], decoded[0][schema.LABELS])
    assert epochs[2][schema.LABELS].dtype == np.float32 and epochs[2][schema.LABELS].shape == (3, 4)
    # The segments make the labels depend on the sampling: not every clip carries its video's classes.
    video_level = np.zeros((3, 4), np.float32)
    for i, classes in enumerate([[0, 2], [1], [3]]):
        video_level[i, classes] = 1.0
    assert any(not np.array_equal(epoch[schema.LABELS], video_level) for epoch in epochs)


def test_cache_samplings_below_one_is_refused_naming_the_field():
    from pipeline.config import apply_overrides
    from pipeline.presets import smoke

    with pytest.raises(ValueError, match="ClipConfig.cache_samplings must be >= 1, got 0"):
        apply_overrides(smoke("ucf101", 3), {"train_clips.cache_samplings": 0})


def test_incomplete_entry_is_rebuilt(ray_local, tmp_path):
    rows = clip_data.write_videos(str(tmp_path / "videos"), 2)
    table = clip_data.manifest_table(rows)
    cache = str(tmp_path / "cache")
    _, entry = cached_clip_dataset(table, TEST, cache)
    os.remove(os.path.join(entry.uri, SUCCESS_FILE))
    with open(os.path.join(entry.uri, "data", "leftover.parquet"), "wb") as f:
        f.write(b"partial write")
    ds, again = cached_clip_dataset(table, TEST, cache)
    assert not again.hit and again.num_rows == 2 * 3
    assert len(collect(ds)[schema.VIDEO_ID]) == 6


def test_multi_label_rows_round_trip(ray_local, tmp_path):
    rows = clip_data.write_videos(str(tmp_path / "videos"), 3)
    table = clip_data.manifest_table(
        clip_data.multi_label_rows(rows, [[0, 3], [], [1]]), num_classes=4, multi_label=True
    )
    ds, entry = cached_clip_dataset(table, TEST, str(tmp_path / "cache"))
    cached = collect(ds)
    assert cached[schema.LABELS].dtype == np.float32 and cached[schema.LABELS].shape == (9, 4)
    assert_same_rows(cached, collect(build_clip_dataset(table, TEST)))


def test_cache_needs_a_fixed_clip_size(tmp_path):
    with pytest.raises(ValueError, match="crop_size"):
        cached_clip_dataset(
            clip_data.manifest_table([]), dataclasses.replace(TEST, crop_size=None), str(tmp_path / "cache")
        )
