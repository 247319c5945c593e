"""One finished (or running) search opened for use: :class:`Run` and :func:`open_run`.

A ``Run`` is a study as autotl reads it back: where it is (:class:`~autotl.runs.RunLocation`), what it
recorded (:class:`~autotl.records.StudyRecord`), and what it takes to use one of its trials again: the
task plugin, the backbone of a model, the recipe, the data loaded as the search loaded it (the study's
split seed and data options), a trial's configuration and record, and a trial's trained network from
its kept weights. ``autotl export``, ``autotl report`` and the benchmarks open runs through it::

    run = autotl.open_run("runs/mine")
    best = run.best_trial()
    model = run.network(best)              # the trained network, ready to predict
    data, _ = run.load_data()              # train/val/test as the search split them

Storage, locating and locking live in :mod:`autotl.runs`; the study's attributes in :mod:`autotl.records`.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from .base import Backbone, BackboneFamily, LoadedData, Registry, Target, Task
from .device import resolve_device
from .errors import DataError, PluginError, RunError
from .files import load_weights
from .fitted_space import apply_fitted
from .leaderboard import best_trial
from .network import trained_network
from .plugins import get_registry, target_of
from .recipes import Recipe, parse_recipe
from .records import StudyRecord, TrialRecord
from .runs import RunLocation, load_study, locate
from .trial_weights import kept_weights


class Run:
    """A search's study, opened to read its trials and use them again (see the module's docstring).

    :param location: where the study is.
    :param study: the study (:func:`autotl.runs.load_study` checked it is whole and of a version this reads).
    :param registry: the plugins to rebuild tasks and backbones with [default: the installed ones].
    """

    def __init__(self, location: RunLocation, study: optuna.Study, registry: Registry | None = None):
        self.location = location
        self.study = study
        self._registry = registry

    # -- what the search recorded ------------------------------------------------------------------
    @property
    def record(self) -> StudyRecord:
        """The study's record, read now (a search still running adds to it)."""
        return StudyRecord.from_study(self.study)

    @cached_property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = get_registry()
        return self._registry

    def find_task(self) -> Task | None:
        """The installed task plugin of the study's task; ``None`` when none provides it."""
        return self.registry.tasks.get(self.record.task)

    @property
    def task(self) -> Task:
        """The study's task; :class:`PluginError` when no installed plugin provides it."""
        task = self.find_task()
        if task is None:
            raise PluginError(f"the study is a {self.record.task!r} search, but no installed plugin provides that task")
        return task

    @property
    def target(self) -> Target:
        """What the study's task predicts and how it is scored (:class:`autotl.Target`)."""
        return target_of(self.task, self.record.label_names)

    @property
    def metric(self) -> str:
        """The metric the study ranks its trials by (the recipe's ``metric:``, else the target's primary)."""
        return self.record.metric_for(self.task)

    @property
    def direction(self) -> str:
        """``"maximize"`` or ``"minimize"``: the direction of :attr:`metric`, as the study optimises it."""
        return self.study.direction.name.lower()

    @property
    def width(self) -> int:
        """How many numbers the trials' networks output per item (or per position): the target's width."""
        return self.target.width(self.record.label_names)

    def find_family(self, model: str) -> BackboneFamily | None:
        """The installed backbone family, serving the study's task, that knows ``model``; ``None`` if none does."""
        return next((f for f in self.registry.families_for(self.task) if f.owns(model)), None)

    def backbone(self, model: str, *, pretrained: bool = False, weights: Mapping[str, str] | None = None) -> Backbone:
        """The backbone of ``model``: its architecture alone, or with ``pretrained`` its source weights (the
        checkpoint the search used, or the one ``weights`` names for it)."""
        family = self.find_family(model)
        if family is None:
            raise PluginError(f"no installed backbone family serving {self.record.task!r} knows model {model!r}")
        files = {**self.record.weights_files, **(weights or {})}
        return (family.get if pretrained else family.architecture)(model, files.get(model))

    @cached_property
    def recipe(self) -> Recipe:
        """The recipe the search ran (its data options decide the splits), with the ranges it fitted to the data."""
        record = self.record
        recipe = parse_recipe(record.recipe or {"task": record.task, "fixed": {"lr": 0}}, record.recipe_source or "?")
        return apply_fitted(recipe, record.fitted_space)

    def data_path(self, path: Path | str | None = None) -> Path:
        """``path`` if given (the data moved), else the data folder the search recorded."""
        return Path(path or self.record.data or "")

    def load_data(self, path: Path | str | None = None, needed_for: str | None = None) -> tuple[LoadedData | None, str]:
        """The run's data, loaded as the search loaded it (its split seed and data options), from ``path`` or
        where the search found it.

        ``(None, why)`` when it is missing or changed since the search (``why`` says which, and the caller what
        that costs it); with ``needed_for`` (what needs it, e.g. ``"--refit"``) that is an error instead
        (:class:`DataError`, :class:`RunError`).
        """
        record, path = self.record, self.data_path(path)
        if not str(path) or not path.exists():
            if needed_for:
                raise DataError(f"{needed_for} needs the run's data, and {path} does not exist; give --data PATH")
            return None, f"the run's data ({path}) is not there"
        data = self.task.load(path, seed=record.seed, val_fraction=self.recipe.val_fraction, options=self.recipe.data)
        if record.fingerprint and data.fingerprint != record.fingerprint:
            if needed_for:
                raise RunError(f"the data in {path} changed since the search (fingerprint {record.fingerprint} -> "
                               f"{data.fingerprint}); {needed_for} needs the search's data: give --data PATH")
            return None, f"the data in {path} changed since the search"
        return data, ""

    # -- its trials --------------------------------------------------------------------------------
    def best_trial(self) -> FrozenTrial | None:
        """The best completed trial (:func:`autotl.leaderboard.best_trial`); ``None`` before any completed."""
        return best_trial(self.study)

    def trial(self, number: int) -> FrozenTrial:
        """Trial ``number``; :class:`RunError` when the study has none."""
        found = next((t for t in self.study.get_trials(deepcopy=False) if t.number == number), None)
        if found is None:
            raise RunError(f"the study has no trial {number}; `autotl trials` lists them")
        return found

    @staticmethod
    def trial_record(trial: FrozenTrial) -> TrialRecord:
        """What the search recorded about ``trial``."""
        return TrialRecord.from_trial(trial)

    @staticmethod
    def config(trial: FrozenTrial) -> dict[str, Any]:
        """``trial``'s whole configuration (every setting, sampled and fixed)."""
        return TrialRecord.params(trial)

    def test_score(self, trial: FrozenTrial) -> float | None:
        """The test score (in :attr:`metric`) the search recorded for ``trial`` (the best one's only)."""
        return self.record.test_score(trial.number)

    def kept_weights(self, trial: FrozenTrial) -> tuple[Path | None, str | None]:
        """The saved weights ``trial`` recorded (in the run folder opened, else where the search wrote them) and why
        they are not its own, if they are not (:func:`autotl.trial_weights.kept_weights`); ``(None, None)`` when
        there are none. :meth:`weights` takes them or says why it cannot."""
        return kept_weights(trial, [self.location.folder, self.record.out], self.study.study_name)

    def weights(self, trial: FrozenTrial) -> Path:
        """``trial``'s own kept weights; :class:`RunError` saying why they cannot be had (and to refit)."""
        found, problem = self.kept_weights(trial)
        if problem:
            raise RunError(f"{problem}; add --refit to train trial {trial.number}'s configuration again")
        if found is not None:
            return found
        rel = TrialRecord.from_trial(trial).weights
        if not rel:
            raise RunError(f"the weights of trial {trial.number} were not kept (only the top --keep-top trials keep "
                           "theirs); add --refit to train its configuration again")
        roots = [r for r in (self.location.folder, self.record.out) if r]
        where = " or ".join(str(Path(r) / rel) for r in roots) or rel
        raise RunError(f"the weights of trial {trial.number} are not at {where} (only the top --keep-top trials keep "
                       "theirs; a moved run needs its folder named); add --refit to train its configuration again")

    def network(self, trial: FrozenTrial, device: torch.device | str = "auto", *, weights: Path | None = None,
                backbone: Backbone | None = None) -> nn.Module:
        """``trial``'s trained network from its kept weights (or the file ``weights``), ready to predict on
        ``device`` ("auto": CUDA if there is one): built without pretrained weights, loaded, channels-last
        where the backbone asks for it (:func:`autotl.network.trained_network`)."""
        backbone = backbone or self.backbone(self.config(trial)["model"])
        state = load_weights(weights or self.weights(trial))
        return trained_network(backbone, self.width, state, resolve_device(device),
                               per_position=self.target.per_position)


def open_run(run: str | Path | None = None, *, storage: str | None = None, study: str | None = None,
             registry: Registry | None = None) -> Run:
    """Open the run of a search: its run folder (the ``--out`` of ``autotl search``), or ``storage`` + ``study``.

    :class:`~autotl.errors.RunError` when there is no such run, it is half-recorded, or a newer autotl wrote it.
    """
    location = locate(str(run) if run is not None else None, storage, study)
    return Run(location, load_study(location), registry)


__all__ = ["Run", "open_run"]
