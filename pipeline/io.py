"""Small file helpers shared by the stages: atomic writes and validated ``.npz`` splits."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline.data import DataError


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
        with np.load(path, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except FileNotFoundError:
        raise DataError(f"{path}: missing; run `dvc repro prepare`") from None
    except Exception as exc:  # a damaged member inflates to garbage: zlib, zip CRC, even npy header syntax errors
        raise DataError(f"{path}: corrupt or unreadable prepared data ({type(exc).__name__}: {exc}); {fix}") from None
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
