"""After the search: the best trial scored once on the test split, the from-scratch baseline, and the ensemble of
the kept trials (:func:`ensemble_after_search`, autotl/ensemble.py).

The test split chose nothing (trials are ranked on validation), so its score of the best trial is an
honest estimate; it is recorded on the study (``test_scores``). The scratch baseline trains the best
trial's network from random weights, everything trainable, to show what transfer learning bought.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
import torch
from optuna.trial import FrozenTrial

from .base import Backbone, LoadedData, Target, Task, TensorSplit
from .ensemble import DEFAULT_ROUNDS, Candidate, describe, ensemble_record, greedy_selection, soup_record
from .files import load_weights
from .inference import predict_outputs
from .leaderboard import best_trial, direction_sign, rank_key
from .network import trained_network
from .progress import Reporter
from .records import StudyRecord, TrialRecord, is_converged_head, record_ensemble, record_scratch, record_test_score
from .selection import OutOfFold, recorded_refit
from .training import train
from .trial_weights import val_outputs_path


def test_split_scores(backbone: Backbone, target: Target, width: int, test: TensorSplit, weights: Path,
                      device: torch.device, calibration: Mapping[str, Any]) -> dict[str, float]:
    """Every metric of ``target`` for ``backbone``'s network, with the weights in the file ``weights`` and the
    trial's ``calibration``, on the prepared split ``test``."""
    model = trained_network(backbone, width, load_weights(weights), device, per_position=target.per_position)
    return target.score(predict_outputs(model, test, device), test.labels, calibration)


def score_best_on_test(study: optuna.Study, task: Task, target: Target, metric: str, data: LoadedData,
                       zoo: dict[str, Backbone], kept_weights: Callable[[FrozenTrial], Path | None], out: Path,
                       device: torch.device, reporter: Reporter) -> dict[str, Any] | None:
    """Score the best trial on the test split and record it on the study: ``{trial, test_<metric>, test_metrics,
    test_size, weights}`` (``metric``: the one the study ranks by; ``test_metrics``: every metric of ``target``).

    The model scored is the one shipped: the trial's configuration trained again on train+val where the search
    refitted it (:attr:`StudyRecord.refit`, ``weights: "refit"``), else the trial's own weights (``"trial"``).

    ``None``, said to ``reporter``, when there is no completed trial, no test split, or no kept weights
    (``kept_weights(trial)``: the path in the run folder ``out``, or ``None``) or loaded model for the best trial.
    """
    best = best_trial(study)
    if best is None:
        return None
    if not data.has_test:
        reporter.message("No test/ split: the best trial is reported with its validation score only.")
        return None
    refitted, refit = recorded_refit(StudyRecord.from_study(study), best.number, [out])
    weights = refitted or kept_weights(best)
    if weights is None:
        reporter.message(f"Weights of trial {best.number} are not in {out}; no test score.")
        return None
    calibration = refit["calibration"] if refitted else TrialRecord.from_trial(best).calibration
    whose = "refit" if refitted else "trial"
    params = TrialRecord.params(best)
    backbone = zoo.get(params["model"])
    if backbone is None:
        reporter.message(f"Model {params['model']} of trial {best.number} is not loaded; no test score.")
        return None
    split = task.prepare(data, backbone, params).test
    metrics = test_split_scores(backbone, target, target.width(data.label_names), split, weights, device,
                                calibration or {})
    score = {"trial": best.number, f"test_{metric}": metrics[metric], "test_metrics": metrics, "test_size": len(split),
             "weights": whose}
    record_test_score(study, best.number, metrics[metric], metrics, weights=whose)
    return score


def scratch_baseline(study: optuna.Study, task: Task, target: Target, metric: str, data: LoadedData,
                     zoo: dict[str, Backbone], device: torch.device, seed: int, reporter: Reporter) -> dict[str, Any] | None:
    """Train the best trial's network from random weights (everything trains), score it (``val_<metric>``,
    ``test_<metric>``, and every metric in ``val_metrics``, ``test_metrics``), record it on the study."""
    best = best_trial(study)
    if best is None:
        return None
    params = dict(TrialRecord.params(best), freeze=0, lora_rank=0)
    params.pop("head_fit", None)  # the training loop, everything trained, whatever the best trial's head fit was
    params.pop("head_fit_c", None)
    backbone = zoo[params["model"]]
    reporter.message(f"From-scratch comparison: {params['model']} with random weights, "
                     f"{params['epochs']} epochs, lr {params['lr']:.2g} ...")
    prepared = task.prepare(data, backbone, params)
    started = time.time()
    result = train(backbone, params, prepared.train, prepared.val, target, target.width(data.label_names),
                   metric=metric, device=device, seed=seed, pretrained=False)
    model = result.adapted.model
    model.load_state_dict(result.best_state)
    test = (target.score(predict_outputs(model, prepared.test, device), prepared.test.labels, result.calibration)
            if prepared.test is not None else None)
    scratch = {"model": params["model"], "params": params, f"val_{metric}": result.best_value,
               f"test_{metric}": test[metric] if test is not None else None,
               "val_metrics": result.best_metrics, "test_metrics": test,
               "duration_s": round(time.time() - started, 1), "compared_with_trial": best.number}
    record_scratch(study, scratch)
    return scratch


