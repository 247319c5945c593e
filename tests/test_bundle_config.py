"""A bundle's config.json as one record (autotl/bundle_config.py): bundles written before it still load,
it writes the same keys, the card comes from it, and a config that is not one is refused in one line.

tests/data/bundle-v1 is a bundle written by autotl at 6f673bc (before BundleConfig) from a one-trial
tiny search with ``--format onnx torchscript`` (the TorchScript file left out: autotl never loads
it); tests/data/bundle-v1-refit holds the config.json and README.md of a ``--refit`` export of it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tiny import make_image_folder

import autotl
from autotl.bundle_config import BundleConfig
from autotl.card import model_card
from autotl.cli import cli
from autotl.errors import BundleError

DATA = Path(__file__).parent / "data"
V1 = DATA / "bundle-v1"
V1_REFIT = DATA / "bundle-v1-refit"


def predict(*args):
    result = CliRunner().invoke(cli, ["predict", *[str(a) for a in args]])
    return result.exit_code, result.output


def a_copy(tmp_path: Path, config: dict | None = None) -> Path:
    """The v1 bundle copied, its config.json replaced by ``config`` if given."""
    folder = tmp_path / "bundle"
    shutil.copytree(V1, folder)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_a_bundle_written_before_the_config_record_loads_and_predicts(tmp_path):
    images = make_image_folder(tmp_path / "images", per_class=1)
    files = sorted((images / "test").rglob("*.png"))
    bundle = autotl.load(V1, device="cpu")
    assert bundle.label_names == ["dark", "light", "striped"]
    assert bundle.config.backbone.family == "timm" and bundle.config.trial.number == 0
    predictions = bundle.predict(files)
    assert len(predictions) == len(files) and {p.label for p in predictions} <= set(bundle.label_names)
    code, output = predict(V1, *files[:2])
    assert code == 0 and len(output.strip().splitlines()) == 2, output


def test_the_onnx_engine_of_a_bundle_written_before_predicts_what_torch_does(tmp_path):
    pytest.importorskip("onnxruntime")
    files = sorted((make_image_folder(tmp_path / "images", per_class=1) / "test").rglob("*.png"))
    with_torch = autotl.load(V1, device="cpu").probabilities(files)
    with_onnx = autotl.load(V1, device="cpu", engine="onnx").probabilities(files)
    assert torch.allclose(with_torch, with_onnx, atol=1e-4)


@pytest.mark.parametrize("folder", [V1, V1_REFIT], ids=["bundle", "refit"])
def test_the_record_writes_back_every_key_of_a_config_in_its_order(folder):
    written = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    again = BundleConfig.read(folder).to_json()
    assert again == written
    assert list(again) == list(written) and list(again["search"]) == list(written["search"])


#: the card's wording that changed since the v1 bundles were written, so that it names no kind of task: (the old
#: text, the new one). Everything else of the card is as it was.
REWORDED = [
    ("(3 classes)", "(3 labels)"),
    ("Classes, in the order", "Labels, in the order"),
    ("0.25 of each class of the training data is held out for validation (stratified, seeded).",
     "0.25 of the training data is held out for validation (seeded, stratified as the task draws it)."),
    ("(validation curve [0.6667])", "(validation accuracy per epoch [0.6667])"),
    ("# label and probability per input", "# each input and what the model predicts for it"),
    ("autotl predict BUNDLE INPUT... --top-k 3 --json", "autotl predict BUNDLE INPUT... --json"),
    ("print(p.input, p.label, p.probability)", "print(p.as_dict())"),
    ("training data: the 3 classes above, as they appear", "training data, with the 3 labels above, as they appear"),
    ('Every input gets one of these labels: the model has no "none of these"; a low',
     'The model predicts only in those terms: it has no "none of these", and a low'),
    ("expect lower accuracy on data", "expect worse scores on data"),
]


@pytest.mark.parametrize("folder", [V1, V1_REFIT], ids=["bundle", "refit"])
def test_the_card_is_written_from_the_record_as_before(folder):
    expected = (folder / "README.md").read_text(encoding="utf-8")
    for old, new in REWORDED:
        assert expected.count(old) == 1, old
        expected = expected.replace(old, new)
    assert model_card(BundleConfig.read(folder)) == expected


def test_a_config_holding_only_what_loading_needs_loads(tmp_path):
    written = json.loads((V1 / "config.json").read_text(encoding="utf-8"))
    needed = {k: written[k] for k in ("format", "format_version", "task", "label_names", "backbone",
                                      "preprocessing", "files")}
    needed["weights"] = {"file": "model.safetensors", "sha256": written["weights"]["sha256"]}
    bundle = autotl.load(a_copy(tmp_path, needed), device="cpu")
    assert bundle.config.trial is None and bundle.config.weights.lora_merged
    assert bundle.label_names == written["label_names"]


def test_a_config_without_label_names_is_refused_in_one_line(tmp_path):
    config = json.loads((V1 / "config.json").read_text(encoding="utf-8"))
    del config["label_names"]
    code, output = predict(a_copy(tmp_path, config), tmp_path)
    assert code == BundleError.exit_code, output
    assert output.startswith("Error: ") and output.count("\n") == 1
    assert "config.json is not a complete bundle config: it lacks label_names; export the bundle again" in output


def test_a_config_whose_part_is_not_an_object_is_refused_in_one_line(tmp_path):
    config = json.loads((V1 / "config.json").read_text(encoding="utf-8"))
    config["backbone"] = "timm"
    code, output = predict(a_copy(tmp_path, config), tmp_path)
    assert code == BundleError.exit_code and output.count("\n") == 1, output
    assert "backbone is not an object; export the bundle again" in output


@pytest.mark.parametrize("text, message", [
    ("{not json", "config.json is unreadable"),
    ('{"format": "something-else"}', "config.json is not the config of an autotl bundle"),
    ('{"format": "autotl-bundle", "format_version": 99}', "was written by a newer autotl (bundle format 99); "
                                                          "upgrade autotl"),
])
def test_a_config_that_is_not_one_this_autotl_reads_is_refused(tmp_path, text, message):
    folder = a_copy(tmp_path)
    (folder / "config.json").write_text(text, encoding="utf-8")
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BundleConfig.read(folder)
    code, output = predict(folder, tmp_path)
    assert code == BundleError.exit_code and message in output and output.count("\n") == 1, output
