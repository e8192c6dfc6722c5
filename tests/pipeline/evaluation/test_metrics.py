"""Metrics against hand-computed cases and an independent, loop-based implementation written here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation.metrics import (
    aggregate_views,
    average_precision,
    charades_metrics,
    charades_submission_lines,
    confusion_matrix,
    mean_class_accuracy,
    single_label_metrics,
    topk_accuracy,
)


def reference_ap(scores: list[float], positives: list[bool]) -> float:
    """AP from the definition, one positive at a time: a video ranks before video p when its score is higher, or
    equal with a smaller index (stable descending sort); precision at p = positives ranked at or before p / rank."""
    n = len(scores)
    num_pos = sum(positives)
    if num_pos == 0:
        return math.nan
    total = 0.0
    for p in range(n):
        if not positives[p]:
            continue
        ahead = [q for q in range(n) if scores[q] > scores[p] or (scores[q] == scores[p] and q <= p)]
        total += sum(positives[q] for q in ahead) / len(ahead)
    return total / num_pos


def test_average_precision_hand_cases():
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(
        (1 + 2 / 3) / 2
    )
    # Ties keep ground-truth order: the positive in the middle of three equal scores has rank 2.
    assert average_precision(np.array([0.5, 0.5, 0.5]), np.array([0, 1, 0])) == pytest.approx(0.5)
    assert average_precision(np.array([0.5, 0.5, 0.5]), np.array([1, 0, 0])) == pytest.approx(1.0)
    # An unpredicted positive (-inf) ranks last.
    assert average_precision(np.array([-np.inf, 0.1, 0.2]), np.array([1, 0, 0])) == pytest.approx(1 / 3)
    assert math.isnan(average_precision(np.array([0.3, 0.2]), np.array([0, 0])))


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_matches_reference_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=40).astype(float)  # few distinct values -> many ties
    positives = rng.random(40) < 0.3
    positives[0] = True
    assert average_precision(scores, positives) == pytest.approx(
        reference_ap(scores.tolist(), positives.tolist())
    )


def test_charades_metrics_protocol():
    gt_ids = np.array(["A", "B", "C", "D"])
    gt = np.array(
        [
            [1, 0, 0],
            [0, 1, 0],
            [1, 1, 0],
            [0, 0, 0],  # a video without actions stays a negative
        ]
    )
    # D has no prediction; an id unknown to the ground truth is ignored.
    pred_ids = np.array(["C", "A", "B", "ZZZ"])
    pred = np.array([[0.9, 0.2, 0.5], [0.8, 0.9, 0.1], [0.1, 0.7, 0.3], [5.0, 5.0, 5.0]])
    m = charades_metrics(gt_ids, gt, pred_ids, pred)
    full = np.full((4, 3), -np.inf)
    full[2], full[0], full[1] = pred[0], pred[1], pred[2]
    expected = [reference_ap(full[:, c].tolist(), gt[:, c].astype(bool).tolist()) for c in range(3)]
    assert m.per_class_ap[0] == pytest.approx(expected[0]) == pytest.approx(1.0)  # C, A rank first
    assert m.per_class_ap[1] == pytest.approx(expected[1])
    assert math.isnan(m.per_class_ap[2])  # class without positives: excluded from mAP
    assert m.map == pytest.approx(np.mean(expected[:2]))
    assert m.wap == pytest.approx((2 * expected[0] + 2 * expected[1]) / 4)
    assert m.num_unpredicted == 1
    assert m.num_positives.tolist() == [2, 2, 0]


def test_charades_unpredicted_positive_lowers_ap():
    gt_ids = np.array(["A", "B", "C"])
    gt = np.array([[1], [0], [1]])
    with_all = charades_metrics(gt_ids, gt, np.array(["A", "B", "C"]), np.array([[0.9], [0.1], [0.8]]))
    without_c = charades_metrics(gt_ids, gt, np.array(["A", "B"]), np.array([[0.9], [0.1]]))
    assert with_all.map == pytest.approx(1.0)
    assert without_c.map == pytest.approx((1 + 2 / 3) / 2)


def test_charades_rejects_duplicate_predictions():
    with pytest.raises(ValueError, match="duplicates"):
        charades_metrics(np.array(["A"]), np.array([[1]]), np.array(["A", "A"]), np.array([[0.1], [0.2]]))


def test_single_label_metrics_against_loops():
    rng = np.random.default_rng(0)
    scores = rng.random((50, 7))
    labels = rng.integers(0, 6, size=50)  # class 6 never occurs
    m = single_label_metrics(scores, labels)
    top1 = np.mean([np.argmax(s) == y for s, y in zip(scores, labels, strict=True)])
    top5 = np.mean([y in np.argsort(s)[::-1][:5] for s, y in zip(scores, labels, strict=True)])
    assert m.top1 == pytest.approx(top1)
    assert m.top5 == pytest.approx(top5)
    per_class = []
    for c in range(7):
        rows = [i for i in range(50) if labels[i] == c]
        if rows:
            per_class.append(np.mean([np.argmax(scores[i]) == c for i in rows]))
    assert m.mean_class_accuracy == pytest.approx(np.mean(per_class))
    assert m.confusion.sum() == 50
    assert m.confusion[:, :].trace() == round(top1 * 50)


def test_topk_and_confusion_hand_case():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4]])
    labels = np.array([1, 2, 0])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
    matrix = confusion_matrix(np.array([1, 0, 2]), labels, 3)
    assert matrix.tolist() == [[0, 0, 1], [0, 1, 0], [1, 0, 0]]
    assert mean_class_accuracy(matrix) == pytest.approx(1 / 3)


@pytest.mark.parametrize("how", ["mean", "max"])
def test_aggregate_views_against_dict(how):
    rng = np.random.default_rng(1)
    ids = np.array(["b", "a", "b", "c", "a", "b"])
    scores = rng.random((6, 4))
    out_ids, out = aggregate_views(ids, scores, how)
    assert out_ids.tolist() == ["b", "a", "c"]  # order of first appearance
    reduce = np.mean if how == "mean" else np.max
    for vid, row in zip(out_ids, out, strict=True):
        np.testing.assert_allclose(row, reduce(scores[ids == vid], axis=0))


def test_submission_lines():
    lines = charades_submission_lines(np.array(["46GP8"]), np.array([[0.5, 1.25e-3]]))
    assert lines == ["46GP8 0.5 0.00125"]
