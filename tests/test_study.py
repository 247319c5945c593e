"""What a study records when it begins, and what later processes (resume, join, worker) make of it.

Everything that decides the splits and the search space (the split seed, the recipe's data options,
space, fixed settings and start points, the models, keep_top) is the study's: a later process
reuses it, or is refused with one line saying what differs. A study whose creator was interrupted
while recording it is recorded anew by `autotl search` and refused by the readers. Every test runs
the real CLI on real SQLite or PostgreSQL storage.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState
from tiny import TINY, make_image_folder

from autotl.cli import cli
from autotl.errors import RunError
from autotl.runs import RunLocation, open_storage, write_run_file

DESCRIPTION = "description"  # the study attribute holding its whole description (autotl.records.DESCRIPTION)
RECIPE = Path(__file__).parent / "data" / "tiny-image.yaml"


@pytest.fixture
def data(tmp_path):
    return make_image_folder(tmp_path / "data", per_class=10)


def run_cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


def search_args(data, out, weights, *extra, recipe=RECIPE):
    return ["search", "--task", "image-classification", data, "--out", out, "--recipe", recipe,
            "--models", TINY, "--weights", f"{TINY}={weights}", *extra]


def one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in output and "Internal error" not in output, output
    return errors[0]


@pytest.fixture
def val_splits(monkeypatch):
    """Every data load of the processes the test runs: (seed, the validation split's image files)."""
    from autotl_image import ImageClassification

    loads: list[tuple[int, list[str]]] = []
    real = ImageClassification.load

    def load(self, path, *, seed, val_fraction, options):
        loaded = real(self, path, seed=seed, val_fraction=val_fraction, options=options)
        loads.append((seed, sorted(self.split_items(loaded, "val")[0])))
        return loaded

    monkeypatch.setattr(ImageClassification, "load", load)
    return loads


def complete(url: str, name: str = "autotl") -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


# -- item 3: the split seed and what decides the space are the study's -----------------------------

def test_searches_resuming_a_study_with_other_seeds_all_score_on_its_validation_split(
        data, tiny_weights, tmp_path, val_splits):
    out = tmp_path / "run"
    outputs = []
    for seed, trials in ((1, 1), (2, 2), (3, 3)):
        code, output = run_cli(*search_args(data, out, tiny_weights, "--seed", seed, "--trials", trials))
        assert code == 0, output
        outputs.append(output)
    assert len(val_splits) == 3
    assert val_splits[1][1] == val_splits[0][1] and val_splits[2][1] == val_splits[0][1]
    assert [seed for seed, _ in val_splits] == [1, 1, 1]
    for seed, output in zip((2, 3), outputs[1:]):
        assert f"The study's split seed is 1 (its first process's --seed); --seed {seed} seeds" in output
    assert len(complete(f"sqlite:///{out / 'study.db'}")) == 3


def test_a_search_and_a_worker_joining_a_postgres_study_score_on_its_validation_split(
        postgres_url, data, tiny_weights, tmp_path, val_splits):
    study = ["--storage", postgres_url, "--study", f"split-{uuid.uuid4().hex[:8]}"]
    code, output = run_cli(*search_args(data, tmp_path / "run", tiny_weights, "--seed", 1, "--trials", 1), *study)
    assert code == 0, output
    code, joined = run_cli(*search_args(data, tmp_path / "run", tiny_weights, "--seed", 2, "--trials", 2), *study)
    assert code == 0, joined
    code, output = run_cli("worker", *study, "--trials", 3)
    assert code == 0, output
    assert val_splits[1][1] == val_splits[0][1] and val_splits[2][1] == val_splits[0][1]
    assert [seed for seed, _ in val_splits] == [1, 1, 1]
    assert "Joining" in joined and "The study's split seed is 1" in joined
    assert len(complete(postgres_url, study[-1])) == 3


def changed_recipe(tmp_path: Path, **sections) -> Path:
    raw = yaml.safe_load(RECIPE.read_text())
    raw.update(sections)
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_resuming_with_other_models_recipe_data_options_or_keep_top_is_refused_with_what_differs(
        data, tiny_weights, tmp_path):
    out = tmp_path / "run"
    assert run_cli(*search_args(data, out, tiny_weights, "--trials", 1))[0] == 0
    url = f"sqlite:///{out / 'study.db'}"

    code, output = run_cli("search", "--task", "image-classification", data, "--out", out, "--recipe", RECIPE,
                           "--trials", 2, "--models", f"{TINY},test_resnet", "--weights", f"{TINY}={tiny_weights}",
                           "--weights", f"test_resnet={tiny_weights}")
    assert code == RunError.exit_code, output
    assert one_error_line(output) == (
        f"Error: --models differs from the study's ({TINY},test_resnet vs {TINY}): leave --models out to use the "
        "study's, or start another --study/--out")

    space = dict(yaml.safe_load(RECIPE.read_text())["space"], lr={"low": 1.0e-2, "high": 1.0e-1, "log": True})
    code, output = run_cli(*search_args(data, out, tiny_weights, "--trials", 2,
                                        recipe=changed_recipe(tmp_path, space=space)))
    assert code == RunError.exit_code, output
    line = one_error_line(output)
    assert line.startswith("Error: --recipe differs from the study's recipe") and " in space, " in line
    assert line.endswith("leave --recipe out to use the study's, or start another --study/--out")

    code, output = run_cli(*search_args(data, out, tiny_weights, "--trials", 2, "-d", "val_fraction=0.5"))
    assert code == RunError.exit_code, output
    assert " in data, " in one_error_line(output) and "--data-option" in output

    code, output = run_cli(*search_args(data, out, tiny_weights, "--trials", 2, "--keep-top", 5))
    assert code == RunError.exit_code, output
    assert one_error_line(output) == ("Error: --keep-top 5 differs from the study's (3): leave --keep-top out to use "
                                      "the study's, or start another --study/--out")
    assert len(complete(url)) == 1  # nothing ran, nothing lost

    # a recipe that differs only in what does not decide the splits or the space (the sampler) resumes
    code, output = run_cli(*search_args(data, out, tiny_weights, "--trials", 2,
                                        recipe=changed_recipe(tmp_path, sampler={"name": "random"})))
    assert code == 0, output
    # so does one with no --models, --recipe or --weights at all: the study's are used
    code, output = run_cli("search", "--task", "image-classification", data, "--out", out, "--trials", 3)
    assert code == 0, output
    assert len(complete(url)) == 3


# -- item 5: a study recorded in one step; a half-recorded one is detected ---------------------------

def half_recorded_run(out: Path, data: Path) -> str:
    """What an `autotl search` interrupted while recording its study leaves: the task written, the recipe not."""
    out.mkdir(parents=True)
    url = f"sqlite:///{out / 'study.db'}"
    study = optuna.create_study(study_name="autotl", storage=open_storage(url), direction="maximize")
    study.set_user_attr("task", "image-classification")
    study.set_user_attr("data", str(data))
    write_run_file(RunLocation(url, "autotl", out), default=True)
    return url


def test_a_half_recorded_study_is_refused_by_readers_and_recorded_anew_by_search(data, tiny_weights, tmp_path):
    out = tmp_path / "run"
    url = half_recorded_run(out, data)
    for command in (["export", out, "--out", tmp_path / "bundle"], ["trials", out], ["best", out]):
        code, output = run_cli(*command)
        assert code == RunError.exit_code, (command, output)
        line = one_error_line(output)
        assert "is half-recorded" in line and "run that search again" in line, line

    code, output = run_cli(*search_args(data, out, tiny_weights, "--trials", 1))
    assert code == 0, output
    assert "is half-recorded (the search that began it was interrupted): recording it anew" in output
    attrs = optuna.load_study(study_name="autotl", storage=open_storage(url)).user_attrs
    assert attrs[DESCRIPTION]["recipe"] == attrs["recipe"] and attrs[DESCRIPTION]["keep_top"] == 3
    assert {k: v for k, v in attrs[DESCRIPTION].items()} == {k: attrs[k] for k in attrs[DESCRIPTION]}
    code, output = run_cli("export", out, "--out", tmp_path / "bundle")
    assert code == 0, output


def test_a_run_recorded_key_by_key_as_before_still_opens_and_resumes(data, tiny_weights, tmp_path):
    out = tmp_path / "run"
    assert run_cli(*search_args(data, out, tiny_weights, "--trials", 1))[0] == 0
    with sqlite3.connect(out / "study.db") as con:  # what an autotl from before the description wrote
        con.execute("delete from study_user_attributes where key = ?", (DESCRIPTION,))
    code, output = run_cli("trials", out, "--json")
    assert code == 0, output
    assert len(json.loads(output)) == 1
    assert run_cli("export", out, "--out", tmp_path / "bundle")[0] == 0
    code, output = run_cli(*search_args(data, out, tiny_weights, "--trials", 2))
    assert code == 0, output
    assert "Resuming" in output and len(complete(f"sqlite:///{out / 'study.db'}")) == 2


def test_a_worker_refuses_a_half_recorded_postgres_study(postgres_url, data):
    name = f"half-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=open_storage(postgres_url), direction="maximize")
    study.set_user_attr("task", "image-classification")
    code, output = run_cli("worker", "--storage", postgres_url, "--study", name, "--trials", 1)
    assert code == RunError.exit_code, output
    assert "is half-recorded" in one_error_line(output)


# -- item 6: the study's keep_top rules its workers ------------------------------------------------

def test_a_worker_keeps_as_many_weights_as_the_study_was_asked_to(postgres_url, data, tiny_weights, tmp_path):
    out = tmp_path / "run"
    study = ["--storage", postgres_url, "--study", f"keep-{uuid.uuid4().hex[:8]}"]
    code, output = run_cli(*search_args(data, out, tiny_weights, "--trials", 1, "--keep-top", 1), *study)
    assert code == 0, output
    code, output = run_cli("worker", *study, "--trials", 3)  # its own default (3) would keep all three
    assert code == 0, output
    assert len(complete(postgres_url, study[-1])) == 3
    assert len(list((out / "trials").glob("*/*/model.safetensors"))) == 1
    code, output = run_cli("worker", *study, "--trials", 4, "--keep-top", 2)
    assert code == RunError.exit_code, output
    assert one_error_line(output) == ("Error: --keep-top 2 differs from the study's (1): leave --keep-top out to use "
                                      "the study's, or start another --study/--out")
    assert len(complete(postgres_url, study[-1])) == 3
