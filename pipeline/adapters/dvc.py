"""DVC: its command line from this environment, ``dvc repro`` of one stage, ``dvc status``, and ``dvc.lock``.

Every ``dvc`` command the pipeline runs goes through this module, and so does every read and write
of ``dvc.lock`` (:func:`lock_entry`, :func:`lock_hashes`, :func:`set_lock_entry`). A failed command
raises with DVC's own ``ERROR:`` lines and, where the cause is known, the fix (:func:`run`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.adapters import git
from pipeline.adapters.files import atomic_write_text
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


# Causes DVC reports in its ERROR lines, and what fixes them on this project's stack (an S3 remote on 127.0.0.1).
_FIXES = (
    ("Unable to locate credentials", "the S3 remote needs credentials: export the variables of `fmnist stack env`"),
    ("InvalidAccessKeyId", "the S3 remote refused the credentials: export the variables of `fmnist stack env`"),
    ("Could not connect to the endpoint URL", "the S3 remote does not answer: is the stack up? See `fmnist stack status`"),
    ("NoSuchBucket", "the S3 remote has no such bucket: is this the stack's remote? See `fmnist stack status`"),
)


def failure_message(args: tuple[str, ...], root: Path, returncode: int, output: str) -> str:
    """What a failed ``dvc <args>`` tells the user: the command, DVC's ``ERROR:`` lines and the fix where it is known."""
    why = git.cause(output, ("ERROR:",))
    fixes = [fix for marker, fix in _FIXES if marker in output]
    return f"dvc {' '.join(args)} failed in {root} (exit {returncode}): {why}" + "".join(f"\n  fix: {f}" for f in fixes)


def run(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """``dvc <args>`` in ``root``, output captured; returns stdout.

    Raises:
        git.ToolFailed: DVC exited non-zero; the message keeps its ``ERROR:`` lines (never run with ``-q``, which
            hides them) and names the fix where the cause is known.
    """
    cmd, full_env = dvc_command(*args, env=env)
    proc = subprocess.run(cmd, cwd=root, env=full_env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise git.ToolFailed(failure_message(args, root, proc.returncode, proc.stderr + "\n" + proc.stdout))
    return proc.stdout


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


def _stages(lock: Path) -> dict[str, dict]:
    """Every stage's entry in ``dvc.lock``, by stage name (empty if there is no ``dvc.lock``)."""
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.exists() else {}


def lock_entry(lock: Path, stage: str) -> dict:
    """``stage``'s entry in ``dvc.lock`` (what was run, on which inputs, giving which outputs)."""
    entry = _stages(lock).get(stage)
    if not entry:
        raise PipelineError(f"{lock} has no entry for {stage}: run it first (dvc repro {stage})")
    return entry


def set_lock_entry(lock: Path, stage: str, entry: dict) -> None:
    """Record ``entry`` as ``stage``'s in ``dvc.lock``, keeping the others; the file is replaced in one step."""
    data = (yaml.safe_load(lock.read_text()) if lock.exists() else None) or {"schema": "2.0", "stages": {}}
    data.setdefault("stages", {})[stage] = entry
    atomic_write_text(lock, yaml.safe_dump(data, sort_keys=False))


def lock_hashes(lock: Path, stage: str, kinds: tuple[str, ...] = ("deps", "outs")) -> dict[str, str]:
    """The hashes ``dvc.lock`` records for one stage's deps and outs (or only ``kinds``), by path (empty before its first run)."""
    entry = _stages(lock).get(stage, {})
    return {e["path"]: e.get("md5", "") for kind in kinds for e in entry.get(kind, [])}


def cached_outputs(root: Path) -> dict[str, str]:
    """``stage: path`` -> hash of every output DVC caches (not ``cache: false``) that ``dvc.lock`` records, in ``root``."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        outs = [o for o in repo.index.outs if o.use_cache and o.hash_info and o.hash_info.value]
        return {f"{o.stage.addressing}: {o.def_path}": o.hash_info.value for o in outs}


def experiment_commits(root: Path) -> dict[str, str]:
    """The DVC experiments of the repository at ``root``: name -> commit (git refs ``refs/exps/<baseline>/<name>``)."""
    found = {}
    for line in git.run(root, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps").stdout.splitlines():
        commit, ref = line.split(" ", 1)
        parts = ref.split("/")
        if len(parts) == 5:  # refs/exps/ab/cdef.../<name>: not the queue's own refs (refs/exps/celery/...)
            found[parts[-1]] = commit
    return found


def data_versions(lock: Path) -> dict[str, str]:
    """The DVC hashes of the accepted data (``prepare``'s input) and the prepared data (its output)."""
    found = lock_hashes(lock, "prepare")
    return {k: found.get(k, "") for k in ("data/accepted", "data/prepared")}
