"""The environment variables the pipeline's processes hand to each other, named once: reading one needs no client library."""

from __future__ import annotations

from collections.abc import Mapping

PARENT_RUN = "FMNIST_PARENT_RUN_ID"  # set by whoever opened the MLflow parent run, for the stages it starts
CLONE = "FMNIST_CLONE"  # a worker's own clone of the project
WORKER = "FMNIST_WORKER"  # a worker's name in reports (default: the host name)
REGISTRY_LOCK_URL = "FMNIST_REGISTRY_LOCK_URL"  # the PostgreSQL that holds the registry lock shared by machines
REGISTRY_LEASE_S = "FMNIST_REGISTRY_LEASE_S"  # how long that lock's lease lasts
ALERTS_URL = "FMNIST_ALERTS_URL"  # where alerts go: one apprise URL (pipeline/adapters/alerts.py)
PREDICTIONS_URL = "FMNIST_PREDICTIONS_URL"  # a PostgreSQL for fmnist serve's prediction log (unset: data/predictions/)
TUNE_STORAGE = "FMNIST_TUNE_STORAGE"  # the studies' Optuna storage: the stack's PostgreSQL (unset: optuna.db)
TRACKING_URI = "MLFLOW_TRACKING_URI"

# Every `mlflow server` and `mlflow ui` this project starts: without MLflow's job runner (since 3.x it
# starts about eight huey consumers of ~250 MB each per server, for GenAI jobs this project has none of).
MLFLOW_SERVER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

# What makes a process a client of someone's stores: a server of the stack, a project sandbox and a
# temporary project of the bench start without them, so they use their own store and open their own parent.
CLIENT = (TRACKING_URI, "PREFECT_API_URL", PARENT_RUN, PREDICTIONS_URL, TUNE_STORAGE)


def without_clients(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` less :data:`CLIENT`: the environment of a process that must not write to the caller's stores."""
    return {k: v for k, v in env.items() if k not in CLIENT}
