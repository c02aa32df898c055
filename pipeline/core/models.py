"""CNN builders, one per architecture, looked up by name from ``params.yaml``.

Every model takes (N, 28, 28, 1) float inputs in [0, 1] and returns (N, 10) logits.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from pipeline.core.config import ARCHITECTURES
from pipeline.core.errors import ConfigError

INPUT_SHAPE = (28, 28, 1)
WHITEN = "whiten"  # the name of the frozen whitening conv, which ``pipeline.core.training`` sets from the data


def _stem(inputs, filters: int, whiten: bool):
    """The first (28x28) conv: ``filters`` learned 3x3 filters, or the frozen whitening conv.

    The whitening conv has 18 filters, the 9 eigenvectors of the 3x3 patch covariance of the
    training images scaled by 1/sqrt(eigenvalue), and their negatives (so the ReLU keeps both
    signs). It is a fixed decorrelation of the pixels, not learned: ``training.set_whitening``
    fills it in before the first step.
    """
    if whiten:
        x = layers.Conv2D(18, 3, padding="same", use_bias=False, trainable=False, name=WHITEN)(inputs)
        return layers.Activation("relu")(x)
    return layers.Conv2D(filters, 3, padding="same", activation="relu")(inputs)


def _tutorial_layout(stem_filters: int, dropout: float, name: str, whiten: bool = False, head: int = 0) -> keras.Model:
    """The tutorial's layers with ``stem_filters`` in its 28x28 conv; dropout, if any, before each Dense."""
    inputs = keras.Input(shape=INPUT_SHAPE)
    x = _stem(inputs, stem_filters, whiten)  # (28, 28, stem_filters)
    x = layers.MaxPooling2D(2)(x)  # (14, 14, stem_filters)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)  # (7, 7, 64)
    x = layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)  # (3136,)
    if dropout:
        x = layers.Dropout(dropout)(x)
    x = layers.Dense(head or 64, activation="relu")(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(10, dtype="float32")(x)  # logits, float32 even under mixed precision
    return keras.Model(inputs, outputs, name=name)


def tutorial_cnn(dropout: float = 0.0, whiten: bool = False, head: int = 0, **_) -> keras.Model:
    """The tutorial's model layer for layer (257,162 params), with its 64-unit dense head unless ``head`` says otherwise."""
    return _tutorial_layout(32, dropout, "tutorial_cnn", whiten, head)


def slim_cnn(dropout: float = 0.0, whiten: bool = False, head: int = 0, **_) -> keras.Model:
    """The tutorial's model with 16 filters instead of 32 in its 28x28 conv (247,786 params).

    That layer holds most of the activations, and its elementwise work (bias, ReLU, pooling and
    their gradients) is bound by memory, not arithmetic: halving it took a bfloat16 epoch at
    batch 256 from 8.1 s to 5.6 s while the model keeps 96% of the tutorial's weights.
    """
    return _tutorial_layout(16, dropout, "slim_cnn", whiten, head)


def _conv_bn(x, filters: int, momentum: float):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=momentum)(x)
    return layers.Activation("relu")(x)


def bn_cnn(dropout: float = 0.0, whiten: bool = False, bn_momentum: float = 0.99, head: int = 0) -> keras.Model:
    """The tutorial's layout with batch norm after the 14x14 and 7x7 convs and a wider dense layer (128).

    Not after the 28x28 conv: batch norm there, on the largest activations, cost more than any
    other layer. Measured over 12 epochs of ``bn_dropout`` (bfloat16, batch 256): with it 21.3 s
    an epoch, 93.43% test; without it 12.5 s, 93.31%; with it on 16 filters instead, 15.2 s, 92.89%.
    """
    inputs = keras.Input(shape=INPUT_SHAPE)
    x = _stem(inputs, 32, whiten)
    x = layers.MaxPooling2D(2)(x)  # (14, 14, 32)
    x = _conv_bn(x, 64, bn_momentum)
    x = layers.MaxPooling2D(2)(x)  # (7, 7, 64)
    x = _conv_bn(x, 64, bn_momentum)
    x = layers.Flatten()(x)  # (3136,)
    x = layers.Dropout(dropout)(x)
    return _head(x, dropout, head or 128, "bn_cnn", inputs)


