"""What a run folder records about its trials, through the real CLI and the real SQLite storage: trial
weights keyed by study, keep-top pruning only after Optuna recorded the new trial, one tie rule for
every reader, and the real reason of a failure after training."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import optuna
import torch
import yaml
from click.testing import CliRunner
from tiny import TINY

import autotl.objective
from autotl.cli import cli
from autotl.errors import RunError
from autotl.files import load_weights
from autotl.runs import load_study, locate

RECIPE = str(Path(__file__).parent / "data" / "tiny-image.yaml")
COMPLETE = (optuna.trial.TrialState.COMPLETE,)


def run_cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def search(folder, out, tiny_weights, *extra, recipe=RECIPE) -> tuple[int, str]:
    return run_cli("search", "--task", "image-classification", folder, "--out", out, "--recipe", recipe,
                   "--models", TINY, "--weights", f"{TINY}={tiny_weights}", *extra)


def study_of(out: Path, name: str | None = None) -> optuna.Study:
    return load_study(locate(str(out), None, name))


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def star_row(output: str) -> int:
    """The trial number on the leaderboard's starred row."""
    return int(re.search(r"★\W*(\d+)", next(line for line in output.splitlines() if "★" in line)).group(1))


# -- item 1: two studies in one run folder -------------------------------------------------------------

def test_two_studies_in_one_run_folder_keep_and_export_their_own_weights(tiny_folder, tiny_weights, tmp_path):
    out = tmp_path / "run"
    code, output = search(tiny_folder, out, tiny_weights, "--study", "a", "--trials", 2, "--keep-top", 1)
    assert code == 0, output
    a_study = study_of(out, "a")
    a_best = min(a_study.get_trials(states=COMPLETE), key=lambda t: (-t.value, t.number))
    a_file = out / a_best.user_attrs["weights"]
    assert a_best.user_attrs["weights"] == f"trials/a/{a_best.number:04d}/model.safetensors"
    a_weights = load_weights(a_file)

    # Study b, same folder and trial numbers, another seed: its keep-top must not touch a's weights.
    code, output = search(tiny_folder, out, tiny_weights, "--study", "b", "--trials", 3, "--keep-top", 1,
                          "--seed", 7)
    assert code == 0, output
    b_kept = [out / t.user_attrs["weights"] for t in study_of(out, "b").get_trials(states=COMPLETE)
              if t.user_attrs.get("weights") and (out / t.user_attrs["weights"]).is_file()]
    assert len(b_kept) == 1 and b_kept[0].parts[-3] == "b"
    # the validation outputs a trial saved beside its weights go with them
    assert sorted(p.parent for p in (out / "trials" / "b").glob("*/val_outputs.safetensors")) == [b_kept[0].parent]
    assert a_file.is_file() and same_tensors(load_weights(a_file), a_weights)

    code, output = run_cli("export", out, "--study", "a", "--out", tmp_path / "bundle")
    assert code == 0, output
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert config["trial"]["number"] == a_best.number and config["search"]["study"] == "a"
    assert config["verification"]["val_accuracy"]["equal"]  # a's weights score a's recorded accuracy
    assert same_tensors(load_weights(tmp_path / "bundle" / "model.safetensors"), a_weights)
    assert not same_tensors(load_weights(b_kept[0]), a_weights)


def test_export_refuses_weights_that_name_another_trial(tiny_folder, tiny_weights, tmp_path):
    out = tmp_path / "run"
    code, output = search(tiny_folder, out, tiny_weights, "--trials", 2, "--keep-top", 2)
    assert code == 0, output
    first, second = study_of(out).get_trials(states=COMPLETE)
    shutil.copyfile(out / second.user_attrs["weights"], out / first.user_attrs["weights"])  # someone else's file

    code, output = run_cli("export", out, "--trial", first.number, "--out", tmp_path / "bundle")
    assert code == RunError.exit_code, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in output
    assert first.user_attrs["weights"] in errors[0]
    assert f"weights of trial {second.number} of study 'autotl', not of trial {first.number}" in errors[0]
    assert "--refit" in errors[0]
    assert not (tmp_path / "bundle").exists()


