"""The package's shape: no import circle of any size between mi_llm modules (at module level or
inside a function), and no module past about 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import mi_llm

PACKAGE = Path(mi_llm.__file__).parent
MAX_LINES = 520  # "about 500": a module past this is split by concern


def module_name(file: Path) -> str:
    parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(file: Path, modules: set[str]) -> set[str]:
    """The mi_llm modules a file imports anywhere (`from mi_llm.x import y` names module x.y when
    that is a module, else x)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mi_llm"):
            assert node.level == 0, f"{file}: relative import (the package imports absolutely)"
            for a in node.names:
                full = f"{node.module}.{a.name}"
                found.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mi_llm.")}
    return (found & modules) - {module_name(file)}


def import_graph() -> dict[str, set[str]]:
    """Module -> the mi_llm modules it imports."""
    files = list(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): _imports(p, modules) for p in files}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first walk, as the circle it closes."""
    state, stack, found = {}, [], []

    def walk(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == "open":
                found.append(stack[stack.index(v) :] + [v])
            elif v not in state:
                walk(v)
        stack.pop()
        state[u] = "done"

    for u in sorted(graph):
        if u not in state:
            walk(u)
    return found


def test_circles_finds_a_circle_of_three():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circle_of_any_size():
    graph = import_graph()
    assert graph["mi_llm.llm.api"] >= {
        "mi_llm.llm.batch",
        "mi_llm.llm.cache",
    }  # the walk sees imports
    assert circles(graph) == []


def test_no_module_is_past_about_500_lines():
    long = {
        module_name(p): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, f"modules past {MAX_LINES} lines: {long}"
