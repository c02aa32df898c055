"""Input checks shared by ``fmnist predict`` and the served model: what counts as an image batch."""

from __future__ import annotations

import numpy as np

from pipeline.config import PipelineError

MAX_BATCH = 10_000  # per request; larger batches are refused rather than exhausting memory
MAX_FILE_PIXELS = 4096 * 4096  # image files larger than this are refused before decoding


class InputError(PipelineError, ValueError):
    """Model input that is not a batch of 28x28 grayscale images in a supported encoding."""


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
