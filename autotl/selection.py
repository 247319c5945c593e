"""Selection that holds up on small data, and the chosen configuration trained on all the labels.

On a small training set one validation split is a coin toss: at 177 items and ``val_fraction`` 0.15 it holds 27,
and a score of 0.85 on 27 items has a standard error of about 0.07, more than the gaps between the leading trials.
The trial that ranks first there is often the one whose split was kind to it (the winner's curse). So where the
data is small (train+val at most the recipe's ``selection.cv_below`` items), the search re-scores its leading
trials before choosing:

* **candidates**: the ``selection.candidates`` best completed trials by validation, distinct configurations;
* **k-fold cross-validation** over train+val (:meth:`autotl.Task.prepare_refit`), ``selection.folds`` folds
  stratified by :meth:`autotl.Target.rankable` (plain shuffled folds where it gives nothing), seeded by the
  study's split seed: every fold trains the candidate's recorded configuration (every parameter it recorded,
  ``epochs`` its best epoch) on the other folds and predicts the held-out fold with the **last epoch's** weights
  (nothing held out chose an epoch); the candidate's score is the mean over folds of the study's metric, with its
  standard error (std/sqrt(k)), and the out-of-fold outputs of every item are kept
  (``RUN/trials/STUDY/selection/oof_NNNN.pt``, :func:`out_of_fold`);
* **the choice**: the best mean; where another candidate is within a standard error of it and the target has a
  continuous criterion (``selection.tie_break``; ``auto``: a metric the target minimises while the study's metric is
  maximised, a loss beside a count of hits), the lowest mean of that criterion among them.

Then (``selection.refit``: ``auto`` where selection ran, ``always``, ``never``) the chosen configuration is trained
again on train+val for its best epoch's number of epochs (:func:`refit`, which ``autotl export --refit`` also uses),
saved beside the trial's weights (``refit.safetensors``), and recorded on the study; the test score recorded is that
model's. Every result goes through :mod:`autotl.records` (``selection``, ``refit``); each candidate is recorded as it
finishes, so an interrupted selection keeps what it did. :class:`Selection` runs it for the search controller.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from .adapt import merged
from .base import Backbone, LoadedData, Target, Task, TensorSplit
from .budget import format_seconds
from .cache import FeatureCache
from .contracts import DataReport
from .errors import UsageError
from .files import atomic_write, save_weights
from .inference import predict_outputs
from .leaderboard import direction_sign, rank_key
from .progress import Reporter
from .records import StudyRecord, TrialRecord, is_converged_head, record_refit, record_selection
from .training import TrainResult, train
from .trial_weights import study_folder, weights_path

#: the name of a trial's refit weights, beside its own (``trials/STUDY/NNNN/``).
REFIT_WEIGHTS = "refit.safetensors"
#: seconds the refit may run past the time budget's end (the estimate of the folds before it can fall short)
REFIT_GRACE_S = 10.0
#: the layout of the out-of-fold files (:func:`save_out_of_fold`).
OOF_FORMAT = 1


# -- when it applies ------------------------------------------------------------------------------------

def split_items(report: DataReport | Mapping[str, Any], splits: tuple[str, ...] = ("train", "val")) -> int:
    """How many items the data's ``splits`` hold, as the task reported them (its ``items`` detail where an item may
    carry several labels or none, else the sum of the class counts)."""
    report = DataReport.of(report)
    items = report.details.get("items") if isinstance(report.details.get("items"), Mapping) else {}
    return sum(int(items.get(split, sum((report.counts.get(split) or {}).values()))) for split in splits)


def applies(settings: Mapping[str, Any], items: int) -> bool:
    """Whether the selection re-scores the leading trials: train+val holds at most ``cv_below`` items."""
    return items <= int(settings["cv_below"])


def refits(settings: Mapping[str, Any], selected: bool) -> bool:
    """Whether the chosen configuration is trained again on train+val: ``always``, or ``auto`` where the selection
    ran (``selected``)."""
    return settings["refit"] == "always" or (settings["refit"] == "auto" and selected)


def tie_break_metric(settings: Mapping[str, Any], target: Target, metric: str) -> str | None:
    """The continuous criterion that breaks near-ties: the recipe's ``selection.tie_break``; ``auto``: the first
    metric of ``target`` it minimises where it maximises ``metric`` (a loss beside a count of hits); ``None``:
    none. A name that is none of the target's metrics is a :class:`UsageError`."""
    name = settings.get("tie_break", "auto")
    if name is None:
        return None
    if name == "auto":
        if target.metrics.get(metric) != "maximize":
            return None
        return next((m for m, way in target.metrics.items() if way == "minimize" and m != metric), None)
    if name not in target.metrics:
        raise UsageError(f"recipe: selection.tie_break: {name!r} is not a metric of the task; use auto, null or one "
                         f"of {', '.join(target.metrics)}")
    return None if name == metric else name


