"""``fmnist predict``: classify image files or an ``.npz`` with the champion or a given version, in this process or on a running ``fmnist serve`` (``--server URL``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from pipeline.core.config import load_params
from pipeline.core.errors import InputError
from pipeline.core.images import MAX_BATCH, read_image, read_npz, to_model_input


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


def to_wire(x: np.ndarray) -> np.ndarray:
    """``x`` (float32 in [0, 1]) as uint8 pixels when that loses nothing (a quarter of the bytes to send), else as it is."""
    pixels = np.rint(x * 255).astype(np.uint8)
    return pixels if np.array_equal(pixels.astype(np.float32) / 255.0, x) else x


def from_server(url: str, model: str, x: np.ndarray, batch_size: int) -> dict:
    """The server's answers for ``x``, in the binary form, ``batch_size`` images a request, with a progress bar on a terminal."""
    from tqdm import tqdm

    from pipeline.adapters import open_inference

    with tqdm(total=len(x), unit="image", desc=f"classifying on {url}", disable=None, file=sys.stderr) as bar:
        return open_inference.infer(url, model, to_wire(x), batch_size, progress=bar.update)


def in_process(model: str, version: str | None, x: np.ndarray) -> dict:
    """The answers of ``version`` (the champion if None) loaded from the registry into this process."""
    from pipeline.adapters.mlflow import registry  # after the inputs are checked: bad input fails fast
    from pipeline.adapters.process import load_tensorflow

    load_tensorflow()  # quietly, before the model loads it
    version = version or registry.alias_version(model, "champion")
    if version is None:
        raise InputError(f"no champion for {model} yet; run `dvc repro` or pass --version")
    result = registry.load_version(model, str(version)).predict(x)
    return {
        "class_index": result["class_index"].to_numpy(),
        "class_name": result["class_name"].tolist(),
        "probabilities": np.array(result["probabilities"].tolist(), np.float64),
        "model_version": [str(version)] * len(x),
    }


def cli(args) -> None:
    params = load_params()
    x, names, notes = read_inputs([Path(p) for p in args.paths])
    name = params.registry.model_name
    if not 1 <= args.batch_size <= MAX_BATCH:
        raise InputError(f"--batch-size must be 1 to {MAX_BATCH} images a request, got {args.batch_size}")
    if args.server and args.version:
        raise InputError("--server answers with the version the server serves; pin one there (`fmnist serve --version N`)")
    if args.server:
        result = from_server(args.server, name, x, args.batch_size)
    else:
        result = in_process(name, args.version, x)
    versions = list(dict.fromkeys(result["model_version"]))  # more than one if the champion moved during the run
    rows = [
        {"input": n, "class_index": int(i), "class_name": c, "probability": float(p.max())}
        | ({"probabilities": p.tolist()} if args.json else {})
        | ({"version": v} if len(versions) > 1 else {})
        | ({"note": note} if note else {})
        for n, i, c, p, v, note in zip(
            names, result["class_index"], result["class_name"], result["probabilities"], result["model_version"], notes
        )
    ]
    if args.json:
        json.dump({"model": name, "version": ",".join(versions), "predictions": rows}, sys.stdout, indent=2)
        print()
        return
    if len(versions) > 1:
        print(f"answered by versions {', '.join(versions)} of {name}: the server swapped in a new champion during the run")
    for row in rows:
        note = f"  ({row['note']})" if "note" in row else ""
        print(f"{row['input']}: {row['class_name']} ({row['probability']:.1%}){note}")
