"""The text-pair task passes autotl's task conformance kit, up to a search, an export and a prediction, and
refuses bad data with one clear line."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from tiny import make_pairs, save_tiny_bert

from autotl.errors import DataError
from autotl.testing import TASK_CHECKS, task_checks
from autotl_textpairs import TextPairClassification
from autotl_transformers import TransformersFamily

# the tiny model's folder: named when the checks are collected, written by the session fixture below
BERT = Path(tempfile.gettempdir()) / f"autotl-textpairs-tiny-bert-{os.getpid()}"


@pytest.fixture(scope="session", autouse=True)
def tiny_bert():
    save_tiny_bert(BERT)
    yield
    shutil.rmtree(BERT, ignore_errors=True)


def tiny_pairs(folder: Path) -> Path:
    return make_pairs(folder)


def missing_column(folder: Path) -> Path:
    (folder / "train.csv").write_text("text_a,label\nthe tea was good,agree\n", encoding="utf-8")
    return folder


def one_text_empty(folder: Path) -> Path:
    (folder / "train.csv").write_text("text_a,text_b,label\nthe tea,,agree\n", encoding="utf-8")
    return folder


def unknown_test_label(folder: Path) -> Path:
    make_pairs(folder, splits=("train",))
    (folder / "test.csv").write_text("text_a,text_b,label\nthe tea,the box,maybe\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("check", task_checks(TextPairClassification(), tiny_pairs, TransformersFamily(), str(BERT),
                                              params={"max_length": 24},
                                              bad_data=[missing_column, one_text_empty, unknown_test_label]),
                         ids=str)
def test_text_pairs_conform(check):
    check()


@pytest.mark.parametrize("maker, message", [
    (missing_column, r"train.csv: no column 'text_b' in the header \(text_a, label\)"),
    (one_text_empty, r"train.csv:2: the text_b column is empty"),
    (unknown_test_label, r"test.csv: label 'maybe' never occurs in train.csv"),
])
def test_bad_data_is_named(maker, message, tmp_path):
    with pytest.raises(DataError, match=message):
        TextPairClassification().load(maker(tmp_path), seed=0, val_fraction=0.25, options={})


def test_pairs_come_from_csv_rows_tuples_and_stdin(tmp_path):
    task = TextPairClassification()
    root = make_pairs(tmp_path / "data")
    named = task.read_inputs([str(root / "test.csv")])
    assert named[0][0] == f"{root / 'test.csv'}:2" and set(named[0][1]) == {"text_a", "text_b", "label"}
    assert task.read_inputs(["-"], stdin=io.StringIO("the tea\tthe box\n\nmy coffee\tit was bad\n")) == [
        ("line 1", ("the tea", "the box")), ("line 3", ("my coffee", "it was bad"))]
    with pytest.raises(DataError, match="line 1: no tab"):
        task.read_inputs(["-"], stdin=io.StringIO("one text only\n"))
    backbone = TransformersFamily().get(str(BERT))
    settings = task.export_settings({}, backbone, {"max_length": 24})
    by_row = task.preprocess_for_predict([named[0][1]], backbone, settings)
    by_tuple = task.preprocess_for_predict([(named[0][1]["text_a"], named[0][1]["text_b"])], backbone, settings)
    assert all((by_row.inputs[k] == by_tuple.inputs[k]).all() for k in by_row.inputs)
    assert by_row.inputs["token_type_ids"].max() == 1  # the second text is segment B


def test_the_kit_runs_every_check():
    assert len(task_checks(TextPairClassification(), tiny_pairs, TransformersFamily(), "m")) == len(TASK_CHECKS)