# -- the folds -----------------------------------------------------------------------------------------

def fold_of(n: int, folds: int, seed: int, strata: torch.Tensor | None = None) -> torch.Tensor:
    """The fold (``0 .. folds-1``) of each of ``n`` items: shuffled with ``seed``; with ``strata`` (one class index per
    item) each class dealt round the folds in turn, carrying on where the previous class stopped, so that every fold
    holds each class's share and the folds' sizes differ by one at most."""
    if folds < 2 or folds > n:
        raise ValueError(f"cannot make {folds} folds of {n} items")
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=generator)
    if strata is not None:
        strata = strata.reshape(-1).long()
        if len(strata) != n:
            raise ValueError(f"{len(strata)} strata for {n} items")
        order = order[torch.sort(strata[order], stable=True).indices]  # by class, shuffled within
    assigned = torch.empty(n, dtype=torch.long)
    assigned[order] = torch.arange(n) % folds
    return assigned


# -- which trials -----------------------------------------------------------------------------------------

is_converged = is_converged_head  # the name this module's readers know


def candidates(study: optuna.Study, count: int, with_converged: bool = False) -> list[FrozenTrial]:
    """The ``count`` best completed trials by validation (the leaderboard's rule), one per configuration; with
    ``with_converged``, every completed converged-head trial too (one per model: cheap to cross-validate, their frozen
    features computed once), those first, each group in the order of validation."""
    sign = direction_sign(study)
    ranked = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: rank_key(t, sign))
    chosen, seen, leading = [], set(), 0
    for trial in ranked:
        key = json.dumps(TrialRecord.params(trial), sort_keys=True, default=str)
        if key in seen:
            continue
        if leading < count or (with_converged and is_converged(trial)):
            seen.add(key)
            chosen.append(trial)
            leading += leading < count
    if with_converged:
        chosen.sort(key=lambda t: not is_converged(t))  # stable: the cheap ones first, so a short budget keeps them
    return chosen


def settings_candidates(study: optuna.Study, settings: Mapping[str, Any]) -> list[FrozenTrial]:
    """The candidates the recipe's ``selection`` section asks for (``candidates``, ``with_converged``)."""
    return candidates(study, int(settings["candidates"]), bool(settings.get("with_converged", True)))


def trained_epochs(trial: FrozenTrial) -> int:
    """The epochs a configuration is trained for without a validation split: the trial's best epoch."""
    params = TrialRecord.params(trial)
    return int(TrialRecord.from_trial(trial).best_epoch or params.get("epochs") or 1)


def estimated_seconds(trial: FrozenTrial, items: float, trained_on: int, runs: float,
                      prefix_items: float | None = None) -> float:
    """What ``runs`` trainings of ``trial``'s configuration for its best epoch on ``items`` items cost, from what the
    trial recorded (its epochs' seconds on ``trained_on`` training items, its setup and frozen-prefix seconds). With
    ``prefix_items``, a frozen prefix the trial cached runs once over that many items for all the runs (the folds of
    a cross-validation are subsets of one split: :attr:`autotl.TensorSplit.origin`), else once per run. A
    converged-head trial's one "epoch" is its whole fit, setup and prefix included: what remains is the fit."""
    record = TrialRecord.from_trial(trial)
    epochs = [s for s in (record.epoch_seconds or []) if s]
    timing = record.timing or {}
    if not epochs:
        seconds = trial.duration.total_seconds() if trial.duration else 0.0
        return runs * seconds * items / max(trained_on, 1)
    scale = items / max(trained_on, 1)
    setup, prefix_s = float(timing.get("setup", 0.0)), float(timing.get("prefix", 0.0))
    if is_converged(trial):
        per_run = setup + max(0.0, epochs[0] - setup - prefix_s) * scale
    else:
        per_run = setup + statistics.fmean(epochs) * scale * trained_epochs(trial)
    per_item_prefix = prefix_s / max(trained_on, 1)
    prefix = per_item_prefix * prefix_items if prefix_items is not None else runs * per_item_prefix * items
    return runs * per_run + prefix


