"""image-regression and image-multilabel: CSV files listing images, their splits, errors, and the whole CLI path.

Fast tests run the tiny network on generated images; one test per task runs the real offline weights
(MobileNetV2) through search, export to ONNX and predict on the test CSV.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from tiny import TINY

from autotl.cli import cli
from autotl.errors import DataError, UsageError
from autotl_image import ImageClassification, read_image_csv
from autotl_tasks.image_tasks import ImageMultilabel, ImageRegression

RECIPE = Path(__file__).parent / "data" / "tiny-image.yaml"
LABELS = ("bright", "red", "stripes")


# -- generated data ---------------------------------------------------------------------------------

def write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def regression_folder(root: Path, counts=(("train", 40), ("test", 12)), seed: int = 0) -> Path:
    """Grey images whose brightness is their target (0..10), in train/ and test/, listed in train.csv and test.csv."""
    rng = np.random.default_rng(seed)
    for split, count in counts:
        rows = []
        for i in range(count):
            value = float(rng.uniform(0, 10))
            pixels = 20 + value * 20 + rng.integers(0, 10, (20, 24))
            name = f"{split}/{i:03d}.png"
            (root / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "L").save(root / name)
            rows.append((name, f"{value:.4f}"))
        write_csv(root / f"{split}.csv", ("image", "target"), rows)
    return root


def label_image(labels: set[str], rng) -> Image.Image:
    """A 32x16 picture showing its labels: a bright top half, a red tint, stripes in the bottom half."""
    rgb = np.full((16, 32, 3), 40, dtype=np.int64) + rng.integers(0, 20, (16, 32, 1))
    if "bright" in labels:
        rgb[:8] += 150
    if "red" in labels:
        rgb[..., 0] += 60
    if "stripes" in labels:
        rgb[8:, ::4] = 250
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def multilabel_folder(root: Path, counts=(("train", 48), ("test", 16)), seed: int = 0, separator: str = "|",
                      column: str = "labels") -> Path:
    """Images carrying a non-empty subset of :data:`LABELS`, listed with their labels joined by ``separator``."""
    rng = np.random.default_rng(seed)
    sets = [{name for bit, name in enumerate(LABELS) if k >> bit & 1} for k in range(1, 8)]
    for split, count in counts:
        rows = []
        for i in range(count):
            labels = sets[i % len(sets)]
            name = f"{split}/{i:03d}.png"
            (root / split).mkdir(parents=True, exist_ok=True)
            label_image(labels, rng).save(root / name)
            rows.append((name, separator.join(sorted(labels))))
        write_csv(root / f"{split}.csv", ("image", column), rows)
    return root


def load(task, root: Path, seed: int = 0, val_fraction: float = 0.25, **options):
    return task.load(root, seed=seed, val_fraction=val_fraction, options=options)


# -- reading the CSV files ----------------------------------------------------------------------------

def test_regression_reads_the_numbers_and_paths_relative_to_the_csv(tmp_path):
    data = load(ImageRegression(), regression_folder(tmp_path / "d"))
    images = data.payload
    assert data.label_names == ["target"] and data.has_test
    rows = read_image_csv(tmp_path / "d" / "test.csv")
    _, values, paths = images.splits["test"]
    assert paths == [row.cells["image"] for row in rows]
    assert values == [float(row.cells["target"]) for row in rows]
    assert images.labels("test").dtype == torch.float64
    assert data.report.counts["test"] == {"target": 12} and data.report.details["items"]["test"] == 12
    assert data.report.details["target"]["test"]["max"] == max(values)
    assert len(images.splits["train"][0]) + len(images.splits["val"][0]) == 40


def test_the_regression_val_split_covers_the_range_of_the_target(tmp_path):
    images = load(ImageRegression(), regression_folder(tmp_path / "d")).payload
    val, train = sorted(images.splits["val"][1]), sorted(images.splits["train"][1])
    assert images.val_from_train and len(val) == 10
    quartiles = np.quantile(train + val, [0.25, 0.5, 0.75])
    assert all(((np.asarray(val) > lo) & (np.asarray(val) <= hi)).any()
               for lo, hi in zip([-math.inf, *quartiles], [*quartiles, math.inf]))  # every quarter of the range
    again = load(ImageRegression(), tmp_path / "d").payload
    assert again.splits["val"][2] == images.splits["val"][2]
    assert load(ImageRegression(), tmp_path / "d", seed=1).payload.splits["val"][2] != images.splits["val"][2]


def test_a_val_csv_is_used_as_is(tmp_path):
    root = regression_folder(tmp_path / "d", counts=(("train", 20), ("val", 6), ("test", 4)))
    images = load(ImageRegression(), root).payload
    assert not images.val_from_train
    assert [len(images.splits[s][0]) for s in ("train", "val", "test")] == [20, 6, 4]


def test_the_columns_are_data_options(tmp_path):
    root = regression_folder(tmp_path / "d")
    for split in ("train", "test"):
        text = (root / f"{split}.csv").read_text().replace("image,target", "file,angle")
        (root / f"{split}.csv").write_text(text)
    data = load(ImageRegression(), root, image_column="file", target_column="angle")
    assert data.label_names == ["angle"]


def test_multilabel_encodes_each_label_set_as_a_row_of_zeros_and_ones(tmp_path):
    data = load(ImageMultilabel(), multilabel_folder(tmp_path / "d"))
    assert data.label_names == list(LABELS)
    rows = read_image_csv(tmp_path / "d" / "test.csv")
    expected = [[float(name in row.cells["labels"].split("|")) for name in LABELS] for row in rows]
    assert data.payload.labels("test").tolist() == expected
    assert data.report.counts["test"] == {name: sum(e[i] for e in expected) for i, name in enumerate(LABELS)}
    assert data.report.details["items"]["test"] == 16
    assert data.report.details["labels_per_image"]["test"] == sum(map(sum, expected)) / 16


def test_the_multilabel_val_split_holds_out_every_label(tmp_path):
    data = load(ImageMultilabel(), multilabel_folder(tmp_path / "d"))
    counts = data.report.counts
    assert data.payload.val_from_train and 10 <= len(data.payload.splits["val"][0]) <= 14  # about a quarter
    for name in LABELS:
        assert 5 <= counts["val"][name] <= 9 and counts["train"][name] >= 18  # each label about a quarter held out
        assert counts["val"][name] == data.payload.labels("val")[:, LABELS.index(name)].sum()


def test_the_separator_and_the_label_column_are_data_options(tmp_path):
    root = multilabel_folder(tmp_path / "d", separator=";", column="tags")
    data = load(ImageMultilabel(), root, separator=";", label_column="tags")
    assert data.label_names == list(LABELS)
    with pytest.raises(DataError, match=r"no column 'labels' .*'tags'"):
        load(ImageMultilabel(), root, separator=";")


# -- what a bad CSV says -----------------------------------------------------------------------------

def broken(root: Path, line: int, row: tuple) -> Path:
    """``root/train.csv`` with its ``line``-th line (the header is line 1) replaced by ``row``."""
    lines = (root / "train.csv").read_text().splitlines()
    lines[line - 1] = ",".join(row)
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("row, message", [
    (("train/nope.png", "1.0"), r"train.csv:3: image file train/nope.png not found"),
    (("train/001.png", "abc"), r"train.csv:3: target 'abc' is not a number"),
    (("train/001.png", "nan"), r"train.csv:3: target 'nan' is not a number"),
    (("", "1.0"), r"train.csv:3: no image file in column 'image'"),
])
def test_a_bad_regression_row_is_an_error_naming_the_file_and_line(tmp_path, row, message):
    root = broken(regression_folder(tmp_path / "d"), 3, row)
    with pytest.raises(DataError, match=message):
        load(ImageRegression(), root)


def test_an_image_without_labels_has_none_of_them_as_in_text_multilabel(tmp_path):
    root = broken(multilabel_folder(tmp_path / "d"), 4, ("train/002.png", "|"))
    images = load(ImageMultilabel(), root).payload
    rows = [labels for split in ("train", "val") for _, labels, path in zip(*images.splits[split])
            if str(path).endswith("train/002.png")]
    assert rows == [[0.0] * len(images.classes)]


def test_a_test_label_that_training_lacks_is_an_error_naming_it(tmp_path):
    root = multilabel_folder(tmp_path / "d")
    text = (root / "test.csv").read_text().replace("bright|red|stripes", "bright|spots", 1)
    (root / "test.csv").write_text(text)
    with pytest.raises(DataError, match=r"test.csv: image test/\d+.png has the label\(s\) 'spots'"):
        load(ImageMultilabel(), root)


def test_a_folder_without_train_csv_says_what_to_give(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match=r"has no train.csv; .*columns image,target"):
        load(ImageRegression(), tmp_path / "d")
    with pytest.raises(DataError, match="data folder not found"):
        load(ImageRegression(), tmp_path / "missing")


def test_a_missing_column_names_the_columns_found(tmp_path):
    root = regression_folder(tmp_path / "d")
    (root / "train.csv").write_text((root / "train.csv").read_text().replace("target", "value", 1))
    with pytest.raises(DataError, match=r"train.csv has no column 'target' .*'image', 'value'"):
        load(ImageRegression(), root)


def test_an_image_that_does_not_decode_is_skipped_and_listed(tmp_path):
    root = regression_folder(tmp_path / "d")
    (root / "train" / "005.png").write_bytes(b"not a png")
    data = load(ImageRegression(), root)
    assert [(s.file, s.reason[:20]) for s in data.report.skipped] == [("train.csv:7 (train/005.png)",
                                                                       "not a readable image")]
    assert len(data.payload.splits["train"][0]) + len(data.payload.splits["val"][0]) == 39


# -- making the images square ----------------------------------------------------------------------------

def test_multilabel_pads_the_whole_image_in_and_regression_crops_by_default(tmp_path, tiny_backbone):
    root = multilabel_folder(tmp_path / "d")
    params = {"resolution": 32, "augment": "none"}
    padded = ImageMultilabel().prepare(load(ImageMultilabel(), root), tiny_backbone, params).test.inputs
    assert padded[:, :, :8].max() == 0 and padded[:, :, 24:].max() == 0  # 32x16 padded to 32x32: black bands
    assert padded[:, :, 8:24].float().mean() > 40
    cropped = ImageMultilabel().prepare(load(ImageMultilabel(), root, fit="crop"), tiny_backbone, params).test.inputs
    assert cropped.float().min() > 30  # the centre of the picture fills the square
    assert ImageRegression().export_settings({}, tiny_backbone, params)["resize"].endswith("centre crop")
    assert ImageMultilabel().export_settings({}, tiny_backbone, params)["fit"] == "pad"
    with pytest.raises(UsageError, match="data option fit must be one of crop, pad, stretch"):
        load(ImageMultilabel(), root, fit="squash")


def test_predict_reads_each_csv_row_from_the_bundles_image_column(tmp_path, tiny_backbone):
    root = regression_folder(tmp_path / "d", counts=(("test", 3),))
    (root / "test.csv").write_text((root / "test.csv").read_text().replace("image,target", "file,target"))
    task = ImageRegression()
    rows = task.read_inputs([str(root / "test.csv")])
    assert [name for name, _ in rows] == [f"{root / 'test.csv'}:{n}" for n in (2, 3, 4)]
    settings = task.export_settings({"image_column": "file"}, tiny_backbone, {"resolution": 32})
    from_rows = task.preprocess_for_predict([row for _, row in rows], tiny_backbone, settings).inputs
    from_files = task.preprocess_for_predict([root / f"test/{i:03d}.png" for i in range(3)], tiny_backbone,
                                             settings).inputs
    assert torch.equal(from_rows, from_files)
    with pytest.raises(DataError, match=r"test.csv has no column 'image' \(its columns: 'file', 'target'\)"):
        task.preprocess_for_predict([rows[0][1]], tiny_backbone, {**settings, "image_column": "image"})


def test_image_classification_keeps_its_defaults():
    task = ImageClassification()
    assert task.default_fit == "crop" and "image_column" not in task.data_options


# -- for the task kit (tests/test_task_kit.py): data it must refuse ---------------------------------------

def unnamed_image_column(folder: Path) -> Path:
    """The image column under another name: ``load`` must name the column it misses."""
    root = regression_folder(folder, counts=(("train", 8),))
    (root / "train.csv").write_text((root / "train.csv").read_text().replace("image,", "picture,", 1))
    return root


# -- through the command line, on the tiny network ---------------------------------------------------------

def run_cli(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def tiny_recipe(tmp_path: Path, task: str) -> Path:
    path = tmp_path / f"{task}.yaml"
    path.write_text(RECIPE.read_text().replace("task: image-classification", f"task: {task}"))
    return path


def search_export_predict(tmp_path, task: str, data: Path, weights: Path, *extra) -> tuple[dict, list, Path]:
    out, bundle = tmp_path / "run", tmp_path / "bundle"
    run_cli("search", "--task", task, data, "--out", out, "--recipe", tiny_recipe(tmp_path, task), "--models", TINY,
            "--weights", f"{TINY}={weights}", "--trials", 2, *extra)
    trials = json.loads(run_cli("trials", out, "--json"))
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]
    best = json.loads(run_cli("best", out, "--json"))
    run_cli("export", out, "--out", bundle, "--format", "onnx")
    predictions = json.loads(run_cli("predict", bundle, data / "test.csv", "--json", "--engine", "onnx"))
    return best, predictions, out


def test_image_regression_end_to_end_on_the_tiny_network(tmp_path, tiny_weights):
    data = regression_folder(tmp_path / "data")
    best, predictions, out = search_export_predict(tmp_path, "image-regression", data, tiny_weights)
    assert best["metric"] == "rmse" and set(best["val_metrics"]) == set(best["test_metrics"]) == {
        "rmse", "mae", "pearson_r"}
    truth = [float(row.cells["target"]) for row in read_image_csv(data / "test.csv")]
    assert [p["input"] for p in predictions] == [f"{data / 'test.csv'}:{n}" for n in range(2, 14)]
    guess = [p["value"] for p in predictions]
    rmse = math.sqrt(sum((g - t) ** 2 for g, t in zip(guess, truth)) / len(truth))
    assert rmse == pytest.approx(best["test_metrics"]["rmse"], abs=1e-5)

    report = run_cli("report", out, "--out", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "report.html" in report and "Predicted against true" in page
    assert "does not predict one label per item" in page


def test_image_multilabel_end_to_end_on_the_tiny_network(tmp_path, tiny_weights):
    data = multilabel_folder(tmp_path / "data")
    best, predictions, out = search_export_predict(tmp_path, "image-multilabel", data, tiny_weights)
    assert best["metric"] == "micro_f1" and set(best["test_metrics"]) == {"micro_f1", "macro_f1",
                                                                         "mean_average_precision"}
    from sklearn.metrics import f1_score

    truth = [[float(n in row.cells["labels"].split("|")) for n in LABELS] for row in read_image_csv(data / "test.csv")]
    guess = [[float(n in p["labels"]) for n in LABELS] for p in predictions]
    assert all(set(p["probabilities"]) == set(LABELS) for p in predictions)
    assert f1_score(truth, guess, average="micro", zero_division=0) == pytest.approx(
        best["test_metrics"]["micro_f1"], abs=1e-9)

    run_cli("report", out, "--out", tmp_path / "report.html")
    assert "F1 per label" in (tmp_path / "report.html").read_text()


def test_predict_takes_image_files_as_well_as_the_csv(tmp_path, tiny_weights):
    data = regression_folder(tmp_path / "data", counts=(("train", 24), ("test", 4)))
    _, from_csv, _ = search_export_predict(tmp_path, "image-regression", data, tiny_weights)
    files = [data / "test" / f"{i:03d}.png" for i in range(4)]
    from_files = json.loads(run_cli("predict", tmp_path / "bundle", *files, "--json"))
    assert [p["input"] for p in from_files] == [str(f) for f in files]
    assert [p["value"] for p in from_files] == pytest.approx([p["value"] for p in from_csv], abs=1e-4)


# -- real offline weights (MobileNetV2) on real photos: the committed Fashion-MNIST demo images ------------

DEMO = Path(__file__).resolve().parent.parent / "demo" / "fashion_mnist"


def rotated_items(root: Path, every: int = 2, seed: int = 0) -> Path:
    """Every ``every``-th demo item turned by a random angle in [-40, 40] degrees: the angle is the target."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        rows = []
        (root / split).mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(sorted((DEMO / split).glob("*/*.png"))[::every]):
            angle = float(rng.uniform(-40, 40))
            name = f"{split}/{i:03d}.png"
            Image.open(path).convert("L").rotate(angle, resample=Image.BILINEAR).save(root / name)
            rows.append((name, f"{angle:.3f}"))
        write_csv(root / f"{split}.csv", ("image", "target"), rows)
    return root


