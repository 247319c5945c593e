"""The leaderboard: every trial of a study as rows, as a table for people and as JSON for programs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import RunError, UsageError
from .records import StudyRecord, TrialRecord, retry_of
from .runs import RunLocation, retried_as

PARAM_COLUMNS = (("model", "model"), ("freeze", "freeze"), ("lora_rank", "LoRA"), ("lr", "lr"))
EXTRA_COLUMNS = (("resolution", "res"), ("max_length", "max len"), ("epochs", "epochs"), ("batch_size", "batch"))


def rank_key(trial: FrozenTrial) -> tuple[float, int]:
    """How completed trials rank, everywhere: the higher validation accuracy first; on a tie, the lower trial
    number (the trial asked first). Sort by it, ascending; storages order tied values as they please."""
    return (-trial.value, trial.number)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best completed trial by :func:`rank_key` (never ``study.best_trial``, whose pick among ties the
    storage decides); ``None`` before any trial completed."""
    return min(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=rank_key, default=None)


def best_number(study: optuna.Study) -> int | None:
    best = best_trial(study)
    return None if best is None else best.number


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One dict per trial: ``number``, ``state``, ``value``, ``params`` (every setting), ``duration_s``..."""
    best = best_number(study)
    retries = retried_as(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        record = TrialRecord.from_trial(t)
        value = t.value
        if value is None and t.intermediate_values:  # pruned: the best epoch it reached
            value = max(t.intermediate_values.values())
        notes = [record.error or record.stopped or ""]
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
            "timing": record.timing,  # seconds: step, eval, data, prefix, setup
            "cache": record.cache,  # how the frozen-prefix cache served the trial
        })
    return rows


def best_summary(study: optuna.Study, number: int | None = None) -> dict[str, Any] | None:
    """The best trial (or trial ``number``) with its validation and (if scored) test accuracy."""
    number = best_number(study) if number is None else number
    if number is None:
        return None
    row = next(r for r in trial_rows(study) if r["number"] == number)
    record = StudyRecord.from_study(study)
    return {
        "number": number,
        "params": row["params"],
        "val_accuracy": row["value"],
        "test_accuracy": record.test_score(number),
        "duration_s": row["duration_s"],
        "trainable_params": row["trainable_params"],
        "total_params": row["total_params"],
        "inference_params": row["inference_params"],
        "latency": row["latency"],
        "weights": row["weights"],
        "scratch": record.scratch,
    }


@dataclass
class Choice:
    """A trial picked for production, and in words why."""

    trial: FrozenTrial
    reason: str


def choose_trial(study: optuna.Study, *, number: int | None = None, within: float | None = None) -> Choice:
    """The trial ``number``; else the fastest one within ``within`` of the best validation accuracy; else the best
    (:func:`best_trial`: ties go to the lower trial number).

    "Fastest" is the lowest per-item latency at batch 1 measured after the trial (``latency``
    user attribute); ties go to the higher accuracy, then the lower trial number. Trials without a
    measured latency are never picked for speed.
    """
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
    best = min(complete, key=rank_key)
    if within is None:
        return Choice(best, f"the best validation accuracy ({best.value:.4f}) of {len(complete)} completed trials")
    if within < 0:
        raise UsageError(f"--within {within}: give a non-negative accuracy margin such as 0.01")
    close = [t for t in complete if t.value >= best.value - within - 1e-12]
    timed = [t for t in close if _batch1(t) is not None]
    if not timed:
        return Choice(best, f"the best validation accuracy ({best.value:.4f}); no trial within {within:g} of it has "
                            "a measured latency")
    fastest = min(timed, key=lambda t: (_batch1(t), -t.value, t.number))
    return Choice(fastest, f"the lowest batch-1 latency ({_batch1(fastest):.2f} ms/item) among the "
                           f"{len(close)} trial(s) within {within:g} of the best validation accuracy "
                           f"({best.value:.4f}, trial {best.number})")


def _batch1(trial: FrozenTrial) -> float | None:
    latency = TrialRecord.from_trial(trial).latency or {}
    value = latency.get("batch1_ms")
    return float(value) if value is not None else None


def render(study: optuna.Study, location: RunLocation, console: Console | None = None) -> None:
    console = console or Console()
    rows = trial_rows(study)
    extras = [(k, h) for k, h in EXTRA_COLUMNS if any(k in r["params"] for r in rows)]
    task = StudyRecord.from_study(study).task or "?"
    table = Table(title=escape(f"autotl leaderboard: {task} - {location.describe()}"),
                  title_justify="left")
    table.add_column("", no_wrap=True)
    table.add_column("#", justify="right")
    for _, header in PARAM_COLUMNS + tuple(extras):
        table.add_column(header, justify="left" if header == "model" else "right")
    table.add_column("val acc", justify="right")
    table.add_column("params", justify="right")
    table.add_column("ms/item b1", justify="right")
    table.add_column(f"ms/item b{_batched_size(rows)}", justify="right")
    table.add_column("time", justify="right")
    workers = len({r["worker"] for r in rows} - {None}) > 1  # a distributed search: who ran what
    if workers:
        table.add_column("worker")
    table.add_column("state")
    order = sorted(rows, key=lambda r: (r["state"] != "COMPLETE", -(r["value"] or -1.0), r["number"]))
    for r in order:
        p = r["params"]
        cells = ["★" if r["best"] else "", str(r["number"])]
        cells += [escape(format_value(p.get(k))) for k, _ in PARAM_COLUMNS + tuple(extras)]  # text, not rich markup
        latency = r["latency"] or {}
        cells += [format_value(r["value"], 4), format_count(r["inference_params"]), format_ms(latency.get("batch1_ms")),
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
    summary = best_summary(study)
    if summary is None:
        console.print("No trial has completed yet.")
        return
    test = summary["test_accuracy"]
    console.print(f"[bold]Best trial {summary['number']}[/]: val accuracy {summary['val_accuracy']:.4f}, "
                  + (f"test accuracy {test:.4f} (the test split chose nothing)" if test is not None
                     else "test accuracy not scored"), highlight=False)
    scratch = summary.get("scratch")
    if scratch:
        test_s = f"{scratch['test_accuracy']:.4f}" if scratch.get("test_accuracy") is not None else "-"
        console.print(f"From scratch (same network and settings, random initial weights, all layers trained): "
                      f"val accuracy {scratch['val_accuracy']:.4f}, test accuracy {test_s}", highlight=False)


def _batched_size(rows: list[dict[str, Any]]) -> str:
    sizes = {(r["latency"] or {}).get("batch_size") for r in rows} - {None}
    return str(sizes.pop()) if len(sizes) == 1 else "N"


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
