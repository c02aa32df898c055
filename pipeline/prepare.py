"""Stage ``prepare``: parse and validate the IDX files, split train/validation, save arrays.

Reads ``data/raw/*.gz``, ``base.seed``, ``prepare.*`` and any accepted new data in
``data/accepted/``. Writes ``data/prepared/{train,val,test}.npz`` (uint8 images ``x`` of
shape (N, 28, 28), uint8 labels ``y``), ``data/prepared/reserve.npz`` (the held-back pool,
possibly empty), ``reports/data.json`` and ``reports/figures/samples.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pipeline.config import ConfigError, Params, Paths, load_params
from pipeline.data import load_raw
from pipeline.io import atomic_write_text, load_split, save_split

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test", "reserve")


def stratified_take(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``n`` items drawn so that every class gets an equal share (±1).

    Raises:
        ConfigError: when a class has too few items for its share.
    """
    classes = np.unique(y)
    shares = np.full(len(classes), n // len(classes))
    shares[: n % len(classes)] += 1
    picked = []
    for cls, share in zip(classes, shares):
        members = np.flatnonzero(y == cls)
        if share > len(members):
            raise ConfigError(f"cannot take {n} stratified images: class {cls} has only {len(members)}")
        picked.append(rng.choice(members, size=share, replace=False))
    return np.sort(np.concatenate(picked))


def split(raw: dict[str, np.ndarray], val_size: int, reserve: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Split the official training set into train / val / reserve; the test set is untouched."""
    x, y = raw["train_x"], raw["train_y"]
    if val_size + reserve >= len(y):
        raise ConfigError(f"prepare.val_size + prepare.reserve: expected less than {len(y)}, got {val_size + reserve}")
    rng = np.random.default_rng(seed)
    val_idx = stratified_take(y, val_size, rng)
    rest = np.setdiff1d(np.arange(len(y)), val_idx)
    reserve_idx = rest[stratified_take(y[rest], reserve, rng)] if reserve else np.array([], dtype=int)
    train_idx = np.setdiff1d(rest, reserve_idx)
    return {
        "train": (x[train_idx], y[train_idx]),
        "val": (x[val_idx], y[val_idx]),
        "test": (raw["test_x"], raw["test_y"]),
        "reserve": (x[reserve_idx], y[reserve_idx]),
    }


def add_accepted(splits: dict, accepted_dir: Path) -> dict:
    """Append new labelled data accepted by the intake (``data/accepted/*.npz``) to train."""
    files = sorted(accepted_dir.glob("*.npz")) if accepted_dir.is_dir() else []
    if not files:
        return splits
    xs, ys = [splits["train"][0]], [splits["train"][1]]
    for f in files:
        x, y = load_split(f)
        xs.append(x)
        ys.append(y)
    log.info("adding %d accepted images from %d file(s)", sum(len(y) for y in ys[1:]), len(files))
    return {**splits, "train": (np.concatenate(xs), np.concatenate(ys))}


def summarize(splits: dict, class_names: tuple[str, ...]) -> dict:
    """Counts per class per split and the training pixels' mean and std (0-1 scale)."""
    x_train = splits["train"][0]
    return {
        "counts": {
            name: {cls: int(np.sum(y == i)) for i, cls in enumerate(class_names)} | {"total": int(len(y))}
            for name, (_, y) in splits.items()
        },
        "pixel_mean": round(float(x_train.mean() / 255.0), 6),
        "pixel_std": round(float(x_train.std() / 255.0), 6),
    }


def plot_samples(x: np.ndarray, y: np.ndarray, class_names: tuple[str, ...], path: Path) -> None:
    """A labelled grid of the first 15 training images, like the tutorial's first figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 5, figsize=(10, 6.5))
    for ax, image, label in zip(axes.flat, x, y):
        ax.imshow(image, cmap="binary")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(class_names[label])
    fig.suptitle("Fashion-MNIST training images")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    params: Params = load_params()
    paths = Paths()
    splits = split(load_raw(paths.raw), params.prepare.val_size, params.prepare.reserve, params.base.seed)
    splits = add_accepted(splits, paths.root / "data" / "accepted")
    for name in SPLITS:
        save_split(paths.prepared / f"{name}.npz", *splits[name])
    summary = summarize(splits, params.base.class_names)
    atomic_write_text(paths.reports / "data.json", json.dumps(summary, indent=2) + "\n")
    plot_samples(*splits["train"], params.base.class_names, paths.reports / "figures" / "samples.png")
    log.info("train %d, val %d, test %d, reserve %d", *(len(splits[s][1]) for s in SPLITS))


if __name__ == "__main__":
    from pipeline.cli import run_stage

    run_stage(main)
