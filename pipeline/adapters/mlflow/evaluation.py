"""A variant's evaluation in its MLflow run: test metrics, the confusion matrix, figures and the served model."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np

from pipeline.adapters.mlflow.serving import log_model
from pipeline.adapters.mlflow.store import client


def log_evaluation(
    run_id: str, metrics: dict, cm: np.ndarray, figures: dict, model_file: Path, history: Path, class_names: tuple[str, ...]
) -> None:
    """Log test metrics (with ``metrics["tta"]``), per-class metrics, the confusion matrix, figures, the history and the served model to the run."""
    client()
    with mlflow.start_run(run_id=run_id):
        scalars = {k: float(metrics[k]) for k in ("test_accuracy", "test_loss", "macro_f1", "ece")}
        scalars["val_accuracy_served"] = float(metrics["val_accuracy"])  # with the served test-time augmentation
        per_class = {
            f"{kind}.{name.replace('/', '-').replace(' ', '_')}": value
            for kind in ("precision", "recall", "f1")
            for name, value in metrics[f"per_class_{kind}"].items()
        }
        mlflow.log_metrics(scalars | per_class)
        mlflow.log_dict(
            {"labels": list(class_names), "rows_true_columns_predicted": cm.astype(int).tolist()},
            "evaluation/confusion_matrix.json",
        )
        mlflow.log_dict(metrics, "evaluation/metrics.json")
        for name, fig in figures.items():
            mlflow.log_figure(fig, f"evaluation/{name}")
        mlflow.log_artifact(str(history), "training")
        mlflow.set_tag("tta", metrics["tta"])
        log_model(model_file, class_names, metrics["tta"])
