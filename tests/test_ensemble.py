"""Ensembles of trials (issue #13, point 3): Target.combine, greedy ensemble selection, weight averaging, the
ensemble recorded after the search, shown on the leaderboard, exported as one bundle that predicts (torch and
ONNX) what was recorded, and `best --within` weighing its summed latency."""

from __future__ import annotations

import json
import math
import pytest
import torch
from click.testing import CliRunner
from tiny import TINY, make_image_folder

import autotl
from autotl.after_search import ensemble_candidates
from autotl.bundle_config import CONFIG, BundleConfig
from autotl.cli import cli
from autotl.controller import Search, SearchOptions
from autotl.ensemble import (average_states, describe, ensemble_record, greedy_selection, greedy_soup,
                             same_architecture)
from autotl.errors import BundleError
from autotl.export import ExportOptions, export_bundle
from autotl.leaderboard import choose_trial
from autotl.plugins import get_registry
from autotl.progress import Reporter
from autotl.records import StudyRecord, record_ensemble
from autotl.runs import locate
from autotl_tasks.targets import ClassLabel, LabelSet, Number, TagSequence

from test_export import write_recipe

# -- Target.combine ----------------------------------------------------------------------------------------------


def test_class_labels_average_probabilities_and_come_back_as_outputs():
    t = ClassLabel()
    a, b = torch.randn(5, 4), torch.randn(5, 4) * 3
    combined = t.combine([a, b], [1, 3])  # weights normalised: 0.25, 0.75
    expected = 0.25 * torch.softmax(a, -1) + 0.75 * torch.softmax(b, -1)
    assert torch.allclose(t.probabilities(combined), expected, atol=1e-6)
    assert torch.allclose(t.probabilities(t.combine([a, a], [0.3, 0.7])), torch.softmax(a, -1), atol=1e-6)
    labels = torch.tensor([0, 1, 2, 3, 0])
    assert t.score(t.combine([a], [1]), labels, {}) == pytest.approx(t.score(a, labels, {}), rel=1e-5)
    # a class no member gives any probability stays finite (no -inf in the outputs, log-loss finite)
    assert torch.isfinite(t.combine([torch.tensor([[200.0, -200.0]])], [1])).all()


def test_label_sets_average_sigmoids_numbers_their_values_and_tags_per_position():
    a, b = torch.randn(6, 3), torch.randn(6, 3)
    combined = LabelSet().combine([a, b], [0.5, 0.5])
    assert torch.allclose(torch.sigmoid(combined), (torch.sigmoid(a) + torch.sigmoid(b)) / 2, atol=1e-6)

    x, y = torch.randn(6, 1), torch.randn(6, 1)
    assert torch.allclose(Number().combine([x, y], [2, 1]), (2 * x + y) / 3, atol=1e-6)

    tags = TagSequence(["O", "B-x", "I-x"])
    p, q = torch.randn(2, 5, 3), torch.randn(2, 4, 3)  # batches padded to other widths: padded to the widest
    combined = tags.combine([p, q], [0.5, 0.5])
    assert combined.shape == (2, 5, 3)
    expected = (torch.softmax(p[:, :4], -1) + torch.softmax(q, -1)) / 2
    assert torch.allclose(tags.probabilities(combined)[:, :4], expected, atol=1e-6)


def test_combine_refuses_weights_that_are_no_weights():
    for weights in ([1.0], [-1.0, 2.0], [0.0, 0.0]):
        with pytest.raises(ValueError):
            ClassLabel().combine([torch.zeros(2, 3), torch.zeros(2, 3)], weights)


# -- greedy ensemble selection -------------------------------------------------------------------------------------

def confident(predicted: list[int], confidence: float, classes: int = 3) -> torch.Tensor:
    outputs = torch.zeros(len(predicted), classes)
    outputs[torch.arange(len(predicted)), torch.tensor(predicted)] = confidence
    return outputs


LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
#: three members right on 6 of the 8 items each, wrong on different ones: together they are right on all 8.
MEMBERS = {"a": confident([0, 1, 2, 0, 1, 2, 1, 0], 3.0), "b": confident([0, 1, 0, 1, 1, 2, 0, 1], 2.0),
           "c": confident([1, 1, 2, 0, 2, 2, 0, 1], 1.0)}


def test_greedy_selection_finds_the_complementary_members_across_a_plateau():
    selection = greedy_selection(MEMBERS, LABELS, ClassLabel(), "accuracy", "maximize", {}, rounds=10)
    assert selection.singles == {"a": 0.75, "b": 0.75, "c": 0.75}
    assert set(selection.weights) == {"a", "b", "c"} and selection.score == 1.0
    assert math.isclose(sum(selection.weights.values()), 1.0)
    assert selection.trajectory[0] == 0.75 and max(selection.trajectory) == 1.0
    combined = ClassLabel().combine([MEMBERS[k] for k in selection.weights], list(selection.weights.values()))
    assert ClassLabel().score(combined, LABELS, {})["accuracy"] == selection.score


def test_greedy_selection_keeps_one_member_when_nothing_helps_and_follows_the_direction():
    best = {"good": confident([0, 1, 2, 0, 1, 2, 0, 1], 4.0), "bad": confident([1, 2, 0, 1, 2, 0, 1, 2], 4.0)}
    selection = greedy_selection(best, LABELS, ClassLabel(), "accuracy", "maximize", {}, rounds=5)
    assert selection.weights == {"good": 1.0} and selection.rounds == 1
    low = greedy_selection(MEMBERS, LABELS, ClassLabel(), "log_loss", "minimize", {}, rounds=20)
    assert low.score <= min(low.singles.values()) + 1e-9 and low.score < min(low.singles.values())


@pytest.mark.parametrize("seed", range(4))
def test_the_ensemble_never_scores_worse_than_the_best_single_member_on_the_selection_items(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (40,), generator=g)
    outputs = {i: torch.randn(40, 4, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, 4) * (i % 3)
               for i in range(5)}
    for metric, direction in (("accuracy", "maximize"), ("macro_f1", "maximize"), ("log_loss", "minimize")):
        selection = greedy_selection(outputs, labels, ClassLabel(), metric, direction, {}, rounds=15)
        best = (max if direction == "maximize" else min)(selection.singles.values())
        assert (selection.score >= best) if direction == "maximize" else (selection.score <= best)
        assert math.isclose(sum(selection.weights.values()), 1.0)


def test_label_set_ensembles_are_scored_with_thresholds_tuned_on_the_combined_outputs():
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(30, 3, generator=g) > 0.6).float()
    outputs = {i: torch.randn(30, 3, generator=g) + 2 * (labels - 0.5) for i in range(3)}
    target = LabelSet()
    selection = greedy_selection(outputs, labels, target, "micro_f1", "maximize", {"prior": [0.4] * 3}, rounds=8)
    combined = target.combine([outputs[k] for k in selection.weights], list(selection.weights.values()))
    assert selection.calibration == target.tune({"prior": [0.4] * 3}, combined, labels)
    assert selection.score == target.score(combined, labels, selection.calibration)["micro_f1"]


# -- weight averaging (greedy soup) --------------------------------------------------------------------------------

def test_greedy_soup_adds_a_state_only_while_the_score_does_not_drop():
    target = torch.tensor([1.0, 1.0])
    states = [{"w": torch.tensor([1.0, 0.0]), "n": torch.tensor(3)}, {"w": torch.tensor([0.0, 1.0]), "n": torch.tensor(4)},
              {"w": torch.tensor([-5.0, -5.0]), "n": torch.tensor(5)}, {"w": torch.zeros(3), "n": torch.tensor(6)}]

    def score(state):  # higher is better: how close the weights are to (1, 1) up to a scale
        w = state["w"]
        return float(torch.nn.functional.cosine_similarity(w, target, dim=0))

    soup = greedy_soup(states, score, "maximize")
    assert soup.ingredients == [0, 1]  # the third drops the score, the fourth is of another shape
    assert torch.allclose(soup.state["w"], torch.tensor([0.5, 0.5])) and int(soup.state["n"]) == 3
    assert soup.score > soup.first_score
    assert not same_architecture(states[0], states[3])
    assert torch.equal(average_states(states[:2])["w"], torch.tensor([0.5, 0.5]))


