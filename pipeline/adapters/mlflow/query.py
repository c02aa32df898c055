"""Reading runs back: one run's name, status and tags, the runs under a parent, the runs of a DVC experiment."""

from __future__ import annotations

from mlflow.exceptions import MlflowException

from pipeline.adapters.mlflow.store import client, experiment_id
from pipeline.core.config import Params


def run_record(run_id: str) -> dict | None:
    """``{"run_id", "name", "status", "tags"}`` of a run, or None if the store has no such run."""
    try:
        run = client().get_run(run_id)
    except MlflowException:
        return None
    return {"run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status, "tags": dict(run.data.tags)}


def _search(params: Params, filter_string: str) -> list[dict]:
    found = client().search_runs([experiment_id(params)], filter_string, order_by=["attributes.start_time ASC"])
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status, "tags": dict(r.data.tags)} for r in found]


def child_runs(params: Params, parent_id: str) -> list[dict]:
    """The runs under a parent run, oldest first."""
    return _search(params, f"tags.`mlflow.parentRunId` = '{parent_id}'")


def experiment_runs(params: Params, exp_name: str) -> list[dict]:
    """Every run tagged with DVC experiment ``exp_name`` (its parent and its variant runs), oldest first."""
    return _search(params, f"tags.`dvc.exp_name` = '{exp_name.replace(chr(39), '')}'")
