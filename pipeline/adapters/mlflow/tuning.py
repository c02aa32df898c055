"""A study in MLflow: one parent run per study, one child run per trial, in the experiment ``fashion-mnist-tuning``.

The parent holds the space, the sampler and its seed, the pruner, the storage (without its
password), and the lineage (git commit, DVC data hash); each ``fmnist tune`` of the same study
reopens it, so a resumed study stays one run. Each trial is a child run made with the client and
an explicit ``mlflow.parentRunId`` (Optuna's MLflow callback nests its runs under whatever run is
active and loses the parent: optuna#5148): the trial's sampled params, ``val_accuracy`` per epoch
and the objective, its Optuna state as the tag ``optuna.state`` (complete, pruned, failed) and its
fit seconds. A trial that raises (Ctrl-C included) closes its run FAILED; one whose process was
killed is closed FAILED by :func:`close_orphans` at the study's end, or by the run that retries it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

from mlflow.entities import Metric, Param, RunTag

from pipeline.adapters.mlflow.lineage import lineage_tags
from pipeline.adapters.mlflow.store import client, experiment_id
from pipeline.adapters.paths import Paths
from pipeline.core.config import Params, Study

EXPERIMENT = "fashion-mnist-tuning"


def shown(url: str) -> str:
    """A storage URL without its password."""
    return re.sub(r"(://[^:@/]+):[^@/]*@", r"\1:***@", url)


def find_study_run(params: Params, name: str, url: str) -> str | None:
    """The parent run of the study ``name`` in the storage at ``url``, or None when no ``fmnist tune`` made one."""
    found = client().search_runs(
        [experiment_id(params, EXPERIMENT)], f"tags.`fmnist.study` = '{name}' and tags.`fmnist.storage` = '{shown(url)}'",
        max_results=1, order_by=["attributes.start_time DESC"],
    )  # fmt: skip
    return found[0].info.run_id if found else None


def study_run(params: Params, paths: Paths, name: str, spec: Study, url: str) -> str:
    """The study's parent run, reopened (RUNNING) if an earlier ``fmnist tune`` of it made one in this storage, else new."""
    c, exp = client(), experiment_id(params, EXPERIMENT)
    run_id = find_study_run(params, name, url)
    if run_id:
        c.update_run(run_id, status="RUNNING")
        return run_id
    tags = {"fmnist.role": "study", "fmnist.study": name, "fmnist.storage": shown(url)} | lineage_tags(paths)
    run = c.create_run(exp, run_name=f"study-{name}", tags=tags)
    space = {k: asdict(v) for k, v in spec.space.items()}
    settings = {"variant": spec.variant, "sampler": "TPE", "sampler.seed": spec.seed, "pruner": spec.pruner,
                "trials": spec.trials, "timeout_s": spec.timeout_s, "max_epochs": spec.max_epochs,
                "max_fit_s": spec.max_fit_s}  # fmt: skip
    c.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in settings.items()], synchronous=True)
    c.log_dict(run.info.run_id, {"space": space, **settings, "storage": shown(url)}, "study.json")
    return run.info.run_id


