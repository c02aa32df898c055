"""Stage ``evaluate@<variant>``: final figures of one trained variant on the untouched test set.

Reads ``models/<variant>/{model.keras,history.csv,train.json}`` and ``data/prepared/test.npz``.
Writes ``reports/metrics/<variant>.json``, ``reports/confusion/<variant>.{csv,png}`` and
``reports/figures/<variant>-{curves,mistakes}.png``, and logs them to the variant's MLflow run.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from pipeline import tracking
from pipeline.config import Paths, load_params
from pipeline.io import atomic_path, atomic_write_text, file_sha256, load_split, write_json

log = logging.getLogger(__name__)


def predict_proba(model, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Class probabilities (N, 10) float64 for uint8 images (N, 28, 28)."""
    import keras

    logits = model.predict(x[..., None].astype(np.float32) / 255.0, batch_size=batch_size, verbose=0)
    return keras.ops.convert_to_numpy(keras.ops.softmax(np.asarray(logits, np.float32))).astype(np.float64)


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray, class_names: tuple[str, ...], title: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(10), class_names, rotation=45, ha="right")
    ax.set_yticks(range(10), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, int(n), ha="center", va="center", fontsize=8, color="white" if n > cm.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_curves(history: dict[str, list[float]], title: str):
    """Train vs validation accuracy and loss per epoch: the tutorial's chart, plus loss."""
    plt = _pyplot()
    epochs = range(1, len(history["loss"]) + 1)
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in ((acc, "accuracy"), (loss, "loss")):
        ax.plot(epochs, history[key], marker="o", label=f"train {key}")
        ax.plot(epochs, history[f"val_{key}"], marker="o", label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_mistakes(x: np.ndarray, y: np.ndarray, proba: np.ndarray, class_names: tuple[str, ...], n: int = 20):
    """The ``n`` test images the model got wrong with the highest confidence."""
    plt = _pyplot()
    pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    worst = wrong[np.argsort(-proba[wrong, pred[wrong]])][:n]
    fig, axes = plt.subplots(4, 5, figsize=(11, 10))
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, worst):
        ax.imshow(x[i], cmap="binary")
        ax.set_title(f"true {class_names[y[i]]}\npred {class_names[pred[i]]} {proba[i, pred[i]]:.0%}", fontsize=9)
    fig.suptitle("Most confident mistakes on the test set")
    fig.tight_layout()
    return fig


def read_history(path: Path) -> dict[str, list[float]]:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return {k: [float(r[k]) for r in rows] for k in rows[0] if k != "epoch"}


def save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)


def main(variant: str) -> None:
    import keras

    params = load_params()
    names = params.base.class_names
    paths = Paths()
    model_dir = paths.model_dir(variant)
    info = json.loads((model_dir / "train.json").read_text())
    model = keras.saving.load_model(model_dir / "model.keras", compile=False, safe_mode=True)
    x, y = load_split(paths.prepared / "test.npz")
    proba = predict_proba(model, x)
    metrics = {k: info[k] for k in ("variant", "architecture", "params", "epochs_trained", "best_epoch", "train_seconds")}
    metrics |= {"val_accuracy": info["val_accuracy"], **score(proba, y, names)}
    metrics |= {"mlflow_run_id": info["mlflow_run_id"], "test_sha256": file_sha256(paths.prepared / "test.npz")}
    cm = confusion_matrix(y, proba.argmax(axis=1), labels=range(10))
    figures = {  # MLflow artifact name: (report path, figure)
        "confusion_matrix.png": (
            paths.reports / "confusion" / f"{variant}.png",
            plot_confusion(cm, names, f"{variant}: test confusion matrix"),
        ),
        "curves.png": (
            paths.reports / "figures" / f"{variant}-curves.png",
            plot_curves(read_history(model_dir / "history.csv"), variant),
        ),
        "mistakes.png": (paths.reports / "figures" / f"{variant}-mistakes.png", plot_mistakes(x, y, proba, names)),
    }
    for path, fig in figures.values():
        save_figure(fig, path)
    atomic_write_text(paths.reports / "confusion" / f"{variant}.csv", confusion_csv(cm, names))
    atomic_write_text(paths.reports / "confusion" / f"{variant}-pairs.csv", confusion_long_csv(cm, names))
    tracking.log_evaluation(params, info["mlflow_run_id"], metrics, cm, {k: fig for k, (_, fig) in figures.items()}, model_dir)
    write_json(paths.metrics(variant), metrics)  # last: its presence means the evaluation completed
    log.info(
        "%s: test accuracy %.4f, macro F1 %.4f, ECE %.4f", variant, metrics["test_accuracy"], metrics["macro_f1"], metrics["ece"]
    )


if __name__ == "__main__":
    import sys

    from pipeline.cli import run_stage

    run_stage(lambda: main(sys.argv[1]))
