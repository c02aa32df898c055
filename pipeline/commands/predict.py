"""``fmnist predict``: classify image files or an ``.npz`` with the champion or a given version."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pipeline.core.config import load_params
from pipeline.core.errors import InputError
from pipeline.core.images import read_image, read_npz, to_model_input


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
                x = to_model_input(read_npz(path, ("x",), first_if_missing=True)["x"])[..., 0]
            except InputError as exc:
                raise InputError(f"{path}: {exc}") from None
            images.extend(x)
            names += [f"{path}[{i}]" for i in range(len(x))]
            notes += [None] * len(x)
        else:
            try:
                image, note = read_image(path, fit=True, formats=("PNG", "JPEG"))
            except InputError as exc:
                raise InputError(f"{path}: {exc}") from None
            images.append(image.astype(np.float32) / 255.0)
            names.append(str(path))
            notes.append(note)
    return np.asarray(images, dtype=np.float32), names, notes


def cli(args) -> None:
    params = load_params()
    x, names, notes = read_inputs([Path(p) for p in args.paths])
    from pipeline.adapters.mlflow import registry  # after the inputs are checked: bad input fails fast
    from pipeline.adapters.process import load_tensorflow

    load_tensorflow()  # quietly, before the model loads it

    name = params.registry.model_name
    version = args.version or registry.alias_version(name, "champion")
    if version is None:
        raise InputError(f"no champion for {name} yet; run `dvc repro` or pass --version")
    result = registry.load_version(name, str(version)).predict(x)
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
