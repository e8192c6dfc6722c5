"""What a training run leaves in MLflow besides metrics: plots, attention heat maps, predictions, the model.

- UCF101 / HMDB51: the confusion matrix as a PNG and CSV.
- Charades: per-class AP as a PNG and CSV, and the test predictions in the official submission format (one line
  per video: the id, then the class scores separated by spaces) so the official evaluation script can check them.
- Attention heat maps over a few test clips (the paper's qualitative figure): per frame, the attention mass each
  position receives, upsampled to the input size and overlaid on the frame.
- The model: the video classifier pyfunc of ``pipeline.tracking.serving`` (video paths in, class probabilities out).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pyarrow as pa
import torch

from pipeline import schema, storage
from pipeline.clips.dataset import build_clip_dataset
from pipeline.data.manifest import manifest_class_names
from pipeline.evaluation.metrics import charades_submission_lines
from pipeline.tracking.serving import log_pyfunc_model
from pipeline.video.transforms import frames_to_model_input
from stpa_model import attention_heatmaps


def _plot_confusion(matrix: np.ndarray, class_names: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    size = min(20, 3 + 0.25 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    row_sums = matrix.sum(axis=1, keepdims=True).clip(min=1)
    ax.imshow(matrix / row_sums, cmap="Blues", vmin=0, vmax=1)
    if n <= 60:
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=6)
        ax.set_yticks(range(n), class_names, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (rows normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_per_class_ap(ap: np.ndarray, class_names: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.12 * len(ap)), 4))
    ax.bar(range(len(ap)), np.nan_to_num(ap, nan=0.0))
    ax.set_xlabel("class")
    ax.set_ylabel("AP")
    ax.set_title(f"per-class AP (mAP {np.nanmean(ap):.3f}; classes without positives shown as 0)")
    if len(class_names) <= 40:
        ax.set_xticks(range(len(ap)), class_names, rotation=90, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def heatmap_figure(frames: np.ndarray, heatmaps: np.ndarray, path: str, title: str) -> None:
    """Save frames with their attention heat maps overlaid.

    Args:
        frames: uint8 (F, H, W, 3) in [0, 255].
        heatmaps: float (F, H, W) in [0, 1].
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_frames = len(frames)
    fig, axes = plt.subplots(2, num_frames, figsize=(2 * num_frames, 4.2), squeeze=False)
    for i in range(num_frames):
        axes[0, i].imshow(frames[i])
        axes[1, i].imshow(frames[i])
        axes[1, i].imshow(heatmaps[i], cmap="jet", alpha=0.5, vmin=0, vmax=1)
        for row in (0, 1):
            axes[row, i].axis("off")
        axes[0, i].set_title(f"frame {i}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def log_evaluation_artifacts(
    run, model: torch.nn.Module, exp, test_table: pa.Table, details: dict, device
) -> None:
    """Plots, predictions and heat maps of the final evaluation into the run (rank 0 only)."""

    class_names = schema.class_names_of(test_table.schema)
    with tempfile.TemporaryDirectory() as out:
        if exp.model.multi_label:
            ap = details["per_class_ap"]
            _plot_per_class_ap(ap, class_names, os.path.join(out, "per_class_ap.png"))
            with open(os.path.join(out, "per_class_ap.csv"), "w") as f:
                f.write("class,name,ap,num_positives\n")
                for c, (name, value, npos) in enumerate(
                    zip(class_names, ap, details["num_positives"], strict=True)
                ):
                    f.write(f"{c},{name},{value:.6f},{npos}\n")
            with open(os.path.join(out, "charades_submission.txt"), "w") as f:
                f.write("\n".join(charades_submission_lines(details["video_ids"], details["scores"])) + "\n")
        elif details.get("confusion") is not None:
            _plot_confusion(details["confusion"], class_names, os.path.join(out, "confusion_matrix.png"))
            np.savetxt(
                os.path.join(out, "confusion_matrix.csv"), details["confusion"], fmt="%d", delimiter=","
            )
        for name in os.listdir(out):
            run.client.log_artifact(run.run_id, os.path.join(out, name), artifact_path="evaluation")

        # Attention heat maps of the first few test videos (first view), as the paper's qualitative figure.
        if exp.train.num_heatmap_clips and exp.model.attention != "none":
            subset = test_table.slice(0, exp.train.num_heatmap_clips)
            dataset = build_clip_dataset(subset, exp.test_clips)
            model.eval()
            seen: set[str] = set()
            for batch in dataset.iter_batches(
                batch_size=len(subset) * exp.test_clips.num_views, batch_format="numpy"
            ):
                for frames, video_id in zip(batch[schema.FRAMES], batch[schema.VIDEO_ID], strict=True):
                    if video_id in seen:
                        continue
                    seen.add(video_id)
                    clip = torch.from_numpy(np.ascontiguousarray(frames))[None].to(
                        device
                    )  # (1, K, T, H, W, 3)
                    with torch.no_grad():
                        output = model(frames_to_model_input(clip))
                    flat = frames.reshape(-1, *frames.shape[-3:])  # (K*T, H, W, 3)
                    maps = attention_heatmaps(
                        output.attention, output.feature_hw, flat.shape[0], flat.shape[1:3]
                    )
                    path = os.path.join(
                        out, f"attention_{storage.file_name(str(video_id))}.png"
                    )  # ids may hold "/"
                    heatmap_figure(flat, maps[0].float().cpu().numpy(), path, f"{video_id}: attention")
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
