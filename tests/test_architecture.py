"""The core's structure, read from its source: no import circles, no module using another's private names.

Every import counts, at the top of a module or inside a function: an import put inside a function
to dodge a circle still ties the two modules together. The core is every module under autotl/,
subpackages (autotl/kit/) included, and the package itself (autotl/__init__.py): a module doing
``from autotl import Name`` (or ``from . import Name``) needs the package's ``__init__`` run first, so a
circle through it is one. The private-name check covers the core, the built-in plugins, the example
plugins and the benchmarks: ``from autotl.x import _name``, ``import autotl._x`` and
``import autotl.x as m`` then ``m._name``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "autotl"
#: the folders whose Python files may use the core's public names only (besides the core itself).
USERS = (ROOT / "plugins", ROOT / "examples", ROOT / "benchmarks")


def package_of(path: Path) -> str:
    """The dotted package holding the file at ``path`` (its folders that hold an ``__init__.py``); ``""`` for a
    script outside any package."""
    parts: list[str] = []
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts)


def module_of(path: Path) -> str:
    """The dotted name of the module in the file at ``path``."""
    package = package_of(path)
    if path.stem == "__init__":
        return package
    return f"{package}.{path.stem}" if package else path.stem


def core_modules() -> dict[str, Path]:
    """``autotl.x`` (``autotl.kit.y``, ``autotl`` itself...) -> its file, for every module of the core."""
    return {module_of(p): p for p in sorted(CORE.rglob("*.py"))}


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module a ``from ... import`` names, relative levels resolved against ``package``."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    parent = ".".join(parts[:len(parts) - node.level + 1])
    return f"{parent}.{node.module}" if node.module else parent


def imports(path: Path, package: str, modules=()) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` for every import in the file at ``path`` (``names`` empty for ``import x``).

    Relative imports are resolved against ``package``. ``from P import x`` names the module ``P.x`` when that is
    one of ``modules`` (or, with no ``modules`` given, when ``P`` is relative: ``from . import x``), else the
    package ``P`` itself with the name ``x``.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            names = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules or (not modules and node.level and node.module is None):
                    found.append((submodule, [], node.lineno))
                else:
                    names.append(alias.name)
            if names:
                found.append((base, names, node.lineno))
    return found


def import_graph() -> dict[str, set[str]]:
    """Which core modules each core module imports, the package ``autotl`` (its ``__init__``) included."""
    modules = core_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {module for module, _, _ in imports(path, package_of(path), modules)}
        graph[name] = {t for t in targets if t in modules and t != name}
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


def _core(module: str) -> bool:
    return module == "autotl" or module.startswith("autotl.")


def module_aliases(tree: ast.AST, package: str, modules) -> dict[str, str]:
    """The names under which a file holds core modules: ``import autotl.x as m`` (``m``), ``import autotl.x``
    (``autotl.x``, and ``autotl``), ``from autotl import x`` / ``from . import x`` (``x``)."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _core(alias.name):
                    continue
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    parts = alias.name.split(".")
                    aliases.update({".".join(parts[:i]): ".".join(parts[:i]) for i in range(1, len(parts) + 1)})
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            for alias in node.names:
                if _core(base) and f"{base}.{alias.name}" in modules:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
    return aliases


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else ``None``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def private_imports(path: Path, package: str, own: str, modules=None) -> list[str]:
    """Uses in ``path`` of a private name of a core module other than ``own``: ``from autotl.x import _name``,
    a module ``autotl._x``, or ``m._name`` where ``m`` is a core module the file imported."""
    modules = core_modules() if modules is None else modules
    found = []
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for module, names, line in imports(path, package, modules):
        if not _core(module) or module == own:
            continue
        private = [n for n in names if is_private(n)]
        if any(is_private(part) for part in module.split(".")):
            private.append(f"(module {module})")
        found += [f"{where}:{line}: from {module} import {n}" for n in private]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases = module_aliases(tree, package, modules)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            held = aliases.get(_dotted(node.value) or "")
            if held is not None and held != own:
                found.append(f"{where}:{node.lineno}: {_dotted(node.value)}.{node.attr} ({held}'s private name)")
    return found


def user_files() -> list[Path]:
    """Every Python file of the built-in plugins, the example plugins and the benchmarks."""
    return [path for folder in USERS for path in sorted(folder.rglob("*.py"))]


# -- the checks of the checker ---------------------------------------------------------------------------

def test_the_graph_sees_imports_inside_functions_subpackages_and_the_package():
    graph = import_graph()
    assert "autotl.plugins" in graph["autotl.bundle"]  # `from .plugins import get_registry` inside load()
    assert "autotl.hookspecs" in graph["autotl.plugins"]  # `from . import hookspecs`: the module
    assert "autotl.kit.subject" in graph  # autotl/kit/ is part of the core
    assert "autotl.base" in graph["autotl.kit.subject"]  # `from ..base import ...`
    assert "autotl.base" in graph["autotl"]  # the package's __init__ is a module of the graph


def test_a_circle_through_the_package_is_seen(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .a import thing\nNAME = 1\n")
    (package / "a.py").write_text("from pkg import NAME\nthing = NAME\n")  # needs __init__, which needs it
    (package / "b.py").write_text("from . import a\n")  # the module a: no edge to the package
    modules = {module_of(p): p for p in package.glob("*.py")}
    assert modules.keys() == {"pkg", "pkg.a", "pkg.b"}
    edges = {name: {m for m, _, _ in imports(p, package_of(p), modules) if m in modules} for name, p in modules.items()}
    assert edges == {"pkg": {"pkg.a"}, "pkg.a": {"pkg"}, "pkg.b": {"pkg.a"}}
    assert circles(edges) == [["pkg", "pkg.a"]]


def test_the_circle_finder_finds_a_circle_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_the_private_check_sees_imported_modules_used_for_their_private_names(tmp_path):
    script = tmp_path / "script.py"
    script.write_text("import autotl.run as r\nimport autotl.records\nfrom autotl import leaderboard\n"
                      "from autotl.files import _helper, load_weights\nimport autotl._secret\n"
                      "r._cached\nautotl.records._description\nleaderboard._rows\nr.open_run\nother._x\n")
    found = private_imports(script, "", own="")
    assert [f.split(": ", 1)[1] for f in found] == [
        "from autotl.files import _helper", "from autotl._secret import (module autotl._secret)",
        "r._cached (autotl.run's private name)", "autotl.records._description (autotl.records's private name)",
        "leaderboard._rows (autotl.leaderboard's private name)"]


# -- the checks themselves ----------------------------------------------------------------------------

def test_no_import_circle_among_the_core_modules():
    assert circles(import_graph()) == []


def test_no_core_module_uses_another_modules_private_name():
    modules = core_modules()
    found = []
    for name, path in modules.items():
        found += private_imports(path, package_of(path), own=name, modules=modules)
    assert found == []


def test_plugins_examples_and_benchmarks_use_only_public_names_of_the_core():
    modules = core_modules()
    found = []
    for path in user_files():
        found += private_imports(path, package_of(path), own="", modules=modules)
    assert found == []
