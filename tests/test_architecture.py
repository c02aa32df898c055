"""The architecture as contracts: ``lint-imports`` keeps the layers, who imports mlflow/prefect/TensorFlow, no cycles.

The contracts are in ``pyproject.toml``; two of their types are ours (``tests/contracts.py``), so
they are checked here on a small package built to break them, as well as on the project.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

from conftest import BIN, ROOT

from pipeline.cli import build_parser

CONTRACTS = {
    "Layers import one way: cli -> orchestration -> stages | commands -> services | stack -> adapters -> core",
    "No stage imports another stage",
    "Only the MLflow adapter imports mlflow",
    "Only the studies adapter imports optuna",
    "Only orchestration imports prefect",
    "The core imports nothing of the project's outside systems",
    "No TensorFlow or Keras at import time in the CLI, the registry commands or the flows",
    "No import cycles, counting imports inside functions",
}


def _lint(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT), "COLUMNS": "300"}  # tests.contracts importable; no line wrapping
    return subprocess.run([str(BIN / "lint-imports"), *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_the_project_keeps_every_contract():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout
    kept = {line.removesuffix(" KEPT") for line in proc.stdout.splitlines() if line.endswith(" KEPT")}
    assert kept == CONTRACTS, proc.stdout  # every contract by name: none dropped, none renamed unnoticed


def test_a_new_module_outside_the_mlflow_adapter_that_imports_mlflow_breaks_the_contract(tmp_path):
    """The MLflow contract covers the whole package, so a module nobody listed is checked too."""
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "pipeline" / "adapters" / "newcomer.py").write_text("import mlflow\n")
    proc = _lint(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Only the MLflow adapter imports mlflow BROKEN" in proc.stdout
    assert "pipeline.adapters.newcomer" in proc.stdout


def _targets(parser) -> dict[str, str]:
    """Every subcommand's ``"module:function"``, nested ones (``stack up``) included."""
    found = {}
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, sub in action.choices.items():
            if target := sub.get_default("target"):
                found[name] = target
            found |= {f"{name} {k}": v for k, v in _targets(sub).items()}
    return found


def test_every_command_dispatches_to_a_function_that_exists():
    """The CLI names its handlers as strings, imported when a command runs: a renamed function fails here, not for a user."""
    targets = _targets(build_parser())
    assert {"run", "stack up", "stack env", "stack down", "serve", "flow"} <= set(targets)
    for command, target in targets.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function, None)), f"fmnist {command}: {target}"


CONFIG = """
[importlinter]
root_packages =
    toy
include_external_packages = True
contract_types =
    acyclic_modules: tests.contracts.AcyclicModulesContract
    module_level_forbidden: tests.contracts.ModuleLevelForbiddenContract

[importlinter:contract:cycles]
name = no cycles
type = acyclic_modules
packages =
    toy

[importlinter:contract:tf]
name = no json at import time
type = module_level_forbidden
source_modules =
    toy.cli
    toy.lazy
forbidden_modules =
    json
root = toy
"""

TOY = {
    "__init__.py": "",
    "a.py": "def f():\n    from toy import b\n",  # a cycle made of function-level imports only
    "b.py": "from toy import a\n",
    "lazy.py": "def f():\n    import json\n",  # allowed: json only when f runs
    "cli.py": "from toy import middle\n",  # forbidden, two steps away at import time
    "middle.py": "import json\n",
}


def test_our_contract_types_catch_cycles_and_import_time_imports(tmp_path):
    for name, code in TOY.items():
        (tmp_path / "toy").mkdir(exist_ok=True)
        (tmp_path / "toy" / name).write_text(textwrap.dedent(code))
    (tmp_path / ".importlinter").write_text(CONFIG)
    proc = _lint(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "import cycle among: toy.a, toy.b" in proc.stdout
    assert "toy.cli imports json at import time: toy.cli -> toy.middle -> json" in proc.stdout
    assert "toy.lazy" not in proc.stdout.split("Broken contracts")[-1]


def test_the_table_of_modules_in_the_architecture_doc_is_the_code():
    import module_table

    assert module_table.in_doc(module_table.DOC.read_text()) == module_table.table(), (
        "docs/architecture.md lists other modules than pipeline/ holds: run python tests/module_table.py --write"
    )
