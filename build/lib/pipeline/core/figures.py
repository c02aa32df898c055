"""The pipeline's figures as matplotlib figures; saving them (atomically) is the caller's job.

Each function returns a new figure; :func:`pipeline.adapters.files.save_figure` writes it and closes it.
"""

from __future__ import annotations

import numpy as np


def pyplot():
    """pyplot on the non-interactive Agg backend (imported on first use: it takes a second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray, class_names: tuple[str, ...], title: str):
    plt = pyplot()
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
    plt = pyplot()
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
    plt = pyplot()
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


def plot_samples(x: np.ndarray, y: np.ndarray, class_names: tuple[str, ...]):
    """A labelled grid of the first 15 training images, like the tutorial's first figure."""
    plt = pyplot()
    fig, axes = plt.subplots(3, 5, figsize=(10, 6.5))
    for ax, image, label in zip(axes.flat, x, y):
        ax.imshow(image, cmap="binary")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(class_names[label])
    fig.suptitle("Fashion-MNIST training images")
    fig.tight_layout()
    return fig
