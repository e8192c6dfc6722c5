"""The registered model: an MLflow pyfunc that turns video files into class probabilities.

``STPAVideoClassifier`` wraps a trained STPANet with everything needed to score a video the way evaluation does:

1. ``index_video``: the frame index (timestamps and keyframes, by demuxing) and the read method that gives exact
   frames (decord returns wrong frames on some files, DESIGN.md "Video"): what ``stpa prepare`` stores in the
   manifest;
2. ``decode_views`` with the run's ``test_clips``: the deterministic multi-view test sampling (temporal clips x
   spatial crops), the function behind every row of the evaluation's clip dataset;
3. ``predict_batches``: the evaluation's scoring (ImageNet normalisation, softmax for single-label datasets,
   sigmoid for multi-label ones), in fp32 on CPU (the training precision's autocast on CUDA);
4. ``aggregate_views`` with ``train.view_reduce``: the views' scores combined per video (mean or max), as
   ``compute_metrics`` combines them.

So a video scored through the pyfunc gets the scores the final evaluation gave it (``tests/pipeline/test_serving``
checks this to 1e-5). The artifacts: the best weights (a state dict, loaded with ``weights_only=True``), the
``ExperimentConfig`` as JSON, the class names as JSON; the ``pipeline`` and ``stpa_model`` source travels as
``code_paths``, so a plain Python process with the pinned requirements loads it without this checkout::

    model = mlflow.pyfunc.load_model("models:/stpa-charades@champion")
    model.predict(["s3://bucket/videos/ABCDE.mp4"])  # DataFrame: "video", then one column per class name

Input: a DataFrame with a ``video`` column of paths or fsspec URIs, a list of them, or one string. Output: one
row per video, the ``video`` column, one float64 probability column per class in class-index order, and an
``error`` column: empty for a video that was scored; for a video that cannot be read or decoded, the reason, and
NaN probabilities, while the other videos are scored (``params={"on_error": "nan"}``, the default). With
``params={"on_error": "raise"}`` such a video raises ``VideoPredictionError`` naming the file instead: an
``MlflowException`` that ``mlflow models serve`` answers with HTTP 400 and its message, and keeps serving.
Decoded clips skip the decoding: ``loaded.unwrap_python_model().predict_clips``.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from pipeline import schema, storage
from pipeline.clips.dataset import decode_views
from pipeline.config import (
    ExperimentConfig,
    autocast_dtype,
    experiment_from_dict,
    experiment_to_json,
)
from pipeline.evaluation.evaluate import predict_batches
from pipeline.evaluation.metrics import aggregate_views
from pipeline.tracking.runs import process_uris
from pipeline.video.decode import VideoDecodeError, index_video, read_video_bytes
from stpa_model import STPANet

VIDEO_COLUMN = "video"  # the input column and the first output column
ERROR_COLUMN = "error"  # the last output column: "" for a scored video, else why it could not be scored
ON_ERROR_CHOICES = ("nan", "raise")  # the first is the default
# Artifact keys of the pyfunc (context.artifacts[...]) and their files in the model's ``artifacts/`` folder.
WEIGHTS_ARTIFACT = "weights"
CONFIG_ARTIFACT = "experiment_config"
CLASS_NAMES_ARTIFACT = "class_names"
ARTIFACTS_FOLDER = "artifacts"
WEIGHTS_FILE = "best_model.pt"
CONFIG_FILE = "experiment_config.json"
CLASS_NAMES_FILE = "class_names.json"
# The model's code file (MLflow "models from code"): the class comes from the model's own copy of ``pipeline``.
MODEL_CODE = (
    "# STPA video classifier: the MLflow models-from-code entry point written by pipeline/tracking/serving.py.\n"
    "import mlflow\n\n"
    "from pipeline.tracking.serving import STPAVideoClassifier\n\n"
    "mlflow.models.set_model(STPAVideoClassifier())\n"
)
# What the model imports when it runs: pinned to this environment's versions in the model's requirements.
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pyarrow", "fsspec", "av", "decord", "pillow")


class VideoPredictionError(MlflowException):
    """A video given to the model that could not be read or decoded; names the file and the reason.

    An ``MlflowException`` with ``INVALID_PARAMETER_VALUE``: MLflow's scoring server answers it with HTTP 400 and
    this message (any other exception would be a 400 with a generic message).
    """

    def __init__(self, video: str, reason: str) -> None:
        super().__init__(f"cannot score video {video}: {reason}", error_code=INVALID_PARAMETER_VALUE)
        self.video = video
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.video, self.reason))


# --- the model ---------------------------------------------------------------------------------------------------
def _videos_of(model_input: Any) -> list[str]:
    """The video URIs of a pyfunc input: a DataFrame with a ``video`` column, a list of strings, or a string."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        # MLflow hands lists and strings over as a one-column DataFrame with column 0.
        if VIDEO_COLUMN in model_input.columns:
            videos = model_input[VIDEO_COLUMN].tolist()
        elif len(model_input.columns) == 1:
            videos = model_input.iloc[:, 0].tolist()
        else:
            raise ValueError(
                f"input DataFrame needs a {VIDEO_COLUMN!r} column of video paths or URIs; "
                f"got columns {list(model_input.columns)}"
            )
    elif isinstance(model_input, (list, tuple, np.ndarray, pd.Series)):
        videos = list(model_input)
    else:
        raise TypeError(
            f"model input must be a DataFrame with a {VIDEO_COLUMN!r} column, a list of video paths/URIs or "
            f"one string; got {type(model_input).__name__}"
        )
    bad = [v for v in videos if not isinstance(v, str) or not v]
    if bad:
        raise ValueError(f"video paths/URIs must be non-empty strings; got {bad[:3]!r}")
    return videos


