"""The parent run of a pipeline execution: opened, passed down, given the gate's decision and drift, closed.

One rule for parent runs: whoever starts a pipeline execution (``fmnist run``, a Prefect flow)
opens its parent run with :func:`start_pipeline_run`, passes the id down to the stages in
``FMNIST_PARENT_RUN_ID`` and closes it with :func:`end_pipeline_run`. A stage never looks for
or closes a parent; without one (a plain ``dvc repro``), its variant run stands alone.
"""

from __future__ import annotations

import os
import time

from mlflow.entities import Metric

from pipeline.adapters.mlflow.lineage import lineage_tags
from pipeline.adapters.mlflow.store import client, experiment_id
from pipeline.core.config import Params

PARENT_ENV = "FMNIST_PARENT_RUN_ID"  # set by whoever opened the parent run, for the stages it starts


def parent_run_id() -> str | None:
    """The parent run of the pipeline execution this process belongs to, if whoever started it opened one."""
    return os.environ.get(PARENT_ENV) or None


def start_pipeline_run(params: Params, name: str, tags: dict[str, str] | None = None) -> str:
    """Open the parent run of one pipeline execution (tag ``fmnist.role=pipeline``, with lineage)."""
    c, exp = client(), experiment_id(params)
    run = c.create_run(exp, run_name=name, tags={"fmnist.role": "pipeline"} | lineage_tags() | (tags or {}))
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
