"""Export and predict through the task's target, for a target that is not one label per item.

A tiny regression-like target (``Level``: one number per image, standardised for training, scored by
mean squared error, lower is better) on the tiny image data: the run is what a search records (the
trial's weights, value, metrics and calibration), made here by a few training steps so that the test
needs nothing of the search path. The bundle must reproduce the recorded validation score with the
recorded calibration, record the target's metric and direction, and predict the target's decoded
dicts, through the Python API and ``autotl predict``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
import pytest
import torch
from click.testing import CliRunner
from tiny import TINY, make_image_folder

from autotl.bundle import load
from autotl import Target, TensorSplit
from autotl.base import Registry, TrialData
from autotl.cli import cli
from autotl.export import ExportOptions, export_bundle
from autotl.files import save_weights
from autotl.inference import forward, predict_outputs
from autotl.network import built
from autotl.plugins import get_registry
from autotl.records import StudyRecord, begin_study, record_trial
from autotl.run import Run
from autotl.runs import locate
from autotl.trial_weights import weights_metadata, weights_path
from autotl_image import ImageClassification


class Level(Target):
    """One number per item: the network's single output is the standardised number."""

    metrics = {"mse": "minimize", "mae": "minimize"}
    primary = "mse"

    def width(self, label_names: Sequence[str]) -> int:
        return 1

    def fit(self, labels: torch.Tensor) -> dict[str, Any]:
        return {"mean": float(labels.mean()), "std": float(labels.std())}

    def loss(self, outputs, labels, calibration, params):
        return torch.nn.functional.mse_loss(outputs[:, 0], (labels - calibration["mean"]) / calibration["std"])

    def value(self, outputs: torch.Tensor, calibration: Mapping[str, Any]) -> torch.Tensor:
        return outputs[:, 0] * calibration["std"] + calibration["mean"]

    def score(self, outputs, labels, calibration):
        error = self.value(outputs, calibration) - labels
        return {"mse": float((error ** 2).mean()), "mae": float(error.abs().mean())}

    def decode(self, outputs, split, calibration, label_names, top_k=1):
        return [{"level": float(v)} for v in self.value(outputs, calibration)]


class LevelTask(ImageClassification):
    """The tiny image folders, each image's label its class index as a number (dark 0, light 1, striped 2)."""

    name = "image-level"
    target = Level()

    def prepare(self, data, backbone, params) -> TrialData:
        prepared = super().prepare(data, backbone, params)

        def numbers(split: TensorSplit | None) -> TensorSplit | None:
            if split is None:
                return None
            return TensorSplit(split.inputs, split.labels.float(), split.transform, split.random_augmentation)

        return TrialData(numbers(prepared.train), numbers(prepared.val), numbers(prepared.test))


RECIPE = {"task": "image-level", "data": {"val_fraction": 0.25},
          "fixed": {"resolution": 32, "epochs": 1, "batch_size": 16, "augment": "none", "freeze": 0, "lora_rank": 0,
                    "lr": 0.01}}


@pytest.fixture(scope="module")
def registry() -> Registry:
    installed = get_registry()
    return Registry(families=dict(installed.families), tasks={**installed.tasks, "image-level": LevelTask()})


