"""DVC: its command line from this environment, ``dvc repro`` of one stage, ``dvc status``, and ``dvc.lock``.

The one reader of ``dvc.lock`` is :func:`lock_hashes`; every other module asks it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)


def dvc_command(*args: str, env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run ``dvc`` from this interpreter's environment."""
    bin_dir = str(Path(sys.executable).parent)
    env = os.environ | {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")} | (env or {})
    return [str(Path(bin_dir) / "dvc"), *args], env


def dvc(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``dvc`` from this interpreter's environment (so stage commands find its ``python``), plus ``env``."""
    cmd, full_env = dvc_command(*args, env=env)
    return subprocess.run(cmd, env=full_env, check=check)


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


def stale_stages() -> list[str]:
    """The stages ``dvc status`` finds out of date (changed dependencies, params or missing outputs)."""
    cmd, env = dvc_command("status", "--json")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"dvc status failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return sorted(json.loads(proc.stdout or "{}"))


def lock_hashes(lock: Path, stage: str, kinds: tuple[str, ...] = ("deps", "outs")) -> dict[str, str]:
    """The hashes ``dvc.lock`` records for one stage's deps and outs (or only ``kinds``), by path (empty before its first run)."""
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.exists() else {}
    entry = stages.get(stage, {})
    return {e["path"]: e.get("md5", "") for kind in kinds for e in entry.get(kind, [])}


def experiment_commits(root: Path) -> dict[str, str]:
    """The DVC experiments of the repository at ``root``: name -> commit (git refs ``refs/exps/<baseline>/<name>``)."""
    proc = subprocess.run(
        ["git", "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps"], cwd=root, capture_output=True, text=True
    )
    found = {}
    for line in proc.stdout.splitlines():
        commit, ref = line.split(" ", 1)
        parts = ref.split("/")
        if len(parts) == 5:  # refs/exps/ab/cdef.../<name>: not the queue's own refs (refs/exps/celery/...)
            found[parts[-1]] = commit
    return found


def data_versions(lock: Path) -> dict[str, str]:
    """The DVC hashes of the accepted data (``prepare``'s input) and the prepared data (its output)."""
    found = lock_hashes(lock, "prepare")
    return {k: found.get(k, "") for k in ("data/accepted", "data/prepared")}
