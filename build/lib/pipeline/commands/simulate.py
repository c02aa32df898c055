"""``fmnist simulate-new-data N``: hand N held-back training images to the intake, as image files.

Reads ``data/prepared/reserve.npz`` (the ``prepare.reserve`` images held out of training) and
``data/simulated.json`` (the SHA-256 of every reserve image handed out before). Writes N
unused reserve images as ``data/incoming/<class folder>/reserve-<index>.png`` and adds them to
``data/simulated.json``, so that the retraining loop can be shown on real, labelled data while
validation and test stay fixed.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.adapters.files import atomic_write_text, load_split
from pipeline.adapters.paths import Paths
from pipeline.core.config import load_params
from pipeline.core.errors import PipelineError
from pipeline.core.images import folder_name, image_hashes

log = logging.getLogger(__name__)


def choose(hashes: list[str], used: set[str], n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` reserve images not handed out before, in a fixed shuffled order.

    Raises:
        PipelineError: when fewer than ``n`` unused images are left.
    """
    order = np.random.default_rng(seed).permutation(len(hashes))
    free = [int(i) for i in order if hashes[i] not in used]
    if n > len(free):
        raise PipelineError(
            f"asked for {n} new images but only {len(free)} unused reserve images are left "
            f"(of {len(hashes)}); raise prepare.reserve and run `dvc repro prepare`"
        )
    return np.array(free[:n], dtype=int)


def write_images(x: np.ndarray, y: np.ndarray, indices: np.ndarray, class_names: tuple[str, ...], incoming: Path) -> None:
    """Save ``x[i]`` as ``incoming/<class folder of y[i]>/reserve-<i>.png`` for each index."""
    from PIL import Image

    for i in indices:
        folder = incoming / folder_name(class_names[y[i]])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i], mode="L").save(folder / f"reserve-{i:05d}.png")


def simulate(paths: Paths, n: int, class_names: tuple[str, ...], seed: int) -> dict[str, int]:
    """Move ``n`` unused reserve images into the intake; returns the count per class."""
    if n <= 0:
        raise PipelineError(f"N: expected a positive number of images, got {n}")
    x, y = load_split(paths.split("reserve"))
    if not len(y):
        raise PipelineError("the reserve is empty: set prepare.reserve (e.g. 10000) in params.yaml and run `dvc repro prepare`")
    record = paths.simulated
    used = set(json.loads(record.read_text())["used"]) if record.exists() else set()
    hashes = image_hashes(x)
    picked = choose(hashes, used, n, seed)
    write_images(x, y, picked, class_names, paths.incoming)
    atomic_write_text(record, json.dumps({"used": sorted(used | {hashes[i] for i in picked})}) + "\n")
    counts = Counter(class_names[y[i]] for i in picked)
    log.info("wrote %d reserve images to %s", n, paths.incoming)
    return dict(sorted(counts.items(), key=lambda kv: class_names.index(kv[0])))


def cli(args) -> None:
    params = load_params()
    counts = simulate(Paths(), args.n, params.base.class_names, params.base.seed)
    print(f"{sum(counts.values())} new images in data/incoming/: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
