"""A Keras callback that logs each epoch's figures to a run (it imports keras: only the training uses it)."""

from __future__ import annotations

import time

import keras
from mlflow.entities import Metric

from pipeline.adapters.mlflow.store import client


class EpochLogger(keras.callbacks.Callback):
    """Logs train and validation loss and accuracy per epoch (step = epoch, from 1) in one batch call.

    On a resumed run, epochs already in the run's history are not logged again. It runs before
    ``BackupAndRestore`` saves the epoch, so a kill never leaves a gap in the curves; a kill
    between the two redoes the epoch and the run keeps the first attempt's figures for it.
    """

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id
        self.client = client()
        self.logged_steps = {m.step for m in self.client.get_metric_history(run_id, "loss")}

    def on_epoch_end(self, epoch, logs=None):
        step = epoch + 1
        if step in self.logged_steps:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in (logs or {}).items()]
        self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
        self.logged_steps.add(step)