def cv_seconds(trial: FrozenTrial, items: int, trained_on: int, folds: int) -> float:
    """What cross-validating ``trial`` over ``items`` items in ``folds`` folds costs (:func:`estimated_seconds`)."""
    return estimated_seconds(trial, items * (folds - 1) / folds, trained_on, folds, prefix_items=items)


def needed_seconds(study: optuna.Study, settings: Mapping[str, Any], items: int, trained_on: int,
                   within: float | None = None) -> float:
    """What the selection and the refit would take if the trials stopped now: the current candidates' folds (those
    cross-validated already by an earlier process count nothing) and the dearest refit among them. With ``within``,
    only the candidates whose folds fit in that many seconds, taken in the order the selection runs them (the cheap
    converged-head trials first), as it skips one whose folds do not fit what is left: a candidate too dear to
    cross-validate in the time budget keeps no time from the trials."""
    chosen = settings_candidates(study, settings)
    if not chosen:
        return 0.0
    folds = max(2, min(int(settings["folds"]), items))
    done = {int(r["trial"]) for r in ((StudyRecord.from_study(study).selection or {}).get("candidates") or [])}
    refitting = refits(settings, True)
    cv, refit_s = 0.0, 0.0
    for trial in chosen:
        cost = 0.0 if trial.number in done else cv_seconds(trial, items, trained_on, folds)
        refit_t = estimated_seconds(trial, items, trained_on, 1) if refitting else 0.0
        if within is not None and cv + cost + max(refit_s, refit_t) > within:
            continue
        cv, refit_s = cv + cost, max(refit_s, refit_t)
    return cv + refit_s


# -- training without a validation split ----------------------------------------------------------------------

def fit_last_epoch(backbone: Backbone, params: Mapping[str, Any], train_split: TensorSplit, shown: TensorSplit,
                   target: Target, width: int, *, metric: str, device: torch.device, seed: int,
                   deadline: float | None = None, cache: FeatureCache | None = None,
                   cache_context: Mapping[str, Any] | None = None,
                   on_epoch: Callable[[int, float, float], str | None] | None = None
                   ) -> tuple[torch.nn.Module, dict[str, Any], TrainResult]:
    """Train ``params`` (every parameter as recorded, ``epochs`` already set) on ``train_split`` and keep the last
    epoch's weights: ``(network, calibration, result)``. ``shown`` is what each epoch is scored on for the progress
    only (it chooses nothing). The calibration is fit on the training labels and tuned on the training outputs
    (nothing held out tunes it), as the model shipped after a refit is."""
    result = train(backbone, params, train_split, shown, target, width, metric=metric, device=device, seed=seed,
                   deadline=deadline, cache=cache, cache_context=cache_context, on_epoch=on_epoch)
    model = result.adapted.model
    model.load_state_dict(result.last_state)
    calibration = dict(target.fit(train_split.labels))
    if type(target).tune is not Target.tune:  # a target that tunes (thresholds): on the data it trained on
        calibration = dict(target.tune(calibration, predict_outputs(model, train_split, device), train_split.labels))
    return model, calibration, result


@dataclass
class Refit:
    """A configuration trained again on train+val: its merged weights, calibration, and what records say of it."""

    state: dict[str, torch.Tensor]
    calibration: dict[str, Any]
    info: dict[str, Any]  # on, samples, epochs, seed, duration_s, note (the bundle's RefitInfo)


