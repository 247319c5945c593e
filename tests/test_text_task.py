"""The text-classification task: file formats, columns, checks with file/line/column, split, tokenisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tinybert
from autotl import TextPreprocessing
from autotl.errors import DataError, UsageError
from autotl.plugins import get_registry
from autotl_text import TextClassification, TextSplit, max_length_for
from autotl_transformers import TransformersFamily

TASK = TextClassification()


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return TransformersFamily().get(str(tinybert.save_tiny_bert(tmp_path_factory.mktemp("tinybert") / "m")))


def load(root: Path, seed: int = 0, val_fraction: float = 0.25, **options):
    return TASK.load(root, seed=seed, val_fraction=val_fraction, options=options)


def write(root: Path, name: str, text: str | bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


ROWS = "".join(f"{'good tea' if i % 2 else 'bad tea'} {i},{'pos' if i % 2 else 'neg'}\n" for i in range(8))


def test_the_task_is_registered_and_served_by_the_transformers_family():
    registry = get_registry()
    task = registry.tasks["text-classification"]
    assert task.modality == "text"
    assert "transformers" in [f.name for f in registry.families_for(task)]


# -- formats and columns ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_csv_tsv_and_jsonl_give_the_same_data(tmp_path, fmt):
    reference = load(tinybert.make_text_folder(tmp_path / "csv", fmt="csv"))
    data = load(tinybert.make_text_folder(tmp_path / fmt, fmt=fmt))
    assert data.label_names == ["neg", "pos"]
    assert data.payload.splits == reference.payload.splits
    assert data.fingerprint == reference.fingerprint
    assert data.has_test
    assert data.report["files"] == {"train": f"train.{fmt}", "test": f"test.{fmt}"}


def test_other_column_names_come_from_the_options(tmp_path):
    root = tinybert.make_text_folder(tmp_path / "d", columns=("review", "stars"), fmt="tsv")
    with pytest.raises(DataError, match=r"train.tsv line 1: no column 'text' \(its columns: 'review', 'stars'\)"):
        load(root)
    data = load(root, text_column="review", label_column="stars")
    assert data.label_names == ["neg", "pos"] and len(data.payload.splits["train"][0]) == 18
    assert data.report["text_column"] == "review"


def test_extra_columns_quoted_commas_and_multi_line_texts(tmp_path):
    root = tmp_path / "d"
    write(root, "train.csv", 'id,text,label\n1,"fine, really",a\n2,"two\nlines, here",b\n3,x,a\n4,y,b\n'
                             '5,"say ""hi""",a\n6,z,b\n')
    data = load(root)
    texts = data.payload.splits["train"][0] + data.payload.splits["val"][0]
    assert {"fine, really", "two\nlines, here", 'say "hi"'} <= set(texts)


def test_numeric_labels_sort_as_numbers(tmp_path):
    root = tmp_path / "d"
    write(root, "train.jsonl", "".join(f'{{"text": "t {i}", "label": {i % 3 * 5}}}\n' for i in range(12)))
    assert load(root).label_names == ["0", "5", "10"]


# -- bad input: one clear line naming file, line and column ---------------------------------------------

def test_a_missing_column(tmp_path):
    write(tmp_path / "d", "train.csv", "sentence,label\nhello,a\n")
    with pytest.raises(DataError, match=r"train.csv line 1: no column 'text' .*text_column"):
        load(tmp_path / "d")
    write(tmp_path / "j", "train.jsonl", '{"body": "x", "label": "a"}\n')
    with pytest.raises(DataError, match=r"train.jsonl line 1: no key 'text' \(its keys: 'body', 'label'\)"):
        load(tmp_path / "j")


def test_bytes_that_are_not_utf8_name_the_line_and_column(tmp_path):
    root = tmp_path / "d"
    write(root, "train.csv", b"text,label\ngood,a\n\"a long\ntext\",b\nbad caf\xe9,a\nfine,b\n")
    with pytest.raises(DataError, match=r"train.csv line 5, column 'text': bytes that are not UTF-8 .*save the file as "
                                        r"UTF-8"):
        load(root)
    write(root, "train.csv", b"text,label\ngood,a\nbad,\xff\n")
    with pytest.raises(DataError, match=r"train.csv line 3, column 'label': bytes that are not UTF-8"):
        load(root)


