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


def dvc_command(*args: str, env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run ``dvc`` from this interpreter's environment."""
    bin_dir = str(Path(sys.executable).parent)
    env = os.environ | {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")} | (env or {})
    return [str(Path(bin_dir) / "dvc"), *args], env


def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``dvc`` from this interpreter's environment, so stage commands find its ``python``."""
    cmd, env = dvc_command(*args)
    return subprocess.run(cmd, env=env, check=check)


class StageFailed(PipelineError):
    """A stage stopped on bad input, data or params (exit 2 with ``error: ...``, or DVC refused): never retried."""


class StageCrashed(RuntimeError):
    """A stage died some other way (killed, crashed, DVC lock held by another process): worth retrying."""


_TRANSIENT = ("Unable to acquire lock",)  # DVC messages of a passing condition


def repro(stage: str, *, force: bool = False, env: dict[str, str] | None = None, echo=log.info) -> str:
    """``dvc repro --single-item <stage>``; each output line goes to ``echo``; returns the output.

    Raises:
        StageFailed: the stage exited 2 (a user error; its ``error:`` line is the message) or DVC
            refused the stage (invalid dvc.yaml, missing dependency).
        StageCrashed: the stage exited any other way, was killed, or DVC's lock was held.
    """
    cmd, env = dvc_command("repro", "--single-item", stage, *(["--force"] if force else []), env=env)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        echo(f"{stage} | {line.rstrip()}")
    if proc.wait() == 0:
        return "\n".join(lines)
    last = lines[-1] if lines else f"dvc exited {proc.returncode}"  # DVC's "ERROR: failed to reproduce ..." line
    user_error = next((line.removeprefix("error: ") for line in lines if line.startswith("error: ")), None)
    message = f"{stage}: {user_error or last}"
    died = "failed to run:" in last and not last.endswith("exited with 2")  # the stage itself, not its input
    if proc.returncode < 0 or died or any(t in line for line in lines for t in _TRANSIENT):
        raise StageCrashed(message)
    raise StageFailed(message)


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
