"""Recipes: the built-in ones load, and a broken recipe is a usage error that names what to fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from autotl.errors import UsageError
from autotl.plugins import get_registry
from autotl.recipes import builtin_recipes, load_recipe, parse_recipe

TINY_RECIPE = Path(__file__).resolve().parent / "data" / "tiny-image.yaml"

VALID = """\
task: image-classification
space:
  freeze: {low: 0}
  lora_rank: {choices: [0, 4]}
  lr: {low: 1.0e-3, high: 1.0e-2, log: true}
  epochs: {low: 2, high: 4}
"""


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def with_space(**fields: str) -> str:
    """VALID with extra or replaced ``space`` entries, given as YAML flow mappings."""
    lines = VALID.splitlines()
    kept = [line for line in lines if not any(line.startswith(f"  {name}:") for name in fields)]
    return "\n".join(kept + [f"  {name}: {spec}" for name, spec in fields.items()]) + "\n"


# -- built-in recipes --------------------------------------------------------------------------------

def test_there_is_a_built_in_recipe_for_image_classification():
    assert "image-classification" in builtin_recipes()


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_every_built_in_recipe_loads_and_names_an_installed_task(name):
    recipe = load_recipe(name)
    assert recipe.task in get_registry().tasks
    assert recipe.source == str(builtin_recipes()[name])
    assert "lr" in recipe.space or "lr" in recipe.fixed


def test_the_image_recipe_starts_with_models_of_the_offline_zoo():
    recipe = load_recipe("image-classification")
    zoo = get_registry().families["timm"].default_zoo()
    assert recipe.start_with
    assert all(point["model"] in zoo for point in recipe.start_with)
    assert recipe.val_fraction == 0.15


def test_a_recipe_file_loads_by_path():
    recipe = load_recipe(str(TINY_RECIPE))
    assert recipe.task == "image-classification"
    assert recipe.val_fraction == 0.25
    assert recipe.fixed["resolution"] == 32


def test_parameter_kinds_follow_the_ranges():
    recipe = parse_recipe(yaml.safe_load(VALID), "inline")
    assert recipe.space["lr"].kind == "float"
    assert recipe.space["lr"].log is True
    assert recipe.space["epochs"].kind == "int"
    assert recipe.space["lora_rank"].kind == "categorical"
    assert recipe.space["lora_rank"].choices == (0, 4)
    assert recipe.space["freeze"].high is None  # the model's group count fills it in


def test_without_data_the_validation_fraction_defaults_to_a_fifth(tmp_path):
    assert load_recipe(write(tmp_path, VALID)).val_fraction == 0.2


# -- names that are not recipes -----------------------------------------------------------------------

def test_an_unknown_recipe_name_is_a_usage_error_listing_the_built_in_names():
    with pytest.raises(UsageError, match=r"'no-such-recipe' is neither a file nor a built-in recipe \(.*image-classification"):
        load_recipe("no-such-recipe")


# -- invalid recipes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, line", [
    ("task: image-classification\nspace:\n  lr: {low: 1\n", 4),
    ("task: image-classification\n  space: 1\n", 2),
    ("task: image-classification\nspace:\n\tlr: 1\n", 3),
])
def test_invalid_yaml_is_a_usage_error_naming_the_file_and_line(tmp_path, text, line):
    path = write(tmp_path, text, "broken.yaml")
    with pytest.raises(UsageError, match=rf"recipe {path} at line {line} is not valid YAML"):
        load_recipe(path)


def test_a_recipe_that_is_not_utf8_is_a_usage_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("task: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(UsageError, match=rf"recipe {path}.*not valid YAML"):
        load_recipe(path)


def test_an_empty_recipe_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="top level: must be a mapping"):
        load_recipe(write(tmp_path, ""))


def test_an_unknown_top_level_key_is_a_usage_error_naming_it(tmp_path):
    path = write(tmp_path, VALID + "modles: [resnet18]\n")
    with pytest.raises(UsageError, match=r"modles: unknown key; known keys are .*models"):
        load_recipe(path)


def test_a_missing_task_is_a_usage_error(tmp_path):
    path = write(tmp_path, VALID.replace("task: image-classification\n", ""))
    with pytest.raises(UsageError, match=r": task: missing"):
        load_recipe(path)


def test_low_above_high_is_a_usage_error_naming_the_field(tmp_path):
    path = write(tmp_path, with_space(lr="{low: 0.1, high: 0.01}"))
    with pytest.raises(UsageError, match=r"space\.lr: low \(0\.1\) is above high \(0\.01\)"):
        load_recipe(path)


@pytest.mark.parametrize("low", [0, -0.001])
def test_a_log_scale_with_low_not_above_zero_is_a_usage_error_naming_the_field(tmp_path, low):
    path = write(tmp_path, with_space(lr=f"{{low: {low}, high: 0.01, log: true}}"))
    with pytest.raises(UsageError, match=r"space\.lr: a log scale needs low > 0"):
        load_recipe(path)


@pytest.mark.parametrize("choices", ["4", "[]", "{a: 1}"])
def test_choices_that_are_not_a_non_empty_list_are_a_usage_error_naming_the_field(tmp_path, choices):
    path = write(tmp_path, with_space(lora_rank=f"{{choices: {choices}}}"))
    with pytest.raises(UsageError, match=r"space\.lora_rank: choices must be a non-empty list"):
        load_recipe(path)


def test_a_range_bound_that_is_not_a_number_is_a_usage_error_naming_the_field(tmp_path):
    path = write(tmp_path, with_space(epochs="{low: two, high: 4}"))
    with pytest.raises(UsageError, match=r"space\.epochs\.low: must be a number, not 'two'"):
        load_recipe(path)


def test_a_range_without_high_is_a_usage_error_naming_the_field(tmp_path):
    path = write(tmp_path, with_space(epochs="{low: 2}"))
    with pytest.raises(UsageError, match=r"space\.epochs: needs both low and high"):
        load_recipe(path)


def test_an_unknown_parameter_field_is_a_usage_error_naming_it(tmp_path):
    path = write(tmp_path, with_space(epochs="{low: 2, hi: 4}"))
    with pytest.raises(UsageError, match=r"space\.epochs: unknown field\(s\) hi"):
        load_recipe(path)


def test_a_learning_rate_neither_searched_nor_fixed_is_a_usage_error(tmp_path):
    path = write(tmp_path, "\n".join(line for line in VALID.splitlines() if "lr:" not in line) + "\n")
    with pytest.raises(UsageError, match=r"space: `lr` must be searched or fixed"):
        load_recipe(path)


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.2, "half"])
def test_a_validation_fraction_out_of_range_is_a_usage_error_naming_the_field(tmp_path, value):
    path = write(tmp_path, VALID + f"data: {{val_fraction: {value}}}\n")
    with pytest.raises(UsageError, match=r"data\.val_fraction: must be a number between 0 and 1"):
        load_recipe(path)


def test_models_that_are_not_a_list_of_names_are_a_usage_error(tmp_path):
    path = write(tmp_path, VALID + "models: mobilenetv2_100\n")
    with pytest.raises(UsageError, match=r": models: must be a list of model names"):
        load_recipe(path)
