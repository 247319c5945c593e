"""Recipes: the built-in ones load, and a broken recipe is a usage error that names what to fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from autotl.errors import UsageError
from autotl.params import CORE, Param, parameters_for
from autotl.plugins import get_registry
from autotl.recipes import builtin_recipes, load_recipe, parse_recipe

TINY_RECIPE = Path(__file__).resolve().parent / "data" / "tiny-image.yaml"
ROOT = Path(__file__).resolve().parent.parent
#: every recipe file of the repository: the built-in ones, the benchmarks' and the tests'.
RECIPE_FILES = sorted([*builtin_recipes().values(), *(ROOT / "benchmarks" / "recipes").glob("*.yaml"),
                       *(ROOT / "tests" / "data").rglob("*.yaml")])

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


# -- typed parameters (autotl/params.py): checked against the task's declarations when the recipe is read ----

def declared(task: str = "image-classification"):
    registry = get_registry()
    return parameters_for(registry.tasks[task], registry.families_for(registry.tasks[task]))


def valid(**sections) -> dict:
    """VALID as a mapping, with entries added to (or, for a list, replacing) its sections."""
    raw = yaml.safe_load(VALID)
    for section, entries in sections.items():
        raw[section] = {**(raw.get(section) or {}), **entries} if isinstance(entries, dict) else entries
    return raw


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_of_the_repository_parses_against_its_tasks_declarations(path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    recipe = parse_recipe(raw, str(path), declared(raw["task"]))
    assert all(spec.kind in ("int", "float", "categorical") for spec in recipe.space.values())


REFUSED = [
    ("misspelt-space-key", dict(space={"lerning_rate": {"low": 1e-3, "high": 1e-2}}),
     r"recipe r\.yaml: space: unknown parameter 'lerning_rate' for task 'image-classification' \(did you mean 'lr'\?\); "
     r"known: augment, batch_size, "),
    ("alias-in-fixed", dict(fixed={"learning_rate": 0.01}), r"fixed: unknown parameter 'learning_rate' .*did you mean 'lr'"),
    ("fixed-precision-fp16", dict(fixed={"precision": "fp16"}),
     r"fixed\.precision: must be one of auto, fp32, bf16, not 'fp16'"),
    ("fixed-head-init", dict(fixed={"head_init": "random"}), r"fixed\.head_init: must be one of zeros, default, not 'random'"),
    ("ema-decay-one", dict(fixed={"ema_decay": 1}), r"fixed\.ema_decay: must be a number from 0 to 1 \(1 excluded\), not 1$"),
    ("ema-decay-negative", dict(fixed={"ema_decay": -0.5}), r"fixed\.ema_decay: must be a number from 0 to 1"),
    ("ema-decay-word", dict(fixed={"ema_decay": "high"}), r"fixed\.ema_decay: must be a number, not 'high'"),
    ("label-smoothing-above-one", dict(space={"label_smoothing": {"low": 0, "high": 1.5}}),
     r"space\.label_smoothing\.high: must be a number from 0 to 1, not 1\.5"),
    ("int-range-fraction", dict(space={"epochs": {"low": 2.5, "high": 4}}),
     r"space\.epochs\.low: must be a whole number, 1 or more, not 2\.5"),
    ("int-fixed-fraction", dict(fixed={"batch_size": 8.5}), r"fixed\.batch_size: must be a whole number, 1 or more, not 8\.5"),
    ("int-choice-fraction", dict(space={"lora_rank": {"choices": [0, 4.5]}}),
     r"space\.lora_rank\.choices: must be a whole number, 0 or more, not 4\.5"),
    ("categorical-as-range", dict(space={"head_init": {"low": 0, "high": 1}}),
     r"space\.head_init: `head_init` takes one of zeros, default: search it as \{choices: \[\.\.\.\]\}"),
    ("freeze-choices", dict(space={"freeze": {"choices": [0, 2]}}), r"space\.freeze: takes \{low, high\} bounds .*not choices"),
    ("model-searched", dict(space={"model": {"choices": ["resnet18"]}}), r"space\.model: `model` is neither searched nor fixed"),
    ("model-fixed", dict(fixed={"model": "resnet18"}), r"fixed\.model: .*list the models under `models:`"),
    ("other-tasks-parameter", dict(fixed={"max_length": 64}), r"fixed: unknown parameter 'max_length' for task"),
    ("task-choice", dict(fixed={"augment": "rotate"}), r"fixed\.augment: must be one of none, flip, flip\+shift, shift, not 'rotate'"),
    ("task-int-too-small", dict(fixed={"resolution": 4}), r"fixed\.resolution: must be a whole number, 16 or more, not 4"),
    ("start-with-misspelt", dict(start_with=[{"lr": 1e-3, "resolutoin": 32}]),
     r"start_with\[0\]: unknown parameter 'resolutoin' for task 'image-classification' \(did you mean 'resolution'\?\)"),
    ("start-with-bad-value", dict(start_with=[{"lr": "fast"}]), r"start_with\[0\]\.lr: must be a number, not 'fast'"),
]


@pytest.mark.parametrize("sections, message", [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_a_parameter_its_declaration_refuses_is_a_usage_error_naming_section_name_and_value(sections, message):
    with pytest.raises(UsageError, match=message):
        parse_recipe(valid(**sections), "r.yaml", declared())


def test_the_other_task_declares_its_own_parameters():
    with pytest.raises(UsageError, match=r"fixed: unknown parameter 'resolution' for task 'text-classification'"):
        parse_recipe(valid(task="text-classification", fixed={"resolution": 64}), "r.yaml", declared("text-classification"))
    with pytest.raises(UsageError, match=r"fixed\.max_length: must be a whole number, 8 or more, not 4"):
        parse_recipe(valid(task="text-classification", fixed={"max_length": 4}), "r.yaml", declared("text-classification"))


def test_numbers_yaml_reads_as_strings_are_taken_as_numbers_of_the_declared_type():
    raw = yaml.safe_load("task: image-classification\nspace:\n  lr: {choices: [1e-3, 1e-2]}\n"
                         "fixed: {weight_decay: 1e-4, epochs: '3'}\nstart_with:\n  - {lr: 1e-3, resolution: '64'}\n")
    assert raw["fixed"]["weight_decay"] == "1e-4"  # what PyYAML (YAML 1.1) gives
    recipe = parse_recipe(raw, "r.yaml", declared())
    assert recipe.space["lr"].choices == (0.001, 0.01)
    assert recipe.fixed == {"weight_decay": 0.0001, "epochs": 3}
    assert recipe.start_with == [{"lr": 0.001, "resolution": 64}]
    assert type(recipe.fixed["epochs"]) is int and type(recipe.start_with[0]["resolution"]) is int


def test_the_search_kind_follows_the_declared_type_not_the_bounds():
    recipe = parse_recipe(valid(space={"label_smoothing": {"low": 0, "high": 1}, "epochs": {"low": 1, "high": 8, "log": True},
                                       "weight_decay": {"low": 0, "high": 1}}), "r.yaml", declared())
    assert recipe.space["label_smoothing"].kind == "float"
    assert recipe.space["weight_decay"].kind == "float"
    assert recipe.space["epochs"].kind == "int" and recipe.space["epochs"].log


def test_a_task_that_declares_nothing_gets_the_names_the_core_does_not_know_unchecked():
    class Undeclared:  # a third-party task written before declarations: `parameters` is None
        name = "audio-tagging"
        parameters = None

    parameters = parameters_for(Undeclared(), [])
    assert not parameters.strict
    recipe = parse_recipe(valid(task="audio-tagging", space={"hop": {"low": 0, "high": 1}}, fixed={"window": "hann"}),
                          "r.yaml", parameters)
    assert recipe.fixed["window"] == "hann" and recipe.space["hop"].kind == "int"  # guessed from the bounds, as before
    with pytest.raises(UsageError, match=r"fixed\.ema_decay: must be a number from 0 to 1"):
        parse_recipe(valid(task="audio-tagging", fixed={"ema_decay": 2}), "r.yaml", parameters)


def test_a_backbone_family_can_declare_parameters_too():
    class Family:
        parameters = (Param("crop", "float", low=0, high=1, default=0.875),)

    registry = get_registry()
    task = registry.tasks["image-classification"]
    parameters = parameters_for(task, [*registry.families_for(task), Family()])
    assert parse_recipe(valid(fixed={"crop": "0.9"}), "r.yaml", parameters).fixed["crop"] == 0.9
    with pytest.raises(UsageError, match=r"fixed\.crop: must be a number from 0 to 1, not 2"):
        parse_recipe(valid(fixed={"crop": 2}), "r.yaml", parameters)


def test_every_core_parameter_has_a_type_a_doc_and_a_default_its_declaration_takes():
    for param in CORE.values():
        assert param.doc
        if param.default is not None:
            assert param.check(param.default) == param.default
