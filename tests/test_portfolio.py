"""benchmarks/metadata.py and benchmarks/portfolio.py: the pool's recipe, the greedy portfolio, the leave-one-set-out
replay, and the built-in recipes' start points, which must be the portfolio the committed meta-dataset gives."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import metadata  # noqa: E402  (benchmarks/ is not a package)
import portfolio  # noqa: E402

from autotl.recipes import load_recipe  # noqa: E402


def _row(task, name, seed, config, val, test, seconds, curve=()):
    return {"task": task, "set": name, "seed": seed, "config": config, "model": "m",
            "params": json.dumps({"model": "m", "lr": float(len(config))}), "val": val, "test": test,
            "seconds": seconds, "epochs": len(curve), "curve": json.dumps(list(curve)), "state": "COMPLETE",
            "train": 100, "val_size": 20, "test_size": 50, "classes": 2, "source": "benchmarks/metadata.py"}


def _table(tmp_path, rows):
    path = tmp_path / "metadata.csv"
    metadata.append_rows(path, rows)
    return path


T = "image-classification"


def test_greedy_adds_what_lowers_the_regret_and_stops_when_nothing_does(tmp_path):
    rows = []
    for seed in (0, 1):  # a wins set1, b wins set2, c is never better than the converged head, d equals a but slower
        rows += [_row(T, "set1", seed, "converged:m", 0.5, 0.5, 1), _row(T, "set1", seed, "a", 0.9, 0.9, 10),
                 _row(T, "set1", seed, "b", 0.6, 0.6, 10), _row(T, "set1", seed, "c", 0.4, 0.4, 1),
                 _row(T, "set1", seed, "d", 0.9, 0.9, 100),
                 _row(T, "set2", seed, "converged:m", 0.5, 0.5, 1), _row(T, "set2", seed, "a", 0.6, 0.6, 10),
                 _row(T, "set2", seed, "b", 0.8, 0.8, 10), _row(T, "set2", seed, "c", 0.3, 0.3, 1),
                 _row(T, "set2", seed, "d", 0.6, 0.6, 100)]
    sets, params = portfolio.read(_table(tmp_path, rows), T)
    assert set(sets) == {"set1", "set2"} and set(sets["set1"].seeds) == {0, 1}
    assert portfolio.regret(sets["set1"], []) == pytest.approx(0.4)  # the converged head alone
    members = portfolio.greedy(sets, size=4)
    assert members[:2] in (["a", "b"], ["b", "a"]) and "c" not in members and "d" not in members
    assert portfolio.regret(sets["set1"], members) == portfolio.regret(sets["set2"], members) == 0
    assert portfolio.greedy(sets, size=1) in (["a"], ["b"])


def test_the_cost_term_puts_a_cheap_configuration_first(tmp_path):
    rows = []
    for name in ("set1", "set2"):  # costly: regret 0; cheap: almost as good for a tenth of the time
        rows += [_row(T, name, 0, "converged:m", 0.5, 0.5, 1), _row(T, name, 0, "costly", 0.9, 0.9, 100),
                 _row(T, name, 0, "cheap", 0.85, 0.85, 10), _row(T, name, 0, "mid", 0.6, 0.6, 50)]
    sets, _ = portfolio.read(_table(tmp_path, rows), T)
    assert portfolio.greedy(sets, size=2, cost_weight=0.0) == ["costly"]  # regret alone: nothing beats it after
    assert portfolio.greedy(sets, size=2, cost_weight=1.0) == ["cheap", "costly"]


def test_the_picked_member_is_the_best_on_validation_not_on_test(tmp_path):
    rows = [_row(T, "s", 0, "converged:m", 0.5, 0.7, 1), _row(T, "s", 0, "a", 0.9, 0.6, 1),
            _row(T, "s", 0, "b", 0.4, 0.95, 1)]
    sets, _ = portfolio.read(_table(tmp_path, rows), T)
    assert portfolio.regret(sets["s"], ["a"]) == pytest.approx(0.95 - 0.6)  # validation picks a, whose test is 0.6
    assert portfolio.regret(sets["s"], []) == pytest.approx(0.95 - 0.7)
    assert portfolio.seconds(sets["s"], ["a", "b"]) == 3


def test_leave_one_out_learns_without_the_set_it_replays_on(tmp_path):
    rows = []
    for name, winner in (("s1", "a"), ("s2", "a"), ("s3", "b")):
        for config in ("a", "b"):
            score = 0.9 if config == winner else 0.6
            rows.append(_row(T, name, 0, config, score, score, 5))
        rows.append(_row(T, name, 0, "converged:m", 0.5, 0.5, 1))
        rows.append(_row(T, name, 0, "hand-1", 0.55, 0.55, 5))
    sets, _ = portfolio.read(_table(tmp_path, rows), T)
    loo = portfolio.leave_one_out(sets, ["hand-1"], size=1)
    assert loo["s3"]["portfolio"] == ["a"]  # learned on s1 and s2 only: it cannot know that s3 wants b
    assert loo["s3"]["learned"][1]["regret"] == pytest.approx(0.3)
    assert loo["s1"]["learned"][1]["regret"] == 0 and loo["s1"]["hand"][1]["regret"] == pytest.approx(0.35)


def test_rank_agreement_reads_the_learning_curves(tmp_path):
    rows = [_row(T, "s", 0, c, v, v, 1, curve=(e, v)) for c, e, v in
            (("a", 0.1, 0.5), ("b", 0.2, 0.6), ("c", 0.3, 0.7), ("d", 0.4, 0.8))]
    sets, _ = portfolio.read(_table(tmp_path, rows), T)
    assert portfolio.rank_agreement(sets["s"], 1) == {"early_vs_final": 1.0, "val_vs_test": 1.0}


def test_write_recipe_replaces_the_start_points_and_the_recipe_still_loads(tmp_path):
    recipe = tmp_path / "image-classification.yaml"
    recipe.write_text((portfolio.RECIPES / "image-classification.yaml").read_text())
    point = dict(metadata.POOLS[T]["probe-m128"])
    sets = {"s": portfolio.Scores("s", {0: {"probe-m128": (0.9, 0.9, 1.0)}})}
    portfolio.write_recipe(recipe, portfolio.start_with_block(T, [point], sets, ["probe-m128"]))
    loaded = load_recipe(str(recipe))
    assert loaded.start_with == [point]
    assert "benchmarks/portfolio.py" in recipe.read_text()
    (tmp_path / "plain.yaml").write_text("task: image-classification\n")
    with pytest.raises(SystemExit, match="no '# Trials run first'"):
        portfolio.write_recipe(tmp_path / "plain.yaml", "x")


@pytest.mark.parametrize("task", sorted(metadata.POOLS))
def test_the_pool_recipe_loads_and_runs_the_pool_exactly(task, tmp_path):
    raw = metadata.pool_recipe(task, metadata.POOLS[task])
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    recipe = load_recipe(str(path))
    assert recipe.start_with == list(metadata.POOLS[task].values())
    assert not any(spec.fit for spec in recipe.space.values())  # nothing moves a configuration
    for point in recipe.start_with:
        for name, value in point.items():
            spec = recipe.space.get(name)
            if spec is not None and spec.choices is not None:
                assert value in spec.choices
            elif spec is not None and spec.high is not None:
                assert spec.low <= value <= spec.high
    assert {metadata.config_id(p, metadata.POOLS[task]) for p in recipe.start_with} == set(metadata.POOLS[task])
    assert metadata.config_id({"model": "x", "head_fit": "converged"}, metadata.POOLS[task]) == "converged:x"


@pytest.mark.parametrize("task", sorted(metadata.POOLS))
def test_the_built_in_start_points_are_the_portfolio_of_the_committed_meta_dataset(task):
    """No start point is typed by hand: the recipe holds what `benchmarks/portfolio.py --write` writes."""
    assert portfolio.TABLE.is_file(), "benchmarks/results/metadata.csv is committed"
    members, points = portfolio.portfolio_points(task)
    assert points, f"the meta-dataset gives {task} no portfolio"
    assert load_recipe(task).start_with == points


def test_the_sets_are_cut_in_training_and_test_items_by_the_seed(tmp_path, monkeypatch):
    import csv

    import tiny

    shared = tmp_path / "shared"
    tiny.make_image_folder(shared / "image" / "pics", per_class=12)
    (shared / "text" / "reviews").mkdir(parents=True)
    rows = [(f"text {i}", "great" if i % 4 == 0 else "other") for i in range(400)]
    for name in ("train.csv", "test.csv"):
        with open(shared / "text" / "reviews" / name, "w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *rows])
    monkeypatch.setitem(metadata.SETS, T, {"pics_5": ("image/pics", 5, 4), "pics": ("image/pics", None, None)})
    monkeypatch.setitem(metadata.SETS, "text-classification", {"reviews_80": ("text/reviews", 80, 40)})
    cut = metadata.materialise(T, "pics_5", shared, tmp_path / "cut", seed=0)
    assert {c.name: len(list(c.iterdir())) for c in (cut / "train").iterdir()} == {"dark": 5, "light": 5, "striped": 5}
    assert {c.name: len(list(c.iterdir())) for c in (cut / "test").iterdir()} == {"dark": 4, "light": 4, "striped": 4}
    assert sorted(p.name for p in cut.iterdir()) == ["test", "train"]  # nothing else left behind
    assert metadata.materialise(T, "pics", shared, tmp_path / "unused", seed=0) == shared / "image" / "pics"
    text = metadata.materialise("text-classification", "reviews_80", shared, tmp_path / "text", seed=0)
    for name, size in (("train.csv", 80), ("test.csv", 40)):
        with open(text / name, newline="") as f:
            taken = list(csv.DictReader(f))
        assert len(taken) == size and sum(r["label"] == "great" for r in taken) == size // 4  # stratified
    assert sorted(p.name for p in text.iterdir()) == ["test.csv", "train.csv"]
    with pytest.raises(SystemExit, match="does not exist"):
        metadata.materialise(T, "pics", tmp_path / "nowhere", tmp_path / "x", seed=0)


@pytest.mark.parametrize("task", sorted(metadata.POOLS))
def test_the_built_in_start_points_lie_in_the_recipes_written_ranges(task):
    """Where no range is fitted (a recipe copied without `fit: data`), every start point still runs as written."""
    recipe = load_recipe(task)
    for point in recipe.start_with:
        for name, value in point.items():
            spec = recipe.space.get(name)
            if spec is not None and spec.choices is not None:
                assert value in spec.choices, (name, value)
            elif spec is not None and spec.high is not None:
                assert spec.low <= value <= spec.high, (name, value)
