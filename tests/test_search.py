"""The search controller on a tiny timm network: trials, budget, seeds, resume, failures, test score."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from tiny import TINY, make_image_folder, save_tiny_weights

from autotl.cli import cli
from autotl.errors import RunError
from autotl.files import load_weights
from autotl.leaderboard import best_summary, trial_rows
from autotl.plugins import get_registry
from autotl.progress import Reporter
from autotl.runs import load_study, locate
from autotl.controller import Search, SearchOptions, weights_path
from tiny import accuracy

RECIPE = str(Path(__file__).parent / "data" / "tiny-image.yaml")


@pytest.fixture
def tiny_folder(tmp_path):
    return make_image_folder(tmp_path / "data", per_class=10)


@pytest.fixture
def tiny_weights(tmp_path):
    return save_tiny_weights(tmp_path / "tiny.safetensors")


def make_search(folder, out, tiny_weights, **overrides) -> Search:
    options = SearchOptions(task="image-classification", data=folder, out=out, recipe=RECIPE, models=[TINY],
                            weights={TINY: str(tiny_weights)}, trials=3, seed=0)
    for key, value in overrides.items():
        setattr(options, key, value)
    search = Search(options, get_registry(), Reporter())
    search.open()
    return search


def run_cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def search_args(folder, out, tiny_weights, *extra):
    return ["search", "--task", "image-classification", folder, "--out", out, "--recipe", RECIPE,
            "--models", TINY, "--weights", f"{TINY}={tiny_weights}", *extra]


def test_search_runs_the_requested_trials_and_scores_the_best_on_test(tiny_folder, tiny_weights, tmp_path):
    code, output = run_cli(*search_args(tiny_folder, tmp_path / "run", tiny_weights, "--trials", 3))
    assert code == 0, output
    assert "leaderboard" in output and "★" in output

    code, output = run_cli("trials", tmp_path / "run", "--json")
    rows = json.loads(output)
    assert [r["number"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert row["state"] == "COMPLETE"
        assert 0.0 <= row["value"] <= 1.0
        assert {"model", "freeze", "lora_rank", "lr"} <= set(row["params"])
        assert row["duration_s"] > 0

    code, output = run_cli("best", tmp_path / "run", "--json")
    best = json.loads(output)
    assert best["val_accuracy"] == max(r["value"] for r in rows)
    assert 0.0 <= best["test_accuracy"] <= 1.0


def test_recorded_test_score_is_the_saved_weights_on_the_test_split(tiny_folder, tiny_weights, tmp_path):
    search = make_search(tiny_folder, tmp_path / "run", tiny_weights)
    search.run()
    score = search.score_best_on_test()
    best = search.study.best_trial
    backbone = search.zoo[TINY]
    model = backbone.build(3, pretrained=False)
    model.load_state_dict(load_weights(weights_path(tmp_path / "run", best.number)))
    split = search.task.prepare(search.data, backbone, best.user_attrs["config"]).test
    assert score["test_accuracy"] == accuracy(model, split, torch.device("cpu"))
    assert best_summary(search.study)["test_accuracy"] == score["test_accuracy"]


def test_saved_weights_reproduce_the_recorded_validation_accuracy(tiny_folder, tiny_weights, tmp_path):
    search = make_search(tiny_folder, tmp_path / "run", tiny_weights, trials=2)
    search.run()
    for trial in search.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        backbone = search.zoo[TINY]
        model = backbone.build(3, pretrained=False)
        model.load_state_dict(load_weights(weights_path(tmp_path / "run", trial.number)))
        split = search.task.prepare(search.data, backbone, trial.user_attrs["config"]).val
        assert accuracy(model, split, torch.device("cpu")) == trial.value


def test_only_the_top_trials_keep_weights(tiny_folder, tiny_weights, tmp_path):
    search = make_search(tiny_folder, tmp_path / "run", tiny_weights, trials=4, keep_top=2)
    search.run()
    kept = sorted(p.parent.name for p in (tmp_path / "run" / "trials" / "autotl").glob("*/model.safetensors"))
    ranked = sorted((-t.value, t.number) for t in search.study.trials)  # ties: the lower trial number first
    assert [int(k) for k in kept] == sorted(n for _, n in ranked[:2])


def test_same_seed_gives_the_same_first_trials(tiny_folder, tiny_weights, tmp_path):
    params = []
    for name in ("a", "b"):
        search = make_search(tiny_folder, tmp_path / name, tiny_weights, trials=3)
        search.run()
        params.append([t.params for t in search.study.trials])
    assert params[0] == params[1]
    other = make_search(tiny_folder, tmp_path / "c", tiny_weights, trials=3, seed=1)
    other.run()
    assert [t.params for t in other.study.trials] != params[0]


def test_running_the_same_command_again_resumes_the_study(tiny_folder, tiny_weights, tmp_path):
    out = tmp_path / "run"
    assert run_cli(*search_args(tiny_folder, out, tiny_weights, "--trials", 2))[0] == 0
    before = {t.number: t.datetime_start for t in load_study(locate(str(out), None, None)).trials}
    code, output = run_cli(*search_args(tiny_folder, out, tiny_weights, "--trials", 3))
    assert code == 0, output
    assert "Resuming" in output
    after = load_study(locate(str(out), None, None)).trials
    assert len(after) == 3
    assert {t.number: t.datetime_start for t in after[:2]} == before  # kept, not re-run
    code, output = run_cli(*search_args(tiny_folder, out, tiny_weights, "--trials", 3))
    assert len(load_study(locate(str(out), None, None)).trials) == 3


def test_resuming_with_changed_data_is_refused(tiny_folder, tiny_weights, tmp_path):
    make_search(tiny_folder, tmp_path / "run", tiny_weights, trials=1).run()
    victim = next((tiny_folder / "train" / "dark").glob("*.png"))
    victim.unlink()
    with pytest.raises(RunError, match="changed"):
        make_search(tiny_folder, tmp_path / "run", tiny_weights, trials=2)


def test_time_budget_stops_the_search(tiny_folder, tiny_weights, tmp_path):
    search = make_search(tiny_folder, tmp_path / "run", tiny_weights, trials=None, time_budget=4.0)
    started = time.time()
    outcome = search.run()
    elapsed = time.time() - started
    assert "budget" in outcome.stop_reason
    assert outcome.trials_run >= 1
    assert elapsed < 4.0 + 2.0  # the trial running at the deadline is cut short, validated and kept by then


def test_the_whole_search_ends_within_its_time_budget(tiny_folder, tiny_weights, tmp_path):
    """The trials leave what the test scores and the ensemble are estimated to need (autotl/budget.py), and the
    trials started late are shortened to fit: the search, its test score and its ensemble end within the budget
    plus a little, and the trials used most of it."""
    search = make_search(tiny_folder, tmp_path / "run", tiny_weights, trials=None, time_budget=10.0, keep_top=5)
    started = time.time()
    outcome = search.run()
    search.score_best_on_test()
    search.ensemble()
    elapsed = time.time() - started
    search.close()
    assert "budget" in outcome.stop_reason and outcome.trials_run >= 2
    assert elapsed < 10.0 + 3.0
    last_end = max(t.datetime_complete.timestamp() for t in search.study.trials if t.datetime_complete)
    assert last_end - search.budget.started > 0.5 * 10.0  # most of the budget went to trials


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tiny_folder, tiny_weights, tmp_path, monkeypatch):
    search = make_search(tiny_folder, tmp_path / "run", tiny_weights, trials=3)
    real_prepare = search.task.prepare
    calls = {"n": 0}

    def flaky_prepare(data, backbone, params):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated plugin bug")
        return real_prepare(data, backbone, params)

    monkeypatch.setattr(search.task, "prepare", flaky_prepare)
    outcome = search.run()
    rows = trial_rows(search.study)
    states = [r["state"] for r in rows]
    # --trials counts trials done: the failed one does not count, so a fourth trial ran
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert not outcome.too_many_failures
    failed = next(r for r in rows if r["state"] == "FAIL")
    assert "simulated plugin bug" in failed["note"]


def test_max_failures_stops_a_search_that_keeps_failing(tiny_folder, tiny_weights, tmp_path, monkeypatch):
    search = make_search(tiny_folder, tmp_path / "run", tiny_weights, trials=10, max_failures=2)
    real_prepare = search.task.prepare
    calls = {"n": 0}

    def failing_after_the_first(data, backbone, params):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError(f"simulated plugin bug {calls['n']}")
        return real_prepare(data, backbone, params)

    monkeypatch.setattr(search.task, "prepare", failing_after_the_first)
    outcome = search.run()
    states = [r["state"] for r in trial_rows(search.study)]
    assert states == ["COMPLETE", "FAIL", "FAIL"]  # stopped at the second failure, the completed trial kept
    assert outcome.too_many_failures
    assert "2 trials failed (--max-failures 2)" in outcome.stop_reason
    assert "simulated plugin bug 3" in outcome.stop_reason


def test_the_cli_exits_8_when_max_failures_stops_the_search(tiny_folder, tiny_weights, tmp_path, monkeypatch):
    from autotl_image import ImageClassification

    def broken(self, data, backbone, params):
        raise RuntimeError("simulated plugin bug")

    monkeypatch.setattr(ImageClassification, "prepare", broken)
    code, output = run_cli(*search_args(tiny_folder, tmp_path / "run", tiny_weights, "--trials", 5,
                                        "--max-failures", 2))
    assert code == 8, output
    assert "2 trials failed (--max-failures 2)" in output and "simulated plugin bug" in output
    assert "Traceback" not in output
    rows = json.loads(run_cli("trials", tmp_path / "run", "--json")[1])
    assert [r["state"] for r in rows] == ["FAIL", "FAIL"]


def test_scratch_baseline_trains_the_same_network_from_random_weights(tiny_folder, tiny_weights, tmp_path):
    search = make_search(tiny_folder, tmp_path / "run", tiny_weights, trials=1)
    search.run()
    scratch = search.scratch_baseline()
    assert scratch["model"] == TINY
    assert scratch["params"]["freeze"] == 0 and scratch["params"]["lora_rank"] == 0
    assert 0.0 <= scratch["test_accuracy"] <= 1.0
    assert search.study.user_attrs["scratch"] == scratch


def test_storage_and_study_options_replace_the_run_folder(tiny_folder, tiny_weights, tmp_path):
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    code, output = run_cli(*search_args(tiny_folder, tmp_path / "run", tiny_weights, "--trials", 1,
                                        "--storage", url, "--study", "mine"))
    assert code == 0, output
    code, output = run_cli("trials", "--storage", url, "--study", "mine", "--json")
    assert code == 0 and len(json.loads(output)) == 1
    code, output = run_cli("best", "--storage", url, "--study", "nope")
    assert code == RunError.exit_code and "mine" in output