def test_a_run_folder_from_before_weights_were_keyed_by_study_still_opens(tiny_folder, tiny_weights, tmp_path):
    """A run written by an earlier autotl: weights at trials/NNNN/model.safetensors, recorded as such."""
    out = tmp_path / "run"
    code, output = search(tiny_folder, out, tiny_weights, "--trials", 1)
    assert code == 0, output
    (trial,) = study_of(out).trials
    old = out / "trials" / "0000" / "model.safetensors"
    old.parent.mkdir()
    (out / trial.user_attrs["weights"]).rename(old)
    with sqlite3.connect(out / "study.db") as db:
        db.execute("UPDATE trial_user_attributes SET value_json = ? WHERE key = 'weights'",
                   (json.dumps("trials/0000/model.safetensors"),))

    code, output = run_cli("best", out)
    assert code == 0, output
    assert "not kept" not in output
    code, output = run_cli("export", out, "--out", tmp_path / "bundle")
    assert code == 0, output
    assert json.loads((tmp_path / "bundle" / "config.json").read_text())["verification"]["val_accuracy"]["equal"]


# -- item 2: keep-top prunes only once the new trial is recorded --------------------------------------

def test_keep_top_keeps_the_best_weights_when_the_new_trial_is_never_recorded(tiny_folder, tiny_weights, tmp_path,
                                                                               monkeypatch):
    out = tmp_path / "run"
    code, output = search(tiny_folder, out, tiny_weights, "--trials", 1, "--keep-top", 1)
    assert code == 0, output
    (best,) = study_of(out).trials
    kept = out / best.user_attrs["weights"]
    assert kept.is_file()

    real_train = autotl.objective.train

    def better(*args, **kwargs):  # the next trial ranks above trial 0, so it would displace its weights
        result = real_train(*args, **kwargs)
        result.best_value = best.value + 0.5
        return result

    real_set_state = optuna.storages.RDBStorage.set_trial_state_values

    def lost(self, trial_id, state, values=None):  # the database goes away as Optuna records the result
        if state == optuna.trial.TrialState.COMPLETE:
            raise RuntimeError("simulated: the database connection was lost")
        return real_set_state(self, trial_id, state, values)

    monkeypatch.setattr(autotl.objective, "train", better)
    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", lost)
    code, output = search(tiny_folder, out, tiny_weights, "--trials", 2, "--keep-top", 1)
    assert code != 0, output
    monkeypatch.undo()

    states = {t.number: t.state for t in study_of(out).trials}
    assert states == {0: optuna.trial.TrialState.COMPLETE, 1: optuna.trial.TrialState.RUNNING}
    assert kept.is_file()  # the best completed trial still has its weights
    code, output = run_cli("export", out, "--out", tmp_path / "bundle")
    assert code == 0, output
    assert json.loads((tmp_path / "bundle" / "config.json").read_text())["trial"]["number"] == 0


# -- item 7: one tie rule -------------------------------------------------------------------------------

def test_tied_trials_every_reader_picks_the_lower_trial_number(tiny_folder, tiny_weights, tmp_path, monkeypatch):
    """Two trials of one configuration trained with one seed score alike. The storage is made to return the
    later of the tied trials as Optuna's best (PostgreSQL's order of equal values is unspecified): the star,
    the test score, `best`, keep-top and export all still take trial 0."""
    raw = yaml.safe_load(Path(RECIPE).read_text())
    raw["space"] = {}
    raw["fixed"].update({"freeze": 0, "lora_rank": 0, "lr": 0.005})
    raw["converged_head"] = {"enabled": False}  # the one point, twice
    recipe = tmp_path / "one-point.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    real_train = autotl.objective.train
    monkeypatch.setattr(autotl.objective, "train", lambda *args, seed, **kwargs: real_train(*args, seed=0, **kwargs))

    real_best_id = optuna.storages.RDBStorage._get_best_trial_id

    def last_of_ties(self, study_id, direction):
        chosen = self.get_trial(real_best_id(self, study_id, direction))
        tied = [t for t in self.get_all_trials(study_id, deepcopy=False, states=COMPLETE) if t.value == chosen.value]
        return max(tied, key=lambda t: t.number)._trial_id

    monkeypatch.setattr(optuna.storages.RDBStorage, "_get_best_trial_id", last_of_ties)

    out = tmp_path / "run"
    code, output = search(tiny_folder, out, tiny_weights, "--trials", 2, "--keep-top", 1, recipe=recipe)
    assert code == 0, output
    first, second = study_of(out).trials
    assert first.value == second.value  # a tie
    assert star_row(output) == 0

    code, output = run_cli("trials", out, "--json")
    assert [r["number"] for r in json.loads(output) if r["best"]] == [0]
    code, output = run_cli("trials", out)
    assert star_row(output) == 0 and "Best trial 0" in output
    code, output = run_cli("best", out, "--json")
    best = json.loads(output)
    assert best["number"] == 0 and best["test_accuracy"] is not None  # the search scored the same trial
    assert (out / first.user_attrs["weights"]).is_file()  # keep-top kept the same trial's weights
    assert not (out / f"trials/autotl/{second.number:04d}/model.safetensors").exists()
    code, output = run_cli("export", out, "--out", tmp_path / "bundle")
    assert code == 0, output
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert config["trial"]["number"] == 0 and config["trial"]["rank_by_val_accuracy"] == 1
    assert config["scores"]["test_accuracy"] == best["test_accuracy"]


# -- item 9: a failure after training says why ------------------------------------------------------------

def test_a_failure_after_training_records_its_reason(tiny_folder, tiny_weights, tmp_path, monkeypatch):
    def disk_full(path, state, metadata=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(autotl.objective, "save_weights", disk_full)
    out = tmp_path / "run"
    code, output = search(tiny_folder, out, tiny_weights, "--trials", 3, "--max-failures", 2)
    assert code == 8, output
    assert "after training, saving the weights failed: OSError" in output  # the search's own stop message

    code, output = run_cli("trials", out, "--json")
    rows = json.loads(output)
    assert [r["state"] for r in rows] == ["FAIL", "FAIL"]
    for row in rows:
        assert row["note"] == ("after training, saving the weights failed: OSError: [Errno 28] No space left on "
                               "device")
    code, output = run_cli("trials", out)
    assert "No space left on device" in output and "heartbeats" not in output


def test_a_trial_that_fails_after_saving_its_weights_says_why_and_leaves_none(tiny_folder, tiny_weights, tmp_path,
                                                                              monkeypatch):
    from autotl.progress import ConsoleReporter

    real = ConsoleReporter.trial_finished

    def broken(self, number, state, *args, **kwargs):
        if state == "COMPLETE":
            raise ValueError("simulated: the progress display broke")
        return real(self, number, state, *args, **kwargs)

    monkeypatch.setattr(ConsoleReporter, "trial_finished", broken)
    out = tmp_path / "run"
    code, output = search(tiny_folder, out, tiny_weights, "--trials", 1, "--max-failures", 1)
    assert code == 8, output
    (row,) = json.loads(run_cli("trials", out, "--json")[1])
    assert row["state"] == "FAIL"
    assert row["note"] == "after training, reporting the result failed: ValueError: simulated: the progress display broke"
    assert row["weights"] and not (out / row["weights"]).exists()  # saved, then dropped: a failed trial keeps none


def test_study_names_give_safe_distinct_weights_folders():
    from autotl.trial_weights import study_folder, weights_path

    assert weights_path(Path("run"), 3) == Path("run/trials/autotl/0003/model.safetensors")  # the default study
    assert study_folder("night-run_2") == "night-run_2"
    names = ["a/b", "a_b", "a b", "A", "a", "../up", "..", "", "é", "Mixed", "mixed", "x" * 300]
    folders = [study_folder(n) for n in names]
    assert len(set(folders)) == len(names)  # apart, also where the file system ignores case
    for folder in folders:
        assert folder and len(folder) < 100 and folder == folder.lower() and re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", folder)


def test_a_queued_trial_that_has_not_run_reads_as_the_parameters_it_was_queued_with():
    import optuna

    from autotl.records import TrialRecord

    study = optuna.create_study()
    study.enqueue_trial({"model": "m", "freeze": 3})
    waiting = study.get_trials(deepcopy=False)[0]
    assert waiting.state.name == "WAITING"
    assert TrialRecord.params(waiting) == {"model": "m", "freeze": 3}
