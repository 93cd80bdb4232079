"""No two mi_llm modules import each other, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import mi_llm

PACKAGE = Path(mi_llm.__file__).parent


def _imports(file: Path, modules: set[str]) -> set[str]:
    """The mi_llm modules a file imports anywhere (`from . import x`, `from .x import`, `mi_llm.x`)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if node.level == 1 or parts[0] == "mi_llm":
                inner = parts[1:] if parts[0] == "mi_llm" else parts
                inner = [p for p in inner if p]
                found |= {inner[0]} if inner else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mi_llm.")}
    return found & modules - {file.stem}


def import_graph() -> dict[str, set[str]]:
    """Module -> the mi_llm modules it imports."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    return {p.stem: _imports(p, modules) for p in PACKAGE.glob("*.py")}


def test_no_two_modules_import_each_other():
    graph = import_graph()
    assert graph["llm"] >= {"batch", "cache"}  # the walk sees the package's own imports
    mutual = {tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph[b]}
    assert mutual == set(), f"modules that import each other: {mutual}"