class TrialRun:
    """The MLflow run of one trial: :meth:`epoch` logs ``val_accuracy`` per epoch, :meth:`end` closes it with its state."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def epoch(self, epoch: int, logs: dict) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, epoch) for k, v in logs.items() if k in ("loss", "val_loss", "val_accuracy")]
        client().log_batch(self.run_id, metrics=metrics, synchronous=True)

    def end(self, state: str, seconds: float, epochs: int, value: float | None = None) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric("fit_seconds", seconds, now, 0), Metric("epochs_trained", epochs, now, 0)]
        metrics += [Metric("objective", value, now, 0)] if value is not None else []
        c = client()
        c.log_batch(self.run_id, metrics=metrics, tags=[RunTag("optuna.state", state)], synchronous=True)
        c.set_terminated(self.run_id, "FINISHED")


@contextmanager
def trial_run(params: Params, parent: str, number: int, settings: dict, attrs: dict, worker: str) -> Iterator[TrialRun]:
    """A child run of ``parent`` for trial ``number`` run by ``worker`` (tag ``fmnist.worker``); it closes FAILED (tag ``optuna.state=failed``) if the block raises
    anything but pruning, which the block reports by :meth:`TrialRun.end` itself."""
    c = client()
    tags = {"mlflow.parentRunId": parent, "fmnist.role": "trial", "fmnist.worker": worker, "optuna.trial": str(number),
            "optuna.state": "running"}  # fmt: skip
    tags |= {f"optuna.{k}": str(v) for k, v in attrs.items()}  # retry_of: the trial this one retries
    run = c.create_run(experiment_id(params, EXPERIMENT), run_name=f"trial-{number}", tags=tags)
    c.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in settings.items()], synchronous=True)
    try:
        yield TrialRun(run.info.run_id)
    except BaseException as exc:
        if client().get_run(run.info.run_id).info.status == "RUNNING":
            c.set_tag(run.info.run_id, "optuna.state", "failed")
            c.set_tag(run.info.run_id, "fmnist.failure", f"{type(exc).__name__}: {exc}"[:500])
            c.set_terminated(run.info.run_id, "FAILED")
        raise


def close_orphans(params: Params, parent: str, live: set[int]) -> list[str]:
    """Close FAILED the RUNNING trial runs of ``parent`` whose trial is not running any more (its process was killed)."""
    c = client()
    found = c.search_runs(
        [experiment_id(params, EXPERIMENT)], f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'"
    )
    closed = []
    for run in found:
        if int(run.data.tags.get("optuna.trial", -1)) not in live:
            c.set_tag(run.info.run_id, "optuna.state", "failed")
            c.set_tag(run.info.run_id, "fmnist.failure", "its process died mid-trial; closed when the study went on")
            c.set_terminated(run.info.run_id, "FAILED")
            closed.append(run.info.run_id)
    return closed


def end_study_run(run_id: str, status: str, summary: dict, files: list) -> None:
    """Log the study's figures (best value, trial counts), its report files, and close the parent run."""
    c, now = client(), int(time.time() * 1000)
    metrics = {"best_value": summary.get("best_value")} | {f"trials.{k}": v for k, v in summary["counts"].items()}
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None], synchronous=True)
    c.log_text(run_id, json.dumps(summary, indent=2), "summary.json")
    for path in files:
        c.log_artifact(run_id, str(path))
    c.set_terminated(run_id, status)


def confirm_run(params: Params, parent: str, label: str, seed: int, settings: dict, figures: dict, start_ms: int) -> str:
    """Record one confirmation run (``fmnist tune --confirm``), made when it has ended, as a FINISHED child of the study's
    run ``parent``: which settings (``label``), its seed, the settings over the variant, and its figures."""
    c = client()
    tags = {"mlflow.parentRunId": parent, "fmnist.role": "confirm", "fmnist.confirm": label, "fmnist.seed": str(seed)}
    run = c.create_run(experiment_id(params, EXPERIMENT), run_name=f"confirm-{label.replace(' ', '-')}-seed-{seed}",
                       tags=tags, start_time=start_ms)  # fmt: skip
    now = int(time.time() * 1000)
    c.log_batch(
        run.info.run_id, params=[Param(k, str(v)) for k, v in settings.items()],
        metrics=[Metric(k, float(v), now, 0) for k, v in figures.items()], synchronous=True,
    )  # fmt: skip
    c.set_terminated(run.info.run_id, "FINISHED", end_time=now)
    return run.info.run_id


def log_confirmation(parent: str, path) -> None:
    """Attach a study's confirmation figures (``reports/tune/<study>-confirm.json``) to its parent run."""
    client().log_artifact(parent, str(path))
