"""The token-classification task on the tiny BERT: CoNLL reading, sentence splits, word-to-piece alignment,
the TagSequence target's loss, metrics and decoding, and a search -> export -> predict round trip."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import tinybert
from autotl.cli import cli
from autotl.errors import DataError, UsageError
from autotl.plugins import get_registry, target_of
from autotl_tasks.targets import IGNORE, TagSequence, is_bio
from autotl_tasks.tokens import TokenClassification, read_conll
from autotl_text import encode_words
from autotl_transformers import TransformersFamily

TASK = TokenClassification()
TAGS = {**{w: "ADJ" for w in tinybert.POSITIVE + tinybert.NEGATIVE}, "the": "DET", "a": "DET",
        **{w: "NOUN" for w in ("food", "tea", "coffee", "box", "product", "taste")}}
WORDS = tinybert.POSITIVE + tinybert.NEGATIVE + tinybert.NEUTRAL


def make_conll(root: Path, *, sentences=(("train", 60), ("test", 20)), seed: int = 0, noise: float = 0.15,
               bio: bool = False) -> Path:
    """Sentences of the tiny vocabulary, a tag per word: parts of speech (a share ``noise`` of the other words
    tagged at random X or Y, so no model is perfect), or BIO food entities (``B-FOOD``/``I-FOOD``/``O``)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in sentences:
        lines = ["# a comment line"]
        for _ in range(n):
            previous = "O"
            for _ in range(rng.randint(3, 12)):
                word = rng.choice(WORDS)
                if bio:
                    tag = "O" if TAGS.get(word) != "NOUN" else ("I-FOOD" if previous != "O" else "B-FOOD")
                    previous = tag
                else:
                    tag = TAGS.get(word) or (rng.choice("XY") if rng.random() < noise else "X")
                lines.append(f"{word}\t{tag}")
            lines.append("")
        (root / f"{split}.conll").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return str(tinybert.save_tiny_bert(tmp_path_factory.mktemp("tinybert") / "m"))


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from autotl import TextPreprocessing

    return TextPreprocessing.of(TransformersFamily().get(tiny_model)).tokenizer


# -- reading -----------------------------------------------------------------------------------------------