def item_pairs(root: Path, classes=("bag", "pullover", "sandal", "trouser"), counts=(("train", 120), ("test", 40)),
               seed: int = 0) -> Path:
    """Two demo items side by side on a 56x28 canvas, labelled with their classes."""
    rng = np.random.default_rng(seed)
    for split, count in counts:
        items = [p for p in sorted((DEMO / split).glob("*/*.png")) if p.parent.name in classes]
        rows = []
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            left, right = (items[j] for j in rng.choice(len(items), 2, replace=False))
            canvas = Image.new("L", (56, 28))
            canvas.paste(Image.open(left).convert("L"), (0, 0))
            canvas.paste(Image.open(right).convert("L"), (28, 0))
            name = f"{split}/{i:03d}.png"
            canvas.save(root / name)
            rows.append((name, "|".join(sorted({left.parent.name, right.parent.name}))))
        write_csv(root / f"{split}.csv", ("image", "labels"), rows)
    return root


def real_search(tmp_path, task: str, data: Path) -> tuple[dict, list, list]:
    """Search briefly on MobileNetV2's ImageNet weights, export with ONNX, predict the test CSV with both engines."""
    out, bundle = tmp_path / "run", tmp_path / "bundle"
    run_cli("search", "--task", task, data, "--out", out, "--recipe", Path(__file__).parent / "data" / f"e2e-{task}.yaml",
            "--models", "mobilenetv2_100", "--trials", 2)
    best = json.loads(run_cli("best", out, "--json"))
    run_cli("export", out, "--out", bundle, "--format", "onnx")
    assert (bundle / "model.onnx").is_file()
    torch_predictions = json.loads(run_cli("predict", bundle, data / "test.csv", "--json"))
    onnx_predictions = json.loads(run_cli("predict", bundle, data / "test.csv", "--json", "--engine", "onnx"))
    return best, torch_predictions, onnx_predictions


