"""New labelled data: validate ``data/incoming/``, accept the good files, quarantine the rest.

Layout of ``data/incoming/`` (hidden files, such as ``.gitkeep``, are ignored):

- ``<class>/<image>``: one image file (PNG, JPEG, ... anything Pillow decodes) per item, in a
  folder named after its class. A class name's ``/`` becomes ``_`` in the folder name
  (``T-shirt/top`` -> ``T-shirt_top``; ``Ankle boot`` keeps its space); the class index
  ``0``-``9`` works too. :func:`pipeline.core.images.folder_name` gives the canonical name.
- ``<name>.npz``: arrays ``x`` (N, 28, 28) or (N, 28, 28, 1), integers 0-255, and ``y`` (N,), 0-9.

Each file is accepted or rejected as a whole. It must be decodable, 28x28 and grayscale (an
8-bit RGB/RGBA/palette image is converted to grayscale; other sizes are refused, not resized),
carry a label in range, and hold no image already in the training, validation or test split,
in an accepted batch, or earlier in this intake (SHA-256 of the uint8 pixels).

Writes the accepted images as ``data/accepted/batch-<UTC time>.npz`` (x uint8 (N, 28, 28),
y uint8 (N,)), which ``prepare`` appends to the training split, and deletes their source files.
Moves each rejected file to ``data/quarantine/<UTC time>/<same relative path>`` with a
``<name>.reason.txt`` beside it; nothing is dropped silently.
"""

from __future__ import annotations

import logging
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.adapters.files import load_split, save_split
from pipeline.adapters.paths import Paths
from pipeline.core.config import load_params
from pipeline.core.errors import InputError, PipelineError
from pipeline.core.images import folder_name, image_hashes, read_image

log = logging.getLogger(__name__)


class Rejected(Exception):
    """A file that cannot be accepted; the message is the reason written beside it in quarantine."""


def label_of(folder: str, class_names: tuple[str, ...]) -> int:
    """The class index of a class folder (its folder-safe name or its index); raise Rejected otherwise."""
    names = [folder_name(c) for c in class_names]
    if folder in names:
        return names.index(folder)
    if folder.isdigit() and int(folder) < len(class_names):
        return int(folder)
    raise Rejected(f"unknown class folder {folder!r}: label out of range; expected one of {', '.join(names)} or 0-9")


def known_hashes(paths: Paths) -> dict[str, str]:
    """Hash -> where it already is, over the prepared train/val/test splits and accepted batches.

    Raises:
        PipelineError: when the prepared splits are missing (duplicates could not be found).
    """
    sources = {"the training split": paths.split("train")}
    sources |= {"the validation split": paths.split("val"), "the test split": paths.split("test")}
    if not all(p.exists() for p in sources.values()):
        raise PipelineError(f"{paths.prepared}: no prepared splits to check duplicates against; run `dvc repro prepare` first")
    sources |= {f"accepted {p.name}": p for p in sorted(paths.accepted.glob("*.npz"))}
    known: dict[str, str] = {}
    for where, path in sources.items():
        for h in image_hashes(load_split(path)[0]):
            known.setdefault(h, where)
    return known


