"""Variants trained on other machines: each variant's ``train`` and ``evaluate`` as a flow run in a Prefect work pool.

With ``--workers POOL`` the training flow runs ``download`` and ``prepare`` here, pushes the
prepared data to the default DVC remote and starts one run of the deployment ``variant/variant``
per variant (:func:`prefect.deployments.run_deployment`). Any worker of the pool picks one up and
runs :func:`variant_flow` in its own clone (``FMNIST_CLONE``, entered by the pull step
:func:`enter_clone`): it checks out the flow's commit, pulls the prepared data, reproduces the
variant's two stages (logging to the shared MLflow server, under the flow's parent run) and
pushes their results with their run-cache entries. As each run completes, the coordinator
reproduces the same two stages with ``dvc repro --pull``: DVC checks their outputs out of the run
cache instead of running them, so nothing trains twice, and ``dvc.lock`` and ``reports/`` come out
as from a run on this machine. The data side is :mod:`pipeline.adapters.workspace`.

A worker that dies mid-variant stops sending flow-run heartbeats; the automation :data:`ZOMBIES`
marks its run CRASHED, and the coordinator starts the variant again (``retrain.retries`` times) on
whichever worker is free. The rerun marks the dead run's MLflow run FAILED (the variant stage does
that for runs whose process is gone) and logs a new one.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.states import Cancelling

from pipeline.adapters import dvc, workspace
from pipeline.core.environment import CLONE, PARENT_RUN, WORKER
from pipeline.core.errors import PipelineError
from pipeline.orchestration.tasks import STAGES

FLOW = DEPLOYMENT = "variant"  # run as "variant/variant"
HEARTBEAT_S = 30  # a variant run's heartbeat period (Prefect's least); none for ZOMBIE_AFTER_S: marked CRASHED
ZOMBIE_AFTER_S = 75
ZOMBIES = "fmnist: crash the flow runs of a dead worker"  # older stacks: "fmnist: crash variant runs ..."


class VariantFailed(PipelineError):
    """A variant's run on a worker failed (or crashed more often than ``retrain.retries``)."""


def enter_clone() -> dict[str, str]:
    """The deployment's pull step: run in this worker's own clone, ``$FMNIST_CLONE``."""
    clone = os.environ.get(CLONE)
    if not clone or not Path(clone, "dvc.yaml").exists():
        raise PipelineError(
            f"this worker has no clone of the project: start it with {CLONE}=<its own git clone> "
            f"(`fmnist stack up` does); {CLONE}={clone!r}"
        )
    os.chdir(clone)
    return {"directory": clone}


@task(name="checkout", task_run_name="checkout {commit:.12}", cache_policy=NO_CACHE)
def checkout(commit: str, worker: str) -> float:
    return workspace.enter_commit(Path.cwd(), commit, worker)


@task(name="pull", task_run_name="pull prepared data", cache_policy=NO_CACHE)
def pull(prepared: dict) -> float:
    return workspace.receive(Path.cwd(), "prepare", prepared)


@task(name="push", task_run_name="push {stages}", cache_policy=NO_CACHE)
def _push(stages: list[str]) -> float:
    return workspace.publish(Path.cwd(), stages)


@flow(name=FLOW, flow_run_name="{variant}")
def variant_flow(variant: str, commit: str, prepared: dict, parent_run_id: str | None = None) -> dict:
    """One variant's ``train`` and ``evaluate`` in this worker's clone at ``commit``, on the coordinator's prepared data.

    Args:
        prepared: the coordinator's ``dvc.lock`` entry for ``prepare`` (which data, by hash).
        parent_run_id: the MLflow parent run of the coordinator's flow run.
    """
    worker = os.environ.get(WORKER) or socket.gethostname()
    seconds = {"checkout": checkout(commit, worker), "pull": pull(prepared)}
    env = {PARENT_RUN: parent_run_id} if parent_run_id else {}
    stages = [f"train@{variant}", f"evaluate@{variant}"]
    for stage in stages:
        start = time.perf_counter()
        STAGES[stage.partition("@")[0]](stage, env)
        seconds[stage.partition("@")[0]] = time.perf_counter() - start
    seconds["push"] = _push(stages)
    record = {"variant": variant, "worker": worker, "commit": commit} | {f"{k}_s": round(v, 2) for k, v in seconds.items()}
    create_table_artifact([record], key=f"variant-{variant.replace('_', '-')}", description=f"{variant} on {worker}")
    get_run_logger().info("%s trained and evaluated on %s: %s", variant, worker, record)
    return record


SILENT = (FLOW, "tune-trials")  # the flows a worker runs: one that stops beating is marked CRASHED


