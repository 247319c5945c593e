"""One trial of a search: sample a configuration, train it, record what it did, keep its weights if it ranks.

:class:`Objective` is what the search hands to ``study.optimize``. What it records on the trial is
:class:`autotl.records.TrialRecord` (configuration, curve, timing, cost, weights, why it stopped or
failed); the weights of a trial that ranks among the top ``keep_top`` go to the run folder
(:mod:`autotl.trial_weights`), and the search's keep-top callback drops those that fall out later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from .base import Backbone, LoadedData, Target, Task, TensorSplit
from .budget import DONE, estimated_cost, format_seconds
from .cache import FeatureCache
from .files import save_weights
from .latency import measure_trial
from .progress import Reporter
from .recipes import Recipe, defaults_for
from .records import record_trial
from .space import suggest
from .training import TrainResult, train
from .trial_weights import ranks_in_top, val_outputs_path, weights_metadata, weights_path


@dataclass
class Objective:
    """Runs one trial (``objective(trial)`` returns its best validation ``metric``), as the search set it up."""

    task: Task
    target: Target  # the task's: the loss, the metrics, the network's width
    metric: str  # the metric trials are ranked by (one of the target's)
    data: LoadedData
    zoo: dict[str, Backbone]
    group_counts: dict[str, int]  # {model: layer groups}: the freeze depths sampled
    recipe: Recipe
    device: Any  # torch.device
    cache: FeatureCache | None
    seed: int  # trial N trains with seed + N
    out: Path  # the run folder, where kept weights go
    study_name: str
    keep_top: int
    worker: str  # host:pid, recorded on the trial
    reporter: Reporter = field(default_factory=Reporter)
    deadline: float | None = None  # when the trials must end (time.time() seconds; the loop sets it for each trial)
    current: int | None = field(default=None, init=False)  # the number of the trial running (or last run)
    _cut_at: float | None = field(default=None, init=False, repr=False)  # when the running trial's training stops
    _step: str = field(default="", init=False, repr=False)  # what is done after training, for a failure's message

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        record_trial(trial, worker=self.worker)
        params = self._fitted(trial, suggest(trial, self.recipe, self.group_counts, defaults_for(self.target)))
        record_trial(trial, config=params)
        backbone = self.zoo[params["model"]]
        self.reporter.trial_started(trial.number, params)
        started = time.time()
        result, val = self._train(trial, params, backbone, started)
        try:
            self._keep(trial, params, backbone, result, val, started)
        except KeyboardInterrupt:
            record_trial(trial, error="interrupted (Ctrl-C)")
            raise
        except Exception as exc:
            self._record_failure(trial, exc, started, f"after training, {self._step}")
            raise
        return result.best_value

    def _fitted(self, trial: optuna.Trial, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with as many epochs as end by the deadline where fewer than sampled do, from what the done
        trials like it took (:func:`autotl.budget.estimated_cost`; recorded as ``shortened``), and the moment its
        training stops so that its last validation and its keeping end by the deadline too."""
        self._cut_at = self.deadline
        if self.deadline is None:
            return params
        cost = estimated_cost(trial.study.get_trials(deepcopy=False, states=DONE), params)
        if cost is None:
            return params
        self._cut_at = self.deadline - cost.eval - cost.keep
        left = self.deadline - time.time()
        planned = int(params.get("epochs", 1))
        fits = cost.epochs_within(left)
        if params.get("head_fit") == "converged" or fits >= planned:
            return params
        run = max(1, fits)
        record_trial(trial, shortened=f"{run} of {planned} epochs: {format_seconds(left)} left, about "
                                      f"{format_seconds(cost.epoch)} an epoch")
        return dict(params, epochs=run)

    @property
    def width(self) -> int:
        """The network's outputs per item (or per position), as the target sizes them for the data's labels."""
        return self.target.width(self.data.label_names)

    def _train(self, trial: optuna.Trial, params: dict[str, Any], backbone: Backbone,
               started: float) -> tuple[TrainResult, TensorSplit]:
        """Train the trial's configuration, reporting each epoch to the pruner; a pruned or failed trial is
        recorded as such here (and raises on)."""
        curve: list[float] = []
        stats: dict[str, Any] = {}
        try:
            trial_data = self.task.prepare(self.data, backbone, params)
            on_epoch = self._on_epoch(trial, int(params["epochs"]), curve, params.get("head_fit") == "converged")
            result = train(backbone, params, trial_data.train, trial_data.val, self.target, self.width,
                           metric=self.metric, device=self.device, seed=self.seed + trial.number, on_epoch=on_epoch,
                           deadline=self._cut_at, cache=self.cache,
                           cache_context={"task": self.task.name, "fingerprint": self.data.fingerprint},
                           stats=stats)
        except optuna.TrialPruned as exc:
            _record_stats(trial, stats)
            better = min if self.target.metrics[self.metric] == "minimize" else max
            self.reporter.trial_finished(trial.number, "PRUNED", better(curve, default=None), time.time() - started,
                                         str(exc))
            raise
        except KeyboardInterrupt:
            record_trial(trial, error="interrupted (Ctrl-C)")
            raise
        except Exception as exc:
            self._record_failure(trial, exc, started)
            raise
        return result, trial_data.val

    def _on_epoch(self, trial: optuna.Trial, epochs: int, curve: list[float], converged: bool = False):
        """What ``train`` calls after each epoch: report to the pruner, prune, or stop at the deadline.

        A converged head fit (``head_fit: converged``) is one step that no epoch of another trial compares
        with: it is shown, never reported to the pruner.
        """

        def on_epoch(epoch: int, loss: float, value: float) -> str | None:
            curve.append(value)
            if converged:
                self.reporter.epoch(trial.number, epoch, 1, loss, value)
                return None
            trial.report(value, epoch + 1)  # the step: epochs done, Hyperband's resource
            self.reporter.epoch(trial.number, epoch, epochs, loss, value)
            if epoch + 1 < epochs and trial.should_prune():
                record_trial(trial, stopped=f"pruned after epoch {epoch + 1}")
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")
            if epoch + 1 < epochs and self._cut_at is not None and time.time() > self._cut_at:
                return f"time budget reached after epoch {epoch + 1} of {epochs}"
            return None

        return on_epoch

    def _keep(self, trial: optuna.Trial, params: dict[str, Any], backbone: Backbone, result: TrainResult,
              val: TensorSplit, started: float) -> None:
        """Record the trained trial (curve, timing, cost), and save its merged weights if it ranks in the top."""
        kept_from = time.time()
        self._step = "recording the result"  # what failed, if anything does after training
        if result.stopped:
            record_trial(trial, stopped=result.stopped)
        record_trial(trial, best_epoch=result.best_epoch + 1, val_curve=[round(v, 4) for v in result.curve],
                     epoch_seconds=[round(s, 2) for s in result.epoch_seconds], val_metrics=result.best_metrics,
                     calibration=result.calibration)
        _record_stats(trial, {"timing": result.timing, "cache": result.cache})
        if result.head_fit:
            record_trial(trial, converged_fit=result.head_fit)
        if result.subsample:  # fitted to the deadline (autotl/training.py, _within_deadline)
            shortened = trial.user_attrs.get("shortened")  # its epochs too, perhaps (_fitted)
            record_trial(trial, shortened="; ".join(filter(None, [shortened, f"trained on {result.subsample}"])))
        record_trial(trial, trainable_params=result.adapted.trainable_params, total_params=result.adapted.total_params)
        self._step = "merging the weights"
        state = result.merged_state(backbone)
        self._step = "measuring the cost"
        self._record_cost(trial, backbone, state, val)
        if params.get("head_fit") == "converged" or ranks_in_top(trial.study, result.best_value, trial.number,
                                                                  self.keep_top):  # converged heads: always kept
            # Weights outside the top are dropped by the search's keep-top callback, once Optuna recorded this trial.
            self._step = "saving the weights"
            path = weights_path(self.out, trial.number, self.study_name)
            save_weights(path, state, weights_metadata(self.study_name, trial.number, params["model"]))
            if result.val_outputs is not None:
                save_weights(val_outputs_path(path), {"outputs": result.val_outputs.contiguous()},
                             weights_metadata(self.study_name, trial.number, params["model"]))
            record_trial(trial, weights=str(path.relative_to(self.out)))
        self._step = "reporting the result"
        record_trial(trial, timing={**(result.timing or {}), "keep": round(time.time() - kept_from, 3)})
        fit = result.head_fit
        note = result.stopped or (f"converged head: {fit['iterations']} L-BFGS iterations on {fit['items']} items"
                                  if fit else "")
        self.reporter.trial_finished(trial.number, "COMPLETE", result.best_value, time.time() - started, note)

    def _record_failure(self, trial: optuna.Trial, exc: Exception, started: float, during: str = "") -> None:
        """Record why the trial failed (its ``error`` attribute, which the leaderboard shows) and say so."""
        text = str(exc).strip()
        message = f"{exc.__class__.__name__}: {text.splitlines()[0][:300] if text else ''}"
        if during:
            message = f"{during} failed: {message}"
        record_trial(trial, error=message)
        self.reporter.trial_finished(trial.number, "FAIL", None, time.time() - started, message)

    def _record_cost(self, trial: optuna.Trial, backbone: Backbone, state: dict, val: TensorSplit) -> None:
        """Parameter count and inference latency of the merged network (see autotl/latency.py)."""
        try:
            cost = measure_trial(backbone, state, self.width, val, self.device, per_position=self.target.per_position)
        except Exception as exc:  # a cost we cannot measure must not cost the trial
            record_trial(trial, latency_error=f"{exc.__class__.__name__}: {str(exc)[:200]}")
            return
        record_trial(trial, **cost)


def _record_stats(trial: optuna.Trial, stats: dict[str, Any]) -> None:
    """Where the trial's time went and how the frozen-prefix cache served it (see ``train``)."""
    if stats.get("timing"):
        record_trial(trial, timing={k: round(v, 3) for k, v in stats["timing"].items()})
    if stats.get("cache"):
        record_trial(trial, cache=stats["cache"])


__all__ = ["Objective"]
