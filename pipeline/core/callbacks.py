"""Keras callbacks of the training loop: stop a diverging run, keep a resumable per-epoch history, log each epoch,
and Lookahead's slow weights."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import keras
import numpy as np

from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)


class TrainingDiverged(PipelineError, RuntimeError):
    """The loss became NaN, infinite or absurdly large: the settings are wrong; a seeded rerun would diverge again."""


class TerminateOnDivergence(keras.callbacks.TerminateOnNaN):
    """``TerminateOnNaN(raise_error=True)``, and the same for a loss that explodes but stays finite.

    With Adam an absurd learning rate sends the loss to ~1e11 within a batch and then kills every
    ReLU: the loss never becomes NaN and the run would "succeed" at chance level. A 10-class
    cross-entropy starts near ln 10 = 2.3, so a running loss above ``limit`` means divergence.
    """

    def __init__(self, limit: float = 1e3):
        super().__init__(raise_error=True)
        self.limit = limit
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not (math.isfinite(loss) and loss <= self.limit):
            raise TrainingDiverged(
                f"training diverged: loss {loss:.4g} at epoch {self.epoch + 1}, batch {batch} "
                f"(NaN, infinite or above {self.limit:g}); lower the learning rate in params.yaml"
            )


class EpochRecord(keras.callbacks.Callback):
    """Keeps the per-epoch history in a file, so a resumed run still reports every epoch.

    Writes each epoch before ``BackupAndRestore`` saves it (it comes first in the callback list):
    a kill between the two redoes that epoch and rewrites its row, where the other order would
    resume after an epoch that the history never got.
    """

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.rows: list[dict[str, float]] = []

    def on_train_begin(self, logs=None):
        self.started = False

    def on_epoch_begin(self, epoch, logs=None):
        if self.started:
            return
        self.started = True  # the first epoch is the one BackupAndRestore resumes at
        if epoch and self.path.exists():
            self.rows = [json.loads(line) for line in self.path.read_text().splitlines()][:epoch]
            log.info("resuming at epoch %d of a killed run", epoch + 1)
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"})
        with open(self.path, "a") as fh:
            fh.write(json.dumps(self.rows[-1]) + "\n")

    def history(self) -> dict[str, list[float]]:
        return {k: [r[k] for r in self.rows] for k in self.rows[0]} if self.rows else {}


class EpochLine(keras.callbacks.Callback):
    """One log line per epoch: its number, the figures Keras reports for it and its wall time."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs
        self.start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        figures = ", ".join(f"{k} {float(v):.4f}" for k, v in (logs or {}).items() if k != "learning_rate")
        log.info("epoch %d/%d: %s (%.1f s)", epoch + 1, self.epochs, figures, time.perf_counter() - self.start)


class Lookahead(keras.callbacks.Callback):
    """Lookahead (Zhang et al., 2019) around any optimizer: slow weights that step ``alpha`` of the way to the fast ones.

    Keras calls batch-end callbacks once per compiled call, so the weights synchronize every
    ``steps_per_execution`` steps (16 in ``pipeline.core.training``; the paper used 5 to 10): the
    slow weights move ``alpha`` of the way to where the optimizer took the fast ones, and the fast
    ones restart from there. The slow weights live only in memory: a resumed run starts them again
    from the weights it restored.
    """

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha
        self.slow: list[np.ndarray] = []

    def on_train_begin(self, logs=None):
        self.slow = [keras.ops.convert_to_numpy(v).copy() for v in self.model.trainable_variables]

    def on_train_batch_end(self, batch, logs=None):
        for slow, variable in zip(self.slow, self.model.trainable_variables):
            slow += self.alpha * (keras.ops.convert_to_numpy(variable) - slow)
            variable.assign(slow)
