"""CNN builders, one per architecture, looked up by name from ``params.yaml``.

Every model takes (N, 28, 28, 1) float inputs in [0, 1] and returns (N, 10) logits.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from pipeline.config import ARCHITECTURES, ConfigError

INPUT_SHAPE = (28, 28, 1)


def tutorial_cnn(dropout: float = 0.0) -> keras.Model:
    """The tutorial's model layer for layer (257,162 params); dropout, if any, before each Dense."""
    inputs = keras.Input(shape=INPUT_SHAPE)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)  # (28, 28, 32)
    x = layers.MaxPooling2D(2)(x)  # (14, 14, 32)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)  # (7, 7, 64)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)  # (3136,)
    if dropout:
        x = layers.Dropout(dropout)(x)
    x = layers.Dense(64, activation="relu")(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(10, dtype="float32")(x)  # logits, float32 even under mixed precision
    return keras.Model(inputs, outputs, name="tutorial_cnn")


def _conv_bn(x, filters: int):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(x)


def bn_cnn(dropout: float = 0.0) -> keras.Model:
    """The tutorial's layout with batch norm after every conv and a wider dense layer (128)."""
    inputs = keras.Input(shape=INPUT_SHAPE)
    x = _conv_bn(inputs, 32)
    x = layers.MaxPooling2D(2)(x)  # (14, 14, 32)
    x = _conv_bn(x, 64)
    x = layers.MaxPooling2D(2)(x)  # (7, 7, 64)
    x = _conv_bn(x, 64)
    x = layers.Flatten()(x)  # (3136,)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(10, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="bn_cnn")


def wide_cnn(dropout: float = 0.0) -> keras.Model:
    """Wider and one conv deeper: 32 filters at 28x28, two 64s at 14x14, 128 at 7x7, a 128 dense head.

    Extra width goes where it is cheap (14x14 and 7x7), so it costs about twice the tutorial's model.
    """
    inputs = keras.Input(shape=INPUT_SHAPE)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling2D(2)(x)  # (14, 14, 32)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)  # (7, 7, 64)
    x = layers.Conv2D(128, 3, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)  # (6272,)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(10, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="wide_cnn")


BUILDERS: dict[str, Callable[..., keras.Model]] = {"tutorial_cnn": tutorial_cnn, "bn_cnn": bn_cnn, "wide_cnn": wide_cnn}
assert set(BUILDERS) == set(ARCHITECTURES)


def build(architecture: str, dropout: float = 0.0) -> keras.Model:
    """Build the named architecture, or raise ConfigError listing the valid names."""
    if architecture not in BUILDERS:
        raise ConfigError(f"unknown architecture {architecture!r}; expected one of {', '.join(BUILDERS)}")
    return BUILDERS[architecture](dropout=dropout)


def trainable_params(model: keras.Model) -> int:
    return int(sum(keras.ops.size(w) for w in model.trainable_weights))