def deploy(pool: str, fn=None, entrypoint: str = "pipeline/orchestration/workers.py:variant_flow", description: str = "") -> None:
    """Create or update the deployment ``<flow>/<flow>`` of ``fn`` (default :func:`variant_flow`) in ``pool``, run in a
    worker's own clone; and the automation :data:`ZOMBIES` that crashes the runs of a worker that died."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.utilities.callables import parameter_schema

    fn = fn or variant_flow
    with get_client(sync_client=True) as client:
        client.create_deployment(
            flow_id=client.create_flow_from_name(fn.name),
            name=fn.name,
            work_pool_name=pool,
            entrypoint=entrypoint,
            pull_steps=[{"pipeline.orchestration.workers.enter_clone": {}}],
            parameter_openapi_schema=parameter_schema(fn).model_dump_for_openapi(),
            job_variables={"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}},
            description=description
            or "One variant's train and evaluate in a worker's own clone (pipeline/orchestration/workers.py).",
        )
        found = [a for a in client.read_automations() if a.name.startswith("fmnist: crash ")]
        if [a.name for a in found] == [ZOMBIES]:
            return
        for old in found:  # an older stack's, for the variant flow alone
            client.delete_automation(old.id)
    final = ("Completed", "Failed", "Cancelled", "Crashed")
    Automation(
        name=ZOMBIES,
        description="A worker's flow run that stops sending heartbeats lost its worker: mark it CRASHED, so that the "
        "flow that started it starts it again.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": list(SILENT)},
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in final)},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=ZOMBIE_AFTER_S),
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=f"no heartbeat for {ZOMBIE_AFTER_S} s: its worker died")],
    ).create()


def _start(variant: str, parameters: dict) -> UUID:
    run = run_deployment(f"{FLOW}/{DEPLOYMENT}", parameters={"variant": variant} | parameters, timeout=0)
    return run.id


def train_on_workers(pool: str, variants: list[str], env: dict[str, str], retries: int, poll_s: float = 2.0) -> list[dict]:
    """Train and evaluate ``variants`` on the workers of ``pool``; returns one record per variant, in finishing order.

    Raises:
        WrongCommit: this checkout has changes the workers cannot see.
        NoRemote: no default DVC remote.
        VariantFailed: a variant's run failed, or crashed more than ``retries`` times.
    """
    logger, root = get_run_logger(), Path.cwd()
    if not variants:
        logger.info("every variant is up to date: nothing for the workers")
        return []
    commit = workspace.commit_for_workers(root)
    workspace.default_remote(root)
    published = workspace.publish(root, ["prepare"], run_cache=False)
    deploy(pool)
    parameters = {
        "commit": commit,
        "prepared": dvc.lock_entry(root / "dvc.lock", "prepare"),
        "parent_run_id": env.get(PARENT_RUN),
    }
    logger.info(
        "commit %s, prepared data pushed in %.1f s; %d variants to the pool %s", commit[:12], published, len(variants), pool
    )
    running = {v: _start(v, parameters) for v in variants}
    attempts, records = dict.fromkeys(variants, 1), []
    with get_client(sync_client=True) as client:
        try:
            while running:
                time.sleep(poll_s)
                for variant, run_id in list(running.items()):
                    run = client.read_flow_run(run_id)
                    if run.state.is_completed():
                        del running[variant]
                        records.append(_collect(client, root, variant, run, env, attempts[variant]))
                    elif run.state.is_final():
                        if not run.state.is_crashed() or attempts[variant] > retries:
                            raise VariantFailed(
                                f"{variant}: its run {run.name} on the pool {pool} ended {run.state.name}: {run.state.message}"
                            )
                        logger.warning("%s: run %s crashed (%s); starting it again", variant, run.name, run.state.message)
                        attempts[variant] += 1
                        running[variant] = _start(variant, parameters)
        except BaseException:
            for run_id in running.values():  # nothing left running for a flow that stopped
                client.set_flow_run_state(run_id, Cancelling(message="the training flow stopped"), force=True)
            raise
    return records


_TIMES = {"created": "created", "started": "start_time", "ended": "end_time"}  # the flow run's, as Unix times


def _collect(client, root: Path, variant: str, run, env: dict[str, str], attempts: int) -> dict:
    """The worker's record of ``variant`` (its steps' seconds), its flow run's times, and the two stages reproduced here."""
    stages = [f"train@{variant}", f"evaluate@{variant}"]
    restored, seconds = workspace.collect(root, stages, env)
    record = table_of(client, run.id)
    times = {k: getattr(run, a).timestamp() if getattr(run, a) else None for k, a in _TIMES.items()}
    record |= {"collect_s": round(seconds, 2), "restored": restored, "attempts": attempts}
    record |= {"flow_run": run.name, "flow_run_id": str(run.id)} | times
    if restored != stages:
        get_run_logger().warning("%s: %s not in the run cache; ran here instead", variant, sorted(set(stages) - set(restored)))
    return record


def table_of(client, run_id: UUID) -> dict:
    """The first row of the table artifact a worker's flow run made (its record), or an empty record."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    table = next((a.data for a in found if a.type == "table"), "[{}]")
    return (json.loads(table) if isinstance(table, str) else table)[0]
