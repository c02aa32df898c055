"""Drift of a new batch against the current training split; the class shift uses the champion, if any."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.adapters.files import load_split
from pipeline.adapters.mlflow import registry
from pipeline.adapters.paths import Paths
from pipeline.core import drift
from pipeline.core.config import Params
from pipeline.core.images import MAX_BATCH


def _predicted(model, x: np.ndarray) -> np.ndarray:
    """The class index the served model predicts for each uint8 image (N, 28, 28), in allowed batch sizes."""
    out = [model.predict(x[i : i + MAX_BATCH])["class_index"].to_numpy() for i in range(0, len(x), MAX_BATCH)]
    return np.concatenate(out) if out else np.zeros(0, int)


def measure_drift(paths: Paths, params: Params, batch: Path) -> drift.DriftReport:
    """Pixel PSI of ``batch`` against the training split, and the champion's predicted-class shift."""
    x_new, _ = load_split(batch)
    x_ref, _ = load_split(paths.split("train"))
    cfg = params.retrain
    pred_ref = pred_new = None
    champion = registry.alias_version(params.registry.model_name, "champion")
    if champion:
        model = registry.load_version(params.registry.model_name, champion)
        rng = np.random.default_rng(params.base.seed)
        sample = rng.choice(len(x_ref), min(cfg.reference_size, len(x_ref)), replace=False)
        pred_ref, pred_new = _predicted(model, x_ref[sample]), _predicted(model, x_new)
    return drift.measure(
        x_ref,
        x_new,
        psi_threshold=cfg.psi_threshold,
        class_shift_threshold=cfg.class_shift_threshold,
        pred_ref=pred_ref,
        pred_new=pred_new,
    )
