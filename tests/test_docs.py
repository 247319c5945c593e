"""The documentation keeps up with the code (as datasette's docs tests do): every hook with its exact
signature and an example, every method of the plugin classes, every CLI command and each of its
options."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import click
import pytest

from autotl import hookspecs
from autotl.params import CORE
from autotl.plugins import get_registry
from autotl.base import Backbone, BackboneFamily, Task
from autotl.cli import cli

DOCS = Path(__file__).resolve().parent.parent / "docs"
PLUGINS = DOCS / "plugins.md"
CLI_DOC = DOCS / "cli.md"
RECIPES = DOCS / "recipes.md"


def hookspec_functions():
    return [(name, fn) for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(fn, "autotl_spec")]


def signature_text(name: str, fn) -> str:
    """``name(a: T, *, b: U = 1) -> R`` as written in the source (annotations are strings there)."""
    sig = inspect.signature(fn)
    params = []
    for p in sig.parameters.values():
        text = p.name + (f": {p.annotation}" if p.annotation is not inspect.Parameter.empty else "")
        if p.default is not inspect.Parameter.empty:
            text += f" = {p.default!r}"
        params.append(text)
    returns = f" -> {sig.return_annotation}" if sig.return_annotation is not inspect.Signature.empty else ""
    return f"{name}({', '.join(params)}){returns}"


def sections(text: str, level: str) -> dict[str, str]:
    """Heading text -> the body under it, for headings of exactly ``level`` (e.g. ``###``)."""
    found = {}
    parts = re.split(rf"^{level} (.+)$", text, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2]):
        found[heading.strip()] = re.split(r"^#{1,%d} " % len(level), body, flags=re.M)[0]
    return found


def all_commands(group: click.Group, prefix: str = "autotl"):
    for name, command in sorted(group.commands.items()):
        yield f"{prefix} {name}", command
        if isinstance(command, click.Group):
            yield from all_commands(command, f"{prefix} {name}")


def test_the_hookspecs_are_found():
    assert {name for name, _ in hookspec_functions()} >= {"register_backbone_families", "register_tasks"}


@pytest.mark.parametrize("name, fn", hookspec_functions(), ids=[n for n, _ in hookspec_functions()])
def test_every_hook_is_documented_with_its_exact_signature_and_an_example(name, fn):
    expected = signature_text(name, fn)
    found = sections(PLUGINS.read_text(encoding="utf-8"), "###")
    heading = f"`{expected}`"
    assert heading in found, (f"hook {name} is not documented: docs/plugins.md needs a section `### {heading}` "
                              f"(its exact signature, from autotl/hookspecs.py)")
    body = found[heading]
    assert "```python" in body and "@hookimpl" in body and f"def {name}(" in body, (
        f"the section of hook {name} in docs/plugins.md needs a ```python example with @hookimpl and def {name}(...)")


@pytest.mark.parametrize("cls", [BackboneFamily, Backbone, Task], ids=lambda c: c.__name__)
def test_every_method_of_the_plugin_classes_is_documented(cls):
    text = PLUGINS.read_text(encoding="utf-8")
    methods = [n for n, _ in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")]
    missing = [n for n in methods if not re.search(rf"`(?:{cls.__name__}\.)?{n}\(", text)]
    assert not missing, (f"docs/plugins.md does not document {cls.__name__}."
                         + f", {cls.__name__}.".join(missing) + " (name it as `method(...)`)")


COMMANDS = list(all_commands(cli))


def test_the_commands_are_found():
    assert {name for name, _ in COMMANDS} >= {"autotl search", "autotl trials", "autotl export", "autotl report"}


@pytest.mark.parametrize("name, command", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_cli_command_and_option_is_documented(name, command):
    found = sections(CLI_DOC.read_text(encoding="utf-8"), "##")
    heading = f"`{name}`"
    assert heading in found, f"CLI command `{name}` is not documented: docs/cli.md needs a section `## {heading}`"
    body = found[heading]
    options = [opt for param in command.params if isinstance(param, click.Option)
               for opt in param.opts if opt.startswith("--")]
    missing = [opt for opt in options if not re.search(rf"{re.escape(opt)}\b", body)]
    assert not missing, f"the section of `{name}` in docs/cli.md does not mention its option(s) {', '.join(missing)}"


def test_the_guide_links_every_page_of_the_docs():
    guide = (DOCS / "guide.md").read_text(encoding="utf-8")
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "guide.md":
            assert f"({page.name})" in guide, f"docs/guide.md does not link docs/{page.name}"


def declared_parameters():
    """Every parameter declared by the core and by the installed tasks and backbone families, with its reader."""
    registry = get_registry()
    found = [(param, "core") for param in CORE.values()]
    found += [(param, f"task `{name}`") for name, task in sorted(registry.tasks.items()) for param in task.parameters or ()]
    found += [(param, f"family `{name}`") for name, family in sorted(registry.families.items())
              for param in family.parameters]
    targets = {type(task.target).__name__: task.target for task in registry.tasks.values()
               if getattr(task, "target", None) is not None}
    found += [(param, f"target `{name}`") for name, target in sorted(targets.items()) for param in target.parameters]
    return found


@pytest.mark.parametrize("param, reader", declared_parameters(), ids=lambda v: getattr(v, "name", ""))
def test_every_declared_parameter_is_in_the_recipe_reference_as_declared(param, reader):
    default = "—" if param.default is None else f"`{param.default}`"
    row = f"| `{param.name}` | {param.type} | {param.allowed()} | {default} | {reader} |"
    assert row in RECIPES.read_text(encoding="utf-8"), (
        f"docs/recipes.md's parameter table needs the row {row} ... (from the declaration of {param.name!r})")


def test_every_core_module_has_its_row_in_the_architecture_page():
    """docs/architecture.md's "Where things live" names every module of autotl/, so a newcomer finds each idea by
    file name."""
    package = Path(__file__).resolve().parent.parent / "autotl"
    page = (DOCS / "architecture.md").read_text()
    table = page.split("## Where things live", 1)[1]
    named = set(re.findall(r"`((?:kit/)?\w+\.py)`", table)) | {f"kit/{m}" for m in re.findall(r"`(\w+\.py)`", table)}
    modules = {p.relative_to(package).as_posix() for p in package.rglob("*.py")}
    assert sorted(modules - named) == []
    kit = re.search(r"\| `testing\.py`, `kit/` \|([^\n]*)", table).group(1)
    assert all(f"kit/{p.name}" in kit for p in (package / "kit").glob("*.py"))
