"""The ``autotl`` command line.

Exit codes: 0 success; 1 an unexpected internal error; 2 a usage error (bad option or recipe);
3 unusable data; 4 a model or its weights cannot be had; 5 a plugin failed; 6 a run or study
is missing or does not match; 130 interrupted (Ctrl-C), after every finished trial was saved.
"""

from __future__ import annotations

import functools
import json
import re
import signal
import sys
from pathlib import Path

import click
from rich.console import Console

from .errors import AutotlError

EXIT_INTERRUPTED = 130


class Duration(click.ParamType):
    """Seconds, or a duration such as ``90s``, ``10m``, ``1h`` or ``1h30m``."""

    name = "duration"
    _units = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            text = str(value).strip().lower()
            parts = re.fullmatch(r"((\d+(\.\d+)?)([smhd]))+", text)
            if re.fullmatch(r"\d+(\.\d+)?", text):
                seconds = float(text)
            elif parts:
                seconds = sum(float(n) * self._units[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)([smhd])", text))
            else:
                self.fail(f"{value!r} is not a duration; write seconds (600) or 90s, 10m, 1h, 1h30m", param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r} must be more than zero", param, ctx)
        return seconds


def handle_errors(func):
    """Turn autotl's errors into one-line messages and exit codes; tracebacks only with --debug."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        debug = kwargs.pop("debug", False)
        try:
            return func(*args, **kwargs)
        except AutotlError as exc:
            if debug:
                raise
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            if debug:
                raise
            click.echo(f"Internal error: {exc.__class__.__name__}: {exc}. Rerun with --debug for the traceback "
                       "and report it.", err=True)
            sys.exit(1)

    return click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")(wrapper)


def storage_options(func):
    func = click.option("--study", metavar="NAME", help="Optuna study name (with --storage).")(func)
    return click.option("--storage", metavar="URL", envvar="AUTOTL_STORAGE",
                        help="Optuna storage URL (sqlite:///..., postgresql://...) instead of a run folder.")(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="autotl")
def cli():
    """autotl: search source model, freeze depth, LoRA rank and learning rate for transfer learning.

    \b
    Start with:
      autotl search --task image-classification DATA --time-budget 10m --out runs/mine
      autotl trials runs/mine
    """


@cli.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--task", "-t", required=True, help="Task type, e.g. image-classification (`autotl plugins` lists them).")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Run folder for the study, weights and reports [default: runs/<task>-<data folder name>].")
@click.option("--recipe", "-r", metavar="NAME|FILE", help="Built-in recipe name or YAML file [default: the task's].")
@click.option("--models", "-m", metavar="A,B,...", help="Comma-separated model names to search instead of the recipe's.")
@click.option("--weights", "-w", multiple=True, metavar="[NAME=]FILE",
              help="Local checkpoint for a model (safetensors or torch state dict); repeatable.")
@click.option("--trials", "-n", type=click.IntRange(min=1), help="Stop when the study has this many finished trials.")
@click.option("--time-budget", "-b", type=Duration(), help="Wall-clock budget: seconds, or 90s, 10m, 1h.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampler, the split and training.")
@storage_options
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--scratch-baseline", is_flag=True,
              help="After the search, train the best trial's network from random weights and show both scores.")
@click.option("--keep-top", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many top trials keep their weights on disk.")
@handle_errors
def search(data, task, out, recipe, models, weights, trials, time_budget, seed, storage, study, device,
           scratch_baseline, keep_top):
    """Search for the best way to adapt a pretrained model to DATA.

    Runs Optuna trials over source model, freeze depth, LoRA rank, learning rate and the recipe's
    other parameters, shows progress, and ends with the leaderboard. Running the same command
    again resumes the study; Ctrl-C stops cleanly and keeps every finished trial.
    """
    from .leaderboard import render
    from .plugins import get_registry
    from .progress import ConsoleReporter
    from .search import Search, SearchOptions

    out = out or Path("runs") / f"{task}-{Path(data).resolve().name}"
    options = SearchOptions(
        task=task, data=Path(data), out=out, recipe=recipe,
        models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
        weights=_parse_weights(weights), trials=trials, time_budget=time_budget, seed=seed, storage=storage,
        study=study, device=device, scratch_baseline=scratch_baseline, keep_top=keep_top,
    )
    _quiet_libraries()
    reporter = ConsoleReporter(_console(stderr=True))
    runner = Search(options, get_registry(), reporter)
    location = runner.open()
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    outcome = runner.run()
    try:
        score = runner.score_best_on_test()
        if score:
            reporter.message(f"Best trial {score['trial']} on the test split ({score['test_size']} samples): "
                             f"accuracy {score['test_accuracy']:.4f}")
        if scratch_baseline and not outcome.interrupted:
            runner.scratch_baseline()
    except KeyboardInterrupt:
        outcome.interrupted = True
    render(runner.study, location, _console())
    click.echo(f"Run folder: {out}   (see it again: autotl trials {out})", err=True)
    if outcome.interrupted:
        sys.exit(EXIT_INTERRUPTED)


@cli.command()
@click.argument("run", required=False)
@storage_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of trials instead of the table.")
@handle_errors
def trials(run, storage, study, as_json):
    """Show the leaderboard of the search in RUN (a run folder)."""
    from .leaderboard import render, trial_rows
    from .runs import load_study, locate

    location = locate(run, storage, study)
    loaded = load_study(location)
    if as_json:
        click.echo(json.dumps(trial_rows(loaded), indent=2, default=str))
    else:
        render(loaded, location, _console())


@cli.command()
@click.argument("run", required=False)
@storage_options
@click.option("--json", "as_json", is_flag=True, help="Print the best trial as JSON.")
@handle_errors
def best(run, storage, study, as_json):
    """Show the best trial of RUN with its validation and test accuracy."""
    from .errors import RunError
    from .leaderboard import best_summary
    from .runs import load_study, locate

    summary = best_summary(load_study(locate(run, storage, study)))
    if summary is None:
        raise RunError(f"no trial of {run or study} has completed yet")
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    test = summary["test_accuracy"]
    click.echo(f"Best trial {summary['number']}: val accuracy {summary['val_accuracy']:.4f}, test accuracy "
               f"{'not scored' if test is None else f'{test:.4f}'}")
    for key, value in summary["params"].items():
        click.echo(f"  {key}: {value}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@handle_errors
def plugins(as_json):
    """List the loaded plugins and the backbone families and tasks each registered."""
    from .plugins import get_registry

    registry = get_registry()
    listing = []
    for plugin, items in sorted(registry.provided_by.items()):
        entry = {"plugin": plugin, "registers": items}
        for item in items:
            kind, name = item.rsplit(" ", 1)
            if kind == "backbone family":
                entry.setdefault("default_zoo", {})[name] = registry.families[name].default_zoo()
        listing.append(entry)
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    for entry in listing:
        click.echo(f"{entry['plugin']}: {', '.join(entry['registers']) or 'nothing'}")
        for family, zoo in entry.get("default_zoo", {}).items():
            click.echo(f"  {family} offline zoo: {', '.join(zoo) or '(none installed)'}")
    for task in registry.tasks.values():
        families = ", ".join(f.name for f in registry.families_for(task)) or "none installed"
        click.echo(f"task {task.name}: served by {families}")


def _console(stderr: bool = False) -> Console:
    """A console that is wide enough for the leaderboard when it writes to a file or a pipe."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=200)


def _parse_weights(values) -> dict[str, str]:
    parsed = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = "", value
        parsed[name.strip()] = path.strip()
    return parsed


def _quiet_libraries() -> None:
    import logging
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("timm").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> None:
    """Entry point of the `autotl` command."""
    cli(prog_name="autotl")


if __name__ == "__main__":
    main()