def read_npz(path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 from an ``.npz``; raise Rejected otherwise."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise Rejected(f"missing array {missing[0]!r}; expected arrays 'x' and 'y', found {npz.files}")
            x, y = npz["x"], npz["y"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise Rejected(f"not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype.kind not in "iu" or (x.size and (x.min() < 0 or x.max() > 255)):
        raise Rejected(f"x is {x.shape} {x.dtype}; expected (N, 28, 28) integers 0-255")
    if y.shape != (len(x),) or y.dtype.kind not in "iu":
        raise Rejected(f"y is {y.shape} {y.dtype}; expected ({len(x)},) integers, one label per image")
    bad = np.flatnonzero((y < 0) | (y >= n_classes))
    if len(bad):
        raise Rejected(f"label {int(y[bad[0]])} out of range 0-{n_classes - 1} in row {int(bad[0])} ({len(bad)} row(s) in all)")
    return x.astype(np.uint8), y.astype(np.uint8)


def read(path: Path, rel: Path, class_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one incoming file, by its place in the layout; raise Rejected otherwise."""
    if len(rel.parts) == 1:
        if path.suffix.lower() != ".npz":
            raise Rejected("an image outside a class folder has no label; put it in data/incoming/<class>/")
        return read_npz(path, len(class_names))
    if len(rel.parts) > 2:
        raise Rejected("nested folder; expected data/incoming/<class>/<image>")
    label = label_of(rel.parts[0], class_names)
    try:
        image, _ = read_image(path, fit=False)
    except InputError as exc:
        raise Rejected(str(exc)) from None
    return image[None], np.array([label], np.uint8)


@dataclass
class IntakeResult:
    """What one intake did: the batch written, the files accepted, the files quarantined and why."""

    stamp: str
    batch: Path | None = None  # relative to the project root
    accepted_files: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # incoming relative path -> reason

    @property
    def accepted_images(self) -> int:
        return sum(self.per_class.values())

    def summary(self) -> dict:
        return {
            "stamp": self.stamp,
            "batch": str(self.batch) if self.batch else None,
            "accepted_files": self.accepted_files,
            "accepted_images": self.accepted_images,
            "per_class": self.per_class,
            "rejected": self.rejected,
        }


def pending(incoming: Path) -> list[Path]:
    """The files waiting in the intake folder (hidden files ignored), sorted."""
    if not incoming.is_dir():
        return []
    return sorted(
        p for p in incoming.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(incoming).parts)
    )


def quarantine(path: Path, rel: Path, reason: str, dest_root: Path) -> Path:
    """Move a rejected file under ``dest_root`` (same relative path) with ``<name>.reason.txt`` beside it."""
    dest = dest_root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, dest)
    dest.with_name(dest.name + ".reason.txt").write_text(f"{rel}: {reason}\n")
    return dest


def run(paths: Paths, class_names: tuple[str, ...], stamp: str | None = None) -> IntakeResult:
    """Validate every pending file; write the accepted batch, quarantine the rejected files."""
    stamp = stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    result = IntakeResult(stamp)
    files = pending(paths.incoming)
    if not files:
        return result
    known = known_hashes(paths)
    xs, ys, accepted = [], [], []
    for path in files:
        rel = path.relative_to(paths.incoming)
        try:
            x, y = read(path, rel, class_names)
            hashes = image_hashes(x)
            dup = next(((i, h) for i, h in enumerate(hashes) if h in known), None)
            if dup:
                row = f"row {dup[0]} " if len(hashes) > 1 else ""
                raise Rejected(f"{row}duplicates an image already in {known[dup[1]]}")
        except Rejected as exc:
            quarantine(path, rel, str(exc), paths.quarantine / stamp)
            result.rejected[str(rel)] = str(exc)
            log.warning("quarantined %s: %s", rel, exc)
            continue
        known |= {h: f"incoming {rel}" for h in hashes}
        xs.append(x)
        ys.append(y)
        accepted.append(path)
    if accepted:
        x, y = np.concatenate(xs), np.concatenate(ys)
        batch = _batch_path(paths.accepted, stamp)
        save_split(batch, x, y)
        result.batch = batch.relative_to(paths.root)
        for path in accepted:
            path.unlink()
        result.accepted_files = len(accepted)
        result.per_class = {c: int(n) for c, n in zip(class_names, np.bincount(y, minlength=len(class_names))) if n}
    log.info("intake: %d images accepted, %d files quarantined", result.accepted_images, len(result.rejected))
    return result


def _batch_path(accepted: Path, stamp: str) -> Path:
    path, n = accepted / f"batch-{stamp}.npz", 1
    while path.exists():
        n += 1
        path = accepted / f"batch-{stamp}-{n}.npz"
    return path


def cli(args) -> None:
    result = run(Paths(), load_params().base.class_names)
    if result.batch:
        print(f"accepted {result.accepted_images} images from {result.accepted_files} files into {result.batch}")
    for rel, reason in result.rejected.items():
        print(f"quarantined {rel}: {reason}")
    if not result.batch and not result.rejected:
        print("nothing in data/incoming/")
