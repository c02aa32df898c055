"""Prefect flows of this machine: training and retraining. They orchestrate and hold no logic.

``training_flow`` runs the DVC stages as Prefect tasks (:mod:`pipeline.orchestration.tasks`):
``download``, ``prepare``, ``train`` and ``evaluate`` (one run per variant), ``summarize``,
``register``. With ``workers`` (a work pool), each variant's ``train`` and ``evaluate`` run on a
worker of that pool instead (:mod:`pipeline.orchestration.workers`). The MLflow runs of one flow
run share one parent run. It ends with two artifacts: the variant comparison with the promotion
decision (markdown) and the winner's confusion matrix (table).

``retraining_flow`` is the loop: intake (``pipeline/services/intake.py``), drift
(``pipeline/services/drift_check.py``), the decision (``pipeline/core/retraining.py``), then the
training flow if anything is new, and a report. ``serve`` puts it on the cron in
``retrain.cron`` (UTC); ``prefect.yaml`` declares the same deployment for a process work pool.

``monitoring_flow`` checks the last window of served traffic (``pipeline/services/monitor.py``),
logs it as a run of the monitoring experiment, and on drift emits the Prefect event
:data:`DRIFT_EVENT`; ``prefect.yaml`` schedules it on ``monitor.cron``.

At most one retraining runs at a time in a project: each holds an exclusive lock on
``.dvc/tmp/retrain.lock``. A second one stops at once with a message naming the holder; the
kernel releases the lock when the holder exits, even if it crashed, so it never blocks forever.
"""

from __future__ import annotations

from contextlib import contextmanager

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.events import DeploymentEventTrigger, emit_event
from prefect.runtime import flow_run
from prefect.schedules import Cron
from prefect.states import Cancelled

from pipeline.adapters import alerts, dvc, files
from pipeline.adapters.locks import LockHeld, exclusive
from pipeline.adapters.paths import Paths
from pipeline.core import report
from pipeline.core.config import Params, load_params
from pipeline.core.environment import PARENT_RUN
from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.retraining import plan
from pipeline.orchestration import workers as pool_workers
from pipeline.orchestration.tasks import with_retries
from pipeline.services import intake as intake_service

DEPLOYMENT = "retraining"  # the deployment's name in `fmnist schedule` and prefect.yaml
DRIFT_EVENT = "fmnist.traffic.drifted"  # emitted by the monitoring flow when served traffic drifted


class Busy(PipelineError):
    """Another retraining holds the lock."""


@task(name="intake", task_run_name="intake", cache_policy=NO_CACHE)
def intake(paths: Paths, class_names: tuple[str, ...]) -> dict:
    return intake_service.run(paths, class_names).summary()


@task(name="status", task_run_name="status", cache_policy=NO_CACHE)
def status() -> list[str]:
    return dvc.stale_stages()


@task(name="drift", task_run_name="drift", cache_policy=NO_CACHE)
def drift(paths: Paths, params: Params, batch: str):
    from pipeline.services.drift_check import measure_drift  # loads the champion (mlflow, keras): only when there is a batch

    return measure_drift(paths, params, paths.root / batch)


@contextmanager
def _one_retraining(paths: Paths):
    """The project's retraining lock, held for the block, or Busy at once naming its holder."""
    try:
        with exclusive(paths.retrain_lock, wait=False):
            yield
    except LockHeld as exc:
        raise Busy(
            f"another retraining is running ({exc.holder}); this one stops here. At most one runs at a time: "
            f"the lock {exc.path} is released when that run ends, even if it crashes"
        ) from None


def _variants(stages: dict, variants: list[str], env: dict[str, str], force: bool, fan_out: bool) -> None:
    """Train and evaluate ``variants`` here: one after the other, or as concurrent task runs (``fan_out``)."""
    if not fan_out:  # one after the other: the default on a small machine
        for v in variants:
            stages["train"](f"train@{v}", env, force)
            stages["evaluate"](f"evaluate@{v}", env)
        return
    trained = {v: stages["train"].submit(f"train@{v}", env, force) for v in variants}
    evaluated = [stages["evaluate"].submit(f"evaluate@{v}", env, wait_for=[trained[v]]) for v in variants]
    for future in evaluated:
        future.result()  # raises the first failure


def refuse_forced_workers(force: bool, workers: str | None) -> None:
    """``force`` with ``workers`` is refused: the commands check before they start a flow, the training flow again."""
    if workers and force:
        raise ConfigError(
            "--force with --workers: a forced rerun gives a second result for the same inputs, and DVC's run cache, "
            "which brings the workers' results back, cannot tell the two apart. Change a param, or retrain here"
        )


@flow(name="training")
def training_flow(
    force: bool = False, fan_out: bool | None = None, parent_run_id: str | None = None, workers: str | None = None
) -> dict | None:
    """Run every DVC stage as a task; ``force`` retrains every variant even if nothing changed.

    Args:
        workers: a Prefect work pool: train and evaluate each variant on its workers (empty: here).

    Returns:
        The promotion record of ``reports/promotion.json`` (the last gate decision).
    """
    from pipeline.adapters.mlflow import runs  # imports mlflow: only when a flow runs, not when it is deployed

    refuse_forced_workers(force, workers)
    params, paths = load_params(), Paths()
    cfg = params.retrain
    stages = with_retries(cfg.retries, cfg.retry_delay)
    with _one_retraining(paths):
        tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name)}
        with runs.pipeline_run(params, paths, f"training-{flow_run.name}", tags, given=parent_run_id) as parent:
            env = {PARENT_RUN: parent.id}
            stages["download"]("download", env)
            stages["prepare"]("prepare", env)
            if workers:
                done = pool_workers.train_on_workers(workers, _stale_variants(params), env, cfg.retries)
                create_table_artifact(done, key="variants-on-workers", description=f"where and how long, pool {workers}")
            else:
                _variants(stages, list(params.variants), env, force, cfg.fan_out if fan_out is None else fan_out)
            stages["summarize"]("summarize", env)
            stages["register"]("register", env)
    record = files.read_json(paths.promotion)
    summary = report.training_markdown(files.read_text(paths.summary), record, _card_url(record))
    create_markdown_artifact(summary, key="training-summary", description="variants and promotion")
    if record:
        create_table_artifact(
            report.confusion_table(paths.confusion(record["variant"]).read_text()),
            key="winner-confusion-matrix",
            description=f"{record['variant']}: test confusion matrix (rows true class, columns predicted)",
        )
    return record


