"""The Ray Data clip pipeline on a real local Ray with real (tiny) video files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline import schema
from pipeline.clips.dataset import ClipConfig, build_clip_dataset, sample_indices
from pipeline.clips.ledger import DecodeReport
from pipeline.video import sampling
from pipeline.video.decode import DECORD, SEEK, SEQUENTIAL, index_from_bytes, index_to_bytes
from tests.pipeline import clip_data

pytestmark = pytest.mark.slow

TEST_KEEP_SIZE = ClipConfig(
    num_segments=4, frames_per_segment=2, train=False, short_side=None, crop_size=None, num_test_clips=2
)
TRAIN = ClipConfig(num_segments=4, frames_per_segment=1, short_side=32, crop_size=24, decode_batch_size=2)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("videos"))
    return folder, clip_data.write_videos(folder, 6)


def collect(ds) -> dict[str, np.ndarray]:
    """All rows of a clip dataset, sorted by (video_id, view)."""
    batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    order = np.lexsort((out[schema.VIEW], out[schema.VIDEO_ID].astype(str)))
    return {k: v[order] for k, v in out.items()}


def test_config_validation():
    with pytest.raises(ValueError, match="sampling"):
        ClipConfig(sampling="random")
    with pytest.raises(ValueError, match="test_crops"):
        ClipConfig(test_crops=2)
    with pytest.raises(ValueError, match="exceeds"):
        ClipConfig(short_side=100, crop_size=112)
    with pytest.raises(ValueError, match="crop_size is required"):
        ClipConfig(train=True, crop_size=None)
    assert ClipConfig(train=False, num_test_clips=10, test_crops=3).num_views == 30
    assert ClipConfig(train=True, num_test_clips=10).num_views == 1


def test_test_mode_rows_hold_exactly_the_sampled_frames(ray_local, videos):
    _, rows = videos
    # Each read method through the dataset: the manifest's decode_method only reports, the index decides.
    indexes = [index_from_bytes(r[schema.VIDEO_URI], r[schema.FRAME_INDEX]) for r in rows]
    methods = [SEEK, SEQUENTIAL, SEEK, SEQUENTIAL, DECORD, SEEK]
    rows = [
        dict(r, **{schema.FRAME_INDEX: index_to_bytes(dataclasses.replace(index, method=m))})
        for r, index, m in zip(rows, indexes, methods, strict=True)
    ]
    out = collect(build_clip_dataset(clip_data.manifest_table(rows), TEST_KEEP_SIZE))
    assert out[schema.FRAMES].dtype == np.uint8
    assert out[schema.FRAMES].shape == (12, 4, 2, clip_data.HEIGHT, clip_data.WIDTH, 3)  # 6 videos x 2 clips
    assert out[schema.LABEL].dtype == np.int64
    np.testing.assert_array_equal(out[schema.VIEW], [0, 1] * 6)
    for i, row in enumerate(rows):
        for view in range(2):
            r = 2 * i + view
            assert out[schema.VIDEO_ID][r] == row[schema.VIDEO_ID]
            assert out[schema.LABEL][r] == row[schema.LABEL]
            expected = sampling.tsn_test_indices(row[schema.NUM_FRAMES], 4, 2, clip=view, num_clips=2)
            np.testing.assert_array_equal(clip_data.frame_indices_of(out[schema.FRAMES][r]), expected)


def test_test_mode_is_deterministic_and_views_complete(ray_local, videos):
    _, rows = videos
    config = ClipConfig(
        num_segments=3, train=False, short_side=32, crop_size=24, num_test_clips=2, test_crops=3
    )
    table = clip_data.manifest_table(rows)
    first = collect(build_clip_dataset(table, config))
    second = collect(build_clip_dataset(table, config))
    assert first[schema.FRAMES].shape == (6 * 6, 3, 1, 24, 24, 3)
    np.testing.assert_array_equal(first[schema.FRAMES], second[schema.FRAMES])
    np.testing.assert_array_equal(first[schema.VIEW], list(range(6)) * 6)
    # The three crops of a 32 x 42 frame differ (left, centre, right).
    assert not np.array_equal(first[schema.FRAMES][0], first[schema.FRAMES][1])


def test_corrupt_and_missing_videos_are_dropped_and_reported(ray_local, videos, tmp_path):
    folder, rows = videos
    bad = clip_data.write_corrupt(str(tmp_path), "broken")
    missing = dict(clip_data.write_corrupt(str(tmp_path), "gone"), video_uri=str(tmp_path / "nowhere.mp4"))
    short = dict(rows[0], video_id="too_short", num_frames=500)  # manifest claims frames the file lacks
    table = clip_data.manifest_table([*rows, bad, missing, short])
    report = DecodeReport.new()
    out = collect(
        build_clip_dataset(table, dataclasses.replace(TEST_KEEP_SIZE, num_test_clips=1), report=report)
    )
    assert len(out[schema.VIDEO_ID]) == len(rows)  # exact epoch length: decodable videos x 1 view
    assert sorted(set(out[schema.VIDEO_ID].tolist())) == [r[schema.VIDEO_ID] for r in rows]
    assert report.ids == ["broken", "gone", "too_short"]
    assert report.num_failed == 3
    assert all(reason for reason in report.reasons.values())
    assert "says 500 frames, its frame index 24 frames" in report.reasons["too_short"]
    assert "broken" in report.summary()


def test_strict_fails_the_run(ray_local, videos, tmp_path):
    _, rows = videos
    table = clip_data.manifest_table([*rows[:2], clip_data.write_corrupt(str(tmp_path), "broken_strict")])
    with pytest.raises(Exception, match="broken_strict"):
        collect(build_clip_dataset(table, dataclasses.replace(TEST_KEEP_SIZE, strict=True)))


def test_training_differs_per_epoch_and_is_reproducible(ray_local, videos):
    _, rows = videos
    table = clip_data.manifest_table(rows)
    e0 = collect(build_clip_dataset(table, TRAIN, epoch=0))
    e0_again = collect(build_clip_dataset(table, TRAIN, epoch=0))
    e1 = collect(build_clip_dataset(table, TRAIN, epoch=1))
    assert e0[schema.FRAMES].shape == (6, 4, 1, 24, 24, 3)
    np.testing.assert_array_equal(e0[schema.FRAMES], e0_again[schema.FRAMES])
    np.testing.assert_array_equal(e0[schema.LABEL], [r[schema.LABEL] for r in rows])
    differs = [not np.array_equal(a, b) for a, b in zip(e0[schema.FRAMES], e1[schema.FRAMES], strict=True)]
    assert sum(differs) >= 5  # a repeat of every random draw for a video is possible but very unlikely


def test_auto_epoch_advances_with_each_pass(ray_local, videos):
    _, rows = videos
    table = clip_data.manifest_table(rows)
    ds = build_clip_dataset(table, TRAIN)  # epoch=None: what a TorchTrainer iterates every epoch
    passes = [collect(ds) for _ in range(2)]
    for epoch, got in enumerate(passes):
        expected = collect(build_clip_dataset(table, TRAIN, epoch=epoch))
        np.testing.assert_array_equal(got[schema.FRAMES], expected[schema.FRAMES])
    assert not np.array_equal(passes[0][schema.FRAMES], passes[1][schema.FRAMES])


def test_multi_label_batches(ray_local, videos):
    _, rows = videos
    label_sets = [[0], [1, 4], [], [2, 3, 4], [0], [1]]
    table = clip_data.manifest_table(
        clip_data.multi_label_rows(rows, label_sets), num_classes=5, multi_label=True
    )
    out = collect(build_clip_dataset(table, dataclasses.replace(TRAIN, sampling="dense", stride=2), epoch=0))
    assert schema.LABEL not in out
    assert out[schema.LABELS].dtype == np.float32 and out[schema.LABELS].shape == (6, 5)
    for hot, labels in zip(out[schema.LABELS], label_sets, strict=True):
        np.testing.assert_array_equal(np.flatnonzero(hot), labels)


def test_manifest_uri_and_dense_sampling(ray_local, videos, tmp_path):
    _, rows = videos
    uri = clip_data.write_manifest(str(tmp_path / "test.parquet"), clip_data.manifest_table(rows))
    config = ClipConfig(
        num_segments=2,
        frames_per_segment=3,
        sampling="dense",
        stride=2,
        train=False,
        short_side=None,
        crop_size=None,
    )
    out = collect(build_clip_dataset(uri, config))
    assert out[schema.FRAMES].shape == (6, 2, 3, clip_data.HEIGHT, clip_data.WIDTH, 3)
    for row, clip in zip(rows, out[schema.FRAMES], strict=True):
        expected = sample_indices(row[schema.NUM_FRAMES], config, None)[0]
        np.testing.assert_array_equal(clip_data.frame_indices_of(clip), expected)


def test_bad_manifest_names_the_missing_column(tmp_path):
    import pyarrow as pa

    with pytest.raises(ValueError, match="num_frames"):
        build_clip_dataset(pa.table({schema.VIDEO_ID: ["a"], schema.VIDEO_URI: ["x"]}), TRAIN)


def test_training_rows_are_shuffled_across_decode_blocks(ray_local, videos):
    """Manifests list videos class by class; training blocks must not be runs of consecutive rows (batches of
    one class), also when one dataset is re-iterated by Ray Train (epoch=None)."""
    _, rows = videos
    rows = sorted(rows, key=lambda r: (r[schema.LABEL], r[schema.VIDEO_ID]))
    manifest_order = [r[schema.VIDEO_ID] for r in rows]
    config = dataclasses.replace(TRAIN, decode_batch_size=3)
    ds = build_clip_dataset(clip_data.manifest_table(rows), config)  # epoch=None
    blocks = [b[schema.VIDEO_ID].tolist() for b in ds.iter_batches(batch_size=None, batch_format="numpy")]
    assert sorted(sum(blocks, [])) == sorted(manifest_order)
    consecutive = [manifest_order[i : i + 3] for i in range(0, len(manifest_order), 3)]
    assert sorted(blocks) != sorted(consecutive), (
        "decode blocks are runs of consecutive (same-class) manifest rows"
    )


def test_whole_frames_of_videos_of_different_sizes_are_refused_before_decoding(videos):
    _, rows = videos
    rows = [rows[0], dict(rows[1], **{schema.WIDTH: 96, schema.HEIGHT: 48})]
    with pytest.raises(ValueError, match=r"2 sizes \(64x48, 96x48\).*Set crop_size"):
        build_clip_dataset(clip_data.manifest_table(rows), TEST_KEEP_SIZE)


# Charades-like actions of the 8 fps test videos (3.0 to 4.25 s long): a gap of 0.5 s, actions that meet at 1.0 s
# and 3.0 s, class 4 nowhere.
CFR_ACTIONS = [(0, 0.0, 1.0), (1, 1.0, 2.0), (2, 2.5, 3.0), (3, 3.0, 6.0)]
# A variable-frame-rate video: 10 frames at 10 fps, a 2.1 s pause, 10 more (average 5 fps): frame 10 is at 3.0 s.
VFR_MS = [i * 100 for i in range(10)] + [3000 + i * 100 for i in range(10)]
VFR_ACTIONS = [(0, 0.0, 0.5), (1, 1.0, 2.9), (2, 3.5, 4.0)]


def overlapping(first: float, last: float, actions: list[tuple[int, float, float]]) -> list[int]:
    """The rule written out: classes with an instant of [first, last] strictly inside the action (no frame time
    here is within float32 rounding of an action bound, so float64 comparisons are exact)."""
    return sorted({c for c, s, e in actions if s < e and s < last and e > first})


@pytest.fixture(scope="module")
def charades_like(videos, tmp_path_factory):
    """6 constant-rate videos and one VFR video with Charades-like actions, and each video's frame times."""
    _, rows = videos
    vfr = clip_data.write_vfr_video(str(tmp_path_factory.mktemp("vfr")), "vfr", VFR_MS)
    rows = clip_data.multi_label_rows([*rows, vfr], None, [CFR_ACTIONS] * len(rows) + [VFR_ACTIONS])
    times = {r[schema.VIDEO_ID]: np.arange(r[schema.NUM_FRAMES]) / 8.0 for r in rows[:-1]}
    times["vfr"] = np.array(VFR_MS) / 1000.0
    return rows, times


