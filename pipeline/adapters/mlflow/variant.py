"""The MLflow run of one variant's training: opened under the parent run (if any), resumed after a crash.

Its evaluation is logged to the same run by :mod:`pipeline.adapters.mlflow.evaluation`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow

from pipeline.adapters.mlflow.lineage import lineage_tags, prepared_data_hash
from pipeline.adapters.mlflow.orphans import fail_orphans, process_tag
from pipeline.adapters.mlflow.runs import in_experiment, parent_run_id
from pipeline.adapters.mlflow.store import client, experiment_id
from pipeline.adapters.paths import Paths
from pipeline.core.config import Params, Train, flatten

log = logging.getLogger(__name__)


@dataclasses.dataclass
class VariantRun:
    """Handle on a variant's MLflow run, or a no-op one when tracking is off."""

    run_id: str | None = None

    def callbacks(self) -> list:
        if not self.run_id:
            return []
        from pipeline.adapters.mlflow.epochs import EpochLogger  # imports keras

        return [EpochLogger(self.run_id)]

    def log_training(self, info: dict) -> None:
        if not self.run_id:
            return
        keys = ("params", "epochs_trained", "best_epoch", "val_accuracy", "val_loss", "train_seconds", "train_images")
        mlflow.log_metrics({f"best_{k}" if k.startswith("val_") else k: float(info[k]) for k in keys})


def _resumable(c, backup_dir: Path) -> str | None:
    marker = backup_dir / "mlflow_run_id"
    if not (marker.exists() and (backup_dir / "training_metadata.json").exists()):
        return None
    run_id = marker.read_text().strip()
    try:
        c.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None
    return run_id


@contextmanager
def variant_run(
    params: Params, paths: Paths, variant: str, cfg: Train, backup_dir: Path, *, enabled: bool = True
) -> Iterator[VariantRun]:
    """Open (or, after a crash, resume) the MLflow run of one variant's training, under the parent run if any.

    The run ends FINISHED when the block succeeds and FAILED when it raises (and so does the
    parent run of the DVC experiment it belongs to, if any: the experiment stops there).
    """
    if not enabled:
        yield VariantRun()
        return
    c, exp = client(), experiment_id(params)
    resume = _resumable(c, backup_dir)
    fail_orphans(c, exp, variant, keep=resume)
    process = {"fmnist.process": process_tag(os.getpid())}  # lets the next start tell a live run from an orphan
    if resume:
        run = mlflow.start_run(run_id=resume)
        log.info("resuming MLflow run %s", resume)
    else:
        tags = {"fmnist.variant": variant, "fmnist.role": "variant"} | lineage_tags(paths) | process
        run = mlflow.start_run(experiment_id=exp, run_name=variant, parent_run_id=parent_run_id(params, paths), tags=tags)
    with run:  # FAILED on exception, FINISHED otherwise
        if resume:
            mlflow.set_tags(process)
        else:
            mlflow.log_params(flatten(dataclasses.asdict(cfg)) | {"seed": params.base.seed})
            _log_dataset(paths)
        backup_dir.mkdir(parents=True, exist_ok=True)
        (backup_dir / "mlflow_run_id").write_text(run.info.run_id)
        with in_experiment(params, paths):
            yield VariantRun(run.info.run_id)


def _log_dataset(paths: Paths) -> None:
    from mlflow.data.dataset_source_registry import get_registered_sources, resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    digest = prepared_data_hash(paths) or "unversioned"
    # MLflow registers a local source twice (schemes "" and "file") and warns that the path is
    # ambiguous; both are the same class of source, so name the first.
    local = [s for s in get_registered_sources() if s._get_source_type() == "local"][:1]
    source = resolve_dataset_source(str(paths.prepared.resolve()), candidate_sources=local or None)
    mlflow.log_input(MetaDataset(source, name="fashion-mnist-prepared", digest=digest[:36]), context="training")
    if paths.data_report.exists():
        mlflow.log_artifact(str(paths.data_report), artifact_path="data")
