"""What a sweep leaves behind: the comparison table (one row per trial, errors included), the plot of the primary
metric by attention type and pyramid depth, and the parent MLflow run's params, artifacts and best value.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from pipeline import metric_names as names
from pipeline import storage
from pipeline.config import ExperimentConfig, apply_overrides
from pipeline.sweep.space import expand_overrides
from pipeline.tracking.runs import flatten_config
from stpa_model.config import ATTENTION_MODES

SWEEP_TAG = "stpa.sweep"


TRIAL_TAG = "stpa.sweep_trial"


ROLE_TAG = "stpa.sweep_role"


PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a run under this parent


TABLE_FILE = "trials.csv"


PLOT_FILE = "metric_by_attention_and_depth.png"


STATUSES = ("completed", "stopped", "error")  # stopped: ASHA (or a stop criterion) ended it early


def is_finite(value: float | None) -> bool:
    """A usable metric value: reported (not None) and finite (``val/best_*`` is -inf before the first validation)."""
    return value is not None and math.isfinite(value)


def param_text(value: Any) -> Any:
    """A trial's param value as one table cell: pyramid tuples as ``res4+res5``."""
    return "+".join(value) if isinstance(value, (tuple, list)) else value


def _error_text(error: BaseException) -> str:
    """The exception line of a (Ray-wrapped) trial error: its last non-empty line."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:500]


def trial_row(exp: ExperimentConfig, result, storage_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One row of the comparison table, and the trial's sampled config, from a Tune ``Result``."""
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    metrics = dict(result.metrics or {})
    config = dict(result.config or {})
    trial_exp = apply_overrides(exp, expand_overrides(exp, config))
    if result.error is not None:
        status = "error"
    elif metrics.get(names.FINAL) == 1:
        status = "completed"
    else:
        status = "stopped"
    metric = names.best(exp.primary_metric)
    row: dict[str, Any] = {
        "trial_id": os.path.basename(result.path.rstrip("/")),
        "mlflow_run_id": None,
        "status": status,
        "epochs": int(metrics.get(names.EPOCH, 0)),
        "attention": trial_exp.model.attention,
        "pyramid_depth": len(trial_exp.model.pyramid_layers),
        **{key: param_text(value) for key, value in config.items()},  # the sampled param_space entries
        metric: float(metrics[metric]) if metric in metrics else None,  # None: never reported
    }
    val_key = names.val(exp.primary_metric)
    history = result.metrics_dataframe
    if history is not None and val_key in history:
        values = history[val_key].dropna()
        row[val_key] = float(values.iloc[-1]) if len(values) else None
    row.update({key: float(metrics[key]) for key in sorted(metrics) if key.startswith(names.test(""))})
    checkpoint_path = metrics.get(CHECKPOINT_PATH_KEY)
    row["checkpoint_uri"] = storage.checkpoint_uri(storage_path, checkpoint_path) if checkpoint_path else ""
    row["error"] = _error_text(result.error) if result.error is not None else ""
    return row, config


