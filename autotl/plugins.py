"""Loading plugins from the ``autotl`` entry-point group and collecting what they register.

``AUTOTL_LOAD_PLUGINS`` (comma-separated entry-point names) loads only those plugins;
``AUTOTL_BLOCK_PLUGINS`` loads all but those.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Iterable, Sequence

import pluggy

from . import hookspecs
from .base import BackboneFamily, Registry, Target, Task
from .errors import PluginError

ENTRY_POINT_GROUP = "autotl"


def make_manager(extra_plugins: Iterable[object] = (), *, entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the installed plugins (and ``extra_plugins``) loaded and checked."""
    pm = pluggy.PluginManager("autotl")
    pm.add_hookspecs(hookspecs)
    if entry_points:
        _load_entry_points(pm)
    try:
        for plugin in extra_plugins:
            pm.register(plugin)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {_plugin_name(pm, exc.plugin)!r} broke the plugin contract: {exc}") from exc
    return pm


def _plugin_name(pm: pluggy.PluginManager, plugin: object) -> str:
    return pm.get_name(plugin) or getattr(plugin, "__name__", None) or repr(plugin)


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allowed = _names_from_env("AUTOTL_LOAD_PLUGINS")
    for name in _names_from_env("AUTOTL_BLOCK_PLUGINS") or ():
        pm.set_blocked(name)
    if allowed is not None:
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name not in allowed:
                pm.set_blocked(ep.name)
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {_plugin_name(pm, exc.plugin)!r} broke the plugin contract: {exc}") from exc
    except Exception as exc:  # an import error inside somebody's plugin
        raise PluginError(
            f"a plugin in the {ENTRY_POINT_GROUP!r} entry-point group failed to load: {exc!r}; "
            "uninstall it or block it with AUTOTL_BLOCK_PLUGINS=<name>"
        ) from exc


def _names_from_env(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def collect(pm: pluggy.PluginManager) -> Registry:
    """Call the registration hooks of every plugin and gather the results."""
    registry = Registry()

    def add(kind: str, store: dict, expected: type, plugin_name: str):
        def register(item) -> None:
            if not isinstance(item, expected):
                raise PluginError(
                    f"plugin {plugin_name!r} registered {item!r} as a {kind}, "
                    f"but it is not an autotl.{expected.__name__}"
                )
            if item.name in store:
                raise PluginError(
                    f"plugin {plugin_name!r} registered {kind} {item.name!r}, which another "
                    "plugin registered already; block one with AUTOTL_BLOCK_PLUGINS"
                )
            store[item.name] = item
            registry.provided_by.setdefault(plugin_name, []).append(f"{kind} {item.name}")

        return register

    hooks = (
        ("backbone family", "register_backbone_families", registry.families, BackboneFamily),
        ("task", "register_tasks", registry.tasks, Task),
    )
    for kind, hook_name, store, expected in hooks:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            impl.function(register=add(kind, store, expected, impl.plugin_name))
    for name, plugin in pm.list_name_plugin():
        if plugin is not None:  # blocked plugins are listed with None
            registry.provided_by.setdefault(name, [])
    return registry


@lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The registry of the installed plugins, loaded once per process."""
    return collect(make_manager())


def target_of(task: Task, label_names: Sequence[str] | None = None) -> Target:
    """``task``'s :class:`~autotl.Target` (what it predicts: its loss, metrics and decoding), bound to ``label_names``
    where they are known (:meth:`~autotl.Target.for_labels`); a :class:`PluginError` naming the task when it sets
    none."""
    target = getattr(task, "target", None)
    if not isinstance(target, Target):
        raise PluginError(f"task {task.name!r} sets no target ({target!r}): set `target` on the task to an "
                          "autotl.Target instance (its loss, metrics and decoding; the autotl_tasks plugin's "
                          "autotl_tasks.targets holds the built-in ones)")
    return target if label_names is None else target.for_labels(list(label_names))
