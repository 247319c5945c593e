"""The search controller: Optuna study, budget, trials, and the final test-split score.

A search is resumable: the study lives in an Optuna storage (SQLite in the run folder unless
``--storage`` names another), so running the same command again continues it.
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
import sys
import time
import types
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from .base import Backbone, LoadedData, Registry, Task
from .cache import FeatureCache
from .errors import ModelUnavailableError, RunError, UsageError
from .files import load_weights, save_weights, write_json
from .latency import measure_trial
from .leaderboard import best_trial, rank_key
from .network import trained_network
from .progress import Reporter
from .recipes import VAL_FRACTION, Recipe, builtin_recipes, load_recipe, parse_recipe
from .records import (StudyRecord, TrialRecord, begin_study, check_version, complete_keys, record_scratch,
                      record_test_score, record_trial)
from .runs import RunLocation, StudyLock, default_storage, open_storage, recover_interrupted, sqlite_file, write_run_file
from .space import suggest
from .training import accuracy, configure_threads, train
from .trial_weights import drop_outside_top, owner_problem, recorded_weights, weights_metadata, weights_path
from .transfer import prerank_study, sampled_models

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # what --trials counts: failed trials are not done
WAIT_POLL_S = 2.0
KEEP_TOP = 3  # --keep-top when neither the command nor the study gives one
#: the recipe's sections that decide the splits and the search space: a later process must not differ in them
RECIPE_DECIDES = ("data", "models", "space", "fixed", "start_with")


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
    recipe_raw: dict[str, Any] | None = None  # a worker takes the study's recorded recipe


@dataclass
class SearchOutcome:
    location: RunLocation
    interrupted: bool
    stop_reason: str
    trials_run: int
    too_many_failures: bool = False


class Search:
    """Prepares everything that can fail before any trial runs, then runs trials within the budget.

    ``open()`` takes the run folder's lock when the study is SQLite (one process at a time);
    ``close()`` gives it back, so call it before another ``Search`` opens the same folder.
    """

    def __init__(self, options: SearchOptions, registry: Registry, reporter: Reporter):
        self.options = options
        self._given = options  # as the command gave them; `open` settles what a study begun already decides
        self.registry = registry
        self.reporter = reporter
        self.task = _find_task(registry, options.task)
        if options.recipe_raw is not None:
            self.recipe = parse_recipe(options.recipe_raw, "the study's recipe")
        else:
            self.recipe = _resolve_recipe(options.recipe, self.task, options.data_options)
        self.device = _resolve_device(options.device)
        if self.device.type == "cpu":
            configure_threads()
        self.cache = FeatureCache.from_settings(self.recipe.cache) if options.cache else None
        # the models are resolved by `open`, once it knows whether the study names them already
        self.zoo: dict[str, Backbone] = {}
        self.group_counts: dict[str, int] = {}
        self.weight_files: dict[str, str] = {}
        self.data: LoadedData | None = None
        self.study: optuna.Study | None = None
        self.location: RunLocation | None = None
        self.deadline: float | None = None
        self.lock: StudyLock | None = None
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.split_seed = options.seed  # a study begun already: the seed it recorded (see _adopt_study)
        self._current: int | None = None

    # -- preparation -------------------------------------------------------------------------
    def resolve_zoo(self) -> None:
        """Resolve the models to search from the options (``open`` does it once it knows a begun study's models;
        call it only to use a ``Search`` without a study, as the benchmarks do)."""
        self.zoo = self._resolve_models()
        self.group_counts = {name: len(b.layer_groups(b.build(2, pretrained=False))) for name, b in self.zoo.items()}

    def _resolve_models(self) -> dict[str, Backbone]:
        families = self.registry.families_for(self.task)
        if not families:
            raise ModelUnavailableError(
                f"no installed backbone family serves {self.task.name!r} (modality {self.task.modality!r}); "
                "install a backbone plugin for it"
            )
        names = self.options.models or self.recipe.models
        if not names:
            names = [name for family in families for name in family.default_zoo()]
            if not names:
                raise ModelUnavailableError(
                    f"no model for {self.task.name!r} works offline: the packages with offline weights are "
                    "missing; name models with --models (online), or give --weights NAME=FILE"
                )
        weights = dict(self.options.weights)
        if "" in weights:  # a bare `--weights FILE`: only for a single model
            if len(names) != 1:
                raise UsageError("--weights FILE needs exactly one model in --models; otherwise use --weights NAME=FILE")
            weights[names[0]] = weights.pop("")
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise UsageError(f"--weights names model(s) not searched: {', '.join(unknown)}; add them to --models")
        zoo = {}
        for name in dict.fromkeys(names):
            family = next((f for f in families if f.owns(name)), None)
            if family is None:
                known = ", ".join(f.name for f in families)
                raise ModelUnavailableError(
                    f"unknown model {name!r}: no backbone family serving {self.task.name!r} knows it (families: "
                    f"{known}); check the spelling, or see `autotl plugins` for the models that work offline"
                )
            zoo[name] = family.get(name, weights.get(name))
        self.weight_files = {name: str(Path(path).resolve()) for name, path in weights.items()}
        return zoo

    def open(self) -> RunLocation:
        """Open (or resume) the study, load and check the data, and record what the run is.

        A study begun already decides the split seed, the recipe, the models and keep_top
        (:meth:`_adopt_study`), so it is read before the data is loaded.
        """
        opts = self.options
        default = opts.storage is None
        url = opts.storage or default_storage(opts.out)
        self.location = RunLocation(url, opts.study or "autotl", opts.out)
        database = sqlite_file(url)
        storage = None
        described = None
        if database is None or database.is_file():  # a new run folder gets nothing before its data loads
            if database is not None:  # SQLite: one process at a time (see StudyLock)
                self.lock = StudyLock(database)
                self.lock.acquire()
            storage = open_storage(url)
            described = self._adopt_study(_existing_attrs(storage, self.location.study_name))
        else:
            self._adopt_study({})
        self._load_data()
        try:
            opts.out.mkdir(parents=True, exist_ok=True)
            probe = opts.out / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise UsageError(f"cannot write to the output folder {opts.out}: {exc.strerror or exc}; choose another --out") from exc
        if database is not None and self.lock is None:
            self.lock = StudyLock(database)
            self.lock.acquire()
        storage = storage or open_storage(url)
        self.study = optuna.create_study(study_name=self.location.study_name, storage=storage,
                                         sampler=_make_sampler(self.recipe.sampler, opts.seed),
                                         pruner=_make_pruner(self.recipe.pruner), direction="maximize",
                                         load_if_exists=True)
        now = _described(self.study.user_attrs)
        if now is not None and now != described:  # another process began the study while this one loaded data
            split = (self.split_seed, self.recipe.val_fraction, self.recipe.data)
            self._adopt_study(self.study.user_attrs)
            if split != (self.split_seed, self.recipe.val_fraction, self.recipe.data):
                self._load_data()
        if now is not None:
            # Resuming or joining: another seed, or this process would sample the same random start
            # points as the process(es) before it.
            existing = len(self.study.get_trials(deepcopy=False))
            self.study.sampler = _make_sampler(self.recipe.sampler, hash((opts.seed, existing, os.getpid())) % 2**31)
            self.study.pruner = _make_pruner(self.recipe.pruner)
        if self.lock is not None:
            for number in recover_interrupted(self.study):
                self.reporter.message(f"Trial {number} was interrupted when its process stopped (killed or crashed): "
                                      "marked failed and queued to run again")
        self._check_or_record_study()
        self.group_counts = sampled_models(self.group_counts, self.study.user_attrs)  # less what pre-ranking dropped
        write_run_file(self.location, default)
        write_json(opts.out / "data_report.json", self.data.report)
        return self.location

    def _load_data(self) -> None:
        opts = self.options
        self.reporter.message(f"Loading {self.task.name} data from {opts.data} ...")
        self.data = self.task.load(opts.data, seed=self.split_seed, val_fraction=self.recipe.val_fraction,
                                   options=self.recipe.data)
        self.reporter.data_report(self.data.report)

    def _adopt_study(self, attrs: dict[str, Any]) -> dict[str, Any] | None:
        """Take from a study begun already what decides its splits and space; refuse what differs.

        The split seed, the recipe (its data options, space, fixed settings and start points), the
        models and keep_top are the study's. An option given that differs from the study's is refused
        (:class:`RunError`); one left out takes the study's. Returns the study's description (``None``
        for a new or half-recorded study, which this process records).
        """
        opts = self._given
        where = self.location.describe()
        check_version(attrs, where)
        record = StudyRecord.described(attrs)
        if record is None:
            self.options = replace(opts, keep_top=opts.keep_top or KEEP_TOP)
            self.resolve_zoo()
            return None
        if record.task != self.task.name:
            raise RunError(f"{where} is a {record.task} search, not {self.task.name}; "
                           "use another --out or --study")
        again = "or start another --study/--out"
        if opts.recipe_raw is None and opts.recipe is None:  # the study's recipe, with this command's -d
            raw = dict(record.recipe)
            if opts.data_options:
                raw["data"] = {**(raw.get("data") or {}), **opts.data_options}
            self.recipe = parse_recipe(raw, record.recipe_source or "the study's recipe")
            option = "--data-option"
        else:
            option = "--recipe" + (" / --data-option" if opts.data_options else "")
        differ = [key for key in RECIPE_DECIDES if _decides(self.recipe.raw, key) != _decides(record.recipe, key)]
        if differ:
            raise RunError(f"{option} differs from the study's recipe ({record.recipe_source or '?'}) in "
                           f"{', '.join(differ)}, which decide the splits and the search space: leave {option} out "
                           f"to use the study's, {again}")
        recorded = list(record.models)
        weights = {**record.weights_files, **opts.weights} if opts.models is None else opts.weights
        keep_top = record.keep_top
        self.options = replace(opts, models=opts.models or recorded or None, weights=weights,
                               keep_top=keep_top or opts.keep_top or KEEP_TOP)
        self.resolve_zoo()  # first: a misspelt --models is told as such
        if opts.models is not None and set(self.zoo) != set(recorded):
            raise RunError(f"--models differs from the study's ({','.join(self.zoo)} vs {','.join(recorded)}): "
                           f"leave --models out to use the study's, {again}")
        if keep_top is not None and opts.keep_top is not None and opts.keep_top != keep_top:
            raise RunError(f"--keep-top {opts.keep_top} differs from the study's ({keep_top}): leave --keep-top out "
                           f"to use the study's, {again}")
        self.split_seed = record.seed
        if self.split_seed != opts.seed:
            self.reporter.message(f"The study's split seed is {self.split_seed} (its first process's --seed); "
                                  f"--seed {opts.seed} seeds this process's sampler and training")
        if self.cache is not None:
            self.cache = FeatureCache.from_settings(self.recipe.cache)
        return record.description()

    def _check_or_record_study(self) -> None:
        attrs = self.study.user_attrs
        record = StudyRecord.described(attrs)
        if record is not None:
            if record.fingerprint and record.fingerprint != self.data.fingerprint:
                raise RunError(f"the data in {self.options.data} changed since {self.location.describe()} began "
                               f"(fingerprint {record.fingerprint} -> {self.data.fingerprint}); start a new "
                               "run with another --out or --study")
            complete_keys(self.study)  # a creator stopped between the description and `created`
            done = len(self.study.get_trials(deepcopy=False, states=FINISHED))
            verb = "Resuming" if self.lock is not None else "Joining"  # SQLite: this process alone; else shared
            self.reporter.message(f"{verb} {self.location.describe()}: {done} finished trial(s) kept")
            return
        if attrs.get("task"):
            self.reporter.message(f"{self.location.describe()} is half-recorded (the search that began it was "
                                  "interrupted): recording it anew")
        points = [p for p in self.recipe.start_with if p.get("model") in self.zoo]
        # ranked before the study is recorded: a Ctrl-C while ranking leaves a study that starts anew
        if self.options.prerank and self.recipe.prerank["enabled"] and len(self.zoo) > 1:
            points = prerank_study(self.study, self.task, self.data, self.zoo, self.recipe, points, self.group_counts,
                                   self.device, seed=self.split_seed, say=self.reporter.message)
        record = StudyRecord(
            task=self.task.name,
            data=str(Path(self.options.data).resolve()),
            fingerprint=self.data.fingerprint,
            label_names=self.data.label_names,
            recipe=self.recipe.raw,
            recipe_source=self.recipe.source,
            seed=self.split_seed,  # the split's: every later process loads the data with it
            models={name: b.describe() for name, b in self.zoo.items()},
            weights_files=self.weight_files,  # for `autotl export --refit`
            out=str(Path(self.options.out).resolve()),  # where trials/NNNN/ lie, for --storage
            keep_top=self.options.keep_top,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )

        def enqueue() -> None:
            for point in points:
                self.study.enqueue_trial(point, skip_if_exists=True)

        begin_study(self.study, record, before_description=enqueue)

    # -- the search loop -----------------------------------------------------------------------
    def run(self) -> SearchOutcome:
        opts = self.options
        started = time.time()
        self.deadline = started + opts.time_budget if opts.time_budget else None
        self.reporter.search_started(self.location, list(self.zoo), opts.time_budget, opts.trials)
        interrupted, reason, ran, failures, too_many, waiting = False, "", 0, 0, False, False
        try:
            while True:
                reason = self._reason_to_stop(started)
                if reason:
                    break
                if self._others_will_finish():
                    if not waiting:
                        self.reporter.message("Waiting for the trials other workers are running: they complete "
                                              f"--trials {opts.trials} unless one of them dies")
                        waiting = True
                    time.sleep(WAIT_POLL_S)
                    with warnings.catch_warnings():  # "experimental" since Optuna 2.9
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        optuna.storages.fail_stale_trials(self.study)  # a dead worker's trial: failed, queued again
                    continue
                waiting = False
                self._current = None
                try:
                    self.study.optimize(self._objective, n_trials=1, catch=(Exception,), gc_after_trial=False,
                                        callbacks=[self._keep_top_weights])
                except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
                    dropped = self._last_trial()
                    if dropped is None or not dropped.state.is_finished():
                        raise
                    # Optuna could not record the trial: another worker failed it (and queued it
                    # again) while this one was paused or out of reach past the grace period.
                    self.reporter.message(f"Trial {dropped.number} was failed by another worker while this one was "
                                          "paused or lost its heartbeat; its result is dropped and this worker "
                                          "goes on with the next trial")
                    continue
                ran += 1
                last = self._last_trial()
                if last is not None and last.state == TrialState.FAIL:
                    failures += 1
                    if opts.max_failures is not None and failures >= opts.max_failures:
                        too_many = True
                        reason = (f"{failures} trials failed (--max-failures {opts.max_failures}); the last: "
                                  f"{TrialRecord.from_trial(last).error or 'no reason recorded'}")
                        break
        except KeyboardInterrupt:
            interrupted, reason = True, "interrupted (Ctrl-C); every finished trial is kept"
        self.reporter.search_finished(reason)
        return SearchOutcome(self.location, interrupted, reason, ran, too_many)

    def _last_trial(self) -> optuna.trial.FrozenTrial | None:
        if self._current is None:
            return None
        return next((t for t in self.study.get_trials(deepcopy=False) if t.number == self._current), None)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def _others_will_finish(self) -> bool:
        """With --trials N: the trials done plus those other workers are running reach N already.

        Then this worker waits instead of starting a surplus trial; if one of those workers dies,
        its trial goes stale, is failed and queued again, and this worker runs it.
        """
        if self.options.trials is None:
            return False
        done = len(self.study.get_trials(deepcopy=False, states=DONE))
        running = len(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        return done + running >= self.options.trials

    def _reason_to_stop(self, started: float) -> str:
        done = self.study.get_trials(deepcopy=False, states=DONE)
        if self.options.trials is not None and len(done) >= self.options.trials:
            return f"{len(done)} trials done, complete or pruned (--trials {self.options.trials})"
        if self.deadline is None:
            return ""
        remaining = self.deadline - time.time()
        if remaining <= 0:
            return f"time budget of {_fmt_s(self.options.time_budget)} used"
        # pruned trials count: under Hyperband most trials stop after a few epochs, and a trial still
        # running at the deadline is cut there and keeps its best epoch
        durations = [t.duration.total_seconds() for t in done if t.duration]
        typical = statistics.median(durations) if durations else None
        if typical and remaining < 0.5 * typical:
            return (f"time budget nearly used: {_fmt_s(remaining)} left, a typical trial takes {_fmt_s(typical)}")
        return ""

    def _objective(self, trial: optuna.Trial) -> float:
        self._current = trial.number
        record_trial(trial, worker=self.worker_id)
        params = suggest(trial, self.recipe, self.group_counts)
        record_trial(trial, config=params)
        backbone = self.zoo[params["model"]]
        self.reporter.trial_started(trial.number, params)
        started = time.time()
        curve: list[float] = []
        stats: dict[str, Any] = {}
        try:
            trial_data = self.task.prepare(self.data, backbone, params)
            epochs = int(params["epochs"])

            def on_epoch(epoch: int, loss: float, val_accuracy: float) -> str | None:
                curve.append(val_accuracy)
                trial.report(val_accuracy, epoch + 1)  # the step: epochs done, Hyperband's resource
                self.reporter.epoch(trial.number, epoch, epochs, loss, val_accuracy)
                if epoch + 1 < epochs and trial.should_prune():
                    record_trial(trial, stopped=f"pruned after epoch {epoch + 1}")
                    raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")
                if epoch + 1 < epochs and self.deadline is not None and time.time() > self.deadline:
                    return f"time budget reached after epoch {epoch + 1} of {epochs}"
                return None

            result = train(backbone, params, trial_data.train, trial_data.val, len(self.data.label_names),
                           device=self.device, seed=self.options.seed + trial.number, on_epoch=on_epoch,
                           deadline=self.deadline, cache=self.cache,
                           cache_context={"task": self.task.name, "fingerprint": self.data.fingerprint},
                           stats=stats)
        except optuna.TrialPruned as exc:
            _record_stats(trial, stats)
            self.reporter.trial_finished(trial.number, "PRUNED", max(curve, default=None), time.time() - started,
                                         str(exc))
            raise
        except KeyboardInterrupt:
            record_trial(trial, error="interrupted (Ctrl-C)")
            raise
        except Exception as exc:
            self._record_failure(trial, exc, started)
            raise
        step = "recording the result"  # what failed, if anything does after training
        try:
            if result.stopped:
                record_trial(trial, stopped=result.stopped)
            record_trial(trial, best_epoch=result.best_epoch + 1, val_curve=[round(v, 4) for v in result.curve],
                         epoch_seconds=[round(s, 2) for s in result.epoch_seconds])
            _record_stats(trial, {"timing": result.timing, "cache": result.cache})
            record_trial(trial, trainable_params=result.adapted.trainable_params,
                         total_params=result.adapted.total_params)
            step = "merging the weights"
            state = result.merged_state(backbone, len(self.data.label_names))
            step = "measuring the cost"
            self._record_cost(trial, backbone, state, trial_data.val)
            if self._in_top(result.best_accuracy, trial.number):
                # Weights outside the top are dropped by _keep_top_weights, once Optuna has recorded this trial.
                step = "saving the weights"
                study_name = self.location.study_name
                path = weights_path(self.options.out, trial.number, study_name)
                save_weights(path, state, weights_metadata(study_name, trial.number, params["model"]))
                record_trial(trial, weights=str(path.relative_to(self.options.out)))
            step = "reporting the result"
            self.reporter.trial_finished(trial.number, "COMPLETE", result.best_accuracy, time.time() - started,
                                         result.stopped)
        except KeyboardInterrupt:
            record_trial(trial, error="interrupted (Ctrl-C)")
            raise
        except Exception as exc:
            self._record_failure(trial, exc, started, f"after training, {step}")
            raise
        return result.best_accuracy

    def _record_failure(self, trial: optuna.Trial, exc: Exception, started: float, during: str = "") -> None:
        """Record why the trial failed (its ``error`` attribute, which the leaderboard shows) and say so."""
        text = str(exc).strip()
        message = f"{exc.__class__.__name__}: {text.splitlines()[0][:300] if text else ''}"
        if during:
            message = f"{during} failed: {message}"
        record_trial(trial, error=message)
        self.reporter.trial_finished(trial.number, "FAIL", None, time.time() - started, message)

    def _record_cost(self, trial: optuna.Trial, backbone: Backbone, state: dict, val) -> None:
        """Parameter count and inference latency of the merged network (see autotl/latency.py)."""
        try:
            cost = measure_trial(backbone, state, len(self.data.label_names), val, self.device)
        except Exception as exc:  # a cost we cannot measure must not cost the trial
            record_trial(trial, latency_error=f"{exc.__class__.__name__}: {str(exc)[:200]}")
            return
        record_trial(trial, **cost)

    def _in_top(self, value: float, number: int) -> bool:
        """Whether trial ``number``, scoring ``value``, ranks among the top --keep-top completed trials."""
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return sum(rank_key(t) < (-value, number) for t in done) < self.options.keep_top

    def _keep_top_weights(self, study: optuna.Study, finished: optuna.trial.FrozenTrial) -> None:
        """Optuna's callback once it has recorded a trial: keep the weights of the top --keep-top completed
        trials only (none of a failed trial). A kill or database error before the new result is recorded
        thus never leaves the best completed trial without its weights."""
        drop_outside_top(study, self.options.out, self.options.keep_top)

    # -- after the search ----------------------------------------------------------------------
    def score_best_on_test(self) -> dict[str, Any] | None:
        """Score the best trial on the test split, which chose nothing; stored on the study."""
        best = best_trial(self.study)
        if best is None:
            return None
        if not self.data.has_test:
            self.reporter.message("No test/ split: the best trial is reported with its validation score only.")
            return None
        if self.kept_weights(best) is None:
            self.reporter.message(f"Weights of trial {best.number} are not in {self.options.out}; no test score.")
            return None
        params = TrialRecord.params(best)
        backbone = self.zoo.get(params["model"])
        if backbone is None:
            self.reporter.message(f"Model {params['model']} of trial {best.number} is not loaded; no test score.")
            return None
        split = self.task.prepare(self.data, backbone, params).test
        score = {"trial": best.number, "test_accuracy": self.test_accuracy(best), "test_size": len(split)}
        record_test_score(self.study, best.number, score["test_accuracy"])
        return score

    def test_accuracy(self, trial: optuna.trial.FrozenTrial) -> float:
        """A trial's kept weights scored on the test split (which must exist, as must the weights)."""
        params = TrialRecord.params(trial)
        backbone = self.zoo[params["model"]]
        path = self.kept_weights(trial)
        if path is None:
            raise RunError(f"the weights of trial {trial.number} are not kept in {self.options.out}")
        model = trained_network(backbone, len(self.data.label_names), load_weights(path), self.device)
        return accuracy(model, self.task.prepare(self.data, backbone, params).test, self.device)

    def kept_weights(self, trial: optuna.trial.FrozenTrial) -> Path | None:
        """The weights ``trial`` recorded, if they are in the run folder and are its own."""
        path = recorded_weights(trial, [self.options.out])
        if path is None or owner_problem(path, self.location.study_name, trial.number):
            return None
        return path

    def scratch_baseline(self) -> dict[str, Any] | None:
        """Train the best trial's network from random weights (everything trains) and score it."""
        best = best_trial(self.study)
        if best is None:
            return None
        params = dict(TrialRecord.params(best), freeze=0, lora_rank=0)
        backbone = self.zoo[params["model"]]
        self.reporter.message(f"From-scratch comparison: {params['model']} with random weights, "
                              f"{params['epochs']} epochs, lr {params['lr']:.2g} ...")
        data = self.task.prepare(self.data, backbone, params)
        started = time.time()
        result = train(backbone, params, data.train, data.val, len(self.data.label_names), device=self.device,
                       seed=self.options.seed, pretrained=False)
        model = result.adapted.model
        model.load_state_dict(result.best_state)
        scratch = {"model": params["model"], "params": params, "val_accuracy": result.best_accuracy,
                   "test_accuracy": accuracy(model, data.test, self.device) if data.test is not None else None,
                   "duration_s": round(time.time() - started, 1), "compared_with_trial": best.number}
        record_scratch(self.study, scratch)
        return scratch


