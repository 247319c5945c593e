"""The leaderboard: every trial of a study as rows, as a table for people and as JSON for programs.

Trials rank by the study's metric (the recipe's ``metric:``, else the task's primary; :func:`metric_name`)
in its direction (the Optuna study's: :func:`direction_sign`), everywhere: here, ``best``, keep-top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .ensemble import describe as describe_ensemble
from .errors import RunError, UsageError
from .records import StudyRecord, TrialRecord, retry_of
from .runs import RunLocation, retried_as

PARAM_COLUMNS = (("model", "model"), ("freeze", "freeze"), ("lora_rank", "LoRA"), ("lr", "lr"))
EXTRA_COLUMNS = (("resolution", "res"), ("max_length", "max len"), ("epochs", "epochs"), ("batch_size", "batch"))


def direction_sign(study: optuna.Study) -> float:
    """1 where the study maximises its metric, -1 where it minimises it: ``sign * value`` is higher for better."""
    return -1.0 if study.direction == StudyDirection.MINIMIZE else 1.0


def metric_name(study: optuna.Study) -> str:
    """The metric the study ranks its trials by: the one it recorded, else (a study begun before it was recorded)
    the primary metric of its task's target, if an installed plugin provides the task; else ``"value"``."""
    from .plugins import get_registry

    record = StudyRecord.from_study(study)
    if record.metric:
        return record.metric
    task = get_registry().tasks.get(record.task or "")
    return record.metric_for(task) if getattr(task, "target", None) is not None else "value"


def rank_key(trial: FrozenTrial, sign: float = 1.0) -> tuple[float, int]:
    """How completed trials rank, everywhere: the better value first (the higher where ``sign`` is 1, the
    study maximising; the lower where it is -1: :func:`direction_sign`); on a tie, the lower trial number (the
    trial asked first). Sort by it, ascending; storages order tied values as they please."""
    return (-sign * trial.value, trial.number)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best completed trial: the one the selection on small data chose by cross-validation where it ran
    (:attr:`StudyRecord.selection`, autotl/selection.py), else the best by :func:`rank_key` in the study's direction
    (never ``study.best_trial``, whose pick among ties the storage decides); ``None`` before any trial completed."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    chosen = selected_number(study)
    found = next((t for t in complete if t.number == chosen), None) if chosen is not None else None
    if found is not None:
        return found
    sign = direction_sign(study)
    return min(complete, key=lambda t: rank_key(t, sign), default=None)


def selected_number(study: optuna.Study) -> int | None:
    """The trial the selection on small data chose by cross-validation; ``None`` where none ran (or chose none)."""
    chosen = (StudyRecord.from_study(study).selection or {}).get("chosen")
    return None if chosen is None else int(chosen)


