from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline import metric_names as names
from pipeline import schema
from pipeline.evaluation.evaluate import Predictions, check_complete, compute_metrics, shard_rows, shard_table
from pipeline.video.transforms import IMAGENET_MEAN, IMAGENET_STD, frames_to_model_input


@pytest.mark.parametrize("num_rows", [0, 1, 5, 7, 64])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_shards_cover_every_row_exactly_once(num_rows, world_size):
    shards = [shard_rows(num_rows, r, world_size) for r in range(world_size)]
    together = np.concatenate(shards)
    assert sorted(together.tolist()) == list(range(num_rows))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


def test_shard_table_keeps_schema_metadata():
    table = pa.table({"video_id": ["a", "b", "c"]}).replace_schema_metadata({b"k": b"v"})
    part = shard_table(table, 1, 2)
    assert part.column("video_id").to_pylist() == ["b"]
    assert part.schema.metadata == {b"k": b"v"}


def test_frames_to_model_input_layout_and_normalisation():
    frames = torch.zeros(2, 3, 2, 4, 5, 3, dtype=torch.uint8)  # (B, K, T, H, W, 3)
    frames[1, 2, 1, :, :, 0] = 255  # red channel of the last frame of the last segment of clip 1
    x = frames_to_model_input(frames)
    assert x.shape == (2, 6, 3, 4, 5) and x.dtype == torch.float32
    expected_red = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert torch.allclose(x[1, 5, 0], torch.full((4, 5), expected_red))
    assert torch.allclose(x[0, 0, 2], torch.full((4, 5), -IMAGENET_MEAN[2] / IMAGENET_STD[2]))


def _predictions(ids, views, scores):
    return Predictions(np.array(ids, dtype=object), np.array(views, dtype=np.int32), np.array(scores))


def test_check_complete_catches_duplicates_and_partial_videos():
    good = _predictions(["a", "a", "b", "b"], [0, 1, 0, 1], np.zeros((4, 2)))
    check_complete(good, np.array(["a", "b", "c"]), views_per_video=2)  # c failed to decode: allowed
    with pytest.raises(RuntimeError, match="duplicate"):
        check_complete(_predictions(["a", "a"], [0, 0], np.zeros((2, 2))), np.array(["a"]), 2)
    with pytest.raises(RuntimeError, match="not all scored"):
        check_complete(_predictions(["a"], [0], np.zeros((1, 2))), np.array(["a"]), 2)
    with pytest.raises(RuntimeError, match="outside"):
        check_complete(_predictions(["z"], [0], np.zeros((1, 2))), np.array(["a"]), 1)


def test_compute_metrics_single_label_counts_missing_videos_as_wrong():
    table = pa.table({schema.VIDEO_ID: ["a", "b", "c", "d"], schema.LABEL: [0, 1, 1, 0]})
    preds = _predictions(
        ["a", "a", "b", "b", "c", "c"],
        [0, 1, 0, 1, 0, 1],
        [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]],
    )
    scalars, details = compute_metrics(preds, table, num_classes=2, multi_label=False, view_reduce="mean")
    # a -> 0 (right), b -> 1 (right), c -> mean [0.45, 0.55] -> 1 (right), d missing (wrong)
    assert scalars[names.TOP1] == pytest.approx(3 / 4)
    assert scalars[names.NUM_VIDEOS_MISSING] == 1
    assert details["confusion"].tolist() == [[1, 0], [0, 2]]


def test_compute_metrics_multi_label_max_over_views():
    table = pa.table(
        {schema.VIDEO_ID: ["a", "b"], schema.LABELS: pa.array([[0], [1]], type=pa.list_(pa.int32()))},
        metadata={schema.META_CLASS_NAMES: b'["c000", "c001"]'},
    )
    preds = _predictions(["a", "a", "b", "b"], [0, 1, 0, 1], [[0.1, 0.5], [0.9, 0.2], [0.3, 0.4], [0.2, 0.6]])
    scalars, details = compute_metrics(preds, table, num_classes=2, multi_label=True, view_reduce="max")
    # max over views: a = [0.9, 0.5], b = [0.3, 0.6] -> both classes rank their positive first
    assert scalars[names.MAP] == pytest.approx(1.0)
    np.testing.assert_allclose(details["scores"], [[0.9, 0.5], [0.3, 0.6]])
