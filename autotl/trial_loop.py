"""The loop of a search process: trials one at a time until the budget says stop, waiting while other workers'
trials complete the study's ``--trials``, and stopping after ``--max-failures`` failed trials."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from .budget import Budget, format_seconds, short_start
from .objective import Objective
from .progress import Reporter
from .records import TrialRecord

WAIT_POLL_S = 2.0


@dataclass
class LoopEnd:
    """How the loop ended: why, after how many trials of this process, and whether interrupted or failing."""

    reason: str
    trials_run: int
    interrupted: bool = False
    too_many_failures: bool = False


@dataclass
class TrialLoop:
    """Runs ``objective`` on ``study`` until ``budget`` says stop (``run()``); ``on_recorded`` is Optuna's callback
    once it recorded a trial (the search's keep-top pruning)."""

    study: optuna.Study
    objective: Objective
    budget: Budget
    reporter: Reporter
    max_failures: int | None
    on_recorded: Callable[[optuna.Study, FrozenTrial], None]

    def run(self) -> LoopEnd:
        end, failures, waiting = LoopEnd("", 0), 0, False
        try:
            while not end.reason:
                end.reason = self.budget.reason_to_stop(self.study)
                if end.reason:
                    break
                if self.budget.others_will_finish(self.study):
                    waiting = self._wait_for_others(waiting)
                    continue
                waiting = False
                self._prepare_next()
                recorded, last = self._run_one_trial()
                end.trials_run += recorded
                if last is not None and last.state == TrialState.FAIL:
                    failures += 1
                    if self.max_failures is not None and failures >= self.max_failures:
                        end.too_many_failures = True
                        end.reason = (f"{failures} trials failed (--max-failures {self.max_failures}); the last: "
                                      f"{TrialRecord.from_trial(last).error or 'no reason recorded'}")
        except KeyboardInterrupt:
            end.interrupted, end.reason = True, "interrupted (Ctrl-C); every finished trial is kept"
        return end

    def _prepare_next(self) -> None:
        """Tell the objective when the next trial must end (:meth:`Budget.trials_end`); where a typical trial no
        longer fits, queue a shorter one (:func:`autotl.budget.short_start`) unless a trial is queued already."""
        end = self.budget.trials_end(self.study)
        self.objective.deadline = end
        if end is None or self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return
        left = end - time.time()
        short = short_start(self.study, left)
        if short is None:
            return
        like, params = short
        self.study.enqueue_trial(params)
        shape = ", ".join(f"{k} {v}" for k, v in params.items())
        self.reporter.message(f"{format_seconds(left)} left for trials, less than a typical trial: the next one is "
                              f"shaped like trial {like.number} ({shape}), its epochs cut to fit")

    def _wait_for_others(self, waiting: bool) -> bool:
        """Wait a moment for the trials other workers run (:meth:`Budget.others_will_finish`)."""
        if not waiting:
            self.reporter.message("Waiting for the trials other workers are running: they complete "
                                  f"--trials {self.budget.trials} unless one of them dies")
        time.sleep(WAIT_POLL_S)
        with warnings.catch_warnings():  # "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)  # a dead worker's trial: failed, queued again
        return True

    def _run_one_trial(self) -> tuple[bool, FrozenTrial | None]:
        """Run one trial: (whether Optuna recorded it, the trial as recorded)."""
        self.objective.current = None
        try:
            self.study.optimize(self.objective, n_trials=1, catch=(Exception,), gc_after_trial=False,
                                callbacks=[self.on_recorded])
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            dropped = self._last_trial()
            if dropped is None or not dropped.state.is_finished():
                raise
            # Optuna could not record the trial: another worker failed it (and queued it
            # again) while this one was paused or out of reach past the grace period.
            self.reporter.message(f"Trial {dropped.number} was failed by another worker while this one was "
                                  "paused or lost its heartbeat; its result is dropped and this worker "
                                  "goes on with the next trial")
            return False, None
        return True, self._last_trial()

    def _last_trial(self) -> FrozenTrial | None:
        if self.objective.current is None:
            return None
        return next((t for t in self.study.get_trials(deepcopy=False) if t.number == self.objective.current), None)


__all__ = ["LoopEnd", "TrialLoop"]
