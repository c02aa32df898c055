"""A prediction record: what the prediction log keeps of one served image, whichever store holds it.

Per image: the UTC time (milliseconds, as a string that sorts as the time does), the version that
answered, the predicted class and its top probability, the pixel mean, standard deviation and
maximum of the image as the model saw it (in [0, 1]), and its pixel counts in the 16 intensity
bins of :mod:`pipeline.core.drift`, which ``fmnist monitor`` sums.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from pipeline.core.drift import histograms
from pipeline.core.images import rows_to_images, to_model_input

FIELDS = ("time", "version", "class_index", "class_name", "top_probability", "pixel_mean", "pixel_std", "pixel_max",
          "pixel_histogram")  # fmt: skip


def records(when: datetime, version: str, model_input: object, predictions) -> tuple[list[dict], np.ndarray]:
    """The records of one answered request, and its images as uint8 (N, 28, 28).

    ``model_input`` is the request's input as the model got it (array or DataFrame of pixel rows);
    ``predictions`` its answer (a DataFrame, or a mapping of ``class_index``, ``class_name``, ``probabilities``).
    """
    x = images(model_input)
    flat = x.reshape(len(x), -1)
    mean, std, peak = flat.mean(axis=1), flat.std(axis=1), flat.max(axis=1)
    pixels = np.round(x * 255).astype(np.uint8)
    bins = histograms(pixels).tolist()
    proba = np.asarray(predictions["probabilities"].tolist(), dtype=np.float64)
    at = stamp(when)
    return [
        dict(
            zip(
                FIELDS,
                (
                    at,
                    version,
                    int(i),
                    name,
                    round(float(p.max()), 6),
                    round(float(m), 6),
                    round(float(s), 6),
                    round(float(mx), 6),
                    h,
                ),
            )
        )  # fmt: skip
        for i, name, p, m, s, mx, h in zip(predictions["class_index"], predictions["class_name"], proba, mean, std, peak, bins)
    ], pixels


def images(model_input: object) -> np.ndarray:
    """The images of a request as the model saw them: (N, 28, 28) float32 in [0, 1]."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        model_input = rows_to_images(list(model_input.columns), model_input.to_numpy())
    return to_model_input(model_input)[..., 0]


def stamp(when: datetime) -> str:
    """A time as the records hold it (UTC, milliseconds), so that the two compare as strings."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds")