def cross_validation(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """{trial number: its cross-validation by the selection (``mean``, ``se``, ``fold_scores``, ``oof_score``...)}."""
    rows = (StudyRecord.from_study(study).selection or {}).get("candidates") or []
    return {int(r["trial"]): r for r in rows}


def selected_by(study: optuna.Study) -> str:
    """How the best trial was chosen, in words: by cross-validation (its folds and items) or by validation."""
    selection = StudyRecord.from_study(study).selection or {}
    if selection.get("chosen") is not None and best_number(study) == int(selection["chosen"]):
        return f"cross-validation ({selection.get('folds')} folds over {selection.get('items')} items)"
    return "validation"


def best_number(study: optuna.Study) -> int | None:
    best = best_trial(study)
    return None if best is None else best.number


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One dict per trial: ``number``, ``state``, ``value``, ``params`` (every setting), ``duration_s``..."""
    best = best_number(study)
    retries = retried_as(study)
    better = max if direction_sign(study) > 0 else min
    cv = cross_validation(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        record = TrialRecord.from_trial(t)
        value = t.value
        if value is None and t.intermediate_values:  # pruned: the best epoch it reached
            value = better(t.intermediate_values.values())
        notes = [record.error or record.stopped or "", record.shortened or ""]
        if t.state == TrialState.FAIL and not notes[0]:
            notes[0] = "its worker stopped sending heartbeats (killed or lost)"
        if t.number in retries:
            notes.append(f"retried as trial {retries[t.number]}")
        if retry_of(t) is not None:
            notes.append(f"retry of trial {retry_of(t)}")
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "value": value,
            "params": TrialRecord.params(t),
            "val_metrics": record.val_metrics,  # every metric of the task's target at the best epoch
            "duration_s": round(t.duration.total_seconds(), 1) if t.duration else None,
            "epochs_run": len(t.intermediate_values),
            "best": t.number == best,
            "note": "; ".join(n for n in notes if n),
            "worker": record.worker,
            "trainable_params": record.trainable_params,
            "total_params": record.total_params,
            "inference_params": record.inference_params,
            "latency": record.latency,
            "weights": record.weights,
            "timing": record.timing,  # seconds: step, eval, data, prefix, setup, keep
            "cache": record.cache,  # how the frozen-prefix cache served the trial
            # the selection's k-fold cross-validation (mean and standard error of the study's metric), if it ran
            "cv": {k: cv[t.number].get(k) for k in ("mean", "se", "fold_scores", "oof_score")} if t.number in cv
            else None,
        })
    return rows


def best_summary(study: optuna.Study, number: int | None = None, metric: str | None = None) -> dict[str, Any] | None:
    """The best trial (or trial ``number``) with its validation and (if scored) test score.

    The scores are keyed by the study's ``metric`` (:func:`metric_name` when not given): ``val_<metric>`` and
    ``test_<metric>``; ``metric`` and ``direction`` name it, ``val_metrics`` and ``test_metrics`` give every
    metric of the task's target (``{}`` where the search recorded none).
    """
    number = best_number(study) if number is None else number
    if number is None:
        return None
    metric = metric or metric_name(study)
    row = next(r for r in trial_rows(study) if r["number"] == number)
    record = StudyRecord.from_study(study)
    cv = row["cv"] or {}
    refit = record.refit if (record.refit or {}).get("trial") == number else None
    return {
        "number": number,
        "params": row["params"],
        f"val_{metric}": row["value"],
        f"test_{metric}": record.test_score(number),
        "metric": metric,
        "direction": study.direction.name.lower(),
        "val_metrics": row["val_metrics"],
        "test_metrics": record.test_metrics(number),
        "duration_s": row["duration_s"],
        "trainable_params": row["trainable_params"],
        "total_params": row["total_params"],
        "inference_params": row["inference_params"],
        "latency": row["latency"],
        "weights": row["weights"],
        "scratch": record.scratch,
        "ensemble": record.ensemble,  # the ensemble of kept trials (autotl/ensemble.py), beside the single trial
        "cv_metric": cv.get("mean"),  # the selection's cross-validation of the study's metric (None: not run)
        "cv_se": cv.get("se"),  # its standard error over the folds
        "cv_folds": cv.get("fold_scores"),
        "selected_by": selected_by(study) if number == best_number(study) else "named",
        "test_weights": (record.test_weights or {}).get(str(number), "trial") if record.test_score(number) is not None
        else None,  # whose the test score is: "refit" (train+val) or "trial" (its own weights)
        "refit": {k: v for k, v in refit.items() if k != "calibration"} if refit else None,
        "fitted_space": record.fitted_space,  # the ranges fitted to the data before the first trial, and why
    }


@dataclass
class Choice:
    """A trial picked for production, and in words why."""

    trial: FrozenTrial
    reason: str
    #: the study's recorded ensemble where ``--within`` picked it (``trial`` is then its best single trial)
    ensemble: dict[str, Any] | None = None


def choose_trial(study: optuna.Study, *, number: int | None = None, within: float | None = None) -> Choice:
    """The trial ``number``; else the fastest one within ``within`` of the best validation score (in the direction
    of the study's metric: at most ``within`` below the best where it maximises, above where it minimises); else
    the best (:func:`best_trial`: ties go to the lower trial number), or the recorded ensemble where the search ships
    it (``shipped``: selected on out-of-fold outputs, or on the validation split of data too large for the selection
    on small data, autotl/after_search.py; ``Choice.ensemble``).

    "Fastest" is the lowest per-item latency at batch 1 measured after the trial (``latency``
    user attribute); ties go to the better score, then the lower trial number. Trials without a
    measured latency are never picked for speed.

    With ``within``, the study's recorded ensemble (:mod:`autotl.ensemble`) competes too, with its members'
    latencies added: its validation score (optimistic: selected on the same items) sets the best where it beats
    the best trial's, and it is picked (``Choice.ensemble``) only where no trial within the margin is faster, so a
    margin that lets a fast single trial in picks that trial.
    """
    sign, metric = direction_sign(study), metric_name(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if number is not None:
        found = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
        if found is None:
            raise RunError(f"the study has no trial {number}; `autotl trials` lists them")
        if found.state != TrialState.COMPLETE:
            raise RunError(f"trial {number} is {found.state.name.lower()}, not complete; choose a completed trial")
        return Choice(found, f"named with --trial {number}")
    if not complete:
        raise RunError("no trial of the study has completed yet")
    if within is None:
        chosen = best_trial(study)
        shipped = _ensemble(study)
        if shipped is not None and shipped.get("shipped"):
            return Choice(chosen, f"the ensemble of trials {', '.join(shipped['members'])} the search ships: "
                                  f"{shipped.get('shipped_why') or 'selected on out-of-fold outputs'}", ensemble=shipped)
        selection = StudyRecord.from_study(study).selection or {}
        if selected_number(study) == chosen.number:
            return Choice(chosen, f"the selection on small data, {selection.get('reason')}")
        return Choice(chosen, f"the best validation {metric} ({chosen.value:.4f}) of {len(complete)} completed trials")
    best = min(complete, key=lambda t: rank_key(t, sign))
    if within < 0:
        raise UsageError(f"--within {within}: give a non-negative margin of {metric} such as 0.01")
    ensemble, top, top_name = _ensemble(study), best.value, f"trial {best.number}"
    if ensemble is not None and sign * (ensemble["val"] - best.value) > 0:
        top, top_name = ensemble["val"], f"the ensemble of trials {', '.join(ensemble['members'])}, optimistic"
    close = [t for t in complete if sign * (top - t.value) <= within + 1e-12]
    timed = [t for t in close if _batch1(t) is not None]
    ensemble_ms = None if ensemble is None or sign * (top - ensemble["val"]) > within + 1e-12 else \
        (ensemble.get("latency") or {}).get("batch1_ms")
    if ensemble_ms is not None and (not timed or ensemble_ms < min(_batch1(t) for t in timed)):
        return Choice(best, f"the ensemble of trials {', '.join(ensemble['members'])} (val {metric} "
                            f"{ensemble['val']:.4f}, optimistic; {ensemble_ms:.2f} ms/item at batch 1, the members' "
                            f"added): no single trial within {within:g} of the best validation {metric} ({top:.4f}, "
                            f"{top_name}) is faster", ensemble=ensemble)
    if not timed:
        return Choice(best, f"the best validation {metric} ({best.value:.4f}); no trial within {within:g} of it has "
                            "a measured latency")
    fastest = min(timed, key=lambda t: (_batch1(t), -sign * t.value, t.number))
    return Choice(fastest, f"the lowest batch-1 latency ({_batch1(fastest):.2f} ms/item) among the "
                           f"{len(close)} trial(s) within {within:g} of the best validation {metric} "
                           f"({top:.4f}, {top_name})")


def _ensemble(study: optuna.Study) -> dict[str, Any] | None:
    """The study's recorded ensemble where it has at least two members and a validation score, else ``None``."""
    ensemble = StudyRecord.from_study(study).ensemble
    if not ensemble or len(ensemble.get("members") or {}) < 2 or ensemble.get("val") is None:
        return None
    return ensemble


def _batch1(trial: FrozenTrial) -> float | None:
    latency = TrialRecord.from_trial(trial).latency or {}
    value = latency.get("batch1_ms")
    return float(value) if value is not None else None


def render(study: optuna.Study, location: RunLocation, console: Console | None = None, metric: str | None = None) -> None:
    """The leaderboard as a table on ``console``, best first, its value column headed by the study's ``metric``
    (:func:`metric_name` when not given), then the best trial's scores."""
    console = console or Console()
    metric = metric or metric_name(study)
    sign = direction_sign(study)
    rows = trial_rows(study)
    extras = [(k, h) for k, h in EXTRA_COLUMNS if any(k in r["params"] for r in rows)]
    task = StudyRecord.from_study(study).task or "?"
    table = Table(title=escape(f"autotl leaderboard: {task} - {location.describe()}"),
                  title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("#", justify="right")
    for _, header in PARAM_COLUMNS + tuple(extras):
        table.add_column(header, justify="left" if header == "model" else "right")
    table.add_column(f"val {metric}", justify="right")
    has_cv = any(r["cv"] for r in rows)
    if has_cv:
        table.add_column(f"cv {metric}", justify="right")
    table.add_column("params", justify="right")
    table.add_column("ms/item b1", justify="right")
    table.add_column(f"ms/item b{_batched_size(rows)}", justify="right")
    table.add_column("time", justify="right")
    workers = len({r["worker"] for r in rows} - {None}) > 1  # a distributed search: who ran what
    if workers:
        table.add_column("worker")
    table.add_column("state")
    order = sorted(rows, key=lambda r: (r["state"] != "COMPLETE", r["value"] is None, -sign * (r["value"] or 0.0),
                                        r["number"]))
    for r in order:
        p = r["params"]
        cells = ["★" if r["best"] else "", str(r["number"])]
        cells += [escape(_param_cell(p, k)) for k, _ in PARAM_COLUMNS + tuple(extras)]  # text, not rich markup
        latency = r["latency"] or {}
        cells += [format_value(r["value"], 4)]
        if has_cv:
            cells.append(format_cv(r["cv"]))
        cells += [format_count(r["inference_params"]), format_ms(latency.get("batch1_ms")),
                  format_ms(latency.get("batched_ms"))]
        cells += [f"{r['duration_s']:.0f}s" if r["duration_s"] is not None else "-"]
        if workers:
            cells.append(escape(r["worker"] or "-"))
        state = {"COMPLETE": "[green]complete[/]", "PRUNED": "[yellow]pruned[/]", "FAIL": "[red]failed[/]"}
        note = escape(f" ({r['note']})") if r["note"] else ""
        cells.append(state.get(r["state"], r["state"].lower()) + note)
        table.add_row(*cells, style="bold" if r["best"] else None)
    console.print(table)
    counts = {s.name.lower(): sum(r["state"] == s.name for r in rows) for s in TrialState}
    console.print("Trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n), highlight=False)
    timed = next((r["latency"] for r in rows if r["latency"]), None)
    if timed:
        console.print(f"params: parameters of the deployed network (LoRA merged); ms/item: inference latency per "
                      f"item at batch 1 and batch {timed['batch_size']}, {timed['engine']} on {timed['device']}"
                      + (f", {timed['threads']} thread(s)" if timed.get("threads") else "")
                      + " (`autotl best --within 0.01` picks the fastest close to the best)",
                      highlight=False)
    summary = best_summary(study, metric=metric)
    if summary is None:
        console.print("No trial has completed yet.")
        return
    test = summary[f"test_{metric}"]
    cv = (f"cv {metric} {format_cv({'mean': summary['cv_metric'], 'se': summary['cv_se']})}, "
          if summary["cv_metric"] is not None else "")
    whose = " of the model trained on train+val" if summary["test_weights"] == "refit" else ""
    console.print(f"[bold]Best trial {summary['number']}[/]: val {metric} {summary[f'val_{metric}']:.4f}, {cv}"
                  + (f"test {metric}{whose} {test:.4f} (the test split chose nothing)" if test is not None
                     else f"test {metric} not scored")
                  + (f"; chosen by {summary['selected_by']}" if summary["selected_by"] != "validation" else ""),
                  highlight=False)
    selection = StudyRecord.from_study(study).selection
    if selection and has_cv:
        skipped = len(selection.get("skipped") or [])
        console.print(f"cv {metric}: mean ± standard error over {selection.get('folds')} folds of train+val "
                      f"({selection.get('items')} items), last-epoch weights; two trials whose ranges overlap cannot "
                      f"be told apart. Selection took {selection.get('seconds', 0):.0f}s"
                      + (f"; {skipped} candidate(s) skipped for time" if skipped else ""), highlight=False)
    ensemble = StudyRecord.from_study(study).ensemble
    if ensemble:
        console.print(escape(describe_ensemble(ensemble)), highlight=False)
    scratch = summary.get("scratch")
    if scratch and scratch.get(f"val_{metric}") is not None:
        test_s = f"{scratch[f'test_{metric}']:.4f}" if scratch.get(f"test_{metric}") is not None else "-"
        console.print(f"From scratch (same network and settings, random initial weights, all layers trained): "
                      f"val {metric} {scratch[f'val_{metric}']:.4f}, test {metric} {test_s}", highlight=False)


def _param_cell(params: dict[str, Any], key: str) -> str:
    """A setting's cell; a converged-head trial (``head_fit: converged``) shows its freeze depth as
    ``converged`` (short: the table keeps its width) and no learning rate, epochs or batch size, which its fit does
    not use."""
    if params.get("head_fit") == "converged":
        if key == "freeze":
            return "converged"
        if key in ("lr", "epochs", "batch_size"):
            return "-"
    return format_value(params.get(key))


def _batched_size(rows: list[dict[str, Any]]) -> str:
    sizes = {(r["latency"] or {}).get("batch_size") for r in rows} - {None}
    return str(sizes.pop()) if len(sizes) == 1 else "N"


def format_cv(cv: dict[str, Any] | None) -> str:
    """A cross-validated score for a table: ``0.842±0.021`` (mean ± standard error); ``-`` where none."""
    if not cv or cv.get("mean") is None:
        return "-"
    se = cv.get("se")
    return f"{cv['mean']:.3f}" + (f"±{se:.3f}" if se is not None and se == se else "")


def format_count(value: int | None) -> str:
    """A parameter count for a table: 3.2k, 11.7M; ``-`` when unknown."""
    if value is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return str(value)


def format_ms(value: float | None) -> str:
    """Milliseconds for a table, two decimals below 100; ``-`` when unknown."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def format_value(value: Any, digits: int = 3) -> str:
    """A setting or score for a table: floats to ``digits`` (scientific when tiny or huge); ``-`` for None."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4):
            return f"{value:.2e}"
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") if digits < 4 else f"{value:.{digits}f}"
    return str(value)
