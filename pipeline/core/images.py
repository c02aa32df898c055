"""What counts as an image: the one image-file reader, the model-input check, pixel hashes, class folders.

``read_image`` serves both the intake (strict: 28x28 only, 8-bit modes only) and ``fmnist predict``
(lenient: any size and mode, converted with a note). ``to_model_input`` is the served model's
and ``fmnist predict``'s check of an image batch.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

from pipeline.core.errors import InputError

MAX_BATCH = 10_000  # per request; larger batches are refused rather than exhausting memory
MAX_FILE_PIXELS = 4096 * 4096  # image files larger than this are refused before decoding
MAX_FILE_BYTES = 50 * 1024 * 1024  # image files larger than this are refused before opening
_CONVERTIBLE = {"L", "LA", "P", "RGB", "RGBA", "1"}  # 8-bit modes; wider ones (I, I;16, F) would be clipped


def read_image(path: Path, *, fit: bool, formats: tuple[str, ...] | None = None) -> tuple[np.ndarray, str | None]:
    """One image file as (28, 28) uint8 grayscale, and a note saying what was converted (or None).

    Args:
        path: the file.
        fit: convert any mode to grayscale and resize any size to 28x28 (``fmnist predict``); when
            False, refuse other sizes and modes wider than 8 bits (the intake never resizes).
        formats: the Pillow formats to accept (default: any Pillow decodes).

    Raises:
        InputError: the file is too large, not decodable, or (``fit=False``) not 28x28 8-bit.
    """
    from PIL import Image, UnidentifiedImageError

    kind = f"readable {'/'.join(formats)}" if formats else "decodable"
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InputError(f"file is {path.stat().st_size:,} bytes; images over {MAX_FILE_BYTES:,} bytes are refused")
    Image.MAX_IMAGE_PIXELS = MAX_FILE_PIXELS  # PIL warns above this and refuses only above twice this
    try:
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: refused just below, in plain words
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=formats)  # reads the header only
        with img:
            if img.width * img.height > MAX_FILE_PIXELS:
                raise InputError(f"image is {img.width}x{img.height} pixels; images over {MAX_FILE_PIXELS:,} pixels are refused")
            img.load()
            return _to_grayscale_28(img, fit)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"refused as too large to decode ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"not a {kind} image ({type(exc).__name__}: {exc})") from None


def _to_grayscale_28(img, fit: bool) -> tuple[np.ndarray, str | None]:
    from PIL import Image

    if not fit and img.size != (28, 28):
        raise InputError(f"image is {img.size[0]}x{img.size[1]}; expected 28x28 (images are not resized)")
    if not fit and img.mode not in _CONVERTIBLE:
        raise InputError(f"pixel mode {img.mode} is not 8-bit grayscale or colour; expected mode L (or RGB)")
    notes = []
    if img.mode != "L":
        notes.append(f"converted {img.mode} to grayscale")
        img = img.convert("L")
    if img.size != (28, 28):
        notes.append(f"resized {img.size[0]}x{img.size[1]} to 28x28")
        img = img.resize((28, 28), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8), "; ".join(notes) or None


def read_npz(path: Path, names: tuple[str, ...], *, first_if_missing: bool = False) -> dict[str, np.ndarray]:
    """The arrays ``names`` of an ``.npz`` file, read without pickles: the one ``.npz`` reader of the pipeline.

    Args:
        first_if_missing: a file with a single unnamed array (``np.savez(f, x)``) gives it as the first name.

    Raises:
        FileNotFoundError: there is no such file.
        InputError: the file is not a readable ``.npz``, or lacks one of ``names`` (the message says which it has).
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            found = list(npz.files)
            missing = [k for k in names if k not in found]
            if missing and first_if_missing and found and len(names) == 1:
                return {names[0]: npz[found[0]]}
            if missing:
                raise InputError(f"missing array {missing[0]!r}; expected arrays {', '.join(map(repr, names))}, found {found}")
            return {k: npz[k] for k in names}
    except (FileNotFoundError, InputError):
        raise
    except Exception as exc:  # a damaged member inflates to garbage: zlib, zip CRC, even npy header syntax errors
        raise InputError(f"not a readable .npz file ({type(exc).__name__}: {exc})") from None


def image_hashes(x: np.ndarray) -> list[str]:
    """SHA-256 of each image's uint8 pixels (N, 28, 28), so a copy is found whatever its file format."""
    x = np.ascontiguousarray(x, np.uint8)
    return [hashlib.sha256(image.tobytes()).hexdigest() for image in x]


def folder_name(class_name: str) -> str:
    """The folder-safe form of a class name: ``T-shirt/top`` -> ``T-shirt_top``."""
    return class_name.replace("/", "_")


_HELP = "expected images of shape (N, 28, 28) or (N, 28, 28, 1), uint8/integer 0-255 or float 0-1"


def to_model_input(images: object) -> np.ndarray:
    """Validate and convert an image batch to (N, 28, 28, 1) float32 in [0, 1].

    Accepts integer values 0-255 (uint8 images, or integers from JSON) and floats in [0, 1];
    rejects other shapes, dtypes, NaN and out-of-range values with a message saying what was found.
    """
    try:
        x = np.asarray(images.tolist() if getattr(getattr(images, "dtype", None), "kind", "") == "O" else images)
    except (ValueError, TypeError) as exc:
        raise InputError(f"input is not a rectangular numeric array ({exc}); {_HELP}") from None
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) == 0:
        raise InputError(f"got shape {x.shape}; {_HELP}")
    if len(x) > MAX_BATCH:
        raise InputError(f"got {len(x)} images in one request; send at most {MAX_BATCH}")
    if x.dtype.kind in "iu":
        if x.min() < 0 or x.max() > 255:
            raise InputError(f"integer pixels must be 0-255, got {x.min()}..{x.max()}; {_HELP}")
        return (x.astype(np.float32) / 255.0)[..., None]
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise InputError(f"got NaN or infinite pixels; {_HELP}")
        if x.min() < 0 or x.max() > 1:
            raise InputError(f"float pixels must be in [0, 1], got {x.min():.3g}..{x.max():.3g} (send uint8 for 0-255); {_HELP}")
        return x.astype(np.float32)[..., None]
    raise InputError(f"got dtype {x.dtype}; {_HELP}")


PIXEL_COLUMNS = tuple(f"pixel{i}" for i in range(1, 785))  # the CSV edition of Fashion-MNIST: label, pixel1..pixel784


def rows_to_images(columns: list, values: np.ndarray) -> np.ndarray:
    """Flat rows of 784 pixels in the column layout of the CSV edition (``pixel1`` … ``pixel784``, row-major; a
    ``label`` column, if any, is ignored) as images (N, 28, 28), for :func:`to_model_input` to check."""
    names = [str(c) for c in columns]
    known = set(PIXEL_COLUMNS) | {"label"}
    unknown = [c for c in names if c not in known]
    missing = [c for c in PIXEL_COLUMNS if c not in set(names)]
    if unknown or missing or len(names) != len(set(names)):
        found = (
            f"unknown column {unknown[0]!r}" if unknown else f"missing column {missing[0]!r}" if missing else "duplicate columns"
        )
        raise InputError(
            f"{found} ({len(names)} columns); expected 784 columns pixel1..pixel784 (row-major 28x28) and optionally label"
        )
    values = np.asarray(values)
    order = [names.index(c) for c in PIXEL_COLUMNS]
    return values[:, order].reshape(len(values), 28, 28)