def test_a_byte_order_mark_is_fine(tmp_path):
    write(tmp_path / "d", "train.csv", "\ufefftext,label\n" + ROWS)
    assert load(tmp_path / "d").label_names == ["neg", "pos"]


@pytest.mark.parametrize("content, message", [
    ("", r"train.csv is empty; it needs a header line `text,label`"),
    ("\n\n", r"train.csv is empty"),
    ("text,label\n", r"train.csv has no rows"),
    ("text,label\n  ,a\n\t,b\n", r"train.csv: every one of its 2 rows was skipped \(empty text on line 2, ...\)"),
])
def test_an_empty_file(tmp_path, content, message):
    write(tmp_path / "d", "train.csv", content)
    with pytest.raises(DataError, match=message):
        load(tmp_path / "d")


def test_an_empty_test_file(tmp_path):
    write(tmp_path / "d", "train.csv", "text,label\n" + ROWS)
    write(tmp_path / "d", "test.csv", "")
    with pytest.raises(DataError, match="test.csv is empty"):
        load(tmp_path / "d")


def test_a_single_label(tmp_path):
    write(tmp_path / "d", "train.csv", "text,label\nx,a\ny,a\nz,a\n")
    with pytest.raises(DataError, match=r"train.csv, column 'label': every row has the label 'a'; .*two labels"):
        load(tmp_path / "d")


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_label_that_train_never_had(tmp_path, split):
    write(tmp_path / "d", "train.csv", "text,label\n" + ROWS)
    write(tmp_path / "d", f"{split}.csv", "text,label\nx,pos\ny,neg\n\nz,Pos\n")
    with pytest.raises(DataError, match=rf"{split}.csv line 5, column 'label': label 'Pos' never occurs in train.csv "
                                        r"\(its labels: 'neg', 'pos'\)"):
        load(tmp_path / "d")


@pytest.mark.parametrize("name, content, message", [
    ("train.csv", "text,label\nok,a\nhello, world,b\nfine,b\n",
     r"train.csv line 3: 3 fields where the header has 2 .*double quotes"),
    ("train.csv", 'text,label\nok,a\n"never closed,b\nx,a\ny,b\n',
     r"train.csv line 3: a double quote opens a text that is never closed"),
    ("train.csv", 'text,label\nok,a\n"quoted"then more,b\n', r"train.csv line 3: not valid CSV"),
    ("train.csv", "text,label\nok,a\nno label,\n", r"train.csv line 3, column 'label': the label is empty"),
    ("train.tsv", "text\tlabel\nok\ta\ntab\tinside\tb\n", r"train.tsv line 3: 3 fields where the header has 2"),
    ("train.jsonl", '{"text": "ok", "label": "a"}\n{"text": "broken", "label": \n',
     r"train.jsonl line 2: not valid JSON"),
    ("train.jsonl", '{"text": "ok", "label": "a"}\n\n["a", "b"]\n', r"train.jsonl line 3: a JSON list, not an object"),
    ("train.jsonl", '{"text": "ok", "label": "a"}\n{"text": "no label"}\n',
     r"train.jsonl line 2, column 'label': the key is missing"),
])
def test_unparseable_lines_name_file_and_line_and_offer_to_skip(tmp_path, name, content, message):
    write(tmp_path / "d", name, content)
    with pytest.raises(DataError, match=message) as info:
        load(tmp_path / "d")
    assert "on_bad_lines: skip" in str(info.value) and "\n" not in str(info.value)


