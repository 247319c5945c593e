"""Rules the built-in tasks share for fitting a search space to the data (:meth:`autotl.Task.fitted_space`).

Each rule is small and says why: docs/recipes.md ("Ranges fitted to the data") lists them all.
"""

from __future__ import annotations

import math
from statistics import median
from typing import Any, Sequence

from autotl import FittedRange

#: training samples at or below which a trial's epochs are few optimizer steps: the epoch range is stretched by
#: half; at or above :data:`MANY_SAMPLES`, epochs are many steps each: the range is halved.
FEW_SAMPLES = 300
MANY_SAMPLES = 20000


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (0 <= q <= 1; the nearest rank above)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def epochs_by_samples(n_train: int, fallback: Any) -> list[FittedRange]:
    """The ``epochs`` range for ``n_train`` training samples, from the recipe's ``fallback`` range (its ``low`` and
    ``high``): few samples (at most :data:`FEW_SAMPLES`) get half as many epochs again at the top, since an epoch is
    then a few steps; many (at least :data:`MANY_SAMPLES`) half of each bound; otherwise none (the recipe's range)."""
    if getattr(fallback, "choices", None) is not None or fallback.low is None or fallback.high is None:
        return []
    low, high = int(fallback.low), int(fallback.high)
    if n_train <= FEW_SAMPLES:
        return [FittedRange("epochs", f"{n_train} training samples (few: an epoch is a few steps)", low=low,
                            high=max(low, round(high * 1.5)))]
    if n_train >= MANY_SAMPLES:
        return [FittedRange("epochs", f"{n_train} training samples (many: an epoch is many steps)",
                            low=max(1, low // 2), high=max(1, low // 2, high // 2))]
    return []


__all__ = ["FEW_SAMPLES", "MANY_SAMPLES", "epochs_by_samples", "median", "percentile"]
