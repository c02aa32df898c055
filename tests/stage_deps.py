"""The project modules a stage command imports, found by reading the code (``import`` statements at any depth).

``python tests/stage_deps.py`` prints, for each stage of ``dvc.yaml``, the ``pipeline/`` files its
command imports transitively: what its ``deps`` must list; ``--write`` puts them into ``dvc.yaml``.
``tests/test_stage_deps.py`` checks it. A module-level ``MODEL_CODE = "<module>"`` names the code
MLflow runs when it loads a logged model (models-from-code): it is followed as an import.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pipeline"


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The file of a project module (``pipeline.core.config`` -> ``pipeline/core/config.py``), or None."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(module: str, tree: ast.AST, is_package: bool) -> set[str]:
    """Modules named by every import statement in ``tree``, at module level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package
                parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import submodule`
    for node in getattr(tree, "body", []):  # MODEL_CODE = "pipeline...": run, not imported, when the model loads
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "MODEL_CODE" for t in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                found.add(node.value.value)
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def closure(start: str, root: Path = ROOT) -> set[Path]:
    """Every project file that importing ``start`` can load: its imports, theirs, and their packages' ``__init__``."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        for name in _with_parents(module):
            if name in seen or module_file(name, root) is None:
                continue
            seen.add(name)
            path = module_file(name, root)
            todo += sorted(_imported(name, ast.parse(path.read_text()), path.name == "__init__.py"))
    return {module_file(m, root) for m in seen}


def is_docstring_only(path: Path) -> bool:
    """Whether a module holds nothing but a docstring (changing it changes no behaviour)."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def stage_commands(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, str]:
    """Stage name -> its command, for every stage of ``dvc.yaml`` (``foreach`` stages once, as ``name@*``)."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name + ("@*" if "foreach" in s else ""): (s.get("do") or s)["cmd"] for name, s in stages.items()}


def stage_deps(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, list[str]]:
    """Stage name -> the ``deps`` it lists in ``dvc.yaml``."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {
        name + ("@*" if "foreach" in s else ""): [str(d) for d in (s.get("do") or s).get("deps", [])]
        for name, s in stages.items()
    }


def command_module(cmd: str) -> str:
    """The module a stage command runs: ``python -m pipeline.stages.train ${key}`` -> ``pipeline.stages.train``."""
    found = re.search(r"python3? -m ([\w.]+)", cmd)
    if not found:
        raise ValueError(f"stage command {cmd!r} does not run `python -m <module>`; cannot derive its deps")
    return found.group(1)


def derived_deps(cmd: str, root: Path = ROOT) -> list[str]:
    """The project files a stage command imports, less docstring-only package files, relative to ``root``."""
    files = closure(command_module(cmd), root)
    return sorted(str(f.relative_to(root)) for f in files if not (f.name == "__init__.py" and is_docstring_only(f)))


def problems(dvc_yaml: Path = ROOT / "dvc.yaml") -> list[str]:
    """What is wrong with the code deps of ``dvc.yaml``: imported files it misses, and listed files never imported."""
    root, listed = dvc_yaml.parent, stage_deps(dvc_yaml)
    found = []
    for stage, cmd in stage_commands(dvc_yaml).items():
        derived = derived_deps(cmd, root)
        code = {d for d in listed[stage] if d.startswith(PACKAGE + "/")}
        found += [f"stage {stage}: missing dep {f} (its command imports it)" for f in derived if f not in listed[stage]]
        found += [f"stage {stage}: dep {f} is never imported by its command" for f in sorted(code - set(derived))]
    return found


def rewrite(dvc_yaml: Path = ROOT / "dvc.yaml") -> None:
    """Replace the ``pipeline/`` deps of every stage in ``dvc.yaml`` with the derived ones (other lines stay)."""
    commands, out, stage, pending = stage_commands(dvc_yaml), [], None, None
    for line in dvc_yaml.read_text().splitlines():
        if m := re.match(r"^  ([\w-]+):\s*$", line):
            stage = m.group(1) if m.group(1) in commands else m.group(1) + "@*"
        if pending and not re.match(r"^\s+- ", line):  # the end of a deps list: the derived deps go last
            out += pending
            pending = None
        if re.match(rf"^\s+- {PACKAGE}/", line):
            continue
        out.append(line)
        if m := re.match(r"^(\s+)deps:\s*$", line):
            pending = [f"{m.group(1)}  - {dep}" for dep in derived_deps(commands[stage], dvc_yaml.parent)]
    dvc_yaml.write_text("\n".join(out + (pending or [])) + "\n")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--write"]
    dvc_yaml = Path(args[0]) if args else ROOT / "dvc.yaml"
    if "--write" in sys.argv:
        rewrite(dvc_yaml)
    for stage, cmd in stage_commands(dvc_yaml).items():
        print(f"{stage}:")
        for dep in derived_deps(cmd, dvc_yaml.parent):
            print(f"  - {dep}")
    print("\n".join(problems(dvc_yaml)) or "dvc.yaml lists exactly these deps")
