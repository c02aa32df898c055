"""What an incoming labelled file must be: its place in the layout of ``data/incoming/``, its label, its arrays.

The pure checks of the intake (:mod:`pipeline.services.intake` accepts and quarantines):

- ``<class>/<image>``: one image file (PNG, JPEG, ... anything Pillow decodes) per item, in a
  folder named after its class. A class name's ``/`` becomes ``_`` in the folder name
  (``T-shirt/top`` -> ``T-shirt_top``; ``Ankle boot`` keeps its space); the class index
  ``0``-``9`` works too. :func:`pipeline.core.images.folder_name` gives the canonical name.
- ``<name>.npz``: arrays ``x`` (N, 28, 28) or (N, 28, 28, 1), integers 0-255, and ``y`` (N,), 0-9.

Each file is accepted or rejected as a whole. It must be decodable, 28x28 and grayscale (an
8-bit RGB/RGBA/palette image is converted to grayscale; other sizes are refused, not resized)
and carry a label in range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.errors import InputError
from pipeline.core.images import folder_name, read_image, read_npz


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


def labelled_npz(path: Path, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 from an ``.npz``; raise Rejected otherwise."""
    try:
        x, y = read_npz(path, ("x", "y")).values()
    except InputError as exc:
        raise Rejected(str(exc)) from None
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
        return labelled_npz(path, len(class_names))
    if len(rel.parts) > 2:
        raise Rejected("nested folder; expected data/incoming/<class>/<image>")
    label = label_of(rel.parts[0], class_names)
    try:
        image, _ = read_image(path, fit=False)
    except InputError as exc:
        raise Rejected(str(exc)) from None
    return image[None], np.array([label], np.uint8)
