"""``fmnist run``: the whole pipeline through ``dvc repro``, timed; the wall time goes into the summary."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline import summarize
from pipeline.config import PipelineError, load_params

log = logging.getLogger(__name__)


def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``dvc`` from this interpreter's environment, so stage commands find its ``python``."""
    bin_dir = str(Path(sys.executable).parent)
    env = os.environ | {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run([str(Path(bin_dir) / "dvc"), *args], env=env, check=check)


def cli(args) -> None:
    load_params()  # fail before any work on a malformed params.yaml
    lock = Path("dvc.lock")
    before = lock.read_text() if lock.exists() else ""
    start = time.perf_counter()
    if dvc("repro", *args.targets, check=False).returncode != 0:
        raise PipelineError("dvc repro failed; the message above names the stage and the cause")
    wall = time.perf_counter() - start
    if not args.targets and lock.read_text() != before:  # something ran: record the wall time of this run
        summarize.write(wall_seconds=wall)
        dvc("commit", "--force", "summarize")
        log.info("pipeline wall time %.1f min", wall / 60)