def test_dense_training_clips_take_the_labels_of_their_segments(ray_local, charades_like):
    rows, times = charades_like
    table = clip_data.manifest_table(rows, num_classes=5, multi_label=True)
    config = dataclasses.replace(TRAIN, num_segments=2, sampling="dense", stride=2)  # 3-frame spans
    actions = {
        r[schema.VIDEO_ID]: [(s["label"], s["start"], s["end"]) for s in r[schema.SEGMENTS]] for r in rows
    }
    seen = []
    for epoch in range(3):
        out = collect(build_clip_dataset(table, config, epoch=epoch))
        assert out[schema.LABELS].shape == (7, 5)
        for video_id, hot in zip(out[schema.VIDEO_ID], out[schema.LABELS], strict=True):
            # The clip's frames: the same draws as the decode task (sampling first, from the video's generator).
            rng = sampling.clip_rng(config.seed, epoch, video_id)
            indices = sample_indices(len(times[video_id]), config, rng)
            first, last = times[video_id][indices.min()], times[video_id][indices.max()]
            expected = overlapping(first, last, actions[video_id])
            assert np.flatnonzero(hot).tolist() == expected, (video_id, epoch, first, last)
            seen.append(expected)
    # Not the video labels: clips in the gap (no class), within one action and across two occur.
    assert [] in seen and [0] in seen and any(len(s) == 2 for s in seen)


