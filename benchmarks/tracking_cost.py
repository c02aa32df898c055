"""Measure 6: what MLflow tracking costs, per epoch (``EpochLogger``) and per variant (``log_model``)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import Mode, TempStore, result, row
from pipeline.core.config import Params

GOAL_EPOCH_MS = 50.0


def _epoch_logging(store: TempStore, reps: int) -> list[float]:
    """Milliseconds per ``EpochLogger.on_epoch_end``: one synchronous batch of the four epoch metrics."""
    from pipeline.adapters.mlflow.epochs import EpochLogger

    logger = EpochLogger(store.new_run("bench-epoch-logging"))
    logs = {"loss": 0.3, "accuracy": 0.9, "val_loss": 0.3, "val_accuracy": 0.9}
    times = []
    for epoch in range(reps):
        start = time.perf_counter()
        logger.on_epoch_end(epoch, logs)
        times.append((time.perf_counter() - start) * 1000)
    return times


def _model_logging(store: TempStore, params: Params, reps: int) -> list[float]:
    """Seconds per ``log_model`` of a saved baseline model, inside an active run (as ``evaluate`` calls it)."""
    import mlflow

    from pipeline.adapters.mlflow.serving import log_model
    from pipeline.core.models import build

    times = []
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-model-") as tmp:
        path = Path(tmp) / "model.keras"
        build(params.variant("baseline").architecture).save(path)
        for _ in range(reps):
            with mlflow.start_run(run_id=store.new_run("bench-model-logging")):
                start = time.perf_counter()
                log_model(path, params.base.class_names, params.evaluate.tta_of("baseline"))
                times.append(time.perf_counter() - start)
    return times


def tracking_overhead(store: TempStore, params: Params, mode: Mode) -> dict:
    """Measure 6: per-epoch logging (goal <= 50 ms) and model logging per variant (reported, no goal)."""
    per_epoch = _epoch_logging(store, mode.log_reps)
    per_model = _model_logging(store, params, max(1, mode.log_reps // 7))
    figure = statistics.median(per_epoch)
    rows = [
        row("EpochLogger.on_epoch_end (4 metrics, SQLite store)", per_epoch, unit="ms"),
        row("tracking.log_model per variant (Keras flavour + serving pyfunc)", per_model),
    ]
    title = "Tracking overhead: MLflow logging per epoch, and model logging per variant"
    return result(
        "tracking_overhead", title, f"<= {GOAL_EPOCH_MS:.0f} ms per epoch", figure, figure <= GOAL_EPOCH_MS, rows, unit="ms"
    )