def test_conll_files_read_with_comments_spaces_and_a_chosen_tag_column(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text("# sent_id = 1\n1\tgood\tADJ\tJJ\n2\ttea\tNOUN\tNN\n\n\n#\t#\tSYM\tX\n", encoding="utf-8")
    sentences = read_conll(path, token_column=1, tag_column=2)
    assert [(s.line, s.words, s.tags) for s in sentences] == [(2, ["good", "tea"], ["ADJ", "NOUN"]),
                                                               (6, ["#"], ["SYM"])]
    assert [s.tags for s in read_conll(path, 1, -1)][0] == ["JJ", "NN"]
    path.write_text("good  ADJ\n tea NOUN\n", encoding="utf-8")  # spaces separate columns where no tab does
    assert [(s.words, s.tags) for s in read_conll(path)] == [(["good", "tea"], ["ADJ", "NOUN"])]


def test_a_line_without_the_tag_column_names_the_file_and_line(tmp_path):
    (tmp_path / "train.conll").write_text("good\tADJ\ntea\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.conll line 2: 1 column\(s\).*tag_column"):
        TASK.load(tmp_path, seed=0, val_fraction=0.2, options={})
    with pytest.raises(UsageError, match="tag_column must be a column number"):
        TASK.load(tmp_path, seed=0, val_fraction=0.2, options={"tag_column": "last"})


def test_a_test_tag_unknown_to_training_is_refused(tmp_path):
    make_conll(tmp_path)
    (tmp_path / "test.conll").write_text("good\tADJ\ntea\tDRINK\n", encoding="utf-8")
    with pytest.raises(DataError, match="test.conll, sentence at line 1: the tag 'DRINK' never occurs in train.conll"):
        TASK.load(tmp_path, seed=0, val_fraction=0.2, options={})


def test_validation_is_carved_by_whole_sentences_and_seeded(tmp_path):
    make_conll(tmp_path)
    data = TASK.load(tmp_path, seed=0, val_fraction=0.25, options={})
    again = TASK.load(tmp_path, seed=0, val_fraction=0.25, options={})
    other = TASK.load(tmp_path, seed=1, val_fraction=0.25, options={})
    splits = data.payload.splits
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (45, 15, 20)
    assert [s.line for s in splits["val"]] == [s.line for s in again.payload.splits["val"]]
    assert [s.line for s in splits["val"]] != [s.line for s in other.payload.splits["val"]]
    assert sorted(s.line for s in splits["train"] + splits["val"]) == [s.line for s in read_conll(
        tmp_path / "train.conll")]
    assert data.label_names == ["ADJ", "DET", "NOUN", "X", "Y"] and data.has_test
    assert data.report["sizes"]["val"]["sentences"] == 15 and data.report.val_from_train


# -- words to pieces ---------------------------------------------------------------------------------------

def test_each_word_is_labelled_on_its_first_piece_only(tokenizer):
    split = encode_words(tokenizer, [["good", "teabox", "a"]], [[0, 2, 1]], max_length=16)
    ids, labels = split.inputs["input_ids"][0], split.labels[0]
    pieces = tokenizer.convert_ids_to_tokens(ids[: int(split.lengths[0])].tolist())
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    scored = [(pieces[p], int(labels[p])) for p in range(len(pieces)) if labels[p] != IGNORE]
    assert pieces[2:6] == ["tea", "##b", "##o", "##x"]  # the tiny vocabulary has no "teabox"
    assert scored == [("good", 0), ("tea", 2), ("a", 1)]
    assert (labels[len(pieces):] == IGNORE).all() and split.words == [["good", "teabox", "a"]]


def test_a_long_sentence_is_split_into_windows_that_tag_every_word(tokenizer):
    words = ["good", "teabox"] * 12  # 12 one-piece words and 12 six-piece words: far beyond 16 pieces
    split = encode_words(tokenizer, [words, ["bad"]], [list(range(24)), [7]], max_length=16)
    assert len(split) > 3 and split.owner.tolist() == [0] * (len(split) - 1) + [1]
    assert int(split.lengths.max()) <= 16
    assert [int(t) for t in split.labels[split.labels != IGNORE]] == list(range(24)) + [7]
    assert sum(split.words, []) == words + ["bad"]


def test_a_word_the_tokenizer_drops_is_read_as_unknown_and_still_tagged(tokenizer):
    split = encode_words(tokenizer, [["good", "\u200b", "tea"]], [[0, 1, 2]], max_length=16)
    assert split.labels[split.labels != IGNORE].tolist() == [0, 1, 2]
    assert split.words == [["good", "[UNK]", "tea"]]


# -- the target ----------------------------------------------------------------------------------------

def test_the_primary_is_entity_f1_for_bio_tags_and_token_accuracy_otherwise():
    assert is_bio(["B-PER", "I-PER", "O"]) and not is_bio(["NOUN", "VERB"]) and not is_bio(["O", "I-X"])
    task = get_registry().tasks["token-classification"]
    assert target_of(task, ["B-PER", "I-PER", "O"]).primary == "entity_f1"
    assert target_of(task, ["NOUN", "VERB"]).primary == "token_accuracy"
    assert "entity_f1" not in target_of(task, ["NOUN", "VERB"]).metrics
    assert target_of(task).primary == "token_accuracy"  # unbound: every metric a recipe may name


def test_scores_count_words_not_pieces_and_entities_with_seqeval():
    target = TagSequence(["B-PER", "I-PER", "O"])
    labels = torch.tensor([[IGNORE, 0, IGNORE, 1, 2, IGNORE], [IGNORE, 2, 0, IGNORE, IGNORE, IGNORE]])
    guess = torch.tensor([[2, 0, 2, 1, 2, 2], [2, 2, 2, 2, 2, 2]])  # right on 4 of the 5 words
    outputs = torch.nn.functional.one_hot(guess, 3).float()[:, :5]  # trimmed to the longest row, as in the search
    scores = target.score(outputs, labels, {})
    assert scores["token_accuracy"] == pytest.approx(4 / 5)
    assert scores["entity_f1"] == pytest.approx(2 * 0.5 / 1.5)  # 1 of 1 predicted entities, 1 of 2 true ones
    loss = target.loss(outputs * 10, labels, {}, {})
    assert float(loss) == pytest.approx(float(torch.nn.functional.cross_entropy(
        outputs[labels[:, :5] != IGNORE] * 10, labels[:, :5][labels[:, :5] != IGNORE])))


def test_decoding_gives_one_tag_per_input_word_with_windows_joined(tokenizer):
    target = TagSequence(["A", "B"])
    split = encode_words(tokenizer, [["good", "teabox"] * 6, ["bad"]], None, max_length=12)
    logits = torch.zeros(*split.labels.shape, 2)
    logits[..., 1] = 1.0
    decoded = target.decode(logits, split, {}, ["A", "B"], top_k=2)
    assert [d["tokens"] for d in decoded] == [["good", "teabox"] * 6, ["bad"]]
    assert decoded[0]["tags"] == ["B"] * 12 and len(decoded[1]["top_k"]) == 1
    assert decoded[1]["top_k"][0][0]["tag"] == "B" and decoded[1]["top_k"][0][1]["tag"] == "A"


# -- search, export, predict -----------------------------------------------------------------------------

def test_search_export_and_predict_agree_on_the_test_words(tmp_path, tiny_model):
    data = make_conll(tmp_path / "data", bio=True)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "token-classification", "data": {"val_fraction": 0.25},
        "space": {"lr": {"low": 1.0e-2, "high": 2.0e-2}},
        "fixed": {"epochs": 2, "batch_size": 8, "max_length": 12, "freeze": 0, "lora_rank": 0},
        "sampler": {"name": "random"}, "pruner": {"name": "none"}}))
    run = CliRunner().invoke
    result = run(cli, ["search", "--task", "token-classification", str(data), "--recipe", str(recipe), "--models",
                       tiny_model, "--trials", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    best = json.loads(run(cli, ["best", str(tmp_path / "run"), "--json"]).output)
    assert best["metric"] == "entity_f1"
    # small data: the trial was cross-validated (per-position out-of-fold outputs) and its refit is what ships
    assert best["selected_by"].startswith("cross-validation") and best["test_weights"] == "refit"
    assert set(best["test_metrics"]) == {"entity_f1", "token_accuracy", "macro_f1"}
    result = run(cli, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "bundle"), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bundle" / "model.onnx").is_file()
    for engine in ("torch", "onnx"):
        result = run(cli, ["predict", str(tmp_path / "bundle"), str(data / "test.conll"), "--json",
                           "--engine", engine])
        assert result.exit_code == 0, result.output
        predictions = json.loads(result.output)
        sentences = read_conll(data / "test.conll")
        assert [p["tokens"] for p in predictions] == [s.words for s in sentences]
        right = sum(t == g for s, p in zip(sentences, predictions) for t, g in zip(s.tags, p["tags"]))
        accuracy = right / sum(len(s.words) for s in sentences)
        assert accuracy == pytest.approx(best["test_metrics"]["token_accuracy"], abs=1e-9)
    result = run(cli, ["predict", str(tmp_path / "bundle"), "-", "--json"], input="good tea was bad\n")
    assert [p["tokens"] for p in json.loads(result.output)] == [["good", "tea", "was", "bad"]]

