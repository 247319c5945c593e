"""autotl.testing's task kit: the built-in image and text classification tasks pass it, up to a real search,
export and predict; broken tasks fail with messages that name the task, the check and what broke."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import TINY, make_image_folder

import tinybert
from autotl.testing import TASK_CHECKS, check_task, task_checks
from autotl_image import ImageClassification
from autotl_text import TextClassification
from autotl_timm import TimmFamily
from autotl_transformers import TransformersFamily


def tiny_images(folder: Path) -> Path:
    return make_image_folder(folder, per_class=8, size=24)


def tiny_texts(folder: Path) -> Path:
    return tinybert.make_text_folder(folder, per_class=10)


def no_test_split(folder: Path) -> Path:
    """Texts with a label column that another name holds: `load` must say which column is missing."""
    return tinybert.make_text_folder(folder, per_class=4, splits=("train",), columns=("text", "category"))


@pytest.fixture(scope="module")
def image_checks(tmp_path_factory):
    weights = tmp_path_factory.mktemp("kit-weights") / "tiny.safetensors"
    from tiny import save_tiny_weights

    save_tiny_weights(weights)
    checks = task_checks(ImageClassification(), tiny_images, TimmFamily(), TINY, weights={TINY: str(weights)},
                         params={"resolution": 32, "augment": "none"})
    return {check.name: check for check in checks}


@pytest.fixture(scope="module")
def text_checks(tmp_path_factory):
    bert = str(tinybert.save_tiny_bert(tmp_path_factory.mktemp("kit") / "tinybert"))
    checks = task_checks(TextClassification(), tiny_texts, TransformersFamily(), bert, params={"max_length": 16},
                         bad_data=[no_test_split])
    return {check.name: check for check in checks}


# -- the tasks plugin's tasks (autotl_tasks): other targets (a number, a set of labels, a tag per word) ------

def _kit_makers():
    from test_image_tasks import multilabel_folder, regression_folder, unnamed_image_column
    from test_text_tasks import label_set_rows, number_rows, write_table
    from test_tokens import make_conll

    return {
        "text-regression": (lambda f: write_table(f, number_rows, "target", sizes=(("train", 32), ("test", 12))), {}),
        "text-multilabel": (lambda f: write_table(f, label_set_rows, "label", sizes=(("train", 40), ("test", 12))),
                            {}),
        # max_length 8: sentences of more than 6 words take several windows (rows) each
        "token-classification": (lambda f: make_conll(f, sentences=(("train", 24), ("test", 8))),
                                 {"params": {"max_length": 8}}),
        "image-regression": (lambda f: regression_folder(f, counts=(("train", 24), ("test", 8))),
                             {"sources": lambda d: [str(d / "test.csv")], "bad_data": [unnamed_image_column]}),
        "image-multilabel": (lambda f: multilabel_folder(f, counts=(("train", 28), ("test", 8))),
                             {"sources": lambda d: [str(d / "test.csv")], "bad_data": [unnamed_image_column]}),
    }


@pytest.fixture(scope="module")
def plugin_task_checks(tmp_path_factory):
    """The kit's checks of each task of the tasks plugin, built once per task (its data and model shared)."""
    from tiny import save_tiny_weights

    from autotl.plugins import get_registry

    weights = save_tiny_weights(tmp_path_factory.mktemp("kit-weights") / "tiny.safetensors")
    bert = str(tinybert.save_tiny_bert(tmp_path_factory.mktemp("kit") / "tinybert"))
    tasks = get_registry().tasks
    built = {}
    for name, (maker, extra) in _kit_makers().items():
        task = tasks[name]
        if task.modality == "image":
            backbone = dict(family=TimmFamily(), model=TINY, weights={TINY: str(weights)},
                            params={"resolution": 32, "augment": "none"})
        else:
            backbone = dict(family=TransformersFamily(), model=bert, params={"max_length": 16})
        built[name] = {c.name: c for c in task_checks(task, maker, **{**backbone, **extra})}
    return built


@pytest.mark.parametrize("name", TASK_CHECKS)
@pytest.mark.parametrize("task", ["text-regression", "text-multilabel", "token-classification", "image-regression",
                                  "image-multilabel"])
def test_the_tasks_plugins_tasks_pass_the_task_kit(task, name, plugin_task_checks):
    plugin_task_checks[task][name]()


@pytest.mark.parametrize("name", TASK_CHECKS)
def test_image_classification_passes_the_task_kit(name, image_checks):
    image_checks[name]()


@pytest.mark.parametrize("name", TASK_CHECKS)
def test_text_classification_passes_the_task_kit(name, text_checks):
    text_checks[name]()


def test_checks_have_readable_ids():
    checks = task_checks(TextClassification(), Path("nowhere"), TransformersFamily(), "m")
    assert [str(c) for c in checks] == [f"text-classification[{name}]" for name in TASK_CHECKS]


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown check.*lodd"):
        task_checks(TextClassification(), Path("x"), TransformersFamily(), "m", checks=["lodd"])
    with pytest.raises(TypeError, match="not an autotl.Task"):
        task_checks(object(), Path("x"), TransformersFamily(), "m")
    with pytest.raises(TypeError, match="not an autotl.BackboneFamily"):
        task_checks(TextClassification(), Path("x"), object(), "m")


# -- broken tasks fail, saying what broke ------------------------------------------------------------

class ShuffledPredictions(TextClassification):
    """Predicts its inputs in reverse order: what a bundle giving predictions out of file order looks like."""

    def preprocess_for_predict(self, raw, backbone, settings):
        return super().preprocess_for_predict(list(raw)[::-1], backbone, settings)


class CrashesOnEmptyFolders(TextClassification):
    def load(self, path, *, seed, val_fraction, options):
        if Path(path).is_dir() and not any(Path(path).iterdir()):
            raise KeyError("train")
        return super().load(path, seed=seed, val_fraction=val_fraction, options=options)


class LacksAMetric(TextClassification):
    class Target(type(TextClassification.target)):
        def score(self, outputs, labels, calibration):
            scores = super().score(outputs, labels, calibration)
            scores.pop("macro_f1")
            return scores

    target = Target()


class UnseededSplit(TextClassification):
    def load(self, path, *, seed, val_fraction, options):
        import random

        return super().load(path, seed=random.randrange(10**6), val_fraction=val_fraction, options=options)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return str(tinybert.save_tiny_bert(tmp_path_factory.mktemp("kit") / "tinybert"))


@pytest.mark.parametrize("task, check, message", [
    (ShuffledPredictions(), "predict", r"text-classification \[predict\]: predictions of what read_inputs\(\) gives "
                                       r"for the test split, in its order, differ from the search's"),
    (CrashesOnEmptyFolders(), "bad_data", r"\[bad_data\]: loading an empty folder raised KeyError: 'train', not "
                                          r"autotl.errors.DataError"),
    (LacksAMetric(), "metrics", r"\[metrics\]: target.score\(\) on the validation split lacks the declared metric\(s\) "
                                r"macro_f1"),
    (UnseededSplit(), "split", r"\[split\]: loading again with the same seed gave another validation split"),
], ids=["predict", "bad_data", "metrics", "split"])
def test_a_broken_task_fails_with_a_message_naming_what_broke(task, check, message, tiny_bert):
    with pytest.raises(AssertionError, match=message):
        check_task(task, tiny_texts, TransformersFamily(), tiny_bert, params={"max_length": 16}, checks=[check])
