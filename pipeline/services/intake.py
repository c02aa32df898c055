"""The intake of new labelled data: validate ``data/incoming/``, accept the good files, quarantine the rest.

What a file must be is :mod:`pipeline.core.incoming`; here it is accepted or quarantined. A file
must also hold no image already in the training, validation or test split, in an accepted batch,
or earlier in this intake (SHA-256 of the uint8 pixels). ``fmnist intake`` and the retraining flow
both run :func:`run`.

Writes the accepted images as ``data/accepted/batch-<UTC time>.npz`` (x uint8 (N, 28, 28),
y uint8 (N,)), which ``prepare`` appends to the training split, and deletes their source files.
Moves each rejected file to ``data/quarantine/<UTC time>/<same relative path>`` with a
``<name>.reason.txt`` beside it; nothing is dropped silently.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.adapters.files import load_split, save_split
from pipeline.adapters.paths import Paths
from pipeline.core.errors import PipelineError
from pipeline.core.images import image_hashes
from pipeline.core.incoming import Rejected, read

log = logging.getLogger(__name__)


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
