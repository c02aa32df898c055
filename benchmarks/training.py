"""Measures 1-2: the project's training path against the tutorial's plain script, and tuned settings against it.

The project side always goes through ``pipeline.core.training.fit`` as the ``train`` stage calls it:
checkpoints each epoch (to a temporary folder) and MLflow epoch logging (to a temporary store).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from benchmarks import plain_tutorial
from benchmarks.common import Data, EpochTimer, Mode, TempStore, result, row
from pipeline.core.config import Params, Train

log = logging.getLogger(__name__)

GOAL_OVERHEAD, GOAL_SPEEDUP = 1.05, 1.5
ACCURACY_TOLERANCE = 0.003  # "equal test accuracy": the tuned run may be at most 0.3 points below the plain one

# Tuned settings for the baseline's architecture, learning rate scaled with sqrt(batch / 32).
TUNED = {
    "bf16, batch 256, one-cycle lr 3e-3": dict(precision="mixed_bfloat16", batch_size=256, learning_rate=3e-3),
    "bf16, batch 128, one-cycle lr 2e-3": dict(precision="mixed_bfloat16", batch_size=128, learning_rate=2e-3),
    "float32, batch 128, one-cycle lr 2e-3": dict(precision="float32", batch_size=128, learning_rate=2e-3),
    "bf16, batch 512, one-cycle lr 4e-3": dict(precision="mixed_bfloat16", batch_size=512, learning_rate=4e-3),
}


def run_plain(data: Data, epochs: int, seed: int) -> tuple[keras.Model, EpochTimer]:
    """The tutorial's script on the same in-memory arrays, validating on the same split as the project."""
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")  # a tuned run before it leaves mixed_bfloat16 set
    keras.utils.set_random_seed(seed)
    timer = EpochTimer()
    model, _ = plain_tutorial.train(*data.train, *data.val, epochs=epochs, callbacks=[timer])
    return model, timer


def run_pipeline(data: Data, cfg: Train, seed: int, store: TempStore) -> tuple[keras.Model, EpochTimer, float]:
    """``pipeline.core.training.fit`` with tracking on; returns the model, its epoch times and the fit's wall time."""
    from pipeline.adapters.mlflow.epochs import EpochLogger
    from pipeline.core.training import fit

    keras.backend.clear_session()
    timer = EpochTimer()
    logger = EpochLogger(store.new_run("bench"))
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-ckpt-") as backup:
        start = time.perf_counter()
        model, _ = fit(data.train, data.val, cfg, seed=seed, backup_dir=Path(backup), callbacks=[logger, timer])
        seconds = time.perf_counter() - start
    return model, timer, seconds


def test_accuracy(model: keras.Model, test: tuple[np.ndarray, np.ndarray]) -> float:
    from pipeline.core.inference import predict_proba

    return float(np.mean(predict_proba(model, test[0]).argmax(axis=1) == test[1]))


def _timed(timer: EpochTimer) -> list[float]:
    return timer.after_warmup or timer.seconds  # a one-epoch run (quick mode) has no epoch after the warm-up


def pipeline_vs_plain(data: Data, params: Params, mode: Mode, store: TempStore) -> dict:
    """Measure 1: epoch time of ``baseline`` through the project's path over the plain script, alternating."""
    cfg = dataclasses.replace(params.variant("baseline"), epochs=1 + mode.timed_epochs)
    seed = params.base.seed
    plain: list[float] = []
    project: list[float] = []
    for rep in range(mode.reps):
        runs = [lambda: plain.extend(run_plain(data, cfg.epochs, seed)[1].after_warmup)]
        runs.append(lambda: project.extend(run_pipeline(data, cfg, seed, store)[1].after_warmup))
        for run in runs if rep % 2 == 0 else runs[::-1]:
            run()
    ratio = statistics.median(project) / statistics.median(plain)
    rows = [row("plain tutorial script, epoch", plain), row("baseline via pipeline.core.training.fit + MLflow, epoch", project)]
    title = "Epoch time: baseline through the project's training path (MLflow on) / plain tutorial script"
    return result("pipeline_vs_plain", title, f"ratio <= {GOAL_OVERHEAD}", ratio, ratio <= GOAL_OVERHEAD, rows, unit="x")


def _screen(data: Data, candidates: dict[str, Train], mode: Mode, seed: int, store: TempStore) -> dict[str, list[float]]:
    """Epoch times of each candidate over a short run (one warm-up epoch, then ``timed_epochs``)."""
    times = {}
    for name, cfg in candidates.items():
        times[name] = _timed(run_pipeline(data, dataclasses.replace(cfg, epochs=1 + mode.timed_epochs), seed, store)[1])
        log.info("tuned candidate %s: %.2f s per epoch", name, statistics.median(times[name]))
    return times


def tuned_vs_plain(data: Data, params: Params, mode: Mode, store: TempStore) -> dict:
    """Measure 2: the fastest tuned settings against the plain script, at equal test accuracy and epoch count."""
    base, seed, epochs = params.variant("baseline"), params.base.seed, mode.accuracy_epochs
    tuned = {n: dataclasses.replace(base, schedule="onecycle", patience=epochs, **o) for n, o in TUNED.items()}
    if mode.quick:
        tuned = dict(list(tuned.items())[:1])
    screen = _screen(data, tuned, mode, seed, store)
    rows = [row(f"screening: {name}, epoch", screen[name]) for name in sorted(screen, key=lambda n: statistics.median(screen[n]))]
    plain_model, plain_timer = run_plain(data, epochs, seed)
    plain_acc = test_accuracy(plain_model, data.test)
    rows.append(row(f"plain tutorial script, {epochs} epochs, epoch", _timed(plain_timer), test_accuracy=plain_acc))
    for name in sorted(screen, key=lambda n: statistics.median(screen[n]))[:2]:  # the fastest; the next if it loses accuracy
        model, timer, _ = run_pipeline(data, dataclasses.replace(tuned[name], epochs=epochs), seed, store)
        acc = test_accuracy(model, data.test)
        rows.append(row(f"tuned: {name}, {epochs} epochs, epoch", _timed(timer), test_accuracy=acc))
        if acc >= plain_acc - ACCURACY_TOLERANCE:
            break
    speedup = statistics.median(_timed(plain_timer)) / rows[-1]["median"]
    equal = acc >= plain_acc - ACCURACY_TOLERANCE
    title = "Epoch time at equal test accuracy: plain tutorial script / the same model with tuned settings"
    return result(
        "tuned_vs_plain", title, f"speedup >= {GOAL_SPEEDUP}x, test accuracy within 0.3 points", speedup,
        speedup >= GOAL_SPEEDUP and equal, rows, unit="x", settings=name, plain_test_accuracy=plain_acc,
        tuned_test_accuracy=acc, accuracy_equal=equal,
    )  # fmt: skip
