"""Where the MLflow store is, a client on it, and the project's experiment.

Store: ``MLFLOW_TRACKING_URI`` when set, otherwise ``sqlite:///<repo>/mlflow.db`` with artifacts in
``<repo>/mlartifacts``, where ``<repo>`` is the main repository root even from a ``dvc exp run
--temp`` copy, so every experiment lands in one store. This is the one module below the entry points
that reads the working directory (the others are given a ``Paths``): the store, like MLflow's own
tracking URI, is the process's.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.adapters.locks import exclusive
from pipeline.adapters.paths import Paths
from pipeline.core.config import Params


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the absolute SQLite store at the repository root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Paths().mlflow_db}"


def is_local() -> bool:
    return tracking_uri().startswith("sqlite:")


_opened: set[str] = set()  # stores this process has created or checked


def client() -> MlflowClient:
    """A client on :func:`tracking_uri` (also made the fluent API's URI); a new SQLite store is created under a lock.

    MLflow sets up a new SQLite store when a client first opens it; several processes doing that
    at once (the parallel stages of ``dvc exp run --queue``, workers) race in its schema
    migrations and fail with alembic's "expected to match one row". The lock beside the file
    makes the first one create it and the others find it done.
    """
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri in _opened or not uri.startswith("sqlite:///"):
        return MlflowClient()
    db = Path(uri.removeprefix("sqlite:///"))
    with exclusive(db.with_name(db.name + ".lock")):
        c = MlflowClient()  # creates or migrates the store
    _opened.add(uri)
    return c


def experiment_id(params: Params, name: str | None = None) -> str:
    """The experiment named in params (or ``name``), created (with artifacts beside a local store) if it does not exist."""
    c, name = client(), name or params.tracking.experiment
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = Paths().mlartifacts.as_uri() if is_local() else None
    try:
        return c.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created by a concurrent process meanwhile
        return c.get_experiment_by_name(name).experiment_id
