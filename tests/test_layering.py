"""The package layering, read from the folders alone: ``sandbox`` < ``runtime`` < ``benchmarks`` < ``training``.

A module's layer is its top-level folder.  A module may import its own layer and the ones below,
never one above; the only exception is the module the ``mathcoder`` console script points at (it
assembles every package's commands).  Every import counts: module level, inside functions and
under ``TYPE_CHECKING`` alike.  There is no import cycle between modules.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

from support.paths import REPO_ROOT

LAYERS = ("sandbox", "runtime", "benchmarks", "training")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for layer in LAYERS for p in sorted((REPO_ROOT / layer).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[int, str]]:
    """(line, imported module) for each import of a project module in ``path``; ``from pkg import
    mod`` counts as an import of ``pkg.mod`` when that is a module, else of ``pkg``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in LAYERS:
                yield node.lineno, target


def console_script_module() -> str:
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    return str(scripts["mathcoder"]).partition(":")[0]


def graph() -> dict[str, dict[str, int]]:
    modules = all_modules()
    edges: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges[name] = {}
        for line, target in imports_of(name, path, modules):
            if target != name:
                edges[name].setdefault(target, line)
    return edges


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def upward_imports(edges: dict[str, dict[str, int]], exempt: str) -> list[str]:
    return sorted(
        f"{module.replace('.', '/')}.py:{line} imports {target} (layer {LAYERS[layer(target)]} is above "
        f"{LAYERS[layer(module)]})"
        for module, targets in edges.items()
        if module != exempt
        for target, line in targets.items()
        if layer(target) > layer(module)
    )


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_console_script_module_exists() -> None:
    assert console_script_module() in all_modules()


def test_no_module_imports_a_higher_layer() -> None:
    assert upward_imports(graph(), exempt=console_script_module()) == []


def test_there_is_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_checks_catch_what_they_name() -> None:
    """The checks themselves can fail: an upward import and a two-module cycle are reported."""
    edges = {"runtime.a": {"benchmarks.b": 3}, "benchmarks.b": {"runtime.a": 1}, "sandbox.c": {}}
    assert upward_imports(edges, exempt="runtime.cli") == [
        "runtime/a.py:3 imports benchmarks.b (layer benchmarks is above runtime)"
    ]
    assert cycles(edges) == [["benchmarks.b", "runtime.a"]]
