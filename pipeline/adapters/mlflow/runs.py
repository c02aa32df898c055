"""The parent run of a pipeline execution: opened, passed down, given the gate's decision and drift, closed.

One rule for parent runs: whoever starts a pipeline execution (``fmnist run``, a Prefect flow)
opens its parent run in a ``with pipeline_run(...)`` block, passes the id down to the stages in
``FMNIST_PARENT_RUN_ID``, and the block closes it FINISHED, or FAILED when it raises. Outside a
DVC experiment a stage never looks for or closes a parent; without one (a plain ``dvc repro``),
its variant run stands alone.

A DVC experiment (``dvc exp run``, queued or not) has no one to open a parent before its stages
start, so its stages share one parent named after the experiment: the first stage that logs
opens it (:func:`parent_run_id`, keyed by ``DVC_EXP_NAME`` under a lock), a failing variant
closes it FAILED, and ``register``, the last stage, closes it FINISHED (:func:`in_experiment`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from mlflow.entities import Metric

from pipeline.adapters.locks import exclusive
from pipeline.adapters.mlflow.lineage import experiment_tags, lineage_tags
from pipeline.adapters.mlflow.store import client, experiment_id
from pipeline.adapters.paths import Paths
from pipeline.core.config import Params
from pipeline.core.environment import PARENT_RUN


@dataclass
class ParentRun:
    """The parent run a ``with pipeline_run(...)`` block holds: its id, and tags to set when it closes."""

    id: str
    tags: dict[str, str] = field(default_factory=dict)


@contextmanager
def pipeline_run(
    params: Params, paths: Paths, name: str, tags: dict[str, str] | None = None, *, given: str | None = None
) -> Iterator[ParentRun]:
    """Open the parent run of one pipeline execution for the block; it closes FINISHED, or FAILED if the block raises.

    Args:
        given: a parent run the caller's caller opened (a retraining's, for the training flow inside it): used as it
            is, and left open for its owner to close.
    """
    if given:
        yield ParentRun(given)
        return
    run = ParentRun(start_pipeline_run(params, paths, name, tags))
    try:
        yield run
    except BaseException:
        end_pipeline_run(run.id, "FAILED", run.tags)
        raise
    end_pipeline_run(run.id, "FINISHED", run.tags)


@contextmanager
def in_experiment(params: Params, paths: Paths, *, last: bool = False) -> Iterator[None]:
    """A stage's block inside a DVC experiment: if it raises, the experiment's parent run closes FAILED (the experiment
    stops there); with ``last`` (``register``), it closes FINISHED when the block succeeds. Outside one: nothing."""
    try:
        yield
    except BaseException:
        end_experiment_run(params, paths, "FAILED")
        raise
    if last:
        end_experiment_run(params, paths, "FINISHED")


def parent_run_id(params: Params, paths: Paths) -> str | None:
    """The parent run of the pipeline execution this process belongs to.

    The one whoever started it opened (``FMNIST_PARENT_RUN_ID``); else, in a DVC experiment, the
    experiment's own (opened here by its first stage); else None.
    """
    if given := os.environ.get(PARENT_RUN):
        return given
    if not (exp_tags := experiment_tags()):
        return None
    with exclusive(paths.experiment_lock):  # one parent even if two stages of one experiment start at once
        opened_by = {"fmnist.opened_by": "dvc exp"}
        return _experiment_parent(params) or start_pipeline_run(params, paths, exp_tags["dvc.exp_name"], opened_by)


def _experiment_parent(params: Params) -> str | None:
    name = experiment_tags()["dvc.exp_name"].replace("'", "")
    found = client().search_runs(
        [experiment_id(params)],
        f"tags.`dvc.exp_name` = '{name}' and tags.`fmnist.role` = 'pipeline' and attributes.status = 'RUNNING'",
        max_results=1,
    )
    return found[0].info.run_id if found else None


def end_experiment_run(params: Params, paths: Paths, status: str) -> None:
    """Close this DVC experiment's own parent run (nothing when a caller opened the parent, or outside an experiment)."""
    if os.environ.get(PARENT_RUN) or not experiment_tags():
        return
    with exclusive(paths.experiment_lock):
        if run_id := _experiment_parent(params):
            end_pipeline_run(run_id, status)


def start_pipeline_run(params: Params, paths: Paths, name: str, tags: dict[str, str] | None = None) -> str:
    """Open the parent run of one pipeline execution (tag ``fmnist.role=pipeline``, with the lineage of ``paths``)."""
    c, exp = client(), experiment_id(params)
    run = c.create_run(exp, run_name=name, tags={"fmnist.role": "pipeline"} | lineage_tags(paths) | (tags or {}))
    return run.info.run_id


def end_pipeline_run(run_id: str, status: str = "FINISHED", tags: dict[str, str] | None = None) -> None:
    """Tag and close a parent run opened by :func:`start_pipeline_run` (status FINISHED or FAILED)."""
    c = client()
    for key, value in (tags or {}).items():
        c.set_tag(run_id, key, value)
    c.set_terminated(run_id, status)


def record_promotion(run_id: str, promotion: dict) -> None:
    """Put the gate's decision on a (parent) run: ``promotion.json`` and the tag ``fmnist.decision``."""
    c = client()
    c.log_dict(run_id, promotion, "promotion.json")
    c.set_tag(run_id, "fmnist.decision", f"{promotion['variant']} v{promotion['challenger_version']}: {promotion['decision']}")


def log_drift(run_id: str, metrics: dict[str, float], report: dict, figure) -> None:
    """Log the drift figures of new data to a (parent) run: metrics, ``drift/drift.json``, ``drift/drift.png``."""
    c = client()
    now = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()], synchronous=True)
    c.log_dict(run_id, report, "drift/drift.json")
    c.log_figure(run_id, figure, "drift/drift.png")


def log_monitoring(params: Params, window: dict, metrics: dict[str, float], end_ms: int, figure=None) -> str:
    """One window of ``fmnist monitor`` as a FINISHED run of the experiment ``monitor.experiment``: its figures as metrics
    stamped at the window's end (so the UI charts them over time), the window as ``monitor.json``, and the drift figure.
    A failure on the way closes the run FAILED."""
    c = client()
    run = c.create_run(
        experiment_id(params, params.monitor.experiment), start_time=end_ms, run_name=f"window-{window['end']}",
        tags={"fmnist.role": "monitor", "fmnist.drifted": str(window["drifted"]).lower(),
              "fmnist.champion": str(window["champion"]), "mlflow.note.content": window["message"]},
    )  # fmt: skip
    try:
        c.log_batch(run.info.run_id, metrics=[Metric(k, float(v), end_ms, 0) for k, v in metrics.items()], synchronous=True)
        c.log_dict(run.info.run_id, window, "monitor.json")
        if figure is not None:
            c.log_figure(run.info.run_id, figure, "drift/drift.png")
    except BaseException:
        c.set_terminated(run.info.run_id, "FAILED")
        raise
    c.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
