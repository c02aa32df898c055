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

import time
from pathlib import Path

from pipeline.adapters import dvc, git
from pipeline.core.errors import PipelineError


class WrongCommit(PipelineError):
    """A checkout cannot be at the commit the flow trains: uncommitted changes, or a commit its git remote lacks."""


class NoRemote(PipelineError):
    """Distributed training needs a default DVC remote that every machine reaches."""


def commit_for_workers(root: Path) -> str:
    """The commit the workers train: HEAD of ``root``, which must hold every change to code, params and ``dvc.yaml``."""
    changed = git.changes(root)
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise WrongCommit(
            f"the workers train a commit, and this checkout has changes they cannot see: {shown}. "
            "Commit them and push the commit where the workers clone from, or train here (without --workers)"
        )
    return git.git(root, "rev-parse", "HEAD")


def enter_commit(root: Path, commit: str, name: str) -> float:
    """Fetch and check out ``commit`` in the clone at ``root`` (detached); returns the seconds it took.

    Raises:
        WrongCommit: the clone has local edits, or its git remote does not have ``commit``.
    """
    start = time.perf_counter()
    if git.run(root, "rev-parse", "--git-dir").returncode != 0 or not (root / "dvc.yaml").exists():
        raise WrongCommit(f"{name}: {root} is not a clone of the project (no git repository with dvc.yaml)")
    if changed := [f for f in git.changes(root) if not f.startswith(("data/", "models/"))]:
        raise WrongCommit(
            f"{name}: its clone {root} has local edits ({', '.join(changed[:5])}); a worker trains only commits from its "
            f"git remote. Discard them (git -C {root} stash) and rerun"
        )
    remote = git.run(root, "remote", "get-url", "origin").stdout.strip() or "(no origin)"
    fetched = git.run(root, "fetch", "origin")
    if git.run(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        why = f" (git fetch: {git.cause(fetched.stderr, ('fatal:', 'error:'))})" if fetched.returncode else ""
        raise WrongCommit(
            f"{name}: commit {commit[:12]} is not in its git remote {remote}{why}. Push the commit there before "
            "training on workers: they train only the flow's commit"
        )
    checkout = git.run(root, "checkout", "-q", "--force", "--detach", commit)
    if checkout.returncode != 0 or git.run(root, "rev-parse", "HEAD").stdout.strip() != commit:
        why = git.cause(checkout.stderr, ("fatal:", "error:"))
        raise WrongCommit(f"{name}: could not check out {commit[:12]} in {root}: {why}")
    return time.perf_counter() - start


def default_remote(root: Path) -> str:
    """The name of the default DVC remote of ``root``, or NoRemote."""
    try:
        name = dvc.run(root, "remote", "default").strip()
    except git.ToolFailed:  # with none, DVC says so and exits 1
        name = ""
    if not name:
        raise NoRemote(
            f"{root} has no default DVC remote: training on workers moves data through one. "
            "Add it with `dvc remote add -d <name> s3://...` (`fmnist stack up` adds one, `stack`)"
        )
    return name


def receive(root: Path, stage: str, entry: dict) -> float:
    """Record ``entry`` as ``stage``'s in this clone's ``dvc.lock`` and pull its outputs; returns the seconds it took."""
    start = time.perf_counter()
    dvc.set_lock_entry(root / "dvc.lock", stage, entry)
    dvc.run(root, "pull", stage)
    return time.perf_counter() - start


def publish(root: Path, stages: list[str], run_cache: bool = True) -> float:
    """Push ``stages``' outputs, and with ``run_cache`` their run-cache entries, to the default remote; returns the seconds.

    ``dvc push --run-cache`` sends the entries and the cached outputs, but not the objects of the
    ``cache: false`` outputs an entry records (the metrics and plots that stay in git; DVC copies
    them into the local cache for the run cache, treeverse/dvc#3778). Without them the run cache
    cannot restore the stage elsewhere, so they are pushed here through DVC's own API.
    """
    start = time.perf_counter()
    dvc.run(root, "push", *(["--run-cache"] if run_cache else []), *stages)
    if not run_cache:
        return time.perf_counter() - start
    from dvc.repo import Repo
    from dvc_data.hashfile.hash_info import HashInfo

    outs = [o for s in stages for o in dvc.lock_entry(root / "dvc.lock", s).get("outs", [])]
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
    out = dvc.run(root, "repro", "--pull", "--single-item", *stages, env=env)
    restored = [s for s in stages if f"Stage '{s}' is cached - skipping run" in out]
    return restored, time.perf_counter() - start
