"""Small real models in real MLflow runs, for the registry and serving tests (no training: random weights).

``smoke_model`` saves the state dict of an untrained debug STPANet (smoke preset) whose classifier weights are
scaled up, so its probabilities depend clearly on the input (an untrained head is nearly uniform): a test that
compares scores then notices a wrong frame or view. ``logged_model_run`` creates an MLflow run with the run
params ``fit`` logs, the given metrics, and the ``pipeline.tracking.serving`` pyfunc as its ``model``.
"""

from __future__ import annotations

import hashlib
import os

import torch

from pipeline.config import ExperimentConfig
from pipeline.presets import smoke
from pipeline.tracking.runs import experiment_name, flatten_config
from pipeline.tracking.serving import log_pyfunc_model
from stpa_model import STPANet

HEAD_SCALE = 30.0


def smoke_model(
    directory: str, dataset: str, num_classes: int, seed: int = 0
) -> tuple[ExperimentConfig, str]:
    """The smoke preset's config and the path of a saved random state dict (``best_model.pt``)."""
    exp = smoke(dataset, num_classes)
    torch.manual_seed(seed)
    model = STPANet(exp.model)
    with torch.no_grad():
        model.head.fc.weight.mul_(HEAD_SCALE)
    path = os.path.join(directory, f"best_model_{dataset}_{seed}.pt")
    torch.save(model.state_dict(), path)
    return exp, path


def logged_model_run(
    uri: str,
    exp: ExperimentConfig,
    weights: str,
    class_names: list[str],
    metrics: dict[str, float],
    *,
    experiment: str | None = None,
    artifact_location: str | None = None,
) -> tuple[str, str]:
    """A finished MLflow run with ``fit``'s params, ``metrics`` and the pyfunc model; ``(run_id, model_uri)``.

    ``artifact_location`` (for a new experiment): where a SQLite-backed store puts artifacts (default ./mlruns).
    """
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    name = experiment or experiment_name(exp.dataset)
    found = client.get_experiment_by_name(name)
    experiment_id = (
        found.experiment_id if found else client.create_experiment(name, artifact_location=artifact_location)
    )
    run_id = client.create_run(experiment_id).info.run_id
    params = flatten_config(exp)
    params["manifest.train.sha256"] = hashlib.sha256(f"train {run_id}".encode()).hexdigest()
    params["manifest.test.sha256"] = hashlib.sha256(f"test {run_id}".encode()).hexdigest()
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
        params=[Param(k, v) for k, v in params.items()],
    )
    model_uri = log_pyfunc_model(uri, run_id, exp, weights, class_names)
    assert client.get_run(run_id).info.status == "RUNNING"  # logging the model leaves the run's status alone
    client.set_terminated(run_id, "FINISHED")
    return run_id, model_uri