# -- after the search ------------------------------------------------------------------------------------------------

class Messages(Reporter):
    def __init__(self):
        self.lines = []

    def message(self, text: str) -> None:
        self.lines.append(text)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_weights):
    """A finished tiny search of 3 trials, every trial's weights kept, the ensemble selected after it."""
    root = tmp_path_factory.mktemp("ensemble")
    data = make_image_folder(root / "data", per_class=10)
    options = SearchOptions(task="image-classification", data=data, out=root / "run",
                            recipe=str(write_recipe(root / "recipe.yaml")), models=[TINY],
                            weights={TINY: str(tiny_weights)}, trials=3, seed=0, keep_top=3)
    search = Search(options, get_registry(), Messages())
    search.open()
    search.run()
    search.score_best_on_test()
    search.ensemble()
    search.close()
    return search


def cli_run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def test_the_search_records_its_ensemble_against_the_best_single_trial(run):
    ensemble = StudyRecord.from_study(run.study).ensemble
    trials = run.study.get_trials(deepcopy=False)
    best = max(trials, key=lambda t: (t.value, -t.number))
    assert ensemble["candidates"][0] == best.number and sorted(ensemble["candidates"]) == [0, 1, 2]
    assert math.isclose(sum(ensemble["members"].values()), 1.0)
    assert ensemble["best_single"] == {"trial": best.number, "val": best.value,
                                       "test": run.study.user_attrs["test_scores"][str(best.number)]}
    assert ensemble["val"] >= best.value and ensemble["test"] is not None
    assert ensemble["singles_val"][str(best.number)] == best.value  # the search's own score, recomputed
    by_number = {t.number: t for t in trials}
    members = [by_number[int(n)] for n in ensemble["members"]]
    assert ensemble["latency"]["batch1_ms"] == pytest.approx(sum(t.user_attrs["latency"]["batch1_ms"] for t in members))
    assert ensemble["inference_params"] == sum(t.user_attrs["inference_params"] for t in members)
    assert "optimistic" in ensemble["val_note"]
    assert [e["trials"] for e in ensemble["equal_weights"]] == [ensemble["candidates"]]  # 3 kept: top 3 = all
    assert ensemble["equal_weights"][0]["val"] == three_members(run)["val"]
    soup, = ensemble["soups"]  # one model: its trials averaged greedily, the best first
    assert soup["model"] == TINY and soup["trials"] == ensemble["candidates"] and soup["averaged"][0] == best.number
    assert soup["first_val"] == best.value and (soup["val"] >= best.value if len(soup["averaged"]) > 1 else True)
    assert soup["helped"] == (soup["val"] > best.value)
    assert any(line.startswith("Ensemble") for line in run.reporter.lines)


