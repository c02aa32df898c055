"""Splits of the official data: a stratified validation set, a held-back reserve, accepted batches, subsets."""

from __future__ import annotations

import numpy as np

from pipeline.core.errors import ConfigError

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


def append(splits: dict, batches: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Append new labelled batches (accepted by the intake) to the training split; the others stay."""
    if not batches:
        return splits
    x = np.concatenate([splits["train"][0], *(b[0] for b in batches)])
    y = np.concatenate([splits["train"][1], *(b[1] for b in batches)])
    return {**splits, "train": (x, y)}


def subset(x: np.ndarray, y: np.ndarray, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random ``limit`` of the images, in their original order (all of them when ``limit`` is 0).

    Random rather than the first ``limit``, so accepted new data (appended at the end) is sampled too.
    """
    if not limit:
        return x, y
    keep = np.sort(np.random.default_rng(seed).permutation(len(y))[:limit])
    return x[keep], y[keep]


def describe(splits: dict, class_names: tuple[str, ...]) -> dict:
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
