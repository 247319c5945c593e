"""The ``autotl`` command line.

Exit codes (:data:`autotl.errors.EXIT_CODES`): 0 success; 1 an unexpected internal error; 2 a usage
error (bad option, recipe or device); 3 unusable data; 4 a model or its weights cannot be had; 5 a
plugin failed; 6 a run or study is missing or does not match; 7 a bundle is missing, corrupted or
tampered with; 8 the search stopped because --max-failures trials failed; 130 interrupted (Ctrl-C),
after every finished trial was saved.

Every error is one ``Error:`` line on stderr that names the problem and the fix; click's own usage
errors too (no usage block), and tracebacks only with ``--debug``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import signal
import sys
from pathlib import Path

import click
from rich.console import Console

from .errors import EXIT_CODES, EXIT_INTERRUPTED, EXIT_TOO_MANY_FAILURES, AutotlError, RunError, UsageError
from .progress import quiet_libraries


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
            elif text.startswith("-") and self._parses(text[1:]):
                self.fail(f"{value!r} is negative; give a time budget above zero, e.g. 600 or 10m", param, ctx)
            elif parts:
                seconds = sum(float(n) * self._units[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)([smhd])", text))
            else:
                self.fail(f"{value!r} is not a duration; write seconds (600) or 90s, 10m, 1h, 1h30m", param, ctx)
        if seconds <= 0:
            self.fail(f"{value!r} must be more than zero, e.g. 600 or 10m", param, ctx)
        return seconds

    def _parses(self, text: str) -> bool:
        return bool(re.fullmatch(r"\d+(\.\d+)?|((\d+(\.\d+)?)([smhd]))+", text.strip()))


class OneLineUsageError(click.UsageError):
    """A click usage error (bad option or value) shown as one ``Error:`` line that points to --help."""

    def __init__(self, original: click.UsageError):
        message = original.format_message().rstrip()
        super().__init__(message[:-1] if message.endswith(".") else message, original.ctx)
        self.exit_code = original.exit_code

    def show(self, file=None) -> None:
        where = f"; see `{self.ctx.command_path} --help`" if self.ctx is not None else ""
        click.echo(f"Error: {self.format_message()}{where}", err=True)


@contextlib.contextmanager
def _one_line_usage_errors():
    try:
        yield
    except (OneLineUsageError, click.exceptions.NoArgsIsHelpError):
        raise
    except click.UsageError as exc:
        raise OneLineUsageError(exc) from None


class AutotlGroup(click.Group):
    """The ``autotl`` group: usage errors of the group and of every command are one line."""

    def make_context(self, *args, **kwargs):
        with _one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _one_line_usage_errors():
            return super().invoke(ctx)


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
        except BrokenPipeError:  # `autotl trials RUN | head`: the reader has gone, which is fine
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
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


def _exit_code_epilog() -> str:
    return "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items())


@click.group(cls=AutotlGroup, epilog=_exit_code_epilog(),
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="autotl")
def cli():
    """autotl: search source model, freeze depth, LoRA rank and learning rate for transfer learning.

    \b
    Start with:
      autotl plugins                 (the tasks installed: the values of --task)
      autotl search --task TASK DATA --time-budget 10m --out runs/mine
      autotl trials runs/mine
    """


def trial_loop_options(func):
    """The options `autotl search` and `autotl worker` share: when to stop, where to run, what to keep."""
    for option in reversed([
        click.option("--trials", "-n", type=click.IntRange(min=1),
                     help="Stop when the study has this many trials done (complete or pruned; failed ones "
                          "do not count). Shared by every worker of the study."),
        click.option("--time-budget", "-b", type=Duration(), help="Wall-clock budget: seconds, or 90s, 10m, 1h."),
        click.option("--max-failures", type=click.IntRange(min=1), default=5, show_default=True,
                     help="Stop (exit code 8) after this many trials of this process failed."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--keep-top", type=click.IntRange(min=1),
                     help="How many top trials keep their weights on disk [default: the study's, 3 for a new "
                          "one], besides the converged-head trials (one per model). A study begun already keeps "
                          "its own: a different value is refused."),
    ]):
        func = option(func)
    return func


@cli.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--task", "-t", required=True, help="Task type (`autotl plugins` lists them).")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Run folder for the study, weights and reports [default: runs/<task>-<data folder name>].")
@click.option("--recipe", "-r", metavar="NAME|FILE", help="Built-in recipe name or YAML file [default: the task's].")
@click.option("--models", "-m", metavar="A,B,...", help="Comma-separated model names to search instead of the recipe's.")
@click.option("--weights", "-w", multiple=True, metavar="[NAME=]FILE",
              help="Local checkpoint for a model (safetensors or torch state dict); repeatable.")
@trial_loop_options
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
              help="Seed of the sampler, the split and training.")
@storage_options
@click.option("--scratch-baseline", is_flag=True,
              help="After the search, train the best trial's network from random weights and show both scores.")
@click.option("--data-option", "-d", "data_options", multiple=True, metavar="KEY=VALUE",
              help="Set a data option of the recipe, e.g. -d text_column=review -d val_fraction=0.2; repeatable.")
@click.option("--no-prerank", is_flag=True,
              help="Do not rank the models by transferability (LogME, H-score, GBC) before the first trial.")
@click.option("--no-cache", is_flag=True,
              help="Run every trial through the whole network each epoch: no frozen-prefix cache "
                   "(the recipe's `cache` section sets its bounds and folder).")
@click.option("--ensemble-rounds", type=click.IntRange(min=0), default=20, show_default=True, metavar="N",
              help="After the search, select an ensemble of the kept trials in N rounds of greedy selection on "
                   "their validation outputs (out-of-fold outputs where the selection on small data cross-validated "
                   "them), and show it beside the best single trial; 0: no ensemble.")
@click.option("--ensemble-metric", metavar="METRIC",
              help="The metric the ensemble's greedy selection climbs [default: the study's]: a smooth one (a loss) "
                   "overfits a small validation split less than a share of right items. Its scores are shown in "
                   "the study's metric either way.")
@handle_errors
def search(data, task, out, recipe, models, weights, trials, time_budget, max_failures, device, keep_top, seed,
           storage, study, scratch_baseline, data_options, no_prerank, no_cache, ensemble_rounds, ensemble_metric):
    """Search for the best way to adapt a pretrained model to DATA.

    Runs Optuna trials over source model, freeze depth, LoRA rank, learning rate and the recipe's
    other parameters, shows progress, and ends with the leaderboard. Running the same command
    again resumes the study (a trial cut short by a crash or kill is marked failed and run again);
    Ctrl-C stops cleanly and keeps every finished trial.

    \b
    On several machines: give each the same --storage postgresql://... --study NAME (or start one
    `autotl search` and join it with `autotl worker`); they share one study and one leaderboard.
    """
    from .api import default_out
    from .options import SearchOptions

    out = out or default_out(task, data)
    options = SearchOptions(
        task=task, data=Path(data), out=out, recipe=recipe,
        models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
        weights=_parse_weights(weights), trials=trials, time_budget=time_budget, seed=seed, storage=storage,
        study=study, device=device, scratch_baseline=scratch_baseline, keep_top=keep_top,
        data_options=parse_key_values(data_options, "--data-option", "-d text_column=review"),
        max_failures=max_failures, prerank=not no_prerank, cache=not no_cache, ensemble_rounds=ensemble_rounds,
        ensemble_metric=ensemble_metric,
    )
    _run_search(options, out)


@cli.command()
@click.option("--storage", metavar="URL", envvar="AUTOTL_STORAGE", required=True,
              help="The study's Optuna storage URL (postgresql://USER:PASSWORD@HOST/DB); or set AUTOTL_STORAGE.")
@click.option("--study", metavar="NAME", required=True, help="The study to join (the --study of `autotl search`).")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Folder for this worker's trial weights [default: the --out of the search that began the study, "
                   "best on a filesystem every worker shares].")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="The data folder here, if not at the path the study recorded.")
@click.option("--weights", "-w", multiple=True, metavar="NAME=FILE",
              help="A model's local checkpoint here, if not at the path the study recorded; repeatable.")
@trial_loop_options
@handle_errors
def worker(storage, study, out, data, weights, trials, time_budget, max_failures, device, keep_top):
    """Join a search that `autotl search --storage URL --study NAME` began, and run its trials.

    Takes the task, data, recipe, models, seed and --keep-top the study recorded; start one worker per machine
    (or per GPU). Workers share the study: no trial runs twice, and a trial whose worker dies is
    failed after the heartbeat grace period and run again by another worker.
    """
    from .records import StudyRecord
    from .options import SearchOptions
    from .runs import RunLocation, load_study, sqlite_file

    if sqlite_file(storage) is not None:
        raise UsageError("autotl worker needs a storage several processes can share, not SQLite: use "
                         "--storage postgresql://USER:PASSWORD@HOST/DB (resume a local run with `autotl search` instead)")
    record = StudyRecord.described(load_study(RunLocation(storage, study)).user_attrs)  # refuses a half one
    if record is None:
        raise RunError(f"study {study!r} was not begun by `autotl search` (it records no task); start it with "
                       f"autotl search DATA --task TASK --storage URL --study {study}")
    recorded = dict(record.weights_files)
    recorded.update(_parse_weights(weights))
    options = SearchOptions(
        task=record.task, data=Path(data or record.data), out=Path(out or record.out),
        models=list(record.models) or None, weights=recorded, trials=trials,
        time_budget=time_budget, seed=record.seed, storage=storage, study=study, device=device,
        keep_top=keep_top, max_failures=max_failures, recipe_raw=record.recipe,
    )
    _run_search(options, options.out)


def _run_search(options, out: Path) -> None:
    """Run the search (:func:`autotl.api.run_search`) with the progress on stderr, then show its leaderboard.

    Optuna's and timm's chatter is turned off first (:func:`autotl.progress.quiet_libraries`), as the other
    commands do; the API leaves it to its caller.
    """
    from .api import run_search
    from .leaderboard import render
    from .progress import ConsoleReporter

    quiet_libraries()
    result = run_search(options, ConsoleReporter(_console(stderr=True)),
                        on_open=lambda: signal.signal(signal.SIGTERM, _raise_keyboard_interrupt))
    render(result.run.study, result.run.location, _console())
    click.echo(f"Run folder: {out}   (see it again: autotl trials {out})"
               if options.storage is None else
               f"See it again: autotl trials --storage URL --study {result.run.location.study_name}", err=True)
    if result.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if result.too_many_failures:
        click.echo(f"Error: the search stopped: {result.stop_reason}. Fix the cause (`autotl trials` lists each "
                   "failed trial's reason), then run the same command again to resume.", err=True)
        sys.exit(EXIT_TOO_MANY_FAILURES)


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


def within_option(func):
    return click.option("--within", type=click.FloatRange(min=0), metavar="MARGIN",
                        help="Pick the fastest trial (batch-1 latency) whose validation score (the study's "
                             "metric) is within MARGIN (e.g. 0.01) of the best, in the metric's direction.")(func)


@cli.command()
@click.argument("run", required=False)
@storage_options
@within_option
@click.option("--json", "as_json", is_flag=True, help="Print the best trial as JSON.")
@handle_errors
def best(run, storage, study, within, as_json):
    """Show the best trial of RUN with its validation and test score (in the study's metric).

    With --within 0.01: the fastest trial whose validation score is within 0.01 of the best,
    the production pick that `autotl export --within 0.01` exports. The ensemble the search
    recorded is shown beside it, and competes under --within with its members' latencies added;
    where the search ships it (selected on out-of-fold outputs on small data) it is the best.
    """
    from .ensemble import describe as describe_ensemble
    from .leaderboard import best_summary, choose_trial, metric_name
    from .run import open_run

    opened = open_run(run, storage=storage, study=study)
    loaded = opened.study
    metric = metric_name(loaded)
    choice = choose_trial(loaded, within=within)
    summary = best_summary(loaded, choice.trial.number, metric)
    summary["chosen_by"] = choice.reason
    summary["chosen"] = "ensemble" if choice.ensemble else "trial"
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    if choice.ensemble:
        title = "Production pick:" if within is not None else "Best: what the search ships,"
        click.echo(f"{title} the ensemble of trials {', '.join(choice.ensemble['members'])}")
        click.echo(f"  chosen by: {choice.reason}")
        click.echo(f"  {describe_ensemble(choice.ensemble)}")
        return
    test = summary[f"test_{metric}"]
    title = "Best trial" if within is None else "Production pick: trial"
    whose = " (its configuration trained on train+val, as exported)" if summary.get("test_weights") == "refit" else ""
    click.echo(f"{title} {summary['number']}: val {metric} {summary[f'val_{metric}']:.4f}, test {metric} "
               f"{'not scored' if test is None else f'{test:.4f}'}{whose}")
    if summary.get("cv_metric") is not None:
        se = summary.get("cv_se")
        click.echo(f"  cross-validation {metric}: {summary['cv_metric']:.4f}"
                   + (f" ± {se:.4f} (standard error over {len(summary.get('cv_folds') or [])} folds)"
                      if se is not None and se == se else ""))
    click.echo(f"  chosen by: {choice.reason}")
    latency = summary.get("latency") or {}
    if summary.get("inference_params") or latency:
        count = summary.get("inference_params")
        click.echo(f"  parameters: {f'{count:,}' if count else '-'}; latency per item: "
                   + (f"{latency['batch1_ms']:.2f} ms at batch 1, {latency['batched_ms']:.2f} ms at batch "
                      f"{latency['batch_size']} ({latency['device']})" if latency else "not measured"))
    weights, problem = opened.kept_weights(choice.trial)
    if weights is None or problem:
        click.echo(f"  {problem or 'its weights were not kept (only the top --keep-top trials keep theirs)'}: "
                   "`autotl export --refit` trains it again")
    for key, value in summary["params"].items():
        click.echo(f"  {key}: {value}")
    if summary.get("ensemble"):
        click.echo(describe_ensemble(summary["ensemble"]))


@cli.command()
@click.argument("run", required=False)
@storage_options
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Folder for the bundle.")
@click.option("--trial", type=click.IntRange(min=0), metavar="N", help="Export trial N instead of the best.")
@within_option
@click.option("--refit", is_flag=True,
              help="Train the chosen configuration again on train+val (for the trial's best number of epochs) "
                   "instead of using its saved weights.")
@click.option("--format", "formats", multiple=True, type=click.Choice(["onnx", "torchscript"]),
              help="Also write model.onnx / model.torchscript.pt, checked against the PyTorch network; repeatable.")
@click.option("--data", type=click.Path(path_type=Path), metavar="PATH",
              help="The run's data folder, if it moved since the search.")
@click.option("--weights", "-w", multiple=True, metavar="[NAME=]FILE",
              help="Local pretrained checkpoint for --refit, if the search's one moved.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--force", is_flag=True, help="Replace the bundle already in --out.")
@click.option("--ensemble", is_flag=True,
              help="Export the ensemble the search selected (`autotl trials` shows it) as one bundle: each member a "
                   "bundle of its own under members/, their outputs combined.")
@click.option("--members", metavar="A,B,...",
              help="With --ensemble: these kept trials, with equal weights, instead of the search's selection.")
@handle_errors
def export(run, storage, study, out, trial, within, refit, formats, data, weights, device, force, ensemble, members):
    """Write a trial of RUN as a self-describing bundle in --out.

    \b
    The bundle: model.safetensors (LoRA merged), config.json (task, model, labels, preprocessing,
    the trial's parameters and scores, data fingerprint, versions, checksums), README.md (the
    model card), and with --format the ONNX / TorchScript files. By default what the search ships:
    the best trial, or the ensemble where the search ships one (selected on out-of-fold outputs on
    small data; `--trial N` then writes trial N alone). With --ensemble: the search's ensemble,
    each member such a bundle under members/.
    """
    from .export import ExportOptions, export_bundle
    from .runs import locate

    quiet_libraries()
    parsed = _parse_weights(weights)
    if "" in parsed:
        raise UsageError("--weights for export needs NAME=FILE")
    numbers = ()
    if members:
        try:
            numbers = tuple(int(n) for n in members.split(",") if n.strip())
        except ValueError:
            raise UsageError(f"--members {members}: give trial numbers separated by commas, e.g. --members 3,7,9") \
                from None
    options = ExportOptions(out=out, trial=trial, within=within, refit=refit, formats=tuple(dict.fromkeys(formats)),
                            data=data, weights=parsed, device=device, force=force, ensemble=ensemble, members=numbers)
    result = export_bundle(locate(run, storage, study), options, say=lambda m: click.echo(m, err=True))
    config = result.config
    scores = config.scores
    what = (f"ensemble of trials {', '.join(str(m.trial) for m in config.ensemble.members)}" if config.ensemble
            else f"trial {config.trial.number} ({config.backbone.name})")
    click.echo(f"{result.out}: {what}, "
               f"val {scores.metric} {scores.val:.4f}"
               + (f", test {scores.metric} {scores.test:.4f}" if scores.test is not None else "")
               + (" (refit on train+val)" if config.refit else ""))


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1)
@click.option("--top-k", "-k", type=click.IntRange(min=1), default=1, show_default=True,
              help="Show the K most likely labels, for a task whose target ranks labels (one label per item); "
                   "other tasks ignore it.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of predictions: {input, ...what the task "
                                                         "predicts}.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: input, then one column per field the task predicts "
                                                       "(e.g. label,probability[,label_2,probability_2...]).")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--engine", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="Run the PyTorch network or the bundle's model.onnx (onnxruntime).")
@handle_errors
def predict(bundle, inputs, top_k, as_json, as_csv, batch_size, device, engine):
    """Predict with the BUNDLE written by `autotl export`.

    \b
    INPUT: image files or folders for an image bundle; a CSV file, or `-` / nothing for lines on
    standard input, for a text bundle. Prints each input and what its task predicts, one line each,
    tab-separated: a label and its probability (then the next --top-k ones), a number, a set of
    labels, a tag per word (docs/tasks.md shows each task's).
    An image that cannot be read is skipped and listed on stderr after the predictions (exit code
    0; 3 when no input can be read).
    """
    import csv

    from .bundle import load

    if as_json and as_csv:
        raise UsageError("--json and --csv are exclusive: give one")
    quiet_libraries()
    loaded = load(bundle, device=device, engine=engine)
    stdin = sys.stdin
    if not inputs and stdin.isatty():
        raise UsageError("give inputs to predict (files, folders, a CSV), or pipe them on standard input")
    named = loaded.task.read_inputs(list(inputs), stdin=stdin)
    skipped: list[tuple[str, str]] = []
    predictions = loaded.iter_predict(named, top_k=top_k, batch_size=batch_size,
                                      on_skip=lambda name, reason: skipped.append((name, reason)))
    if as_json:
        rows = [p.as_dict() for p in predictions]
        _report_skipped(skipped, len(named), predicted=len(rows))
        click.echo(json.dumps(rows, indent=2))
        return
    if as_csv:
        predictions = iter(predictions)
        head = next(predictions, None)
        columns = ["input"] + [column for column, _ in _cells(head.fields, 6)] if head is not None else ["input"]
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for p in itertools.chain([head] if head is not None else [], predictions):
            cells = dict(_cells(p.fields, 6))
            writer.writerow([p.input] + [cells.get(column, "") for column in columns[1:]])
    else:
        for p in predictions:
            click.echo("\t".join([p.input] + [text for _, text in _cells(p.fields, 4)]))
    _report_skipped(skipped, len(named), predicted=len(named) - len(skipped))


def _cells(fields: dict, digits: int) -> list[tuple[str, str]]:
    """A decoded prediction as (column, text) pairs for `autotl predict`'s text and CSV output.

    A number is written with ``digits`` decimals; a list of records (the ``top_k`` labels) as one
    ``<key>_<i>`` column per field of its i-th record, its first record left out where it repeats the
    prediction's own fields; a list of plain values (a tag per word, a set of labels) joined by spaces;
    anything else as JSON.
    """
    cells = []
    for key, value in fields.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, record in enumerate(value, 1):
                if i == 1 and all(fields.get(k) == v for k, v in record.items()):
                    continue
                cells += [(f"{k}_{i}", _text(v, digits)) for k, v in record.items()]
        elif isinstance(value, list) and all(not isinstance(v, (list, dict)) for v in value):
            cells.append((key, " ".join(_text(v, digits) for v in value)))
        else:
            cells.append((key, _text(value, digits)))
    return cells


def _text(value, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _report_skipped(skipped: list[tuple[str, str]], given: int, predicted: int) -> None:
    """The inputs `autotl predict` could not read, listed on stderr after the predictions (exit code 0);
    when none could be read, one ``Error:`` line (exit code 3)."""
    if not skipped:
        return
    if not predicted:
        from .errors import DataError

        name, reason = skipped[0]
        if given == 1:
            raise DataError(f"cannot predict on {name}: {reason}")
        raise DataError(f"none of the {given} inputs can be read; the first, {name}: {reason}")
    click.echo(f"Skipped {len(skipped)} unusable item(s), not predicted (repair or remove them to predict them):",
               err=True)
    for name, reason in skipped:
        click.echo(f"  {name}: {reason}", err=True)


@cli.command()
@click.argument("run", required=False)
@storage_options
@click.option("--out", "-o", type=click.Path(path_type=Path), metavar="FILE.html",
              help="The HTML file to write [default: RUN/report.html, or report-<study>.html with --storage].")
@click.option("--data", type=click.Path(path_type=Path), metavar="PATH",
              help="The run's data folder, if it moved since the search (to score the best trial on the test split).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@handle_errors
def report(run, storage, study, out, data, device):
    """Write a self-contained HTML report of RUN that opens in a browser with no network.

    \b
    The leaderboard, the optimisation history, parameter importances, the validation score against
    trial time and model size per source model, the transferability pre-ranking (if the run has one)
    beside the fine-tuned results, and the best trial on the test split: its scores, the plot its task
    draws (a confusion matrix, predicted against true...) and, where it predicts one label per item,
    the items it got wrong; predicted from its saved weights (nothing is trained again).
    """
    from .report import write_report
    from .runs import locate

    quiet_libraries()
    location = locate(run, storage, study)
    if out is None:
        out = Path(run) / "report.html" if run else Path(f"report-{location.study_name}.html")
    result = write_report(location, out, data=data, device=device, say=lambda m: click.echo(m, err=True))
    for note in result.notes:
        click.echo(f"  note: {note}", err=True)
    click.echo(str(result.out))


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


def parse_key_values(values, option: str, example: str) -> dict:
    """``KEY=VALUE`` strings as a mapping, each value read as YAML (``lr=3e-4`` is a float), or as text where it
    is not YAML (``text_column=[x``)."""
    import yaml

    from .errors import UsageError

    parsed = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} {value!r} is not KEY=VALUE, e.g. {example}")
        try:
            parsed[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:  # `-d text_column=[x`: not YAML, so the text as it stands
            parsed[key.strip()] = raw
    return parsed


def _parse_weights(values) -> dict[str, str]:
    parsed = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = "", value
        parsed[name.strip()] = path.strip()
    return parsed


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> None:
    """Entry point of the `autotl` command."""
    cli(prog_name="autotl")


if __name__ == "__main__":
    main()