def _stale_variants(params: Params) -> list[str]:
    """The variants whose ``train`` or ``evaluate`` DVC finds out of date: those the workers get."""
    stale = set(dvc.stale_stages())
    return [v for v in params.variants if {f"train@{v}", f"evaluate@{v}"} & stale]


def _card_url(record: dict | None) -> str | None:
    """The MLflow UI page of the gated version, whose description is its model card."""
    from pipeline.adapters.mlflow import registry  # imports mlflow: only when a flow runs

    return registry.version_url(record["model_name"], record["challenger_version"]) if record else None


@flow(name="retraining")
def retraining_flow(force: bool = False, fan_out: bool | None = None, workers: str | None = None):
    """Intake, drift, then (if anything is new, or ``force``) the training flow and gate, then a report."""
    params, paths = load_params(), Paths()
    try:
        with _one_retraining(paths):
            return _retrain(params, paths, force, fan_out, workers)
    except Busy as exc:
        get_run_logger().warning(str(exc))
        return Cancelled(message=str(exc))


def _retrain(params: Params, paths: Paths, force: bool, fan_out: bool | None, workers: str | None) -> dict:
    logger = get_run_logger()
    before = dvc.data_versions(paths.dvc_lock)
    got = intake(paths, params.base.class_names)
    found = drift(paths, params, got["batch"]) if got["batch"] else None
    decided = plan(got["accepted_images"], found, status(), force)
    if not decided.retrain:
        logger.info(decided.reasons[0])
        create_markdown_artifact(report.nothing_new_markdown(got, decided.reasons), key="retraining-report")
        return {"retrained": False, "message": decided.reasons[0], "intake": got}
    logger.info("retraining: %s", "; ".join(decided.reasons))
    from pipeline.adapters.mlflow import runs  # imports mlflow: only once there is work to do
    from pipeline.core.drift import plot_drift

    tags = {"prefect.flow_run_id": str(flow_run.id), "fmnist.retrain_reasons": "; ".join(decided.reasons)}
    with runs.pipeline_run(params, paths, f"retraining-{flow_run.name}", tags) as parent:
        if found:
            runs.log_drift(parent.id, found.metrics(), found.to_dict(), plot_drift(found, params.base.class_names))
        record = training_flow(force=force, fan_out=fan_out, parent_run_id=parent.id, workers=workers)
        after = dvc.data_versions(paths.dvc_lock)
        parent.tags["data.prepared_md5"] = after["data/prepared"]
    markdown = report.retraining_markdown(
        got, found, decided.reasons, (before, after), record, params.base.class_names, _card_url(record)
    )
    create_markdown_artifact(markdown, key="retraining-report", description="intake, drift, data version, gate decision")
    message = f"retrained ({'; '.join(decided.reasons)}); gate: {record['decision'] if record else 'not run'}"
    return {"retrained": True, "message": message, "intake": got, "data": after, "promotion": record}


@flow(name="monitoring")
def monitoring_flow() -> dict:
    """One window of served traffic: its drift figures as an MLflow run, a markdown artifact, the images to label, and on
    drift the event :data:`DRIFT_EVENT` (its payload: the window)."""
    from pipeline.adapters.mlflow import runs  # imports mlflow: only when the flow runs
    from pipeline.core.drift import plot_drift
    from pipeline.services import monitor

    params, paths = load_params(), Paths()
    alert = alerts.destination()  # a malformed destination is refused before any work
    window = monitor.check(paths, params)
    summary = window.summary()
    if window.report is not None:
        figure = plot_drift(window.report, params.base.class_names)
        end_ms = int(window.end.timestamp() * 1000)
        summary["mlflow_run_id"] = runs.log_monitoring(params, summary, window.report.metrics(), end_ms, figure)
    markdown = report.monitoring_markdown(summary, window.report, params.base.class_names)
    create_markdown_artifact(markdown, key="monitoring-report", description="served traffic against the training reference")
    if window.drifted:
        resource = {"prefect.resource.id": f"fmnist.model.{params.registry.model_name}"}
        emit_event(event=DRIFT_EVENT, resource=resource, payload=summary)
        alert.send(f"{params.registry.model_name}: served traffic drifted", window.message, "warning")
    get_run_logger().info(window.message)
    return summary


def serve(params: Params) -> None:
    """Serve the retraining flow on ``retrain.cron`` (UTC) and on :data:`DRIFT_EVENT`, at most one run at a time (others
    wait): what ``prefect.yaml`` declares."""
    retraining_flow.serve(
        name=DEPLOYMENT,
        schedules=[Cron(params.retrain.cron, timezone="UTC")],
        triggers=[
            DeploymentEventTrigger(
                match={"prefect.resource.id": "fmnist.model.*"}, expect={DRIFT_EVENT}, parameters={"force": False}
            )
        ],
        global_limit=ConcurrencyLimitConfig(limit=1, collision_strategy="ENQUEUE"),
        limit=1,
        tags=["fashion-mnist"],
    )
