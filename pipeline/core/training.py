"""The training loop: input pipeline, augmentation, schedules, loss, callbacks and ``fit``.

Everything takes arrays and a resolved :class:`pipeline.core.config.Train`; the only files it
touches are the resumable checkpoints in the ``backup_dir`` that the caller names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline.core.callbacks import EpochLine, EpochRecord, Lookahead, TerminateOnDivergence
from pipeline.core.config import Augment, Train
from pipeline.core.models import WHITEN, build

log = logging.getLogger(__name__)

STEPS_PER_EXECUTION = 16


@keras.saving.register_keras_serializable(package="pipeline")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy from logits with label smoothing (Keras has it only for one-hot)."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_smoothed_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        one_hot = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), 10)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, from_logits=True, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def shift_images(images: tf.Tensor, shift: int, seed: tf.Tensor) -> tf.Tensor:
    """Translate each image of a (B, 28, 28, 1) batch by its own random offset of up to ``shift`` pixels.

    Zero-pads by ``shift``, then crops 28x28 at a per-image offset drawn from the stateless ``seed``.
    """
    padded = tf.pad(images, [[0, 0], [shift, shift], [shift, shift], [0, 0]])
    offsets = tf.random.stateless_uniform((tf.shape(images)[0], 2), seed, 0, 2 * shift + 1, dtype=tf.int32)
    window = tf.range(28)[None, :]
    rows = tf.gather(padded, offsets[:, :1] + window, axis=1, batch_dims=1)
    return tf.gather(rows, offsets[:, 1:] + window, axis=2, batch_dims=1)


def erase_images(images: tf.Tensor, probability: float, seed: tf.Tensor) -> tf.Tensor:
    """Random erasing: blank one random rectangle of each image with ``probability``, to the background (0).

    The rectangle covers 2-40% of the image with an aspect ratio between 0.3 and 3.3 (Zhong et
    al., 2017), placed uniformly inside the image.
    """
    n = tf.shape(images)[0]
    draws = tf.random.stateless_uniform((n, 5), seed)  # area, log aspect, row, column, apply
    area = (0.02 + 0.38 * draws[:, 0]) * 28 * 28
    aspect = tf.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * draws[:, 1])
    height = tf.clip_by_value(tf.round(tf.sqrt(area * aspect)), 1, 28)
    width = tf.clip_by_value(tf.round(tf.sqrt(area / aspect)), 1, 28)
    top = tf.floor(draws[:, 2] * (29 - height))
    left = tf.floor(draws[:, 3] * (29 - width))
    grid = tf.range(28, dtype=tf.float32)
    rows = (grid[None, :] >= top[:, None]) & (grid[None, :] < (top + height)[:, None])  # (n, 28)
    cols = (grid[None, :] >= left[:, None]) & (grid[None, :] < (left + width)[:, None])
    erased = rows[:, :, None] & cols[:, None, :] & (draws[:, 4] < probability)[:, None, None]
    return images * tf.cast(~erased, images.dtype)[..., None]


def make_dataset(
    x: np.ndarray, y: np.ndarray, cfg: Train, *, training: bool, seed: int, epoch: tf.Variable | None = None
) -> tf.data.Dataset:
    """An in-memory pipeline over uint8 arrays: shuffle, batch, cast and scale on the fly, prefetch.

    Yields (B, 28, 28, 1) float32 in [0, 1] and (B,) uint8 labels. Augmentation (training only)
    is per image and draws from stateless ops seeded per batch by a seeded stream that changes
    each epoch: the same ``seed`` gives the same batches whatever the thread count, which
    stateful random ops in a parallel ``map`` do not. Alternating flips mirror image i in epoch
    e when (bit_i + e) is odd, for a seeded random bit per image: half the images each epoch,
    each one every other epoch; they read the epoch from ``epoch``, which the caller advances.
    """
    aug = cfg.augment if training else Augment()
    alternate = aug.flip and aug.alternate_flips
    if alternate and epoch is None:
        raise ValueError("alternating flips need the epoch variable that fit() advances")
    ds = tf.data.Dataset.from_tensor_slices((x, y, np.arange(len(x), dtype=np.int32)))
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(cfg.batch_size)
    bits = tf.constant(np.random.default_rng(seed).integers(0, 2, len(x), dtype=np.int32)) if alternate else None

    def scale(images, labels, _index):
        return tf.cast(images[..., None], tf.float32) / 255.0, labels

    def augment(batch, batch_seed):
        images, labels = scale(*batch)
        shift_seed, flip_seed, erase_seed = tf.unstack(tf.random.experimental.stateless_split(batch_seed, 3))
        if aug.shift:
            images = shift_images(images, aug.shift, shift_seed)
        if alternate:
            odd = tf.math.floormod(tf.gather(bits, batch[2]) + tf.cast(epoch, tf.int32), 2) == 1
            images = tf.where(odd[:, None, None, None], tf.reverse(images, axis=[2]), images)
        elif aug.flip:
            images = tf.image.stateless_random_flip_left_right(images, flip_seed)
        if aug.erase:
            images = erase_images(images, aug.erase, erase_seed)
        return images, labels

    transform = scale
    if aug.shift or aug.flip or aug.erase:
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2))
        transform = augment
    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    # tf.data's autotuner stalled the first batch of an epoch for 1-5 s with both cores idle, in
    # 4 of 6 epochs of wide_cnn; with it off there were none in 12, and a full-data epoch of
    # wide_aug took 18.4 s instead of 20.0 s.
    options.autotune.enabled = False
    return ds.with_options(options)


def learning_rate(cfg: Train, steps_per_epoch: int):
    """A constant rate, a cosine decay, or a one-cycle (30% warm-up from lr/25, then cosine to 0)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(cfg.learning_rate, total)
    if cfg.schedule == "onecycle":
        warmup = max(1, int(0.3 * total))
        return keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate / 25, max(1, total - warmup), warmup_target=cfg.learning_rate, warmup_steps=warmup
        )
    return cfg.learning_rate


