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
import time

from pipeline.adapters import host, studies
from pipeline.adapters.files import atomic_write_text, load_split, write_json
from pipeline.adapters.mlflow import tuning as tracking
from pipeline.adapters.paths import Paths
from pipeline.core.config import Params, Study, with_settings
from pipeline.core.errors import ConfigError
from pipeline.core.splits import subset
from pipeline.core.tuning import render, summarize

log = logging.getLogger(__name__)


def study_spec(params: Params, name: str) -> Study:
    if name not in params.tune:
        known = ", ".join(params.tune) or "none"
        raise ConfigError(f"unknown study {name!r}; params.yaml's tune: section defines: {known}")
    return params.tune[name]


def tune(
    params: Params, paths: Paths, name: str, *, trials: int | None = None, timeout_s: float | None = None,
    limit: int | None = None, epochs: int | None = None,
) -> dict:  # fmt: skip
    """Run the study ``name`` until it holds its trials (``--trials`` overrides) or its time is up; return its summary."""
    from pipeline.core import training  # TensorFlow: after the entry point set its log level
    from pipeline.core.inference import accuracy

    spec = study_spec(params, name)
    spec = dataclasses.replace(spec, trials=trials or spec.trials, timeout_s=spec.timeout_s if timeout_s is None else timeout_s)
    base = params.variant(spec.variant)
    cap = epochs or spec.max_epochs or base.epochs
    base = dataclasses.replace(base, epochs=epochs or min(base.epochs, cap), limit=base.limit if limit is None else limit)
    train = subset(*load_split(paths.split("train")), base.limit, params.base.seed)
    vx, vy = load_split(paths.split("val"))
    url = studies.storage_url(paths)
    study = studies.open_study(name, spec, url, cap)
    again = studies.retry_interrupted(study)
    if again:
        log.info("%s: trial(s) %s were cut short; their parameters run again", name, ", ".join(map(str, again)))
    parent = tracking.study_run(params, paths, name, spec, url)
    tta_of_variant = params.evaluate.tta_of(spec.variant)

    def objective(trial) -> float:
        settings = studies.suggest(trial, spec.space)
        cfg = with_settings(base, {"epochs": base.epochs, **settings}, f"tune.{name}")  # an epochs choice overrides the cap
        cfg = dataclasses.replace(cfg, epochs=min(cfg.epochs, cap))
        tta = tta_of_variant if cfg.augment.flip or "flip" not in tta_of_variant else "none"
        attrs = {} if (retried := studies.retry_of(trial)) is None else {"retry_of": retried}
        with tracking.trial_run(params, parent, trial.number, settings, attrs) as run:
            prune = studies.Pruning(trial, run.epoch, spec.max_fit_s)
            start = time.perf_counter()
            model, history = training.fit(train, (vx, vy), cfg, seed=params.base.seed, callbacks=[prune])
            seconds = round(time.perf_counter() - start, 1)
            trial.set_user_attr("epochs", len(history["loss"]))
            trial.set_user_attr("fit_seconds", seconds)
            if prune.pruned_at is not None:
                run.end("pruned", seconds, len(history["loss"]))
                log.info("%s trial %d: pruned after epoch %d (%.0f s)", name, trial.number, prune.pruned_at, seconds)
                raise studies.Pruned()
            value = accuracy(model, vx, vy, tta)
            run.end("complete", seconds, len(history["loss"]), value)
            log.info(
                "%s trial %d: val_accuracy %.4f in %d epochs, %.0f s", name, trial.number, value, len(history["loss"]), seconds
            )
            return value

    status = "FAILED"
    try:
        studies.optimize(study, objective, spec.trials, spec.timeout_s)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        running = {t["number"] for t in studies.trials(study) if t["state"] == "running"}
        tracking.close_orphans(params, parent, running)
        summary, files = report(paths, name, spec, study, cap)
        tracking.end_study_run(parent, status, summary, files)
    return summary | {"mlflow_run_id": parent, "storage": tracking.shown(url)}


def report(paths: Paths, name: str, spec: Study, study, cap: int) -> tuple[dict, list]:
    """Write ``reports/tune/<name>.{md,json}`` and the figures; return the summary and the files written."""
    folder = paths.tune_reports
    summary = summarize(name, spec.variant, studies.trials(study), cap, studies.importances(study))
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
