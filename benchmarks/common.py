"""What every benchmark shares: the run mode, epoch timing, statistics, data and a throwaway MLflow store."""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np


@dataclasses.dataclass(frozen=True)
class Mode:
    """How much work each measure does: ``FULL`` for quoted figures, ``QUICK`` to check the suite runs."""

    quick: bool
    limit: int  # training images (0: all 55,000)
    val_limit: int  # validation images (0: all 5,000)
    test_limit: int  # test images (0: all 10,000)
    reps: int  # alternating repetitions of a comparison
    timed_epochs: int  # epochs timed per run, after one warm-up epoch
    accuracy_epochs: int  # epochs of the equal-accuracy runs (the tutorial's 10)
    seeds: int  # seeds of the time-to-92% runs
    dvc_reps: int
    log_reps: int


FULL = Mode(False, 0, 0, 0, 3, 2, 10, 3, 5, 20)
# Quick: enough images for every measure to train, score and report once, and no more (on a CPU without native
# bfloat16, such as an AMD EPYC of family 25 model 1 without AVX-512, a mixed_bfloat16 epoch of wide_cnn costs about
# 10x a float32 one: 54-86 s against 5.8 s for 2,048 images, beside a running `make test`)
QUICK = Mode(True, 500, 200, 1000, 1, 1, 1, 1, 1, 3)


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch, training and validation included, end to end.

    Put it last in the callback list, so an epoch's time includes the other callbacks' work.
    """

    def __init__(self):
        super().__init__()
        self.ends: list[float] = []

    def on_train_begin(self, logs=None):
        self.ends = [time.perf_counter()]

    def on_epoch_end(self, epoch, logs=None):
        self.ends.append(time.perf_counter())

    @property
    def seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.ends, self.ends[1:])]

    @property
    def after_warmup(self) -> list[float]:
        """Every epoch but the first, which also traces the graph."""
        return self.seconds[1:]


def stats(values: list[float], unit: str = "s") -> dict:
    """Median, min, max and n of a sample (empty sample: n = 0)."""
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0, "unit": unit, "values": []}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "unit": unit,
        "values": [round(v, 4) for v in values],
    }


def row(name: str, values: list[float], unit: str = "s", **extra) -> dict:
    return {"name": name, **stats(values, unit), **extra}


def result(key: str, title: str, goal: str, figure: float | None, met: bool | None, rows: list[dict], **extra) -> dict:
    """One measure's record in ``benchmarks.json``; ``met`` is None when the figure could not be taken."""
    return {"key": key, "title": title, "goal": goal, "figure": figure, "met": met, "rows": rows, **extra}


def unavailable(key: str, title: str, goal: str, why: str) -> dict:
    return result(key, title, goal, None, None, [], status=why)


@dataclasses.dataclass(frozen=True)
class Data:
    """The prepared splits in memory, uint8: train and val (x (N, 28, 28), y (N,)), and test."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]

    @classmethod
    def load(cls, prepared: Path, mode: Mode) -> Data:
        from pipeline.adapters.files import load_split

        def head(split, n):
            x, y = load_split(prepared / f"{split}.npz")
            return (x[:n], y[:n]) if n else (x, y)

        return cls(head("train", mode.limit), head("val", mode.val_limit), head("test", mode.test_limit))


class TempStore:
    """An MLflow store on SQLite in a temporary folder, made the process's tracking URI while open."""

    def __init__(self, root: Path):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        self.experiment = self.client.create_experiment("bench", artifact_location=(root / "artifacts").as_uri())

    def new_run(self, name: str) -> str:
        return self.client.create_run(self.experiment, run_name=name).info.run_id


@contextmanager
def global_tracking_uri(uri: str | None = None) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``uri`` for the block (left as it is with None), and put back after.

    MLflow resolves a ``models:/`` URI and logs fluent runs on that URI whatever client the caller holds, and the
    project's own client sets it; code that works on another store for a while (a scratch copy, a test's store) and
    leaves it changed points the rest of the process at a store it never made.
    """
    import mlflow

    before = mlflow.get_tracking_uri()
    if uri is not None:
        mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


@contextmanager
def temp_store() -> Iterator[TempStore]:
    """A :class:`TempStore` that ``pipeline.adapters.mlflow`` also uses (through ``MLFLOW_TRACKING_URI``)."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-mlflow-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        try:
            yield TempStore(Path(tmp))
        finally:
            if saved is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved
