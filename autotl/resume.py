"""Resuming or joining a study: what a study begun already decides for every later process of its search.

The split seed, the recipe (its data options, space, fixed settings and start points), the models and
keep_top are the study's (its :class:`~autotl.records.StudyRecord`). An option given that differs from
the study's is refused (:class:`RunError`, saying to leave it out or start another study); one left out
takes the study's.
"""

from __future__ import annotations

import json
from dataclasses import replace

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from typing import Any, Callable, Iterable

from .base import Task
from .errors import RunError
from .options import SearchOptions
from .params import ParameterSet
from .recipes import VAL_FRACTION, Recipe, parse_recipe
from .records import StudyRecord


KEEP_TOP = 3  # --keep-top when neither the command nor the study gives one
#: the recipe's sections that decide the splits and the search space: a later process must not differ in them
RECIPE_DECIDES = ("data", "models", "space", "fixed", "start_with")
AGAIN = "or start another --study/--out"


def new_study_options(given: SearchOptions) -> SearchOptions:
    """The options of the process that begins the study: ``keep_top`` settled."""
    return replace(given, keep_top=given.keep_top or KEEP_TOP)


def check_task(record: StudyRecord, task: Task, where: str) -> None:
    """Refuse to continue a study of another task."""
    if record.task != task.name:
        raise RunError(f"{where} is a {record.task} search, not {task.name}; use another --out or --study")


def adopted_recipe(record: StudyRecord, given: SearchOptions, recipe: Recipe, parameters: ParameterSet) -> Recipe:
    """The recipe this process runs: the study's (with this command's ``--data-option``s) when the command
    names none, else ``recipe``, the one it names; either must agree with the study's in :data:`RECIPE_DECIDES`.
    The study's recipe is checked against ``parameters`` (this process's declarations)."""
    if given.recipe_raw is None and given.recipe is None:  # the study's recipe, with this command's -d
        raw = dict(record.recipe)
        if given.data_options:
            raw["data"] = {**(raw.get("data") or {}), **given.data_options}
        recipe = parse_recipe(raw, record.recipe_source or "the study's recipe", parameters)
        option = "--data-option"
    else:
        option = "--recipe" + (" / --data-option" if given.data_options else "")
    differ = [key for key in RECIPE_DECIDES if _decides(recipe.raw, key) != _decides(record.recipe, key)]
    if differ:
        raise RunError(f"{option} differs from the study's recipe ({record.recipe_source or '?'}) in "
                       f"{', '.join(differ)}, which decide the splits and the search space: leave {option} out "
                       f"to use the study's, {AGAIN}")
    return recipe


def check_metric(record: StudyRecord, metric: str, task: Task, where: str) -> None:
    """Refuse to continue a study that ranks its trials by another metric than ``metric`` (the recipe's); a study
    begun before the metric was recorded ranks by its task's primary one (:meth:`StudyRecord.metric_for`)."""
    recorded = record.metric_for(task)
    if metric != recorded:
        raise RunError(f"the recipe's metric ({metric}) differs from the one {where} ranks its trials by "
                       f"({recorded}): set `metric: {recorded}` in the recipe (or leave it out to use the study's "
                       f"recipe), {AGAIN}")


def adopted_options(record: StudyRecord, given: SearchOptions) -> SearchOptions:
    """``given`` with the study's models, weights files and keep_top where the command left them out."""
    weights = {**record.weights_files, **given.weights} if given.models is None else given.weights
    return replace(given, models=given.models or list(record.models) or None, weights=weights,
                   keep_top=record.keep_top or given.keep_top or KEEP_TOP)


def check_models_and_keep_top(record: StudyRecord, given: SearchOptions, zoo: Iterable[str]) -> None:
    """Refuse ``--models`` (resolved to ``zoo``) or ``--keep-top`` given and different from the study's."""
    recorded, zoo = list(record.models), list(zoo)
    if given.models is not None and set(zoo) != set(recorded):
        raise RunError(f"--models differs from the study's ({','.join(zoo)} vs {','.join(recorded)}): "
                       f"leave --models out to use the study's, {AGAIN}")
    keep_top = record.keep_top
    if keep_top is not None and given.keep_top is not None and given.keep_top != keep_top:
        raise RunError(f"--keep-top {given.keep_top} differs from the study's ({keep_top}): leave --keep-top out "
                       f"to use the study's, {AGAIN}")


def _decides(recipe_raw: dict[str, Any], key: str) -> Any:
    """A recipe section that decides the splits or the space, as the study stores it (JSON), defaults filled in."""
    value = json.loads(json.dumps(recipe_raw.get(key), default=str))
    if key == "data":
        value = {"val_fraction": VAL_FRACTION, **(value or {})}
    return value or None


def searched_as_recorded(study: optuna.Study, recipe: Recipe, say: Callable[[str], None]) -> Recipe:
    """``recipe`` with each range searched in the kind (whole or real numbers) the study's trials recorded it.

    Before parameters were declared (autotl/params.py), a range's kind was guessed from its bounds: a
    real-valued parameter of 0 to 1 was searched in whole numbers, an ``int`` range with ``log`` in real
    ones. Optuna refuses a parameter searched in another kind than the study recorded, so a study begun
    then keeps its kinds, and the user is told.
    """
    recorded: dict[str, str] = {}
    for trial in study.get_trials(deepcopy=False):
        for name, distribution in trial.distributions.items():
            if isinstance(distribution, IntDistribution):
                recorded.setdefault(name, "int")
            elif isinstance(distribution, FloatDistribution):
                recorded.setdefault(name, "float")
            elif isinstance(distribution, CategoricalDistribution):
                recorded.setdefault(name, "categorical")
    space = dict(recipe.space)
    for name, spec in recipe.space.items():
        kind = recorded.get(name)
        if kind in ("int", "float") and spec.kind in ("int", "float") and kind != spec.kind:
            space[name] = replace(spec, type=kind)
            say(f"The study searched {name} in {'whole' if kind == 'int' else 'real'} numbers (as autotl did before "
                f"parameters were declared); it goes on so. A new --out searches it as declared ({spec.kind})")
    return recipe if space == recipe.space else replace(recipe, space=space)


__all__ = ["KEEP_TOP", "RECIPE_DECIDES", "adopted_options", "adopted_recipe", "check_metric", "check_models_and_keep_top",
           "check_task", "new_study_options", "searched_as_recorded"]
