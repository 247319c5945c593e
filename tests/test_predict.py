"""`autotl predict` and `autotl.load(...).predict(...)` on an image bundle, as a new user would use them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from tiny import TINY, make_image_folder

import autotl
from autotl.bundle import BundleError
from autotl.cli import cli
from autotl.errors import DataError, UsageError
from autotl.export import ExportOptions, export_bundle
from autotl.inference import predict_outputs
from autotl.plugins import get_registry
from autotl.progress import Reporter
from autotl.runs import locate
from autotl.controller import Search, SearchOptions

RECIPE = str(Path(__file__).parent / "data" / "tiny-image.yaml")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_weights):
    root = tmp_path_factory.mktemp("predict")
    data = make_image_folder(root / "data", per_class=8)
    options = SearchOptions(task="image-classification", data=data, out=root / "run", recipe=RECIPE, models=[TINY],
                            weights={TINY: str(tiny_weights)}, trials=1, seed=0)
    search = Search(options, get_registry(), Reporter())
    search.open()
    search.run()
    export_bundle(locate(str(root / "run"), None, None), ExportOptions(out=root / "bundle"))
    return search


@pytest.fixture(scope="module")
def bundle_dir(run) -> Path:
    return run.options.out.parent / "bundle"


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> Path:
    """Images unlike the training ones: other sizes, RGBA, grey, palette, 16-bit grey, a JPEG."""
    folder = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (37, 50, 4), dtype=np.uint8), "RGBA").save(folder / "wide_rgba.png")
    Image.fromarray(rng.integers(0, 255, (90, 20), dtype=np.uint8), "L").save(folder / "tall_grey.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "RGB").convert("P").save(folder / "palette.png")
    Image.fromarray(rng.integers(0, 65535, (30, 30), dtype=np.uint16)).save(folder / "grey16.png")
    Image.fromarray(rng.integers(0, 255, (700, 900, 3), dtype=np.uint8), "RGB").save(folder / "big.jpg")
    (folder / "notes.txt").write_text("not an image: folders are searched for image files only")
    return folder


def invoke(*args, input=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    return result.exit_code, result.output


def test_predict_prints_label_and_probability_for_files_and_folders(bundle_dir, run, odd_images):
    labels = {"dark", "light", "striped"}
    test = run.options.data / "test"
    one = next((test / "dark").glob("*.png"))
    code, output = invoke("predict", bundle_dir, one, odd_images)
    assert code == 0, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 + 5  # the file, then the folder's five images (not its .txt)
    for line in lines:
        name, label, probability = line.split("\t")
        assert label in labels and 0.0 < float(probability) <= 1.0
    assert lines[0].startswith(str(one))
    assert {Path(line.split("\t")[0]).name for line in lines[1:]} == {
        "wide_rgba.png", "tall_grey.png", "palette.png", "grey16.png", "big.jpg"}


def test_top_k_json_and_csv(bundle_dir, odd_images):
    code, output = invoke("predict", bundle_dir, odd_images, "--top-k", "2", "--json")
    assert code == 0, output
    predictions = json.loads(output)
    assert len(predictions) == 5
    for p in predictions:
        assert len(p["top_k"]) == 2 and p["top_k"][0]["probability"] >= p["top_k"][1]["probability"]
        assert p["label"] == p["top_k"][0]["label"] and p["probability"] == p["top_k"][0]["probability"]
    code, output = invoke("predict", bundle_dir, odd_images, "-k", "9", "--csv")  # k beyond the classes: all of them
    assert code == 0, output
    rows = list(csv.reader(io.StringIO(output)))
    assert rows[0] == ["input", "label", "probability", "label_2", "probability_2", "label_3", "probability_3"]
    assert len(rows) == 6
    assert all(abs(sum(float(x) for x in row[2::2]) - 1.0) < 1e-4 for row in rows[1:])
    code, output = invoke("predict", bundle_dir, odd_images, "--json", "--csv")
    assert code == UsageError.exit_code


def test_paths_on_standard_input(bundle_dir, odd_images):
    paths = "\n".join(str(p) for p in sorted(odd_images.glob("*.png"))) + "\n"
    code, output = invoke("predict", bundle_dir, "-", input=paths)
    assert code == 0, output
    assert len(output.strip().splitlines()) == 4


def test_the_python_api_matches_the_search_pipeline_bit_for_bit(bundle_dir, run):
    bundle = autotl.load(bundle_dir, device="cpu")
    images = run.data.payload
    files = [images.root / p for p in images.splits["val"][2]]
    probs = bundle.probabilities(files)
    trial = run.study.best_trial
    split = run.task.prepare(run.data, run.zoo[TINY], trial.user_attrs["config"]).val
    assert torch.equal(probs, torch.softmax(predict_outputs(bundle.model, split, torch.device("cpu")), -1))
    # PIL images in memory are preprocessed like the same file (PNG: no draft decoding)
    with Image.open(files[0]) as image:
        image.load()
        from_pil = bundle.predict([image])[0]
    from_file = bundle.predict(files[0])[0]
    assert (from_pil.label, from_pil.probability) == (from_file.label, from_file.probability)
    assert from_pil.input == "<input 0>" and from_file.input == str(files[0])
    folder = bundle.predict_files([images.root / "test" / "light"], top_k=3)
    assert len(folder) == 8 and all(len(p.top_k) == 3 for p in folder)


def test_a_missing_bundle_is_one_line(tmp_path):
    code, output = invoke("predict", tmp_path / "nope", "x.png")
    assert code == BundleError.exit_code
    assert output.startswith("Error: no bundle at") and output.count("\n") == 1
    (tmp_path / "empty").mkdir()
    code, output = invoke("predict", tmp_path / "empty", "x.png")
    assert code == BundleError.exit_code and "not an autotl bundle" in output
    with pytest.raises(BundleError):
        autotl.load(tmp_path / "nope")


def test_unreadable_or_missing_images_are_one_line(bundle_dir, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, output = invoke("predict", bundle_dir, broken)
    assert code == DataError.exit_code
    assert str(broken) in output and "not a readable image" in output and output.count("\n") == 1
    code, output = invoke("predict", bundle_dir, tmp_path / "missing.png")
    assert code == DataError.exit_code and "no such image" in output
    (tmp_path / "empty").mkdir()
    code, output = invoke("predict", bundle_dir, tmp_path / "empty")
    assert code == DataError.exit_code and "holds no image" in output
    (tmp_path / "zero.png").write_bytes(b"")
    code, output = invoke("predict", bundle_dir, tmp_path / "zero.png")
    assert code == DataError.exit_code and "empty file" in output
    with pytest.raises(DataError, match="folder"):
        autotl.load(bundle_dir).predict([tmp_path / "empty"])


def test_device_option(bundle_dir, odd_images):
    code, output = invoke("predict", bundle_dir, odd_images, "--device", "cpu")
    assert code == 0
    if not torch.cuda.is_available():
        code, output = invoke("predict", bundle_dir, odd_images, "--device", "cuda")
        assert code == UsageError.exit_code and "no CUDA" in output