class STPAVideoClassifier(mlflow.pyfunc.PythonModel):
    """Video paths/URIs (or decoded test views) in, per-class probabilities out, as evaluation computes them.

    Loaded by MLflow (``load_context``) or built directly with ``from_files``.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        artifacts = context.artifacts
        self._setup(
            artifacts[WEIGHTS_ARTIFACT],
            experiment_from_dict(json.loads(storage.read_text(artifacts[CONFIG_ARTIFACT]))),
            json.loads(storage.read_text(artifacts[CLASS_NAMES_ARTIFACT])),
        )

    @classmethod
    def from_files(
        cls, weights_path: str, exp: ExperimentConfig, class_names: list[str]
    ) -> STPAVideoClassifier:
        """The classifier without MLflow: a state dict file, the run's config and its class names."""
        model = cls()
        model._setup(weights_path, exp, class_names)
        return model

    def _setup(self, weights_path: str, exp: ExperimentConfig, class_names: list[str]) -> None:
        if len(class_names) != exp.model.num_classes:
            raise ValueError(
                f"{len(class_names)} class names for a model with {exp.model.num_classes} classes"
            )
        self.exp = exp
        self.class_names = list(class_names)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # Evaluation's autocast on CUDA; fp32 on CPU, where bf16 autocast is slow and fp16 unsupported.
        self.autocast = autocast_dtype(exp.train.precision) if self.device.type == "cuda" else None
        self.model = STPANet(exp.model)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state, strict=True)
        self.model.to(self.device).eval()

    # --- decoded clips -------------------------------------------------------------------------------------------
    def predict_clips(self, frames: np.ndarray) -> np.ndarray:
        """Scores of videos given as their decoded test views.

        Args:
            frames: uint8 (B, V, K, T, S, S, 3) in [0, 255], RGB: the V views of each of B videos, as
                ``decode_views`` returns them with the run's ``test_clips`` (K segments x T frames, S = crop size).

        Returns:
            float64 (B, C): probabilities (softmax, or per-class sigmoid for multi-label models) averaged or
            max-pooled over views per ``train.view_reduce``.
        """
        frames = np.asarray(frames)
        clips = self.exp.test_clips
        size = self.exp.model.input_size
        expected = (clips.num_segments, clips.frames_per_segment, size, size, 3)
        if frames.dtype != np.uint8 or frames.ndim != 7 or frames.shape[2:] != expected:
            raise ValueError(
                f"frames must be uint8 (B, V, {', '.join(map(str, expected))}) [(B, V, K, T, S, S, 3)]; "
                f"got {frames.dtype} {frames.shape}"
            )
        b, v = frames.shape[:2]
        if b == 0:
            return np.zeros((0, len(self.class_names)))
        ids = np.repeat(np.arange(b), v)  # (B*V,) video of each view row
        batch = {
            schema.FRAMES: frames.reshape(b * v, *expected),  # (B*V, K, T, S, S, 3)
            schema.VIDEO_ID: ids.astype(object),
            schema.VIEW: np.tile(np.arange(v, dtype=np.int32), b),
        }
        return self._score([batch])

    def _score(self, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Evaluation's scoring and view combination over clip batches (one video id per video, in order)."""

        predictions = predict_batches(
            self.model, batches, self.exp.model.multi_label, self.device, self.autocast
        )
        _, scores = aggregate_views(predictions.video_ids, predictions.scores, self.exp.train.view_reduce)
        return scores  # (num_videos, C) float64

    # --- video files ---------------------------------------------------------------------------------------------
    def decode(self, video: str) -> np.ndarray:
        """The test views of one video, decoded as evaluation decodes them.

        Returns:
            uint8 (V, K, T, S, S, 3) in [0, 255].

        Raises:
            VideoPredictionError: the file cannot be read or decoded.
        """

        uri = storage.normalize_uri(video)
        try:
            data = read_video_bytes(uri)
            views, _ = decode_views(uri, index_video(uri, data=data), self.exp.test_clips, None, data=data)
        except VideoDecodeError as error:
            raise VideoPredictionError(video, error.reason) from error
        except Exception as error:  # noqa: BLE001 - whatever one video does (store, decoder, transform) stays with it
            raise VideoPredictionError(video, f"{type(error).__name__}: {error}") from error
        return views

    def predict_videos(self, videos: list[str], on_error: str = ON_ERROR_CHOICES[0]) -> pd.DataFrame:
        """Class probabilities of video files: the pyfunc's ``predict`` without MLflow's input handling.

        Returns:
            One row per video: ``video``, one float64 column per class, ``error`` ("" when scored; else the
            reason, with NaN probabilities).

        Raises:
            VideoPredictionError: with ``on_error="raise"``, the first video that cannot be read or decoded.
        """
        if on_error not in ON_ERROR_CHOICES:  # an MlflowException: the REST answer (400) names the problem
            raise MlflowException.invalid_parameter_value(
                f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}"
            )
        num_classes = len(self.class_names)
        scores = np.full((len(videos), num_classes), np.nan)
        errors = [""] * len(videos)
        for i, video in enumerate(videos):
            try:
                views = self.decode(video)  # (V, K, T, S, S, 3)
            except VideoPredictionError as error:
                if on_error == "raise":
                    raise
                errors[i] = error.reason
                continue
            scores[i] = self.predict_clips(views[None])[0]
        table = pd.DataFrame(scores, columns=self.class_names)
        table.insert(0, VIDEO_COLUMN, videos)
        table[ERROR_COLUMN] = errors
        return table

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        """Class probabilities of videos (see the module docstring for input, output and ``on_error``)."""
        on_error = (params or {}).get("on_error", ON_ERROR_CHOICES[0])
        return self.predict_videos(_videos_of(model_input), on_error=on_error)