@pytest.mark.slow
def test_image_regression_on_real_weights_learns_the_angle_and_its_bundle_predicts_the_recorded_score(tmp_path):
    data = rotated_items(tmp_path / "data")
    best, predictions, onnx = real_search(tmp_path, "image-regression", data)
    truth = np.array([float(row.cells["target"]) for row in read_image_csv(data / "test.csv")])
    guess = np.array([p["value"] for p in predictions])
    rmse = float(np.sqrt(np.mean((guess - truth) ** 2)))
    assert abs(rmse - best["test_metrics"]["rmse"]) <= 1e-5
    assert rmse < 0.8 * float(np.std(truth))  # well below predicting the mean angle
    assert [p["value"] for p in onnx] == pytest.approx(guess.tolist(), abs=1e-3)


@pytest.mark.slow
def test_image_multilabel_on_real_weights_beats_the_frequent_labels_and_its_bundle_predicts_the_recorded_score(tmp_path):
    from sklearn.metrics import f1_score

    data = item_pairs(tmp_path / "data")
    best, predictions, onnx = real_search(tmp_path, "image-multilabel", data)
    names = ["bag", "pullover", "sandal", "trouser"]
    truth = np.array([[n in row.cells["labels"].split("|") for n in names] for row in read_image_csv(data / "test.csv")])
    guess = np.array([[n in p["labels"] for n in names] for p in predictions])
    micro = f1_score(truth, guess, average="micro")
    assert abs(micro - best["test_metrics"]["micro_f1"]) <= 1e-9
    frequent = np.zeros_like(truth)
    frequent[:, np.argsort(-truth.sum(0))[:2]] = True
    assert micro > f1_score(truth, frequent, average="micro") + 0.1  # better than always the two most frequent
    np.testing.assert_allclose([[p["probabilities"][n] for n in names] for p in onnx],
                               [[p["probabilities"][n] for n in names] for p in predictions], atol=1e-4)