def refit(task: Task, data: LoadedData, backbone: Backbone, trial: FrozenTrial, target: Target, width: int, *,
          metric: str, device: torch.device, split_seed: int, say: Callable[[str], None] = lambda m: None,
          cache: FeatureCache | None = None) -> Refit:
    """``trial``'s configuration trained again on train+val (:meth:`autotl.Task.prepare_refit`) for its best epoch's
    number of epochs, keeping the last epoch (no held-out split remains to choose one); seeded with the study's split
    seed plus the trial's number, so that the search's refit and ``autotl export --refit`` train the same network."""
    params = TrialRecord.params(trial)
    epochs = trained_epochs(trial)
    splits = task.prepare_refit(data, backbone, params)
    if cache is not None:  # as a subset of itself: served by the frozen-prefix outputs the folds computed for it
        splits = replace(splits, train=splits.train.take(torch.arange(len(splits.train))))
    converged = params.get("head_fit") == "converged"  # a converged head fit has no epochs: fitted again
    how = (f"the head fitted to convergence again, C {float(params.get('head_fit_c', 1.0)):g}" if converged
           else f"{epochs} epoch(s), the trial's best epoch")
    say(f"Refitting trial {trial.number}'s configuration on train+val ({len(splits.train)} samples, {how}) ...")
    started = time.time()
    seed = split_seed + trial.number
    model, calibration, _ = fit_last_epoch(backbone, dict(params, epochs=epochs), splits.train, splits.val, target,
                                           width, metric=metric, device=device, seed=seed, cache=cache,
                                           cache_context={"task": task.name, "fingerprint": data.fingerprint})
    state = {k: v.detach().cpu().clone().contiguous() for k, v in merged(model).state_dict().items()}
    info = {"on": "train+val", "samples": len(splits.train), "epochs": epochs, "seed": seed,
            "duration_s": round(time.time() - started, 1),
            "note": ("the head fitted to convergence again on the training and validation splits together"
                     if converged else "trained again on the training and validation splits together, for the "
                     "trial's best number of epochs, keeping the last epoch") + "; no held-out split remains to "
                    "validate it"}
    return Refit(state, calibration, info)


def refit_path(out: Path, number: int, study: str) -> Path:
    """Where trial ``number``'s refit weights go in run folder ``out`` (beside its own)."""
    return weights_path(out, number, study).with_name(REFIT_WEIGHTS)


def recorded_refit(record: StudyRecord, number: int | None, roots: list[Path | str | None]) -> tuple[Path | None, dict]:
    """The refit weights recorded for trial ``number`` (in the first of ``roots``, run folders, holding them) and
    the study's refit record; ``(None, {})`` when that trial has none."""
    refit_record = dict(record.refit or {})
    if number is None or refit_record.get("trial") != number or not refit_record.get("weights"):
        return None, {}
    for root in roots:
        if root and (Path(root) / refit_record["weights"]).is_file():
            return Path(root) / refit_record["weights"], refit_record
    return None, {}


# -- out-of-fold outputs ------------------------------------------------------------------------------------

@dataclass
class OutOfFold:
    """One candidate's out-of-fold outputs: ``outputs[i]`` is item ``i`` of train+val (in the order of
    :meth:`autotl.Task.prepare_refit`'s ``train``) predicted by the fold model that did not train on it."""

    trial: int
    outputs: torch.Tensor  # (items, width) or (items, positions, width), float32
    labels: torch.Tensor
    folds: torch.Tensor  # the fold of each item
    calibrations: list[dict[str, Any]] = field(default_factory=list)  # each fold model's


def oof_path(out: Path, study: str, number: int) -> Path:
    """Where trial ``number``'s out-of-fold outputs go in run folder ``out``."""
    return Path(out) / "trials" / study_folder(study) / "selection" / f"oof_{number:04d}.pt"


def save_out_of_fold(path: Path, oof: OutOfFold) -> None:
    data = {"format": OOF_FORMAT, "trial": oof.trial, "outputs": oof.outputs, "labels": oof.labels,
            "folds": oof.folds, "calibrations": json.dumps(oof.calibrations)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(data, str(tmp)))


def load_out_of_fold(path: Path | str) -> OutOfFold:
    """An out-of-fold file read back (tensors only: nothing is unpickled)."""
    data = torch.load(str(path), map_location="cpu", weights_only=True)
    return OutOfFold(int(data["trial"]), data["outputs"], data["labels"], data["folds"],
                     json.loads(data.get("calibrations") or "[]"))


