"""``fmnist run``: the whole pipeline through ``dvc repro``, under one MLflow parent run, timed.

Opens the parent run (when anything is out of date), passes its id to the stages, closes it
FINISHED or FAILED, and records the wall time of a full run in ``reports/run.json``, a file no
stage writes (so ``dvc.lock`` stays the record of what the stages built).
"""

from __future__ import annotations

import logging
import time

from pipeline.adapters import dvc
from pipeline.adapters.files import write_json
from pipeline.adapters.mlflow import runs
from pipeline.adapters.paths import Paths
from pipeline.core.config import load_params
from pipeline.core.environment import PARENT_RUN
from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)


def cli(args) -> None:
    params, paths = load_params(), Paths()  # fail before any work on a malformed params.yaml
    stale = dvc.stale_stages()
    if not stale:
        dvc.dvc("repro", *args.targets)  # DVC says it is up to date
        return
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with runs.pipeline_run(params, paths, time.strftime("pipeline-%Y%m%d-%H%M%S")) as parent:
        start = time.perf_counter()
        ok = dvc.dvc("repro", *args.targets, check=False, env={PARENT_RUN: parent.id}).returncode == 0
        wall = time.perf_counter() - start
        parent.tags["fmnist.wall_seconds"] = f"{wall:.1f}"
        if not ok:
            raise PipelineError("dvc repro failed; the message above names the stage and the cause")
    if not args.targets:
        record = {
            "wall_seconds": round(wall, 1),
            "started_at": started,
            "stages_out_of_date": stale,
            "mlflow_parent_run_id": parent.id,
        }
        write_json(paths.run_record, record)
        log.info("pipeline wall time %.1f min", wall / 60)