def test_the_leaderboard_and_best_show_the_ensemble(run):
    code, out = cli_run("trials", run.options.out)
    assert code == 0 and "Ensemble" in out, out
    code, out = cli_run("best", run.options.out, "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["ensemble"]["members"] == StudyRecord.from_study(run.study).ensemble["members"]
    assert shown["chosen"] == "trial"


def test_the_report_shows_the_ensemble(run, tmp_path):
    code, out = cli_run("report", run.options.out, "--out", tmp_path / "report.html")
    assert code == 0, out
    page = (tmp_path / "report.html").read_text()
    import html

    line = describe(StudyRecord.from_study(run.study).ensemble)
    assert f"<dt>Ensemble</dt><dd>{html.escape(line)}</dd>" in page


def test_an_ensemble_is_never_selected_without_two_kept_trials(run, tmp_path):
    from autotl.after_search import ensemble_after_search

    reporter = Messages()
    got = ensemble_after_search(run.study, run.task, run.target, run.metric, run.data, run.zoo,
                                lambda t: None, torch.device("cpu"), reporter)
    assert got is None and "No ensemble" in reporter.lines[0]


def test_the_candidates_outputs_come_from_the_trials_and_only_members_predict_the_test_split(run, monkeypatch):
    """Each kept trial saved its best epoch's validation outputs beside its weights: the ensemble reads them and runs
    no network on the validation split; the test split is predicted for the members and the best trial only."""
    import autotl.after_search as after_search
    from autotl.inference import predict_outputs
    from autotl.network import trained_network
    from autotl.trial_weights import val_outputs_path

    trials = sorted(run.study.get_trials(deepcopy=False), key=lambda t: (-t.value, t.number))
    kept = [(t, run.kept_weights(t)) for t in trials]
    for trial, path in kept:
        saved = after_search.saved_val_outputs(path, 10_000)  # another split's size: not these outputs
        assert saved is None and val_outputs_path(path).is_file()
        prepared = run.task.prepare(run.data, run.zoo[TINY], trial.user_attrs["config"])
        network = trained_network(run.zoo[TINY], run.target.width(run.data.label_names),
                                  after_search.load_weights(path), torch.device("cpu"))
        assert torch.allclose(after_search.saved_val_outputs(path, len(prepared.val)),
                              predict_outputs(network, prepared.val, torch.device("cpu")), atol=1e-5)
    splits = []
    real = after_search.predict_outputs
    monkeypatch.setattr(after_search, "predict_outputs", lambda model, split, device: splits.append(len(split)) or
                        real(model, split, device))
    candidates, labels, _ = ensemble_candidates(kept, run.task, run.target, run.data, run.zoo.get, torch.device("cpu"))
    assert splits == []  # every validation output was the trial's own
    record = ensemble_record(candidates, labels[0], labels[1], run.target, run.metric, "maximize",
                             weights={trials[1].number: 1.0, trials[2].number: 1.0})
    assert splits == [len(labels[1])] * 3 and record["test"] is not None  # the best and the two members
    assert record["best_single"]["test"] is not None
    # a trial whose outputs were not saved (an older run): predicted again, the same
    val_outputs_path(kept[0][1]).rename(kept[0][1].with_name("moved.safetensors"))
    try:
        again, _, _ = ensemble_candidates(kept, run.task, run.target, run.data, run.zoo.get, torch.device("cpu"))
    finally:
        kept[0][1].with_name("moved.safetensors").rename(val_outputs_path(kept[0][1]))
    assert splits[3:] == [len(labels[0])] and torch.allclose(again[0].val, candidates[0].val, atol=1e-5)


def test_an_ensemble_selected_on_validation_ships_only_where_the_data_is_too_large_for_the_selection(run, monkeypatch):
    import autotl.after_search as after_search
    from autotl.leaderboard import choose_trial

    trials = sorted(run.study.get_trials(deepcopy=False), key=lambda t: (-t.value, t.number))
    real = after_search.ensemble_record
    monkeypatch.setattr(after_search, "ensemble_record", lambda *a, **k: real(  # two members, whatever climbs best
        *a, **{**k, "weights": {trials[0].number: 1.0, trials[1].number: 1.0}}))
    try:
        for large in (False, True):
            got = after_search.ensemble_after_search(run.study, run.task, run.target, run.metric, run.data, run.zoo,
                                                     run.kept_weights, torch.device("cpu"), Messages(), 3, large=large)
            assert got["selected_on"] == "validation" and len(got["members"]) == 2
            assert got["shipped"] is large and (choose_trial(run.study).ensemble is not None) is large
        assert got["shipped_why"].startswith(f"selected on the validation split, where it beats trial {trials[0].number}")
        never = after_search.ensemble_after_search(run.study, run.task, run.target, run.metric, run.data, run.zoo,
                                                   run.kept_weights, torch.device("cpu"), Messages(), 3, large=True,
                                                   ship="never")
        assert never["shipped"] is False
    finally:
        monkeypatch.undo()
        run.ensemble()  # the run's own record again, for the tests after this one


# -- an ensemble's bundle ------------------------------------------------------------------------------------------

def three_members(run, weights=None) -> dict:
    """The ensemble of the run's three trials (equal weights unless given), as the search records one."""
    trials = sorted(run.study.get_trials(deepcopy=False), key=lambda t: (-t.value, t.number))
    kept = [(t, run.kept_weights(t)) for t in trials]
    candidates, labels, _ = ensemble_candidates(kept, run.task, run.target, run.data, run.zoo.get,
                                                torch.device("cpu"))
    return ensemble_record(candidates, labels[0], labels[1], run.target, run.metric, "maximize",
                           weights=weights or {t.number: 1.0 for t in trials})


@pytest.fixture(scope="module")
def bundle(run, tmp_path_factory):
    """The run's three trials exported as an ensemble (equal weights), with their ONNX files."""
    out = tmp_path_factory.mktemp("bundles") / "ensemble"
    code, shown = cli_run("export", run.options.out, "--out", out, "--ensemble", "--members", "0,1,2",
                          "--format", "onnx")
    assert code == 0, shown
    return out


def val_files(run):
    images = run.data.payload
    _, labels, paths = images.splits["val"]
    return [images.root / p for p in paths], labels


def test_the_ensemble_bundle_holds_its_members_and_reproduces_its_score(run, bundle):
    config = json.loads((bundle / CONFIG).read_text())
    assert config["format_version"] == 3 and config.get("backbone") is None
    members = config["ensemble"]["members"]
    assert [m["trial"] for m in members] == sorted((t.number for t in run.study.trials),
                                                   key=lambda n: (-run.study.trials[n].value, n))
    assert all(math.isclose(m["weight"], 1 / 3) for m in members)
    for m in members:  # each member a whole bundle, its weights in safetensors
        assert (bundle / m["folder"] / "model.safetensors").is_file() and (bundle / m["folder"] / "model.onnx").is_file()
        assert json.loads((bundle / m["folder"] / CONFIG).read_text())["trial"]["number"] == m["trial"]
    assert config["verification"]["val_accuracy"]["equal"] is True
    assert config["verification"]["test_accuracy"]["bundle"] == config["scores"]["test_accuracy"]
    assert config["cost"]["latency_at_search"]["members"] == 3
    card = (bundle / "README.md").read_text()
    for words in ("## Members", "members/0000/", "best single trial", "equal weights", "| 2 |"):
        assert words in card, words

    # predicting the validation files gives the recorded validation accuracy
    files, labels = val_files(run)
    loaded = autotl.load(bundle)
    predicted = [loaded.label_names.index(p.label) for p in loaded.predict(files)]
    accuracy = float((torch.tensor(predicted) == torch.tensor(labels)).float().mean())
    assert accuracy == config["scores"]["val_accuracy"] == three_members(run)["val"]

    # the command prints the same predictions
    code, out = cli_run("predict", bundle, *files, "--json")
    assert code == 0 and [r["label"] for r in json.loads(out)] == [p.label for p in loaded.predict(files)]


def test_the_onnx_engine_runs_an_ensemble(run, bundle):
    files, _ = val_files(run)
    torch_probs = autotl.load(bundle).probabilities(files)
    onnx = autotl.load(bundle, engine="onnx")
    assert all(m.engine == "onnx" for m in onnx.members)
    assert torch.allclose(onnx.probabilities(files), torch_probs, atol=1e-4)
    assert json.loads((bundle / CONFIG).read_text())["formats"]["onnx"]["parity"]["max_abs_diff_probability"] <= 1e-4


def test_a_changed_member_or_a_newer_format_is_refused(bundle, tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    member = copy / "members" / "0000" / CONFIG
    member.write_text(member.read_text().replace('"chosen_by"', '"chosen_by" ', 1))
    with pytest.raises(BundleError, match="does not match the checksum"):
        autotl.load(copy)
    import autotl.bundle_config as bundle_config

    monkeypatch.setattr(bundle_config, "FORMAT_VERSION", 2)  # an autotl from before ensembles
    with pytest.raises(BundleError, match="newer autotl"):
        BundleConfig.read(bundle)


def test_export_of_the_recorded_ensemble_and_its_refusals(run, tmp_path):
    attrs = dict(run.study.user_attrs)
    try:
        single = dict(StudyRecord.from_study(run.study).ensemble, members={"1": 1.0})
        record_ensemble(run.study, single)
        code, out = cli_run("export", run.options.out, "--out", tmp_path / "one", "--ensemble")
        assert code == 6 and out.startswith("Error: the search's ensemble is trial 1 alone"), out

        recorded = three_members(run, weights={0: 2.0, 1: 1.0, 2: 1.0})
        record_ensemble(run.study, recorded)
        result = export_bundle(locate(str(run.options.out), None, None),
                               ExportOptions(out=tmp_path / "recorded", ensemble=True))
        assert result.config.verification["val_accuracy"].equal is True
        assert [m.weight for m in result.config.ensemble.members] == [0.5, 0.25, 0.25]
        assert "greedy ensemble selection" in result.config.ensemble.chosen_by
    finally:
        record_ensemble(run.study, attrs["ensemble"])
    for args, words in ((["--ensemble", "--trial", "1"], "--ensemble exports"), (["--members", "0,1"], "add --ensemble"),
                        (["--ensemble", "--members", "1,1"], "at least two different trials"),
                        (["--ensemble", "--members", "0,x"], "trial numbers separated by commas")):
        code, out = cli_run("export", run.options.out, "--out", tmp_path / "x", *args)
        assert code == 2 and words in out, out


# -- best --within and the ensemble's latency ----------------------------------------------------------------------

def test_best_within_picks_a_fast_single_trial_unless_only_the_ensemble_is_close_enough(run, tmp_path):
    attrs = dict(run.study.user_attrs)
    best = max(run.study.trials, key=lambda t: (t.value, -t.number))
    ensemble = dict(three_members(run), val=best.value + 0.05)  # better than every trial, and slower than each
    try:
        record_ensemble(run.study, ensemble)
        wide = choose_trial(run.study, within=0.2)
        assert wide.ensemble is None  # single trials within 0.2 of the ensemble are faster
        assert "the ensemble of trials" in wide.reason  # ... of the best, which is the ensemble's score
        tight = choose_trial(run.study, within=0.01)
        assert tight.ensemble is not None and "no single trial within 0.01" in tight.reason
        code, out = cli_run("best", run.options.out, "--within", "0.01")
        assert code == 0 and out.startswith("Production pick: the ensemble of trials"), out
        code, out = cli_run("best", run.options.out, "--within", "0.01", "--json")
        assert json.loads(out)["chosen"] == "ensemble"
        assert choose_trial(run.study).ensemble is None  # without --within: the best single trial
        slow = dict(ensemble, latency=None)  # an ensemble without a measured latency is never picked for speed
        record_ensemble(run.study, slow)
        assert choose_trial(run.study, within=0.01).ensemble is None
        record_ensemble(run.study, ensemble)
        result = export_bundle(locate(str(run.options.out), None, None), ExportOptions(out=tmp_path / "b", within=0.01))
        assert result.config.ensemble is not None and "no single trial" in result.config.ensemble.chosen_by
    finally:
        record_ensemble(run.study, attrs["ensemble"])


# -- a tag per word: per-position outputs combined position by position --------------------------------------------

def test_a_token_ensemble_records_exports_and_predicts_its_test_score(tmp_path):
    import tinybert
    import yaml

    from autotl_tasks.tokens import read_conll
    from test_tokens import make_conll

    model = str(tinybert.save_tiny_bert(tmp_path / "tinybert"))
    data = make_conll(tmp_path / "data", bio=True)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "token-classification", "data": {"val_fraction": 0.25},
        "space": {"lr": {"low": 1.0e-2, "high": 3.0e-2}},
        "fixed": {"epochs": 2, "batch_size": 8, "max_length": 12, "freeze": 0, "lora_rank": 0},
        "sampler": {"name": "random"}, "pruner": {"name": "none"}}))
    code, out = cli_run("search", "--task", "token-classification", data, "--recipe", recipe, "--models", model,
                        "--trials", 2, "--out", tmp_path / "run")
    assert code == 0, out
    ensemble = json.loads(cli_run("best", tmp_path / "run", "--json")[1])["ensemble"]
    assert sorted(ensemble["candidates"]) == [0, 1] and ensemble["metric"] == "entity_f1"
    code, out = cli_run("export", tmp_path / "run", "--out", tmp_path / "bundle", "--ensemble", "--members", "0,1")
    assert code == 0, out
    config = json.loads((tmp_path / "bundle" / CONFIG).read_text())
    assert config["verification"]["val_entity_f1"]["equal"] is True
    code, out = cli_run("predict", tmp_path / "bundle", data / "test.conll", "--json")
    assert code == 0, out
    predictions, sentences = json.loads(out), read_conll(data / "test.conll")
    assert [p["tokens"] for p in predictions] == [s.words for s in sentences]
    right = sum(t == g for s, p in zip(sentences, predictions) for t, g in zip(s.tags, p["tags"]))
    accuracy = right / sum(len(s.words) for s in sentences)
    assert accuracy == pytest.approx(config["scores"]["test_metrics"]["token_accuracy"], abs=1e-9)


