"""The table of modules in docs/architecture.md, generated from each module's docstring (first line).

``python tests/module_table.py`` exits 1 when the table in the doc differs from the code (a module
added, removed or re-described); ``--write`` puts the generated table in place.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- modules: begin (python tests/module_table.py --write) -->", "<!-- modules: end -->"


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ").replace("|", "\\|")


def table(root: Path = ROOT) -> str:
    """One row per module of ``pipeline/``: its path and the first paragraph of its docstring."""
    rows = ["| module | what it does |", "|---|---|"]
    for path in sorted((root / "pipeline").rglob("*.py")):
        if path.name == "__main__.py":
            continue
        rows.append(f"| `{path.relative_to(root)}` | {_summary(path)} |")
    return "\n".join(rows)


def in_doc(text: str) -> str:
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def main(argv: list[str]) -> int:
    text = DOC.read_text()
    if "--write" in argv:
        head, rest = text.split(BEGIN, 1)
        DOC.write_text(f"{head}{BEGIN}\n{table()}\n{END}{rest.split(END, 1)[1]}")
        return 0
    if in_doc(text) != table():
        print(f"{DOC.relative_to(ROOT)}: the table of modules differs from the code; run python tests/module_table.py --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
