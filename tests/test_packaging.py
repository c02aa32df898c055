"""Installable as it is: a plain (non-editable) install of the package works from outside the checkout.

The test builds the wheel, installs it into a fresh virtual environment that borrows the test
environment's third-party packages (a ``.pth`` line, so nothing is downloaded), and runs every
``fmnist`` subcommand's ``--help`` and an import of every module from an empty folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT

from pipeline.cli import build_parser


def _subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")  # argparse keeps its subparsers here
    return sorted(action.choices)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the project's wheel installed; returns its ``bin``."""
    work = tmp_path_factory.mktemp("install")
    source, wheels = work / "source", work / "wheels"
    source.mkdir()  # build from a copy: setuptools writes build/ into the tree it builds
    for name in ("pipeline", "benchmarks"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], check=True, cwd=work)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # numpy, mlflow, ... from the test venv
    wheel = next(wheels.glob("fashion_mnist_pipeline-*.whl"))
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "-q", "install", "--no-deps", str(wheel)], check=True, cwd=work)
    return venv / "bin"


def _outside(bin_dir: Path, *cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def test_the_wheel_ships_the_package_and_the_benchmarks_and_no_checkout_path(installed, tmp_path):
    code = (
        "import importlib, pkgutil, pipeline, benchmarks; "
        "names = [m.name for p in (pipeline, benchmarks) for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.') "
        "if not m.name.endswith('__main__')]; [importlib.import_module(n) for n in names]; "
        "print(pipeline.__file__); print(len(names))"
    )
    proc = _outside(installed, str(installed / "python"), "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, count = proc.stdout.split()[-2:]
    assert str(installed.parent) in where and str(ROOT) not in where  # the installed copy, not the checkout
    assert int(count) > 40


def test_every_subcommand_help_works_from_outside_the_checkout(installed, tmp_path):
    commands = _subcommands()
    assert {"run", "train", "promote", "serve", "retrain", "bench"} <= set(commands)
    for command in commands:
        proc = _outside(installed, str(installed / "fmnist"), command, "--help", cwd=tmp_path)
        assert proc.returncode == 0, f"fmnist {command} --help: {proc.stderr[-2000:]}"
        assert proc.stdout.startswith(f"usage: fmnist {command}")
