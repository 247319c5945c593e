"""When a search stops: ``--trials`` done, the ``--time-budget`` used (or too little of it left for a typical
trial), and when a worker waits instead of starting a trial that other workers will make surplus."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import optuna
from optuna.trial import TrialState

DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # what --trials counts: failed trials are not done


@dataclass
class Budget:
    """The stopping rule of one search process: ``trials`` (shared by every worker of the study) and a
    wall-clock ``time_budget`` in seconds from ``started``, of which the share ``reserved`` is kept for what follows
    the trials (the selection on small data and the refit: autotl/selection.py). ``after(study)``, where given, estimates
    the seconds that work needs from the trials recorded so far: where it exceeds the reserved share, the trials stop
    earlier, never before half the time budget."""

    trials: int | None = None
    time_budget: float | None = None
    started: float = field(default_factory=time.time)
    reserved: float = 0.0
    after: Callable[[optuna.Study], float] | None = None

    @property
    def deadline(self) -> float | None:
        """When the trials must end (``time.time()`` seconds): the time budget less its reserved share; ``None``
        without one."""
        return self.started + self.time_budget * (1.0 - self.reserved) if self.time_budget else None

    @property
    def end(self) -> float | None:
        """When the whole time budget ends (``time.time()`` seconds); ``None`` without one."""
        return self.started + self.time_budget if self.time_budget else None

    def reason_to_stop(self, study: optuna.Study) -> str:
        """Why the search stops now, in words; ``""`` while it goes on."""
        done = study.get_trials(deepcopy=False, states=DONE)
        if self.trials is not None and len(done) >= self.trials:
            return f"{len(done)} trials done, complete or pruned (--trials {self.trials})"
        if self.deadline is None:
            return ""
        remaining = self.deadline - time.time()
        kept = (f" (the last {self.reserved:.0%}, {format_seconds(self.time_budget * self.reserved)}, is kept for the "
                "selection and the refit)") if self.reserved else ""
        if remaining <= 0:
            if self.reserved:
                return (f"the trials' share of the time budget used: {format_seconds(self.time_budget * (1 - self.reserved))}"
                        f" of {format_seconds(self.time_budget)}{kept}")
            return f"time budget of {format_seconds(self.time_budget)} used"
        # pruned trials count: under Hyperband most trials stop after a few epochs, and a trial still
        # running at the deadline is cut there and keeps its best epoch
        durations = [t.duration.total_seconds() for t in done if t.duration]
        typical = statistics.median(durations) if durations else None
        if self.after is not None and self.reserved:
            kept = self.time_budget * self.reserved
            needed = min(self.after(study), 0.5 * self.time_budget)
            left = self.end - time.time()
            if needed > kept and left - needed < 0.5 * (typical or 0.0):
                return (f"the rest of the time budget, {format_seconds(left)}, is kept for the selection and the "
                        f"refit, estimated at {format_seconds(needed)} from the leading trials' recorded epochs")
        if typical and remaining < 0.5 * typical:
            return (f"time budget nearly used: {format_seconds(remaining)} left for trials, a typical trial takes "
                    f"{format_seconds(typical)}{kept}")
        return ""

    def others_will_finish(self, study: optuna.Study) -> bool:
        """With ``trials``: the trials done plus those other workers are running reach it already.

        Then this worker waits instead of starting a surplus trial; if one of those workers dies,
        its trial goes stale, is failed and queued again, and this worker runs it.
        """
        if self.trials is None:
            return False
        done = len(study.get_trials(deepcopy=False, states=DONE))
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        return done + running >= self.trials


def format_seconds(seconds: float | None) -> str:
    """``42s`` below two minutes, else ``2.5min``; ``-`` when unknown."""
    if seconds is None or math.isnan(seconds):
        return "-"
    seconds = float(seconds)
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


__all__ = ["DONE", "Budget", "format_seconds"]
