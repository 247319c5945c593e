"""From a trial to a bundle: export, round trip, the validation-accuracy promise (LoRA included),
checksums, refit, ONNX and TorchScript parity, latency attributes and `best --within`."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner
from tiny import TINY, make_image_folder

import autotl
from autotl.base import Backbone, BackboneFamily, ExportUnsupportedError, Task, TensorSplit, concat_splits
from autotl.bundle import BundleError, sha256_file
from autotl.cli import cli
from autotl.errors import RunError, UsageError
from autotl.export import ExportOptions, export_bundle
from autotl.files import load_weights
from autotl.formats import TOLERANCE
from autotl.leaderboard import choose_trial, trial_rows
from autotl.plugins import get_registry
from autotl.progress import Reporter
from autotl.runs import locate
from autotl.controller import Search, SearchOptions, weights_path

COMPLETE = (optuna.trial.TrialState.COMPLETE,)


def write_recipe(path: Path) -> Path:
    """Trial 0 is a LoRA trial, trial 1 a full fine-tuning one; the third is sampled."""
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
        "selection": {"cv_below": 0},  # the trials' own weights are exported here; tests/test_selection.py: the refit
        "converged_head": {"enabled": False},  # the trials in this order (tests/test_head_fit.py exports that one)
    }))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_weights):
    """One finished tiny search (3 trials, every trial's weights kept), shared by the tests here."""
    root = tmp_path_factory.mktemp("export")
    data = make_image_folder(root / "data", per_class=10)
    options = SearchOptions(task="image-classification", data=data, out=root / "run",
                            recipe=str(write_recipe(root / "recipe.yaml")), models=[TINY],
                            weights={TINY: str(tiny_weights)}, trials=3, seed=0, keep_top=3)
    search = Search(options, get_registry(), Reporter())
    search.open()
    search.run()
    search.score_best_on_test()
    return search


def cli_run(*args, input=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    return result.exit_code, result.output


def export(run, out, **kwargs):
    return export_bundle(locate(str(run.options.out), None, None), ExportOptions(out=out, **kwargs))


def val_files(run) -> tuple[list[Path], list[int]]:
    images = run.data.payload
    _, labels, paths = images.splits["val"]
    return [images.root / p for p in paths], labels


def bundle_accuracy(bundle, files, labels) -> float:
    """Accuracy as the search computes it (a float32 mean), from the bundle's predictions of files."""
    predicted = [bundle.label_names.index(p.label) for p in bundle.predict(files)]
    return float((torch.tensor(predicted) == torch.tensor(labels)).float().mean())


# -- the bundle ------------------------------------------------------------------------------------

def test_bundle_round_trip_holds_what_the_issue_asks(run, tmp_path):
    best = run.study.best_trial
    result = export(run, tmp_path / "bundle")
    out = result.out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "image-classification"
    assert config["label_names"] == ["dark", "light", "striped"]
    assert config["backbone"]["family"] == "timm" and config["backbone"]["config"]["architecture"] == TINY
    assert config["preprocessing"]["resolution"] == 32 and len(config["preprocessing"]["mean"]) == 3
    assert config["trial"]["number"] == best.number and config["trial"]["params"] == best.user_attrs["config"]
    assert config["scores"]["val_accuracy"] == best.value
    assert config["scores"]["test_accuracy"] == run.study.user_attrs["test_scores"][str(best.number)]
    assert config["data"]["fingerprint"] == run.data.fingerprint
    assert {"torch", "timm", "safetensors", "python"} <= set(config["versions"])
    assert config["weights"]["sha256"] == sha256_file(out / "model.safetensors")
    assert config["verification"]["val_accuracy"]["equal"] is True
    assert config["cost"]["parameters"] == best.user_attrs["inference_params"]
    card = (out / "README.md").read_text()
    for words in ("## Scores", "## Trained on", "## The search that chose it", "## Intended use and limits",
                  f"{best.value:.4f}", str(run.data.payload.root), "3 trials", "lora_rank"):
        assert words in card, words

    # the weights are the trial's saved ones, byte for byte as tensors
    saved = load_weights(weights_path(run.options.out, best.number))
    bundled = load_weights(out / "model.safetensors")
    assert saved.keys() == bundled.keys() and all(torch.equal(saved[k], bundled[k]) for k in saved)


def test_a_bundle_exported_without_the_runs_data_says_its_scores_were_not_checked(run, tmp_path):
    nowhere = tmp_path / "nowhere"
    out = export(run, tmp_path / "bundle", data=nowhere).out
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["note"] == f"the run's data ({nowhere}) is not there: the bundle's scores were not re-checked"
    assert "verification" not in config or not config["verification"]
    assert f"- Note: {config['data']['note']}." in (out / "README.md").read_text()


def test_loading_a_bundle_never_unpickles(run, tmp_path, monkeypatch):
    out = export(run, tmp_path / "bundle").out

    def refuse(*args, **kwargs):
        raise AssertionError("a bundle load unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    bundle = autotl.load(out, device="cpu")
    files, _ = val_files(run)
    assert len(bundle.predict(files)) == len(files)


def test_every_trial_lora_included_reproduces_its_recorded_validation_accuracy(run, tmp_path, tiny_weights):
    trials = run.study.get_trials(states=COMPLETE)
    ranks = {t.number: t.user_attrs["config"]["lora_rank"] for t in trials}
    assert ranks[0] == 4 and ranks[1] == 0  # the recipe's starting points: a LoRA trial is among them
    pretrained = load_weights(tiny_weights)
    files, labels = val_files(run)
    for trial in trials:
        out = export(run, tmp_path / f"trial{trial.number}", trial=trial.number).out
        bundle = autotl.load(out, device="cpu")
        assert bundle_accuracy(bundle, files, labels) == trial.value, trial.number
        state = load_weights(out / "model.safetensors")
        assert not [k for k in state if "lora" in k]
        if ranks[trial.number]:
            # LoRA trained the body through adapters: merged, the body's weights moved off the pretrained ones
            assert not torch.equal(state["conv_stem.weight"], pretrained["conv_stem.weight"])
            assert json.loads((out / "config.json").read_text())["weights"]["lora_rank"] == 4
        # the command line says the same
        code, output = cli_run("predict", out, *files, "--json")
        assert code == 0, output
        predicted = [bundle.label_names.index(p["label"]) for p in json.loads(output)]
        assert float((torch.tensor(predicted) == torch.tensor(labels)).float().mean()) == trial.value


def test_a_tampered_weight_file_is_refused_with_one_line(run, tmp_path):
    out = export(run, tmp_path / "bundle").out
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        autotl.load(out)
    files, _ = val_files(run)
    code, output = cli_run("predict", out, files[0])
    assert code == BundleError.exit_code == 7
    assert output.startswith("Error: ") and "checksum" in output and output.count("\n") == 1
    assert "Traceback" not in output


def test_a_tampered_config_checksum_or_missing_weights_are_refused(run, tmp_path):
    out = export(run, tmp_path / "bundle").out
    (out / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="missing"):
        autotl.load(out)


def test_files_a_backbone_writes_are_checksummed_too(run, tmp_path, monkeypatch):
    from autotl_timm import TimmBackbone

    original = TimmBackbone.bundle_files

    def with_a_vocabulary(self, directory):
        (directory / "tokenizer").mkdir()
        (directory / "tokenizer" / "vocab.txt").write_text("a\nb\n")
        return original(self, directory)

    monkeypatch.setattr(TimmBackbone, "bundle_files", with_a_vocabulary)
    out = export(run, tmp_path / "bundle").out
    config = json.loads((out / "config.json").read_text())
    assert set(config["files"]) == {"model.safetensors", "tokenizer/vocab.txt"}
    autotl.load(out)
    (out / "tokenizer" / "vocab.txt").write_text("a\nc\n")
    with pytest.raises(BundleError, match="vocab.txt does not match the checksum"):
        autotl.load(out)


def test_export_refuses_a_used_folder_and_replaces_a_bundle_with_force(run, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        export(run, tmp_path / "used")
    with pytest.raises(UsageError, match="holds none"):
        export(run, tmp_path / "used", force=True)
    out = export(run, tmp_path / "bundle").out
    with pytest.raises(UsageError, match="--force"):
        export(run, out, trial=1)
    export(run, out, trial=1, force=True)
    assert json.loads((out / "config.json").read_text())["trial"]["number"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_export_errors_are_one_line(run, tmp_path):
    runf = run.options.out
    code, output = cli_run("export", runf, "--out", tmp_path / "b", "--trial", 99)
    assert code == RunError.exit_code and "no trial 99" in output and output.count("\n") == 1
    code, output = cli_run("export", runf, "--out", tmp_path / "b", "--trial", 0, "--within", 0.01)
    assert code == UsageError.exit_code and "one of them" in output
    code, output = cli_run("export", tmp_path / "nowhere", "--out", tmp_path / "b")
    assert code == RunError.exit_code and "no autotl run" in output


def test_a_trial_whose_weights_were_not_kept_needs_refit(run, tmp_path, tiny_weights):
    options = SearchOptions(task="image-classification", data=run.options.data, out=tmp_path / "run",
                            recipe=run.options.recipe, models=[TINY], weights={TINY: str(tiny_weights)}, trials=2,
                            seed=0, keep_top=1)
    search = Search(options, get_registry(), Reporter())
    search.open()
    search.run()
    dropped = next(t for t in search.study.trials if not weights_path(tmp_path / "run", t.number).exists())
    code, output = cli_run("export", tmp_path / "run", "--out", tmp_path / "b", "--trial", dropped.number)
    assert code == RunError.exit_code and "--refit" in output and "Traceback" not in output
    assert output.count("\n") == 2  # "Exporting trial ..." and the error


def test_refit_trains_the_configuration_on_train_and_val(run, tmp_path):
    trial = run.study.get_trials(states=COMPLETE)[0]  # the LoRA trial
    code, output = cli_run("export", run.options.out, "--out", tmp_path / "refit", "--trial", trial.number, "--refit")
    assert code == 0, output
    config = json.loads((tmp_path / "refit" / "config.json").read_text())
    assert config["refit"]["on"] == "train+val"
    assert config["refit"]["epochs"] == trial.user_attrs["best_epoch"]
    assert config["refit"]["samples"] == config["data"]["sizes"]["train"] + config["data"]["sizes"]["val"]
    assert "val_accuracy" not in config["verification"]  # the refit model trained on the validation split
    assert "refit" in (tmp_path / "refit" / "README.md").read_text().lower()
    bundle = autotl.load(tmp_path / "refit", device="cpu")
    files, labels = val_files(run)
    assert 0.0 <= bundle_accuracy(bundle, files, labels) <= 1.0
    saved = load_weights(weights_path(run.options.out, trial.number))
    refit = load_weights(tmp_path / "refit" / "model.safetensors")
    assert saved.keys() == refit.keys()
    assert not all(torch.equal(saved[k], refit[k]) for k in saved)


def test_onnx_and_torchscript_match_the_pytorch_network(run, tmp_path):
    import onnxruntime  # noqa: F401  (part of the `test` extra: the check must run, never skip)

    code, output = cli_run("export", run.options.out, "--out", tmp_path / "b", "--format", "onnx",
                           "--format", "torchscript")
    assert code == 0, output
    assert "max abs difference" in output and "tolerance" in output
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt")):
        info = config["formats"][fmt]
        assert info["file"] == name and (tmp_path / "b" / name).is_file()
        assert info["parity"]["max_abs_diff_probability"] <= info["parity"]["tolerance"] == TOLERANCE
        assert info["parity"]["items"] == len(run.task.prepare(run.data, run.zoo[TINY], run.study.best_trial.params
                                                               | run.study.best_trial.user_attrs["config"]).val)
        assert info["latency"]["batch1_ms"] > 0 and info["pytorch_latency"]["batch1_ms"] > 0
        assert config["files"][name] == sha256_file(tmp_path / "b" / name)
    torch_bundle = autotl.load(tmp_path / "b", device="cpu")
    onnx_bundle = autotl.load(tmp_path / "b", device="cpu", engine="onnx")
    files, _ = val_files(run)
    a, b = torch_bundle.probabilities(files), onnx_bundle.probabilities(files)
    assert float((a - b).abs().max()) <= TOLERANCE
    code, output = cli_run("predict", tmp_path / "b", files[0], "--engine", "onnx")
    assert code == 0 and output.startswith(str(files[0]))


# -- latency, parameter counts and the production pick ---------------------------------------------

def test_every_completed_trial_records_its_size_and_latency(run):
    for trial in run.study.get_trials(states=COMPLETE):
        assert trial.user_attrs["inference_params"] > 0
        latency = trial.user_attrs["latency"]
        assert latency["batch1_ms"] > 0 and latency["batched_ms"] > 0 and latency["batch_size"] == 16
        assert latency["pass_ms"] > 0  # a split predicted on the process's threads: what the budget plans with
        assert latency["device"].startswith("cpu")
    # a LoRA trial counts the merged network: the same as a plain trial of the same model
    assert len({t.user_attrs["inference_params"] for t in run.study.get_trials(states=COMPLETE)}) == 1
    rows = trial_rows(run.study)
    assert all(r["latency"] and r["inference_params"] for r in rows)
    code, output = cli_run("trials", run.options.out)
    assert code == 0 and "params" in output and "ms/item b1" in output and "ms/item b16" in output


def test_best_within_picks_the_fastest_close_trial(run, tmp_path):
    trials = run.study.get_trials(states=COMPLETE)
    best = max(t.value for t in trials)
    for margin in (0.0, 1.0):
        close = [t for t in trials if t.value >= best - margin]
        fastest = min(close, key=lambda t: (t.user_attrs["latency"]["batch1_ms"], -t.value, t.number))
        code, output = cli_run("best", run.options.out, "--within", margin, "--json")
        assert code == 0, output
        picked = json.loads(output)
        assert picked["number"] == fastest.number
        assert "latency" in picked["chosen_by"] and picked["latency"]["batch1_ms"] == \
            fastest.user_attrs["latency"]["batch1_ms"]
    code, output = cli_run("best", run.options.out, "--within", 1.0)
    assert code == 0 and "Production pick" in output and "ms at batch 1" in output
    code, output = cli_run("export", run.options.out, "--out", tmp_path / "fast", "--within", 1.0)
    assert code == 0, output
    assert json.loads((tmp_path / "fast" / "config.json").read_text())["trial"]["number"] == fastest.number
    code, output = cli_run("best", run.options.out, "--within", -1)
    assert code == UsageError.exit_code


def test_within_ignores_trials_without_a_measured_latency(run):
    chosen = choose_trial(run.study, within=0.0)
    assert chosen.trial.value == run.study.best_value


def test_storage_and_study_instead_of_a_run_folder(tmp_path, tiny_weights):
    data = make_image_folder(tmp_path / "data", per_class=6)
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    code, output = cli_run("search", "--task", "image-classification", data, "--out", tmp_path / "run", "--recipe",
                           str(Path(__file__).parent / "data" / "tiny-image.yaml"), "--models", TINY, "--weights",
                           f"{TINY}={tiny_weights}", "--trials", 1, "--storage", url, "--study", "mine")
    assert code == 0, output
    code, output = cli_run("export", "--storage", url, "--study", "mine", "--out", tmp_path / "b")
    assert code == 0, output
    assert autotl.load(tmp_path / "b").label_names == ["dark", "light", "striped"]


# -- the plugin contract ----------------------------------------------------------------------------

class _Old(Backbone):
    name, family, modality = "old", "oldfam", "image"

    def build(self, num_classes, pretrained=True):
        return torch.nn.Linear(2, num_classes)

    def layer_groups(self, model):
        return [[""]]

    def lora_targets(self, model):
        return []


class _OldFamily(BackboneFamily):
    name, modality = "oldfam", "image"

    def default_zoo(self):
        return []

    def owns(self, name):
        return True

    def get(self, name, weights=None):
        return _Old()


class _OldTask(Task):
    name, modality = "old-task", "image"

    def load(self, path, *, seed, val_fraction, options):
        raise NotImplementedError

    def prepare(self, data, backbone, params):
        raise NotImplementedError


def test_plugins_without_export_say_so_clearly(tmp_path):
    calls = [lambda: _Old().bundle_files(tmp_path), lambda: _OldFamily().from_bundle("old", {}, tmp_path),
             lambda: _OldTask().export_settings({}, _Old(), {}), lambda: _OldTask().read_inputs(["x"]),
             lambda: _OldTask().preprocess_for_predict([], _Old(), {})]
    for call in calls:
        with pytest.raises(ExportUnsupportedError, match="does not support export"):
            call()


def test_refit_splits_concatenate_and_pad():
    a = TensorSplit({"ids": torch.ones(2, 3, dtype=torch.long)}, torch.tensor([0, 1]))
    b = TensorSplit({"ids": torch.full((1, 5), 2, dtype=torch.long)}, torch.tensor([1]))
    both = concat_splits(a, b)
    assert both.inputs["ids"].shape == (3, 5) and both.labels.tolist() == [0, 1, 1]
    assert both.inputs["ids"][0].tolist() == [1, 1, 1, 0, 0]


# -- the real thing, once ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_real_model_export_predict_reproduces_the_reported_test_accuracy(tmp_path):
    """MobileNetV2 with its real ImageNet weights: search, export with ONNX, predict the test folder."""
    def autotl_cli(*args):
        return subprocess.run([sys.executable, "-m", "autotl.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=600)

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "image-classification", "data": {"val_fraction": 0.2},
        "space": {"lr": {"low": 2.0e-3, "high": 3.0e-3, "log": True}},
        "fixed": {"resolution": 64, "epochs": 1, "batch_size": 32, "augment": "flip", "freeze": 8, "lora_rank": 0},
        "sampler": {"name": "random"}, "pruner": {"name": "none"},
        # the trial's own weights ship, checked against its validation score (tests/test_selection.py: the refit)
        "selection": {"cv_below": 0}, "converged_head": {"enabled": False}}))
    demo = ROOT / "demo" / "fashion_mnist"
    result = autotl_cli("search", "--task", "image-classification", demo, "--out", tmp_path / "run",
                        "--recipe", recipe, "--models", "mobilenetv2_100", "--trials", 1)
    assert result.returncode == 0, result.stderr
    result = autotl_cli("export", tmp_path / "run", "--out", tmp_path / "bundle", "--format", "onnx")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert config["verification"]["val_accuracy"]["equal"] is True
    assert config["formats"]["onnx"]["parity"]["max_abs_diff_probability"] <= TOLERANCE

    result = autotl_cli("predict", tmp_path / "bundle", demo / "test", "--csv")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.strip().splitlines()[1:]
    correct = [Path(line.split(",")[0]).parent.name == line.split(",")[1] for line in rows]
    assert len(rows) == sum(1 for p in (demo / "test").rglob("*.png"))
    accuracy = float(torch.tensor(correct).float().mean())
    assert accuracy == config["scores"]["test_accuracy"]
    assert config["scores"]["test_accuracy_from"] == "search"
