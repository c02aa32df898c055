"""A checkout taking part in a distributed training: its commit, and stage results moved through the DVC remote.

The coordinator (the flow's own checkout) and each worker (its own clone) share only the git
remote, the default DVC remote and the MLflow server:

- the coordinator refuses changes the workers cannot see (:func:`commit_for_workers`), runs
  ``download`` and ``prepare`` itself and pushes the prepared data (:func:`publish`);
- a worker moves its clone to the flow's commit (:func:`enter_commit`), takes the coordinator's
  ``dvc.lock`` entry for ``prepare`` and pulls the prepared data (:func:`receive`), trains and
  evaluates one variant, and pushes the results with their run-cache entries (:func:`publish`);
- the coordinator reproduces the variant's stages with ``dvc repro --pull``: DVC finds each in
  the run cache and checks its outputs out instead of running it (:func:`collect`), so
  ``dvc.lock`` records them as if they had run here, and nothing trains twice.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import yaml

from pipeline.adapters.dvc import dvc_command
from pipeline.core.errors import PipelineError

# Tracked files the pipeline rewrites as it runs: a change there is a result, not a change to what is trained.
RESULTS = (":(exclude)dvc.lock", ":(exclude)reports", ":(exclude)data/accepted")


class WrongCommit(PipelineError):
    """A checkout cannot be at the commit the flow trains: uncommitted changes, or a commit its git remote lacks."""


class NoRemote(PipelineError):
    """Distributed training needs a default DVC remote that every machine reaches."""


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def _changes(root: Path) -> list[str]:
    """Tracked or new (not ignored) files that differ from HEAD, less the pipeline's results."""
    out = _git(root, "status", "--porcelain", "--untracked-files=all", "--", ".", *RESULTS).stdout
    return [line[3:] for line in out.splitlines()]


def commit_for_workers(root: Path) -> str:
    """The commit the workers train: HEAD of ``root``, which must hold every change to code, params and ``dvc.yaml``."""
    changed = _changes(root)
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise WrongCommit(
            f"the workers train a commit, and this checkout has changes they cannot see: {shown}. "
            "Commit them and push the commit where the workers clone from, or train here (without --workers)"
        )
    return _git(root, "rev-parse", "HEAD").stdout.strip()


def enter_commit(root: Path, commit: str, name: str) -> float:
    """Fetch and check out ``commit`` in the clone at ``root`` (detached); returns the seconds it took.

    Raises:
        WrongCommit: the clone has local edits, or its git remote does not have ``commit``.
    """
    start = time.perf_counter()
    if _git(root, "rev-parse", "--git-dir").returncode != 0 or not (root / "dvc.yaml").exists():
        raise WrongCommit(f"{name}: {root} is not a clone of the project (no git repository with dvc.yaml)")
    if changed := [f for f in _changes(root) if not f.startswith(("data/", "models/"))]:
        raise WrongCommit(
            f"{name}: its clone {root} has local edits ({', '.join(changed[:5])}); a worker trains only commits from its "
            f"git remote. Discard them (git -C {root} stash) and rerun"
        )
    remote = _git(root, "remote", "get-url", "origin").stdout.strip() or "(no origin)"
    fetched = _git(root, "fetch", "-q", "origin")
    if _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        why = f" (git fetch: {fetched.stderr.strip()})" if fetched.returncode else ""
        raise WrongCommit(
            f"{name}: commit {commit[:12]} is not in its git remote {remote}{why}. Push the commit there before "
            "training on workers: they train only the flow's commit"
        )
    checkout = _git(root, "checkout", "-q", "--force", "--detach", commit)
    if checkout.returncode != 0 or _git(root, "rev-parse", "HEAD").stdout.strip() != commit:
        raise WrongCommit(f"{name}: could not check out {commit[:12]} in {root}: {checkout.stderr.strip()}")
    return time.perf_counter() - start


def _run_dvc(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    cmd, full_env = dvc_command(*args, env=env)
    proc = subprocess.run(cmd, cwd=root, env=full_env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PipelineError(f"dvc {' '.join(args)} failed in {root}: {(proc.stderr or proc.stdout).strip()[-1500:]}")
    return proc.stdout


def default_remote(root: Path) -> str:
    """The name of the default DVC remote of ``root``, or NoRemote."""
    cmd, env = dvc_command("remote", "default")
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    name = proc.stdout.strip() if proc.returncode == 0 else ""  # with none, it says so on stdout and exits 1
    if not name:
        raise NoRemote(
            f"{root} has no default DVC remote: training on workers moves data through one. "
            "Add it with `dvc remote add -d <name> s3://...` (`fmnist stack up` adds one, `stack`)"
        )
    return name


def lock_entry(root: Path, stage: str) -> dict:
    """``stage``'s entry in ``dvc.lock`` (what was run, on which inputs, giving which outputs)."""
    entry = (yaml.safe_load((root / "dvc.lock").read_text()) or {}).get("stages", {}).get(stage)
    if not entry:
        raise PipelineError(f"dvc.lock has no entry for {stage}: run it first")
    return entry


def receive(root: Path, stage: str, entry: dict) -> float:
    """Record ``entry`` as ``stage``'s in this clone's ``dvc.lock`` and pull its outputs; returns the seconds it took."""
    start = time.perf_counter()
    lock = root / "dvc.lock"
    data = (yaml.safe_load(lock.read_text()) if lock.exists() else None) or {"schema": "2.0", "stages": {}}
    data.setdefault("stages", {})[stage] = entry
    lock.write_text(yaml.safe_dump(data, sort_keys=False))
    _run_dvc(root, "pull", "-q", stage)
    return time.perf_counter() - start


def publish(root: Path, stages: list[str], run_cache: bool = True) -> float:
    """Push ``stages``' outputs, and with ``run_cache`` their run-cache entries, to the default remote; returns the seconds.

    ``dvc push --run-cache`` sends the entries and the cached outputs, but not the objects of the
    ``cache: false`` outputs an entry records (the metrics and plots that stay in git; DVC copies
    them into the local cache for the run cache, treeverse/dvc#3778). Without them the run cache
    cannot restore the stage elsewhere, so they are pushed here through DVC's own API.
    """
    start = time.perf_counter()
    _run_dvc(root, "push", "-q", *(["--run-cache"] if run_cache else []), *stages)
    if not run_cache:
        return time.perf_counter() - start
    from dvc.repo import Repo
    from dvc_data.hashfile.hash_info import HashInfo

    outs = [o for s in stages for o in lock_entry(root, s).get("outs", [])]
    with Repo(str(root)) as repo:
        result = repo.cloud.push([HashInfo("md5", o["md5"]) for o in outs if "md5" in o])
    if result.failed:
        raise PipelineError(f"could not push {len(result.failed)} report file(s) of {', '.join(stages)} to the DVC remote")
    return time.perf_counter() - start


def collect(root: Path, stages: list[str], env: dict[str, str] | None = None) -> tuple[list[str], float]:
    """``dvc repro --pull`` of ``stages`` in the coordinator's checkout.

    Returns:
        The stages restored from the run cache (a stage not found there runs here instead, and
        is missing from the list), and the seconds it took.
    """
    start = time.perf_counter()
    out = _run_dvc(root, "repro", "--pull", "--single-item", *stages, env=env)
    restored = [s for s in stages if f"Stage '{s}' is cached - skipping run" in out]
    return restored, time.perf_counter() - start