def test_bad_lines_are_skipped_and_listed_when_asked(tmp_path):
    write(tmp_path / "d", "train.csv", "text,label\n" + ROWS + "hello, world,b\nno label,\n" + ROWS)
    data = load(tmp_path / "d", on_bad_lines="skip")
    skipped = data.report["skipped"]
    assert [s["file"] for s in skipped] == ["train.csv:10", "train.csv:11"]
    assert "3 fields" in skipped[0]["reason"] and skipped[1]["reason"].startswith("column 'label'")
    assert data.report["skipped_counts"] == {"train": 2}
    with pytest.raises(UsageError, match="on_bad_lines"):
        load(tmp_path / "d", on_bad_lines="ignore")


def test_empty_texts_are_skipped_and_counted(tmp_path):
    write(tmp_path / "d", "train.csv", "text,label\n" + ROWS + '   ,pos\n"",neg\n')
    write(tmp_path / "d", "test.jsonl", '{"text": "x", "label": "pos"}\n{"text": null, "label": "neg"}\n'
                                        '{"text": " \\t ", "label": "neg"}\n{"text": "y", "label": "neg"}\n')
    data = load(tmp_path / "d")
    assert data.report["skipped"] == [
        {"file": "train.csv:10", "reason": "empty text"}, {"file": "train.csv:11", "reason": "empty text"},
        {"file": "test.jsonl:2", "reason": "empty text"}, {"file": "test.jsonl:3", "reason": "empty text"}]
    assert data.report["skipped_counts"] == {"train": 2, "test": 2}
    assert sum(data.report["counts"]["test"].values()) == 2


