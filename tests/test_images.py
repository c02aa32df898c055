"""What counts as an image batch (``pipeline/core/images.py``), shared by ``fmnist predict`` and the served model.

The served model's own refusals are in ``test_serving.py``; these are the fast unit checks.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.errors import InputError
from pipeline.core.images import MAX_BATCH, PIXEL_COLUMNS, rows_to_images, to_model_input

rng = np.random.default_rng(0)
IMAGES = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
EXPECTED = (IMAGES / 255.0).astype(np.float32)[..., None]  # (N, 28, 28, 1) float32 in [0, 1]


@pytest.mark.parametrize(
    "images",
    [
        IMAGES,
        IMAGES[..., None],
        IMAGES.astype(np.int64),
        IMAGES / 255.0,
        (IMAGES / 255.0).astype(np.float32)[..., None],
        IMAGES.tolist(),  # JSON-like nested lists of ints
        np.array(list(IMAGES.tolist()), dtype=object),  # what MLflow's server hands over for a Tensor(object) schema
    ],
    ids=["uint8", "uint8 channel-last", "int64", "float64 0-1", "float32 channel-last", "int lists", "object array"],
)
def test_accepted_encodings_give_the_same_scaled_batch(images):
    x = to_model_input(images)
    assert x.dtype == np.float32 and x.shape == (4, 28, 28, 1)
    np.testing.assert_allclose(x, EXPECTED, atol=1e-6)


def test_the_largest_allowed_batch_is_accepted():
    assert to_model_input(np.zeros((MAX_BATCH, 28, 28), np.uint8)).shape == (MAX_BATCH, 28, 28, 1)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([[1, 2], [3]], "not a rectangular numeric array"),
        ([[["a"] * 28] * 28], "got dtype <U1"),
        (np.zeros((1, 28, 28), np.complex64), "got dtype complex64"),
        (np.zeros((1, 28, 28), bool), "got dtype bool"),
        (np.zeros((1, 28, 28, 2), np.uint8), r"got shape \(1, 28, 28, 2\)"),
        (np.zeros((0, 28, 28), np.uint8), r"got shape \(0, 28, 28\)"),
        (np.full((1, 28, 28), 256), "integer pixels must be 0-255, got 256..256"),
        (np.full((1, 28, 28), -0.5), r"float pixels must be in \[0, 1\], got -0.5..-0.5 \(send uint8 for 0-255\)"),
        (np.full((1, 28, 28), np.nan, np.float32), "NaN or infinite"),
        (np.zeros((MAX_BATCH + 1, 28, 28), np.uint8), f"got {MAX_BATCH + 1} images in one request; send at most {MAX_BATCH}"),
    ],
    ids=["ragged", "strings", "complex", "bool", "two channels", "empty", "above 255", "negative float", "NaN", "too many"],
)
def test_refusals_say_what_was_found(images, message):
    with pytest.raises(InputError, match=message):
        to_model_input(images)


# --- flat pixel rows (dataframe_split, text/csv) ---------------------------------------------------


def test_pixel_rows_in_the_csv_editions_layout_become_images_whatever_the_column_order():
    images = np.arange(2 * 784).reshape(2, 28, 28) % 256
    columns = ["label", *PIXEL_COLUMNS]
    values = np.column_stack([[3, 7], images.reshape(2, 784)])
    np.testing.assert_array_equal(rows_to_images(columns, values), images)
    shuffled = list(reversed(columns))  # columns are found by name, not position
    np.testing.assert_array_equal(rows_to_images(shuffled, values[:, ::-1]), images)
    assert PIXEL_COLUMNS[0] == "pixel1" and PIXEL_COLUMNS[-1] == "pixel784"


@pytest.mark.parametrize(
    "columns, message",
    [
        (list(PIXEL_COLUMNS[:-1]), "missing column 'pixel784' (783 columns)"),
        ([*PIXEL_COLUMNS, "colour"], "unknown column 'colour'"),
        ([*PIXEL_COLUMNS, "pixel1"], "duplicate columns"),
        (list(range(784)), "unknown column '0'"),  # no header: names are positions
    ],
)
def test_pixel_rows_with_other_columns_are_refused_saying_what_was_expected(columns, message):
    with pytest.raises(InputError) as err:
        rows_to_images(columns, np.zeros((1, len(columns))))
    assert message in str(err.value) and "expected 784 columns pixel1..pixel784" in str(err.value)