def out_of_fold(study: optuna.Study, roots: list[Path | str | None]) -> dict[int, OutOfFold]:
    """Every cross-validated candidate's out-of-fold outputs, by trial number, from the first of ``roots`` (run
    folders: the one opened, the one the search wrote) holding its file; ``{}`` where no selection ran. The items
    are in the same order in every one, so that they can be combined (an ensemble chosen on them)."""
    selection = StudyRecord.from_study(study).selection or {}
    found = {}
    for row in selection.get("candidates") or []:
        for root in roots:
            if root and row.get("oof") and (Path(root) / row["oof"]).is_file():
                found[int(row["trial"])] = load_out_of_fold(Path(root) / row["oof"])
                break
    return found


# -- the selection -------------------------------------------------------------------------------------------

def _mean_se(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if v == v]
    if not finite:
        return float("nan"), float("nan")
    mean = statistics.fmean(finite)
    se = statistics.stdev(finite) / math.sqrt(len(finite)) if len(finite) > 1 else float("nan")
    return mean, se


def choose(rows: list[dict[str, Any]], metric: str, direction: str, tie_break: str | None,
           tie_direction: str | None, prefer: str = "best") -> tuple[int | None, str]:
    """The trial chosen among the cross-validated ``rows`` and why: the best mean of ``metric``; among the rows
    within one standard error of it (the larger of the two): with ``prefer`` ``simpler``, those with the fewest
    trainable parameters (the one-standard-error rule: the simplest model that cannot be told apart from the best),
    then the best mean of ``tie_break`` where there is one."""
    scored = [r for r in rows if r.get("mean") == r.get("mean") and r.get("mean") is not None]
    if not scored:
        return None, ""
    sign = 1.0 if direction == "maximize" else -1.0
    best = max(scored, key=lambda r: (sign * r["mean"], -r["rank"]))
    k = len(best["fold_scores"])
    said = f"the best {k}-fold cross-validation {metric} ({best['mean']:.4f} ± {_se(best)}) of {len(scored)} candidate(s)"

    def tied(r: dict[str, Any]) -> bool:
        margin = max(x for x in (r.get("se"), best.get("se"), 0.0) if x is not None and x == x)
        return abs(r["mean"] - best["mean"]) <= margin + 1e-12

    known = [r for r in scored if tied(r) and r.get("trainable_params") is not None]
    if prefer == "simpler" and known and best.get("trainable_params") is not None:
        fewest = min(r["trainable_params"] for r in known)
        pick, why = _tie_broken([r for r in known if r["trainable_params"] == fewest], sign, tie_break, tie_direction)
        if pick is best:
            return best["trial"], said + why
        simpler = fewest < best["trainable_params"]
        return pick["trial"], (
            f"within a standard error of the best {k}-fold cross-validation {metric} (trial {best['trial']}: "
            f"{best['mean']:.4f} ± {_se(best)}, {best['trainable_params']:,} trainable parameters; this one "
            f"{pick['mean']:.4f} ± {_se(pick)}), " + (f"the fewest trainable parameters ({fewest:,})" if simpler
                                                      else "as few trainable parameters") + why)
    if tie_break is None:
        return best["trial"], said
    close = [r for r in scored if tied(r) and (r.get("tie_break_mean") is not None)]
    if len(close) < 2:
        return best["trial"], said
    tsign = 1.0 if tie_direction == "maximize" else -1.0
    pick = max(close, key=lambda r: (tsign * r["tie_break_mean"], sign * r["mean"], -r["rank"]))
    if pick is best:
        return best["trial"], (f"{said}; {len(close) - 1} other(s) within a standard error of it, and it also has the "
                               f"best cross-validation {tie_break} ({pick['tie_break_mean']:.4f})")
    return pick["trial"], (f"within a standard error of the best {k}-fold cross-validation {metric} (trial "
                           f"{best['trial']}: {best['mean']:.4f} ± {_se(best)}; this one {pick['mean']:.4f} ± "
                           f"{_se(pick)}), the best cross-validation {tie_break} ({pick['tie_break_mean']:.4f}) "
                           f"of the {len(close)} that cannot be told apart")


