"""The shape of the package holds: the import rules of STYLE.md, no import cycle, small
modules, and test modules that share helpers only through conftest.py and fakes.py.

Every import counts, wherever it is written: at the top, inside a function (the fast
path's lazy imports) or under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "streamalchemy"
MAX_LINES = 500

# Layer -> the package's modules it must never import.
FORBIDDEN = {
    "streamalchemy.client": ("streamalchemy.server", "streamalchemy.supervision"),
    "streamalchemy.supervision": ("streamalchemy.server", "streamalchemy.client"),
}
# core imports only the standard library, errors and core.
CORE_MAY_IMPORT = ("streamalchemy.core", "streamalchemy.errors")


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def imports(name: str) -> frozenset[str]:
    """Every module ``name`` imports: the module itself when it is ours, else its package."""
    path = modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*kept, base] if base else kept)
            for alias in node.names:
                whole = f"{base}.{alias.name}"
                found.add(whole if whole in modules() else base)
    return frozenset(found)


def ours(name: str) -> list[str]:
    return sorted(i for i in imports(name) if i.split(".")[0] == "streamalchemy")


def in_layer(name: str, layer: str) -> bool:
    return name == layer or name.startswith(layer + ".")


def test_core_imports_only_the_standard_library_errors_and_core() -> None:
    wrong = {
        name: [
            i
            for i in imports(name)
            if not any(in_layer(i, allowed) for allowed in CORE_MAY_IMPORT)
            and i.split(".")[0] not in sys.stdlib_module_names
        ]
        for name in modules()
        if in_layer(name, "streamalchemy.core")
    }
    assert {n: i for n, i in wrong.items() if i} == {}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_never_imports_what_it_must_not(layer: str) -> None:
    wrong = {
        name: [i for i in ours(name) if any(in_layer(i, f) for f in FORBIDDEN[layer])]
        for name in modules()
        if in_layer(name, layer)
    }
    assert {n: i for n, i in wrong.items() if i} == {}


def _cycles(graph: dict[str, set[str]]) -> Iterator[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(v: str) -> Iterator[set[str]]:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                yield from visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                yield component

    for v in sorted(graph):
        if v not in index:
            yield from visit(v)


def test_no_import_cycle_type_only_imports_counted() -> None:
    graph = {n: {i for i in ours(n) if i in modules() and i != n} for n in modules()}
    assert list(_cycles(graph)) == []


def test_the_cycle_finder_finds_a_cycle_through_three_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert list(_cycles(graph)) == [{"a", "b", "c"}]


def test_every_module_is_at_most_500_lines() -> None:
    long = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert {n: k for n, k in long.items() if k > MAX_LINES} == {}


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in conftest.py, fakes in fakes.py: never in a test module."""
    tests = Path(__file__).resolve().parent
    test_modules = {p.stem for p in tests.glob("test_*.py")}
    wrong = {}
    for path in sorted(tests.glob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
        if found & test_modules:
            wrong[path.name] = sorted(found & test_modules)
    assert wrong == {}
