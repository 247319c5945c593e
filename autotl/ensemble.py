"""Ensembles of a search's trials: greedy ensemble selection, and greedy weight averaging (model soups).

**Greedy ensemble selection** (Caruana et al. 2004, "Ensemble selection from libraries of models", with
replacement, as auto-sklearn's ``EnsembleSelection`` and AutoGluon's weighted ensemble do it):
:func:`greedy_selection` takes the candidates' outputs on the same held-out items, the items' labels and the
task's target; starting from nothing, each round adds (again, if it helps most) the candidate whose addition
gives the best combined score in the study's metric and direction (on a tie, the candidate added least so far,
then the better ranked: a plateau of a coarse metric such as a count of right items is crossed by adding
new members, not by adding the same one again); after ``rounds`` rounds the best round is kept (the earliest
of equal ones), and each member's weight is how often it was added over that round's count. Round one picks the best single candidate, so the ensemble never scores worse than it on the items it
was selected on. The outputs are combined by the target (:meth:`autotl.Target.combine`: averaged in
probability space where that means something); members' calibrations may differ (one threshold per label,
tuned on each member's own outputs), so the combined outputs are scored with the first candidate's
calibration tuned again on them (:meth:`autotl.Target.tune`), which is the calibration an ensemble bundle
decodes with.

Its score on those items is optimistic: the same items chose the members and their weights. The search
selects on the validation outputs of its kept trials (:func:`trial_outputs`; the search's validation
split, the only held-out items it has); out-of-fold outputs of a cross-validation, of the same shape, can be
given instead. The test split, where there is one, chose nothing and gives the honest comparison.

**Weight averaging** (Wortsman et al. 2022, "Model soups", the greedy soup): among trials of the same model
whose merged networks have the same state keys and shapes (:func:`same_architecture`), :func:`greedy_soup`
averages the weights of the best one with each next one, in the order of their validation scores, keeping
an addition when the soup's validation score does not drop.

The search calls these after its trials (:func:`autotl.after_search.ensemble_after_search`) and records the
result on the study (``ensemble``, :func:`autotl.records.record_ensemble`); ``autotl export --ensemble``
writes the recorded ensemble as one bundle.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Sequence

import torch

from .base import Target

#: rounds of greedy ensemble selection (auto-sklearn's default ``ensemble_size`` is 50; a search keeps few trials).
DEFAULT_ROUNDS = 20
#: what an ensemble's score on the items that selected it is, said wherever it is shown.
SELECTION_NOTE = ("optimistic: the same validation items chose the members and their weights; the test split "
                  "chose nothing")


def _better(a: float, b: float | None, sign: float) -> bool:
    """Whether score ``a`` beats ``b`` in the metric's direction (``sign`` 1: higher is better); ``nan`` never does."""
    if a != a:
        return False
    return b is None or b != b or sign * (a - b) > 0


@dataclass
class Combined:
    """Outputs combined and scored: the study's metric, every metric, the calibration they were scored with."""

    score: float
    metrics: dict[str, float]
    calibration: dict[str, Any]


def score_combined(target: Target, outputs: Sequence[torch.Tensor], weights: Sequence[float], labels: torch.Tensor,
                   calibration: Mapping[str, Any], metric: str, *, tune: bool = True) -> Combined:
    """``outputs`` combined by ``target`` with ``weights`` and scored on ``labels``: with ``calibration`` tuned again on
    the combined outputs (``tune``), else as given."""
    combined = target.combine(list(outputs), list(weights))
    calibration = target.tune(dict(calibration), combined, labels) if tune else dict(calibration)
    metrics = target.score(combined, labels, calibration)
    return Combined(float(metrics[metric]), {k: float(v) for k, v in metrics.items()}, calibration)


@dataclass
class Selection:
    """What :func:`greedy_selection` found."""

    #: member -> weight (how often it was added, over the rounds kept), in the order members were first added.
    weights: dict[Hashable, float]
    #: the combined outputs' score (the metric), every metric, and the calibration tuned on them.
    score: float
    metrics: dict[str, float]
    calibration: dict[str, Any]
    #: the round kept (its number of additions), and the best score after each round.
    rounds: int
    trajectory: list[float] = field(default_factory=list)
    #: each candidate's own score on the same items (combined alone, calibration tuned as for the ensemble).
    singles: dict[Hashable, float] = field(default_factory=dict)


