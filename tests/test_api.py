"""The public Python API end to end on the tiny network: autotl.search -> autotl.open_run -> the best trial's
network and its test score, with no CLI in between."""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from tiny import TINY, make_image_folder, save_tiny_weights

import autotl
import autotl.api
from autotl.errors import RunError
from tiny import accuracy

RECIPE = str(Path(__file__).parent / "data" / "tiny-image.yaml")


def test_the_entry_points_are_plain_functions_with_their_signatures_visible():
    for name in ("search", "open_run", "load"):
        assert inspect.isfunction(getattr(autotl, name)) and getattr(autotl, name) is getattr(autotl.api, name)
    parameters = inspect.signature(autotl.search).parameters
    assert list(parameters)[:2] == ["data", "task"] and parameters["task"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "run" in inspect.signature(autotl.open_run).parameters


def test_search_then_open_run_gives_the_best_trials_network_and_test_score(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "data", per_class=10)
    weights = save_tiny_weights(tmp_path / "tiny.safetensors")
    # a program's own logging and warnings settings (a command run earlier in this process may have quieted them)
    monkeypatch.setattr(warnings, "filters", [f for f in warnings.filters if not _ignores_peft(f)])
    monkeypatch.setattr(logging.getLogger("timm"), "level", logging.WARNING)
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        result = autotl.search(data, task="image-classification", out=tmp_path / "run", recipe=RECIPE,
                               models=[TINY], weights={TINY: str(weights)}, trials=2, device="cpu")
        # the library call leaves them as they were: quieting them is the command's job
        assert optuna.logging.get_verbosity() == optuna.logging.WARNING
    finally:
        optuna.logging.set_verbosity(previous)
    assert logging.getLogger("timm").level == logging.WARNING
    assert not any(_ignores_peft(f) for f in warnings.filters)
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


def _ignores_peft(entry) -> bool:
    """Whether a :data:`warnings.filters` entry is the one :func:`autotl.progress.quiet_libraries` adds."""
    action, _, category, module, _ = entry
    return action == "ignore" and category is UserWarning and module is not None and module.pattern == "peft"
