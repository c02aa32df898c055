"""One tiny ``fmnist run`` (``dvc repro`` under one MLflow parent run) per test run, shared read-only by the tracking, serving and predict tests.

The project copy has two variants (baseline, dropout) trained with flips for 2 epochs on 2,000
real images and evaluated and served with flip+shift test-time augmentation, so every variant run has an epoch curve of two steps, and a registry whose
``champion`` is version 1. Building it costs about a minute, so test modules share it through
:func:`reproduced` instead of each running its own (and pytest-xdist workers share one build);
tests must not change it (use a project of their own for that).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, built_once, checkout_prepared, make_project, tiny_params

from pipeline.core.environment import without_clients


def project_env(**extra: str) -> dict[str, str]:
    """Environment for a project's subprocesses: its own store (no outside tracking URI or parent run), the venv first on PATH."""
    env = without_clients(os.environ)
    return env | {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "TF_CPP_MIN_LOG_LEVEL": "2"} | extra


def reproduced(prepared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test run's reproduced project, built on first use from ``prepared_cache`` (once for all xdist workers)."""
    folder = built_once(tmp_path_factory, "repro", lambda folder: _build(folder / "repo", prepared_cache))
    if (failed := folder / "failed.txt").exists():
        pytest.fail(failed.read_text(), pytrace=False)
    return folder / "repo"


def _build(repo: Path, prepared_cache: Path) -> None:
    """Reproduce the tiny project in ``repo``; a failed ``fmnist run`` is kept, as ``failed.txt`` beside it, for every test that asks."""
    params = tiny_params(epochs=2)
    for name, variant in params["variants"].items():  # both served with flip+shift TTA, so the served-figure tests cover it
        variant["augment"] = {"shift": 0, "flip": True}
        params["evaluate"]["tta"][name] = "flip+shift"
    make_project(repo, params)
    checkout_prepared(repo, prepared_cache)
    proc = subprocess.run([str(BIN / "fmnist"), "run"], cwd=repo, env=project_env(), capture_output=True, text=True)
    if proc.returncode:
        (repo.parent / "failed.txt").write_text(f"fmnist run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def store_uri(repo: Path) -> str:
    return f"sqlite:///{repo.resolve() / 'mlflow.db'}"
