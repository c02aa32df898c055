"""The stack's Prefect process workers, each in its own git clone of the project, taking one flow run at a time.

A clone outlives ``fmnist stack down``: the next ``up`` fetches it up to date from its remote
instead of cloning again. The stack runs ``prefect`` as a command (a process it supervises, like
the servers); only ``pipeline.orchestration`` imports Prefect.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.adapters import dvc, git
from pipeline.core.environment import CLONE, WORKER
from pipeline.stack.processes import StackError, spawn

POOL = "fmnist-process"


def _prefect() -> str:
    return str(Path(sys.executable).parent / "prefect")


def create_pool(root: Path, env: dict) -> None:
    """The process work pool :data:`POOL` on the stack's Prefect server (kept as it is if it exists)."""
    cmd = [_prefect(), "--no-prompt", "work-pool", "create", POOL, "--type", "process", "--overwrite"]
    proc = subprocess.run(cmd, env=env | {"PREFECT_HOME": str(root / "prefect-client")}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(f"prefect work-pool create {POOL} failed: {(proc.stderr or proc.stdout).strip()[-1500:]}")


def dvc_remote(repo: Path, bucket: str, endpoint: str) -> None:
    """The default DVC remote ``stack`` on the S3 endpoint, in the repository's local (uncommitted) config."""
    dvc.run(repo, "remote", "add", "--local", "-d", "-f", "stack", f"s3://{bucket}/cache")
    dvc.run(repo, "remote", "modify", "--local", "stack", "endpointurl", endpoint)


def remove_dvc_remote(repo: Path) -> None:
    """Drop the ``stack`` remote from the repository's local config, if it is there."""
    try:
        dvc.run(repo, "remote", "remove", "--local", "stack")
    except git.ToolFailed:
        pass  # not there: nothing to remove


def clone(repo: Path, dest: Path) -> bool:
    """``dest`` as a clone of ``repo`` at its remote's newest commit; returns whether it existed (and was fetched)."""
    if (dest / ".git").exists():
        git.git(dest, "fetch", "origin")
        git.git(dest, "checkout", "--force", "--detach", "origin/HEAD")
        return True
    git.git(dest.parent, "clone", str(repo), str(dest))
    return False


def start_workers(root: Path, repo: Path, n: int, env: dict, bucket: str, endpoint: str, pin: bool) -> list[dict]:
    """``n`` workers on :data:`POOL`, worker ``i`` in ``<root>/workers/worker-<i>`` with the DVC remote.

    ``pin`` gives worker ``i`` the core ``i - 1`` alone (``taskset``), as if each were a machine of one core.
    """
    if n == 0:
        return []
    create_pool(root, env)
    started = []
    for i in range(1, n + 1):
        name, dest = f"worker-{i}", root / "workers" / f"worker-{i}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        fetched = clone(repo, dest)
        dvc_remote(dest, bucket, endpoint)
        cmd = [_prefect(), "worker", "start", "--pool", POOL, "--type", "process", "--name", name, "--limit", "1"]
        core = (i - 1) % os.cpu_count()
        cmd = ["taskset", "-c", str(core), *cmd] if pin else cmd
        worker_env = env | {"PREFECT_HOME": str(dest / ".prefect"), CLONE: str(dest), WORKER: name}
        info = spawn(name, cmd, root / "logs", worker_env, dest) | {"clone": str(dest), "fetched": fetched}
        started.append(info | ({"core": core} if pin else {}))
    return started
