"""Drift of a new batch against the current training split; the class shift uses the champion, if any.

:func:`reference` is what both the intake's check (:func:`measure_drift`) and ``fmnist monitor``
(:mod:`pipeline.services.monitor`) compare with: the training split's pixel intensities, and the
champion's answers on ``retrain.reference_size`` of its images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.adapters.files import load_split
from pipeline.adapters.mlflow import registry
from pipeline.adapters.paths import Paths
from pipeline.core import drift
from pipeline.core.config import Params
from pipeline.core.images import MAX_BATCH


@dataclass(frozen=True)
class Reference:
    """What new data is compared with: the training split's pixel-intensity shares, and the champion's answers on a
    seeded sample of it (None without a champion)."""

    pixels: np.ndarray
    champion: str | None = None
    model: object = None
    classes: np.ndarray | None = None  # predicted-class shares
    confidence: float | None = None  # mean top probability


def reference(paths: Paths, params: Params) -> Reference:
    """The training reference of :class:`Reference`; loads the champion if there is one."""
    x_ref, _ = load_split(paths.split("train"))
    pixels = drift.histogram(x_ref)
    champion = registry.alias_version(params.registry.model_name, "champion")
    if not champion:
        return Reference(pixels)
    model = registry.load_version(params.registry.model_name, champion)
    rng = np.random.default_rng(params.base.seed)
    sample = rng.choice(len(x_ref), min(params.retrain.reference_size, len(x_ref)), replace=False)
    index, top = _answers(model, x_ref[sample])
    return Reference(pixels, champion, model, drift.class_distribution(index), float(top.mean()))


def _answers(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The class index and the top probability the served model gives each uint8 image (N, 28, 28), in allowed batches."""
    index, top = [np.zeros(0, np.int64)], [np.zeros(0)]
    for i in range(0, len(x), MAX_BATCH):
        out = model.predict(x[i : i + MAX_BATCH])
        index.append(out["class_index"].to_numpy())
        top.append(np.asarray(out["probabilities"].tolist(), np.float64).max(axis=1))
    return np.concatenate(index), np.concatenate(top)


def measure_drift(paths: Paths, params: Params, batch: Path) -> drift.DriftReport:
    """Pixel PSI of ``batch`` against the training split, and the champion's predicted-class shift."""
    x_new, _ = load_split(batch)
    ref, cfg = reference(paths, params), params.retrain
    classes_new = None if ref.model is None else drift.class_distribution(_answers(ref.model, x_new)[0])
    return drift.compare(
        ref.pixels, drift.histogram(x_new), len(x_new), psi_threshold=cfg.psi_threshold,
        class_shift_threshold=cfg.class_shift_threshold, classes_ref=ref.classes, classes_new=classes_new,
    )  # fmt: skip
