"""Through the real CLI in a fresh process, on real ImageNet weights and the committed demo images."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "fashion_mnist"
DATA = Path(__file__).parent / "data"


def autotl(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotl.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kwargs)


def test_search_on_real_pretrained_weights_beats_training_from_scratch(tmp_path):
    out = tmp_path / "run"
    result = autotl("search", "--task", "image-classification", DEMO, "--out", out, "--recipe",
                    DATA / "e2e-image.yaml", "--models", "mobilenetv2_100", "--trials", 3, "--scratch-baseline")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "leaderboard" in result.stdout and "From scratch" in result.stdout

    trials = json.loads(autotl("trials", out, "--json").stdout)
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE", "COMPLETE"]
    # first the converged-head trial (the head alone fitted to convergence), then the recipe's starting points
    assert trials[0]["params"]["head_fit"] == "converged" and trials[0]["params"]["freeze"] == 8  # all but the head
    assert [t["params"]["freeze"] for t in trials[1:]] == [8, 5]
    assert trials[0]["value"] >= 0.5

    best = json.loads(autotl("best", out, "--json").stdout)
    assert best["val_accuracy"] >= 0.5  # ten classes: chance is 0.1
    assert best["test_accuracy"] >= 0.5
    assert best["test_accuracy"] > best["scratch"]["test_accuracy"] + 0.2


def _completed_trials(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=60) as con:  # wait out the search's writes on a busy machine
            return con.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_ctrl_c_stops_cleanly_and_keeps_every_finished_trial(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny import TINY, make_image_folder, save_tiny_weights

    data = make_image_folder(tmp_path / "data", per_class=10)
    weights = save_tiny_weights(tmp_path / "tiny.safetensors")
    out = tmp_path / "run"
    # Ctrl-C as a terminal delivers it: a shell running the tests in the background (`make test &`)
    # hands its children SIGINT ignored, so the child puts Python's own handler back first.
    script = (f"import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
              f"sys.path.insert(0, {str(Path(__file__).parent)!r}); import tiny; from autotl.cli import main; main()")
    args = ["search", "--task", "image-classification", str(data), "--out", str(out), "--models", TINY,
            "--weights", f"{TINY}={weights}", "--recipe", str(DATA / "tiny-long.yaml"), "--trials", "50"]
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 300
    while _completed_trials(out / "study.db") < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stderr
    assert "leaderboard" in stdout

    rows = json.loads(autotl("trials", out, "--json").stdout)
    assert sum(r["state"] == "COMPLETE" for r in rows) >= 1
    assert "RUNNING" not in {r["state"] for r in rows}
