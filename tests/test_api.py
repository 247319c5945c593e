"""The public Python API end to end on the tiny network: autotl.search -> autotl.open_run -> the best trial's
network and its test score, with no CLI in between."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import TINY, make_image_folder, save_tiny_weights

import autotl
from autotl.errors import RunError
from autotl.inference import accuracy

RECIPE = str(Path(__file__).parent / "data" / "tiny-image.yaml")


def test_search_then_open_run_gives_the_best_trials_network_and_test_score(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=10)
    weights = save_tiny_weights(tmp_path / "tiny.safetensors")
    result = autotl.search(data, task="image-classification", out=tmp_path / "run", recipe=RECIPE, models=[TINY],
                           weights={TINY: str(weights)}, trials=2, device="cpu")
    assert result.trials_run == 2 and not result.interrupted and not result.too_many_failures
    assert result.test_score is not None and result.run.location.folder == tmp_path / "run"

    run = autotl.open_run(tmp_path / "run")
    assert run.record.task == "image-classification" and run.record.label_names == ["dark", "light", "striped"]
    best = run.best_trial()
    assert best.number == result.test_score["trial"]
    assert run.config(best)["model"] == TINY and run.trial_record(best).best_epoch >= 1
    loaded, note = run.load_data()
    assert loaded is not None and not note
    model = run.network(best, "cpu")
    test = run.task.prepare(loaded, run.backbone(TINY), run.config(best)).test
    assert accuracy(model, test, torch.device("cpu")) == run.test_score(best) == result.test_score["test_accuracy"]


def test_search_refuses_an_unknown_option_and_open_run_a_missing_run(tmp_path):
    with pytest.raises(TypeError, match="trails"):
        autotl.search(tmp_path, task="image-classification", trails=3)
    with pytest.raises(RunError, match="run.json is missing"):
        autotl.open_run(tmp_path)
