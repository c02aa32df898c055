"""Optuna studies: their storage, sampler and pruner, what a trial samples, and pruning inside a Keras fit.

Storage: ``FMNIST_TUNE_STORAGE`` when set (the team stack sets its PostgreSQL, database ``optuna``),
else the project's git-ignored ``optuna.db`` (SQLite). Both through Optuna's ``RDBStorage`` with a
heartbeat: a trial whose process died stops beating, the next trial started on the study marks it
FAIL and enqueues its parameters again (``RetryHeartbeatStaleTrialCallback``), so a killed worker's trial
is retried. On PostgreSQL, connections are checked before use and recycled (``pool_pre_ping``,
``pool_recycle``): a connection the server dropped while a trial trained for minutes is replaced,
not an error (optuna#1347, #5600). While the database does not answer at all (a restart), a trial's
writes wait for it (:func:`persist`) and its heartbeat goes on beating, so the trial finishes.

The only module that imports Optuna.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from pipeline.adapters.paths import Paths
from pipeline.core.config import Dimension, Study
from pipeline.core.environment import TUNE_STORAGE

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, the matplotlib plots
HEARTBEAT_S, GRACE_S, RETRIES = 10, 30, 2
DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts toward a study's trials (with diverged ones: _counts)
Pruned = optuna.TrialPruned


def storage_url(paths: Paths) -> str:
    """The studies' storage URL: ``FMNIST_TUNE_STORAGE``, or the project's ``optuna.db``."""
    return os.environ.get(TUNE_STORAGE) or f"sqlite:///{paths.optuna_db}"


UNREACHABLE = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)  # the database down, or restarting
OUTAGE_S = 300  # how long a trial's writes, and the loop of trials, wait for the storage to answer again


def persist(call: Callable[[], Any], what: str) -> Any:
    """``call()``, a write to the storage, tried again every few seconds for up to :data:`OUTAGE_S` while the database
    does not answer (a PostgreSQL restart): the trial in flight goes on instead of failing."""
    deadline = time.monotonic() + OUTAGE_S
    while True:
        try:
            return call()
        except UNREACHABLE as exc:
            if time.monotonic() > deadline:
                raise
            reason = str(exc.__cause__ or exc).strip().splitlines()[0]  # Optuna's own message guesses at bad data
            log.warning("the study's storage did not answer (%s); %s again in 3 s", reason, what)
            time.sleep(3)


class _Storage(RDBStorage):
    """Optuna's ``RDBStorage`` whose heartbeat outlives an outage: a beat the database missed is logged, and the thread
    beats on (Optuna's would die, and the live trial would be taken for a dead process's once the database is back)."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except UNREACHABLE as exc:
            reason = str(exc.__cause__ or exc).strip().splitlines()[0]
            log.warning("trial %d: a heartbeat did not reach the storage (%s); next in %d s", trial_id, reason, HEARTBEAT_S)


def storage(url: str) -> RDBStorage:
    """Optuna's storage at ``url``, with the heartbeat that finds and retries the trials of dead processes."""
    engine = {} if url.startswith("sqlite") else {"pool_pre_ping": True, "pool_recycle": 300}
    return _Storage(
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

    A retry is not retried: a trial that fails twice on the same parameters fails for a reason; nor is a trial whose
    training diverged (user attribute ``diverged``): its parameters are at fault.
    Returns the numbers of the trials enqueued again.
    """
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials} | {t.user_attrs.get("retry_of") for t in trials}
    again = []
    for t in trials:
        is_retry = "failed_trial" in t.system_attrs or "retry_of" in t.user_attrs
        if t.state == TrialState.FAIL and t.number not in retried and not is_retry and "diverged" not in t.user_attrs:
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


def set_attrs(trial: optuna.Trial, **attrs: Any) -> None:
    """Record ``attrs`` as the trial's user attributes (through an outage of the storage)."""
    for key, value in attrs.items():
        persist(functools.partial(trial.set_user_attr, key, value), f"the trial's {key}")


def done(study: optuna.Study) -> int:
    """Trials of the study that count toward its budget: complete or pruned."""
    return sum(map(_counts, study.get_trials(deepcopy=False)))


def _counts(t: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts toward the study's budget: complete, pruned, or failed because its settings diverged
    (not retried: another try would diverge again)."""
    return t.state in DONE or (t.state == TrialState.FAIL and "diverged" in t.user_attrs)


def optimize(
    study: optuna.Study, objective: Callable[[optuna.Trial], float], trials: int, timeout_s: float,
    poll_s: float = HEARTBEAT_S, catch: tuple[type[Exception], ...] = (),
) -> list[int]:  # fmt: skip
    """Run trials, one at a time, until the study holds ``trials`` complete or pruned ones, or ``timeout_s`` ends.

    The count is the study's, over every process that runs it (earlier ``fmnist tune`` runs, the
    stack's workers). A process whose remaining budget is held by trials running elsewhere waits
    for them instead of starting more: if one's process died, the heartbeat marks it FAIL after
    :data:`GRACE_S`, its parameters are enqueued again, and the next process to look runs them.
    A trial that raises one of ``catch`` fails and the loop goes on; anything else ends it.
    Returns the numbers of the trials this process ran.
    """
    deadline = time.monotonic() + timeout_s if timeout_s else float("inf")
    ran: list[int] = []
    while time.monotonic() < deadline:
        now = persist(lambda: _trials_now(study), "the study's trials read")
        states = [t.state for t in now]
        finished, running = sum(map(_counts, now)), states.count(TrialState.RUNNING)
        if finished >= trials:
            break
        if finished + running >= trials and TrialState.WAITING not in states:
            time.sleep(poll_s)  # the last trials run elsewhere: wait for them to end, or to be found dead
            continue
        try:
            study.optimize(objective, n_trials=1, gc_after_trial=True, catch=catch, callbacks=[lambda _, t: ran.append(t.number)])
        except UNREACHABLE as exc:  # the trial's end did not reach the storage: it stays RUNNING, is found stale, runs again
            log.warning("a trial's end did not reach the study's storage (%s); going on", exc)
    return ran


def _trials_now(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a dead process's trial: FAIL, and enqueued again
    return study.get_trials(deepcopy=False)


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
        persist(lambda: self.trial.report(float(logs["val_accuracy"]), epoch + 1), f"epoch {epoch + 1}'s report")
        if persist(self.trial.should_prune, "the pruner's question"):
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