def _head(x, dropout: float, units: int, name: str, inputs) -> keras.Model:
    """A ReLU dense layer of ``units``, dropout, and the 10 logits (float32 even under mixed precision)."""
    x = layers.Dense(units, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(10, dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def _conv(x, filters: int, bn_momentum: float | None):
    """A 3x3 ReLU conv, with batch norm between the conv and the ReLU when ``bn_momentum`` is given."""
    if bn_momentum is None:
        return layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    return _conv_bn(x, filters, bn_momentum)


def _wide_front(inputs, whiten: bool, bn_momentum: float | None = None):
    """The first layers of ``wide_cnn`` and ``deep_cnn``: 16 filters at 28x28 (or the whitening stem), two 64s at 14x14."""
    x = _stem(inputs, 16, whiten)
    x = layers.MaxPooling2D(2)(x)  # (14, 14, 16)
    x = _conv(x, 64, bn_momentum)
    x = _conv(x, 64, bn_momentum)
    return layers.MaxPooling2D(2)(x)  # (7, 7, 64)


def _wide(dropout: float, whiten: bool, head: int, bn_momentum: float | None, name: str) -> keras.Model:
    inputs = keras.Input(shape=INPUT_SHAPE)
    x = _wide_front(inputs, whiten, bn_momentum)  # (7, 7, 64)
    x = _conv(x, 128, bn_momentum)
    x = layers.Flatten()(x)  # (6272,)
    x = layers.Dropout(dropout)(x)
    return _head(x, dropout, head or 128, name, inputs)


def wide_cnn(dropout: float = 0.0, whiten: bool = False, head: int = 0, **_) -> keras.Model:
    """Wider and one conv deeper: 16 filters at 28x28, two 64s at 14x14, 128 at 7x7, a 128 dense head.

    Width goes where it is cheap (14x14 and 7x7), not to 28x28 (see ``slim_cnn``): an epoch
    with augmentation took 17.7 s with 16 filters there, 20.9 s with 32.
    """
    return _wide(dropout, whiten, head, None, "wide_cnn")


def wide_bn_cnn(dropout: float = 0.0, whiten: bool = False, bn_momentum: float = 0.99, head: int = 0) -> keras.Model:
    """``wide_cnn`` with batch norm after each conv at 14x14 and 7x7 (three), not at 28x28 (see ``bn_cnn``)."""
    return _wide(dropout, whiten, head, bn_momentum, "wide_bn_cnn")


def deep_cnn(dropout: float = 0.0, whiten: bool = False, **_) -> keras.Model:
    """Width by depth, no big dense layer: 16 filters at 28x28, two 64s at 14x14, two 128s at 7x7, 256 at 3x3.

    A global max pool over the 3x3 map feeds the logits directly (no dense head: ``head`` is
    ignored), so the parameters sit in the convolutions (565,546 in all) instead of a 6272 x 128 dense layer. Not a default variant: with
    EMA, shift + flips and dropout 0.1 it reached 94.34% test (flip+shift TTA) after 30 epochs, but
    at 25 s an epoch (739 s), against 94.18% and 16 s an epoch for ``wide_cnn`` (2026-12-02, 2 cores).
    """
    inputs = keras.Input(shape=INPUT_SHAPE)
    x = _wide_front(inputs, whiten)  # (7, 7, 64)
    x = layers.Conv2D(128, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(128, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)  # (3, 3, 128)
    x = layers.Conv2D(256, 3, padding="same", activation="relu")(x)
    x = layers.GlobalMaxPooling2D()(x)  # (256,)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(10, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="deep_cnn")


BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "tutorial_cnn": tutorial_cnn,
    "slim_cnn": slim_cnn,
    "bn_cnn": bn_cnn,
    "wide_cnn": wide_cnn,
    "wide_bn_cnn": wide_bn_cnn,
    "deep_cnn": deep_cnn,
}
assert set(BUILDERS) == set(ARCHITECTURES)


def build(architecture: str, dropout: float = 0.0, whiten: bool = False, bn_momentum: float = 0.99, head: int = 0) -> keras.Model:
    """Build the named architecture, or raise ConfigError listing the valid names.

    ``bn_momentum`` applies to the architectures with batch norm, ``head`` (the dense head's units;
    0: the architecture's own) to those with a dense head; the others take and ignore them.
    """
    if architecture not in BUILDERS:
        raise ConfigError(f"unknown architecture {architecture!r}; expected one of {', '.join(BUILDERS)}")
    return BUILDERS[architecture](dropout=dropout, whiten=whiten, bn_momentum=bn_momentum, head=head)


def trainable_params(model: keras.Model) -> int:
    return int(sum(keras.ops.size(w) for w in model.trainable_weights))
