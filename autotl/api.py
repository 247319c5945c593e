"""The public Python API: run a search, open a run, load a bundle. The ``autotl`` command is a layer over it.

::

    import autotl

    result = autotl.search("data/flowers", task=TASK, time_budget=600, out="runs/flowers")  # `autotl plugins`
    run = result.run                       # or later: autotl.open_run("runs/flowers")
    best = run.best_trial()
    print(best.value, run.test_score(best), run.config(best))
    model = run.network(best)              # the trained torch network
    # autotl export writes a bundle; autotl.load(BUNDLE).predict(inputs) predicts with it

``autotl.search`` runs in this process and returns once the search stops (trials, time budget, too many
failures or Ctrl-C); running it again with the same ``out`` resumes the study, as the command does. The
search itself is :class:`autotl.controller.Search`; these functions open it, run it and close it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from .base import Registry
from .controller import Search
from .options import SearchOptions
from .progress import Reporter
from .run import Run, open_run


@dataclass
class SearchResult:
    """What :func:`search` returns: the run, opened, and how the search ended."""

    run: Run
    stop_reason: str
    trials_run: int  # by this process
    interrupted: bool = False
    too_many_failures: bool = False  # stopped by max_failures
    test_score: dict[str, Any] | None = None  # the best trial on the test split: trial, test_<metric>, test_metrics, test_size
    scratch: dict[str, Any] | None = None  # the from-scratch baseline, when asked for
    ensemble: dict[str, Any] | None = None  # the ensemble of kept trials, as recorded (autotl/ensemble.py)


def default_out(task: str, data: Path | str) -> Path:
    """The run folder of a search that names none: ``runs/<task>-<data folder name>``."""
    return Path("runs") / f"{task}-{Path(data).resolve().name}"


def search(data: Path | str, *, task: str, out: Path | str | None = None, reporter: Reporter | None = None,
           registry: Registry | None = None, **options: Any) -> SearchResult:
    """Search for the best way to adapt a pretrained model to ``data``, as ``autotl search`` does.

    :param data: the data folder or file, as the task reads it.
    :param task: the task's name (``autotl plugins`` lists those installed).
    :param out: the run folder [default: ``runs/<task>-<data folder name>``]; the same one resumes the study.
    :param reporter: receives the progress (:class:`autotl.progress.ConsoleReporter` prints it) [default: silent].
    :param registry: the plugins [default: the installed ones].
    :param options: the other fields of :class:`autotl.options.SearchOptions`, as the command's options:
        ``recipe``, ``models`` (a list), ``weights`` ({model: file}), ``trials``, ``time_budget`` (seconds),
        ``seed``, ``storage``, ``study``, ``device``, ``keep_top``, ``scratch_baseline``, ``data_options``,
        ``max_failures``, ``prerank``, ``cache``, ``ensemble_rounds`` (0: no ensemble).
    :raises autotl.AutotlError: what the command reports as its one ``Error:`` line.
    """
    known = {f.name for f in fields(SearchOptions)} - {"task", "data", "out"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"autotl.search() got unknown option(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known))}")
    settings = SearchOptions(task=task, data=Path(data), out=Path(out) if out else default_out(task, data), **options)
    return run_search(settings, reporter, registry)


def run_search(options, reporter: Reporter | None = None, registry: Registry | None = None,
               on_open: Callable[[], None] = lambda: None) -> SearchResult:
    """Run the search ``options`` (a :class:`autotl.options.SearchOptions`) describes: open the study, run trials
    until it stops, score the best trial on the test split, select an ensemble of the kept trials and, if asked, train
    the scratch baseline.

    ``on_open()`` is called once the study is open (the command installs its SIGTERM handler there).
    It changes no global state: the commands call :func:`autotl.progress.quiet_libraries` themselves.
    """
    from .plugins import get_registry

    reporter = reporter or Reporter()
    registry = registry or get_registry()
    runner = Search(options, registry, reporter)
    try:
        runner.open()
        on_open()
        outcome = runner.run()
        result = SearchResult(Run(runner.location, runner.study, registry), outcome.stop_reason, outcome.trials_run,
                              outcome.interrupted, outcome.too_many_failures)
        try:
            result.test_score = runner.score_best_on_test()
            if result.test_score:
                score, metric = result.test_score, runner.metric
                whose = " (its configuration trained on train+val)" if score.get("weights") == "refit" else ""
                reporter.message(f"Best trial {score['trial']}{whose} on the test split ({score['test_size']} "
                                 f"samples): {metric} {score[f'test_{metric}']:.4f}")
            if not outcome.interrupted:
                result.ensemble = runner.ensemble()
                if result.ensemble and result.ensemble.get("shipped") and result.ensemble.get("test") is not None:
                    reporter.message(f"Shipped: the ensemble of trials {', '.join(result.ensemble['members'])} on "
                                     f"the test split: {runner.metric} {result.ensemble['test']:.4f} (`autotl export` "
                                     f"writes it)")
            if options.scratch_baseline and not outcome.interrupted:
                result.scratch = runner.scratch_baseline()
        except KeyboardInterrupt:
            result.interrupted = True
    finally:
        runner.close()
    return result


def load(path, *, device="auto", engine="torch"):
    """Load a bundle written by ``autotl export``: ``autotl.load(BUNDLE).predict(inputs)``.

    See :func:`autotl.bundle.load`.
    """
    from .bundle import load as load_bundle

    return load_bundle(path, device=device, engine=engine)


__all__ = ["Run", "SearchResult", "default_out", "load", "open_run", "run_search", "search"]
