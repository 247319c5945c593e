"""The search space: which parameters a trial gets, and how they depend on each other.

``model`` is categorical over the zoo; ``freeze`` ranges over the chosen model's layer groups
(0 = full fine-tuning, groups - 1 = linear probe); ``lora_rank`` is searched only where something
is left unfrozen to adapt. Every other parameter comes from the recipe's ``space`` and ``fixed``.
"""

from __future__ import annotations

from typing import Any, Mapping

import optuna

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
    spec = recipe.space.get("freeze", ParamSpec("freeze", low=0, type="int"))
    if "freeze" in recipe.fixed:
        freeze = min(int(recipe.fixed["freeze"]), last)
    else:
        low = max(0, int(spec.low or 0))
        high = last if spec.high is None else min(last, int(spec.high))
        freeze = trial.suggest_int("freeze", min(low, high), high)
    params["freeze"] = freeze
    if freeze < last and "lora_rank" in recipe.space:
        params["lora_rank"] = int(recipe.space["lora_rank"].suggest(trial))
    else:
        params["lora_rank"] = int(recipe.fixed.get("lora_rank", 0)) if freeze < last else 0
    for name, spec in recipe.space.items():
        if name not in ("model", "freeze", "lora_rank"):
            params[name] = spec.suggest(trial)
    return params
