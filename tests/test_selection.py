"""Selection on small data (autotl/selection.py): the leading trials re-scored by stratified k-fold cross-validation,
recorded, chosen, shown with their standard error; the chosen configuration refitted on train+val, scored on test
and exported; the time budget's reserve; large data left as it was."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner
from tiny import TINY, make_image_folder

from autotl.budget import Budget
from autotl.cli import cli
from autotl.errors import UsageError
from autotl.controller import Search, SearchOptions
from autotl.export import ExportOptions, export_bundle
from autotl.files import load_weights
from autotl.leaderboard import best_summary, best_trial, choose_trial, trial_rows
from autotl.plugins import get_registry
from autotl.progress import Reporter
from autotl.records import StudyRecord, TrialRecord, record_selection
from autotl.runs import locate
from autotl.selection import Selection, choose, fold_of, out_of_fold, split_items

COMPLETE = (optuna.trial.TrialState.COMPLETE,)


def write_recipe(path: Path, **selection) -> Path:
    path.write_text(yaml.safe_dump({
        "task": "image-classification",
        "data": {"val_fraction": 0.25},
        "space": {"freeze": {"low": 0}, "lora_rank": {"choices": [0, 4]},
                  "lr": {"low": 3.0e-3, "high": 1.0e-2, "log": True}},
        "fixed": {"resolution": 32, "epochs": 3, "batch_size": 16, "augment": "none"},
        "start_with": [{"model": TINY, "freeze": 0, "lora_rank": 4, "lr": 1.0e-2},
                       {"model": TINY, "freeze": 0, "lora_rank": 0, "lr": 5.0e-3}],
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "selection": {"folds": 3, "candidates": 3, **selection},
    }))
    return path


class Said(Reporter):
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


def searched(root: Path, weights: Path, trials: int = 3, **selection) -> Search:
    data = make_image_folder(root / "data", per_class=10)
    options = SearchOptions(task="image-classification", data=data, out=root / "run",
                            recipe=str(write_recipe(root / "recipe.yaml", **selection)), models=[TINY],
                            weights={TINY: str(weights)}, trials=trials, seed=0, keep_top=3)
    search = Search(options, get_registry(), Said())
    search.open()
    return search


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_weights):
    """A finished tiny search on 30 train+val items: selection and refit on (3 folds, 3 candidates), test scored."""
    search = searched(tmp_path_factory.mktemp("selection"), tiny_weights)
    search.outcome = search.run()
    search.test = search.score_best_on_test()
    yield search
    search.close()


def cli_run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


# -- the folds ---------------------------------------------------------------------------------------------

def test_folds_are_stratified_cover_every_item_once_and_follow_the_seed():
    strata = torch.tensor([0] * 13 + [1] * 7 + [2] * 10)[torch.randperm(30, generator=torch.Generator().manual_seed(3))]
    folds = fold_of(30, 4, seed=5, strata=strata)
    assert folds.shape == (30,) and set(folds.tolist()) == {0, 1, 2, 3}  # each item in exactly one fold
    sizes = torch.bincount(folds, minlength=4)
    assert int(sizes.max() - sizes.min()) <= 1
    for cls in range(3):  # every class dealt evenly round the folds
        per_fold = torch.bincount(folds[strata == cls], minlength=4)
        assert int(per_fold.max() - per_fold.min()) <= 1, (cls, per_fold)
    assert torch.equal(folds, fold_of(30, 4, seed=5, strata=strata))
    assert not torch.equal(folds, fold_of(30, 4, seed=6, strata=strata))
    plain = fold_of(10, 3, seed=0)
    assert sorted(torch.bincount(plain).tolist()) == [3, 3, 4]
    with pytest.raises(ValueError):
        fold_of(2, 3, seed=0)


def test_the_choice_is_the_best_mean_and_a_continuous_criterion_breaks_near_ties():
    rows = [{"trial": 0, "rank": 1, "mean": 0.80, "se": 0.05, "fold_scores": [0.8] * 5, "tie_break_mean": 0.60},
            {"trial": 4, "rank": 2, "mean": 0.84, "se": 0.03, "fold_scores": [0.84] * 5, "tie_break_mean": 0.50},
            {"trial": 7, "rank": 3, "mean": 0.82, "se": 0.02, "fold_scores": [0.82] * 5, "tie_break_mean": 0.40}]
    assert choose(rows, "accuracy", "maximize", None, None)[0] == 4
    chosen, why = choose(rows, "accuracy", "maximize", "log_loss", "minimize")
    assert chosen == 7 and "log_loss" in why and "cannot be told apart" in why  # 0.82 is within 0.03 of 0.84
    apart = [dict(rows[1], se=0.001), dict(rows[2], se=0.001)]
    assert choose(apart, "accuracy", "maximize", "log_loss", "minimize")[0] == 4  # 0.02 apart: no tie
    assert choose([dict(r, mean=-r["mean"]) for r in rows], "rmse", "minimize", None, None)[0] == 4
    assert choose([], "accuracy", "maximize", None, None) == (None, "")


def test_the_simplest_candidate_within_a_standard_error_of_the_best_is_chosen():
    rows = [{"trial": 0, "rank": 1, "mean": 0.86, "se": 0.03, "fold_scores": [0.86] * 5, "tie_break_mean": 0.50,
             "trainable_params": 2_000_000},
            {"trial": 3, "rank": 2, "mean": 0.84, "se": 0.02, "fold_scores": [0.84] * 5, "tie_break_mean": 0.45,
             "trainable_params": 15_000},
            {"trial": 5, "rank": 3, "mean": 0.835, "se": 0.02, "fold_scores": [0.835] * 5, "tie_break_mean": 0.40,
             "trainable_params": 15_000},
            {"trial": 8, "rank": 4, "mean": 0.70, "se": 0.02, "fold_scores": [0.70] * 5, "tie_break_mean": 0.90,
             "trainable_params": 1_000}]
    chosen, why = choose(rows, "accuracy", "maximize", "log_loss", "minimize", prefer="simpler")
    # trial 8 is simplest but 0.16 below the best; of the two heads within 0.03, the better log-loss
    assert chosen == 5 and "fewest trainable parameters (15,000)" in why and "log_loss" in why
    assert choose(rows, "accuracy", "maximize", None, None, prefer="simpler")[0] == 3  # no criterion: the best mean
    assert choose(rows, "accuracy", "maximize", None, None, prefer="best")[0] == 0
    apart = [dict(rows[0], se=0.001), dict(rows[1], se=0.001)]
    assert choose(apart, "accuracy", "maximize", "log_loss", "minimize", prefer="simpler")[0] == 0
    unknown = [{k: v for k, v in r.items() if k != "trainable_params"} for r in rows]  # recorded before the rule
    assert choose(unknown, "accuracy", "maximize", "log_loss", "minimize", prefer="simpler") == choose(
        unknown, "accuracy", "maximize", "log_loss", "minimize", prefer="best")


def test_every_converged_head_trial_is_a_candidate_and_cross_validated_first():
    from autotl.selection import candidates

    study = optuna.create_study(direction="maximize")
    values = (0.9, 0.85, 0.6, 0.88, 0.5, 0.7)
    for number, value in enumerate(values):
        config = {"model": f"m{number % 2}", "lr": 0.1 * (number + 1)}
        if number in (2, 4):
            config = {"model": f"m{number}", "head_fit": "converged"}
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={},
                                                  user_attrs={"config": config}))
    assert [t.number for t in candidates(study, 3)] == [0, 3, 1]
    assert [t.number for t in candidates(study, 3, with_converged=True)] == [2, 4, 0, 3, 1]
    assert [t.number for t in candidates(study, 1, with_converged=True)] == [2, 4, 0]


@pytest.mark.parametrize("selection, field", [({"prefer": "smallest"}, "selection.prefer"),
                                              ({"ship_ensemble": "always"}, "selection.ship_ensemble"),
                                              ({"with_converged": "yes"}, "selection.with_converged")])
def test_a_bad_selection_setting_names_the_field(selection, field):
    from autotl.recipes import parse_recipe

    with pytest.raises(UsageError, match=field):
        parse_recipe({"task": "image-classification", "space": {"lr": {"low": 0.1, "high": 0.2}}, "selection": selection},
                     "recipe.yaml")


# -- a search on small data ------------------------------------------------------------------------------------

def test_the_leading_trials_are_cross_validated_and_recorded(run):
    record = StudyRecord.from_study(run.study).selection
    assert record is not None and record["complete"] and record["folds"] == 3 and record["items"] == 30
    assert record["stratified"] and record["tie_break"] == "log_loss" and record["seconds"] > 0
    complete = run.study.get_trials(states=COMPLETE)
    assert [r["trial"] for r in record["candidates"]] == [t.number for t in sorted(
        complete, key=lambda t: (-t.value, t.number))][:3]
    for row in record["candidates"]:
        assert len(row["fold_scores"]) == 3 and row["seconds"] > 0
        assert row["mean"] == pytest.approx(statistics.fmean(row["fold_scores"]), abs=1e-5)
        assert row["se"] == pytest.approx(statistics.stdev(row["fold_scores"]) / 3 ** 0.5, abs=1e-5)
    chosen = record["chosen"]
    assert chosen in [r["trial"] for r in record["candidates"]] and record["reason"]
    assert any(line.startswith("Selection: trial") and "fold 3/3" in line for line in run.reporter.lines)


def test_out_of_fold_outputs_predict_every_item_once_in_the_combined_order(run):
    found = out_of_fold(run.study, [run.options.out])
    record = StudyRecord.from_study(run.study).selection
    assert set(found) == {r["trial"] for r in record["candidates"]}
    for row in record["candidates"]:
        oof = found[row["trial"]]
        params = TrialRecord.params(next(t for t in run.study.get_trials() if t.number == row["trial"]))
        combined = run.task.prepare_refit(run.data, run.zoo[TINY], params).train
        assert oof.outputs.shape == (30, 3) and torch.equal(oof.labels, combined.labels)
        assert sorted(torch.bincount(oof.folds).tolist()) == [10, 10, 10] and len(oof.calibrations) == 3
        assert bool((oof.outputs.abs().sum(dim=1) > 0).all())  # every item has its held-out prediction
        assert run.target.score(oof.outputs, oof.labels, {})["accuracy"] == pytest.approx(row["oof_score"])
        per_fold = [run.target.score(oof.outputs[oof.folds == f], oof.labels[oof.folds == f], {})["accuracy"]
                    for f in range(3)]
        assert sorted(per_fold) == pytest.approx(sorted(row["fold_scores"]), abs=1e-5)


def test_best_trial_and_the_leaderboard_honour_the_cross_validation(run):
    record = StudyRecord.from_study(run.study).selection
    assert best_trial(run.study).number == record["chosen"]
    rows = {r["number"]: r for r in trial_rows(run.study)}
    assert rows[record["chosen"]]["best"] and rows[record["chosen"]]["cv"]["se"] is not None
    summary = best_summary(run.study)
    chosen_row = next(r for r in record["candidates"] if r["trial"] == record["chosen"])
    assert (summary["cv_metric"], summary["cv_se"]) == (chosen_row["mean"], chosen_row["se"])
    assert summary["selected_by"] == "cross-validation (3 folds over 30 items)"
    code, output = cli_run("best", run.options.out, "--json")
    assert code == 0, output
    best = json.loads(output)
    assert best["number"] == record["chosen"] and best["cv_metric"] == chosen_row["mean"]
    assert {"val_accuracy", "test_accuracy", "val_metrics", "test_metrics", "params"} <= set(best)
    code, output = cli_run("trials", run.options.out)
    assert code == 0 and "cv accuracy" in output and "±" in output, output
    assert "chosen by cross-validation (3 folds over 30 items)" in " ".join(output.split())


def test_best_trial_follows_a_recorded_choice_over_the_validation_ranking():
    study = optuna.create_study(direction="maximize")
    for number, value in enumerate((0.9, 0.7, 0.8)):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={},
                                                  user_attrs={"config": {"model": "m", "lr": 0.1 * (number + 1)}}))
    assert best_trial(study).number == 0
    record_selection(study, {"chosen": 2, "folds": 5, "items": 40, "reason": "the best 5-fold cross-validation",
                             "candidates": [{"trial": 0, "mean": 0.7, "se": 0.02}, {"trial": 2, "mean": 0.78, "se": 0.01}]})
    assert best_trial(study).number == 2
    choice = choose_trial(study)
    assert choice.trial.number == 2 and "selection on small data" in choice.reason
    assert choose_trial(study, within=0.0).trial.number == 0  # --within still reads validation
    assert {r["number"]: r["cv"] and r["cv"]["mean"] for r in trial_rows(study)} == {0: 0.7, 1: None, 2: 0.78}


def test_the_refit_is_scored_on_test_and_exported_with_a_passing_check(run, tmp_path):
    record = StudyRecord.from_study(run.study)
    chosen = record.selection["chosen"]
    assert record.refit["trial"] == chosen and record.refit["on"] == "train+val" and record.refit["samples"] == 30
    refit_file = Path(run.options.out) / record.refit["weights"]
    assert refit_file.is_file() and refit_file.name == "refit.safetensors"
    assert run.test["trial"] == chosen and run.test["weights"] == "refit"
    assert record.test_weights == {str(chosen): "refit"}
    own = load_weights(Path(run.options.out) / TrialRecord.from_trial(best_trial(run.study)).weights)
    refitted = load_weights(refit_file)
    assert refitted.keys() == own.keys() and any(not torch.equal(v, own[k]) for k, v in refitted.items())

    result = export_bundle(locate(str(run.options.out), None, None), ExportOptions(out=tmp_path / "bundle"))
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    shipped = load_weights(tmp_path / "bundle" / "model.safetensors")
    assert all(torch.equal(shipped[k], v) for k, v in load_weights(refit_file).items())
    assert config["refit"]["on"] == "train+val" and config["refit"]["samples"] == 30
    assert config["scores"]["test_accuracy"] == record.test_score(chosen)
    assert config["scores"]["test_accuracy_from"] == "search"
    assert config["verification"]["test_accuracy"]["equal"] is True
    assert "val_accuracy" not in config["verification"]  # validation trained it: nothing to check there
    assert result.config.trial.number == chosen

    other = next(t for t in run.study.get_trials(states=COMPLETE) if t.number != chosen and t.user_attrs.get("weights"))
    config = export_bundle(locate(str(run.options.out), None, None),
                           ExportOptions(out=tmp_path / "other", trial=other.number)).config
    assert config.refit is None and config.verification["val_accuracy"].equal is True


def test_export_refit_trains_what_the_search_refitted(run, tmp_path):
    record = StudyRecord.from_study(run.study)
    export_bundle(locate(str(run.options.out), None, None), ExportOptions(out=tmp_path / "again", refit=True))
    again = load_weights(tmp_path / "again" / "model.safetensors")
    stored = load_weights(Path(run.options.out) / record.refit["weights"])
    assert again.keys() == stored.keys()
    assert all(torch.allclose(again[k].float(), stored[k].float(), atol=1e-5) for k in stored)


# -- the budget, large data, Ctrl-C -----------------------------------------------------------------------------

def test_the_trials_leave_the_reserve_of_a_time_budget():
    budget = Budget(time_budget=100.0, started=1000.0, reserved=0.25)
    assert (budget.deadline, budget.end) == (1075.0, 1100.0)
    assert Budget(time_budget=100.0, started=1000.0).deadline == 1100.0


def test_a_time_budget_reserves_its_share_only_where_selection_applies(tmp_path, tiny_weights, monkeypatch):
    small = searched(tmp_path / "small", tiny_weights, trials=1, reserve=0.4)
    small.options.time_budget = 3600.0
    small.run()
    assert small.budget.reserved == 0.4 and small.budget.deadline == pytest.approx(small.budget.started + 2160.0)
    small.close()
    large = searched(tmp_path / "large", tiny_weights, trials=2, cv_below=29)  # 30 items: not small
    large.options.time_budget = 3600.0
    large.run()
    large.score_best_on_test()
    record = StudyRecord.from_study(large.study)
    assert large.budget.reserved == 0.0 and record.selection is None and record.refit is None
    assert best_summary(large.study)["selected_by"] == "validation" and record.test_weights == {
        str(best_trial(large.study).number): "trial"}
    assert not (Path(large.options.out) / "trials" / "autotl" / "selection").exists()
    large.close()


def test_a_candidate_that_does_not_fit_the_time_left_is_skipped_and_said(tmp_path, tiny_weights):
    search = searched(tmp_path, tiny_weights, trials=2, cv_below=0)  # no selection while searching
    search.run()
    assert StudyRecord.from_study(search.study).selection is None
    settings = dict(search.recipe.selection, cv_below=1000)
    selection = Selection(study=search.study, task=search.task, target=search.target, metric=search.metric,
                          data=search.data, zoo=search.zoo, device=search.device, out=Path(search.options.out),
                          settings=settings, split_seed=search.split_seed, reporter=search.reporter,
                          deadline=time.time() + 0.01)
    record = selection.run()
    assert record["candidates"] == [] and record["chosen"] is None and not record["complete"]
    assert [s["trial"] for s in record["skipped"]] == [t.number for t in sorted(
        search.study.get_trials(states=COMPLETE), key=lambda t: (-t.value, t.number))]
    assert all("would take about" in s["why"] for s in record["skipped"])
    assert any("not cross-validated" in line for line in search.reporter.lines)
    assert best_trial(search.study).number == min(search.study.get_trials(states=COMPLETE),
                                                  key=lambda t: (-t.value, t.number)).number
    search.close()


def test_ctrl_c_during_selection_keeps_every_candidate_finished(tmp_path, tiny_weights, monkeypatch):
    import autotl.selection as selection

    calls, real = [], selection.fit_last_epoch

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the second candidate's first fold (3 folds each)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(selection, "fit_last_epoch", interrupted)
    search = searched(tmp_path, tiny_weights, trials=2)
    outcome = search.run()
    assert outcome.interrupted and "selection interrupted" in outcome.stop_reason
    record = StudyRecord.from_study(search.study)
    assert len(record.selection["candidates"]) == 1 and record.selection["chosen"] == record.selection[
        "candidates"][0]["trial"]
    assert record.refit is None  # interrupted before the refit
    search.close()


def test_split_items_counts_train_and_val(run):
    assert split_items(run.data.report) == 30 and split_items(run.data.report, ("train",)) < 30


def test_the_report_scores_the_model_shipped(run, tmp_path):
    result = CliRunner().invoke(cli, ["report", str(run.options.out), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    chosen = StudyRecord.from_study(run.study).selection["chosen"]
    assert f"Trial {chosen}&#x27;s configuration trained again on train+val" in page or \
        f"Trial {chosen}'s configuration trained again on train+val" in page
    assert ": the same." in page  # the recorded test score is the refit's


def test_needed_seconds_counts_each_candidates_folds_and_one_refit(run):
    from autotl.selection import candidates, estimated_seconds, needed_seconds

    settings = dict(run.recipe.selection)
    leading = candidates(run.study, 3)
    folds = estimated_seconds(leading[0], 20, 22, 3)
    assert folds > 0 and folds == pytest.approx(3 * estimated_seconds(leading[0], 20, 22, 1))
    # every candidate of the fixture was cross-validated already: only the refit remains
    refit_only = max(estimated_seconds(t, 30, 22, 1) for t in leading)
    assert needed_seconds(run.study, settings, 30, 22) == pytest.approx(refit_only)
    assert needed_seconds(run.study, dict(settings, refit="never"), 30, 22) == 0.0


def test_a_candidate_too_dear_to_cross_validate_in_the_budget_keeps_no_time_from_the_trials():
    """Costs from the records: a converged-head trial's one "epoch" is its whole fit (its setup and prefix taken
    out, the prefix counted once for all the folds); a fine-tuned trial's epochs times its best epoch, per fold."""
    from autotl.selection import cv_seconds, estimated_seconds, needed_seconds

    study = optuna.create_study(direction="maximize")
    head = {"config": {"model": "a", "head_fit": "converged"}, "epoch_seconds": [12.0], "best_epoch": 1,
            "timing": {"setup": 1.0, "prefix": 10.0}}
    tuned = {"config": {"model": "a", "lr": 0.1}, "epoch_seconds": [4.0] * 10, "best_epoch": 10,
             "timing": {"setup": 1.0, "prefix": 0.0}}
    for value, attrs in ((0.8, head), (0.9, tuned)):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}, user_attrs=attrs))
    converged, fine_tuned = study.get_trials()
    # 100 items, trained on 80: the fit (1s) and setup per fold, the prefix (10s per 80 items) once over 100
    assert cv_seconds(converged, 100, 80, 5) == pytest.approx(5 * (1.0 + 1.0 * 80 / 80) + 10.0 * 100 / 80)
    assert estimated_seconds(fine_tuned, 100, 80, 1) == pytest.approx(1.0 + 4.0 * 100 / 80 * 10)
    settings = {"candidates": 3, "with_converged": True, "folds": 5, "refit": "auto"}
    everything = cv_seconds(converged, 100, 80, 5) + cv_seconds(fine_tuned, 100, 80, 5) + 51.0
    assert needed_seconds(study, settings, 100, 80) == pytest.approx(everything)
    cheap = cv_seconds(converged, 100, 80, 5) + estimated_seconds(converged, 100, 80, 1)
    assert needed_seconds(study, settings, 100, 80, within=60.0) == pytest.approx(cheap)


