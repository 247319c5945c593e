"""Files autotl writes (run folder, trial weights, cache entries, bundle, report) get the mode the umask gives
an ordinary file, so that other users can read a shared run folder: never the 0600 of a temporary file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny import TINY

from autotl.cli import cli
from autotl.files import atomic_write, save_weights, write_json


@pytest.fixture(params=[0o022, 0o007])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def modes(*folders: Path) -> dict[str, int]:
    """The permission bits of every file and folder under ``folders`` (the folders included)."""
    found = {}
    for folder in folders:
        for path in [folder, *folder.rglob("*")]:
            found[str(path)] = stat.S_IMODE(path.stat().st_mode)
    return found


def cli_run(*args) -> None:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def test_a_runs_files_get_the_mode_the_umask_gives(umask, tiny_folder, tiny_weights, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "task: image-classification\ndata: {val_fraction: 0.25}\nspace:\n  lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n"
        "fixed: {resolution: 32, epochs: 1, batch_size: 8, augment: none, freeze: 3, lora_rank: 0}\n"
        f"pruner: {{name: none}}\ncache: {{dir: {json.dumps(str(tmp_path / 'cache'))}}}\n")
    run = tmp_path / "run"
    cli_run("search", "--task", "image-classification", tiny_folder, "--out", run, "--recipe", recipe, "--models", TINY,
            "--weights", f"{TINY}={tiny_weights}", "--trials", 2, "--device", "cpu", "--no-prerank")
    cli_run("export", run, "--out", tmp_path / "bundle", "--device", "cpu")
    cli_run("report", run, "--out", tmp_path / "report.html")

    found = modes(run, tmp_path / "cache", tmp_path / "bundle", tmp_path / "report.html")
    for name in ("run.json", "data_report.json", "study.db", "trials/autotl/0000/model.safetensors"):
        assert str(run / name) in found, name
    assert list((tmp_path / "cache").rglob("*.safetensors")), "the trials wrote no cache entry"
    want = {path: (0o777 if Path(path).is_dir() else 0o666) & ~umask for path in found}
    want[str(run / "study.db")] = 0o644 & ~umask  # SQLite creates its file itself, 0644 less the umask
    assert found == want  # 0644 (folders 0755) with umask 022: anyone may read them


def test_atomic_writes_follow_the_umask_and_leave_no_temporary_file(umask, tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    save_weights(tmp_path / "w.safetensors", {})
    atomic_write(tmp_path / "c.txt", lambda tmp: tmp.write_text("c"), sync=False)
    with pytest.raises(ZeroDivisionError):
        atomic_write(tmp_path / "d.txt", lambda tmp: 1 / 0)
    assert modes(tmp_path) == {str(tmp_path): stat.S_IMODE(tmp_path.stat().st_mode),
                               **{str(tmp_path / n): 0o666 & ~umask for n in ("a.json", "w.safetensors", "c.txt")}}
