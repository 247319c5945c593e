"""A search space fitted to the data: the ranges a recipe marks ``fit: data``, set by the task before the first trial.

A recipe's ``space`` entry with ``fit: data`` (the built-in recipes' resolution, max length...) is a fallback: once
a new study's data is loaded, the task looks at it (:meth:`autotl.Task.fitted_space`: image sides, text lengths,
samples) and proposes a range for each such parameter, with why. :func:`fit_space` applies them, prints
one line each and returns them for the study's record (``fitted_space``); a process that resumes or joins the study
applies the recorded ones (:func:`apply_fitted`) and fits nothing again. An entry without ``fit: data`` is the
user's and is never changed. Start points that name a value outside a fitted range move to the nearest value in it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

from .base import Backbone, LoadedData, Task
from .contracts import FittedRange
from .errors import PluginError
from .params import ParameterSet, ParamError
from .recipes import ParamSpec, Recipe


def fit_space(task: Task, data: LoadedData, backbones: Mapping[str, Backbone], recipe: Recipe,
              parameters: ParameterSet, say: Callable[[str], None]) -> tuple[Recipe, list[dict[str, Any]]]:
    """``recipe`` with the ranges it marks ``fit: data`` fitted by ``task`` to ``data``, and the fitted ranges as
    the study records them (``[{param, choices | low, high, why}]``); each is told through ``say``."""
    asked = {name: spec for name, spec in recipe.space.items() if spec.fit}
    if not asked:
        return recipe, []
    fitted = []
    for proposal in task.fitted_space(data, backbones, asked) or ():
        if not isinstance(proposal, FittedRange):
            raise PluginError(f"task {task.name}: fitted_space must return autotl.FittedRange records, not "
                              f"{proposal!r:.100}")
        if proposal.param not in asked:
            continue  # the recipe does not ask for it: the user's range (or the parameter is not searched)
        _check(proposal, parameters, task)
        fitted.append(proposal.to_dict())
        say(f"Space fitted to the data: {proposal.describe()}: {proposal.why}")
    return apply_fitted(recipe, fitted), fitted


def apply_fitted(recipe: Recipe, fitted: Sequence[Mapping[str, Any]] | None) -> Recipe:
    """``recipe`` with the ``fitted`` ranges (as recorded) in place of those it marks ``fit: data``; its start points'
    values of those parameters moved into them (the nearest choice, or clamped to the range)."""
    space = dict(recipe.space)
    for row in fitted or ():
        spec = space.get(row["param"])
        if spec is None or not spec.fit:
            continue
        if row.get("choices") is not None:
            space[spec.name] = replace(spec, choices=tuple(row["choices"]), low=None, high=None, log=False)
        else:
            space[spec.name] = replace(spec, choices=None, low=row["low"], high=row["high"])
    if space == recipe.space:
        return recipe
    start_with = [_moved_into(point, space) for point in recipe.start_with]
    return replace(recipe, space=space, start_with=start_with)


def _moved_into(point: Mapping[str, Any], space: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """A start point whose values of fitted parameters lie in their ranges (Optuna refuses a queued value outside
    a parameter's choices)."""
    moved = dict(point)
    for name, value in point.items():
        spec = space.get(name)
        if spec is None or not spec.fit or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if spec.choices is not None:
            if value not in spec.choices:
                numbers = [c for c in spec.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
                moved[name] = min(numbers, key=lambda c: (abs(c - value), c)) if numbers else spec.choices[0]
        else:
            moved[name] = type(value)(min(max(value, spec.low), spec.high))
    return moved


def _check(proposal: FittedRange, parameters: ParameterSet, task: Task) -> None:
    """A fitted range whose values the parameter takes (its declaration), else the plugin's error."""
    param = parameters.params.get(proposal.param)
    if param is None:
        return
    values = proposal.choices if proposal.choices is not None else [proposal.low, proposal.high]
    try:
        for value in values:
            param.check(value)
    except ParamError as exc:
        raise PluginError(f"task {task.name} fitted {proposal.describe()}, which {proposal.param} does not take: "
                          f"{exc}") from exc


__all__ = ["apply_fitted", "fit_space"]