def ensemble_after_search(study: optuna.Study, task: Task, target: Target, metric: str, data: LoadedData,
                          zoo: dict[str, Backbone], kept_weights: Callable[[FrozenTrial], Path | None],
                          device: torch.device, reporter: Reporter, keep_top: int | None = None,
                          rounds: int = DEFAULT_ROUNDS, select_by: str | None = None,
                          out_of_fold: Mapping[int, OutOfFold] | None = None, ship: str = "auto",
                          deadline: float | None = None, large: bool = False) -> dict[str, Any] | None:
    """Select an ensemble of the kept trials (the top ``keep_top`` by validation), score it on the test split, record
    it on the study (``ensemble``) and say how it compares with the best single trial.

    Where the selection on small data cross-validated two or more of them (``out_of_fold``: their out-of-fold outputs,
    :func:`autotl.selection.out_of_fold`), the members and weights are selected on those outputs, every item of
    train+val predicted by a model that did not train on it, among those trials, the chosen one first; otherwise on the
    kept trials' validation outputs (the validation score is then optimistic). ``select_by``: the metric of the target
    greedy selection climbs, in its own direction [default: ``metric``]. ``None`` with fewer than two trials whose
    outputs can be combined (:func:`ensemble_candidates`).

    The ensemble is **shipped** (``shipped`` on the record: what ``autotl export`` writes and whose test score is the
    search's) where ``ship`` is ``auto`` (the recipe's ``selection.ship_ensemble``) and it was selected on out-of-fold
    outputs with two members or more: greedy selection keeps a second member only where it beats the best single
    trial on those outputs, every item predicted by a model that did not train on it. An ensemble selected on the
    validation split ships likewise where the data is ``large`` (too large for the selection on small data: the
    validation split is what chose the best trial too, and it is large enough for that); on small data it is
    recorded and offered (``autotl export --ensemble``), never shipped: its score there is optimistic.

    With ``deadline`` (``time.time()`` seconds: the end of the time budget), a candidate whose predictions would not
    be done by then is left out (the two best are always predicted), and so is a soup (``soups_skipped``).
    """
    ranked = ranked_trials(study)
    kept = [(t, path) for t in ensemble_trials(ranked, keep_top) if (path := kept_weights(t)) is not None]
    chosen = best_trial(study)  # the selection's choice where it ran: the single trial an ensemble must beat
    kept.sort(key=lambda pair: pair[0].number != chosen.number)
    candidates, labels, excluded = ensemble_candidates(kept, task, target, data, zoo.get, device, deadline)
    if len(candidates) < 2:
        reporter.message("No ensemble: it needs at least two trials with kept weights (--keep-top) whose outputs "
                         "can be combined.")
        return None
    by = (select_by, target.metrics[select_by]) if select_by and select_by != metric else None
    direction = study.direction.name.lower()
    folded = {c.number: out_of_fold[c.number] for c in candidates if c.number in (out_of_fold or {})}
    if len(folded) >= 2:
        first = next(iter(folded.values()))
        climbed = greedy_selection({n: f.outputs for n, f in folded.items()}, first.labels, target,
                                   *(by or (metric, direction)), (first.calibrations or [candidates[0].calibration])[0],
                                   rounds)
        ensemble = ensemble_record(candidates, labels[0], labels[1], target, metric, direction, rounds,
                                   selected_on=f"out-of-fold outputs of the {len(folded)} cross-validated trials "
                                               f"({len(first.labels)} items of train+val)",
                                   weights=climbed.weights)
        ensemble.update(selected_by=(by or (metric, direction))[0], rounds=rounds, kept_round=climbed.rounds, trajectory=[float(v) for v in climbed.trajectory],
                        out_of_fold={"score": float(climbed.score), "singles": {str(n): float(v) for n, v in
                                                                                climbed.singles.items()}},
                        val_note="the validation items were among the out-of-fold items that chose the weights; "
                                 "the test split chose nothing")
        single = climbed.singles.get(chosen.number)
        if ship == "auto" and len(ensemble.get("members") or {}) >= 2:
            ensemble["shipped"] = True
            ensemble["shipped_why"] = (
                "selected on the out-of-fold outputs of train+val, where it beats "
                + (f"trial {chosen.number} alone ({ensemble['selected_by']} {climbed.score:.4f} against "
                   f"{single:.4f})" if single is not None else "each of its members alone"))
    else:
        ensemble = ensemble_record(candidates, labels[0], labels[1], target, metric, direction, rounds, select_by=by)
        if ship == "auto" and large and len(ensemble.get("members") or {}) >= 2:
            ensemble["shipped"] = True
            alone = ensemble["singles_val"].get(str(chosen.number))
            ensemble["shipped_why"] = (
                f"selected on the validation split, where it beats trial {chosen.number} alone"
                + (f" ({metric} {ensemble['val']:.4f} against {alone:.4f})" if None not in (ensemble["val"], alone)
                   else "") + ": the data is too large for the selection on small data, and that split chose the trial")
    ensemble.setdefault("shipped", False)
    ensemble["excluded"] = excluded
    ensemble["soups"], skipped = soups(kept, candidates, labels, task, target, metric, study.direction.name.lower(),
                                       data, zoo.get, device, deadline)
    if skipped:
        ensemble["soups_skipped"] = skipped
    record_ensemble(study, ensemble)
    reporter.message(describe(ensemble))
    return ensemble


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The complete trials of ``study``, the best first (:func:`autotl.leaderboard.rank_key`)."""
    sign = direction_sign(study)
    return sorted(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
                  key=lambda t: rank_key(t, sign))


def ensemble_trials(ranked: list[FrozenTrial], keep_top: int | None) -> list[FrozenTrial]:
    """The trials an ensemble is selected from, of the complete trials ``ranked`` (the best first): the top
    ``keep_top`` and every converged-head trial, whose weights the search keeps."""
    return [t for i, t in enumerate(ranked) if i < (keep_top or len(ranked)) or is_converged_head(t)]


def prediction_seconds(trial: FrozenTrial, items: int) -> float:
    """What predicting ``items`` items with ``trial``'s network takes, from its measured milliseconds an item when
    a split is predicted (:func:`autotl.latency.pass_ms`), else (a trial recorded before those were) its latency
    at the measured batch size on one CPU thread (an upper bound where more threads run); 0 unmeasured."""
    latency = TrialRecord.from_trial(trial).latency or {}
    per_item = latency.get("pass_ms") or latency.get("batched_ms") or latency.get("batch1_ms")
    return items * float(per_item) / 1000.0 if per_item else 0.0


def finishing_seconds(study: optuna.Study, val_items: int, test_items: int, keep_top: int | None,
                      ensemble: bool, members: int = 3) -> float:
    """What the work after the search would take, from the trials' measured prediction costs: the best trial's test
    outputs and, with ``ensemble``, the test outputs of ``members`` candidates (the validation outputs are those the
    trials saved), those of the trial about to run where it would be one more candidate, and each soup's averages on
    the validation split and the test split (:func:`ensemble_after_search`)."""
    best = best_trial(study)
    if best is None:
        return 0.0
    seconds = prediction_seconds(best, test_items)
    if not ensemble:
        return seconds
    ranked = ranked_trials(study)
    offered = ensemble_trials(ranked, keep_top)
    # the trial about to run joins the ensemble's candidates if it does well: its test outputs are held for too,
    # priced as the costliest kept trial's (without this, the deadline a trial is given forgets what it will add)
    upcoming = max((prediction_seconds(t, test_items) for t in offered), default=0.0) if len(offered) < members else 0.0
    if len(offered) < 2:
        return seconds + upcoming
    seconds += upcoming + sum(prediction_seconds(t, test_items) for t in offered[:members])
    by_model: dict[str, list[FrozenTrial]] = {}
    for t in offered:
        by_model.setdefault(TrialRecord.params(t).get("model"), []).append(t)
    return seconds + sum(sum(prediction_seconds(t, val_items) for t in group[1:]) + prediction_seconds(group[0], test_items)
                         for group in by_model.values() if len(group) > 1)


def ensemble_candidates(trials: list[tuple[FrozenTrial, Path]], task: Task, target: Target, data: LoadedData,
                        backbone_of: Callable[[str], Backbone | None], device: torch.device,
                        deadline: float | None = None
                        ) -> tuple[list[Candidate], tuple[torch.Tensor | None, torch.Tensor | None], dict[str, str]]:
    """The candidates of an ensemble (in the order given: the best first): each trial's outputs on the validation
    split as the task prepares it for the trial (those its best epoch saved beside its weights, else its network
    run again from its weights file), and on the test split when first asked (:meth:`Candidate.test_outputs`);
    the validation and test labels; the trials left out with why. With ``deadline``, a trial after the first two
    candidates whose validation outputs must be predicted (:func:`prediction_seconds`) and would end past it is
    left out.

    Only trials whose prepared labels are the same as the first one's are combined (a per-position target whose
    models cut the words into other pieces has other labels).
    """
    candidates, excluded, labels = [], {}, None
    for trial, path in trials:
        params = TrialRecord.params(trial)
        backbone = backbone_of(params["model"])
        if backbone is None:
            excluded[str(trial.number)] = f"model {params['model']} is not loaded"
            continue
        prepared = task.prepare(data, backbone, params)
        test = prepared.test if prepared.test is not None and len(prepared.test) else None
        val = saved_val_outputs(path, len(prepared.val))
        if val is None and deadline is not None and len(candidates) >= 2 \
                and time.time() + prediction_seconds(trial, len(prepared.val)) > deadline:
            excluded[str(trial.number)] = "its outputs would not be predicted within the time budget"
            continue
        if labels is None:
            labels = (prepared.val.labels, test.labels if test is not None else None)
        elif not _same(prepared.val.labels, labels[0]) or (test is not None and not _same(test.labels, labels[1])):
            excluded[str(trial.number)] = "its prepared labels differ from the first trial's (other pieces of the items)"
            continue

        def network(backbone=backbone, path=path):
            return trained_network(backbone, target.width(data.label_names), load_weights(path), device,
                                   per_position=target.per_position)

        def predict_test(network=network, test=test):
            return predict_outputs(network(), test, device) if test is not None else None

        record = TrialRecord.from_trial(trial)
        candidates.append(Candidate(trial.number, float(trial.value), dict(record.calibration or {}),
                                    val if val is not None else predict_outputs(network(), prepared.val, device),
                                    None, record.latency, record.inference_params, params["model"],
                                    predict_test=predict_test))
    return candidates, labels or (None, None), excluded


def saved_val_outputs(weights: Path, items: int) -> torch.Tensor | None:
    """The validation outputs saved beside the trial's ``weights`` (:func:`autotl.trial_weights.val_outputs_path`),
    if there and of ``items`` items; else ``None``."""
    path = val_outputs_path(weights)
    if not path.is_file():
        return None
    try:
        outputs = load_weights(path)["outputs"]
    except (OSError, KeyError, ValueError, RuntimeError):  # unreadable: predicted again instead
        return None
    return outputs if outputs.shape[:1] == (items,) else None


def soups(kept: list[tuple[FrozenTrial, Path]], candidates: list[Candidate], labels: tuple, task: Task,
          target: Target, metric: str, direction: str, data: LoadedData,
          backbone_of: Callable[[str], Backbone | None], device: torch.device, deadline: float | None = None
          ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The greedy soup (weight averaging, :func:`autotl.ensemble.soup_record`) of each model two or more candidates
    share, scored on the best of them's preparation of the items: what the study records under the ensemble's
    ``soups``; and the models whose soup was not tried, with why (with ``deadline``: it would end past it)."""
    paths = {t.number: (t, path) for t, path in kept}
    by_model: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_model.setdefault(c.model, []).append(c)
    found, skipped = [], {}
    for model, group in by_model.items():
        if len(group) < 2:
            continue
        first = paths[group[0].number][0]
        backbone = backbone_of(model)
        prepared = task.prepare(data, backbone, TrialRecord.params(first))
        test = prepared.test if prepared.test is not None and len(prepared.test) else None
        if deadline is not None:
            needed = sum(prediction_seconds(paths[c.number][0], len(prepared.val)) for c in group[1:]) + (
                prediction_seconds(first, len(test)) if test is not None else 0.0)
            if time.time() + needed > deadline:
                skipped[model] = "its averages would not be scored within the time budget"
                continue

        def network(state, backbone=backbone):
            return trained_network(backbone, target.width(data.label_names), state, device,
                                   per_position=target.per_position)

        states = [(c.number, load_weights(paths[c.number][1])) for c in group]

        def val_of(state, prepared=prepared, first=states[0][1], own=group[0].val):
            if state.keys() == first.keys() and all(state[k] is first[k] for k in first):  # the first's, predicted
                return own
            return predict_outputs(network(state), prepared.val, device)

        def test_of(state, test=test):
            return predict_outputs(network(state), test, device) if test is not None else None

        soup = soup_record(states, val_of, test_of, labels[0], labels[1], target, metric, direction,
                           group[0].calibration)
        found.append({**soup, "model": model})
    return found, skipped


def _same(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    return b is not None and a.shape == b.shape and bool(torch.equal(a, b))


__all__ = ["ensemble_after_search", "ensemble_candidates", "ensemble_trials", "ranked_trials", "finishing_seconds", "prediction_seconds", "soups", "score_best_on_test", "scratch_baseline", "test_split_scores"]
