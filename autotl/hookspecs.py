"""The plugin contract: hook specifications, and the ``hookimpl`` marker plugins use.

A plugin is a module (or object) with functions decorated by :data:`hookimpl` whose names match
the specs below. Installed plugins announce themselves through the ``autotl`` entry-point group::

    [project.entry-points.autotl]
    my_backbones = "my_package.autotl_plugin"
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("autotl")
hookimpl = pluggy.HookimplMarker("autotl")


@hookspec
def register_backbone_families(register: Callable) -> None:
    """Register backbone families (timm, Hugging Face transformers, ...).

    :param register: call ``register(family)`` once for each
        :class:`autotl.BackboneFamily` instance the plugin provides.
    """


@hookspec
def register_tasks(register: Callable) -> None:
    """Register task types (:class:`autotl.Task`: what a dataset holds and what is predicted).

    :param register: call ``register(task)`` once for each :class:`autotl.Task` instance the
        plugin provides.
    """
