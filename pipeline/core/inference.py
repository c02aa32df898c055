"""The forward pass the pipeline evaluates and the registry serves: one compiled function, with test-time augmentation.

``evaluate`` scores a variant with :func:`forward`, and the served model
(:class:`pipeline.adapters.mlflow.serving.FashionClassifier`) runs the same function built from the
same Keras file and the same ``tta`` setting, so the figures in ``reports/metrics/`` are what a
client of ``fmnist serve`` gets.

Test-time augmentation (``evaluate.tta.<variant>``) averages the softmax over views of each image:

- ``none``: the image alone;
- ``flip``: the image and its left-right mirror (a label-preserving change for every class);
- ``flip+shift``: those two, each also shifted one pixel left and right (six views).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.core.config import TTA_MODES

CHUNK = 1000  # images per call of the compiled function: bounded memory, and the same chunks everywhere


def _views(x, tta: str) -> list:
    """The augmented views of a batch x (N, 28, 28, 1) float32, as tensors of the same shape."""
    import tensorflow as tf

    views = [x] if tta == "none" else [x, tf.reverse(x, axis=[2])]
    if tta == "flip+shift":
        views += [tf.roll(v, shift, axis=2) for v in views[:2] for shift in (-1, 1)]
    return views


def forward(model, tta: str = "none", chunk: int = CHUNK) -> Callable[[np.ndarray], np.ndarray]:
    """A compiled forward pass of ``model`` for any batch size: images (N, 28, 28, 1) float32 in [0, 1] -> (N, 10) float32.

    Traced once here, not on the first call: ``model.predict`` would build a dataset and a predict
    loop on every call, a fixed cost of tens of milliseconds that a one-image request pays in full.
    """
    import tensorflow as tf

    if tta not in TTA_MODES:
        raise ValueError(f"tta: expected one of {', '.join(TTA_MODES)}, got {tta!r}")

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
    def run(x):
        views = _views(x, tta)  # one call of the model on all views: cheaper than one call per view
        logits = model(tf.concat(views, axis=0) if len(views) > 1 else x, training=False)
        probs = tf.nn.softmax(tf.cast(logits, tf.float32))  # (V * N, 10)
        return tf.reduce_mean(tf.reshape(probs, [len(views), -1, 10]), axis=0)

    run(tf.zeros([1, 28, 28, 1]))

    def call(x: np.ndarray) -> np.ndarray:
        return np.concatenate([run(x[i : i + chunk]).numpy() for i in range(0, len(x), chunk)])

    return call


def predict_proba(model, x: np.ndarray, tta: str = "none", batch_size: int = CHUNK) -> np.ndarray:
    """Class probabilities (N, 10) float64 for uint8 images (N, 28, 28), as :func:`forward` computes them."""
    return forward(model, tta, batch_size)(x[..., None].astype(np.float32) / 255.0).astype(np.float64)


def accuracy(model, x: np.ndarray, y: np.ndarray, tta: str = "none") -> float:
    """The share of uint8 images ``x`` whose most probable class is ``y``: ``evaluate``'s validation figure, and a trial's."""
    return float(np.mean(predict_proba(model, x, tta).argmax(axis=1) == y))
