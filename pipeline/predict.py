"""``fmnist predict``: classify image files or an ``.npz`` with the champion or a given version."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pipeline.images import MAX_FILE_PIXELS, InputError

MAX_FILE_BYTES = 50 * 1024 * 1024


def read_image(path: Path) -> tuple[np.ndarray, str | None]:
    """One image file as (28, 28) uint8 grayscale, and a note if it had to be converted.

    Raises:
        InputError: when the file is not a decodable image or is too large.
    """
    from PIL import Image, UnidentifiedImageError

    if path.stat().st_size > MAX_FILE_BYTES:
        raise InputError(f"{path}: file is {path.stat().st_size:,} bytes; images over {MAX_FILE_BYTES:,} bytes are refused")
    Image.MAX_IMAGE_PIXELS = MAX_FILE_PIXELS
    try:
        with Image.open(path) as img:
            img.load()
            notes = []
            if img.mode != "L":
                notes.append(f"converted {img.mode} to grayscale")
                img = img.convert("L")
            if img.size != (28, 28):
                notes.append(f"resized {img.size[0]}x{img.size[1]} to 28x28")
                img = img.resize((28, 28), Image.Resampling.LANCZOS)
            return np.asarray(img, dtype=np.uint8), "; ".join(notes) or None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
        raise InputError(f"{path}: not a readable PNG/JPEG image ({exc})") from None


def read_inputs(paths: list[Path]) -> tuple[np.ndarray, list[str], list[str | None]]:
    """Images (N, 28, 28) uint8 from image files and ``.npz`` files (key ``x``), with labels and notes."""
    images, names, notes = [], [], []
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file")
        if path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as npz:
                    x = npz["x"] if "x" in npz.files else npz[npz.files[0]]
            except (ValueError, OSError, KeyError, IndexError) as exc:
                raise InputError(f"{path}: not a readable .npz with an image array 'x' ({exc})") from None
            if x.ndim == 4 and x.shape[-1] == 1:
                x = x[..., 0]
            images.extend(x)
            names += [f"{path}[{i}]" for i in range(len(x))]
            notes += [None] * len(x)
        else:
            image, note = read_image(path)
            images.append(image)
            names.append(str(path))
            notes.append(note)
    return np.asarray(images), names, notes


def cli(args) -> None:
    from pipeline import tracking
    from pipeline.config import load_params

    params = load_params()
    x, names, notes = read_inputs([Path(p) for p in args.paths])
    name = params.registry.model_name
    version = args.version or tracking.alias_version(name, "champion")
    if version is None:
        raise InputError(f"no champion for {name} yet; run `dvc repro` or pass --version")
    result = tracking.load_version(name, str(version)).predict(x)
    rows = [
        {"input": n, "class_index": int(r.class_index), "class_name": r.class_name, "probability": max(r.probabilities)}
        | ({"probabilities": list(r.probabilities)} if args.json else {})
        | ({"note": note} if note else {})
        for n, r, note in zip(names, result.itertuples(), notes)
    ]
    if args.json:
        json.dump({"model": name, "version": str(version), "predictions": rows}, sys.stdout, indent=2)
        print()
        return
    for row in rows:
        note = f"  ({row['note']})" if "note" in row else ""
        print(f"{row['input']}: {row['class_name']} ({row['probability']:.1%}){note}")