def greedy_selection(outputs: Mapping[Hashable, torch.Tensor], labels: torch.Tensor, target: Target, metric: str,
                     direction: str, calibration: Mapping[str, Any], rounds: int = DEFAULT_ROUNDS) -> Selection:
    """Greedy ensemble selection with replacement (see the module's docstring).

    :param outputs: each candidate's outputs on the same items, in the order ties go to (the best first).
    :param labels: the items' labels, as the target scores them.
    :param metric: the metric to select by, one of the target's; ``direction``: ``maximize`` or ``minimize``.
    :param calibration: the calibration the combined outputs are tuned from (the first candidate's, say).
    :param rounds: how many additions to try; the best round is kept.
    """
    keys = list(outputs)
    if not keys:
        raise ValueError("greedy ensemble selection needs at least one candidate")
    if rounds < 1:
        raise ValueError(f"greedy ensemble selection needs at least one round, not {rounds}")
    sign = -1.0 if direction == "minimize" else 1.0

    def scored(counts: Counter) -> Combined:
        members = [k for k in keys if counts[k]]
        return score_combined(target, [outputs[k] for k in members], [counts[k] for k in members], labels,
                              calibration, metric)

    singles = {k: scored(Counter({k: 1})) for k in keys}
    counts: Counter = Counter()
    order: list[Hashable] = []
    kept: tuple[Counter, list, Combined, int] | None = None
    trajectory = []
    for round_ in range(1, rounds + 1):
        chosen, chosen_result = keys[0], None
        for key in keys:
            result = singles[key] if not counts else scored(counts + Counter({key: 1}))
            if chosen_result is None or _better(result.score, chosen_result.score, sign) or \
                    (result.score == chosen_result.score and counts[key] < counts[chosen]):
                chosen, chosen_result = key, result
        counts[chosen] += 1
        if chosen not in order:
            order.append(chosen)
        trajectory.append(chosen_result.score)
        if kept is None or _better(chosen_result.score, kept[2].score, sign):
            kept = (Counter(counts), list(order), chosen_result, round_)
    kept_counts, kept_order, result, kept_round = kept
    return Selection(weights={k: kept_counts[k] / kept_round for k in kept_order if kept_counts[k]},
                     score=result.score, metrics=result.metrics, calibration=result.calibration, rounds=kept_round,
                     trajectory=trajectory, singles={k: v.score for k, v in singles.items()})


# -- weight averaging ------------------------------------------------------------------------------------------

def same_architecture(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Whether two networks' states have the same keys, and tensors of the same shapes and dtypes under them."""
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)


