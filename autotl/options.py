"""What a search is asked to do (:class:`SearchOptions`, the command's options) and how it ended
(:class:`SearchOutcome`): plain records the controller (:mod:`autotl.controller`) and the modules it is made of
share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .runs import RunLocation


@dataclass
class SearchOptions:
    task: str
    data: Path
    out: Path
    recipe: str | None = None
    models: list[str] | None = None
    weights: dict[str, str] = field(default_factory=dict)
    trials: int | None = None
    time_budget: float | None = None
    seed: int = 0  # this process's sampler and training; the split's is the study's (its first process's)
    storage: str | None = None
    study: str | None = None
    device: str = "auto"
    scratch_baseline: bool = False
    keep_top: int | None = None  # None: the study's, else KEEP_TOP
    prerank: bool = True  # rank the models by transferability before a new study's first trial
    cache: bool = True  # the frozen-prefix cache (autotl/cache.py), as the recipe's `cache` section sets it
    data_options: dict[str, Any] = field(default_factory=dict)
    max_failures: int | None = 5
    #: rounds of greedy ensemble selection over the kept trials after the search (autotl/ensemble.py); 0: none
    ensemble_rounds: int = 20
    #: the metric greedy selection climbs (one of the target's) [None: the study's]; the ensemble is reported in the
    #: study's metric either way
    ensemble_metric: str | None = None
    recipe_raw: dict[str, Any] | None = None  # a worker takes the study's recorded recipe


@dataclass
class SearchOutcome:
    location: RunLocation
    interrupted: bool
    stop_reason: str
    trials_run: int
    too_many_failures: bool = False


__all__ = ["SearchOptions", "SearchOutcome"]
