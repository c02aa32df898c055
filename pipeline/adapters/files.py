"""Files: atomic writes (text, JSON, figures, splits), validated ``.npz`` splits, histories and hashes.

Every output is written to a temporary name beside it and renamed into place, so a failure never
leaves a half-written file that looks complete.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline.core.errors import DataError, InputError
from pipeline.core.images import read_npz


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_split(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Save images (N, 28, 28) uint8 and labels (N,) uint8 as a compressed ``.npz``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, x=np.asarray(x, np.uint8), y=np.asarray(y, np.uint8))


def load_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load and validate a split saved by :func:`save_split`.

    Raises:
        DataError: when the file is missing, corrupt (zip CRC) or holds the wrong shapes.
    """
    fix = "run `dvc repro prepare --force` to rebuild it (and `dvc cache` checks if it came from the cache)"
    try:
        x, y = read_npz(path, ("x", "y")).values()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; run `dvc repro prepare`") from None
    except InputError as exc:
        raise DataError(f"{path}: corrupt or unreadable prepared data ({exc}); {fix}") from None
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),) or y.dtype != np.uint8:
        raise DataError(
            f"{path}: expected x (N, 28, 28) uint8 and y (N,) uint8, found x {x.shape} {x.dtype}, y {y.shape} {y.dtype}; {fix}"
        )
    if len(y) and y.max() > 9:
        raise DataError(f"{path}: expected labels 0-9, found {int(y.max())}; {fix}")
    return x, y


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG (80 dpi), atomically, and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
    finally:
        plt.close(fig)


def read_history(path: Path) -> dict[str, list[float]]:
    """A per-epoch ``history.csv`` (header ``epoch,<metric>,...``) as metric -> values."""
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return {k: [float(r[k]) for r in rows] for k in rows[0] if k != "epoch"}


def write_history(path: Path, history: dict[str, list[float]]) -> None:
    """Write metric -> per-epoch values as ``history.csv``, one row per epoch from 1, atomically."""
    rows = ["epoch," + ",".join(history)] + [
        ",".join([str(i + 1)] + [f"{history[k][i]:.6f}" for k in history]) for i in range(len(history["loss"]))
    ]
    atomic_write_text(path, "\n".join(rows) + "\n")


def read_json(path: Path) -> dict | None:
    """A JSON file's contents, or None when it does not exist."""
    return json.loads(path.read_text()) if path.exists() else None


def read_text(path: Path) -> str | None:
    """A text file's contents, or None when it does not exist."""
    return path.read_text() if path.exists() else None


def read_metrics(files: dict[str, Path]) -> list[dict]:
    """Each variant's ``reports/metrics/<variant>.json``; a DataError names any that has not been evaluated."""
    missing = [v for v, path in files.items() if not path.exists()]
    if missing:
        raise DataError(f"no metrics for {', '.join(missing)}; run `dvc repro` to evaluate every variant first")
    return [json.loads(path.read_text()) for path in files.values()]
