"""benchmarks/suite.py's own parts, on generated data: the subsamples, the ranks, the last line, arms (c) and (d)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import tiny
import tinybert

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

import suite  # noqa: E402  (benchmarks/ is not a package)


def _files(folder: Path) -> dict[str, list[str]]:
    return {c.name: sorted(f.name for f in c.iterdir()) for c in sorted(folder.iterdir())}


def test_subsample_images_takes_k_per_class_by_seed_and_keeps_test_whole(tmp_path):
    source = tiny.make_image_folder(tmp_path / "src", per_class=12)
    a = suite.subsample_images(source, tmp_path / "a", 5, seed=0)
    again = suite.subsample_images(source, tmp_path / "again", 5, seed=0)
    other = suite.subsample_images(source, tmp_path / "other", 5, seed=1)
    assert {c: len(f) for c, f in _files(a / "train").items()} == {"dark": 5, "light": 5, "striped": 5}
    assert _files(a / "train") == _files(again / "train")  # the seed decides
    assert _files(a / "train") != _files(other / "train")
    assert _files(a / "test") == _files(source / "test")  # the test split whole
    everything = suite.subsample_images(source, tmp_path / "all", 50, seed=0)  # a class smaller than k: all of it
    assert _files(everything / "train") == _files(source / "train")


def test_subsample_rows_is_stratified_seeded_and_keeps_test_whole(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    rows = [(f"text {i}, with a comma", "great" if i % 4 == 0 else "other") for i in range(400)]
    for name, part in (("train.csv", rows), ("test.csv", rows[:50])):
        with open(source / name, "w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *part])
    a = suite.subsample_rows(source, tmp_path / "a", 40, seed=0)
    with open(a / "train.csv", newline="") as f:
        taken = list(csv.DictReader(f))
    assert len(taken) == 40
    assert sum(r["label"] == "great" for r in taken) == 10  # the classes' shares kept (1 in 4)
    assert all(r["text"].endswith(", with a comma") for r in taken)  # quoting survives
    other = suite.subsample_rows(source, tmp_path / "b", 40, seed=1)
    assert (a / "train.csv").read_text() != (other / "train.csv").read_text()
    assert (a / "test.csv").read_text() == (source / "test.csv").read_text()


def test_materialise_remakes_a_subsample_per_seed_and_leaves_folders_alone(tmp_path):
    source = tiny.make_image_folder(tmp_path / "src", per_class=12)
    assert suite.materialise(source, tmp_path / "unused", 0) == source
    first = _files(suite.materialise((source, "per_class", 3), tmp_path / "set", 0) / "train")
    second = _files(suite.materialise((source, "per_class", 3), tmp_path / "set", 1) / "train")
    assert all(len(f) == 3 for f in second.values()) and first != second  # the old subsample is gone


def test_default_sets_are_the_task_folders_and_their_subsamples(tmp_path):
    for name in ("fashion_mnist_100shot", "lfw_faces"):
        (tmp_path / "image" / name).mkdir(parents=True)
    (tmp_path / "text" / "fine_foods").mkdir(parents=True)
    image = suite.default_sets("image-classification", tmp_path)
    assert list(image) == ["fashion_mnist_100shot", "lfw_faces", "fashion_mnist_10shot", "fashion_mnist_20shot"]
    assert image["fashion_mnist_10shot"] == (tmp_path / "image" / "fashion_mnist_100shot", "per_class", 10)
    text = suite.default_sets("text-classification", tmp_path)
    assert list(text) == ["fine_foods", "fine_foods_200rows", "fine_foods_500rows"]
    assert suite.default_sets("text-classification", tmp_path / "missing") == {}


def test_mean_ranks_average_ties_and_rank_an_arm_only_where_it_ran():
    medians = {"img": {"autotl": 0.9, "random": 0.8, "probe": 0.9, "tfidf": None},
               "txt": {"autotl": 0.7, "random": 0.75, "probe": 0.6, "tfidf": 0.8}}
    ranks = suite.mean_ranks(medians, ["autotl", "random", "probe", "tfidf"])
    assert ranks == {"autotl": pytest.approx((1.5 + 3) / 2), "random": pytest.approx((3 + 2) / 2),
                     "probe": pytest.approx((1.5 + 4) / 2), "tfidf": 1.0}
    assert suite.mean_ranks({"img": {"autotl": 0.5}}, ["autotl", "random"]) == {"autotl": 1.0, "random": None}


def test_summary_and_the_last_line_have_the_issue_shape():
    runs = {"a": {"0": {"autotl": {"test_acc": 0.8, "seconds": 10}, "probe": {"test_acc": 0.9, "seconds": 2}},
                  "1": {"autotl": {"test_acc": 0.6, "seconds": 12}, "probe": {"test_acc": 0.7, "seconds": 4}},
                  "2": {"autotl": {"test_acc": 0.7, "seconds": 11}, "probe": {"test_acc": None, "seconds": 3}}}}
    summary = suite.summarise(runs, ["autotl", "probe"])
    assert summary["a"]["autotl"] == {"median": 0.7, "min": 0.6, "max": 0.8, "n": 3, "seconds": 11.0,
                                         "total_s": 33.0}
    assert summary["a"]["probe"]["median"] == pytest.approx(0.8) and summary["a"]["probe"]["n"] == 2
    final = suite.final_line(summary, ["autotl", "probe"])
    line = json.loads(json.dumps(final))
    assert list(line) == ["sets", "mean_rank"]
    assert line["sets"] == {"a": {"autotl": 0.7, "random": None, "probe": 0.8, "tfidf": None}}
    assert line["mean_rank"] == {"autotl": 2.0, "probe": 1.0}
    lines = suite.table(summary, final, ["autotl", "probe"])
    assert any(row.split()[:3] == ["a", "autotl", "0.7000"] and "0.6000-0.8000" in row for row in lines)
    assert lines[-1] == "wall time per arm, all sets and seeds: autotl 33 s, probe 9 s"


def test_results_file_resumes_and_refuses_another_run(tmp_path):
    path = tmp_path / "r.json"
    assert suite.load_results(path, "text-classification", 60.0)["runs"] == {}
    results = {"task": "text-classification", "budget_s": 60.0, "runs": {"x": {"0": {"tfidf": {"test_acc": 1.0}}}}}
    suite.save_results(path, results)
    assert suite.load_results(path, "text-classification", 60.0) == results
    with pytest.raises(SystemExit, match=r"^Error: --out .* at 60.0 s per arm, not text-classification at 30 s"):
        suite.load_results(path, "text-classification", 30.0)


def test_no_shared_sets_and_no_data_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["suite.py", "--task", "image-classification", "--budget", "5",
                                      "--datasets", str(tmp_path / "nowhere")])
    assert suite.main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: the shared data sets are not in ")


def test_logistic_regression_and_tfidf_arms_on_separable_data(tmp_path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-3, 1, (30, 5)), rng.normal(3, 1, (30, 5))])
    y = np.array([0] * 30 + [1] * 30)
    acc, iterations = suite.fit_and_score(x[::2], y[::2], x[1::2], y[1::2])
    assert acc == 1.0 and iterations >= 1
    texts = ["good tasty lovely", "great fresh food", "awful stale box", "bad bland tea"] * 5
    labels = [0, 0, 1, 1] * 5
    assert suite.tfidf_accuracy(texts, labels, ["lovely fresh", "stale bland"], [0, 1]) == 1.0

    folder = tinybert.make_text_folder(tmp_path / "text", per_class=12)
    result = suite.tfidf_arm("text-classification", folder, seed=0)
    assert result["train_rows"] == 24 and result["test_acc"] >= 0.9  # every training row: train and val


def test_probe_arm_fits_on_train_and_val_features_of_the_ranked_model(tmp_path, tiny_weights):
    folder = tiny.make_image_folder(tmp_path / "data", per_class=12)
    result = suite.probe_arm("image-classification", folder, seed=0, models=[tiny.TINY],
                             weights={tiny.TINY: str(tiny_weights)})
    assert result["model"] == tiny.TINY and result["train_rows"] == 36  # the validation split included
    assert 0.0 <= result["test_acc"] <= 1.0 and result["iterations"] >= 1


def test_main_on_a_given_folder_prints_the_table_and_one_json_line_and_resumes(tmp_path, monkeypatch, capsys):
    folder = tinybert.make_text_folder(tmp_path / "reviews", per_class=12)
    out = tmp_path / "results.json"
    argv = ["suite.py", str(folder), "--task", "text-classification", "--budget", "5", "--seeds", "2",
            "--arms", "tfidf", "--out", str(out), "--datasets", str(tmp_path / "nowhere")]
    monkeypatch.setattr(sys, "argv", argv)
    assert suite.main() == 0
    first = capsys.readouterr()
    line = json.loads(first.out.strip().splitlines()[-1])
    assert set(line["sets"]) == {"reviews"} and line["sets"]["reviews"]["autotl"] is None
    assert line["sets"]["reviews"]["tfidf"] >= 0.9 and line["mean_rank"] == {"tfidf": 1.0}
    assert "reviews  tfidf" in first.out and first.err.count("arm tfidf:") == 2  # seeds 0 and 1
    assert set(json.loads(out.read_text())["runs"]["reviews"]) == {"0", "1"}

    assert suite.main() == 0  # again with the same --out: nothing left to run, the same summary
    second = capsys.readouterr()
    assert "arm tfidf" not in second.err and json.loads(second.out.strip().splitlines()[-1]) == line


def test_the_ablation_table_gives_medians_per_set_and_says_what_each_column_is():
    def run(val_best, shipped, ensemble, selection_s):
        return {"autotl": {"test_acc": shipped, "seconds": 60, "ablation": {
            "val_best": val_best, "cv_choice": val_best, "single": shipped, "ensemble": ensemble,
            "shipped": ensemble or shipped, "converged": 0.5,
            "trials_s": 40, "selection_s": selection_s, "refit_s": 2, "ensemble_s": 3}}}

    runs = {"photos": {"0": run(0.7, 0.8, None, 10), "1": run(0.6, 0.9, 0.85, 20), "2": run(0.65, 0.7, 0.75, 30)},
            "nothing": {"0": {"probe": {"test_acc": 0.5, "seconds": 1}}}}
    lines = suite.ablation_lines(runs)
    row = next(line for line in lines if line.startswith("photos"))
    assert row.split() == ["photos", "0.6500", "0.6500", "0.8000", "0.8000", "0.8000", "0.5000", "40", "20", "2", "3"]
    assert "shipped: what autotl ships" in "".join(lines)
    assert not any(line.startswith("nothing") for line in lines)
    assert suite.ablation_lines({"nothing": runs["nothing"]}) == []