def test_folders_and_files_that_are_not_there(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        load(tmp_path / "nope")
    write(tmp_path / "d", "test.csv", "text,label\nx,a\n")
    with pytest.raises(DataError, match="no train.csv, train.tsv or train.jsonl"):
        load(tmp_path / "d")
    write(tmp_path / "d", "train.csv", "text,label\n" + ROWS)
    write(tmp_path / "d", "train.tsv", "text\tlabel\nx\ta\n")
    with pytest.raises(DataError, match="holds train.csv and train.tsv; keep one"):
        load(tmp_path / "d")
    with pytest.raises(DataError, match="is a file; give the folder"):
        load(tmp_path / "d" / "train.csv")


# -- split and fingerprint ---------------------------------------------------------------------------------

def test_the_validation_split_is_stratified_seeded_and_leaves_every_label_in_train(tmp_path):
    rows = [(f"text {i}", "big") for i in range(40)] + [(f"other {i}", "small") for i in range(3)] + \
           [("one more", "pair"), ("and another", "pair")]
    root = tmp_path / "d"
    root.mkdir()
    tinybert.write_rows(root / "train.csv", rows)
    data = load(root, val_fraction=0.2)
    assert data.payload.val_from_train and data.report["val_from_train"]
    counts = data.report["counts"]
    assert counts["val"] == {"big": 8, "pair": 1, "small": 1}
    assert counts["train"] == {"big": 32, "pair": 1, "small": 2}
    assert load(root, val_fraction=0.2).payload.splits == data.payload.splits
    assert load(root, seed=1, val_fraction=0.2).payload.splits["val"] != data.payload.splits["val"]


def test_a_label_with_one_row_cannot_be_split(tmp_path):
    write(tmp_path / "d", "train.csv", "text,label\n" + ROWS + "lonely,solo\n")
    with pytest.raises(DataError, match=r"train.csv line 10: label 'solo' has only this one row.*val file"):
        load(tmp_path / "d")


def test_a_val_file_is_used_as_it_is(tmp_path):
    write(tmp_path / "d", "train.csv", "text,label\n" + ROWS)
    write(tmp_path / "d", "val.csv", "text,label\nx,pos\n")
    data = load(tmp_path / "d")
    assert not data.payload.val_from_train and len(data.payload.splits["train"][0]) == 8
    assert data.payload.splits["val"] == (["x"], [1])
    assert not data.has_test


def test_the_fingerprint_follows_the_content(tmp_path):
    root = tinybert.make_text_folder(tmp_path / "d")
    first = load(root).fingerprint
    assert load(root, seed=3).fingerprint == first
    assert load(root, text_column="text").fingerprint == first
    text = (root / "test.csv").read_text()
    (root / "test.csv").write_text(text.replace("pos", "neg", 1))
    assert load(root).fingerprint != first


# -- tokenisation ------------------------------------------------------------------------------------------

def test_tokenisation_happens_once_per_max_length(tmp_path, backbone, monkeypatch):
    data = load(tinybert.make_text_folder(tmp_path / "d"))
    tokenizer = backbone.preprocessing()["tokenizer"]
    calls = []
    original = type(tokenizer).__call__
    monkeypatch.setattr(type(tokenizer), "__call__", lambda self, *a, **k: calls.append(k["max_length"]) or
                        original(self, *a, **k))
    first = TASK.prepare(data, backbone, {"max_length": 16, "lr": 1e-3})
    again = TASK.prepare(data, backbone, {"max_length": 16, "lr": 1e-2, "freeze": 1})
    for name in ("train", "val", "test"):
        a, b = getattr(first, name), getattr(again, name)
        assert a.inputs["input_ids"] is b.inputs["input_ids"]
        assert a.inputs["attention_mask"] is b.inputs["attention_mask"]
        assert a.labels is b.labels
    assert calls == [16, 16, 16]
    longer = TASK.prepare(data, backbone, {"max_length": 32})
    assert longer.train.inputs["input_ids"] is not first.train.inputs["input_ids"]
    assert calls == [16, 16, 16, 32, 32, 32]
    default = TASK.prepare(data, backbone, {})  # the backbone's default max length (64 is the tiny model's limit)
    assert calls[-1] == backbone.preprocessing()["max_length"] == 64


def test_prepared_splits_hold_the_texts_and_labels(tmp_path, backbone):
    data = load(tinybert.make_text_folder(tmp_path / "d"))
    trial = TASK.prepare(data, backbone, {"max_length": 10})
    assert isinstance(trial.train, TextSplit) and set(trial.train.inputs) == {"input_ids", "attention_mask"}
    assert trial.train.inputs["input_ids"].shape[1] <= 10
    assert len(trial.train) + len(trial.val) == 24 and len(trial.test) == 24
    texts, labels = data.payload.splits["test"]
    tokenizer = backbone.preprocessing()["tokenizer"]
    # every text keeps its own label after the split is sorted by length
    pairs = sorted(zip([tokenizer(t, truncation=True, max_length=10)["input_ids"] for t in texts], labels))
    ids, mask = trial.test.inputs["input_ids"], trial.test.inputs["attention_mask"]
    got = sorted(zip([ids[i][mask[i] > 0].tolist() for i in range(len(ids))], trial.test.labels.tolist()))
    assert got == pairs


def test_batches_are_trimmed_to_their_longest_text_and_cover_the_split(tmp_path, backbone):
    data = load(tinybert.make_text_folder(tmp_path / "d", per_class=40))
    split = TASK.prepare(data, backbone, {"max_length": 64}).train
    seen = []
    generator = torch.Generator().manual_seed(0)
    for inputs, labels in split.batches(8, train=True, generator=generator):
        assert inputs["input_ids"].dtype == torch.long and inputs["attention_mask"].dtype == torch.long
        assert inputs["attention_mask"][:, -1].any()  # no column of padding only
        assert inputs["input_ids"].shape[1] == int(inputs["attention_mask"].sum(1).max())
        seen.extend(labels.tolist())
    assert sorted(seen) == sorted(split.labels.tolist())
    eval_labels = torch.cat([labels for _, labels in split.batches(16)])
    assert torch.equal(eval_labels, split.labels)  # evaluation keeps the split's order


def test_max_length_is_checked_and_capped_by_the_model():
    pre = TextPreprocessing(tokenizer=object(), max_length=128, model_max_length=512)
    assert max_length_for({}, pre) == 128
    assert max_length_for({"max_length": 64}, pre) == 64
    assert max_length_for({"max_length": 4096}, pre) == 512
    with pytest.raises(UsageError, match="too short"):
        max_length_for({"max_length": 2}, pre)
