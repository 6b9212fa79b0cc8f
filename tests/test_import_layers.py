"""The package's layers, read from its source (every import statement, inside functions too): no module imports a
layer above its own, and no modules import each other in a cycle.

Layers, bottom up (a module may import its own layer and the layers listed before it, never one after it):
``_files`` (atomic folders); ``losses`` and ``data`` (neither imports the other); ``models`` (may import ``data``);
``training``; then the applications ``report``, ``quickstart``, ``cli`` in that order. The package's ``__init__``
re-exports names lazily and is left out. Imports for annotations only (under ``if TYPE_CHECKING:``) count for the
layers but not for cycles: they never run.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "pyterrier_marginkd"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: layer -> the layers it may import (besides itself)
ALLOWED = {
    "_files": set(),
    "losses": set(),
    "data": {"_files"},
    "models": {"_files", "data"},
    "training": {"_files", "data", "losses", "models"},
    "report": {"_files", "data", "losses", "models", "training"},
    "quickstart": {"_files", "data", "losses", "models", "training", "report"},
    "cli": {"_files", "data", "losses", "models", "training", "report", "quickstart"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imports(path: Path, known: set[str], *, runtime: bool = False) -> set[str]:
    """The package's modules that ``path`` imports (``from pkg.sub import mod`` names the module ``pkg.sub.mod``);
    with ``runtime``, not those under ``if TYPE_CHECKING:`` (for annotations only: they never run)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = set()
    if runtime:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                skipped |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                      for alias in node.names}
    return {name for name in found if name in known}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def graph(*, runtime: bool = False) -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, set(known), runtime=runtime) for name, path in known.items() if name != PACKAGE}


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in edges.items():
        for target in sorted(targets):
            if layer(target) not in ALLOWED[layer(module)] | {layer(module)}:
                wrong.append(f"{module} imports {target}")
    return wrong


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (the modules in order, the first repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_belongs_to_a_layer():
    assert {layer(m) for m in graph()} == set(ALLOWED)


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(graph()) == []


def test_no_import_cycles():
    assert find_cycle(graph(runtime=True)) is None


@pytest.mark.parametrize("edges, expected", [
    ({"p.cli": {"p.quickstart"}, "p.quickstart": {"p.cli"}}, ["p.cli", "p.quickstart", "p.cli"]),
    ({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}}, ["p.a", "p.b", "p.c", "p.a"]),
    ({"p.a": {"p.b"}, "p.b": set()}, None),
])
def test_the_cycle_check_finds_cycles(edges, expected):
    assert find_cycle(edges) == expected


def test_the_layer_check_finds_the_old_wrong_arrows():
    old = {f"{PACKAGE}.losses.base": {f"{PACKAGE}.models.cross_encoder"},
           f"{PACKAGE}.quickstart": {f"{PACKAGE}.cli"},
           f"{PACKAGE}.models.dot": {f"{PACKAGE}.training.teacher_cache"},
           f"{PACKAGE}.data.groups": {f"{PACKAGE}.losses.base"}}
    assert len(upward_imports(old)) == 4
