"""The search controller: Optuna study, budget, trials, and the final test-split score.

A search is resumable: the study lives in an Optuna storage (SQLite in the run folder unless
``--storage`` names another), so running the same command again continues it.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from .after_search import ensemble_after_search, finishing_seconds, score_best_on_test, scratch_baseline
from .base import Backbone, LoadedData, Registry, Task
from .budget import Budget
from .cache import FeatureCache
from .device import resolve_device
from .errors import AutotlError, RunError, UsageError
from .files import write_json
from .fitted_space import apply_fitted, fit_space
from .objective import Objective
from .options import SearchOptions, SearchOutcome
from .params import ParameterSet, parameters_for
from .progress import Reporter
from .plugins import target_of
from .recipes import Recipe, builtin_recipes, checked_metric, load_recipe, parse_recipe
from .records import StudyRecord, begin_study, check_version, complete_keys, half_recorded
from .resume import (adopted_options, adopted_recipe, check_metric, check_models_and_keep_top, check_task,
                     new_study_options, searched_as_recorded)
from .runs import RunLocation, StudyLock, default_storage, open_storage, recover_interrupted, sqlite_file, write_run_file
from .samplers import make_pruner, make_sampler, resumed_sampler_seed
from .selection import Selection, applies, out_of_fold, needed_seconds, recorded_refit, refits, split_items, tie_break_metric
from .space import converged_points
from .training import configure_threads
from .trial_loop import TrialLoop
from .transfer import prerank_study, sampled_models
from .leaderboard import best_trial
from .trial_weights import drop_outside_top, kept_weights, weights_path
from .zoo import layer_group_counts, resolve_zoo

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class Search:
    """Prepares everything that can fail before any trial runs, then runs trials within the budget.

    ``open()`` takes the run folder's lock when the study is SQLite (one process at a time);
    ``close()`` gives it back, so call it before another ``Search`` opens the same folder. The pieces it
    puts together: the zoo (:mod:`autotl.zoo`), what a begun study decides (:mod:`autotl.resume`), the
    study's record (:mod:`autotl.records`), the sampler and pruner (:mod:`autotl.samplers`), the stopping
    rule (:mod:`autotl.budget`), one trial (:mod:`autotl.objective`), and the test score and scratch
    baseline afterwards (:mod:`autotl.after_search`).
    """

    def __init__(self, options: SearchOptions, registry: Registry, reporter: Reporter):
        self.options = options
        self._given = options  # as the command gave them; `open` settles what a study begun already decides
        self.registry = registry
        self.reporter = reporter
        self.task = _find_task(registry, options.task)
        self.target = target_of(self.task)
        self.parameters = parameters_for(self.task, registry.families_for(self.task))
        if options.recipe_raw is not None:  # checked when the study began: names nobody declares now pass
            self.recipe = parse_recipe(options.recipe_raw, "the study's recipe", replace(self.parameters, strict=False))
        else:
            self.recipe = _resolve_recipe(options.recipe, self.task, options.data_options, self.parameters)
        self.metric = checked_metric(self.recipe, self.target)  # what trials are ranked by (a begun study's: open)
        self._check_ensemble_metric()  # again once the labels are known: a target's metrics may depend on them
        self.device = resolve_device(options.device)
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
        self.lock: StudyLock | None = None
        self.budget: Budget | None = None
        self.opened_at: float | None = None
        self.objective: Objective | None = None
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.split_seed = options.seed  # a study begun already: the seed it recorded (see _adopt_study)
        self.fitted_space: list[dict[str, Any]] = []  # the ranges fitted to the data (autotl/fitted_space.py)

    # -- preparation -------------------------------------------------------------------------
    def resolve_zoo(self) -> None:
        """Resolve the models to search from the options (``open`` does it once it knows a begun study's models;
        call it only to use a ``Search`` without a study, as the benchmarks do)."""
        self.zoo, self.weight_files = resolve_zoo(self.registry, self.task, self.options.models or self.recipe.models,
                                                  self.options.weights)
        self.group_counts = layer_group_counts(self.zoo)

    def open(self) -> RunLocation:
        """Open (or resume) the study, load and check the data, and record what the run is.

        A study begun already decides the split seed, the recipe, the models and keep_top
        (:meth:`_adopt_study`), so it is read before the data is loaded.
        """
        opts = self.options
        self.opened_at = time.time()  # the time budget counts from here: loading the data and pre-ranking count
        url = opts.storage or default_storage(opts.out)
        self.location = RunLocation(url, opts.study or "autotl", opts.out)
        database = sqlite_file(url)
        storage = described = None
        if database is None or database.is_file():  # a new run folder gets nothing before its data loads
            storage = self._open_storage(url, database)
            described = self._adopt_study(_existing_attrs(storage, self.location.study_name))
        else:
            self._adopt_study({})
        self._load_data()
        _check_writable(opts.out)
        self._open_study(storage or self._open_storage(url, database), described)
        self._check_or_record_study()
        self._check_ensemble_metric()
        self.group_counts = sampled_models(self.group_counts, self.study.user_attrs)  # less what pre-ranking dropped
        write_run_file(self.location, opts.storage is None)
        write_json(opts.out / "data_report.json", self.data.report)
        return self.location

    def _check_ensemble_metric(self) -> None:
        chosen = self.options.ensemble_metric
        if chosen and chosen not in self.target.metrics:
            raise UsageError(f"--ensemble-metric {chosen} is no metric of task {self.task.name}; use one of "
                             f"{', '.join(self.target.metrics)}")

    def _open_storage(self, url: str, database: Path | None) -> optuna.storages.BaseStorage:
        if database is not None and self.lock is None:  # SQLite: one process at a time (see StudyLock)
            self.lock = StudyLock(database)
            self.lock.acquire()
        return open_storage(url)

    def _open_study(self, storage: optuna.storages.BaseStorage, described: dict[str, Any] | None) -> None:
        """Create or load the study; take what another process recorded meanwhile; recover interrupted trials."""
        seed = self.options.seed
        self.study = optuna.create_study(study_name=self.location.study_name, storage=storage,
                                         sampler=make_sampler(self.recipe.sampler, seed),
                                         pruner=make_pruner(self.recipe.pruner), direction=self.direction,
                                         load_if_exists=True)
        now = _described(self.study.user_attrs)
        if now is not None and now != described:  # another process began the study while this one loaded data
            split = (self.split_seed, self.recipe.val_fraction, self.recipe.data)
            self._adopt_study(self.study.user_attrs)
            if split != (self.split_seed, self.recipe.val_fraction, self.recipe.data):
                self._load_data()
        if now is not None:  # resuming or joining: see resumed_sampler_seed
            existing = len(self.study.get_trials(deepcopy=False))
            self.study.sampler = make_sampler(self.recipe.sampler, resumed_sampler_seed(seed, existing))
            self.study.pruner = make_pruner(self.recipe.pruner)
            self.recipe = searched_as_recorded(self.study, self.recipe, self.reporter.message)
        if self.lock is not None:
            for number in recover_interrupted(self.study):
                self.reporter.message(f"Trial {number} was interrupted when its process stopped (killed or crashed): "
                                      "marked failed and queued to run again")

    def _load_data(self) -> None:
        opts = self.options
        self.reporter.message(f"Loading {self.task.name} data from {opts.data} ...")
        self.data = self.task.load(opts.data, seed=self.split_seed, val_fraction=self.recipe.val_fraction,
                                   options=self.recipe.data)
        self.target = target_of(self.task, self.data.label_names)  # a target may depend on the labels
        self.metric = checked_metric(self.recipe, self.target)
        self.reporter.data_report(self.data.report)

    def _adopt_study(self, attrs: dict[str, Any]) -> dict[str, Any] | None:
        """Take from a study begun already what decides its splits and space; refuse what differs
        (see :mod:`autotl.resume`). Returns the study's description (``None`` for a new or half-recorded
        study, which this process records)."""
        given, where = self._given, self.location.describe()
        check_version(attrs, where)
        record = StudyRecord.described(attrs)
        if record is None:
            self.options = new_study_options(given)
            self.resolve_zoo()
            return None
        check_task(record, self.task, where)
        self.recipe = adopted_recipe(record, given, self.recipe, replace(self.parameters, strict=False))
        self.fitted_space = list(record.fitted_space or [])  # fitted when the study began: never again
        self.recipe = apply_fitted(self.recipe, self.fitted_space)
        self.target = target_of(self.task, record.label_names)
        self.metric = checked_metric(self.recipe, self.target)
        check_metric(record, self.metric, self.task, where)
        self.options = adopted_options(record, given)
        self.resolve_zoo()  # first: a misspelt --models is told as such
        check_models_and_keep_top(record, given, self.zoo)
        self.split_seed = record.seed
        if self.split_seed != given.seed:
            self.reporter.message(f"The study's split seed is {self.split_seed} (its first process's --seed); "
                                  f"--seed {given.seed} seeds this process's sampler and training")
        if self.cache is not None:
            self.cache = FeatureCache.from_settings(self.recipe.cache)
        return record.description()

    def _check_or_record_study(self) -> None:
        """Check a resumed study against the data; record a new (or half-recorded) one, pre-ranking first."""
        record = StudyRecord.described(self.study.user_attrs)
        if record is not None:
            self._check_resumed(record)
            return
        if half_recorded(self.study.user_attrs):
            self.reporter.message(f"{self.location.describe()} is half-recorded (the search that began it was "
                                  "interrupted): recording it anew")
        self.recipe, self.fitted_space = fit_space(self.task, self.data, self.zoo, self.recipe, self.parameters,
                                                   self.reporter.message)
        points = [p for p in self.recipe.start_with if p.get("model") in self.zoo]
        # ranked before the study is recorded: a Ctrl-C while ranking leaves a study that starts anew
        if self.options.prerank and self.recipe.prerank["enabled"] and len(self.zoo) > 1:
            points = prerank_study(self.study, self.task, self.data, self.zoo, self.recipe, points, self.group_counts,
                                   self.device, seed=self.split_seed, say=self.reporter.message)
        points = self._converged_points() + points
        begin_study(self.study, self._new_record(), before_description=lambda: _enqueue(self.study, points))

    def _converged_points(self) -> list[dict[str, Any]]:
        """One converged-head trial per model the pre-ranking kept, best-ranked first (the zoo's order without a
        ranking), to run before the start points: a sound model within seconds per model (autotl/head_fit.py)."""
        if not self.recipe.converged_head["enabled"]:
            return []
        kept = sampled_models(self.group_counts, self.study.user_attrs)
        ranked = [row.get("model") for row in StudyRecord.from_attrs(self.study.user_attrs).transferability or []]
        models = sorted(kept, key=lambda m: ranked.index(m) if m in ranked else len(ranked))
        loss_parameters = {p.name for p in getattr(self.target, "parameters", ())}
        points = converged_points(self.recipe, models, self.group_counts, loss_parameters)
        self.reporter.message(f"Queued first: a converged-head trial for each of {len(points)} model(s) (the head "
                              f"alone fitted to convergence on frozen features, C {self.recipe.converged_head['C']:g}; "
                              "recipe section converged_head)")
        return points

    def _check_resumed(self, record: StudyRecord) -> None:
        if record.fingerprint and record.fingerprint != self.data.fingerprint:
            raise RunError(f"the data in {self.options.data} changed since {self.location.describe()} began "
                           f"(fingerprint {record.fingerprint} -> {self.data.fingerprint}); start a new "
                           "run with another --out or --study")
        complete_keys(self.study)  # a creator stopped between the description and `created`
        done = len(self.study.get_trials(deepcopy=False, states=FINISHED))
        verb = "Resuming" if self.lock is not None else "Joining"  # SQLite: this process alone; else shared
        self.reporter.message(f"{verb} {self.location.describe()}: {done} finished trial(s) kept")

    def _new_record(self) -> StudyRecord:
        """What this search records about the study it begins (its split seed: later processes load the data so)."""
        opts, data = self.options, self.data
        return StudyRecord(task=self.task.name, data=str(Path(opts.data).resolve()), fingerprint=data.fingerprint,
                           label_names=data.label_names, recipe=self.recipe.raw, recipe_source=self.recipe.source,
                           seed=self.split_seed, models={name: b.describe() for name, b in self.zoo.items()},
                           weights_files=self.weight_files, out=str(Path(opts.out).resolve()), keep_top=opts.keep_top,
                           metric=self.metric, fitted_space=self.fitted_space or None, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def direction(self) -> str:
        """``"maximize"`` or ``"minimize"``: the direction of the metric trials are ranked by, the study's."""
        return self.target.metrics[self.metric]

    # -- the search loop (see autotl/trial_loop.py) -------------------------------------------
    def run(self) -> SearchOutcome:
        """Run trials until the budget says stop, then (unless interrupted) the selection on small data and the
        refit (:meth:`select`), for which a time budget keeps its ``selection.reserve`` share."""
        opts = self.options
        tie_break_metric(self.recipe.selection, self.target, self.metric)  # a misnamed criterion, before any trial
        reserving = self._given.recipe_raw is None and (self.selection_applies() or refits(self.recipe.selection, False))
        reserve = self.recipe.selection["reserve"] if opts.time_budget and reserving else 0.0
        after = None
        if reserve and self.selection_applies():  # the leading trials' folds, estimated as the trials go
            items, trained_on = split_items(self.data.report), split_items(self.data.report, ("train",))
            after = lambda study: needed_seconds(study, self.recipe.selection, items, trained_on,  # noqa: E731
                                                 within=0.5 * opts.time_budget)
        finishing = None
        if opts.time_budget and self._given.recipe_raw is None:  # this process scores the test split and ensembles
            val_items = split_items(self.data.report, ("val",))
            test_items = split_items(self.data.report, ("test",)) if self.data.has_test else 0
            finishing = lambda study: finishing_seconds(study, val_items, test_items, opts.keep_top,  # noqa: E731
                                                        bool(opts.ensemble_rounds))
        self.budget = Budget(opts.trials, opts.time_budget, started=self.opened_at or time.time(), reserved=reserve,
                             after=after, finishing=finishing)
        self.reporter.ranking(self.metric, self.direction)
        self.objective = Objective(task=self.task, target=self.target, metric=self.metric, data=self.data, zoo=self.zoo, group_counts=self.group_counts,
                                   recipe=self.recipe, device=self.device, cache=self.cache, seed=opts.seed,
                                   out=Path(opts.out), study_name=self.location.study_name, keep_top=opts.keep_top,
                                   worker=self.worker_id, reporter=self.reporter, deadline=self.budget.deadline)
        self.reporter.search_started(self.location, list(self.zoo), opts.time_budget, opts.trials)
        end = TrialLoop(self.study, self.objective, self.budget, self.reporter, opts.max_failures,
                        self._keep_top_weights).run()
        self.reporter.search_finished(end.reason)
        if self._given.recipe_raw is not None:  # `autotl worker`: the `autotl search` process selects and refits
            if self.selection_applies():
                self.reporter.message("The selection on small data is left to the `autotl search` process of the study")
        elif not end.interrupted and not end.too_many_failures:
            try:
                self.select()
            except KeyboardInterrupt:
                end.interrupted = True
                end.reason += "; selection interrupted (Ctrl-C): every candidate it finished is kept"
            except Exception as exc:  # the trials stand: the best by validation (or the candidates finished) decides
                text = str(exc).strip()
                self.reporter.message(f"Selection stopped: {exc.__class__.__name__}: "
                                      f"{text.splitlines()[0][:300] if text else ''}; the trials and every candidate "
                                      "it finished are kept")
        return SearchOutcome(self.location, end.interrupted, end.reason, end.trials_run, end.too_many_failures)

    # -- after the trials (see autotl/selection.py) ---------------------------------------------
    def selection_applies(self) -> bool:
        """Whether the data is small enough for the leading trials to be re-scored by cross-validation."""
        return applies(self.recipe.selection, split_items(self.data.report))

    def select(self) -> dict[str, Any] | None:
        """Re-score the leading trials by cross-validation where the data is small, then train the chosen
        configuration on train+val where the recipe's ``selection.refit`` asks for it; the selection's record."""
        settings = self.recipe.selection
        selection = Selection(study=self.study, task=self.task, target=self.target, metric=self.metric,
                              data=self.data, zoo=self.zoo, device=self.device, out=Path(self.options.out),
                              settings=settings, split_seed=self.split_seed, reporter=self.reporter,
                              deadline=self._selection_end(), cache=self.cache)
        record = selection.run()
        best = best_trial(self.study)
        if best is None or not refits(settings, bool(record and record.get("chosen") is not None)):
            return record
        done, _ = recorded_refit(StudyRecord.from_study(self.study), best.number, [self.options.out])
        if done is not None:
            self.reporter.message(f"Trial {best.number} was refitted on train+val already: {done}")
        elif selection.refit_fits(best.number):
            selection.refit(best.number)
        return record

    def _selection_end(self) -> float | None:
        """When the selection and the refit must end: the time budget's end less what the test scores and the
        ensemble are estimated to need (:meth:`Budget.held`)."""
        if self.budget is None or self.budget.end is None:
            return None
        return self.budget.end - self.budget.held(self.study)[1]

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def _keep_top_weights(self, study: optuna.Study, finished: optuna.trial.FrozenTrial) -> None:
        """Optuna's callback once it has recorded a trial: keep the weights of the top --keep-top completed
        trials only (none of a failed trial). A kill or database error before the new result is recorded
        thus never leaves the best completed trial without its weights."""
        drop_outside_top(study, self.options.out, self.options.keep_top)

    # -- after the search (see autotl/after_search.py) -----------------------------------------
    def score_best_on_test(self) -> dict[str, Any] | None:
        """Score the best trial on the test split, which chose nothing; stored on the study."""
        return score_best_on_test(self.study, self.task, self.target, self.metric, self.data, self.zoo,
                                  self.kept_weights, self.options.out, self.device, self.reporter)

    def kept_weights(self, trial: optuna.trial.FrozenTrial) -> Path | None:
        """The weights ``trial`` recorded, if they are in the run folder and are its own."""
        path, problem = kept_weights(trial, [self.options.out], self.location.study_name)
        return None if problem else path

    def ensemble(self) -> dict[str, Any] | None:
        """Select an ensemble of the kept trials (on the out-of-fold outputs of those the selection cross-validated,
        else on their validation outputs), score it on the test split, record it (autotl/ensemble.py); ``None`` with
        fewer than two kept trials or ``ensemble_rounds`` 0."""
        if not self.options.ensemble_rounds:
            return None
        try:
            return ensemble_after_search(self.study, self.task, self.target, self.metric, self.data, self.zoo,
                                         self.kept_weights, self.device, self.reporter, self.options.keep_top,
                                         self.options.ensemble_rounds, self.options.ensemble_metric,
                                         out_of_fold(self.study, [self.options.out]),
                                         ship=self.recipe.selection["ship_ensemble"],
                                         deadline=self.budget.end if self.budget is not None else None,
                                         large=not self.selection_applies())
        except (AutotlError, ValueError, RuntimeError) as exc:  # the trials are recorded: the search still ends well
            self.reporter.message(f"Warning: no ensemble ({exc.__class__.__name__}: {exc}); the trials are kept, and "
                                  "`autotl search ... --ensemble-rounds 0` leaves the ensemble out")
            return None

    def scratch_baseline(self) -> dict[str, Any] | None:
        """Train the best trial's network from random weights (everything trains) and score it."""
        return scratch_baseline(self.study, self.task, self.target, self.metric, self.data, self.zoo, self.device,
                                self.options.seed, self.reporter)


def _enqueue(study: optuna.Study, points: list[dict[str, Any]]) -> None:
    """Queue the recipe's start points (ordered by the pre-ranking) as the study's first trials."""
    for point in points:
        study.enqueue_trial(point, skip_if_exists=True)


def _check_writable(out: Path) -> None:
    """Refuse a run folder this process cannot write in, before any trial runs."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to the output folder {out}: {exc.strerror or exc}; choose another --out") from exc


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


def _find_task(registry: Registry, name: str) -> Task:
    if name not in registry.tasks:
        known = ", ".join(sorted(registry.tasks)) or "none (no task plugin is installed)"
        raise UsageError(f"unknown task {name!r}; installed tasks: {known}")
    return registry.tasks[name]


def _resolve_recipe(recipe: str | None, task: Task, data_options: dict[str, Any], parameters: ParameterSet) -> Recipe:
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
    raw, source = loaded.raw, loaded.source
    if data_options:
        raw = dict(raw, data={**(raw.get("data") or {}), **data_options})
        source = f"{source} with --data-option {data_options}"
    return parse_recipe(raw, source, parameters)  # now the task is known: its parameters and theirs checked


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


__all__ = ["Search", "SearchOptions", "SearchOutcome", "weights_path"]