def attach_mlflow_runs(uri: str, parent_run_id: str, rows: list[dict[str, Any]]) -> None:
    """Fill each row's MLflow run id (the nested run tagged with its trial id) and close the runs of trials
    that did not finish: ASHA-stopped ones as KILLED, failed ones as FAILED (``fit`` never got to close them)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
        max_results=10000,
    )
    by_trial = {run.data.tags.get(TRIAL_TAG): run for run in runs}
    for row in rows:
        run = by_trial.get(row["trial_id"])
        if run is None:
            continue
        row["mlflow_run_id"] = run.info.run_id
        if run.info.status == "RUNNING" and row["status"] != "completed":
            client.set_terminated(
                run.info.run_id, status="KILLED" if row["status"] == "stopped" else "FAILED"
            )


def trials_csv(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def plot_metric(rows: list[dict[str, Any]], metric: str) -> bytes:
    """PNG: grouped bars of the best trial's ``metric`` per (attention type, pyramid depth) cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        if row["status"] != "error" and is_finite(row[metric]):
            cells.setdefault((row["attention"], row["pyramid_depth"]), []).append(row[metric])
    attentions = [mode for mode in ATTENTION_MODES if any(a == mode for a, _ in cells)]
    depths = sorted({d for _, d in cells})
    fig, ax = plt.subplots(figsize=(1.5 + 1.8 * max(1, len(attentions)), 3.5))
    width = 0.8 / max(1, len(depths))
    for j, depth in enumerate(depths):
        label = f"depth {depth}"  # on the first bar of this depth only: one legend entry each
        for i, attention in enumerate(attentions):
            values = cells.get((attention, depth))
            if not values:
                continue
            x = i + (j - (len(depths) - 1) / 2) * width
            ax.bar(x, max(values), width, color=f"C{j}", label=label)
            ax.text(x, max(values), f"n={len(values)}", ha="center", va="bottom", fontsize=7)
            label = None
    ax.set_xticks(range(len(attentions)), attentions)
    ax.set_xlim(-0.5, max(1, len(attentions)) - 0.5)
    ax.set_xlabel("attention")
    ax.set_ylabel(f"{metric} (best trial per cell)")
    ax.set_title(f"{metric} by attention type and pyramid depth")
    if depths:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no trial reported a result", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _describe(domain: Any) -> str:
    """A Tune domain as text for an MLflow param: ``choice([...])`` or ``loguniform(a, b)``."""
    from ray.tune.search.sample import Categorical, Float, Integer

    if isinstance(domain, Categorical):
        return f"choice({[param_text(c) for c in domain.categories]})"
    if isinstance(domain, (Float, Integer)):
        return f"{type(domain.get_sampler()).__name__.lower()}({domain.lower}, {domain.upper})"
    return repr(domain)


def log_sweep_params(
    uri: str, run_id: str, exp: ExperimentConfig, space: Mapping[str, Any], settings: dict[str, Any]
) -> None:
    """Once per sweep: its settings, the space, and the base experiment (``base.<section>.<field>``)."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    params = {key: str(value) for key, value in settings.items()}
    params.update({f"space.{key}": _describe(domain) for key, domain in space.items()})
    params.update({f"base.{key}": value for key, value in flatten_config(exp).items()})
    MlflowClient(tracking_uri=uri).log_batch(run_id, params=[Param(k, v[:6000]) for k, v in params.items()])


def log_sweep_outputs(
    uri: str,
    run_id: str,
    table_csv: str,
    plot: bytes,
    best: dict[str, Any] | None,
    best_overrides: dict[str, Any],
    metric: str,
    rows: list[dict[str, Any]],
) -> None:
    """The comparison table, the plot, counts and the best trial on the parent run, which is then closed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    with tempfile.TemporaryDirectory() as directory:
        files = {TABLE_FILE: table_csv.encode(), PLOT_FILE: plot}
        if best is not None:
            files["best_overrides.json"] = json.dumps(best_overrides, indent=1, sort_keys=True).encode()
        for file_name, data in files.items():
            path = os.path.join(directory, file_name)
            with open(path, "wb") as f:
                f.write(data)
            client.log_artifact(run_id, path, artifact_path="sweep")
    counts = {f"num_{status}": sum(row["status"] == status for row in rows) for status in STATUSES}
    for key, value in {"num_trials": len(rows), **counts}.items():
        client.log_metric(run_id, key, value)
    if best is not None:
        client.log_metric(run_id, metric, best[metric])
        client.set_tag(run_id, "stpa.best_trial_id", best["trial_id"])
        if best["mlflow_run_id"]:
            client.set_tag(run_id, "stpa.best_run_id", best["mlflow_run_id"])
    client.set_terminated(run_id, status="FINISHED" if best is not None else "FAILED")
