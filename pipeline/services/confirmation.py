"""``fmnist tune STUDY --confirm [N]``: the study's best trial against the hand-tuned settings, on seeds the search never used.

A best trial is picked out of many on the validation split, with the one seed every trial trains
with (``base.seed``): an optimistic figure. Here the best complete trial's settings and the study's
reference (its variant as ``params.yaml`` has it, with the study's ``reference`` settings over it)
each train on the trials' data (all of it, or ``--limit``) with the seeds ``base.seed + 1`` to
``base.seed + N``, and are scored as ``evaluate`` scores them (TTA included) on the validation split
and on the test split, which no trial reads. Each run is recorded, once it has ended, as a child of
the study's MLflow run (tag ``fmnist.role=confirm``); the figures go to
``reports/tune/<study>-confirm.json`` and into the study's report.
"""

from __future__ import annotations

import datetime
import logging
import statistics
import time

from pipeline.adapters import host, studies
from pipeline.adapters.files import load_split, write_json
from pipeline.adapters.mlflow import tuning as tracking
from pipeline.adapters.paths import Paths
from pipeline.core.config import Params
from pipeline.core.errors import ConfigError
from pipeline.core.splits import subset
from pipeline.services import tuning

log = logging.getLogger(__name__)


def confirm(params: Params, paths: Paths, name: str, seeds: int | None = None, **overrides) -> dict:
    """Train the best trial's and the reference's settings on ``seeds`` unseen seeds (default: the study's
    ``confirm_seeds``); write and return the figures, and put them into the study's report."""
    p = tuning.plan(params, paths, name, **overrides)
    parent = tracking.find_study_run(params, name, p.url)
    if parent is None:
        raise ConfigError(f"study {name!r} has no run in this storage yet: run `fmnist tune {name}` first")
    best = tuning.best_settings(params, paths, name)
    n = seeds or p.spec.confirm_seeds
    candidates = {"reference": p.spec.reference, f"trial {best['trial']}": best["settings"]}
    from pipeline.core import training  # TensorFlow: after the entry point set its log level
    from pipeline.core.inference import accuracy

    train = subset(*load_split(paths.split("train")), p.base.limit, params.base.seed)
    val, test = load_split(paths.split("val")), load_split(paths.split("test"))
    runs = []
    for label, settings in candidates.items():
        cfg, tta = tuning.trial_config(params, p, settings)
        for seed in range(params.base.seed + 1, params.base.seed + 1 + n):
            start_ms, start = int(time.time() * 1000), time.perf_counter()
            model, history = training.fit(train, val, cfg, seed=seed)
            figures = {"fit_seconds": round(time.perf_counter() - start, 1), "epochs_trained": len(history["loss"]),
                       "val_accuracy": accuracy(model, *val, tta), "test_accuracy": accuracy(model, *test, tta)}  # fmt: skip
            tracking.confirm_run(params, parent, label, seed, settings, figures, start_ms)
            runs.append({"settings": label, "seed": seed, **figures})
            log.info("%s %s, seed %d: test %.4f, val %.4f, %.0f s", name, label, seed, figures["test_accuracy"],
                     figures["val_accuracy"], figures["fit_seconds"])  # fmt: skip
    result = {
        "study": name, "trial": best["trial"], "trial_value": best["value"], "seeds": n, "train_images": len(train[1]),
        "candidates": {label: {"settings": settings, "tta": tuning.trial_config(params, p, settings)[1],
                               **spread([r for r in runs if r["settings"] == label])}
                       for label, settings in candidates.items()},
        "runs": runs, "machine": host.name(), "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }  # fmt: skip
    write_json(paths.tune_confirmation(name), result)
    tracking.log_confirmation(parent, paths.tune_confirmation(name))
    tuning.report(paths, name, p.spec, studies.open_study(p.name, p.spec, p.url, p.cap), p.cap)
    return result


def spread(runs: list[dict]) -> dict:
    """Test accuracy over the seeds (mean, standard deviation, lowest, highest) and the mean fit seconds."""
    tests = [r["test_accuracy"] for r in runs]
    return {
        "test_mean": statistics.fmean(tests),
        "test_sd": statistics.stdev(tests) if len(tests) > 1 else 0.0,
        "test_min": min(tests),
        "test_max": max(tests),
        "val_mean": statistics.fmean(r["val_accuracy"] for r in runs),
        "fit_seconds_mean": statistics.fmean(r["fit_seconds"] for r in runs),
    }