def test_dense_test_views_take_the_labels_of_their_clips(ray_local, charades_like):
    rows, times = charades_like
    table = clip_data.manifest_table(rows, num_classes=5, multi_label=True)
    config = ClipConfig(
        num_segments=1,
        frames_per_segment=4,
        sampling="dense",
        stride=2,
        train=False,
        short_side=None,
        crop_size=None,
        num_test_clips=3,
    )
    out = collect(build_clip_dataset(table, config))
    actions = {
        r[schema.VIDEO_ID]: [(s["label"], s["start"], s["end"]) for s in r[schema.SEGMENTS]] for r in rows
    }
    for video_id, clip, hot in zip(out[schema.VIDEO_ID], out[schema.FRAMES], out[schema.LABELS], strict=True):
        decoded = clip_data.frame_indices_of(clip)  # the frames the view really holds
        first, last = times[video_id][decoded.min()], times[video_id][decoded.max()]
        assert np.flatnonzero(hot).tolist() == overlapping(first, last, actions[video_id]), video_id
    # The VFR video's clips (frames 2-8, 7-13, 11-17) by timestamps; i / fps (5 fps) would give [0, 1], [1], [1].
    vfr = out[schema.LABELS][out[schema.VIDEO_ID] == "vfr"]
    assert [np.flatnonzero(hot).tolist() for hot in vfr] == [[0], [1], [2]]


def test_dense_multi_label_manifest_whose_labels_disagree_with_its_segments_is_refused(ray_local, videos):
    _, rows = videos
    rows = clip_data.multi_label_rows(rows[:2], [[0], [1]])
    rows[1][schema.LABELS] = [1, 2]  # class 2 has no segment
    table = clip_data.manifest_table(rows, num_classes=3, multi_label=True)
    with pytest.raises(ValueError, match=r"v01: labels \[1, 2\] but its segments give \[1\]"):
        build_clip_dataset(table, dataclasses.replace(TRAIN, sampling="dense"))
    build_clip_dataset(table, TRAIN)  # TSN uses the video labels: nothing to check
