"""What a training run leaves in MLflow besides metrics: plots, attention heat maps, predictions, the model.

- UCF101 / HMDB51: the confusion matrix as a PNG (counts and row-normalised, colour bars, cell values for small
  class counts) and CSV.
- Charades: per-class AP as a PNG (sorted horizontal bars; the best and worst 20 of 157) and CSV, and the test predictions in the official submission format (one line
  per video: the id, then the class scores separated by spaces) so the official evaluation script can check them.
- Attention heat maps over a few test clips (the paper's qualitative figure): per frame, the attention mass each
  position receives, upsampled to the input size and overlaid on the frame, with the frame's index and time, a
  colour bar, and the video's true and predicted classes.
- The model: the video classifier pyfunc of ``pipeline.tracking.serving`` (video paths in, class probabilities out).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pyarrow as pa
import torch

from pipeline import schema, storage
from pipeline.data.manifest import manifest_class_names
from pipeline.evaluation.metrics import charades_submission_lines
from pipeline.tracking.serving import log_pyfunc_model
from pipeline.video.transforms import frames_to_model_input
from stpa_model import attention_heatmaps

# Up to PER_CLASS_AP_ALL classes the per-class AP plot shows them all; above, the PER_CLASS_AP_SHOWN best and worst.
PER_CLASS_AP_ALL = 40
PER_CLASS_AP_SHOWN = 20
CONFUSION_CELL_VALUES = 25  # up to this many classes the confusion matrix writes each cell's value
CONFUSION_CLASS_NAMES = 60  # up to this many classes its axes carry the class names


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str, dpi: int = 100) -> None:
    """Write a figure as PNG and free it."""
    plt = _pyplot()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def per_class_ap_figure(ap: np.ndarray, num_positives: np.ndarray, class_names: list[str]):
    """Per-class AP as horizontal bars sorted by AP, each labelled with its value and test positives.

    Up to ``PER_CLASS_AP_ALL`` classes all are shown; above (Charades' 157), the ``PER_CLASS_AP_SHOWN`` best and worst,
    so every label stays readable. Classes without test positives have no AP (NaN) and are left out, counted in the
    title, as ``charades_metrics`` leaves them out of mAP.

    Args:
        ap: float (C,) in [0, 1], NaN for classes without positives.
        num_positives: int (C,) test videos of each class.
        class_names: C names in label order.

    Returns:
        The matplotlib figure: one axes per panel (all classes, or the best and the worst).
    """
    plt = _pyplot()
    ap = np.asarray(ap, dtype=float)
    scored = [c for c in np.argsort(-np.nan_to_num(ap, nan=-1.0), kind="stable") if np.isfinite(ap[c])]
    num_unscored = len(ap) - len(scored)
    if len(scored) <= PER_CLASS_AP_ALL:
        panels = [("", scored)]
    else:
        n = PER_CLASS_AP_SHOWN
        panels = [(f"best {n} of {len(scored)}", scored[:n]), (f"worst {n} of {len(scored)}", scored[-n:])]
    rows = max(len(classes) for _, classes in panels) if scored else 1
    # Panels stacked: the MLflow artifact viewer fits an image to its column's width (about 700 px), so width
    # shrinks text and height scrolls.
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(7.5, 0.9 + (0.6 + 0.24 * rows) * len(panels)), squeeze=False, sharex=True
    )
    for ax, (subtitle, classes) in zip(axes[:, 0], panels, strict=True):
        y = np.arange(len(classes))
        values = [ap[c] for c in classes]
        ax.barh(y, values, color="C0")
        ax.set_yticks(y, [class_names[c] for c in classes], fontsize=8)
        ax.invert_yaxis()  # best at the top
        for yi, c in zip(y, classes, strict=True):
            ax.text(ap[c] + 0.01, yi, f"{ap[c]:.3f} ({int(num_positives[c])})", va="center", fontsize=7)
        ax.set_xlim(0, 1.18)
        if subtitle:
            ax.set_title(subtitle, fontsize=9)
    axes[-1, 0].set_xlabel("AP (test positives in brackets)")
    mean = np.nanmean(ap) if scored else float("nan")
    left_out = f"\n({num_unscored} classes without test positives left out)" if num_unscored else ""
    fig.suptitle(f"per-class AP, sorted: mAP {mean:.4f} over {len(scored)} classes{left_out}", fontsize=10)
    fig.tight_layout()
    return fig


def confusion_figure(matrix: np.ndarray, class_names: list[str]):
    """The confusion matrix twice, one above the other: counts, and normalised by row (each true class's recall on the
    diagonal), each with a colour bar; cell values written up to ``CONFUSION_CELL_VALUES`` classes, class names on
    the axes up to ``CONFUSION_CLASS_NAMES``.

    Args:
        matrix: int (C, C), rows the true class, columns the predicted one.
        class_names: C names in label order.

    Returns:
        The matplotlib figure: the counts' axes, the normalised axes, and their two colour bars.
    """
    plt = _pyplot()
    matrix = np.asarray(matrix)
    n = len(class_names)
    row_sums = matrix.sum(axis=1, keepdims=True)
    normalised = matrix / np.maximum(row_sums, 1)
    side = min(11.0, max(5.5, 2.5 + 0.32 * n))  # a few classes with long names still get a readable matrix
    # Stacked, not side by side: the MLflow artifact viewer fits an image to its column's width (about 700 px).
    fig, axes = plt.subplots(2, 1, figsize=(side + 1.5, 2 * side + 1.0))
    accuracy = np.trace(matrix) / max(1, matrix.sum())
    for ax, values, title, fmt, vmax in (
        (axes[0], matrix, "counts", "d", max(1, int(matrix.max()))),
        (axes[1], normalised, "normalised by true class (rows sum to 1)", ".2f", 1.0),
    ):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="videos" if fmt == "d" else "share of row")
        if n <= CONFUSION_CELL_VALUES:
            fontsize = 8 if n <= 12 else 6
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        dark = values[i, j] > 0.6 * vmax
                        color = "white" if dark else "black"
                        text = format(values[i, j], fmt)
                        ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=color)
        if n <= CONFUSION_CLASS_NAMES:
            labelsize = 8 if n <= 25 else 5
            ax.set_xticks(range(n), class_names, rotation=90, fontsize=labelsize)
            ax.set_yticks(range(n), class_names, fontsize=labelsize)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"confusion matrix of the test videos: top-1 {accuracy:.4f} over {int(matrix.sum())} videos")
    fig.tight_layout()
    return fig


def heatmap_figure(
    frames: np.ndarray, heatmaps: np.ndarray, title: str, frame_labels: list[str] | None = None
):
    """Frames with their attention heat maps overlaid (the paper's qualitative figure), with a colour bar.

    Args:
        frames: uint8 (F, H, W, 3) in [0, 255].
        heatmaps: float (F, H, W) in [0, 1] (``stpa_model.attention_heatmaps``: attention received, min-max
            scaled over the clip).
        title: the figure's title (the video, its true and predicted classes).
        frame_labels: one per frame (frame index and time); default ``frame <i>``.

    Returns:
        The matplotlib figure: 2 x F image axes (frames, overlays), then the colour bar's.
    """
    import matplotlib

    plt = _pyplot()
    num_frames = len(frames)
    labels = frame_labels or [f"frame {i}" for i in range(num_frames)]
    fig, axes = plt.subplots(
        2, num_frames, figsize=(1.9 * num_frames + 1.2, 4.6), squeeze=False, layout="constrained"
    )
    for i in range(num_frames):
        axes[0, i].imshow(frames[i])
        axes[1, i].imshow(frames[i])
        axes[1, i].imshow(heatmaps[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        for row in (0, 1):
            axes[row, i].set_xticks([])
            axes[row, i].set_yticks([])
        axes[0, i].set_title(labels[i], fontsize=8)
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("attention", fontsize=8)
    # The colour bar of the colour map itself: the overlay's is blended with the frames (alpha 0.5).
    scale = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap="jet")
    fig.colorbar(
        scale, ax=axes[1, :].tolist(), shrink=0.9, label="attention received\n(scaled over the clip)"
    )
    fig.suptitle(title, fontsize=9)
    return fig


def _class_list(class_names: list[str], classes) -> str:
    return ", ".join(class_names[c] for c in classes) or "none"


def _heatmap_title(
    video_id: str, truth: list[int], scores: np.ndarray | None, class_names, multi_label
) -> str:
    """``<video>: true <classes>`` and, on a second line, ``predicted <class> <score>`` (the top 3 multi-label)."""
    title = f"{video_id}: true {_class_list(class_names, truth)}"
    if scores is None:
        return title + "\nnot scored (decode failure)"
    top = np.argsort(-scores)[: 3 if multi_label else 1]
    predicted = ", ".join(f"{class_names[c]} {scores[c]:.2f}" for c in top)
    return f"{title}\npredicted {predicted}"


def log_evaluation_artifacts(
    run, model: torch.nn.Module, exp, test_table: pa.Table, details: dict, device
) -> None:
    """Plots, predictions and heat maps of the final evaluation into the run (rank 0 only)."""

    class_names = schema.class_names_of(test_table.schema)
    with tempfile.TemporaryDirectory() as out:
        if exp.model.multi_label:
            ap = details["per_class_ap"]
            figure = per_class_ap_figure(ap, details["num_positives"], class_names)
            save_figure(figure, os.path.join(out, "per_class_ap.png"))
            with open(os.path.join(out, "per_class_ap.csv"), "w") as f:
                f.write("class,name,ap,num_positives\n")
                for c, (name, value, npos) in enumerate(
                    zip(class_names, ap, details["num_positives"], strict=True)
                ):
                    f.write(f"{c},{name},{value:.6f},{npos}\n")
            with open(os.path.join(out, "charades_submission.txt"), "w") as f:
                f.write("\n".join(charades_submission_lines(details["video_ids"], details["scores"])) + "\n")
        elif details.get("confusion") is not None:
            figure = confusion_figure(details["confusion"], class_names)
            save_figure(figure, os.path.join(out, "confusion_matrix.png"))
            np.savetxt(
                os.path.join(out, "confusion_matrix.csv"), details["confusion"], fmt="%d", delimiter=","
            )
        for name in os.listdir(out):
            run.client.log_artifact(run.run_id, os.path.join(out, name), artifact_path="evaluation")
        if exp.train.num_heatmap_clips and exp.model.attention != "none":
            _log_heatmaps(run, model, exp, test_table, details, class_names, device, out)


def _log_heatmaps(
    run, model, exp, test_table: pa.Table, details: dict, class_names, device, out: str
) -> None:
    """Attention heat maps of the first test videos' first view (the paper's qualitative figure), labelled with
    each frame's index and time, the true classes and the evaluation's prediction (its view-combined scores)."""
    from pipeline.clips.dataset import decode_views, frame_times_of
    from pipeline.video.decode import index_from_bytes

    scores_of = dict(zip(np.asarray(details["video_ids"]).tolist(), details["scores"], strict=True))
    multi_label = exp.model.multi_label
    model.eval()
    for row in test_table.slice(0, exp.train.num_heatmap_clips).to_pylist():
        video_id, uri = row[schema.VIDEO_ID], row[schema.VIDEO_URI]
        try:
            index = index_from_bytes(uri, row[schema.FRAME_INDEX])
            views, indices = decode_views(uri, index, exp.test_clips, None)  # (V, K, T, S, S, 3), (C, K, T)
        except Exception as error:  # noqa: BLE001 - a video the evaluation could not decode either
            print(f"no attention heat map for {video_id}: {error}", flush=True)
            continue
        clip = torch.from_numpy(np.ascontiguousarray(views[:1])).to(device)  # (1, K, T, S, S, 3)
        with torch.no_grad():
            output = model(frames_to_model_input(clip))
        flat = views[0].reshape(-1, *views.shape[-3:])  # (K*T, S, S, 3)
        maps = attention_heatmaps(output.attention, output.feature_hw, flat.shape[0], flat.shape[1:3])
        frame_ids = indices[0].reshape(-1)  # (K*T,) frame index of each shown frame
        times = frame_times_of(index)
        labels = [f"frame {i}\n{times[i]:.1f} s" for i in frame_ids]
        truth = row[schema.LABELS] if multi_label else [row[schema.LABEL]]
        title = _heatmap_title(video_id, truth, scores_of.get(video_id), class_names, multi_label)
        path = os.path.join(out, f"attention_{storage.file_name(str(video_id))}.png")  # ids may hold "/"
        save_figure(heatmap_figure(flat, maps[0].float().cpu().numpy(), title, labels), path, dpi=90)
        run.client.log_artifact(run.run_id, path, artifact_path="attention")


def log_model(uri: str, run_id: str, exp, weights_path: str, class_names: list[str] | None = None) -> str:
    """Log the best model as the run's ``model``: the ``pipeline.tracking.serving`` pyfunc (registered by workflows).

    Args:
        uri: MLflow tracking URI.
        run_id: The training run.
        exp: The run's ``ExperimentConfig``.
        weights_path: The best model's state dict (``best_model.pt``).
        class_names: Class names in label order; default: those of the run's training manifest (param
            ``manifest.train.uri``, logged when the run started; every split of a dataset lists the same classes).

    Returns:
        The model URI, ``runs:/<run_id>/model``.
    """
    from mlflow.tracking import MlflowClient

    if class_names is None:
        params = MlflowClient(tracking_uri=uri).get_run(run_id).data.params
        if "manifest.train.uri" not in params:
            raise ValueError(f"run {run_id} has no param manifest.train.uri: pass the class names")
        class_names = manifest_class_names(params["manifest.train.uri"])
    return log_pyfunc_model(uri, run_id, exp, weights_path, class_names)
