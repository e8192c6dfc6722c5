"""The model card (``pipeline.tracking.model_card``) and the version tags (``registry.version_tags``), as pure
functions: every fact the card promises is in the text, and the tags hold each fact once, never empty. The card of a
version registered by a real training run is checked in ``tests/workflows/test_predict_workflow.py``."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipeline.presets import preset, smoke
from pipeline.tracking.model_card import MAX_DESCRIPTION_CHARS, MAX_LABEL_CHARS, CardFacts, model_card
from pipeline.tracking.registry import CONFIG_TAG, MANIFEST_PARAMS, RUN_ID_TAG, version_tags

TRAIN_SHA = "a" * 64
VAL_SPLIT = {"method": "groups", "fraction": 0.1, "seed": 0, "num_train_listed": 90, "num_val": 9}


def _facts(exp, class_names, **changes) -> CardFacts:
    facts = CardFacts(
        name=f"stpa-{exp.dataset}",
        version=3,
        dataset=exp.dataset,
        official_split="1",
        val_split=VAL_SPLIT,
        primary_metric=exp.primary_metric,
        test_value=0.8125,
        selection_split="val",
        exp=exp,
        class_names=class_names,
        train_manifest_sha256=TRAIN_SHA,
    )
    return dataclasses.replace(facts, **changes)


def test_card_states_data_metric_model_input_labels_hash_and_usage():
    exp = smoke("ucf101", 3)
    card = model_card(_facts(exp, ["ApplyEyeMakeup", "Basketball", "Crawling"]))
    m, clips = exp.model, exp.test_clips
    for fact in (
        "stpa-ucf101 version 3",
        "ucf101, official split 1",
        "val split (9 of its 90 videos, groups, fraction 0.1, seed 0)",
        "Test top1: 0.8125",
        "the epoch with the best val top1",
        f"{m.backbone} backbone",
        f"K = {clips.num_segments} segments",
        "interaction-aware pyramid attention",
        f"over the pyramid {', '.join(m.pyramid_layers)}",
        f"{m.input_size} px input",
        f"{clips.num_views} views ({clips.num_test_clips} temporal clip(s) x 1 crop(s))",
        f"short side resized to {clips.short_side} px",
        f"combined by {exp.train.view_reduce}",
        "3 classes (single-label, softmax): ApplyEyeMakeup, Basketball, Crawling.",
        f"Training manifest SHA-256: {TRAIN_SHA}.",
        'mlflow.pyfunc.load_model("models:/stpa-ucf101/3")',
        "stpa predict ucf101 /path/video.mp4 --version 3",
        "python workflows/predict.py --model models:/stpa-ucf101/3",
        "mlflow models serve -m models:/stpa-ucf101/3 --env-manager local -h 127.0.0.1",
        '"dataframe_records": [{"video": "/path/video.mp4"}]',
    ):
        assert fact in card, fact


def test_card_without_val_says_the_last_epoch_was_kept_and_names_other_models():
    exp = smoke("charades", 4)
    exp = dataclasses.replace(
        exp, model=dataclasses.replace(exp.model, attention="none", temporal_shift=True)
    )
    card = model_card(
        _facts(exp, ["a", "b", "c", "d"], val_split=None, selection_split="last_epoch", official_split="")
    )
    assert "charades, the official split: trained on the official training list, tested once" in card
    assert "Test mAP: 0.8125" in card and "the last epoch (no val split" in card
    assert "no attention: TSN average consensus" in card and "frame order from temporal shift (TSM)" in card
    assert "4 classes (multi-label, per-class sigmoid)" in card and "combined by max" in card


def test_card_of_a_large_label_set_fits_mlflow_and_says_where_the_rest_is():
    exp = preset("charades", "charades", 157)
    names = [f"Holding some clothes while doing thing number {i:03d}" for i in range(157)]
    card = model_card(_facts(exp, names))
    assert len(card) <= MAX_DESCRIPTION_CHARS
    shown = MAX_LABEL_CHARS // (len(names[0]) + 2)  # names of equal length: as many as fit in the budget
    assert names[shown - 1] in card and names[shown] not in card
    assert f"({157 - shown} more in the model's artifacts/class_names.json)" in card
    with pytest.raises(ValueError, match="156 class names for a model with 157 classes"):
        model_card(_facts(exp, names[:-1]))


def test_version_tags_hold_each_fact_once_and_none_empty():
    params = {
        "manifest.train.sha256": TRAIN_SHA,
        "manifest.train.uri": "/data/m/train.parquet",
        "manifest.test.sha256": "b" * 64,
        "manifest.test.uri": "/data/m/test.parquet",
        "selection.split": "val",
        "model.backbone": "resnet_debug",  # a run param that is no version tag
    }
    config = dataclasses.asdict(smoke("ucf101", 3))
    extra = {"stpa.workflow_id": "train-ucf101-smoke-1", "stpa.preset": "smoke", "stpa.overrides": ""}
    tags = version_tags(
        {"test_top1": 0.5, "test_top5": 1.0}, "top1", 0.5, config, "abc123", "run1", params, extra
    )
    assert all(value.strip() for value in tags.values())
    assert "stpa.overrides" not in tags  # no overrides: no tag, rather than "{}"
    assert set(tags) == {
        "metric.test_top1",
        "metric.test_top5",
        "stpa.primary_metric",
        "stpa.primary_metric_value",
        CONFIG_TAG,
        "stpa.git_commit",
        RUN_ID_TAG,
        "manifest.train.sha256",
        "manifest.train.uri",
        "manifest.test.sha256",
        "manifest.test.uri",
        "stpa.workflow_id",
        "stpa.preset",
    }
    assert list(tags.values()).count(TRAIN_SHA) == 1  # the training manifest's hash under one key only
    assert set(MANIFEST_PARAMS) >= {k for k in tags if k.startswith("manifest.")}
    assert json.loads(tags[CONFIG_TAG]) == json.loads(json.dumps(config))
    without_run = version_tags({"test_top1": 0.5}, "top1", 0.5, config, "abc123", None, {}, {})
    assert RUN_ID_TAG not in without_run and not any(k.startswith("manifest.") for k in without_run)
