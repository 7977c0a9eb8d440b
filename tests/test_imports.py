"""The package's import graph: imports flow one way (no cycle, counting imports inside functions too), no module
of ddpm/ reaches gradio or research/, and no module imports another ddpm module inside a function (which only hides
a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ddpm"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for alias in child.names:  # `from pkg import submodule` imports the submodule
                    sub = f"{target}.{alias.name}"
                    found.append((sub if sub in MODULES else target, child.lineno, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def edges() -> dict[str, set[str]]:
    return {name: {m for m, _, _ in found if m in MODULES and m != name} for name, found in GRAPH.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := dfs(start)):
            return cycle
    return None


def test_the_graph_is_read():
    assert {"ddpm", "ddpm.pipeline", "ddpm.samplers", "ddpm.options", "ddpm.hub", "ddpm.hub.__main__"} <= set(MODULES)
    assert "ddpm.samplers" in edges()["ddpm.pipeline"]
    assert "ddpm.options" in edges()["ddpm.samplers"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_function_level_import_of_the_package():
    hidden = [f"{name}:{line} imports {m}" for name, found in GRAPH.items() for m, line, inner in found
              if inner and (m == "ddpm" or m.startswith("ddpm."))]
    assert not hidden, "imports of ddpm modules inside functions (move them to the top): " + "; ".join(hidden)


@pytest.mark.parametrize("forbidden", ["gradio", "research"])
def test_the_library_stays_below_the_app_and_research(forbidden):
    bad = [f"{name}:{line}" for name, found in GRAPH.items() for m, line, _ in found
           if m == forbidden or m.startswith(forbidden + ".")]
    assert not bad, f"ddpm/ imports {forbidden}: {bad}"


@pytest.mark.parametrize("low, high", [
    ("ddpm.checkpoint", "ddpm.training"), ("ddpm.hub", "ddpm.card"), ("ddpm.pipeline", "ddpm.evaluate"),
    ("ddpm.samplers", "ddpm.selfcheck"), ("ddpm.device", "ddpm.checkpoint"), ("ddpm.options", "ddpm.samplers"),
])
def test_low_modules_do_not_reach_up(low, high):
    graph = edges()
    seen, todo = set(), [low]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert high not in seen, f"{low} reaches {high}"
