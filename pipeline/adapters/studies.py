"""Optuna studies: their storage, sampler and pruner, what a trial samples, and pruning inside a Keras fit.

Storage: ``FMNIST_TUNE_STORAGE`` when set (the team stack sets its PostgreSQL, database ``optuna``),
else the project's git-ignored ``optuna.db`` (SQLite). Both through Optuna's ``RDBStorage`` with a
heartbeat: a trial whose process died stops beating, the next trial started on the study marks it
FAIL and enqueues its parameters again (``RetryHeartbeatStaleTrialCallback``), so a killed worker's trial
is retried. On PostgreSQL, connections are checked before use and recycled (``pool_pre_ping``,
``pool_recycle``): a connection the server dropped while a trial trained for minutes is replaced,
not an error (optuna#1347, #5600).

The only module that imports Optuna.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from pipeline.adapters.paths import Paths
from pipeline.core.config import Dimension, Study
from pipeline.core.environment import TUNE_STORAGE

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, the matplotlib plots
HEARTBEAT_S, GRACE_S, RETRIES = 10, 30, 2
DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts toward a study's trials
Pruned = optuna.TrialPruned


def storage_url(paths: Paths) -> str:
    """The studies' storage URL: ``FMNIST_TUNE_STORAGE``, or the project's ``optuna.db``."""
    return os.environ.get(TUNE_STORAGE) or f"sqlite:///{paths.optuna_db}"


def storage(url: str) -> RDBStorage:
    """Optuna's storage at ``url``, with the heartbeat that finds and retries the trials of dead processes."""
    engine = {} if url.startswith("sqlite") else {"pool_pre_ping": True, "pool_recycle": 300}
    return RDBStorage(
        url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=RETRIES),
    )  # fmt: skip


def open_study(name: str, spec: Study, url: str, max_epochs: int) -> optuna.Study:
    """The study ``name`` in the storage at ``url``, created if new: maximising, a seeded TPE, the spec's pruner."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the service logs one line per trial itself
    sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=min(10, max(2, spec.trials // 4)))
    pruner = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs),
        "none": optuna.pruners.NopPruner,
    }[spec.pruner]()
    return optuna.create_study(
        study_name=name, storage=storage(url), sampler=sampler, pruner=pruner, direction="maximize", load_if_exists=True
    )


def retry_interrupted(study: optuna.Study) -> list[int]:
    """Enqueue again the parameters of failed trials that no trial retried yet (a Ctrl-C'd ``fmnist tune``'s last one).

    A retry is not retried: a trial that fails twice on the same parameters fails for a reason.
    Returns the numbers of the trials enqueued again.
    """
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials} | {t.user_attrs.get("retry_of") for t in trials}
    again = []
    for t in trials:
        is_retry = "failed_trial" in t.system_attrs or "retry_of" in t.user_attrs
        if t.state == TrialState.FAIL and t.number not in retried and not is_retry:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            again.append(t.number)
    return again


def retry_of(trial: optuna.Trial) -> int | None:
    """The trial this one runs again (after a Ctrl-C, or a dead process found by the heartbeat), or None."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    return frozen.user_attrs.get("retry_of", frozen.system_attrs.get("failed_trial"))


def suggest(trial: optuna.Trial, space: dict[str, Dimension]) -> dict[str, Any]:
    """One value per searched key, sampled by the study's sampler (or given by an enqueued trial)."""
    out = {}
    for key, dim in space.items():
        if dim.kind == "choice":
            out[key] = trial.suggest_categorical(key, list(dim.values))
        elif dim.kind == "int":
            out[key] = trial.suggest_int(key, *dim.values)
        else:
            out[key] = trial.suggest_float(key, *dim.values, log=dim.kind == "log")
    return out


def done(study: optuna.Study) -> int:
    """Trials of the study that count toward its budget: complete or pruned."""
    return len(study.get_trials(deepcopy=False, states=DONE))


def optimize(study: optuna.Study, objective: Callable[[optuna.Trial], float], trials: int, timeout_s: float) -> None:
    """Run trials until the study holds ``trials`` complete or pruned ones (counting earlier runs), or ``timeout_s`` ends."""
    stop = optuna.study.MaxTrialsCallback(trials, states=DONE)
    if done(study) < trials:
        study.optimize(objective, timeout=timeout_s or None, callbacks=[stop], gc_after_trial=True, catch=())


class Pruning(keras.callbacks.Callback):
    """Reports each epoch's validation accuracy to the trial; stops the fit when the pruner says so, or past ``max_fit_s``.

    ``on_epoch(epoch, logs)`` is called first (the MLflow child run logs the epoch there).
    """

    def __init__(self, trial: optuna.Trial, on_epoch: Callable[[int, dict], None], max_fit_s: float = 0.0):
        super().__init__()
        self.trial, self.on_epoch, self.max_fit_s = trial, on_epoch, max_fit_s
        self.pruned_at: int | None = None
        self.stopped_for_time = False
        self._start = 0.0

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.on_epoch(epoch + 1, logs)
        self.trial.report(float(logs["val_accuracy"]), epoch + 1)
        if self.trial.should_prune():
            self.pruned_at = epoch + 1
            self.model.stop_training = True
        elif self.max_fit_s and time.perf_counter() - self._start > self.max_fit_s:
            self.stopped_for_time = True
            self.model.stop_training = True


_STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
           TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}  # fmt: skip


def trials(study: optuna.Study) -> list[dict]:
    """Every trial as a plain mapping (:mod:`pipeline.core.tuning`): number, state, value, params, epochs, seconds."""
    return [
        {
            "number": t.number,
            "state": _STATES[t.state],
            "value": t.value,
            "params": t.params,
            "epochs": int(t.user_attrs.get("epochs", len(t.intermediate_values))),
            "seconds": float(t.user_attrs.get("fit_seconds", 0.0)),
            **({"retry_of": t.user_attrs["retry_of"]} if "retry_of" in t.user_attrs else {}),
            **({"retry_of": t.system_attrs["failed_trial"]} if "failed_trial" in t.system_attrs else {}),
        }
        for t in study.get_trials(deepcopy=False)
    ]


def importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA) over the complete trials; empty when there are too few to tell."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2 or len({tuple(sorted(t.params.items())) for t in complete}) < 2:
        return {}
    try:
        return {k: round(float(v), 4) for k, v in optuna.importance.get_param_importances(study).items()}
    except (ValueError, RuntimeError) as exc:  # e.g. every complete trial scored the same
        log.info("parameter importances not computed: %s", exc)
        return {}


def figures(study: optuna.Study, folder, name: str) -> dict[str, object]:
    """The optimisation history and, when there are importances, their chart: PNGs in ``folder``; title -> path."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as plots

    drawn = {"optimisation history": (plots.plot_optimization_history, f"{name}-history.png")}
    if importances(study):
        drawn["parameter importances"] = (plots.plot_param_importances, f"{name}-importances.png")
    out = {}
    folder.mkdir(parents=True, exist_ok=True)
    for title, (plot, file) in drawn.items():
        ax = plot(study)
        fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
        fig.savefig(folder / file, dpi=100)
        matplotlib.pyplot.close(fig)
        out[title] = folder / file
    return out


def dashboard_command(url: str, host: str, port: int) -> list[str]:
    """optuna-dashboard on ``host``:``port`` over the studies' storage."""
    import shutil
    import sys

    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).with_name("optuna-dashboard"))
    return [exe, url, "--host", host, "--port", str(port)]
