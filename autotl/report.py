"""``autotl report``: one self-contained HTML page about a search, readable with no network.

Everything is inlined: the style, plotly.js (the interactive plots) and the thumbnails (base64 PNG).
The page holds the leaderboard, the optimisation history, the parameter importances, the validation
score against trial time and against model size per source model, the transferability pre-ranking
beside the fine-tuned results (where the study holds one, in its ``transferability`` user attribute),
the best trial on the test split (its scores and the plot its task's target draws,
:meth:`autotl.Target.figure`: a confusion matrix, predicted against true...) and the test items it
got wrong, for a target that predicts one label per item. Every score is named by the metric the
search ranked by.

The best trial's test predictions come from its saved weights on the test split as the search
prepared it (:meth:`Task.prepare`, :func:`autotl.inference.predict_outputs`), scored by the target
with the trial's recorded calibration; the wrong items are predicted through the bundle's path
(:meth:`Task.split_items`, :meth:`Task.export_settings`, :meth:`Task.preprocess_for_predict`).
Nothing is trained again.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import optuna
import torch
from optuna.trial import TrialState

from .device import resolve_device
from .ensemble import describe as describe_ensemble
from .errors import AutotlError, UsageError
from .files import atomic_write
from .inference import predict_outputs
from .leaderboard import (EXTRA_COLUMNS, PARAM_COLUMNS, best_number, format_count, format_ms, format_value,
                          trial_rows)
from .records import StudyRecord, TrialRecord
from .run import Run
from .runs import RunLocation, load_study, redact
from .selection import recorded_refit

#: wrong test items shown at most.
MAX_MISTAKES = 24
#: items preprocessed and predicted at a time (bounds memory on a large test split).
CHUNK = 512
THUMB = 96
FIGURE_CLASS = "autotl-figure"


@dataclass
class Scored:
    """The best trial predicted on the test split."""

    trial: int
    metric: str
    value: float
    metrics: dict[str, float]
    size: int
    recorded: float | None
    #: the target's plot of the predictions (:meth:`autotl.Target.figure`), or ``None``.
    figure: Any = None
    #: the test items predicted wrong, most confident first; ``None`` where the target predicts no single label.
    mistakes: list[dict[str, Any]] | None = None
    wrong: int = 0
    #: why :attr:`mistakes` is ``None``.
    no_mistakes: str = ""
    #: whose weights were scored: the trial's saved ones, or its configuration refitted on train+val (the model shipped)
    weights: str = "saved weights"


@dataclass
class ReportResult:
    out: Path
    figures: list[str]
    notes: list[str]


def write_report(location: RunLocation, out: Path, *, data: Path | None = None, device: str = "auto",
                 say: Callable[[str], None] = lambda message: None) -> ReportResult:
    """Write the HTML report of the study at ``location`` to ``out``."""
    out = Path(out)
    if out.exists() and out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name such as {out / 'report.html'}")
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out {out}: give a file name ending in .html")
    say(f"Reading {location.describe()} ...")
    run = Run(location, load_study(location))
    study, record = run.study, run.record
    metric, direction = _ranking(run)
    rows = trial_rows(study)
    page = _Page(title=f"autotl report: {record.task or '?'} on {Path(str(record.data or '?')).name}")
    notes: list[str] = []

    page.section("Summary", _summary(study, rows, location, metric))
    page.section("Leaderboard", _leaderboard(rows, record, metric, direction))

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    say("Plotting the optimisation history and parameter importances ...")
    if complete:
        from optuna.visualization import plot_optimization_history

        fig = plot_optimization_history(study, target_name=f"validation {metric}")
        fig.update_layout(title=None)
        page.section("Optimisation history", page.figure(fig, "history"))
    else:
        page.section("Optimisation history", _p("No trial has completed yet: nothing to plot."))
        notes.append("no completed trial")
    page.section("Parameter importances", _importances(study, complete, page, notes, metric))

    page.section(f"Validation {metric} against time and model size", _tradeoffs(rows, page, notes, metric))
    page.section("Transferability pre-ranking and fine-tuned results",
                 _transferability(record, rows, notes, metric, direction))

    scored, why = _score_best(run, data, device, say)
    if scored is None:
        notes.append(why)
        page.section("The best trial on the test split", _p(why))
        page.section("Wrong predictions on the test split", _p(why))
    else:
        page.section(f"The best trial on the test split (trial {scored.trial})", _best_on_test(scored, page))
        page.section("Wrong predictions on the test split", _mistakes(scored))

    out.parent.mkdir(parents=True, exist_ok=True)
    text = page.render(generated=time.strftime("%Y-%m-%d %H:%M:%S"))
    atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    say(f"Report written to {out} ({len(text.encode()) / 1e6:.1f} MB, opens with no network)")
    return ReportResult(out, page.figures, notes)


# -- the page ---------------------------------------------------------------------------------------

class _Page:
    def __init__(self, title: str):
        self.title = title
        self.parts: list[tuple[str, str]] = []
        self.figures: list[str] = []

    def section(self, heading: str, body: str) -> None:
        self.parts.append((heading, body))

    def figure(self, fig, name: str, height: int = 420) -> str:
        top = 70 if fig.layout.title.text else 30
        fig.update_layout(height=height, margin={"l": 60, "r": 20, "t": top, "b": 50}, template="plotly_white")
        self.figures.append(name)
        inner = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}",
                            config={"displaylogo": False, "responsive": True})
        return f'<div class="{FIGURE_CLASS}" data-figure="{name}">{inner}</div>'

    def render(self, generated: str) -> str:
        from plotly.offline import get_plotlyjs

        nav = " · ".join(f'<a href="#s{i}">{html.escape(h)}</a>' for i, (h, _) in enumerate(self.parts))
        body = "\n".join(f'<section id="s{i}"><h2>{html.escape(h)}</h2>\n{b}\n</section>'
                         for i, (h, b) in enumerate(self.parts))
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{html.escape(self.title)}</title><style>{CSS}</style>"
                f"<script>{get_plotlyjs()}</script></head>\n<body><main>"
                f"<h1>{html.escape(self.title)}</h1><nav>{nav}</nav>\n{body}\n"
                f"<footer>Written by autotl report on {html.escape(generated)}. Self-contained: no network "
                f"needed to view it.</footer></main></body></html>\n")


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;background:#f5f7fa;margin:0}
main{max-width:1100px;margin:0 auto;padding:24px 28px 48px;background:#fff}
h1{font-size:1.6em;margin:0 0 6px}h2{font-size:1.2em;margin:34px 0 10px;border-bottom:2px solid #e4e7eb;padding-bottom:4px}
nav{font-size:.9em;color:#52606d}nav a{color:#2463eb;text-decoration:none}
table{border-collapse:collapse;font-size:.88em;margin:8px 0}th,td{padding:4px 9px;border-bottom:1px solid #e4e7eb;text-align:right}
th{background:#f0f4f8;position:sticky;top:0}td.l,th.l{text-align:left}tr.best td{font-weight:600;background:#fffbea}
.muted{color:#7b8794}.note{background:#f0f4f8;border-left:4px solid #9fb3c8;padding:8px 12px;margin:8px 0}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:3px 16px;margin:0}dl.kv dt{color:#52606d}dl.kv dd{margin:0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
.sample{border:1px solid #e4e7eb;border-radius:6px;padding:6px;font-size:.8em;background:#fff}
.sample img{display:block;margin:0 auto 4px;image-rendering:pixelated;max-width:100%}
.texts .sample{grid-column:1/-1}.bad{color:#c81e1e}.good{color:#057a55}
footer{margin-top:40px;font-size:.8em;color:#7b8794}
"""


