"""A variant's evaluation in its MLflow run: test metrics, the confusion matrix, figures and the served model."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from pipeline.adapters.mlflow.serving import log_model
from pipeline.adapters.mlflow.store import client


class ArtifactStoreDown(RuntimeError):
    """The tracking server could not store the run's files: a passing outage, so the stage fails and is retried."""


@contextmanager
def _artifact_store() -> Iterator[None]:
    """Name the artifact store when an upload through the tracking server fails (MLflow names only the server)."""
    try:
        yield
    except MlflowException as exc:
        if "mlflow-artifacts" not in str(exc):
            raise
        endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        store = f"the S3 endpoint {endpoint}" if endpoint else "its artifact store (the server's --artifacts-destination)"
        raise ArtifactStoreDown(
            f"the MLflow server {mlflow.get_tracking_uri()} could not store the evaluation's files in {store}: is it up? "
            f"Nothing of the evaluation was logged; the stage is retried. ({str(exc)[:300]})"
        ) from None


def log_evaluation(
    run_id: str, metrics: dict, cm: np.ndarray, figures: dict, model_file: Path, history: Path, class_names: tuple[str, ...]
) -> None:
    """Log test metrics (with ``metrics["tta"]``), per-class metrics, the confusion matrix, figures, the history and the served model to the run.

    The files go first and the metrics last, so a retry after a failed upload logs each metric once.
    """
    client()
    with mlflow.start_run(run_id=run_id), _artifact_store():
        mlflow.log_dict(
            {"labels": list(class_names), "rows_true_columns_predicted": cm.astype(int).tolist()},
            "evaluation/confusion_matrix.json",
        )
        mlflow.log_dict(metrics, "evaluation/metrics.json")
        for name, fig in figures.items():
            mlflow.log_figure(fig, f"evaluation/{name}")
        mlflow.log_artifact(str(history), "training")
        log_model(model_file, class_names, metrics["tta"])
        scalars = {k: float(metrics[k]) for k in ("test_accuracy", "test_loss", "macro_f1", "ece")}
        scalars["val_accuracy_served"] = float(metrics["val_accuracy"])  # with the served test-time augmentation
        per_class = {
            f"{kind}.{name.replace('/', '-').replace(' ', '_')}": value
            for kind in ("precision", "recall", "f1")
            for name, value in metrics[f"per_class_{kind}"].items()
        }
        mlflow.log_metrics(scalars | per_class)
        mlflow.set_tag("tta", metrics["tta"])
