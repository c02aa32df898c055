"""Test figures from class probabilities: accuracy, loss, macro F1, calibration, per-class scores, confusion."""

from __future__ import annotations

import csv
import io

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE: the confidence-vs-accuracy gap averaged over equal-width confidence bins."""
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def score(proba: np.ndarray, y: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """Test metrics from probabilities: accuracy, loss, macro F1, ECE and per-class figures."""
    pred = proba.argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, f1, _ = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return {
        "test_accuracy": float(np.mean(pred == y)),
        "test_loss": float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None)))),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=labels, zero_division=0)),
        "ece": expected_calibration_error(proba, y),
        "per_class_precision": dict(zip(class_names, map(float, precision))),
        "per_class_recall": dict(zip(class_names, map(float, recall))),
        "per_class_f1": dict(zip(class_names, map(float, f1))),
    }


def confusion_csv(cm: np.ndarray, class_names: tuple[str, ...]) -> str:
    """Rows are the true class, columns the predicted class; names as header and first column."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["true/predicted", *class_names])
    for name, row in zip(class_names, cm):
        writer.writerow([name, *map(int, row)])
    return buf.getvalue()


def confusion_long_csv(cm: np.ndarray, class_names: tuple[str, ...]) -> str:
    """The same counts, one (actual, predicted) pair per row, for ``dvc plots``' confusion template."""
    rows = ["actual,predicted"]
    for t, name in enumerate(class_names):
        for p, pred_name in enumerate(class_names):
            rows += [f'"{name}","{pred_name}"'] * int(cm[t, p])
    return "\n".join(rows) + "\n"


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int = 10) -> np.ndarray:
    """Counts (n_classes, n_classes): rows are the true class, columns the predicted class."""
    return confusion_matrix(y, pred, labels=range(n_classes))


def worst_confusions(cm: np.ndarray, class_names: tuple[str, ...], k: int = 5) -> list[dict]:
    """The ``k`` largest off-diagonal counts: true class, predicted class, count and the true class's total."""
    off = cm.astype(int).copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None, kind="stable")[::-1][:k]
    pairs = [np.unravel_index(i, off.shape) for i in order]
    return [
        {"true": class_names[t], "predicted": class_names[p], "count": int(off[t, p]), "of": int(cm[t].sum())}
        for t, p in pairs
        if off[t, p] > 0
    ]
