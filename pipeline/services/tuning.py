"""``fmnist tune``'s use case: run an Optuna study over a variant's train settings, tracked in MLflow, and report it.

Each trial trains the study's variant with the sampled settings (:func:`pipeline.core.training.fit`,
the pipeline's own training) on the prepared training split, or a seeded subset of it (``--limit``,
else the variant's ``limit``), and scores it on the validation split as ``evaluate`` does, with the
variant's test-time augmentation (none when the sampled settings turn flips off). The test set is never read. Each epoch's
validation accuracy is reported to the pruner; a trial past ``max_fit_s`` stops at that epoch and
is scored as it stands.

The study resumes where it stopped: the trials already complete or pruned count toward
``trials``, and the failed trial a Ctrl-C left behind runs again with its parameters. At the end,
``reports/tune/<study>.md`` and ``.json`` (and the figures) are written and logged to the parent
run. A study never registers a model: ``--apply`` writes its best settings into ``params.yaml``
as a variant, and ``dvc repro`` and the gate decide the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time

from pipeline.adapters import host, studies
from pipeline.adapters.files import atomic_write_text, load_split, read_json, write_json
from pipeline.adapters.mlflow import tuning as tracking
from pipeline.adapters.paths import Paths
from pipeline.core.callbacks import TrainingDiverged
from pipeline.core.config import Params, Study, Train, with_settings
from pipeline.core.environment import WORKER
from pipeline.core.errors import ConfigError
from pipeline.core.splits import subset
from pipeline.core.tuning import render, summarize

log = logging.getLogger(__name__)


def study_spec(params: Params, name: str) -> Study:
    if name not in params.tune:
        known = ", ".join(params.tune) or "none"
        raise ConfigError(f"unknown study {name!r}; params.yaml's tune: section defines: {known}")
    return params.tune[name]


@dataclasses.dataclass(frozen=True)
class Plan:
    """A study as one ``fmnist tune`` runs it: the spec with the command's overrides, the variant it trains, the epoch cap."""

    name: str
    spec: Study
    base: Train
    cap: int
    url: str


def plan(
    params: Params, paths: Paths, name: str, *, trials: int | None = None, timeout_s: float | None = None,
    limit: int | None = None, epochs: int | None = None,
) -> Plan:  # fmt: skip
    """The study ``name`` with ``--trials``, ``--timeout``, ``--limit`` and ``--epochs`` applied, in its storage."""
    spec = study_spec(params, name)
    spec = dataclasses.replace(spec, trials=trials or spec.trials, timeout_s=spec.timeout_s if timeout_s is None else timeout_s)
    base = params.variant(spec.variant)
    cap = epochs or spec.max_epochs or base.epochs
    base = dataclasses.replace(base, epochs=epochs or min(base.epochs, cap), limit=base.limit if limit is None else limit)
    return Plan(name, spec, base, cap, studies.storage_url(paths))


def tune(params: Params, paths: Paths, name: str, **overrides) -> dict:
    """Run the study ``name`` here until it holds its trials (``--trials`` overrides) or its time is up; return its summary."""
    p = plan(params, paths, name, **overrides)
    study, parent = begin(params, paths, p)
    status = "FAILED"
    try:
        run_trials(params, paths, p, study, parent)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        summary = finish(params, paths, p, study, parent, status)
    return summary


def begin(params: Params, paths: Paths, p: Plan):
    """Open the study (created if new), enqueue again what a Ctrl-C cut short, and open its parent run; (study, run id)."""
    study = studies.open_study(p.name, p.spec, p.url, p.cap)
    again = studies.retry_interrupted(study)
    if again:
        log.info("%s: trial(s) %s were cut short; their parameters run again", p.name, ", ".join(map(str, again)))
    return study, tracking.study_run(params, paths, p.name, p.spec, p.url)


def join(params: Params, paths: Paths, name: str, parent: str, **overrides) -> list[int]:
    """Run trials of the study ``name`` (begun elsewhere, under the MLflow run ``parent``) until it holds its trials;
    return the numbers of those run here. What a worker of the pool does."""
    p = plan(params, paths, name, **overrides)
    return run_trials(params, paths, p, studies.open_study(p.name, p.spec, p.url, p.cap), parent)