def _tie_broken(rows: list[dict[str, Any]], sign: float, tie_break: str | None,
                tie_direction: str | None) -> tuple[dict[str, Any], str]:
    """Of ``rows`` (equally simple), the best mean of ``tie_break`` where there is one and several, else of the
    metric; and what to add to the reason."""
    if len(rows) > 1 and tie_break is not None and all(r.get("tie_break_mean") is not None for r in rows):
        tsign = 1.0 if tie_direction == "maximize" else -1.0
        pick = max(rows, key=lambda r: (tsign * r["tie_break_mean"], sign * r["mean"], -r["rank"]))
        return pick, (f"; of the {len(rows)} as simple, the best cross-validation {tie_break} "
                      f"({pick['tie_break_mean']:.4f})")
    return max(rows, key=lambda r: (sign * r["mean"], -r["rank"])), ""


def _se(row: Mapping[str, Any]) -> str:
    se = row.get("se")
    return "-" if se is None or se != se else f"{se:.4f}"


@dataclass
class Selection:
    """The selection of one search (see the module's docstring), as the search controller runs it."""

    study: optuna.Study
    task: Task
    target: Target
    metric: str
    data: LoadedData
    zoo: dict[str, Backbone]
    device: torch.device
    out: Path
    settings: Mapping[str, Any]  # the recipe's selection section (autotl/recipes.py)
    split_seed: int
    reporter: Reporter = field(default_factory=Reporter)
    deadline: float | None = None  # when the time budget ends
    cache: FeatureCache | None = None

    @property
    def width(self) -> int:
        return self.target.width(self.data.label_names)

    @property
    def items(self) -> int:
        return split_items(self.data.report)

    def applies(self) -> bool:
        return applies(self.settings, self.items)

    def run(self) -> dict[str, Any] | None:
        """Cross-validate the candidates (those already cross-validated with the same folds are kept), record each as
        it finishes, and choose; the record, or ``None`` where the data is not small or no trial completed."""
        if not self.applies():
            return None
        chosen = settings_candidates(self.study, self.settings)
        if not chosen:
            return None
        started = time.time()
        direction = self.target.metrics[self.metric]
        tie = tie_break_metric(self.settings, self.target, self.metric)
        backbone0 = self.zoo.get(TrialRecord.params(chosen[0])["model"])
        if backbone0 is None:
            self.reporter.message("Selection skipped: the best trial's model is not loaded")
            return None
        combined = self.task.prepare_refit(self.data, backbone0, TrialRecord.params(chosen[0])).train
        n = len(combined)
        folds = min(int(self.settings["folds"]), n)
        strata = self.target.rankable(combined.labels)
        assigned = fold_of(n, folds, self.split_seed, strata)
        previous = StudyRecord.from_study(self.study).selection or {}
        same_folds = (previous.get("folds") == folds and previous.get("items") == n
                      and previous.get("seed") == self.split_seed)
        done = {int(r["trial"]): r for r in (previous.get("candidates") or [])} if same_folds else {}
        record = {"metric": self.metric, "direction": direction, "folds": folds, "items": n, "seed": self.split_seed,
                  "stratified": strata is not None, "cv_below": int(self.settings["cv_below"]), "tie_break": tie,
                  "candidates": [], "skipped": [], "chosen": None, "reason": "", "seconds": 0.0, "complete": False,
                  "weights": "last epoch"}
        self.reporter.message(
            f"Selection: {len(chosen)} candidate(s) ({_which(chosen, int(self.settings['candidates']))}) re-scored by "
            f"{folds}-fold cross-validation over train+val "
            f"({n} items{', stratified' if strata is not None else ''}): the data is small (at most "
            f"{self.settings['cv_below']} items, recipe selection.cv_below)")
        trained_on = split_items(self.data.report, ("train",))
        refit_s = {t.number: estimated_seconds(t, n, trained_on, 1) if refits(self.settings, True) else 0.0
                   for t in chosen}  # the choice is among those cross-validated: the dearest of their refits is kept
        sign = direction_sign(self.study)
        ranks = {t.number: i for i, t in enumerate(sorted(chosen, key=lambda t: rank_key(t, sign)), start=1)}
        for trial in chosen:
            rank = ranks[trial.number]  # by validation (the candidates run converged-head trials first)
            if trial.number in done:
                row = dict(done[trial.number], rank=rank)
                self.reporter.message(f"Selection: trial {trial.number} was cross-validated already: "
                                      f"{self.metric} {row['mean']:.4f} ± {_se(row)}")
            else:
                cost = cv_seconds(trial, n, trained_on, folds)
                kept = max([refit_s[trial.number]] + [refit_s[int(r["trial"])] for r in record["candidates"]
                                                      if int(r["trial"]) in refit_s])
                if self.deadline is not None and time.time() + cost + kept > self.deadline:
                    why = (f"its {folds} folds would take about {format_seconds(cost)}, and "
                           f"{format_seconds(max(0.0, self.deadline - time.time()))} of the time budget is left"
                           + (f" ({format_seconds(kept)} of it kept for the refit)" if kept else ""))
                    self.reporter.message(f"Selection: trial {trial.number} not cross-validated: {why}")
                    record["skipped"].append({"trial": trial.number, "why": why})
                    continue
                row = self._cross_validate(trial, rank, combined, assigned, folds, tie)
                if row is None:  # cut by the time budget
                    record["skipped"].append({"trial": trial.number, "why": "the time budget ended during its folds"})
                    break
            record["candidates"].append(row)
            self._settle(record, direction, tie, started)
        record["complete"] = len(record["candidates"]) == len(chosen)
        self._settle(record, direction, tie, started)
        if record["chosen"] is not None:
            self.reporter.message(f"Selection: trial {record['chosen']} chosen: {record['reason']} "
                                  f"(selection took {format_seconds(record['seconds'])})")
        return record

    def _settle(self, record: dict[str, Any], direction: str, tie: str | None, started: float) -> None:
        record["chosen"], record["reason"] = choose(record["candidates"], self.metric, direction, tie,
                                                    self.target.metrics.get(tie) if tie else None,
                                                    prefer=self.settings.get("prefer", "simpler"))
        record["seconds"] = round(time.time() - started, 1)
        record_selection(self.study, record)

    def _cross_validate(self, trial: FrozenTrial, rank: int, combined: TensorSplit, assigned: torch.Tensor,
                        folds: int, tie: str | None) -> dict[str, Any] | None:
        params = TrialRecord.params(trial)
        backbone = self.zoo[params["model"]]
        split = self.task.prepare_refit(self.data, backbone, params).train
        epochs = trained_epochs(trial)
        seed = self.split_seed + trial.number
        started = time.time()
        scores, ties, calibrations, pieces = [], [], [], []
        for fold in range(folds):
            held = torch.nonzero(assigned == fold).flatten()
            rest = torch.nonzero(assigned != fold).flatten()
            fold_started = time.time()
            model, calibration, result = fit_last_epoch(
                backbone, dict(params, epochs=epochs), split.take(rest), split.take(held), self.target, self.width,
                metric=self.metric, device=self.device, seed=seed, deadline=self.deadline, cache=self.cache,
                cache_context={"task": self.task.name, "fingerprint": self.data.fingerprint})
            if result.stopped:
                self.reporter.message(f"Selection: trial {trial.number} fold {fold + 1}/{folds} cut by the time "
                                      f"budget; its cross-validation is dropped")
                return None
            held_split = split.take(held)
            outputs = predict_outputs(model, held_split, self.device)
            metrics = self.target.score(outputs, held_split.labels, calibration)
            scores.append(float(metrics[self.metric]))
            if tie is not None:
                ties.append(float(metrics[tie]))
            calibrations.append(calibration)
            pieces.append((held, outputs))
            self.reporter.message(f"Selection: trial {trial.number} fold {fold + 1}/{folds}: {self.metric} "
                                  f"{scores[-1]:.4f} on {len(held)} held-out items "
                                  f"({format_seconds(time.time() - fold_started)})")
        oof = _assembled(pieces, len(split))
        pooled = self.target.score(oof, split.labels, self.target.fit(split.labels))
        mean, se = _mean_se(scores)
        path = oof_path(self.out, self.study.study_name, trial.number)
        save_out_of_fold(path, OutOfFold(trial.number, oof, split.labels, assigned.clone(), calibrations))
        row = {"trial": trial.number, "rank": rank, "val": trial.value, "fold_scores": [round(s, 6) for s in scores],
               "trainable_params": TrialRecord.from_trial(trial).trainable_params,
               "mean": mean, "se": se, "oof_score": float(pooled[self.metric]),
               "oof_metrics": {k: float(v) for k, v in pooled.items()}, "epochs": epochs, "seed": seed,
               "seconds": round(time.time() - started, 1), "oof": str(path.relative_to(self.out))}
        if tie is not None:
            row["tie_break_mean"] = _mean_se(ties)[0]
        self.reporter.message(f"Selection: trial {trial.number} (validation {trial.value:.4f}): cross-validation "
                              f"{self.metric} {mean:.4f} ± {_se(row)}, out-of-fold {row['oof_score']:.4f} "
                              f"({format_seconds(row['seconds'])})")
        return row

    def refit(self, number: int) -> dict[str, Any] | None:
        """Train trial ``number``'s configuration on train+val, save its weights in the run folder and record it."""
        trial = next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)
        backbone = self.zoo.get(TrialRecord.params(trial)["model"])
        if backbone is None:
            self.reporter.message(f"No refit: the model of trial {number} is not loaded")
            return None
        made = refit(self.task, self.data, backbone, trial, self.target, self.width, metric=self.metric,
                     device=self.device, split_seed=self.split_seed, say=self.reporter.message, cache=self.cache)
        path = refit_path(self.out, number, self.study.study_name)
        save_weights(path, made.state, {"model": TrialRecord.params(trial)["model"], "study": self.study.study_name,
                                        "trial": str(number), "refit": "train+val"})
        record = {"trial": number, "weights": str(path.relative_to(self.out)), "calibration": made.calibration,
                  **made.info}
        record_refit(self.study, record)
        self.reporter.message(f"Refit of trial {number} saved to {path} ({format_seconds(made.info['duration_s'])})")
        return record

    def refit_fits(self, number: int) -> bool:
        """Whether refitting trial ``number`` fits in what is left of the time budget, give or take
        :data:`REFIT_GRACE_S` (always without one): a model trained on every label is worth a few seconds past it."""
        if self.deadline is None:
            return True
        trial = next(t for t in self.study.get_trials(deepcopy=False) if t.number == number)
        cost = estimated_seconds(trial, self.items, split_items(self.data.report, ("train",)), 1)
        left = self.deadline - time.time()
        if cost > left + REFIT_GRACE_S:
            self.reporter.message(f"No refit: it would take about {format_seconds(cost)}, and "
                                  f"{format_seconds(max(left, 0.0))} of the time budget is left")
            return False
        return True


