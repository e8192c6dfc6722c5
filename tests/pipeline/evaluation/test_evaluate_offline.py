"""Offline evaluation (``evaluate_weights``: Ray Data decode tasks feeding ClipScorer actors) against a plain loop:
each video decoded with ``decode_views`` and scored by the model in this process, no Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import schema
from pipeline.clips.dataset import decode_views
from pipeline.clips.ledger import DecodeReport
from pipeline.evaluation.evaluate import evaluate_weights
from pipeline.presets import preset
from pipeline.video.decode import index_video
from pipeline.video.transforms import frames_to_model_input
from stpa_model import STPANet
from tests.pipeline.clip_data import manifest_table, write_corrupt, write_manifest, write_videos

RAY_NUM_CPUS = 3  # two scorer actors plus decode tasks


@pytest.mark.slow
def test_every_view_scored_once_and_equal_to_a_plain_loop(ray_local, tmp_path):
    rows = write_videos(str(tmp_path / "videos"), 7)
    rows.append(write_corrupt(str(tmp_path / "videos"), "broken"))
    manifest = write_manifest(str(tmp_path / "test.parquet"), manifest_table(rows))
    exp = preset("smoke", "folder", 3)
    torch.manual_seed(0)
    model = STPANet(exp.model).eval()
    with torch.no_grad():
        model.head.fc.weight.mul_(30)  # an untrained head scores every clip alike; make the input matter
    weights = str(tmp_path / "best_model.pt")
    torch.save(model.state_dict(), weights)

    report = DecodeReport.new()
    scalars, details, predictions = evaluate_weights(exp, weights, manifest, num_scorers=2, report=report)

    views = exp.test_clips.num_views
    keys = sorted(zip(predictions.video_ids.tolist(), predictions.views.tolist(), strict=True))
    assert keys == sorted((r[schema.VIDEO_ID], v) for r in rows[:7] for v in range(views))
    assert report.ids == ["broken"]
    assert scalars["num_videos_scored"] == 7 and scalars["num_videos_missing"] == 1

    expected = {}
    for row in rows[:7]:
        index = index_video(row[schema.VIDEO_URI])
        clips, _ = decode_views(row[schema.VIDEO_URI], index, exp.test_clips, None)
        with torch.no_grad():
            logits = model(frames_to_model_input(torch.from_numpy(clips))).logits
        expected[row[schema.VIDEO_ID]] = torch.softmax(logits, dim=1).numpy()  # (V, C)
    for video_id, view, scores in zip(
        predictions.video_ids, predictions.views, predictions.scores, strict=True
    ):
        np.testing.assert_allclose(scores, expected[video_id][view], atol=1e-5)
    spread = np.ptp(np.stack([e.mean(axis=0) for e in expected.values()]), axis=0).max()
    assert spread > 1e-3  # the videos score differently, so the comparison above can fail
    order = list(details["video_ids"])
    averaged = np.stack([expected[v].mean(axis=0) for v in order])  # smoke preset: mean over views
    np.testing.assert_allclose(details["scores"], averaged, atol=1e-5)
