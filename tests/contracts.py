"""Two import-linter contract types that the built-in ones do not cover (declared in ``pyproject.toml``).

- ``acyclic_modules``: no import cycle among the modules of a package, counting every import,
  also those inside functions (grimp's graph holds them all).
- ``module_level_forbidden``: some modules never load others *at import time*: following only the
  imports that run when a module is imported (module and class bodies, not function bodies),
  no chain leads from a source module to a forbidden one. Function-level imports are allowed:
  that is how the CLI and the flows load TensorFlow only in the commands that need it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def strongly_connected(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """The import cycles among ``modules``: each strongly connected group of two or more, sorted (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.find_modules_directly_imported_by(v) & modules):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(modules):
        if module not in index:
            visit(module)
    return sorted(groups)


class AcyclicModulesContract(Contract):
    type_name = "acyclic_modules"
    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        modules = {m for p in self.packages for m in graph.find_descendants(p) | {p}}
        cycles = strongly_connected(graph, modules)
        return ContractCheck(kept=not cycles, metadata={"cycles": cycles})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for group in check.metadata["cycles"]:
            output.print_error(f"import cycle among: {', '.join(group)}")
            output.new_line()


def _import_time_imports(path: Path, module: str) -> set[str]:
    """The modules a file imports when it is imported: module and class bodies, not function bodies."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def walk(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{parent}.{base}" if base else parent
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            walk(ast.iter_child_nodes(node))

    walk(ast.parse(path.read_text()).body)
    return found


class ModuleLevelForbiddenContract(Contract):
    type_name = "module_level_forbidden"
    source_modules = fields.ListField(subfield=fields.StringField())
    forbidden_modules = fields.ListField(subfield=fields.StringField())
    root = fields.StringField(default="pipeline")

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        chains = [chain for source in self.source_modules for chain in [self._chain(source)] if chain]
        return ContractCheck(kept=not chains, metadata={"chains": chains})

    def _chain(self, source: str) -> list[str] | None:
        """A chain of import-time imports from ``source`` to a forbidden module, or None (breadth first)."""
        seen, queue = {source: None}, [source]
        while queue:
            module = queue.pop(0)
            if any(module == f or module.startswith(f + ".") for f in self.forbidden_modules):
                chain = [module]
                while seen[chain[-1]] is not None:
                    chain.append(seen[chain[-1]])
                return chain[::-1]
            path = _file(module, self.root)
            for imported in sorted(_import_time_imports(path, module)) if path else []:
                candidates = [imported] + ([] if _file(imported, self.root) else [imported.split(".")[0]])
                for name in candidates:
                    if name not in seen and (name.split(".")[0] != self.root or _file(name, self.root)):
                        seen[name] = module
                        queue.append(name)
        return None

    def render_broken_contract(self, check: ContractCheck) -> None:
        for chain in check.metadata["chains"]:
            output.print_error(f"{chain[0]} imports {chain[-1]} at import time: " + " -> ".join(chain))
            output.new_line()


def _file(module: str, root: str) -> Path | None:
    """The source file of a project module (under the working directory), or None for an outside package."""
    if module.split(".")[0] != root:
        return None
    base = Path.cwd().joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None