def average_states(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of states of one architecture: floating-point tensors averaged, the others (counters
    of batch norm, say) the first state's."""
    first = states[0]
    averaged = {}
    for key, value in first.items():
        if value.is_floating_point():
            averaged[key] = torch.stack([s[key].double() for s in states]).mean(0).to(value.dtype)
        else:
            averaged[key] = value.clone()
    return averaged


@dataclass
class Soup:
    """What :func:`greedy_soup` made: the indices of the states averaged, the averaged state, its score."""

    ingredients: list[int]
    state: dict[str, torch.Tensor]
    score: float
    #: the first state's own score, which the soup must not fall below.
    first_score: float


def greedy_soup(states: Sequence[Mapping[str, torch.Tensor]], score: Callable[[Mapping[str, torch.Tensor]], float],
                direction: str) -> Soup:
    """The greedy soup of Wortsman et al. (2022): ``states`` ordered by their validation score, the best first (all of
    one architecture: :func:`same_architecture`); each next one joins the average when the average's score
    (``score(state)``, on the validation items) does not drop."""
    if not states:
        raise ValueError("a soup needs at least one state")
    sign = -1.0 if direction == "minimize" else 1.0
    ingredients, soup = [0], dict(states[0])
    best = first = score(soup)
    for index in range(1, len(states)):
        if not same_architecture(states[0], states[index]):
            continue
        candidate = average_states([states[i] for i in ingredients + [index]])
        value = score(candidate)
        if value == value and (best != best or sign * (value - best) >= 0):
            ingredients.append(index)
            soup, best = candidate, value
    return Soup(ingredients, soup, best, first)


def soup_record(states: Sequence[tuple[int, Mapping[str, torch.Tensor]]],
                val_of: Callable[[Mapping[str, torch.Tensor]], torch.Tensor],
                test_of: Callable[[Mapping[str, torch.Tensor]], torch.Tensor | None],
                val_labels: torch.Tensor, test_labels: torch.Tensor | None, target: Target, metric: str, direction: str,
                calibration: Mapping[str, Any]) -> dict[str, Any]:
    """The greedy soup of trials of one model (``states``: trial number and merged state, the best first), scored as
    the search scores a trial: ``val_of(state)`` gives a state's validation outputs (the first trial's preparation of
    the items), the calibration (the first trial's) tuned on them; ``test_of(state)`` its test outputs, asked of the
    soup alone where it averages two trials or more. What the study records of it: the trials offered, those
    averaged, the soup's and the first trial's scores, whether it helped."""
    tuned: dict[int, Combined] = {}

    def scored(state: Mapping[str, torch.Tensor]) -> float:
        result = score_combined(target, [val_of(state)], [1.0], val_labels, calibration, metric)
        tuned[id(state)] = result
        return result.score

    soup = greedy_soup([state for _, state in states], scored, direction)
    result = tuned.get(id(soup.state))
    soup_test = None
    if len(soup.ingredients) > 1 and test_labels is not None and result is not None:
        test = test_of(soup.state)
        if test is not None:
            soup_test = target.score(test, test_labels, result.calibration)[metric]
    sign = -1.0 if direction == "minimize" else 1.0
    return {"model": None, "trials": [n for n, _ in states], "averaged": [states[i][0] for i in soup.ingredients],
            "val": finite(soup.score), "first_val": finite(soup.first_score),
            "helped": len(soup.ingredients) > 1 and _better(soup.score, soup.first_score, sign),
            "test": finite(soup_test) if len(soup.ingredients) > 1 else None}


# -- the trials' outputs, and the record ---------------------------------------------------------------------------

@dataclass
class Candidate:
    """A kept trial offered to the ensemble: its number, validation score, calibration, cost and outputs."""

    number: int
    value: float
    calibration: dict[str, Any]
    val: torch.Tensor
    test: torch.Tensor | None = None
    latency: dict[str, Any] | None = None
    inference_params: int | None = None
    model: str | None = None
    #: predicts the test outputs where ``test`` is not given: asked only of the members and the best candidate
    predict_test: Callable[[], torch.Tensor | None] | None = field(default=None, repr=False, compare=False)

    def test_outputs(self) -> torch.Tensor | None:
        """The candidate's outputs on the test split, predicted once on first asking; ``None`` without a test split."""
        if self.test is None and self.predict_test is not None:
            self.test, self.predict_test = self.predict_test(), None
        return self.test


def ensemble_record(candidates: Sequence[Candidate], val_labels: torch.Tensor, test_labels: torch.Tensor | None,
                    target: Target, metric: str, direction: str, rounds: int = DEFAULT_ROUNDS,
                    selected_on: str = "validation", weights: Mapping[int, float] | None = None,
                    select_by: tuple[str, str] | None = None) -> dict[str, Any]:
    """Select an ensemble of ``candidates`` (the best first) on their validation outputs and describe it as the study
    records it: members and weights, the calibration tuned on the combined outputs, the ensemble's and the best
    single candidate's scores on the selection items and (where every candidate has test outputs) on the test
    split, the summed latency and parameters. Test outputs are asked of the members and the best candidate
    only (:meth:`Candidate.test_outputs`); the equal-weight averages get a test score where their candidates'
    test outputs are at hand.

    ``weights`` ({trial number: weight}) gives the members and weights instead of selecting them (``rounds`` 0);
    ``select_by`` (a metric of the target and its direction) is what the selection climbs instead of ``metric``
    (every score recorded stays in ``metric``).
    """
    if weights is None and select_by is not None:
        climbed = greedy_selection({c.number: c.val for c in candidates}, val_labels, target, select_by[0],
                                   select_by[1], candidates[0].calibration, rounds)
        weights, kept_round, trajectory = climbed.weights, climbed.rounds, climbed.trajectory
    if weights is None:
        selection = greedy_selection({c.number: c.val for c in candidates}, val_labels, target, metric, direction,
                                     candidates[0].calibration, rounds)
    else:
        total = float(sum(weights.values()))
        given = {n: float(w) / total for n, w in weights.items()}
        by = {c.number: c for c in candidates}
        fixed = score_combined(target, [by[n].val for n in given], list(given.values()), val_labels,
                               candidates[0].calibration, metric)
        singles = {c.number: score_combined(target, [c.val], [1.0], val_labels, c.calibration, metric).score
                   for c in candidates}
        selection = Selection(given, fixed.score, fixed.metrics, fixed.calibration, 0, [], singles)
        if select_by is not None:  # selected, by another metric: its rounds and its scores along them
            selection.rounds, selection.trajectory = kept_round, trajectory
        else:
            rounds = 0
    by_number = {c.number: c for c in candidates}
    members = [by_number[n] for n in selection.weights]
    best = candidates[0]
    test = best_test = None
    test_metrics: dict[str, float] = {}
    if test_labels is not None and len(test_labels) and all(m.test_outputs() is not None for m in members) \
            and best.test_outputs() is not None:
        scored = score_combined(target, [m.test for m in members], list(selection.weights.values()), test_labels,
                                selection.calibration, metric, tune=False)
        test, test_metrics = scored.score, scored.metrics
        best_test = target.score(best.test, test_labels, best.calibration)[metric]
    equal = []  # the top k with equal weights, selected by nothing but the trials' own ranks: to compare
    for k in sorted({min(3, len(candidates)), len(candidates)} - {1}):
        top = candidates[:k]
        val_k = score_combined(target, [c.val for c in top], [1.0] * k, val_labels, best.calibration, metric)
        test_k = None
        if test_labels is not None and len(test_labels) and all(c.test is not None for c in top):
            test_k = target.score(target.combine([c.test for c in top], [1.0] * k), test_labels,
                                  val_k.calibration)[metric]
        equal.append({"trials": [c.number for c in top], "val": finite(val_k.score), "test": finite(test_k)})
    params = [m.inference_params for m in members]
    return {
        "members": {str(n): w for n, w in selection.weights.items()},
        "models": {str(m.number): m.model for m in members},
        "candidates": [c.number for c in candidates],
        "selected_on": selected_on,
        "selected_by": None if rounds == 0 else (select_by or (metric, direction))[0],
        "metric": metric,
        "direction": direction,
        "rounds": rounds,
        "kept_round": selection.rounds,
        "trajectory": [finite(v) for v in selection.trajectory],
        "val": finite(selection.score),
        "val_metrics": {k: finite(v) for k, v in selection.metrics.items()},
        "val_note": SELECTION_NOTE,
        "test": finite(test),
        "test_metrics": {k: finite(v) for k, v in test_metrics.items()},
        "best_single": {"trial": best.number, "val": finite(best.value), "test": finite(best_test)},
        "singles_val": {str(n): finite(v) for n, v in selection.singles.items()},
        "equal_weights": equal,
        "calibration": selection.calibration,
        "latency": summed_latency([m.latency for m in members]),
        "inference_params": None if any(p is None for p in params) else sum(params),
    }


def summed_latency(latencies: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """The members' latencies added up (they run one after the other): ``batch1_ms`` and ``batched_ms`` summed, the
    rest the first's; ``None`` if any member's latency was not measured."""
    if not latencies or any(not latency or latency.get("batch1_ms") is None for latency in latencies):
        return None
    total = dict(latencies[0])
    for key in ("batch1_ms", "batched_ms"):
        values = [latency.get(key) for latency in latencies]
        total[key] = None if any(v is None for v in values) else round(sum(float(v) for v in values), 4)
    total["members"] = len(latencies)
    total["note"] = "the members' latencies at the search, added: they run one after the other"
    return total


def describe(ensemble: Mapping[str, Any]) -> str:
    """One line on a recorded ensemble against the best single trial, for the search's end, ``autotl trials`` and
    ``autotl best``."""
    metric, single = ensemble.get("metric", "score"), ensemble.get("best_single") or {}
    members = ensemble.get("members") or {}
    val, test = ensemble.get("val"), ensemble.get("test")

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    if len(members) < 2:
        line = (f"Ensemble: no weighted combination of the {len(ensemble.get('candidates') or [])} kept trials beat "
                f"trial {single.get('trial')} alone on validation {metric} ({num(single.get('val'))}).")
    else:
        folded = ensemble.get("out_of_fold")
        chosen_on = (f"out-of-fold {metric} {num(folded.get('score'))} (selected on it), val {metric} {num(val)}"
                     if folded else f"val {metric} {num(val)} (optimistic: selected on these validation items)")
        line = (f"Ensemble of trials {', '.join(f'{n} ({w:.2f})' for n, w in members.items())}: {chosen_on}, "
                + (f"test {metric} {num(test)}" if test is not None else "no test split")
                + f"; best single trial {single.get('trial')}: val {num(single.get('val'))}"
                + (f", test {num(single.get('test'))}" if single.get("test") is not None else "") + ".")
        latency = ensemble.get("latency")
        if latency and latency.get("batch1_ms") is not None:
            line += f" Latency {latency['batch1_ms']:.2f} ms/item at batch 1 (the members' added)."
        if ensemble.get("shipped"):
            line += (f" Shipped: {ensemble.get('shipped_why') or 'selected on out-of-fold outputs'}; `autotl export "
                     f"RUN` writes it as one bundle, `--trial {single.get('trial')}` the single trial.")
        else:
            line += " `autotl export RUN --ensemble` writes it as one bundle."
    for soup in ensemble.get("soups") or []:
        if len(soup.get("averaged") or []) > 1:
            line += (f" Weight averaging of trials {', '.join(map(str, soup['averaged']))} ({soup['model']}): val "
                     f"{num(soup.get('val'))} against {num(soup.get('first_val'))} for trial {soup['trials'][0]} alone"
                     + (f", test {num(soup.get('test'))}" if soup.get("test") is not None else "")
                     + " (not exported: a soup is no trial yet).")
    return line


def finite(value: float | None) -> float | None:
    """``value``, or ``None`` for a missing or ``nan`` score (JSON has no ``nan``)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


__all__ = ["Candidate", "Combined", "DEFAULT_ROUNDS", "SELECTION_NOTE", "Selection", "Soup", "average_states", "finite",
           "describe", "ensemble_record", "greedy_selection", "greedy_soup", "same_architecture", "score_combined", "soup_record", "summed_latency"]
