"""A search space fitted to the data: the rules the built-in tasks fit ranges by, the recipe's `fit: data` marker
(a range without it is never changed), and a search that fits, prints and records its space."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tiny import TINY, make_image_folder, save_tiny_weights

from autotl import FittedRange
from autotl.controller import Search, SearchOptions
from autotl.errors import PluginError, UsageError
from autotl.fitted_space import apply_fitted, fit_space
from autotl.leaderboard import best_summary
from autotl.params import parameters_for
from autotl.plugins import get_registry
from autotl.progress import Reporter
from autotl.recipes import load_recipe, parse_recipe
from autotl.records import StudyRecord
from autotl_image import ImageClassification, fitted_resolutions
from autotl_tasks.fitting import FEW_SAMPLES, MANY_SAMPLES, epochs_by_samples
from autotl_text import fitted_max_length


# -- the rules ---------------------------------------------------------------------------------------
def test_large_images_get_resolutions_up_to_224():
    assert fitted_resolutions(480, 224).choices == [96, 128, 160, 224]
    assert fitted_resolutions(179, 224).choices == [96, 128, 160, 224]  # upscaled by one step at most


def test_the_models_native_size_caps_the_resolutions():
    fitted = fitted_resolutions(480, 192)
    assert fitted.choices == [96, 128, 160, 192]
    assert fitted.why == "median image side 480 px; the models' native size 192 px"


def test_medium_images_get_resolutions_up_to_the_first_step_above_their_side():
    assert fitted_resolutions(150, 224).choices == [96, 128, 160]


def test_thumbnails_get_the_two_lowest_resolutions():
    fitted = fitted_resolutions(28, 224)
    assert fitted.choices == [96, 128]
    assert fitted.why == "median image side 28 px"


def test_max_length_covers_the_95th_percentile_in_steps_of_32():
    fitted = fitted_max_length(list(range(10, 110)), 512, "m")
    assert fitted.choices == [64, 128]  # median 59.5 -> 64, 95th percentile 104 -> 128


def test_max_length_is_capped_at_what_the_model_takes():
    assert fitted_max_length([900] * 20, 512, "m").choices == [512]


def test_epochs_stretch_for_few_samples_and_shrink_for_many():
    class Fallback:
        choices, low, high = None, 8, 14

    assert [(f.low, f.high) for f in epochs_by_samples(FEW_SAMPLES, Fallback)] == [(8, 21)]
    assert [(f.low, f.high) for f in epochs_by_samples(MANY_SAMPLES, Fallback)] == [(4, 7)]
    assert epochs_by_samples(FEW_SAMPLES + 1, Fallback) == []


def test_a_fitted_range_needs_choices_or_bounds():
    with pytest.raises(PluginError):
        FittedRange("resolution", "why")


# -- the recipe's marker -------------------------------------------------------------------------------
def recipe(space: dict, start_with=()):
    return parse_recipe({"task": "image-classification", "space": {"lr": {"low": 1e-3, "high": 1e-2}, **space},
                         "start_with": list(start_with)}, "test")


def test_the_built_in_recipes_mark_their_data_dependent_ranges():
    assert load_recipe("image-classification").space["resolution"].fit
    assert load_recipe("text-classification").space["max_length"].fit


def test_a_fit_other_than_data_is_refused():
    with pytest.raises(UsageError, match="space.resolution.fit"):
        recipe({"resolution": {"choices": [96], "fit": "images"}})


def test_a_range_set_explicitly_is_never_fitted():
    explicit = recipe({"resolution": {"choices": [96, 128]}})
    fitted = apply_fitted(explicit, [{"param": "resolution", "choices": [96, 128, 160, 224], "why": "large"}])
    assert fitted.space["resolution"].choices == (96, 128)


def test_a_range_marked_fit_data_takes_the_fitted_one_and_start_points_move_into_it():
    marked = recipe({"resolution": {"choices": [96, 128], "fit": "data"}, "epochs": {"low": 8, "high": 14, "fit": "data"}},
                    start_with=[{"model": "m", "resolution": 128, "epochs": 30}])
    fitted = apply_fitted(marked, [{"param": "resolution", "choices": [64, 96], "why": "thumbnails"},
                                   {"param": "epochs", "low": 8, "high": 21, "why": "few"}])
    assert fitted.space["resolution"].choices == (64, 96)
    assert (fitted.space["epochs"].low, fitted.space["epochs"].high) == (8, 21)
    assert fitted.start_with == [{"model": "m", "resolution": 96, "epochs": 21}]


# -- a search -------------------------------------------------------------------------------------------
class Messages(Reporter):
    def __init__(self):
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def search_on_large_images(tmp_path: Path, space: dict) -> tuple[Search, Messages]:
    folder = tmp_path / "data"
    if not folder.exists():
        make_image_folder(folder, per_class=3, size=256)
    raw = {"task": "image-classification", "data": {"val_fraction": 0.34},
           "space": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}, **space},
           "fixed": {"epochs": 1, "batch_size": 8, "augment": "none"}, "pruner": {"name": "none"},
           "prerank": {"enabled": False}, "selection": {"cv_below": 0}, "converged_head": {"enabled": False}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    weights = save_tiny_weights(tmp_path / "tiny.safetensors")
    options = SearchOptions(task="image-classification", data=folder, out=tmp_path / "run", recipe=str(path),
                            models=[TINY], weights={TINY: str(weights)}, trials=1, seed=0)
    messages = Messages()
    search = Search(options, get_registry(), messages)
    search.open()
    return search, messages


def test_a_search_on_large_images_fits_prints_and_records_its_resolutions(tmp_path):
    search, messages = search_on_large_images(tmp_path, {"resolution": {"choices": [32], "fit": "data"}})
    try:
        search.run()
    finally:
        search.close()
    assert "Space fitted to the data: resolution choices [96, 128, 160, 224]: median image side 256 px" \
        in messages.lines
    recorded = StudyRecord.from_study(search.study).fitted_space
    assert recorded == [{"param": "resolution", "choices": [96, 128, 160, 224],
                         "why": "median image side 256 px"}]
    assert best_summary(search.study)["fitted_space"] == recorded
    assert search.study.trials[0].params["resolution"] in (96, 128, 160, 224)

    again, messages = search_on_large_images(tmp_path, {"resolution": {"choices": [32], "fit": "data"}})
    again.close()  # resumed: the recorded ranges, fitted nothing again
    assert not any(line.startswith("Space fitted") for line in messages.lines)
    assert again.recipe.space["resolution"].choices == (96, 128, 160, 224)


def test_a_search_whose_recipe_sets_the_range_fits_nothing(tmp_path):
    search, messages = search_on_large_images(tmp_path, {"resolution": {"choices": [32, 48]}})
    search.close()
    assert not any(line.startswith("Space fitted") for line in messages.lines)
    assert search.recipe.space["resolution"].choices == (32, 48)
    assert StudyRecord.from_study(search.study).fitted_space is None


def test_the_text_task_fits_max_length_to_the_token_lengths_of_its_training_texts(tmp_path):
    import tinybert
    from autotl_text import TextClassification
    from autotl_transformers import TransformersFamily

    backbone = TransformersFamily().get(str(tinybert.save_tiny_bert(tmp_path / "m")))
    task = TextClassification()
    data = task.load(tinybert.make_text_folder(tmp_path / "data"), seed=0, val_fraction=0.25, options={})
    asked = recipe({"max_length": {"choices": [64, 128], "fit": "data"}}).space
    (fitted,) = task.fitted_space(data, {"tiny": backbone}, asked)
    assert fitted.param == "max_length" and fitted.choices == [32]  # sentences of 4 to 15 words
    assert "95th percentile of the training texts" in fitted.why and "tiny's tokenizer" in fitted.why


class Proposing(ImageClassification):
    """The image task, proposing fixed ranges whatever the data."""

    def __init__(self, *proposals: FittedRange):
        self.proposals = proposals

    def fitted_space(self, data, backbones, asked):
        return self.proposals


def test_fit_space_applies_only_what_the_recipe_marks_and_says_why():
    task = Proposing(FittedRange("resolution", "large", choices=[96, 224]), FittedRange("epochs", "few", low=2, high=9))
    said: list[str] = []
    marked = recipe({"resolution": {"choices": [96], "fit": "data"}, "epochs": {"low": 2, "high": 4}})
    fitted_recipe, fitted = fit_space(task, None, {}, marked, parameters_for(task, []), said.append)
    assert fitted == [{"param": "resolution", "choices": [96, 224], "why": "large"}]
    assert said == ["Space fitted to the data: resolution choices [96, 224]: large"]
    assert (fitted_recipe.space["epochs"].low, fitted_recipe.space["epochs"].high) == (2, 4)  # the user's


def test_a_fitted_value_the_parameter_does_not_take_is_the_plugins_error():
    task = Proposing(FittedRange("resolution", "tiny", choices=[8]))
    marked = recipe({"resolution": {"choices": [96], "fit": "data"}})
    with pytest.raises(PluginError, match="resolution"):
        fit_space(task, None, {}, marked, parameters_for(task, []), print)
