"""The architecture as contracts: ``lint-imports`` keeps the layers, who imports mlflow/prefect/TensorFlow, no cycles.

The contracts are in ``pyproject.toml``; two of their types are ours (``tests/contracts.py``), so
they are checked here on a small package built to break them, as well as on the project.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

from conftest import BIN, ROOT


def _lint(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT), "COLUMNS": "300"}  # tests.contracts importable; no line wrapping
    return subprocess.run([str(BIN / "lint-imports"), *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_the_project_keeps_every_contract():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout
    kept = [line for line in proc.stdout.splitlines() if line.endswith("KEPT")]
    assert len(kept) >= 3, proc.stdout


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
