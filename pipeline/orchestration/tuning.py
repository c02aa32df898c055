"""A study on other machines: ``fmnist tune STUDY --workers POOL`` runs its trials on the workers of a Prefect work pool.

The coordinator (:func:`tune_flow`, here) opens the study in the shared storage (the stack's
PostgreSQL) and its MLflow parent run, pushes the prepared data to the default DVC remote, and
starts one run of the deployment ``tune-trials/tune-trials`` per online worker of the pool. Each
worker runs :func:`trials_flow` in its own clone (the pull step of :mod:`pipeline.orchestration.workers`):
it checks out the coordinator's commit, pulls the prepared data and runs trials of the study
(:func:`pipeline.services.tuning.join`) until the study, shared by all of them through Optuna's
storage, holds its trials. N workers run N trials at once; they share nothing but the servers,
git and the DVC remote.

A worker that dies mid-trial stops two heartbeats. Optuna's: after 30 s, the next worker to look
marks its trial FAIL, enqueues the same parameters again, runs them and closes the dead trial's
MLflow run FAILED. Prefect's: the automation of the workers marks the dead flow run CRASHED, and
the coordinator starts another one if the study still needs trials. When every flow run has
ended, the coordinator writes the report and closes the parent run.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.states import Cancelling

from pipeline.adapters import dvc, workspace
from pipeline.adapters.paths import Paths
from pipeline.adapters.process import load_tensorflow
from pipeline.core.config import load_params
from pipeline.core.environment import TUNE_STORAGE, WORKER
from pipeline.core.errors import DataError, PipelineError
from pipeline.orchestration import workers
from pipeline.services import tuning

FLOW = "tune-trials"  # run as "tune-trials/tune-trials"; workers.SILENT names it


class NoWorkers(PipelineError):
    """The pool has no online worker to run trials, or the study's storage is not one they can share."""


class TrialsFailed(PipelineError):
    """A worker's run of trials failed (or crashed more often than ``retrain.retries``)."""


@flow(name=FLOW, flow_run_name="{study}")
def trials_flow(study: str, commit: str, prepared: dict, parent_run_id: str, overrides: dict) -> dict:
    """Trials of ``study`` in this worker's clone at ``commit``, on the coordinator's prepared data, until it holds its trials.

    Args:
        prepared: the coordinator's ``dvc.lock`` entry for ``prepare`` (which data, by hash).
        parent_run_id: the study's MLflow parent run.
        overrides: the command's ``trials``, ``timeout_s``, ``limit`` and ``epochs``.
    """
    name = os.environ.get(WORKER) or socket.gethostname()
    seconds = {"checkout": workers.checkout(commit, name), "pull": workers.pull(prepared)}
    load_tensorflow()
    start = time.perf_counter()
    ran = tuning.join(load_params(), Paths(), study, parent_run_id, **overrides)
    seconds["trials"] = time.perf_counter() - start
    record = {"worker": name, "trials": " ".join(map(str, ran))} | {f"{k}_s": round(v, 1) for k, v in seconds.items()}
    create_table_artifact([record], key=f"tune-{study}".replace("_", "-").lower(), description=f"{study} on {name}")
    get_run_logger().info("%s on %s: trials %s", study, name, record)
    return record


def refuse_unshared(url: str) -> None:
    """A study's storage that the workers cannot share (this machine's SQLite file) is refused, naming the fix."""
    if url.startswith("sqlite"):
        raise NoWorkers(f"the study's storage is this machine's {url}, which the workers cannot share: set "
                        f"{TUNE_STORAGE} to the stack's PostgreSQL (`eval \"$(fmnist stack env)\"` does)")  # fmt: skip


def _online(client, pool: str) -> list[str]:
    """The names of the pool's online workers."""
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus
    from prefect.exceptions import ObjectNotFound

    try:
        found = client.read_workers_for_work_pool(pool, worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"])))
    except ObjectNotFound:
        found = []
    if not found:
        raise NoWorkers(f"no worker of the pool {pool} is online on the Prefect server at {client.api_url}: "
                        "`fmnist stack up --workers N` starts N of them, and `eval \"$(fmnist stack env)\"` points here")  # fmt: skip
    return sorted(w.name for w in found)


@flow(name="tune", flow_run_name="{study} on {pool}")
def tune_flow(study: str, pool: str, overrides: dict, poll_s: float = 2.0) -> dict:
    """Run the study ``study`` on the workers of ``pool``, one trial per online worker at a time; return its summary.

    Raises:
        WrongCommit: this checkout has changes the workers cannot see.
        NoRemote: no default DVC remote.
        NoWorkers: no worker of the pool is online.
        TrialsFailed: a worker's run failed, or crashed more than ``retrain.retries`` times.
    """
    logger, root, params, paths = get_run_logger(), Path.cwd(), load_params(), Paths()
    plan = tuning.plan(params, paths, study, **overrides)
    refuse_unshared(plan.url)
    commit = workspace.commit_for_workers(root)
    workspace.default_remote(root)
    with get_client(sync_client=True) as client:
        online = _online(client, pool)
    if not paths.split("train").exists() or not paths.split("val").exists():
        raise DataError(f"{paths.prepared}: no prepared data to send the workers; run `dvc repro prepare` first")
    pushed = workspace.publish(root, ["prepare"], run_cache=False)
    entry = "pipeline/orchestration/tuning.py:trials_flow"
    workers.deploy(pool, trials_flow, entry, "Trials of a study in a worker's clone (pipeline/orchestration/tuning.py).")
    optuna_study, parent = tuning.begin(params, paths, plan)
    parameters = {"study": study, "commit": commit, "prepared": dvc.lock_entry(root / "dvc.lock", "prepare"),
                  "parent_run_id": parent, "overrides": overrides}  # fmt: skip
    logger.info("commit %s, prepared data pushed in %.1f s; %s to %d workers of %s: %s",
                commit[:12], pushed, study, len(online), pool, ", ".join(online))  # fmt: skip
    runs = {i: _start(parameters) for i in range(len(online))}
    attempts, records, status = dict.fromkeys(runs, 1), [], "FAILED"
    try:
        with get_client(sync_client=True) as client:
            while runs:
                time.sleep(poll_s)
                for i, run_id in list(runs.items()):
                    run = client.read_flow_run(run_id)
                    if not run.state.is_final():
                        continue
                    del runs[i]
                    if run.state.is_completed():
                        records.append(workers.table_of(client, run.id) | {"flow_run": run.name, "attempts": attempts[i]})
                        continue
                    if not run.state.is_crashed() or attempts[i] > params.retrain.retries:
                        raise TrialsFailed(
                            f"{study}: the run {run.name} on the pool {pool} ended {run.state.name}: {run.state.message}"
                        )
                    needed = tuning.remaining(plan, optuna_study)
                    logger.warning("%s: run %s crashed (%s); %d trials to go", study, run.name, run.state.message, needed)
                    if needed:
                        attempts[i] += 1
                        runs[i] = _start(parameters)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if runs:
            with get_client(sync_client=True) as client:
                for run_id in runs.values():  # nothing left running for a study that stopped
                    client.set_flow_run_state(run_id, Cancelling(message="the study's coordinator stopped"), force=True)
        summary = tuning.finish(params, paths, plan, optuna_study, parent, status)
    return summary | {"workers": records}


def _start(parameters: dict) -> UUID:
    return run_deployment(f"{FLOW}/{FLOW}", parameters=parameters, timeout=0).id
