"""The source models a search searches (its zoo): model names resolved to the backbones that serve the task.

A name is resolved by the first installed backbone family, serving the task's modality, that ``owns``
it; its ``get`` checks that the weights can be had (a local ``--weights`` file, an offline package,
the hub) before any trial runs. With no names (neither ``--models`` nor the recipe's ``models``) the
families' offline ``default_zoo`` is searched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from .base import Backbone, BackboneFamily, Registry, Task
from .errors import ModelUnavailableError, UsageError


def resolve_zoo(registry: Registry, task: Task, names: Sequence[str] | None,
                weights: Mapping[str, str]) -> tuple[dict[str, Backbone], dict[str, str]]:
    """The backbones of the models ``names`` (the families' offline zoo when none) for ``task``, and the
    checkpoint files given for them (``weights``: {model: file}; the key ``""``: the one model's), resolved.

    Raises :class:`ModelUnavailableError` for a model no family knows or whose weights cannot be had, and
    :class:`UsageError` for ``weights`` that name no searched model.
    """
    families = registry.families_for(task)
    if not families:
        raise ModelUnavailableError(
            f"no installed backbone family serves {task.name!r} (modality {task.modality!r}); "
            "install a backbone plugin for it"
        )
    names = list(names or []) or _offline_zoo(task, families)
    weights = _weights_by_model(names, weights)
    zoo = {name: _family_of(name, task, families).get(name, weights.get(name)) for name in dict.fromkeys(names)}
    return zoo, {name: str(Path(path).resolve()) for name, path in weights.items()}


def layer_group_counts(zoo: Mapping[str, Backbone]) -> dict[str, int]:
    """{model: how many layer groups its network has}: the range of the freeze depth searched for it."""
    return {name: len(b.layer_groups(b.build(2, pretrained=False))) for name, b in zoo.items()}


def _offline_zoo(task: Task, families: Sequence[BackboneFamily]) -> list[str]:
    names = [name for family in families for name in family.default_zoo()]
    if not names:
        raise ModelUnavailableError(
            f"no model for {task.name!r} works offline: the packages with offline weights are "
            "missing; name models with --models (online), or give --weights NAME=FILE"
        )
    return names


def _weights_by_model(names: Sequence[str], given: Mapping[str, str]) -> dict[str, str]:
    weights = dict(given)
    if "" in weights:  # a bare `--weights FILE`: only for a single model
        if len(names) != 1:
            raise UsageError("--weights FILE needs exactly one model in --models; otherwise use --weights NAME=FILE")
        weights[names[0]] = weights.pop("")
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise UsageError(f"--weights names model(s) not searched: {', '.join(unknown)}; add them to --models")
    return weights


def _family_of(name: str, task: Task, families: Sequence[BackboneFamily]) -> BackboneFamily:
    family = next((f for f in families if f.owns(name)), None)
    if family is None:
        known = ", ".join(f.name for f in families)
        raise ModelUnavailableError(
            f"unknown model {name!r}: no backbone family serving {task.name!r} knows it (families: "
            f"{known}); check the spelling, or see `autotl plugins` for the models that work offline"
        )
    return family


__all__ = ["layer_group_counts", "resolve_zoo"]
