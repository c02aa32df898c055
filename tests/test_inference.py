"""The forward pass that evaluate scores and the registry serves, with test-time augmentation."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.core.inference import forward, predict_proba
from pipeline.core.models import build


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build("tutorial_cnn")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (7, 28, 28, 1)).astype(np.float32) / 255.0  # (7, 28, 28, 1) float32 in [0, 1]


def _softmax(model, x: np.ndarray) -> np.ndarray:
    return keras.ops.convert_to_numpy(keras.ops.softmax(model.predict(x, verbose=0)))


def test_no_tta_is_the_models_softmax(model, images):
    np.testing.assert_allclose(forward(model, "none")(images), _softmax(model, images), atol=1e-6)


def test_flip_averages_the_image_and_its_mirror(model, images):
    mirrored = images[:, :, ::-1]
    expected = (_softmax(model, images) + _softmax(model, mirrored)) / 2
    np.testing.assert_allclose(forward(model, "flip")(images), expected, atol=1e-6)


def test_flip_shift_averages_six_views(model, images):
    views = [images, images[:, :, ::-1]]
    views += [np.roll(v, s, axis=2) for v in views for s in (-1, 1)]
    expected = np.mean([_softmax(model, v) for v in views], axis=0)
    np.testing.assert_allclose(forward(model, "flip+shift")(images), expected, atol=1e-6)


@pytest.mark.parametrize("tta", ["flip", "flip+shift"])
def test_with_flips_a_mirrored_image_gets_the_same_answer(model, images, tta):
    run = forward(model, tta)
    np.testing.assert_allclose(run(images[:, :, ::-1]), run(images), atol=1e-6)
    assert not np.allclose(forward(model, "none")(images[:, :, ::-1]), forward(model, "none")(images), atol=1e-4)


def test_answers_do_not_depend_on_the_batch_or_the_chunking(model, images):
    x = (images[..., 0] * 255).astype(np.uint8)
    together = predict_proba(model, x, "flip+shift", batch_size=3)
    alone = np.concatenate([predict_proba(model, x[i : i + 1], "flip+shift") for i in range(len(x))])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    assert together.dtype == np.float64 and together.shape == (7, 10)


def test_an_unknown_mode_names_the_choices(model):
    with pytest.raises(ValueError, match="tta: expected one of none, flip, flip\\+shift, got 'rotate'"):
        forward(model, "rotate")
