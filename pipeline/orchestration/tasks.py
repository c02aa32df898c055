"""The DVC stages as Prefect tasks, shared by the flows of this machine and the variant flow of a worker.

Each task runs ``dvc repro --single-item <stage>`` (one definition of the pipeline, and
``dvc.lock`` stays the record of what was built) and is named after the stage. A stage that
crashed or found DVC's lock held is retried (``retrain.retries``); one that exited 2 (bad data,
params or checksum) is not.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipeline.adapters import dvc


def _transient(task, task_run, state) -> bool:
    """Retry condition: only a crash or a held lock, never a user error (exit 2, checksum, validation)."""
    return isinstance(state.data, dvc.StageCrashed)


def _stage(stage: str, env: dict[str, str], force: bool = False) -> str:
    return dvc.repro(stage, force=force, env=env, echo=get_run_logger().info)


_OPTIONS = {"cache_policy": NO_CACHE, "retry_condition_fn": _transient, "task_run_name": "{stage}"}
STAGES = {
    name: task(_stage, name=name, **_OPTIONS) for name in ("download", "prepare", "train", "evaluate", "summarize", "register")
}


def with_retries(retries: int, delay: float) -> dict:
    """:data:`STAGES` with the retry settings of ``retrain``."""
    return {k: t.with_options(retries=retries, retry_delay_seconds=delay) for k, t in STAGES.items()}
