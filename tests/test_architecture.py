"""The core's structure, read from its source: no import circles, no module using another's private names.

Every import counts, at the top of a module or inside a function: an import put inside a function
to dodge a circle still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "autotl"
PLUGINS = ROOT / "plugins"


def core_modules() -> dict[str, Path]:
    """``autotl.x`` -> its file, for every module of the core."""
    return {("autotl" if p.stem == "__init__" else f"autotl.{p.stem}"): p for p in sorted(CORE.glob("*.py"))}


def imports(path: Path, package: str) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` for every import in the file at ``path`` (``names`` empty for ``import x``).

    Relative imports are resolved against ``package``; ``from . import x`` names the module ``package.x``.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            if node.module is None:
                found += [(f"{base}.{alias.name}", [], node.lineno) for alias in node.names]
            else:
                found.append((base, [alias.name for alias in node.names], node.lineno))
    return found


def import_graph() -> dict[str, set[str]]:
    """Which core modules each core module imports (``autotl`` itself, the package, left out)."""
    modules = core_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {module for module, _, _ in imports(path, "autotl")}
        graph[name] = {t for t in targets if t in modules and t not in ("autotl", name)}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def private_imports(path: Path, package: str, own: str) -> list[str]:
    """``from autotl.x import _name`` (or a module ``autotl._x``) in ``path``, unless ``autotl.x`` is ``own``."""
    found = []
    for module, names, line in imports(path, package):
        if module != "autotl" and not module.startswith("autotl."):
            continue
        if module == own:
            continue
        leaf = module.rsplit(".", 1)[-1]
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        if leaf.startswith("_") and not leaf.startswith("__"):
            private.append(f"(module {module})")
        found += [f"{path.relative_to(ROOT)}:{line}: from {module} import {n}" for n in private]
    return found


def plugin_files() -> list[tuple[Path, str]]:
    """Every Python file of the built-in plugins, with the package it belongs to."""
    found = []
    for path in sorted(PLUGINS.rglob("*.py")):
        parts = path.relative_to(PLUGINS).with_suffix("").parts
        package = ".".join(parts[:-1]) if parts[-1] == "__init__" or len(parts) > 1 else parts[0]
        found.append((path, package))
    return found


# -- the checks themselves ----------------------------------------------------------------------------

def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "autotl.plugins" in graph["autotl.bundle"]  # `from .plugins import get_registry` inside load()
    assert "autotl.hookspecs" in graph["autotl.plugins"]  # `from . import hookspecs`


def test_the_circle_finder_finds_a_circle_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_no_import_circle_among_the_core_modules():
    assert circles(import_graph()) == []


def test_no_core_module_imports_another_modules_private_name():
    found = []
    for name, path in core_modules().items():
        found += private_imports(path, "autotl", own=name)
    assert found == []


def test_plugins_import_only_public_names_of_the_core():
    found = []
    for path, package in plugin_files():
        found += private_imports(path, package, own="")
    assert found == []
