"""How the command line fails: one `Error:` line, no traceback, and the documented exit code."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from autotl.cli import Duration, cli
from autotl.errors import DataError
from tiny import TINY

TINY_RECIPE = Path(__file__).resolve().parent / "data" / "tiny-image.yaml"

EXIT_USAGE, EXIT_DATA, EXIT_MODEL, EXIT_RUN = 2, 3, 4, 6


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

def test_a_missing_data_folder_exits_3_and_leaves_no_run_folder(tmp_path, tiny_model):
    missing = tmp_path / "nowhere"
    result = invoke(*search(missing, tmp_path / "run", *tiny_model))
    assert_one_error_line(result, EXIT_DATA, "data folder not found", str(missing))
    assert not (tmp_path / "run").exists()


def test_a_data_folder_without_train_exits_3(tmp_path, tiny_model):
    (tmp_path / "data" / "images").mkdir(parents=True)
    result = invoke(*search(tmp_path / "data", tmp_path / "run", *tiny_model))
    assert_one_error_line(result, EXIT_DATA, "has no train/ folder")


def test_an_unknown_task_exits_2_and_lists_the_installed_tasks(tmp_path, tiny_folder):
    result = invoke("search", tiny_folder, "--task", "audio-tagging", "--out", tmp_path / "run")
    assert_one_error_line(result, EXIT_USAGE, "unknown task 'audio-tagging'", "image-classification")


@pytest.mark.parametrize("budget, complaint", [
    ("-5", "is not a duration"),
    ("0", "must be more than zero"),
    ("soon", "is not a duration"),
    ("10 minutes", "is not a duration"),
])
def test_a_bad_time_budget_is_a_usage_error(tmp_path, tiny_folder, budget, complaint):
    result = invoke(*search(tiny_folder, tmp_path / "run", f"--time-budget={budget}"))
    assert_one_error_line(result, EXIT_USAGE, "--time-budget", complaint)
    assert "Usage: autotl search" in result.output


def test_an_unknown_model_exits_4_naming_it(tmp_path, tiny_folder):
    result = invoke(*search(tiny_folder, tmp_path / "run", "--models", "no_such_model_xyz"))
    assert_one_error_line(result, EXIT_MODEL, "unknown model 'no_such_model_xyz'")


def test_a_missing_weights_file_exits_4(tmp_path, tiny_folder):
    result = invoke(*search(tiny_folder, tmp_path / "run", "--models", TINY,
                            "--weights", f"{TINY}={tmp_path / 'none.safetensors'}"))
    assert_one_error_line(result, EXIT_MODEL, "weights file", "not found")


def test_weights_for_a_model_not_searched_is_a_usage_error(tmp_path, tiny_folder, tiny_model, tiny_weights):
    result = invoke(*search(tiny_folder, tmp_path / "run", *tiny_model, "--weights", f"resnet18={tiny_weights}"))
    assert_one_error_line(result, EXIT_USAGE, "--weights names model(s) not searched: resnet18")


def test_a_recipe_file_with_bad_yaml_exits_2_naming_the_file(tmp_path, tiny_folder, tiny_model):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("task: image-classification\nspace:\n  lr: {low: 1\n")
    result = invoke("search", tiny_folder, "--task", "image-classification", "--out", tmp_path / "run",
                    "--recipe", recipe, *tiny_model)
    assert_one_error_line(result, EXIT_USAGE, str(recipe), "line 4", "not valid YAML")


def test_a_recipe_for_another_task_exits_2(tmp_path, tiny_folder, tiny_model):
    recipe = tmp_path / "text.yaml"
    recipe.write_text("task: text-classification\nspace:\n  lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n")
    result = invoke("search", tiny_folder, "--task", "image-classification", "--out", tmp_path / "run",
                    "--recipe", recipe, *tiny_model)
    assert_one_error_line(result, EXIT_USAGE, "is for task 'text-classification', not 'image-classification'")


def test_debug_shows_the_error_itself(tmp_path, tiny_model):
    result = invoke(*search(tmp_path / "nowhere", tmp_path / "run", *tiny_model, "--debug"))
    assert isinstance(result.exception, DataError)
    assert "Error:" not in result.output


# -- autotl trials / best ---------------------------------------------------------------------------

def test_trials_on_a_folder_without_a_run_exits_6(tmp_path):
    result = invoke("trials", tmp_path)
    assert_one_error_line(result, EXIT_RUN, "holds no autotl run", "run.json")


def test_best_on_a_folder_without_a_run_exits_6(tmp_path):
    result = invoke("best", tmp_path)
    assert_one_error_line(result, EXIT_RUN, "holds no autotl run")


def test_trials_without_a_run_folder_or_storage_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("AUTOTL_STORAGE", raising=False)
    result = invoke("trials")
    assert_one_error_line(result, EXIT_USAGE, "give a run folder")


def test_trials_with_an_unreadable_run_file_exits_6(tmp_path):
    (tmp_path / "run.json").write_text("{not json")
    result = invoke("trials", tmp_path)
    assert_one_error_line(result, EXIT_RUN, "run.json is unreadable")


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