def run_trials(params: Params, paths: Paths, p: Plan, study, parent: str) -> list[int]:
    """Train and score trials of ``study`` here, each a child run of ``parent``; the numbers of those run."""
    from pipeline.core import training  # TensorFlow: after the entry point set its log level
    from pipeline.core.inference import accuracy

    train = subset(*load_split(paths.split("train")), p.base.limit, params.base.seed)
    vx, vy = load_split(paths.split("val"))
    worker = os.environ.get(WORKER) or socket.gethostname()

    def objective(trial) -> float:
        settings = studies.suggest(trial, p.spec.space)
        cfg, tta = trial_config(params, p, settings)
        attrs = {} if (retried := studies.retry_of(trial)) is None else {"retry_of": retried}
        if retried is not None:  # the run of a trial whose process died: closed FAILED by the trial that retries it
            tracking.close_orphans(params, parent, running(study))
        studies.set_attrs(trial, worker=worker)
        with tracking.trial_run(params, parent, trial.number, settings, attrs, worker) as run:
            prune = studies.Pruning(trial, run.epoch, p.spec.max_fit_s)
            start = time.perf_counter()
            try:
                model, history = training.fit(train, (vx, vy), cfg, seed=params.base.seed, callbacks=[prune])
            except TrainingDiverged as exc:  # the settings' fault: the trial fails, is not run again, and the study goes on
                studies.set_attrs(trial, diverged=str(exc))
                raise
            seconds = round(time.perf_counter() - start, 1)
            studies.set_attrs(trial, epochs=len(history["loss"]), fit_seconds=seconds)
            if prune.pruned_at is not None:
                run.end("pruned", seconds, len(history["loss"]))
                log.info("%s trial %d: pruned after epoch %d (%.0f s)", p.name, trial.number, prune.pruned_at, seconds)
                raise studies.Pruned()
            value = accuracy(model, vx, vy, tta)
            run.end("complete", seconds, len(history["loss"]), value)
            log.info(
                "%s trial %d: val_accuracy %.4f in %d epochs, %.0f s", p.name, trial.number, value, len(history["loss"]), seconds
            )
            return value

    return studies.optimize(study, objective, p.spec.trials, p.spec.timeout_s, catch=(TrainingDiverged,))


def trial_config(params: Params, p: Plan, settings: dict) -> tuple[Train, str]:
    """The settings a trial trains with: the study's variant with ``settings`` over it, its epochs capped; and the
    test-time augmentation it is scored with (the variant's, or none when the settings turned flips off)."""
    cfg = with_settings(p.base, {"epochs": p.base.epochs, **settings}, f"tune.{p.name}")  # an epochs choice overrides the cap
    cfg = dataclasses.replace(cfg, epochs=min(cfg.epochs, p.cap))
    tta = params.evaluate.tta_of(p.spec.variant)
    return cfg, tta if cfg.augment.flip or "flip" not in tta else "none"


def remaining(p: Plan, study) -> int:
    """How many more complete or pruned trials the study needs."""
    return max(0, p.spec.trials - studies.done(study))


def running(study) -> set[int]:
    return {t["number"] for t in studies.trials(study) if t["state"] == "running"}


def finish(params: Params, paths: Paths, p: Plan, study, parent: str, status: str) -> dict:
    """Close the runs of trials whose process died, write the report, close the parent run ``status``; the summary."""
    tracking.close_orphans(params, parent, running(study))
    summary, files = report(paths, p.name, p.spec, study, p.cap)
    tracking.end_study_run(parent, status, summary, files)
    return summary | {"mlflow_run_id": parent, "storage": tracking.shown(p.url)}


def report(paths: Paths, name: str, spec: Study, study, cap: int) -> tuple[dict, list]:
    """Write ``reports/tune/<name>.{md,json}`` and the figures, with the best trial's confirmation (``--confirm``) when
    there is one for it; return the summary and the files written."""
    folder = paths.tune_reports
    summary = summarize(name, spec.variant, studies.trials(study), cap, studies.importances(study))
    confirmed = read_json(paths.tune_confirmation(name))
    best = summary["best"][0]["number"] if summary["best"] else None
    summary["confirmation"] = confirmed if confirmed and confirmed["trial"] == best else None  # else another best's
    figures = studies.figures(study, folder, name)
    write_json(folder / f"{name}.json", summary | {"machine": host.cpu()})
    atomic_write_text(folder / f"{name}.md", render(summary, {t: p.name for t, p in figures.items()}, host.name()))
    return summary, [folder / f"{name}.md", folder / f"{name}.json", *figures.values()]


def best_settings(params: Params, paths: Paths, name: str) -> dict:
    """The best complete trial's settings of the study ``name`` (dotted keys), from its storage."""
    spec = study_spec(params, name)
    study = studies.open_study(name, spec, studies.storage_url(paths), spec.max_epochs or params.variant(spec.variant).epochs)
    complete = [t for t in studies.trials(study) if t["state"] == "complete"]
    if not complete:
        raise ConfigError(f"study {name!r} has no complete trial yet: run `fmnist tune {name}` first")
    best = max(complete, key=lambda t: (t["value"], -t["seconds"]))
    return {"trial": best["number"], "value": best["value"], "settings": best["params"], "epochs": best["epochs"]}