def _p(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = (),
           row_classes: Sequence[str] | None = None) -> str:
    head = "".join(f'<th class="{"l" if i in left else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        body.append(f"<tr{cls}>" + "".join(f'<td class="{"l" if i in left else ""}">{cell}</td>'
                                          for i, cell in enumerate(row)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _acc(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


# -- sections -----------------------------------------------------------------------------------------

def _ranking(run: Run) -> tuple[str, str]:
    """The metric the search ranked by and its direction; the task's target's primary (maximised) where no
    installed plugin provides the task."""
    if run.find_task() is None:
        return "score", "maximize"
    return run.metric, run.direction


def _better(direction: str) -> Callable[[float], float]:
    """A sort key putting the better values of ``direction`` first."""
    return (lambda v: -v) if direction == "maximize" else (lambda v: v)


def _summary(study: optuna.Study, rows: list[dict], location: RunLocation, metric: str) -> str:
    record = StudyRecord.from_study(study)
    counts = {s.name.lower(): sum(r["state"] == s.name for r in rows) for s in TrialState}
    best = best_number(study)
    test = record.test_score(best)
    best_row = next((r for r in rows if r["number"] == best), None)
    items = [
        ("Task", record.task or "?"),
        ("Data", record.data or "?"),
        ("Labels", ", ".join(record.label_names) or "?"),
        ("Study", f"{location.study_name} in {redact(location.storage_url)}"),
        ("Started", record.created or "?"),
        ("Trials", ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "none"),
        ("Models searched", ", ".join(record.models) or "?"),
    ]
    if best_row is not None:
        items.append(("Best trial", f"#{best} {best_row['params'].get('model')}: validation {metric} "
                                    f"{_acc(best_row['value'])}, test {metric} "
                                    + (_acc(test) if test is not None else "not scored")))
    scratch = record.scratch
    if scratch:
        items.append(("From scratch", f"the same network from random weights: validation {metric} "
                                      f"{_acc(scratch.get(f'val_{metric}'))}, test {_acc(scratch.get(f'test_{metric}'))}"))
    if record.ensemble:
        items.append(("Ensemble", describe_ensemble(record.ensemble)))
    return '<dl class="kv">' + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>"
                                       for k, v in items) + "</dl>"


def _leaderboard(rows: list[dict], record: StudyRecord, metric: str, direction: str) -> str:
    if not rows:
        return _p("The study holds no trial yet.")
    extras = [(k, h) for k, h in EXTRA_COLUMNS if any(k in r["params"] for r in rows)]
    columns = PARAM_COLUMNS + tuple(extras)
    tests = record.test_scores
    workers = len({r.get("worker") for r in rows} - {None}) > 1  # a distributed search: who ran what
    headers = ["", "#"] + [h for _, h in columns] + [f"val {metric}", f"test {metric}", "params", "ms/item b1", "time"] \
        + (["worker"] if workers else []) + ["state"]
    better = _better(direction)
    order = sorted(rows, key=lambda r: (r["state"] != "COMPLETE", r["value"] is None,
                                        better(r["value"]) if r["value"] is not None else 0.0, r["number"]))
    cells, classes = [], []
    for r in order:
        p = r["params"]
        latency = r["latency"] or {}
        state = r["state"].lower() + (f" ({r['note']})" if r["note"] else "")
        cells.append(["★" if r["best"] else "", str(r["number"])]
                     + [html.escape(format_value(p.get(k))) for k, _ in columns]
                     + [format_value(r["value"], 4), _acc(tests.get(str(r["number"]))), format_count(r["inference_params"]),
                        format_ms(latency.get("batch1_ms")),
                        f"{r['duration_s']:.0f}s" if r["duration_s"] is not None else "-"]
                     + ([html.escape(str(r.get("worker") or "-"))] if workers else []) + [html.escape(state)])
        classes.append("best" if r["best"] else "")
    note = (f"val {metric}: the trial's best epoch on the validation split, which chose the trial; test {metric}: scored "
            "once, for the best trial only, on the test split, which chose nothing. params: the deployed network "
            "(LoRA merged); ms/item b1: inference latency at batch 1.")
    return _table(headers, cells, left=[2, len(headers) - 1], row_classes=classes) + _p(note, "muted")


def _importances(study: optuna.Study, complete: list, page: _Page, notes: list[str], metric: str) -> str:
    if len(complete) < 3:
        notes.append("too few trials for parameter importances")
        return _p(f"Parameter importances need at least 3 completed trials; this run has {len(complete)}. "
                  "Run the search longer (the same command resumes it).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except Exception as exc:  # e.g. no parameter varies across the completed trials
        notes.append("parameter importances unavailable")
        return _p(f"Parameter importances could not be computed: {str(exc).strip().splitlines()[0][:200]}")
    if not importances:
        notes.append("parameter importances unavailable")
        return _p("No parameter varied across the completed trials: no importance to show.")
    import plotly.graph_objects as go

    names = list(importances)[::-1]
    fig = go.Figure(go.Bar(x=[importances[n] for n in names], y=names, orientation="h", marker_color="#2463eb",
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_xaxes(title=f"importance for validation {metric} (fANOVA, sums to 1)")
    return page.figure(fig, "importances", height=max(260, 40 * len(names) + 80)) + _p(
        f"From {len(complete)} completed trials: a guide to what mattered in this search, not a law; few trials "
        "make it noisy.", "muted")


def _tradeoffs(rows: list[dict], page: _Page, notes: list[str], metric: str) -> str:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    if not done:
        notes.append("no completed trial for the trade-off plots")
        return _p("No trial has completed yet: nothing to plot.")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("against trial time", "against model size (deployed parameters)"))
    palette = ["#2463eb", "#e3a008", "#057a55", "#c81e1e", "#7e3af2", "#0694a2", "#ff5a1f", "#6b7280"]
    models = list(dict.fromkeys(r["params"].get("model") for r in done))
    for i, model in enumerate(models):
        mine = [r for r in done if r["params"].get("model") == model]
        colour = palette[i % len(palette)]
        text = [f"trial {r['number']}: freeze {r['params'].get('freeze')}, LoRA {r['params'].get('lora_rank')}, "
                f"lr {format_value(r['params'].get('lr'))}" for r in mine]
        common = dict(mode="markers", name=str(model), legendgroup=str(model), text=text,
                      marker={"size": 11, "color": colour, "line": {"width": 1, "color": "#fff"}})
        fig.add_trace(go.Scatter(x=[r["duration_s"] for r in mine], y=[r["value"] for r in mine],
                                 hovertemplate="%{text}<br>%{x:.0f} s, val " + metric + " %{y:.4f}<extra></extra>", **common),
                      row=1, col=1)
        sizes = [r["inference_params"] or r["total_params"] for r in mine]
        fig.add_trace(go.Scatter(x=sizes, y=[r["value"] for r in mine], showlegend=False,
                                 hovertemplate="%{text}<br>%{x:,} parameters, val " + metric + " %{y:.4f}<extra></extra>",
                                 **common), row=1, col=2)
    fig.update_xaxes(title_text="trial time (s)", row=1, col=1)
    fig.update_xaxes(title_text="parameters", tickformat=".3~s", row=1, col=2)
    sizes = [r["inference_params"] or r["total_params"] for r in done if (r["inference_params"] or r["total_params"])]
    if sizes and max(sizes) <= 1.05 * min(sizes):  # one model size: spread the axis, or its ticks repeat one value
        fig.update_xaxes(range=[0.8 * min(sizes), 1.2 * max(sizes)], row=1, col=2)
    elif sizes and max(sizes) > 20 * min(sizes):
        fig.update_xaxes(type="log", row=1, col=2)
    fig.update_yaxes(title_text=f"validation {metric}", row=1, col=1)
    fig.update_layout(legend={"orientation": "h", "y": -0.2})
    return page.figure(fig, "tradeoffs", height=440) + _p(
        "One point per completed trial, coloured by source model. Trial time includes every epoch it ran; "
        "model size is the deployed network (LoRA merged into the weights).", "muted")


def _transferability(record: StudyRecord, rows: list[dict], notes: list[str], metric: str, direction: str) -> str:
    per_model: dict[str, dict[str, Any]] = {}
    tests = record.test_scores
    better = _better(direction)
    for r in rows:
        if r["state"] != "COMPLETE" or r["value"] is None:
            continue
        entry = per_model.setdefault(str(r["params"].get("model")), {"trials": 0, "best": None, "number": None})
        entry["trials"] += 1
        if entry["best"] is None or better(r["value"]) < better(entry["best"]):
            entry["best"], entry["number"] = r["value"], r["number"]
    ranked = sorted(per_model, key=lambda m: better(per_model[m]["best"]))
    fine_rank = {m: i + 1 for i, m in enumerate(ranked)}
    ranking = record.transferability
    tail = ["fine-tuned rank", f"best val {metric}", "trials", f"its test {metric}"]

    def fine(model: str) -> list[str]:
        entry = per_model.get(model)
        if entry is None:
            return ["-", "-", "0", "-"]
        return [str(fine_rank[model]), _acc(entry["best"]), str(entry["trials"]), _acc(tests.get(str(entry["number"])))]

    if not ranking or not isinstance(ranking, list):
        notes.append("no transferability pre-ranking")
        body = _p("This run has no pre-ranking: no zero-cost transferability scores (LogME, H-score, GBC) were stored with "
                  "the study, so only the fine-tuned results are shown.")
        if ranked:
            body += _table(["model"] + tail, [[html.escape(m)] + fine(m) for m in ranked], left=[0])
        return body
    entries = [e for e in ranking if isinstance(e, Mapping) and "model" in e]
    keys = [k for k in dict.fromkeys(k for e in entries for k in e) if k != "model"]
    keys = sorted(keys, key=lambda k: (k != "rank", k))
    cells = []
    for e in sorted(entries, key=lambda e: (e.get("rank") is None, e.get("rank", 0))):
        cells.append([html.escape(str(e["model"]))] + [html.escape(format_value(e.get(k), 4) if isinstance(e.get(k), float)
                                                                   else str(e.get(k, "-"))) for k in keys]
                     + fine(str(e["model"])))
    pre = {str(e["model"]): e.get("rank") for e in entries}
    both = [m for m in ranked if isinstance(pre.get(m), (int, float))]
    agreement = ""
    if len(both) >= 3:
        from scipy.stats import kendalltau

        tau = kendalltau([pre[m] for m in both], [fine_rank[m] for m in both]).statistic
        agreement = _p(f"Agreement of the pre-ranking with the fine-tuned ranking over {len(both)} models: Kendall's "
                       f"tau {tau:.2f} (1: same order, -1: reversed).", "muted")
    return (_table(["model"] + [k.replace("_", " ") for k in keys] + tail, cells, left=[0]) + agreement
            + _p("Pre-ranking: scores computed from the pretrained features before any fine-tuning (higher is more "
                 f"transferable); fine-tuned: the best validation {metric} each model reached in the search.", "muted"))


# -- the best trial on the test split -------------------------------------------------------------------

def _score_best(run: Run, data_path: Path | None, device: str,
                say: Callable[[str], None]) -> tuple[Scored | None, str]:
    """Predict the test split with the best trial's model as shipped (its refit on train+val where the search made
    one, else its saved weights); ``(None, why)`` when that cannot be done."""
    record = run.record
    best = run.best_trial()
    if best is None:
        return None, "No trial has completed: no best trial to score."
    refitted, refit = recorded_refit(record, best.number, [run.location.folder, record.out])
    weights, problem = (refitted, None) if refitted is not None else run.kept_weights(best)
    if weights is None:
        return None, (f"The run has no saved weights for the best trial ({best.number}), so the report cannot score "
                      "it on the test split (only the top --keep-top trials keep their weights, in the run folder).")
    if problem:
        return None, f"Not scored on the test split: {problem}."
    task = run.find_task()
    params = run.config(best)
    if task is None:
        return None, f"No installed plugin provides the task {record.task!r}: the best trial cannot be scored."
    if run.find_family(params["model"]) is None:
        return None, f"No installed backbone family knows {params['model']!r}: the best trial cannot be scored."
    target, names = run.target, list(record.label_names)
    calibration = dict(TrialRecord.from_trial(best).calibration or {})
    if refitted is not None:  # the model shipped: the chosen configuration trained again on train+val
        calibration = dict(refit.get("calibration") or {})
    try:
        say(f"Loading the run's data from {data_path or record.data} ...")
        data, missing = run.load_data(data_path)
        if data is None:
            return None, f"Not scored on the test split: {missing} (give --data PATH if it moved)."
        if not data.has_test:
            return None, "The run's data has no test split to score the best trial on."
        # the saved weights replace every pretrained one: the architecture alone, never the source checkpoint
        backbone = run.backbone(params["model"])
        dev = resolve_device(device)
        model = run.network(best, dev, weights=weights, backbone=backbone)
        test = task.prepare(data, backbone, params).test
        say(f"Scoring trial {best.number} ({params['model']}) on the test split ({len(test)} samples) ...")
        outputs = predict_outputs(model, test, dev)
        metrics = target.score(outputs, test.labels, calibration)
        scored = Scored(best.number, run.metric, metrics[run.metric], metrics, len(test), run.test_score(best),
                        target.figure(outputs, test.labels, calibration, names))
        if refitted is not None:
            scored.weights = "configuration trained again on train+val (the model the search ships)"
        _find_mistakes(scored, run, task, data, backbone, model, dev, params, target.rankable(test.labels) is not None)
    except AutotlError as exc:
        return None, f"The best trial could not be scored on the test split: {exc}"
    return scored, ""


def _find_mistakes(scored: Scored, run: Run, task, data, backbone, model, dev, params, one_label: bool) -> None:
    """The test items the trial predicts wrong, through the bundle's path, for a target that predicts one label per
    item (its labels rank: :meth:`autotl.Target.rankable`); the most confident first."""
    if not one_label:
        scored.no_mistakes = (f"The task {task.name!r} does not predict one label per item, so the report does not "
                              "list items as right or wrong; the scores above say how close its predictions are.")
        return
    items = task.split_items(data, "test")
    if items is None:
        scored.no_mistakes = (f"The task plugin {task.name!r} does not give the raw items of a split "
                              "(Task.split_items), so the report cannot show the items predicted wrong.")
        return
    raw, labels = items
    settings = task.export_settings(run.recipe.data, backbone, params)
    parts = []
    for start in range(0, len(raw), CHUNK):
        split = task.preprocess_for_predict(raw[start:start + CHUNK], backbone, settings)
        parts.append(run.target.probabilities(predict_outputs(model, split, dev)))
    confidence, guess = torch.cat(parts).max(-1) if parts else (torch.empty(0), torch.empty(0, dtype=torch.long))
    names = list(run.record.label_names)
    wrong = [i for i, truth in enumerate(labels) if int(guess[i]) != truth]
    wrong.sort(key=lambda i: -float(confidence[i]))
    scored.wrong = len(wrong)
    scored.mistakes = [{"item": raw[i], "truth": names[labels[i]], "predicted": names[int(guess[i])],
                        "probability": float(confidence[i])} for i in wrong[:MAX_MISTAKES]]


def _best_on_test(scored: Scored, page: _Page) -> str:
    """The best trial's test scores, checked against the recorded one, and its target's plot."""
    check = ""
    if scored.recorded is not None:
        same = abs(scored.recorded - scored.value) <= 1e-6 * max(1.0, abs(scored.recorded))
        check = (f" The search recorded {scored.recorded:.4f} for this trial on the test split"
                 + (": the same." if same else "; the difference comes from a changed environment (library versions "
                                                 "or device)."))
    others = ", ".join(f"{name} {_acc(value)}" for name, value in scored.metrics.items() if name != scored.metric)
    text = _p(f"Trial {scored.trial}'s {scored.weights} on the {scored.size} test samples: {scored.metric} "
              f"{_acc(scored.value)}.{check}" + (f" Its other metrics: {others}." if others else ""), "muted")
    if scored.figure is None:
        return text + _p("The task's target draws no plot of its predictions.", "muted")
    height = int(scored.figure.layout.height or 520)
    return page.figure(scored.figure, "test", height=height) + text


def _mistakes(scored: Scored) -> str:
    if scored.mistakes is None:
        return _p(scored.no_mistakes)
    if not scored.mistakes:
        return _p("The best trial got every test sample right.")
    cards, texts = [], False
    for m in scored.mistakes:
        caption = (f'<div><span class="bad">predicted {html.escape(m["predicted"])}</span> '
                   f'({m["probability"]:.0%})<br><span class="good">true {html.escape(m["truth"])}</span></div>')
        thumb = _thumbnail(m["item"])
        if thumb is not None:
            name = Path(str(m["item"])).name if isinstance(m["item"], (str, Path)) else ""
            cards.append(f'<div class="sample"><img src="data:image/png;base64,{thumb}" alt="{html.escape(name)}">'
                         f'{caption}<div class="muted">{html.escape(name)}</div></div>')
        else:
            texts = True
            text = str(m["item"])
            shown = text if len(text) <= 400 else text[:400] + " …"
            cards.append(f'<div class="sample">{caption}<div>{html.escape(shown)}</div></div>')
    return (_p(f"{len(scored.mistakes)} of the {scored.wrong} test samples predicted wrong, the most confident "
               "mistakes first.", "muted") + f'<div class="grid{" texts" if texts else ""}">' + "".join(cards) + "</div>")


def _thumbnail(item: Any) -> str | None:
    """A base64 PNG thumbnail when ``item`` is an image (a PIL image or an image file), else None."""
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(item, Image.Image):
            image = item.copy()
        elif isinstance(item, (str, Path)) and len(str(item)) < 4096 and Path(item).is_file():
            with Image.open(item) as opened:
                opened.load()
                image = opened.copy()
        else:
            return None
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    image = image.convert("RGB")
    scale = THUMB / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.NEAREST if scale >= 1 else Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


__all__ = ["FIGURE_CLASS", "ReportResult", "write_report"]