def _which(chosen: list[FrozenTrial], count: int) -> str:
    converged = sum(is_converged(t) for t in chosen)
    leading = f"the {min(count, len(chosen))} best by validation"
    if not converged:
        return leading
    return f"{leading} and every converged-head trial; {converged} converged-head, cross-validated first"


def _assembled(pieces: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
    """The folds' outputs put back in the items' order (per-position outputs right-padded to the widest fold's)."""
    if pieces[0][1].dim() == 3:
        widest = max(o.shape[1] for _, o in pieces)
        pieces = [(i, torch.nn.functional.pad(o, (0, 0, 0, widest - o.shape[1]))) for i, o in pieces]
    first = pieces[0][1]
    joined = torch.zeros((n, *first.shape[1:]), dtype=first.dtype)
    for idx, outputs in pieces:
        joined[idx] = outputs
    return joined


__all__ = ["OOF_FORMAT", "OutOfFold", "REFIT_GRACE_S", "REFIT_WEIGHTS", "Refit", "Selection", "applies", "candidates", "choose",
           "cv_seconds", "estimated_seconds", "fit_last_epoch", "is_converged", "needed_seconds", "fold_of", "load_out_of_fold", "oof_path", "out_of_fold",
           "recorded_refit", "refit", "refit_path", "refits", "save_out_of_fold", "settings_candidates", "split_items", "tie_break_metric",
           "trained_epochs"]
