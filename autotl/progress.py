"""Live progress of a search: a budget bar, the running trial's epochs, one line per finished trial.

What comes from the user (file names, paths, model names, failure reasons) is printed as text, never
read as rich markup: a file named ``x[/b].png`` is shown as it is.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .contracts import DataReport


class Reporter:
    """Receives the search's events. This base class prints nothing (for the Python API and tests)."""

    def message(self, text: str) -> None: ...

    def data_report(self, report: DataReport) -> None: ...

    def search_started(self, location, models: list[str], budget_s: float | None, trials: int | None) -> None: ...

    def trial_started(self, number: int, params: dict[str, Any]) -> None: ...

    def ranking(self, metric: str, direction: str) -> None:
        """The metric trials are ranked by and its direction (``"maximize"`` or ``"minimize"``), told before any trial."""

    def epoch(self, number: int, epoch: int, epochs: int, loss: float, value: float) -> None: ...

    def trial_finished(self, number: int, state: str, value: float | None, duration_s: float, note: str) -> None: ...

    def search_finished(self, reason: str) -> None: ...


class ConsoleReporter(Reporter):
    """Rich progress bars on a terminal; plain lines elsewhere (logs, CI)."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.best: float | None = None
        self.sign = 1.0  # -1 where the metric is minimised (see ranking)
        self._overall = None
        self._trial = None
        self._started = 0.0
        self._budget_s: float | None = None

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    def data_report(self, report: DataReport) -> None:
        report = DataReport.of(report)
        # a task whose items carry several labels (or none) says how many items each split holds
        items = report.details.get("items") if isinstance(report.details.get("items"), Mapping) else {}
        sizes = ", ".join(f"{split} {items.get(split, sum(c.values()))}" for split, c in report.counts.items())
        how = report.details.get("val_split", "stratified")  # a task may say how it drew the split
        note = f" (val carved from train, {how})" if report.val_from_train else ""
        kinds = f"{len(report.classes)} classes" if len(report.classes) != 1 else f"outputs: {report.classes[0]}"
        self.console.print(f"Data: {kinds}; {sizes}{note}", highlight=False)
        skipped = report.skipped
        if skipped:
            self.console.print(f"[yellow]Skipped {len(skipped)} unusable item(s)[/] (all listed in data_report.json; "
                               "repair or remove them to use them or to silence this):")
            for item in skipped[:5]:
                self.console.print(f"  {item.file}: {item.reason}", highlight=False, markup=False)
            if len(skipped) > 5:
                self.console.print(f"  ... and {len(skipped) - 5} more", highlight=False)

    def search_started(self, location, models, budget_s, trials) -> None:
        limits = []
        if budget_s:
            limits.append(f"time budget {budget_s:.0f}s")
        if trials:
            limits.append(f"{trials} trials")
        self.console.print(f"Searching {location.describe()} over {len(models)} model(s): {', '.join(models)}; "
                           f"{' and '.join(limits) or 'no limit (Ctrl-C stops)'}", highlight=False, markup=False)
        self._started = time.time()
        self._budget_s = budget_s
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=self.console, transient=True)
        self.progress.start()
        if budget_s:
            self._overall = self.progress.add_task("budget (s)", total=int(budget_s))
        elif trials:
            self._overall = self.progress.add_task("trials", total=trials)

    def trial_started(self, number, params) -> None:
        if self.progress is None:
            return
        self._tick()
        if self._trial is not None:
            self.progress.remove_task(self._trial)
        desc = escape(f"trial {number}: {_describe(params)}")
        epochs = 1 if params.get("head_fit") == "converged" else int(params.get("epochs", 1))
        self._trial = self.progress.add_task(desc, total=epochs)

    def ranking(self, metric, direction) -> None:
        self.sign = -1.0 if direction == "minimize" else 1.0

    def epoch(self, number, epoch, epochs, loss, value) -> None:
        if self.progress is None or self._trial is None:
            return
        self._tick()
        best = f" best {self.best:.3f}" if self.best is not None else ""
        self.progress.update(self._trial, completed=epoch + 1,
                             description=f"trial {number} epoch {epoch + 1}/{epochs}: loss {loss:.3f} "
                                         f"val {value:.3f}{best}")

    def trial_finished(self, number, state, value, duration_s, note) -> None:
        self._tick()
        if state == "COMPLETE" and value is not None and (self.best is None
                                                             or self.sign * (value - self.best) > 0):
            self.best = value
            mark = " [green]new best[/]"
        else:
            mark = ""
        value_s = f"{value:.4f}" if value is not None else "-"
        colour = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}.get(state, "white")
        self.console.print(f"trial {number:>3} [{colour}]{state:<8}[/] val {value_s}  {duration_s:6.1f}s"
                           f"{mark}{'  ' + escape(note) if note else ''}", highlight=False)
        if state == "COMPLETE" and self.progress is not None and self._overall is not None and not self._budget_s:
            self.progress.advance(self._overall)

    def search_finished(self, reason: str) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        self.console.print(f"Search stopped: {reason}", highlight=False, markup=False)

    def _tick(self) -> None:
        if self.progress is not None and self._overall is not None and self._budget_s:
            self.progress.update(self._overall, completed=min(self._budget_s, time.time() - self._started))


def quiet_libraries() -> None:
    """Turn off the chatter of the libraries a search runs (Optuna's per-trial log, timm's and peft's
    warnings), so that the search's own progress is what shows. The commands and the benchmarks call it; the
    API (:func:`autotl.search`) leaves the process's logging and warnings as its caller set them."""
    import logging
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("timm").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


def _describe(params: dict[str, Any]) -> str:
    if params.get("head_fit") == "converged":
        parts = [str(params.get("model")), f"converged head (freeze {params.get('freeze')}, C "
                                           f"{float(params.get('head_fit_c', 1.0)):g})"]
    else:
        parts = [str(params.get("model")), f"freeze {params.get('freeze')}", f"lora {params.get('lora_rank')}",
                 f"lr {params.get('lr', 0):.2g}"]
    for key in ("resolution", "max_length"):
        if key in params:
            parts.append(f"{key} {params[key]}")
    return ", ".join(parts)