def _described(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The description of the study with user attributes ``attrs``; ``None`` when no search has begun it."""
    record = StudyRecord.described(attrs)
    return None if record is None else record.description()


def _existing_attrs(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any]:
    """The user attributes of study ``name`` in ``storage``; empty when there is no such study."""
    try:
        return storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    except KeyError:
        return {}


def _decides(recipe_raw: dict[str, Any], key: str) -> Any:
    """A recipe section that decides the splits or the space, as the study stores it (JSON), defaults filled in."""
    value = json.loads(json.dumps(recipe_raw.get(key), default=str))
    if key == "data":
        value = {"val_fraction": VAL_FRACTION, **(value or {})}
    return value or None


def _record_stats(trial: optuna.Trial, stats: dict[str, Any]) -> None:
    """Where the trial's time went and how the frozen-prefix cache served it (see ``train``)."""
    if stats.get("timing"):
        record_trial(trial, timing={k: round(v, 3) for k, v in stats["timing"].items()})
    if stats.get("cache"):
        record_trial(trial, cache=stats["cache"])


def _find_task(registry: Registry, name: str) -> Task:
    if name not in registry.tasks:
        known = ", ".join(sorted(registry.tasks)) or "none (no task plugin is installed)"
        raise UsageError(f"unknown task {name!r}; installed tasks: {known}")
    return registry.tasks[name]


def _resolve_recipe(recipe: str | None, task: Task, data_options: dict[str, Any]) -> Recipe:
    if recipe is None:
        if task.name not in builtin_recipes():
            raise UsageError(f"no built-in recipe for task {task.name!r}; give one with --recipe FILE")
        recipe = task.name
    loaded = load_recipe(recipe)
    if loaded.task != task.name:
        raise UsageError(f"recipe {loaded.source} is for task {loaded.task!r}, not {task.name!r}; give a recipe "
                         f"for {task.name!r}, or leave out --recipe for the built-in one")
    check_data_options(task, data_options, "--data-option")
    check_data_options(task, loaded.data, f"recipe {loaded.source}: data")
    if data_options:
        raw = dict(loaded.raw, data={**(loaded.raw.get("data") or {}), **data_options})
        loaded = parse_recipe(raw, f"{loaded.source} with --data-option {data_options}")
    return loaded


def check_data_options(task: Task, options: dict[str, Any], where: str) -> None:
    """Refuse a data option that neither the core (``val_fraction``) nor the task declares.

    A task that declares no :attr:`~autotl.Task.data_options` (``None``) is handed every option unchecked.
    """
    if task.data_options is None:
        return
    known = {"val_fraction": "share of the training data held out for validation", **task.data_options}
    unknown = [key for key in options if key not in known]
    if unknown:
        raise UsageError(f"{where}: unknown data option {', '.join(map(repr, unknown))} for task {task.name!r}; "
                         f"its options are {', '.join(known)}")


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available here; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device!r} is not a device ({exc}); use auto, cpu, cuda or cuda:N") from exc


def _make_sampler(spec: dict, seed: int) -> optuna.samplers.BaseSampler:
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


def _make_pruner(spec: dict) -> optuna.pruners.BasePruner:
    spec = dict(spec)
    name = spec.pop("name", "median")
    pruners = {"median": optuna.pruners.MedianPruner, "hyperband": optuna.pruners.HyperbandPruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner, "none": optuna.pruners.NopPruner}
    if name not in pruners:
        raise UsageError(f"recipe pruner.name {name!r} is unknown; use one of {', '.join(pruners)}")
    try:
        return pruners[name](**spec)
    except TypeError as exc:
        raise UsageError(f"recipe pruner: {exc}") from exc


def _fmt_s(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "-"
    seconds = float(seconds)
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


class _CallableModule(types.ModuleType):
    """``autotl.search`` is this module, and calling it runs a search: ``autotl.search(DATA, task=...)`` is
    :func:`autotl.api.search`."""

    def __call__(self, data, **options):
        from .api import search

        return search(data, **options)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["Search", "SearchOptions", "SearchOutcome", "weights_path"]
