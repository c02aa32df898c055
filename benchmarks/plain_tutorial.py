"""The tutorial's plain Keras script, as-is: the comparison baseline of ``fmnist bench``.

Float64 arrays from ``/ 255.0``, a ``Sequential`` model, ``model.fit`` with batch size 32 and
the evaluation data as ``validation_data``; no tracking, no input pipeline. The only
additions are what a benchmark needs to call it: the arrays come in as arguments (the
tutorial downloads them with ``keras.datasets``; this machine has no network) and ``fit``
takes the caller's callbacks. ``verbose=2`` (Keras' lines per epoch; the project's ``fit`` logs
one of its own): Keras' per-step progress bar would charge the plain script for terminal output.

Run alone: ``python -m benchmarks.plain_tutorial`` (10 epochs on ``data/prepared``, ~4 min).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.keras import layers, models


def scale(images: np.ndarray) -> np.ndarray:
    """The tutorial's preprocessing: uint8 (N, 28, 28) -> float64 (N, 28, 28, 1) in [0, 1]."""
    images = images / 255.0
    return images.reshape((images.shape[0], 28, 28, 1))


def build_model() -> models.Sequential:
    """The tutorial's CNN, layer for layer (257,162 params)."""
    model = models.Sequential()
    model.add(
        layers.Conv2D(filters=32, kernel_size=(3, 3), padding="same", strides=1, activation="relu", input_shape=(28, 28, 1))
    )
    model.add(layers.MaxPooling2D(pool_size=(2, 2)))
    model.add(layers.Conv2D(filters=64, kernel_size=(3, 3), padding="same", strides=1, activation="relu"))
    model.add(layers.MaxPooling2D((2, 2)))
    model.add(layers.Conv2D(filters=64, kernel_size=(3, 3), padding="same", strides=1, activation="relu"))
    model.add(layers.Flatten())
    model.add(layers.Dense(units=64, activation="relu"))
    model.add(layers.Dense(10))
    return model


def train(train_images, train_labels, test_images, test_labels, epochs: int = 10, callbacks=None):
    """Scale, build, compile and fit exactly as the tutorial does; returns the model and its history."""
    train_images, test_images = scale(train_images), scale(test_images)
    model = build_model()
    model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(
        train_images,
        train_labels,
        epochs=epochs,
        batch_size=32,
        validation_data=(test_images, test_labels),
        callbacks=callbacks,
        verbose=2,
    )
    return model, history


def test_accuracy(model, test_images, test_labels) -> float:
    """The tutorial's closing ``model.evaluate`` on the test set."""
    _, test_acc = model.evaluate(scale(test_images), test_labels, verbose=0)
    return float(test_acc)


if __name__ == "__main__":
    from pipeline.adapters.files import load_split

    x, y = load_split("data/prepared/train.npz")
    tx, ty = load_split("data/prepared/test.npz")
    model, _ = train(x, y, tx, ty)
    print("\nTest accuracy:", test_accuracy(model, tx, ty))
