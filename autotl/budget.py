"""When a search stops: ``--trials`` done, the ``--time-budget`` used (or too little of it left for the shortest
trial seen), and when a worker waits instead of starting a trial that other workers will make surplus; and what a
configuration costs, from what the done trials recorded, so that a trial started late is shortened to fit."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from .records import TrialRecord, is_converged_head

DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # what --trials counts: failed trials are not done
#: the seconds a trial needs after its training (its network merged, its latency measured, its weights saved) until
#: a trial like it recorded them (``timing["keep"]``)
KEEP_S = 3.0


@dataclass(frozen=True)
class TrialCost:
    """What a configuration costs in seconds, estimated from the done trials like it (:func:`estimated_cost`):
    ``setup`` (building the network, and a frozen prefix's outputs where the cache holds none), ``epoch`` (one epoch,
    its validation included), ``eval`` (one validation) and ``keep`` (what follows the training)."""

    setup: float
    epoch: float
    eval: float
    keep: float = KEEP_S

    def seconds(self, epochs: int) -> float:
        return self.setup + epochs * self.epoch + self.keep

    def epochs_within(self, seconds: float) -> int:
        """How many whole epochs fit in ``seconds``, the trial's keeping included."""
        return max(0, int((seconds - self.setup - self.keep) // max(self.epoch, 1e-6)))


def measured_cost(trial: FrozenTrial) -> TrialCost | None:
    """What ``trial`` took (its recorded timing and epochs); ``None`` for a converged-head trial (one fit, no epochs)
    or a trial that recorded no epoch."""
    if is_converged_head(trial):
        return None
    record = TrialRecord.from_trial(trial)
    timing = record.timing or {}
    epochs = [float(s) for s in (record.epoch_seconds or []) if s]
    count = len(epochs) or len(trial.intermediate_values)
    if not count:
        return None
    if len(epochs) > 1 and record.stopped:  # the last epoch may have been cut short
        epochs = epochs[:-1]
    per_epoch = statistics.median(epochs) if epochs else sum(
        float(timing.get(k, 0.0)) for k in ("step", "data", "eval")) / count
    return TrialCost(setup=float(timing.get("setup", 0.0)) + float(timing.get("prefix", 0.0)), epoch=per_epoch,
                     eval=float(timing.get("eval", 0.0)) / count, keep=float(timing.get("keep", KEEP_S)))


def _shape(params: Mapping[str, Any]) -> tuple:
    """What decides a configuration's cost per epoch: every parameter but the floats (rates, decays) and ``epochs``."""
    return tuple(sorted((k, repr(v)) for k, v in params.items() if k != "epochs" and not isinstance(v, float)))


def estimated_cost(trials: Iterable[FrozenTrial], params: Mapping[str, Any]) -> TrialCost | None:
    """What ``params`` will cost, from the done ``trials`` most like it: those of the same shape (every parameter
    but the floats and ``epochs``), else of the same model and freeze depth, else of the same model; ``None`` where
    none has run. The setup is the cheapest seen (a frozen prefix cached by one trial is free to the next)."""
    measured = [(TrialRecord.params(t), c) for t in trials if (c := measured_cost(t)) is not None]
    shape = _shape(params)
    for same in (lambda p: _shape(p) == shape,
                 lambda p: (p.get("model"), p.get("freeze")) == (params.get("model"), params.get("freeze")),
                 lambda p: p.get("model") == params.get("model")):
        costs = [c for p, c in measured if same(p)]
        if costs:
            return TrialCost(setup=min(c.setup for c in costs), epoch=statistics.median(c.epoch for c in costs),
                             eval=statistics.median(c.eval for c in costs),
                             keep=statistics.median(c.keep for c in costs))
    return None


def shortest_seconds(trials: Iterable[FrozenTrial]) -> float | None:
    """The seconds of the shortest trial worth starting: the cheapest setup and one epoch seen; ``None`` before any
    trial recorded an epoch."""
    costs = [c for t in trials if (c := measured_cost(t)) is not None]
    return min(c.seconds(1) for c in costs) if costs else None


def typical_seconds(done: Iterable[FrozenTrial]) -> float | None:
    """The median duration of the ``done`` trials; ``None`` before any."""
    durations = [t.duration.total_seconds() for t in done if t.duration]
    return statistics.median(durations) if durations else None


def short_start(study: optuna.Study, seconds: float) -> tuple[FrozenTrial, dict[str, Any]] | None:
    """A shorter trial for the last ``seconds`` of the trials' time, where a typical trial no longer fits: the shape
    (every sampled parameter but the floats and ``epochs``) of the best complete trial for which two epochs fit (one
    where none does); the sampler chooses the rest. ``(that trial, the parameters to queue)``, or ``None``
    where a typical trial still fits or no trial is short enough."""
    typical = typical_seconds(study.get_trials(deepcopy=False, states=DONE))
    if typical is None or seconds >= typical:
        return None
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else 1.0
    fitting = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        cost = measured_cost(trial)
        fits = cost.epochs_within(seconds) if cost is not None else 0
        if fits and trial.value is not None:
            fitting.append((min(fits, 2), sign * trial.value, -trial.number, trial))
    if not fitting:
        return None
    best = max(fitting, key=lambda row: row[:3])[3]
    return best, {k: v for k, v in best.params.items() if k != "epochs" and not isinstance(v, float)}


@dataclass
class Budget:
    """The stopping rule of one search process: ``trials`` (shared by every worker of the study) and a
    wall-clock ``time_budget`` in seconds from ``started``.

    The trials leave time for what follows them inside the budget (:meth:`trials_end`): ``after(study)`` estimates
    what the selection on small data and the refit need (autotl/selection.py), from the trials recorded so far;
    until it has an estimate the share ``reserved`` of the budget is kept for them. ``finishing(study)`` estimates
    the scoring on the test split and the ensemble's predictions. A trial started when a typical one no longer fits
    is shortened to fit (:func:`estimated_cost`, autotl/objective.py), and the trials stop once less is left than the
    shortest trial seen takes."""

    trials: int | None = None
    time_budget: float | None = None
    started: float = field(default_factory=time.time)
    reserved: float = 0.0
    after: Callable[[optuna.Study], float] | None = None
    finishing: Callable[[optuna.Study], float] | None = None

    @property
    def deadline(self) -> float | None:
        """When the trials end at the latest (``time.time()`` seconds): the time budget less its reserved share;
        ``None`` without one. :meth:`trials_end` is when they end given what they recorded."""
        return self.started + self.time_budget * (1.0 - self.reserved) if self.time_budget else None

    @property
    def end(self) -> float | None:
        """When the whole time budget ends (``time.time()`` seconds); ``None`` without one."""
        return self.started + self.time_budget if self.time_budget else None

    def held(self, study: optuna.Study) -> tuple[float, float]:
        """The seconds kept from the trials at the end of the time budget: (for the selection and the refit, for
        the test scores and the ensemble), each at most half the budget."""
        if not self.time_budget:
            return 0.0, 0.0
        done = study.get_trials(deepcopy=False, states=DONE)
        selection = self.time_budget * self.reserved
        if self.after is not None and self.reserved and done:  # the estimate replaces the share once there is one
            selection = 1.2 * self.after(study)
        finishing = self.finishing(study) if self.finishing is not None and done else 0.0
        half = 0.5 * self.time_budget
        return min(selection, half), min(finishing, half)

    def trials_end(self, study: optuna.Study, held: tuple[float, float] | None = None) -> float | None:
        """When the trials must end for what follows them to fit the time budget (``held``: :meth:`held`, where
        computed already); ``None`` without one."""
        if not self.time_budget:
            return None
        return self.end - min(sum(held or self.held(study)), 0.75 * self.time_budget)

    def reason_to_stop(self, study: optuna.Study) -> str:
        """Why the search stops now, in words; ``""`` while it goes on."""
        done = study.get_trials(deepcopy=False, states=DONE)
        if self.trials is not None and len(done) >= self.trials:
            return f"{len(done)} trials done, complete or pruned (--trials {self.trials})"
        if not self.time_budget:
            return ""
        selection, finishing = held = self.held(study)
        remaining = self.trials_end(study, held) - time.time()
        kept = " and ".join(what for what, seconds in (
            (f"{format_seconds(selection)} for the selection and the refit", selection),
            (f"{format_seconds(finishing)} for the test scores and the ensemble", finishing)) if seconds >= 1)
        kept = f" (kept: {kept})" if kept else ""
        if remaining <= 0:
            return f"time budget of {format_seconds(self.time_budget)} used{kept}"
        # pruned trials count: under Hyperband most trials stop after a few epochs, and a trial still
        # running at the deadline is cut there and keeps its best epoch
        shortest = shortest_seconds(done)
        if shortest is None:
            typical = typical_seconds(done)
            shortest = 0.5 * typical if typical is not None else None
        if shortest and remaining < shortest:
            return (f"time budget nearly used: {format_seconds(remaining)} left for trials, the shortest trial takes "
                    f"{format_seconds(shortest)}{kept}")
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


__all__ = ["DONE", "KEEP_S", "Budget", "TrialCost", "estimated_cost", "format_seconds", "measured_cost", "short_start",
           "shortest_seconds", "typical_seconds"]