@pytest.fixture(scope="module")
def level_run(tmp_path_factory, tiny_weights, registry):
    """A run as a search of one trial records it: a few training steps of the tiny network on the levels."""
    root = tmp_path_factory.mktemp("level")
    data_path = make_image_folder(root / "data", per_class=8)
    out = root / "run"
    out.mkdir()
    task = registry.tasks["image-level"]
    data = task.load(data_path, seed=0, val_fraction=0.25, options={})
    params = {**RECIPE["fixed"], "model": TINY}
    backbone = next(f for f in registry.families_for(task) if f.owns(TINY)).get(TINY, str(tiny_weights))
    prepared = task.prepare(data, backbone, params)
    target = task.target
    torch.manual_seed(0)
    model = built(backbone, target.width(data.label_names), pretrained=True)
    calibration = target.fit(prepared.train.labels)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(15):
        for inputs, labels in prepared.train.batches(16, train=True, generator=torch.Generator().manual_seed(0)):
            optimiser.zero_grad()
            target.loss(forward(model, inputs), labels, calibration, params).backward()
            optimiser.step()
    model.eval()
    outputs = predict_outputs(model, prepared.val, torch.device("cpu"))
    calibration = target.tune(calibration, outputs, prepared.val.labels)
    val_metrics = target.score(outputs, prepared.val.labels, calibration)

    storage = f"sqlite:///{out / 'study.db'}"
    study = optuna.create_study(study_name="autotl", storage=storage, direction="minimize")
    begin_study(study, StudyRecord(task="image-level", data=str(data_path), fingerprint=data.fingerprint,
                                   label_names=list(data.label_names), recipe=RECIPE, recipe_source="test",
                                   seed=0, models={TINY: backbone.describe()}, weights_files={TINY: str(tiny_weights)},
                                   out=str(out), keep_top=1, created=time.strftime("%Y-%m-%dT%H:%M:%S%z")))
    trial = study.ask()
    weights = weights_path(out, trial.number)
    weights.parent.mkdir(parents=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_weights(weights, state, weights_metadata("autotl", trial.number, TINY))
    record_trial(trial, config=params, weights=weights.relative_to(out).as_posix(), best_epoch=1,
                 val_curve=[val_metrics["mse"]], val_metrics=val_metrics, calibration=calibration)
    study.tell(trial, val_metrics["mse"])
    return {"out": out, "data": data_path, "value": val_metrics["mse"], "val_metrics": val_metrics,
            "calibration": calibration}


@pytest.fixture(scope="module")
def level_bundle(level_run, registry, tmp_path_factory) -> Path:
    location = locate(None, f"sqlite:///{level_run['out'] / 'study.db'}", "autotl")
    run = Run(location, optuna.load_study(study_name="autotl", storage=location.storage_url), registry)
    out = tmp_path_factory.mktemp("level-bundle") / "bundle"
    export_bundle(run, ExportOptions(out=out, device="cpu"))
    return out


def test_the_bundle_records_the_target_and_reproduces_the_recorded_score(level_run, level_bundle):
    config = json.loads((level_bundle / "config.json").read_text(encoding="utf-8"))
    assert config["format_version"] == 2
    assert config["target"] == {"metric": "mse", "direction": "minimize", "width": 1, "per_position": False,
                                "calibration": level_run["calibration"]}
    scores = config["scores"]
    assert scores["metric"] == "mse" and scores["val_mse"] == level_run["value"]
    assert scores["val_metrics"] == level_run["val_metrics"]
    assert "val_accuracy" not in scores and "val_accuracy" not in config["verification"]
    check = config["verification"]["val_mse"]
    assert check["equal"] is True and check["bundle"] == level_run["value"]
    # the test split was not scored by the search: export scores it, every metric of the target
    assert scores["test_mse_from"] == "export" and set(scores["test_metrics"]) == {"mse", "mae"}
    assert scores["test_mse"] == scores["test_metrics"]["mse"] == config["verification"]["test_mse"]["bundle"]
    assert config["trial"]["rank_by_val_mse"] == 1
    # the card names the target's metric, nothing of classes (why the trial was chosen is the leaderboard's text)
    card = (level_bundle / "README.md").read_text(encoding="utf-8").replace(config["trial"]["chosen_by"], "")
    assert "| split | mse (lower is better) | |" in card and "rank 1 by validation mse" in card
    assert "accuracy" not in card and "classes" not in card


def test_predict_gives_the_decoded_numbers_in_the_targets_units(level_run, level_bundle, registry, monkeypatch):
    files = sorted((level_run["data"] / "test").rglob("*.png"))
    bundle = load(level_bundle, device="cpu", registry=registry)
    predictions = bundle.predict(files)
    assert [p.as_dict()["input"] for p in predictions] == [str(f) for f in files]
    assert all(set(p.as_dict()) == {"input", "level"} for p in predictions)
    levels = torch.tensor([p.level for p in predictions])
    # the decoded number is the network's output in the labels' units: its scale and mean are the calibration's
    outputs = bundle.outputs(bundle.split(files))
    cal = level_run["calibration"]
    assert torch.allclose(levels, outputs[:, 0] * cal["std"] + cal["mean"])
    # the probabilities of a target that has none are the outputs as they are
    assert torch.equal(bundle.probabilities(files), outputs)
    with pytest.raises(AttributeError, match="has no 'label'"):
        predictions[0].label

    # `autotl predict` prints the same decoded dicts (predicted in the same batches: the same numbers)
    monkeypatch.setattr("autotl.plugins.get_registry", lambda: registry)
    three = bundle.predict(files[:3])
    result = CliRunner().invoke(cli, ["predict", str(level_bundle), *map(str, files[:3]), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [p.as_dict() for p in three]
    result = CliRunner().invoke(cli, ["predict", str(level_bundle), *map(str, files[:3])])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"{p.input}\t{p.level:.4f}" for p in three]
    result = CliRunner().invoke(cli, ["predict", str(level_bundle), *map(str, files[:3]), "--csv"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["input,level"] + [f"{p.input},{p.level:.6f}" for p in three]


def test_the_report_names_the_metric_and_lists_no_wrong_items_for_numbers(level_run, registry, monkeypatch,
                                                                            tmp_path):
    from autotl.report import write_report

    monkeypatch.setattr("autotl.run.get_registry", lambda: registry)
    location = locate(None, f"sqlite:///{level_run['out'] / 'study.db'}", "autotl")
    result = write_report(location, tmp_path / "report.html", device="cpu")
    page = result.out.read_text(encoding="utf-8")
    assert "<h2>Validation mse against time and model size" in page and "<th>val mse</th>" in page.replace(
        '<th class="">', "<th>")
    best = page.split("<h2>The best trial on the test split (trial 0)")[1]
    assert "saved weights on the 24 test samples: mse " in best and " Its other metrics: mae " in best
    assert "draws no plot" in best and 'data-figure="test"' not in page
    wrong = page.split("<h2>Wrong predictions on the test split")[1]
    assert "does not predict one label per item, so the report does not list items as right or wrong" in wrong
    assert "predicted " not in wrong.split("</section>")[0]


class _Tagger(torch.nn.Module):
    """One output per position: a tag score per token, as a per-position backbone's network gives them."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask):
        return self.head(torch.tanh(self.embed(input_ids))) * attention_mask.unsqueeze(-1)


class _PerPosition(Level):
    per_position = True

    def probabilities(self, outputs):
        return outputs.float().softmax(-1)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_formats_of_a_per_position_network_are_checked_on_the_targets_probabilities(fmt, tmp_path):
    pytest.importorskip("onnxruntime")
    from autotl.formats import export_format

    torch.manual_seed(0)
    ids = torch.randint(1, 20, (6, 7))
    mask = torch.ones_like(ids)
    mask[3:, 5:] = 0
    val = TensorSplit({"input_ids": ids * mask, "attention_mask": mask}, torch.zeros(6, 7, dtype=torch.long),
                      random_augmentation=False)
    model = _Tagger().eval()
    info = export_format(fmt, model, val, tmp_path, target=_PerPosition())
    assert info["parity"]["max_abs_diff_probability"] <= info["parity"]["tolerance"]
    assert info["parity"]["items"] == 6
    if fmt == "onnx":
        assert info["dynamic_axes"]["logits"] == {0: "batch", 1: "length"}
        assert "softmax" not in info["note"]
        # the file takes other lengths and batch sizes than the ones it was traced with
        from autotl.formats import onnx_feed, onnx_session

        session = onnx_session(tmp_path / info["file"], torch.device("cpu"))
        longer = {"input_ids": torch.randint(1, 20, (3, 11)), "attention_mask": torch.ones(3, 11, dtype=torch.long)}
        got = torch.from_numpy(session.run(None, onnx_feed(longer))[0])
        with torch.inference_mode():
            assert got.shape == (3, 11, 3) and torch.allclose(got, model(**longer), atol=1e-5)
