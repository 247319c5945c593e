"""The search space: which parameters a trial gets, and how they depend on each other.

``model`` is categorical over the zoo; ``freeze`` ranges over the chosen model's layer groups
(0 = full fine-tuning, groups - 1 = linear probe); ``lora_rank`` is searched only where something
is left unfrozen to adapt. Every other parameter comes from the recipe's ``space`` and ``fixed``.

``head_fit`` is never sampled unless the recipe searches it: a trial is a converged-head fit (the head
alone fitted to convergence on frozen features, autotl/head_fit.py) where the recipe fixes ``head_fit:
converged`` or where it was queued with it (:func:`converged_points`, which a new study queues first);
its freeze depth is then the model's last and its LoRA rank 0, whatever the space says.
"""

from __future__ import annotations

from typing import Any, Collection, Mapping, Sequence

import optuna

from .params import CORE, HEAD_FITS
from .recipes import DEFAULTS, ParamSpec, Recipe


def suggest(trial: optuna.Trial, recipe: Recipe, group_counts: dict[str, int],
            defaults: Mapping[str, Any] = DEFAULTS) -> dict[str, Any]:
    """Sample one configuration; returns every parameter the trial runs with, fixed ones included, over
    ``defaults`` (:func:`autotl.recipes.defaults_for`: the core's and the task's target's)."""
    params: dict[str, Any] = dict(defaults)
    params.update(recipe.fixed)
    model = trial.suggest_categorical("model", sorted(group_counts))
    params["model"] = model
    last = group_counts[model] - 1  # freezing every group but the head: linear probe
    queued = queued_params(trial)
    head_fit = _head_fit(trial, recipe, queued)
    if head_fit is not None:
        params["head_fit"] = head_fit
        if "head_fit_c" in queued and "head_fit_c" not in recipe.fixed and "head_fit_c" not in recipe.space:
            params["head_fit_c"] = float(queued["head_fit_c"])
    low, high = _freeze_range(recipe, last)
    if head_fit == "converged":  # the head alone: every other group frozen, nothing to adapt
        if "freeze" in queued and "freeze" not in recipe.fixed and low <= last <= high:
            trial.suggest_int("freeze", low, high)  # the queued depth, the last: the sampler sees it as any trial's
        freeze = last
    elif "freeze" in recipe.fixed:
        freeze = min(int(recipe.fixed["freeze"]), last)
    else:
        freeze = trial.suggest_int("freeze", min(low, high), high)
    params["freeze"] = freeze
    if freeze < last and "lora_rank" in recipe.space:
        params["lora_rank"] = int(recipe.space["lora_rank"].suggest(trial))
    else:
        params["lora_rank"] = int(recipe.fixed.get("lora_rank", 0)) if freeze < last else 0
    for name, spec in recipe.space.items():
        if name not in ("model", "freeze", "lora_rank", "head_fit"):
            params[name] = spec.suggest(trial)
    return params


def _freeze_range(recipe: Recipe, last: int) -> tuple[int, int]:
    """The freeze depths the recipe's space allows a model whose last depth (its linear probe) is ``last``."""
    spec = recipe.space.get("freeze", ParamSpec("freeze", low=0, type="int"))
    low = max(0, int(spec.low or 0))
    return low, last if spec.high is None else min(last, int(spec.high))


def _head_fit(trial: optuna.Trial, recipe: Recipe, queued: Mapping[str, Any]) -> str | None:
    """How the trial's head trains where something decides it: the recipe's ``fixed`` section, the point the
    trial was queued with, the recipe's space; ``None``: nothing does (the training loop, ``sgd``)."""
    if "head_fit" in recipe.fixed:
        return str(recipe.fixed["head_fit"])
    if "head_fit" in queued:
        return str(trial.suggest_categorical("head_fit", list(HEAD_FITS)))  # the queued value
    if "head_fit" in recipe.space:
        return str(recipe.space["head_fit"].suggest(trial))
    return None


def queued_params(trial: Any) -> dict[str, Any]:
    """The parameters ``trial`` was queued with (``study.enqueue_trial``; a retry of it keeps them): Optuna keeps
    them in the trial's system attribute ``fixed_params``. Empty for a trial nobody queued."""
    system = getattr(trial, "system_attrs", None)  # a FrozenTrial
    if system is None:
        storage, trial_id = getattr(trial, "storage", None), getattr(trial, "_trial_id", None)
        system = storage.get_trial_system_attrs(trial_id) if storage is not None and trial_id is not None else {}
    return dict(system.get("fixed_params") or {})


def converged_points(recipe: Recipe, models: Sequence[str], group_counts: Mapping[str, int],
                     loss_parameters: Collection[str] = ()) -> list[dict[str, Any]]:
    """The converged-head trials a new study queues first: one per model of ``models``, in that order.

    Each names its model, ``head_fit: converged``, ``head_fit_c`` (the recipe's ``converged_head.C``) and its
    freeze depth (the model's last, where the recipe's freeze range holds it), and for every parameter of the
    task and its backbone families that the recipe searches (not the core's, nor the target's
    ``loss_parameters``, which the fit leaves at their defaults) one value: the largest a number takes in
    the space (the highest resolution or longest max length: the richest features), the first choice
    offered otherwise. Everything else is the sampler's, as for any queued point; the fit ignores it.
    """
    shared: dict[str, Any] = {}
    for name, spec in recipe.space.items():
        if name in CORE or name in loss_parameters:
            continue
        if spec.choices is not None:
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec.choices)
            shared[name] = max(spec.choices) if numbers else spec.choices[0]
        elif spec.high is not None:
            shared[name] = int(spec.high) if spec.kind == "int" else float(spec.high)
    points = []
    for model in models:
        point: dict[str, Any] = {"model": model, "head_fit": "converged", "head_fit_c": float(recipe.converged_head["C"])}
        last = group_counts[model] - 1
        low, high = _freeze_range(recipe, last)
        if "freeze" not in recipe.fixed and low <= last <= high:
            point["freeze"] = last
        points.append({**point, **shared})
    return points
