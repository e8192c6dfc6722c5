"""The decode-once clip cache on a real local Ray with real (tiny) videos."""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest

from pipeline import schema
from pipeline.clips.cache import SUCCESS_FILE, cache_key, cached_clip_dataset
from pipeline.clips.dataset import ClipConfig, build_clip_dataset
from tests.pipeline import clip_data

pytestmark = pytest.mark.slow

TEST = ClipConfig(
    num_segments=3, frames_per_segment=2, train=False, short_side=32, crop_size=24, test_crops=3
)
TRAIN = ClipConfig(num_segments=3, frames_per_segment=1, short_side=32, crop_size=24, decode_batch_size=2)


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
    assert cache_key(relabelled, TEST, 0)[0] != first.key
    assert sorted(os.listdir(cache)) == sorted([first.key, other.key])


def test_training_epochs_cycle_through_cached_slots(ray_local, tmp_path):
    rows = clip_data.write_videos(str(tmp_path / "videos"), 3)
    table = clip_data.manifest_table(rows)
    cache = str(tmp_path / "cache")
    slots = [cached_clip_dataset(table, TRAIN, cache, epoch=e, num_cached_epochs=2) for e in range(3)]
    assert [entry.hit for _, entry in slots] == [False, False, True]
    assert slots[0][1].key == slots[2][1].key != slots[1][1].key
    epoch0, epoch1 = collect(slots[0][0]), collect(slots[1][0])
    assert_same_rows(epoch0, collect(build_clip_dataset(table, TRAIN, epoch=0)))
    assert_same_rows(epoch1, collect(build_clip_dataset(table, TRAIN, epoch=1)))
    assert not np.array_equal(epoch0[schema.FRAMES], epoch1[schema.FRAMES])


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
