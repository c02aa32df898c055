"""Training tricks as params: random erasing, alternating flips, the whitening stem, EMA with batch-norm recomputation."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT

from pipeline.adapters.files import load_split
from pipeline.core import training
from pipeline.core.config import Augment, load_params
from pipeline.core.inference import predict_proba
from pipeline.core.models import WHITEN, build

BASELINE = load_params(ROOT / "params.yaml").variant("baseline")


@pytest.fixture(autouse=True)
def float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="module")
def real_small(prepared_cache):
    x, y = load_split(prepared_cache / "data" / "prepared" / "train.npz")
    vx, vy = load_split(prepared_cache / "data" / "prepared" / "val.npz")
    return (x[:2000], y[:2000]), (vx[:1000], vy[:1000])


def test_random_erasing_blanks_one_rectangle_per_chosen_image():
    images = tf.ones((400, 28, 28, 1))
    erased = training.erase_images(images, 0.5, tf.constant([1, 2], tf.int64)).numpy()[..., 0]
    blanked = erased == 0
    hit = blanked.reshape(400, -1).any(axis=1)
    assert 150 < hit.sum() < 250  # about half the images
    for mask in blanked[hit]:
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        assert mask.sum() == len(rows) * len(cols)  # one filled rectangle, nothing else
        assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
        assert 0.02 * 784 * 0.5 <= mask.sum() <= 0.4 * 784 * 1.5  # 2-40% of the image, give or take the rounding
    np.testing.assert_array_equal(erased[~hit], 1.0)  # the others untouched
    again = training.erase_images(images, 0.5, tf.constant([1, 2], tf.int64)).numpy()[..., 0]
    np.testing.assert_array_equal(erased, again)  # seeded
    assert np.all(training.erase_images(images, 0.0, tf.constant([1, 2], tf.int64)).numpy() == 1.0)


def test_alternating_flips_mirror_each_image_in_every_other_epoch():
    """An asymmetric image per index: each is mirrored in exactly one of two consecutive epochs, half of them each epoch."""
    n = 64
    x = np.zeros((n, 28, 28), np.uint8)
    x[:, 5, 3] = 255  # lit on the left: mirrored, it is lit at column 24
    x[:, 20, :] = np.arange(n)[:, None]  # the image's index, to find it after the shuffle
    y = np.zeros(n, np.uint8)
    cfg = dataclasses.replace(BASELINE, batch_size=16, augment=Augment(flip=True, alternate_flips=True))
    epoch = tf.Variable(0, dtype=tf.int64)
    ds = training.make_dataset(x, y, cfg, training=True, seed=3, epoch=epoch)

    def mirrored() -> dict[int, bool]:
        images = np.concatenate([b[0].numpy()[..., 0] for b in ds])
        return {int(round(im[20, 10] * 255)): bool(im[5, 24] == 1.0) for im in images}

    flips = []
    for e in range(3):
        epoch.assign(e)
        flips.append(mirrored())
    assert sorted(flips[0]) == list(range(n))
    for a, b in zip(flips, flips[1:]):
        assert all(a[i] != b[i] for i in range(n))  # each image flips the other way from one epoch to the next
    assert 16 < sum(flips[0].values()) < 48
    with pytest.raises(ValueError, match="epoch variable"):
        training.make_dataset(x, y, cfg, training=True, seed=3)


def test_the_whitening_stem_decorrelates_patches_and_stays_frozen(real_small):
    (x, y), val = real_small
    model = build("wide_cnn", whiten=True)
    training.set_whitening(model, x, seed=0)
    kernel = model.get_layer(WHITEN).get_weights()[0]
    assert kernel.shape == (3, 3, 1, 18) and not model.get_layer(WHITEN).trainable
    np.testing.assert_allclose(kernel[..., 9:], -kernel[..., :9])
    stem = keras.Model(model.input, model.get_layer(WHITEN).output)
    out = stem(x[:500, :, :, None].astype(np.float32) / 255.0).numpy()[..., :9].reshape(-1, 9)
    cov = np.cov(out, rowvar=False)
    off = cov - np.diag(np.diag(cov))
    assert np.abs(off).max() < 0.05  # decorrelated
    assert np.diag(cov).max() < 1.1 and np.sort(np.diag(cov))[-4:].min() > 0.5  # unit variance for the strong directions

    cfg = dataclasses.replace(BASELINE, architecture="wide_cnn", whiten=True, epochs=1, batch_size=128)
    trained, _ = training.fit((x, y), val, cfg, seed=0)
    assert trained.get_layer(WHITEN).trainable_weights == []
    fresh = build("wide_cnn", whiten=True)
    training.set_whitening(fresh, x, seed=0)
    np.testing.assert_array_equal(trained.get_layer(WHITEN).get_weights()[0], fresh.get_layer(WHITEN).get_weights()[0])


def test_ema_weights_are_validated_and_returned(real_small):
    """With EMA the recorded validation accuracy is that of the weights fit returns (the averaged ones), not the raw ones."""
    train, (vx, vy) = real_small
    cfg = dataclasses.replace(BASELINE, epochs=2, batch_size=64, learning_rate=2e-3, ema=0.9)
    model, history = training.fit(train, (vx, vy), cfg, seed=0)
    returned = float(np.mean(predict_proba(model, vx).argmax(axis=1) == vy))
    best = int(np.argmax(history["val_accuracy"]))
    assert returned == pytest.approx(history["val_accuracy"][best], abs=1e-6)
    plain, plain_history = training.fit(train, (vx, vy), dataclasses.replace(cfg, ema=0.0), seed=0)
    assert plain_history["val_accuracy"] != history["val_accuracy"]  # the same seed: the averaging made the difference


def test_with_batch_norm_the_averaged_weights_are_validated_with_statistics_of_their_own(real_small):
    """EMA and batch norm: each epoch's validation recomputes the statistics for the averaged weights, so the recorded
    accuracy is that of the model fit returns (before, it was judged with the raw weights' running statistics)."""
    train, (vx, vy) = real_small
    cfg = dataclasses.replace(BASELINE, architecture="bn_cnn", epochs=2, batch_size=64, learning_rate=2e-3, ema=0.9)
    model, history = training.fit(train, (vx, vy), cfg, seed=0)
    returned = float(np.mean(predict_proba(model, vx).argmax(axis=1) == vy))
    assert returned == pytest.approx(history["val_accuracy"][int(np.argmax(history["val_accuracy"]))], abs=1e-6)


def test_batch_norm_statistics_are_recomputed_for_the_weights_in_place(real_small):
    (x, _), _ = real_small
    model = build("bn_cnn", bn_momentum=0.9)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:  # stale statistics from other weights
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 5.0, np.float32))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 9.0, np.float32))
    before = [w.numpy().copy() for w in model.trainable_weights]
    training.recompute_batch_norm(model, x, seed=1, batches=4, batch_size=100)
    for w, b in zip(model.trainable_weights, before):
        np.testing.assert_array_equal(w.numpy(), b)  # no training step
    assert [layer.momentum for layer in norms] == [0.9, 0.9]
    # the first batch-norm layer's moving mean is now the mean of its inputs over those 4 batches of 100
    first = norms[0]
    feed = keras.Model(model.input, first.input)
    order = np.random.default_rng(1).permutation(len(x))[:400]
    means = [feed(x[np.sort(order[i : i + 100])][..., None].astype(np.float32) / 255.0).numpy().mean(axis=(0, 1, 2))
             for i in range(0, 400, 100)]  # fmt: skip
    np.testing.assert_allclose(first.moving_mean.numpy(), np.mean(means, axis=0), rtol=1e-4, atol=1e-5)


def test_trial_overrides_parse_types_augment_keys_and_the_seed():
    from benchmarks.trial import overrides

    over, seed = overrides(["epochs=30", "ema=0.99", "architecture=deep_cnn", "augment.erase=0.5", "whiten=True", "seed=43"])
    assert over == {"augment": {"erase": 0.5}, "epochs": 30, "ema": 0.99, "architecture": "deep_cnn", "whiten": True}
    assert seed == 43
    assert overrides([])[1] == load_params(ROOT / "params.yaml").base.seed
