"""The plugin utilities (autotl/utils.py) and the typed contracts (autotl/contracts.py)."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from torch import nn

import tiny
from autotl import (DataReport, ImagePreprocessing, LoadedData, Preprocessing, SkippedItem, TextPreprocessing,
                    is_under, json_lines, load_without_head, numbered_records, stratified_split)
from autotl.errors import DataError, ModelUnavailableError, PluginError
from autotl.files import write_json
from autotl_image import ImageClassification
from autotl_text import TextClassification

# -- stratified_split: the splits of earlier versions, seed for seed ---------------------------------------

#: what autotl 6f673bc's two copies of the split gave for these labels, seed 7 and a fraction of 0.3.
LABELS = [0, 1, 2] * 5 + [0, 0, 1, 3, 3]
TRAIN_IDX = [1, 2, 3, 4, 5, 6, 9, 10, 12, 14, 16, 17, 19]
VAL_IDX = [0, 7, 8, 11, 13, 15, 18]


def test_the_stratified_split_is_the_one_of_earlier_versions():
    assert stratified_split(LABELS, 4, 0.3, 7) == (TRAIN_IDX, VAL_IDX)
    assert stratified_split(LABELS, 4, 0.3, 8) != (TRAIN_IDX, VAL_IDX)


def test_the_stratified_split_keeps_one_of_each_class_in_train_and_names_a_lonely_class():
    train, val = stratified_split([0, 0, 1, 1, 1], 2, 0.9, 0)
    assert sorted(train + val) == list(range(5)) and {0, 1} <= {[0, 0, 1, 1, 1][i] for i in train}
    with pytest.raises(DataError, match="class 1 has 1 sample"):
        stratified_split([0, 0, 1], 2, 0.5, 0)
    with pytest.raises(DataError, match="^lonely 1 at 2$"):
        stratified_split([0, 0, 1], 2, 0.5, 0, too_few=lambda label, members: f"lonely {label} at {members[0]}")


def test_the_text_task_splits_as_earlier_versions_did(tmp_path):
    labels = "abcabcabcabcabcaabdd"
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"text {i},{c}\n" for i, c in enumerate(labels)))
    data = TextClassification().load(tmp_path, seed=7, val_fraction=0.3, options={})
    assert data.payload.splits["val"][0] == [f"text {i}" for i in VAL_IDX]
    assert data.payload.splits["train"][0] == [f"text {i}" for i in TRAIN_IDX]


def test_the_image_task_splits_as_earlier_versions_did(tmp_path):
    root = tiny.make_image_folder(tmp_path / "data", per_class=7, splits=("train",))
    data = ImageClassification().load(root, seed=5, val_fraction=0.3, options={})
    assert data.payload.splits["val"][2] == [
        "train/dark/train_001.png", "train/dark/train_004.png", "train/light/train_000.png",
        "train/light/train_001.png", "train/striped/train_002.png", "train/striped/train_006.png"]


# -- is_under, load_without_head, numbered_records ---------------------------------------------------------

def test_is_under_takes_whole_module_names_only():
    assert is_under("blocks.1.conv", "blocks.1") and is_under("blocks.1", ["head", "blocks.1"])
    assert not is_under("blocks.10.conv", "blocks.1") and not is_under("blocks", ["blocks.1"])


class _Net(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.head = nn.Linear(3, classes)


def test_load_without_head_keeps_the_new_head_and_refuses_what_does_not_fit():
    source = _Net(1000).state_dict()
    model = _Net(5)
    load_without_head(model, source, ["head"], model_name="'net'", origin="x.pt")
    assert torch.equal(model.body.weight, source["body.weight"]) and model.head.out_features == 5
    for state, shown in (({"body.weight": source["body.weight"]}, "1 missing"),
                         (dict(source, extra=torch.zeros(1)), "1 unexpected"),
                         (dict(source, **{"body.weight": torch.zeros(2, 2)}), "1 of another shape")):
        with pytest.raises(ModelUnavailableError, match=rf"weights from x.pt do not fit 'net': .*{shown}.*; get one"):
            load_without_head(_Net(5), state, ["head"], model_name="'net'", origin="x.pt", hint="get one")


def test_numbered_records_give_the_line_each_record_starts_on_and_go_on_after_bad_csv():
    text = 'text,label\n"two\nlines",a\nplain,b\n"never closed,c\n'
    got = list(numbered_records(csv.reader(io.StringIO(text, newline=""), strict=True)))
    assert [line for line, _ in got] == [1, 2, 4, 5]
    assert got[1][1] == ["two\nlines", "a"] and isinstance(got[-1][1], csv.Error)


def test_json_lines_give_each_object_with_its_line_and_say_what_the_other_lines_are():
    got = list(json_lines('{"a": 1}\n\n[1]\n{oops\n'))
    assert got[0] == (1, {"a": 1}) and got[1] == (3, "a JSON list, not an object")
    assert got[2][0] == 4 and got[2][1].startswith("not valid JSON (")


# -- the typed contracts ------------------------------------------------------------------------------------

class _OldBackbone:
    """A third-party backbone of an earlier version: preprocessing() a plain dict."""

    name, family = "old", "thirdparty"

    def __init__(self, pre):
        self.pre = pre

    def preprocessing(self):
        return self.pre


def test_a_plain_dict_of_an_earlier_backbone_is_converted_and_a_bad_one_refused_naming_it():
    pre = ImagePreprocessing.of(_OldBackbone({"input_size": 32, "mean": [0.5] * 3}))
    assert pre == ImagePreprocessing(input_size=32, mean=(0.5, 0.5, 0.5)) and pre.std == ImagePreprocessing().std
    assert pre["input_size"] == 32 and dict(pre)["interpolation"] == "bilinear"  # the old dict's keys still read
    with pytest.raises(PluginError, match=r"backbone 'old' \(family 'thirdparty'\).*bad value.*three numbers"):
        ImagePreprocessing.of(_OldBackbone({"mean": [0.5]}))
    with pytest.raises(PluginError, match=r"backbone 'old'.*gives no 'tokenizer'.*TextPreprocessing"):
        TextPreprocessing.of(_OldBackbone({"max_length": 64}))
    with pytest.raises(PluginError, match="returned a ImagePreprocessing; a text task needs an autotl.TextPreprocess"):
        TextPreprocessing.of(_OldBackbone(ImagePreprocessing()))
    text = TextPreprocessing.of(_OldBackbone({"tokenizer": "tok", "max_length": "64", "extra": 1}))
    assert (text.tokenizer, text.max_length, text.model_max_length) == ("tok", 64, None)
    assert Preprocessing() == {}
    assert ImagePreprocessing.of(_OldBackbone(Preprocessing())) == ImagePreprocessing()  # Backbone's default


def test_a_data_report_is_typed_keeps_its_json_and_converts_an_earlier_tasks_dict(tmp_path):
    report = DataReport(classes=["a", "b"], counts={"train": {"a": 2, "b": 1}}, val_from_train=True,
                        skipped=[SkippedItem("x.png", "empty file")], root="/data", details={"files": ["x"]})
    assert list(report) == ["root", "classes", "counts", "val_from_train", "skipped", "files"]
    assert report["skipped"] == [{"file": "x.png", "reason": "empty file"}]
    write_json(tmp_path / "r.json", report)
    assert json.loads((tmp_path / "r.json").read_text()) == report.to_dict()
    old = LoadedData(label_names=["a", "b"], fingerprint="f", has_test=False,
                     report={"counts": {"train": {"a": 1}}, "skipped": [{"file": "f", "reason": "r"}], "mine": 1})
    assert isinstance(old.report, DataReport) and old.report.classes == ["a", "b"]
    assert old.report.skipped == [SkippedItem("f", "r")] and old.report.details == {"mine": 1}
    with pytest.raises(PluginError, match="SkippedItem"):
        DataReport.of({"skipped": ["just a name"]})
    with pytest.raises(PluginError, match="LoadedData.report is a list"):
        DataReport.of([])


def test_the_image_settings_a_bundle_records_are_those_of_earlier_versions():
    """What autotl 6f673bc wrote into config.json for this model, key for key (the typed contract changes no JSON)."""
    from autotl_timm import TimmFamily

    backbone = TimmFamily().architecture("tf_efficientnet_lite0")
    settings = ImageClassification().export_settings({}, backbone, {})
    assert json.dumps(settings) == json.dumps({
        "max_side": 512,
        "colour": "RGB: grey and palette converted, alpha composited on white, 16-bit grey scaled to 8 bits",
        "resize": "longer side at most max_side when decoded; then shorter side to resolution, centre crop",
        "resolution": 224, "interpolation": "bicubic", "scale": "pixels / 255, then (x - mean) / std per channel",
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    assert backbone.bundle_files(None)["preprocessing"] == {
        "input_size": [3, 224, 224], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"}
    rebuilt = TimmFamily().from_bundle("tf_efficientnet_lite0", backbone.bundle_files(None), None)
    assert rebuilt.preprocessing() == backbone.preprocessing()
