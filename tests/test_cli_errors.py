"""How the command line fails: one `Error:` line, no traceback, and the documented exit code.

Most bad inputs are in the table of tests/test_bad_inputs.py; these are the rest.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import autotl.cli
from autotl.cli import Duration, cli
from autotl.errors import EXIT_CODES, EXIT_INTERRUPTED, AutotlError, DataError
from tiny import TINY

ROOT = Path(__file__).resolve().parent.parent
TINY_RECIPE = ROOT / "tests" / "data" / "tiny-image.yaml"

EXIT_USAGE, EXIT_RUN = 2, 6


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="autotl")


def assert_one_error_line(result, exit_code: int, *fragments: str) -> str:
    """The command failed with ``exit_code`` and a single ``Error:`` line holding every fragment."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert result.output.count("Error:") == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def search(data, out, *extra):
    """`autotl search` on the tiny recipe and the tiny model with its local weights."""
    return ("search", data, "--task", "image-classification", "--out", out, "--recipe", TINY_RECIPE,
            "--trials", "1", "--device", "cpu", *extra)


@pytest.fixture
def tiny_model(tiny_weights):
    return ("--models", TINY, "--weights", f"{TINY}={tiny_weights}")


# -- autotl search ---------------------------------------------------------------------------------

def test_weights_for_a_model_not_searched_is_a_usage_error(tmp_path, tiny_folder, tiny_model, tiny_weights):
    result = invoke(*search(tiny_folder, tmp_path / "run", *tiny_model, "--weights", f"resnet18={tiny_weights}"))
    assert_one_error_line(result, EXIT_USAGE, "--weights names model(s) not searched: resnet18")


def test_debug_shows_the_error_itself(tmp_path, tiny_model):
    result = invoke(*search(tmp_path / "nowhere", tmp_path / "run", *tiny_model, "--debug"))
    assert isinstance(result.exception, DataError)
    assert "Error:" not in result.output


# -- autotl trials / best ---------------------------------------------------------------------------

def test_best_on_a_folder_without_a_run_exits_6(tmp_path):
    result = invoke("best", tmp_path)
    assert_one_error_line(result, EXIT_RUN, "holds no autotl run")


def test_trials_without_a_run_folder_or_storage_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("AUTOTL_STORAGE", raising=False)
    result = invoke("trials")
    assert_one_error_line(result, EXIT_USAGE, "give a run folder")


# -- click's own usage errors are one line too ------------------------------------------------------------

def test_an_unknown_command_is_one_line_pointing_to_help():
    result = invoke("serch")
    line = assert_one_error_line(result, EXIT_USAGE, "No such command 'serch'", "see `autotl --help`")
    assert result.output.strip() == line and "Usage:" not in result.output


def test_without_arguments_the_help_is_shown():
    result = invoke()
    assert "Commands:" in result.output and "search" in result.output and "Error:" not in result.output


# -- exit codes are documented where a user looks ------------------------------------------------------------

def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def _exit_codes_in_cli_source() -> set[int]:
    """Every literal or named exit code `sys.exit(...)` gets in autotl/cli.py."""
    tree = ast.parse(Path(autotl.cli.__file__).read_text(encoding="utf-8"))
    codes = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "sys.exit" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant):
                codes.add(arg.value)
            elif isinstance(arg, ast.Name) and arg.id.startswith("EXIT_"):
                codes.add(getattr(autotl.cli, arg.id))
    return codes


def test_every_exit_code_is_in_the_table_of_exit_codes():
    import autotl.bundle  # noqa: F401  (BundleError)
    import autotl.export  # noqa: F401
    import autotl.base  # noqa: F401  (ExportUnsupportedError)

    used = {cls.exit_code for cls in _all_subclasses(AutotlError)} | _exit_codes_in_cli_source()
    used |= {0, AutotlError.exit_code, click.UsageError.exit_code, EXIT_INTERRUPTED}
    assert used <= set(EXIT_CODES), f"exit codes missing from autotl.errors.EXIT_CODES: {used - set(EXIT_CODES)}"
    assert _exit_codes_in_cli_source() >= {0, 1, EXIT_INTERRUPTED}


def test_the_guide_documents_exactly_the_exit_codes():
    guide = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
    section = guide.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, flags=re.M)}
    assert documented == set(EXIT_CODES)


def test_help_and_the_cli_docstring_list_every_exit_code():
    help_text = invoke("--help").output
    assert "Exit codes:" in help_text
    for code, meaning in EXIT_CODES.items():
        assert re.search(rf"^\s+{code}\s+{re.escape(meaning[:20])}", help_text, flags=re.M), (code, help_text)
        assert re.search(rf"\b{code} ", autotl.cli.__doc__), code


# -- the Duration option type --------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("600", 600), ("10m", 600), ("1h", 3600), ("90s", 90), ("1h30m", 5400),
    ("1.5h", 5400), ("2.5", 2.5), ("1d", 86400), ("10M", 600), (" 45s ", 45), (120, 120),
])
def test_duration_converts_seconds_and_unit_suffixes(text, seconds):
    assert Duration().convert(text, None, None) == seconds


@pytest.mark.parametrize("text", ["", "10x", "m10", "-5", "1h-30m", "0", "0s", "h"])
def test_duration_rejects_what_is_not_a_positive_duration(text):
    with pytest.raises(click.BadParameter):
        Duration().convert(text, None, None)
