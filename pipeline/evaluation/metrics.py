"""Evaluation metrics with the datasets' own protocols. Pure numpy; no Ray, no torch.

Single-label (UCF101, HMDB51): top-k accuracy, mean class accuracy, confusion matrix.

Multi-label (Charades), as the official ``Charades_v1_classify.m`` computes it:
- every ground-truth test video is scored; a video with no prediction gets ``-inf`` for every class, so it ranks
  last for every class (it can only lower AP);
- videos without any action stay in the ranking as negatives;
- per class, videos are sorted by score, descending, with ties kept in ground-truth order (MATLAB's ``sort`` is
  stable), and AP is the non-interpolated average: the mean of the precision at the rank of each positive;
- mAP is the mean of AP over classes with at least one positive; wAP weights each class's AP by its number of
  positives.

Multi-view testing: a video's views (temporal clips x spatial crops) are combined by ``aggregate_views`` with
``max`` (the Charades convention) or ``mean`` (UCF101 / HMDB51) before any metric is computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def aggregate_views(
    video_ids: np.ndarray, scores: np.ndarray, how: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """Combine the scores of several views of each video into one row per video.

    Args:
        video_ids: (N,) one id per view row; a video may appear any number of times.
        scores: (N, C) float scores (probabilities or logits) per view row.
        how: ``"mean"`` or ``"max"`` over a video's views.

    Returns:
        ``(ids, video_scores)``: (V,) unique ids in order of first appearance and (V, C) float64 scores.
    """
    if how not in ("mean", "max"):
        raise ValueError(f"how must be 'mean' or 'max', got {how!r}")
    video_ids = np.asarray(video_ids)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or len(video_ids) != len(scores):
        raise ValueError(f"need (N,) ids and (N, C) scores, got {video_ids.shape} and {scores.shape}")
    unique_ids, first_index, inverse = np.unique(video_ids, return_index=True, return_inverse=True)
    order = np.argsort(first_index, kind="stable")  # unique ids in order of first appearance
    rank_of_unique = np.empty_like(order)
    rank_of_unique[order] = np.arange(len(order))
    group = rank_of_unique[inverse]  # (N,) output row of each view
    num_videos = len(unique_ids)
    if how == "max":
        out = np.full((num_videos, scores.shape[1]), -np.inf)
        np.maximum.at(out, group, scores)
    else:
        out = np.zeros((num_videos, scores.shape[1]))
        np.add.at(out, group, scores)
        out /= np.bincount(group, minlength=num_videos)[:, None]
    return unique_ids[order], out


# --- single-label -----------------------------------------------------------------------------------------------
def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores. Ties rank the lower class index first."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    k = min(k, scores.shape[1])
    # Stable sort of -score: among equal scores the lower index comes first (deterministic tie rule).
    topk = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(topk == labels[:, None], axis=1))) if len(labels) else float("nan")


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def mean_class_accuracy(matrix: np.ndarray) -> float:
    """Mean over classes that have test samples of the per-class recall (diagonal / row sum)."""
    support = matrix.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(matrix)[present] / support[present])) if present.any() else float("nan")


@dataclass(frozen=True)
class SingleLabelMetrics:
    top1: float
    top5: float
    mean_class_accuracy: float
    confusion: np.ndarray  # (C, C) int64, rows true, columns predicted
    num_videos: int


def single_label_metrics(scores: np.ndarray, labels: np.ndarray) -> SingleLabelMetrics:
    """Top-1, top-5, mean class accuracy and confusion matrix of (V, C) scores against (V,) labels."""
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.argsort(-scores, axis=1, kind="stable")[:, 0]
    matrix = confusion_matrix(predictions, labels, scores.shape[1])
    return SingleLabelMetrics(
        top1=topk_accuracy(scores, labels, 1),
        top5=topk_accuracy(scores, labels, 5),
        mean_class_accuracy=mean_class_accuracy(matrix),
        confusion=matrix,
        num_videos=len(labels),
    )


# --- multi-label (Charades) -------------------------------------------------------------------------------------
def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Non-interpolated AP of one class: mean precision at the rank of each positive (NaN without positives).

    Args:
        scores: (V,) scores of every ground-truth video for this class (``-inf`` for unpredicted videos).
        positives: (V,) bool, whether each video contains the class.
    """
    positives = np.asarray(positives, dtype=bool)
    num_positives = int(positives.sum())
    if num_positives == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")  # ties keep ground-truth order
    hits = positives[order]
    precision_at_rank = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at_rank[hits].sum() / num_positives)


@dataclass(frozen=True)
class MultiLabelMetrics:
    map: float  # mean AP over classes with at least one positive
    wap: float  # AP weighted by each class's number of positives
    per_class_ap: np.ndarray  # (C,) float64, NaN for classes without positives
    num_positives: np.ndarray  # (C,) int64
    num_videos: int
    num_unpredicted: int  # ground-truth videos that had no prediction (ranked last)


def charades_metrics(
    gt_ids: np.ndarray,
    gt_labels: np.ndarray,
    predicted_ids: np.ndarray,
    predicted_scores: np.ndarray,
) -> MultiLabelMetrics:
    """Charades mAP / wAP by the official protocol (see the module docstring).

    Args:
        gt_ids: (V,) ids of every test video, in the ground-truth file's order.
        gt_labels: (V, C) multi-hot ground truth (bool or {0, 1}).
        predicted_ids: (P,) ids with predictions (one row each, views already aggregated); ids not in ``gt_ids``
            are ignored, as the official script ignores them.
        predicted_scores: (P, C) scores.
    """
    gt_ids = np.asarray(gt_ids)
    gt_labels = np.asarray(gt_labels).astype(bool)
    predicted_scores = np.asarray(predicted_scores, dtype=np.float64)
    if len(set(predicted_ids.tolist())) != len(predicted_ids):
        raise ValueError("predicted_ids contains duplicates: aggregate views first (aggregate_views)")
    row_of = {vid: i for i, vid in enumerate(gt_ids.tolist())}
    scores = np.full(gt_labels.shape, -np.inf)
    predicted = np.zeros(len(gt_ids), dtype=bool)
    for vid, row in zip(np.asarray(predicted_ids).tolist(), predicted_scores, strict=True):
        i = row_of.get(vid)
        if i is not None:
            scores[i] = row
            predicted[i] = True
    per_class_ap = np.array(
        [average_precision(scores[:, c], gt_labels[:, c]) for c in range(gt_labels.shape[1])]
    )
    num_positives = gt_labels.sum(axis=0).astype(np.int64)
    has_positive = num_positives > 0
    mean_ap = float(np.mean(per_class_ap[has_positive])) if has_positive.any() else float("nan")
    weighted_ap = (
        float(np.sum(per_class_ap[has_positive] * num_positives[has_positive]) / num_positives.sum())
        if has_positive.any()
        else float("nan")
    )
    return MultiLabelMetrics(
        map=mean_ap,
        wap=weighted_ap,
        per_class_ap=per_class_ap,
        num_positives=num_positives,
        num_videos=len(gt_ids),
        num_unpredicted=int((~predicted).sum()),
    )


def charades_submission_lines(video_ids: np.ndarray, scores: np.ndarray) -> list[str]:
    """The official submission format: one line per video, the id then C scores separated by spaces."""
    return [f"{vid} " + " ".join(f"{s:.6g}" for s in row) for vid, row in zip(video_ids, scores, strict=True)]
