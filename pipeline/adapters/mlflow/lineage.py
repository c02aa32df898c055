"""What every run records about where it came from: git commit and dirtiness, the DVC experiment, data and params hashes, versions."""

from __future__ import annotations

import hashlib
import os
import sys
from importlib import metadata

import mlflow
import numpy as np

from pipeline.adapters import git
from pipeline.adapters.dvc import lock_hashes
from pipeline.adapters.paths import Paths

# What DVC gives every stage of an experiment (`dvc exp run`, queued or not), and the tags they become.
EXPERIMENT_ENV = {"DVC_EXP_NAME": "dvc.exp_name", "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev"}


def _git(paths: Paths, *args: str) -> str:
    """git's answer in the main repository, or empty where there is none (a copy without git, git not installed)."""
    try:
        return git.git(paths.store_root, *args)
    except git.ToolFailed:
        return ""


def _version(package: str) -> str:
    """A library's version without importing it (importing tensorflow takes seconds)."""
    if package in sys.modules:
        return sys.modules[package].__version__
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:  # installed under another distribution name, e.g. tensorflow-cpu
        return "unknown"


def prepared_data_hash(paths: Paths) -> str:
    """The DVC hash of ``data/prepared`` recorded in ``dvc.lock`` (empty if not recorded yet)."""
    return lock_hashes(paths.dvc_lock, "prepare").get("data/prepared", "")


def experiment_tags() -> dict[str, str]:
    """``dvc.exp_name`` and ``dvc.exp_baseline_rev`` when this process is a stage of a DVC experiment, else empty."""
    return {tag: os.environ[env] for env, tag in EXPERIMENT_ENV.items() if os.environ.get(env)}


def lineage_tags(paths: Paths) -> dict[str, str]:
    """Git commit and dirtiness, the DVC experiment (if any), the prepared-data hash, a params hash and library versions,
    of the project at ``paths``."""
    params_text = paths.params.read_text() if paths.params.exists() else ""
    return {
        "git.commit": _git(paths, "rev-parse", "HEAD") or "unknown",
        "git.dirty": str(bool(git.changes(paths.store_root, untracked=False))).lower(),
        "data.prepared_md5": prepared_data_hash(paths),
        "params.sha256": hashlib.sha256(params_text.encode()).hexdigest()[:16],
        "version.tensorflow": _version("tensorflow"),
        "version.keras": _version("keras"),
        "version.mlflow": mlflow.__version__,
        "version.numpy": np.__version__,
    } | experiment_tags()