def test_the_ensemble_is_selected_on_the_out_of_fold_outputs_of_the_cross_validated_trials(run):
    from autotl.ensemble import score_combined

    folded = out_of_fold(run.study, [run.options.out])
    assert len(folded) >= 2, "the fixture's selection cross-validates three candidates"
    ensemble = run.ensemble()
    assert ensemble is not None and ensemble["selected_on"].startswith("out-of-fold outputs of the")
    assert ensemble["best_single"]["trial"] == best_trial(run.study).number  # against the trial the selection chose
    members = {int(n): w for n, w in ensemble["members"].items()}
    assert set(members) <= set(folded) and sum(members.values()) == pytest.approx(1.0)
    first = folded[next(iter(folded))]
    rescored = score_combined(run.target, [folded[n].outputs for n in members], list(members.values()), first.labels,
                              first.calibrations[0], run.metric)
    assert ensemble["out_of_fold"]["score"] == pytest.approx(rescored.score)
    singles = ensemble["out_of_fold"]["singles"]
    assert set(singles) == {str(n) for n in folded} and ensemble["out_of_fold"]["score"] >= max(singles.values())
    # shipped where a second member beat the best single trial out of fold; never with selection.ship_ensemble never
    assert ensemble["shipped"] is (len(members) >= 2)
    assert (choose_trial(run.study).ensemble is not None) is ensemble["shipped"]
    settings = run.recipe.selection
    try:
        settings["ship_ensemble"] = "never"
        assert run.ensemble()["shipped"] is False and choose_trial(run.study).ensemble is None
    finally:
        settings["ship_ensemble"] = "auto"
        run.ensemble()


def test_a_shipped_ensemble_is_the_best_and_one_on_validation_never_is():
    from autotl.records import record_ensemble

    study = optuna.create_study(direction="maximize")
    for value in (0.9, 0.7, 0.8):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={},
                                                  user_attrs={"config": {"model": "m", "lr": value}}))
    ensemble = {"members": {"0": 0.5, "2": 0.5}, "val": 0.92, "test": 0.91, "metric": "accuracy",
                "best_single": {"trial": 0, "val": 0.9}, "selected_on": "validation", "shipped": False}
    record_ensemble(study, ensemble)
    assert choose_trial(study).ensemble is None and choose_trial(study).trial.number == 0
    record_ensemble(study, dict(ensemble, shipped=True, shipped_why="selected on the out-of-fold outputs"))
    choice = choose_trial(study)
    assert choice.ensemble is not None and choice.trial.number == 0 and "ships" in choice.reason
    assert choose_trial(study, number=2).ensemble is None  # --trial N: that trial alone
