"""The evaluation plots read at the datasets' class counts: per-class AP at Charades' 157 classes, the confusion
matrix with values and colour bars, attention heat maps labelled with frames, classes and a colour bar."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.tracking.artifacts import (
    CONFUSION_CELL_VALUES,
    PER_CLASS_AP_SHOWN,
    confusion_figure,
    heatmap_figure,
    per_class_ap_figure,
    save_figure,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _labels(ax) -> list[str]:
    return [label.get_text() for label in ax.get_yticklabels()]


def test_per_class_ap_at_157_classes_shows_the_best_and_worst_readably(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"c{c:03d} holding something" for c in range(157)]
    ap = rng.uniform(0, 1, 157)
    ap[:5] = np.nan  # classes without test positives: no AP
    positives = rng.integers(1, 40, 157)
    fig = per_class_ap_figure(ap, positives, names)

    order = [c for c in np.argsort(-np.nan_to_num(ap, nan=-1)) if np.isfinite(ap[c])]
    best, worst = fig.axes
    assert _labels(best) == [names[c] for c in order[:PER_CLASS_AP_SHOWN]]  # best first, top to bottom
    assert _labels(worst) == [names[c] for c in order[-PER_CLASS_AP_SHOWN:]]
    assert (
        best.get_title() == f"best {PER_CLASS_AP_SHOWN} of 152"
        and "5 classes without" in fig._suptitle.get_text()
    )
    # Readable: labels at 8 pt, horizontal, at least 14 px of height per class at the saved 100 dpi.
    fig.set_dpi(100)
    for ax in (best, worst):
        assert all(label.get_fontsize() >= 8 and label.get_rotation() == 0 for label in ax.get_yticklabels())
        assert ax.get_window_extent().height / PER_CLASS_AP_SHOWN >= 14
    texts = [t.get_text() for t in best.texts]
    assert texts[0] == f"{ap[order[0]]:.3f} ({positives[order[0]]})"  # each bar carries its AP and positives
    save_figure(fig, str(tmp_path / "ap.png"))
    assert (tmp_path / "ap.png").read_bytes()[:8] == PNG


def test_per_class_ap_shows_every_class_of_a_small_dataset():
    ap = np.array([0.2, 0.9, 0.5])
    fig = per_class_ap_figure(ap, np.array([3, 4, 5]), ["a", "b", "c"])
    (ax,) = fig.axes
    assert _labels(ax) == ["b", "c", "a"]


def test_confusion_matrix_has_values_and_colour_bars_for_counts_and_normalised():
    matrix = np.array([[3, 1, 0], [0, 2, 2], [1, 0, 5]])
    fig = confusion_figure(matrix, ["run", "jump", "swim"])
    counts, normalised, *colour_bars = fig.axes
    assert len(colour_bars) == 2 and {c.get_ylabel() for c in colour_bars} == {"videos", "share of row"}
    assert sorted(t.get_text() for t in counts.texts) == sorted(str(v) for v in matrix.ravel() if v)
    shares = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in normalised.texts
    }
    assert shares[(1, 2)] == "0.50" and shares[(2, 2)] == "0.83"  # row-normalised: recall on the diagonal
    assert [label.get_text() for label in counts.get_xticklabels()] == ["run", "jump", "swim"]
    assert "top-1 0.7143 over 14 videos" in fig._suptitle.get_text()  # 10 of 14 on the diagonal


def test_confusion_matrix_of_many_classes_drops_cell_values_not_colour_bars():
    n = CONFUSION_CELL_VALUES + 1
    fig = confusion_figure(np.eye(n, dtype=int) * 2, [f"class {i}" for i in range(n)])
    counts, normalised, *colour_bars = fig.axes
    assert not counts.texts and not normalised.texts and len(colour_bars) == 2


@pytest.mark.parametrize("num_frames", [3, 8])
def test_heatmap_figure_labels_frames_classes_and_has_a_colour_bar(num_frames):
    frames = np.zeros((num_frames, 32, 32, 3), dtype=np.uint8)
    heat = np.linspace(0, 1, num_frames * 32 * 32, dtype=np.float32).reshape(num_frames, 32, 32)
    labels = [f"frame {10 * i}\n{i / 2:.1f} s" for i in range(num_frames)]
    title = "v1: true run\npredicted jump 0.61"
    fig = heatmap_figure(frames, heat, title, labels)
    images, colour_bar = fig.axes[: 2 * num_frames], fig.axes[2 * num_frames :]
    assert [ax.get_title() for ax in images[:num_frames]] == labels
    assert len(colour_bar) == 1 and "attention" in colour_bar[0].get_ylabel()
    assert fig._suptitle.get_text() == title