def test_selection_may_climb_another_metric_and_reports_in_the_studys():
    from autotl.ensemble import Candidate

    candidates = [Candidate(i, 0.75, {}, MEMBERS[k]) for i, k in enumerate("abc")]
    by_loss = ensemble_record(candidates, LABELS, None, ClassLabel(), "accuracy", "maximize", rounds=20,
                              select_by=("log_loss", "minimize"))
    loss_selection = greedy_selection(MEMBERS, LABELS, ClassLabel(), "log_loss", "minimize", {}, rounds=20)
    assert by_loss["selected_by"] == "log_loss"
    assert by_loss["members"] == {str("abc".index(k)): w for k, w in loss_selection.weights.items()}
    members = [MEMBERS["abc"[int(n)]] for n in by_loss["members"]]
    combined = ClassLabel().combine(members, list(by_loss["members"].values()))
    assert by_loss["val"] == ClassLabel().score(combined, LABELS, {})["accuracy"]  # in the study's metric
    assert by_loss["trajectory"] == pytest.approx(loss_selection.trajectory)
    assert ensemble_record(candidates, LABELS, None, ClassLabel(), "accuracy", "maximize")["selected_by"] == "accuracy"


def test_an_unknown_ensemble_metric_is_refused_before_any_trial(tmp_path, tiny_weights):
    data = make_image_folder(tmp_path / "data", per_class=4)
    code, out = cli_run("search", data, "--task", "image-classification", "--models", TINY, "-w",
                        f"{TINY}={tiny_weights}", "--trials", 1, "--out", tmp_path / "run", "--ensemble-metric", "nope")
    assert code == 2 and out.startswith("Error: --ensemble-metric nope is no metric of task image-classification; "
                                        "use one of accuracy, balanced_accuracy"), out
