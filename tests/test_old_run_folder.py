"""A run folder written by an older autotl still opens; one written by a newer one is refused in one line.

``tests/data/run-6f673bc`` is a tiny search (three trials of the tiny timm network, keep-top 2, with the
scratch baseline) written by autotl at commit 6f673bc, before run records carried a version; its study is
read as record version 1. It was made by ``tests/data/make_old_run.py`` (its docstring says how to make it
again, with the original code). Its data is rebuilt here (``tiny.make_image_folder`` is deterministic) and
given with ``--data``, as for a run whose data moved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from tiny import TINY, make_image_folder, save_tiny_weights

from autotl.cli import cli
from autotl.errors import RunError

OLD_RUN = Path(__file__).parent / "data" / "run-6f673bc"


def run_cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture
def old_run(tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    return run


@pytest.fixture
def old_data(tmp_path) -> Path:
    return make_image_folder(tmp_path / "data", per_class=10)


def test_trials_and_best_read_an_old_run_folder(old_run):
    code, output = run_cli("trials", old_run, "--json")
    assert code == 0, output
    rows = json.loads(output)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    assert rows[0]["params"]["model"] == "autotl_tiny_effnet" and rows[0]["latency"]["batch1_ms"] > 0
    code, output = run_cli("best", old_run, "--json")
    assert code == 0, output
    best = json.loads(output)
    assert best["number"] == 0 and best["test_accuracy"] == pytest.approx(0.6667, abs=1e-3)
    assert best["scratch"]["model"] == "autotl_tiny_effnet"
    code, output = run_cli("trials", old_run)
    assert code == 0 and "Best trial 0" in output


def test_export_and_report_read_an_old_run_folder(old_run, old_data, tmp_path):
    code, output = run_cli("export", old_run, "--out", tmp_path / "bundle", "--data", old_data, "--device", "cpu")
    assert code == 0, output
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert config["trial"]["number"] == 0 and config["label_names"] == ["dark", "light", "striped"]
    assert config["verification"]["val_accuracy"]["equal"] is True
    assert config["scores"]["test_accuracy_from"] == "search"
    code, output = run_cli("report", old_run, "--out", tmp_path / "report.html", "--data", old_data,
                           "--device", "cpu")
    assert code == 0, output
    page = (tmp_path / "report.html").read_text()
    assert "The best trial on the test split (trial 0)" in page and "Confusion matrix: rows are the true" in page


def test_a_search_resumes_an_old_run_folder(old_run, old_data, tmp_path):
    weights = save_tiny_weights(tmp_path / "tiny.safetensors")
    code, output = run_cli("search", "--task", "image-classification", old_data, "--out", old_run,
                           "--weights", f"{TINY}={weights}", "--trials", 4)
    assert code == 0, output
    assert "Resuming study 'autotl'" in output and "3 finished trial(s) kept" in output
    rows = json.loads(run_cli("trials", old_run, "--json")[1])
    assert [r["state"] for r in rows] == ["COMPLETE"] * 4


def test_a_run_folder_of_a_newer_record_version_is_refused_in_one_line(old_run, tmp_path):
    study = optuna.load_study(study_name="autotl", storage=f"sqlite:///{old_run / 'study.db'}")
    study.set_user_attr("record_version", 99)
    search = ["search", "--task", "image-classification", tmp_path / "data", "--out", old_run]
    for command in (["trials", old_run], ["best", old_run], ["report", old_run], search):
        result = CliRunner().invoke(cli, [str(a) for a in command])
        assert result.exit_code == RunError.exit_code, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and result.output.strip().splitlines()[-1] == errors[0], result.output
        assert "version 99" in errors[0] and "upgrade autotl" in errors[0] and "Traceback" not in result.output


@pytest.mark.parametrize("version", [0, -3, "1.x", None, 1.5])
def test_a_run_folder_whose_record_version_is_corrupt_is_refused_as_corrupt(old_run, tmp_path, version):
    study = optuna.load_study(study_name="autotl", storage=f"sqlite:///{old_run / 'study.db'}")
    study.set_user_attr("record_version", version)
    search = ["search", "--task", "image-classification", tmp_path / "data", "--out", old_run]
    for command in (["trials", old_run], ["best", old_run], search):
        result = CliRunner().invoke(cli, [str(a) for a in command])
        assert result.exit_code == RunError.exit_code, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and result.output.strip().splitlines()[-1] == errors[0], result.output
        assert f"corrupt run record (its record_version is {version!r}" in errors[0], errors[0]
        assert "new run with another --out" in errors[0] and "restore the run folder" in errors[0]
        assert "newer autotl" not in errors[0] and "Traceback" not in result.output
