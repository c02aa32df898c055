"""A project sandbox: a fresh git + DVC repository holding the project's code and given params.

The one builder of such copies: the test suite's projects (``tests/conftest.py``) and the bench's
temporary projects (:mod:`benchmarks.project`) are made by :func:`make_project`, so the two never
drift apart. Light on purpose (no TensorFlow, no MLflow): every test process imports it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from pipeline.adapters import dvc, git

# What a copy holds of the repository: the code, the pipeline, the files that ignore its outputs and the alert rules.
COPIED = ("pipeline", "dvc.yaml", ".dvcignore", ".gitignore", "data/.gitignore", "pyproject.toml", "prefect.yaml", "monitoring")
IDENTITY = ("-c", "user.name=fmnist-sandbox", "-c", "user.email=sandbox@localhost")


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def commit(repo: Path, message: str) -> str:
    """Commit everything in ``repo`` (as the sandbox's own identity); returns the commit."""
    git.git(repo, "add", "-A")
    git.git(repo, *IDENTITY, "commit", "-q", "--allow-empty", "-m", message)
    return git.git(repo, "rev-parse", "HEAD")


def make_project(dest: Path, params: dict, source: Path) -> Path:
    """``dest`` as a new git + DVC repository with the code of the project at ``source`` and ``params``, committed."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / name)
    (dest / "data" / "accepted").mkdir(parents=True, exist_ok=True)
    (dest / "data" / "accepted" / ".gitkeep").touch()
    write_params(dest, params)
    git.git(dest, "init", "-q")
    commit(dest, "init")
    dvc.run(dest, "init", "-q")
    (dest / ".dvc" / "config").write_text("[core]\n    analytics = false\n")  # what `dvc config` writes, 1 s sooner
    commit(dest, "project")
    return dest