def signature(class_names: list[str]) -> mlflow.models.ModelSignature:
    """Input: one string column (the videos). Output: ``video``, one double column per class, ``error``. Param
    ``on_error`` (``"nan"`` or ``"raise"``).

    The input column is unnamed on purpose: MLflow then accepts a list of strings, one string, and a DataFrame
    with a ``video`` column alike (a schema column named ``video`` refuses the first two before ``predict`` runs).
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    outputs = [ColSpec("string", VIDEO_COLUMN)] + [ColSpec("double", name) for name in class_names]
    outputs.append(ColSpec("string", ERROR_COLUMN))
    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("on_error", "string", ON_ERROR_CHOICES[0])]),
    )


def pip_requirements() -> list[str]:
    """This environment's versions of what the model imports, pinned."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in REQUIREMENTS]


def log_pyfunc_model(
    tracking_uri: str,
    run_id: str,
    exp: ExperimentConfig,
    weights_path: str,
    class_names: list[str],
    *,
    name: str = "model",
) -> str:
    """Log the video classifier as the run's MLflow pyfunc model.

    Args:
        tracking_uri: MLflow tracking URI.
        run_id: The run to log into; its status is left as it was (a running run keeps running).
        exp: The run's configuration (its ``test_clips``, ``model`` and ``train.view_reduce`` decide predictions).
        weights_path: The best model's state dict (``best_model.pt``), a local path or fsspec URI.
        class_names: Class names in label order (the manifest's ``schema.class_names_of``).
        name: The model's name in the run.

    Returns:
        The model URI ``runs:/<run_id>/<name>``.
    """
    import pipeline
    import stpa_model

    if len(class_names) != exp.model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {exp.model.num_classes} classes")
    if len(set(class_names)) != len(class_names):
        raise ValueError("class names must be distinct: they name the output columns")
    with tempfile.TemporaryDirectory() as directory:
        weights = os.path.join(directory, WEIGHTS_FILE)
        with open(weights, "wb") as f:
            f.write(storage.read_bytes(weights_path))
        # Fail here, not at serving time, if the weights do not fit the config.
        STPANet(exp.model).load_state_dict(
            torch.load(weights, map_location="cpu", weights_only=True), strict=True
        )
        config = os.path.join(directory, CONFIG_FILE)
        with open(config, "w") as f:
            f.write(experiment_to_json(exp))
        names = os.path.join(directory, CLASS_NAMES_FILE)
        with open(names, "w") as f:
            json.dump(list(class_names), f)
        # Models from code: MLflow stores this file and runs it at load time, instead of unpickling an object.
        model_code = os.path.join(directory, "stpa_video_classifier.py")
        with open(model_code, "w") as f:
            f.write(MODEL_CODE)
        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        status = client.get_run(run_id).info.status
        with process_uris(tracking_uri), mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            # A path is no useful input example: it would not exist where the model is loaded.
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            mlflow.pyfunc.log_model(
                name=name,
                python_model=model_code,
                artifacts={WEIGHTS_ARTIFACT: weights, CONFIG_ARTIFACT: config, CLASS_NAMES_ARTIFACT: names},
                code_paths=[os.path.dirname(pipeline.__file__), os.path.dirname(stpa_model.__file__)],
                signature=signature(list(class_names)),
                pip_requirements=pip_requirements(),
            )
        if status != client.get_run(run_id).info.status:  # leaving ``start_run`` marked the run FINISHED
            client.update_run(run_id, status=status)
    return f"runs:/{run_id}/{name}"


def download_model_files(
    tracking_uri: str, model_uri: str, directory: str
) -> tuple[str, ExperimentConfig, list[str]]:
    """The weights, config and class names of a logged or registered stpa pyfunc, without loading it.

    For processes that score with the evaluation's own actors (batch prediction) rather than the pyfunc: nothing of
    the model's ``code_paths`` is put on ``sys.path``.

    Args:
        tracking_uri: MLflow tracking (and registry) URI.
        model_uri: ``models:/<name>/<version>``, ``models:/<name>@<alias>`` or ``runs:/<run id>/<name>``.
        directory: Local folder the files are downloaded into.

    Returns:
        ``(weights path, ExperimentConfig, class names)``; the weights are a state dict (``best_model.pt``).
    """
    with process_uris(tracking_uri):
        folder = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{model_uri.rstrip('/')}/{ARTIFACTS_FOLDER}", dst_path=directory
        )
    exp = experiment_from_dict(json.loads(storage.read_text(os.path.join(folder, CONFIG_FILE))))
    class_names = json.loads(storage.read_text(os.path.join(folder, CLASS_NAMES_FILE)))
    return os.path.join(folder, WEIGHTS_FILE), exp, class_names