def optimizer(cfg: Train, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam (AdamW with ``weight_decay``) or SGD with Nesterov momentum 0.9, on the schedule, with EMA if set."""
    lr = learning_rate(cfg, steps_per_epoch)
    ema = dict(use_ema=True, ema_momentum=cfg.ema) if cfg.ema else {}
    if cfg.optimizer == "nesterov":  # Keras 3 decays every optimizer's weights decoupled from the gradient
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay or None, **ema)
    if cfg.weight_decay:
        return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay, **ema)
    return keras.optimizers.Adam(lr, **ema)


def compile_model(cfg: Train, steps_per_epoch: int) -> keras.Model:
    """Build the variant's architecture under its precision policy and compile it."""
    keras.mixed_precision.set_global_policy(cfg.precision)
    model = build(cfg.architecture, cfg.dropout, cfg.whiten, cfg.bn_momentum, cfg.head)
    if cfg.label_smoothing:
        loss = SparseSmoothedCrossentropy(cfg.label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # 16 steps per call into the compiled graph instead of one: the same updates in the same order
    # (identical losses), with Python's per-step overhead cut 16-fold; a batch-32 epoch of the
    # tutorial's model took 15.2 s instead of 17.6 s. Callbacks then see every 16th batch.
    model.compile(
        optimizer=optimizer(cfg, steps_per_epoch), loss=loss, metrics=["accuracy"], steps_per_execution=STEPS_PER_EXECUTION
    )
    return model


def fit(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: Train,
    *,
    seed: int,
    backup_dir: Path | None = None,
    callbacks: list | None = None,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train ``cfg`` on ``train``; early-stop on validation accuracy and restore the best weights.

    Returns:
        The trained model and its per-epoch history (loss, accuracy, val_loss, val_accuracy).

    Raises:
        TrainingDiverged: when the loss becomes NaN, infinite or absurdly large (within one batch).
    """
    keras.utils.set_random_seed(seed)
    steps = math.ceil(len(train[1]) / cfg.batch_size)
    model = compile_model(cfg, steps)
    if cfg.whiten:
        set_whitening(model, train[0], seed)
    all_callbacks = [EpochLine(cfg.epochs), TerminateOnDivergence()]
    if cfg.lookahead:  # before EMA's swap: it steps the raw weights
        all_callbacks.append(Lookahead(cfg.lookahead))
    epoch = None
    if cfg.augment.flip and cfg.augment.alternate_flips:
        epoch = tf.Variable(0, trainable=False, dtype=tf.int64)
        all_callbacks.append(keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: epoch.assign(e)))
    record = None
    if backup_dir is not None:
        backup_dir.mkdir(parents=True, exist_ok=True)
        record = EpochRecord(backup_dir / "history.jsonl")
        all_callbacks.append(record)
    all_callbacks += callbacks or []
    if backup_dir is not None:  # an epoch is saved for resuming only once every record of it is written
        all_callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir), double_checkpoint=True))
    if cfg.ema:
        # Validation, and so early stopping's choice of the best epoch, sees the averaged weights:
        # they are swapped in for validation and at each epoch's end, after the backup above has
        # saved the raw ones (which a resumed run continues from) and before early stopping keeps
        # the best epoch's weights, the averaged ones it restores at the end.
        # Training only ever uses batch statistics, so the running ones are free to be recomputed.
        all_callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        if _batch_norms(model):  # and batch norm's statistics recomputed for them, so validation judges what fit returns
            recompute = keras.callbacks.LambdaCallback(on_test_begin=lambda logs: recompute_batch_norm(model, train[0], seed))
            all_callbacks.append(recompute)
    all_callbacks.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=cfg.patience, restore_best_weights=True))
    history = model.fit(
        make_dataset(*train, cfg, training=True, seed=seed, epoch=epoch),
        validation_data=make_dataset(*val, dataclasses.replace(cfg, batch_size=512), training=False, seed=seed),
        epochs=cfg.epochs,
        callbacks=all_callbacks,
        shuffle=False,  # the dataset shuffles itself; Keras warns that it ignores shuffle=True for a dataset
        verbose=0,  # EpochLine logs one line per epoch instead of Keras's two
    )
    if cfg.ema:
        recompute_batch_norm(model, train[0], seed)
    if record is not None:
        return model, record.history()
    return model, {k: [float(v) for v in vs] for k, vs in history.history.items() if k != "learning_rate"}


def set_whitening(model: keras.Model, x: np.ndarray, seed: int, samples: int = 10_000) -> None:
    """Fill the frozen whitening conv from 3x3 patches of ``samples`` seeded training images (uint8 (N, 28, 28)).

    Filters: the eigenvectors v of the patch covariance, each scaled by 1/sqrt(eigenvalue + 1e-2),
    and their negatives, so that each filter's output has unit variance over the training images.
    """
    pick = np.random.default_rng(seed).choice(len(x), min(samples, len(x)), replace=False)
    images = np.pad(x[np.sort(pick)].astype(np.float64) / 255.0, ((0, 0), (1, 1), (1, 1)))
    patches = np.lib.stride_tricks.sliding_window_view(images, (3, 3), axis=(1, 2)).reshape(-1, 9)
    values, vectors = np.linalg.eigh(np.cov(patches, rowvar=False))
    filters = vectors / np.sqrt(values + 1e-2)  # (9, 9): one whitening filter per column
    kernel = np.concatenate([filters, -filters], axis=1).reshape(3, 3, 1, 18)
    model.get_layer(WHITEN).set_weights([kernel.astype(np.float32)])


def recompute_batch_norm(model: keras.Model, x: np.ndarray, seed: int, batches: int = 50, batch_size: int = 256) -> None:
    """Batch norm's moving statistics for the weights the model has now (the averaged ones, after EMA).

    The statistics gathered during training describe the raw weights of recent steps; the
    averaged weights give other activations. This runs ``batches`` seeded training batches
    through the model in training mode with each layer's momentum set so that its moving mean
    and variance end as the plain average over those batches, then restores the momentum.
    Nothing else changes: no gradient step is taken. A model without batch norm is left alone.
    """
    norms = _batch_norms(model)
    if not norms:
        return
    momenta = [layer.momentum for layer in norms]
    order = np.random.default_rng(seed).permutation(len(x))[: batches * batch_size]
    try:
        for i, start in enumerate(range(0, len(order), batch_size)):
            for layer in norms:
                layer.momentum = i / (i + 1)  # the first batch replaces the statistics, batch k weighs 1/k
            images = x[np.sort(order[start : start + batch_size])][..., None].astype(np.float32) / 255.0
            model(images, training=True)
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum


def _batch_norms(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def config_hash(cfg: Train, seed: int, data_size: int) -> str:
    """Identifies a training job, so a checkpoint is only resumed by the same settings and data (its size in bytes)."""
    blob = json.dumps({"cfg": dataclasses.asdict(cfg), "seed": seed, "data": data_size}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
