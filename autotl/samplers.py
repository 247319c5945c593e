"""The recipe's ``sampler`` and ``pruner`` sections made into Optuna's samplers and pruners."""

from __future__ import annotations

import os
import warnings

import optuna

from .errors import UsageError

PRUNERS = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
           "successive_halving": optuna.pruners.SuccessiveHalvingPruner, "none": optuna.pruners.NopPruner}


def make_sampler(spec: dict, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler ``spec`` (``{name: tpe|random, ...TPESampler's options}``) names, seeded with ``seed``."""
    spec = dict(spec)
    name = spec.pop("name", "tpe")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            if spec.get("multivariate"):
                spec.setdefault("group", True)
            return optuna.samplers.TPESampler(seed=seed, **spec)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
    raise UsageError(f"recipe sampler.name {name!r} is unknown; use tpe or random")


def resumed_sampler_seed(seed: int, existing_trials: int) -> int:
    """The sampler seed of a process resuming or joining a study: another one than its first process's, or it
    would sample the same random start points as the process(es) before it."""
    return hash((seed, existing_trials, os.getpid())) % 2**31


def make_pruner(spec: dict) -> optuna.pruners.BasePruner:
    """The pruner ``spec`` (``{name: median|hyperband|successive_halving|none, ...its options}``) names."""
    spec = dict(spec)
    name = spec.pop("name", "median")
    if name not in PRUNERS:
        raise UsageError(f"recipe pruner.name {name!r} is unknown; use one of {', '.join(PRUNERS)}")
    try:
        return PRUNERS[name](**spec)
    except TypeError as exc:
        raise UsageError(f"recipe pruner: {exc}") from exc


__all__ = ["PRUNERS", "make_pruner", "make_sampler", "resumed_sampler_seed"]
