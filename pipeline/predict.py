"""``fmnist predict``: classify image files or an ``.npz`` with the champion or a given version."""

from __future__ import annotations

import json
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np

from pipeline.images import MAX_FILE_PIXELS, InputError, to_model_input

MAX_FILE_BYTES = 50 * 1024 * 1024


def read_image(path: Path) -> tuple[np.ndarray, str | None]:
    """One image file as (28, 28) uint8 grayscale, and a note if it had to be converted.

    Raises:
        InputError: when the file is not a decodable image or is too large.
    """
    from PIL import Image, UnidentifiedImageError

    if path.stat().st_size > MAX_FILE_BYTES:
        raise InputError(f"{path}: file is {path.stat().st_size:,} bytes; images over {MAX_FILE_BYTES:,} bytes are refused")
    Image.MAX_IMAGE_PIXELS = MAX_FILE_PIXELS  # PIL warns above this and refuses only above twice this
    try:
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: refused just below, in plain words
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=("PNG", "JPEG"))  # reads the header only
        with img:
            if img.width * img.height > MAX_FILE_PIXELS:
                raise InputError(
                    f"{path}: image is {img.width}x{img.height} pixels; images over {MAX_FILE_PIXELS:,} pixels are refused"
                )
            img.load()
            notes = []
            if img.mode != "L":
                notes.append(f"converted {img.mode} to grayscale")
                img = img.convert("L")
            if img.size != (28, 28):
                notes.append(f"resized {img.size[0]}x{img.size[1]} to 28x28")
                img = img.resize((28, 28), Image.Resampling.LANCZOS)
            return np.asarray(img, dtype=np.uint8), "; ".join(notes) or None
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: refused as too large to decode ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputError(f"{path}: not a readable PNG/JPEG image ({exc})") from None


def read_inputs(paths: list[Path]) -> tuple[np.ndarray, list[str], list[str | None]]:
    """Images from image files and ``.npz`` files (key ``x``), with labels and notes.

    Returns:
        Images (N, 28, 28) float32 in [0, 1], each file checked and scaled on its own (so a uint8
        PNG and a float ``.npz`` can be mixed), one label and one note (or None) per image.
    """
    images, names, notes = [], [], []
    for path in paths:
        if not path.exists():
            raise InputError(f"{path}: no such file")
        if path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as npz:
                    x = npz["x"] if "x" in npz.files else npz[npz.files[0]]
            except (ValueError, OSError, EOFError, KeyError, IndexError, zipfile.BadZipFile) as exc:
                raise InputError(f"{path}: not a readable .npz with an image array 'x' ({exc})") from None
            try:
                x = to_model_input(x)[..., 0]
            except InputError as exc:
                raise InputError(f"{path}: {exc}") from None
            images.extend(x)
            names += [f"{path}[{i}]" for i in range(len(x))]
            notes += [None] * len(x)
        else:
            image, note = read_image(path)
            images.append(image.astype(np.float32) / 255.0)
            names.append(str(path))
            notes.append(note)
    return np.asarray(images, dtype=np.float32), names, notes


def cli(args) -> None:
    from pipeline.config import load_params

    params = load_params()
    x, names, notes = read_inputs([Path(p) for p in args.paths])
    from pipeline import tracking  # after the inputs are checked: bad input fails fast, before TensorFlow loads

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
