"""autotl task plugin: text-pair classification (paraphrase, entailment, question and answer match).

Layout: ``DATA/train.csv`` and optional ``DATA/val.csv``, ``DATA/test.csv``, UTF-8, with a header and
the columns ``text_a,text_b,label`` (other names through the data options ``first_column``,
``second_column``, ``label_column``). Each pair is tokenised as one input, ``[CLS] a [SEP] b [SEP]``
for a BERT-like tokenizer, with its token type ids where the tokenizer gives them.

Built only on autotl's public API: the task contract (:class:`autotl.Task`), the built-in target of
one class per item (:class:`autotl_tasks.targets.ClassLabel`: cross-entropy, accuracy, balanced
accuracy, macro-F1, log-loss), the plugin utilities (:func:`autotl.stratified_split`,
:func:`autotl.numbered_records`) and the text plugin's public helpers (its batch of texts that
groups by length, the trimming transform, the tokenizer and max length of a backbone).
"""

from __future__ import annotations

import csv
import hashlib
import io
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, TextIO

import torch

from autotl import (Backbone, DataReport, LoadedData, Param, Task, TensorSplit, TextPreprocessing, TrialData,
                    hookimpl, numbered_records, stratified_split)
from autotl.errors import DataError, UsageError
from autotl_tasks.targets import ClassLabel
from autotl_text import TextSplit, max_length_for, tokenizer_of, trim_transform

SPLITS = ("train", "val", "test")
COLUMNS = {"first_column": "text_a", "second_column": "text_b", "label_column": "label"}
#: the shortest max length a trial may ask for: the special tokens plus a few of each text.
MIN_MAX_LENGTH = 8


@dataclass
class Pairs:
    """The pairs and class indices of every split, and their tokens (computed once per tokenizer and length)."""

    root: Path
    classes: list[str]
    splits: dict[str, tuple[list[tuple[str, str]], list[int]]]
    val_from_train: bool
    files: dict[str, str]
    tokens: dict[Any, dict[str, torch.Tensor]] = field(default_factory=dict)


class TextPairClassification(Task):
    name = "text-pair-classification"
    modality = "text"
    target = ClassLabel()
    description = "pairs of texts and a label: DATA/train.csv (columns text_a,text_b,label), optional val.csv, test.csv"
    data_options = {
        "first_column": "the column holding the first text of each pair (default text_a)",
        "second_column": "the column holding the second text (default text_b)",
        "label_column": "the column holding the label (default label)",
    }
    parameters = (Param("max_length", "int", "tokens per pair, both texts and the special tokens (default: the "
                        "model's, at most 128); the longer text is cut first", low=MIN_MAX_LENGTH),)

    def load(self, path: Path, *, seed: int, val_fraction: float, options: Mapping[str, Any]) -> LoadedData:
        columns = _columns(options)
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"{root} is not a folder; give a folder holding train.csv (columns "
                            f"{','.join(columns)}) and optionally val.csv and test.csv")
        read = {split: _read_csv(root / f"{split}.csv", columns) for split in SPLITS if (root / f"{split}.csv").is_file()}
        if "train" not in read:
            raise DataError(f"no train.csv in {root}: put the training pairs there, one per line, columns "
                            f"{','.join(columns)}")
        classes = sorted({label for _, label in read["train"]})
        if len(classes) < 2:
            raise DataError(f"{root / 'train.csv'}: only one label ({classes[0]!r}); a classifier needs at least two")
        index = {name: i for i, name in enumerate(classes)}
        splits: dict[str, tuple[list[tuple[str, str]], list[int]]] = {}
        for split, rows in read.items():
            unknown = sorted({label for _, label in rows} - set(index))
            if unknown:
                raise DataError(f"{root / (split + '.csv')}: label {unknown[0]!r} never occurs in train.csv; the "
                                "model cannot learn it: add training pairs of that label or remove these")
            splits[split] = ([pair for pair, _ in rows], [index[label] for _, label in rows])
        val_from_train = "val" not in splits
        if val_from_train:
            pairs, labels = splits["train"]
            train_idx, val_idx = stratified_split(
                labels, len(classes), val_fraction, seed,
                too_few=lambda label, _: (f"{root / 'train.csv'}: label {classes[label]!r} has fewer than 2 pairs, "
                                          "so none can be held out for validation; add pairs or a val.csv"))
            splits["train"] = ([pairs[i] for i in train_idx], [labels[i] for i in train_idx])
            splits["val"] = ([pairs[i] for i in val_idx], [labels[i] for i in val_idx])
        digest = hashlib.sha256(repr(sorted(columns.items())).encode())
        for split in sorted(read):
            digest.update(split.encode() + (root / f"{split}.csv").read_bytes())
        data = Pairs(root, classes, splits, val_from_train, {s: f"{s}.csv" for s in read})
        counts = {split: dict(Counter(classes[label] for label in labels)) for split, (_, labels) in splits.items()}
        return LoadedData(label_names=classes, fingerprint=digest.hexdigest(), has_test="test" in splits, payload=data,
                          report=DataReport(classes=classes, counts=counts, val_from_train=val_from_train,
                                            root=str(root), details={"files": data.files, "columns": columns}))

    def prepare(self, data: LoadedData, backbone: Backbone, params: Mapping[str, Any]) -> TrialData:
        pairs: Pairs = data.payload
        pre = TextPreprocessing.of(backbone)
        tokenizer = tokenizer_of(backbone, pre)
        key = pre.tokenizer_key or getattr(tokenizer, "name_or_path", None) or id(tokenizer)
        max_length = max_length_for(params, pre)

        def split(name: str) -> TensorSplit:
            cache = (key, max_length, name)
            if cache not in pairs.tokens:
                pairs.tokens[cache] = encode_pairs(tokenizer, pairs.splits[name][0], max_length)
            return _split(pairs.tokens[cache], torch.tensor(pairs.splits[name][1], dtype=torch.long), tokenizer)

        return TrialData(train=split("train"), val=split("val"), test=split("test") if "test" in pairs.splits else None)

    def split_items(self, data: LoadedData, split: str) -> tuple[list[Any], list[int]] | None:
        """The pairs of ``split``, ``(first text, second text)`` in the file's order, and their class indices."""
        pairs: Pairs = data.payload
        if split not in pairs.splits:
            return None
        items, labels = pairs.splits[split]
        return list(items), list(labels)

    # -- export and prediction ----------------------------------------------------------------------
    def export_settings(self, data_options: Mapping[str, Any], backbone: Backbone,
                        params: Mapping[str, Any]) -> dict[str, Any]:
        pre = TextPreprocessing.of(backbone)
        tokenizer = tokenizer_of(backbone, pre)
        return {
            **_columns(data_options),
            "max_length": max_length_for(params, pre),
            "truncation": "pairs longer than max_length tokens lose tokens from the longer text first",
            "truncation_side": str(getattr(tokenizer, "truncation_side", "right")),
            "padding": "each batch cut to its longest pair, the attention mask marking the padding",
            "padding_side": str(getattr(tokenizer, "padding_side", "right")),
            "pad_token": str(tokenizer.pad_token),
            "tokenizer": f"{type(tokenizer).__name__}, saved with the bundle",
        }

    def read_inputs(self, sources: Sequence[str], *, stdin: TextIO | None = None) -> list[tuple[str, Any]]:
        """CSV files of pairs (each row as a mapping, named ``FILE:LINE``; the bundle's columns are read from it),
        and ``-`` (or nothing): one pair per line of standard input, the two texts separated by a tab."""
        items: list[tuple[str, Any]] = []
        for source in list(sources) or ["-"]:
            if source == "-":
                stream = stdin if stdin is not None else sys.stdin
                for number, line in enumerate(stream.read().splitlines(), start=1):
                    if line.strip():
                        first, tab, second = line.partition("\t")
                        if not tab:
                            raise DataError(f"standard input, line {number}: no tab between the two texts of the pair")
                        items.append((f"line {number}", (first, second)))
                continue
            path = Path(source)
            if not path.is_file():
                raise DataError(f"no such file of text pairs: {path}")
            header, records = _records(path)
            for line, record in records:
                items.append((f"{path}:{line}", dict(zip(header, record))))
        if not items:
            raise DataError(f"no text pairs in {', '.join(sources) or 'standard input'}")
        return items

    def preprocess_for_predict(self, raw: Sequence[Any], backbone: Backbone,
                               settings: Mapping[str, Any]) -> TensorSplit:
        """Pairs as ``(first, second)`` tuples, or mappings holding the bundle's two columns (CSV rows)."""
        first, second = str(settings.get("first_column", "text_a")), str(settings.get("second_column", "text_b"))
        pairs = [_pair(item, first, second, i) for i, item in enumerate(raw)]
        tokenizer = tokenizer_of(backbone, pad_token=settings.get("pad_token"))
        for side in ("padding_side", "truncation_side"):
            if settings.get(side) in ("left", "right"):
                setattr(tokenizer, side, settings[side])
        tokens = encode_pairs(tokenizer, pairs, int(settings["max_length"]))
        return _split(tokens, torch.zeros(len(pairs), dtype=torch.long), tokenizer)


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int) -> dict[str, torch.Tensor]:
    """Pairs tokenised together, the longer text cut first, padded to ``max_length``; the search's and predict's code.

    ``input_ids``, ``attention_mask`` and (where the tokenizer makes them) ``token_type_ids``, and the
    ``lengths`` in tokens. Padding every pair to ``max_length`` lets splits be joined as they are
    (``autotl export --refit``); batches are cut to their longest pair before the model sees them.
    """
    if not pairs:
        empty = torch.zeros(0, 1, dtype=torch.long)
        return {"input_ids": empty, "attention_mask": empty, "lengths": torch.zeros(0, dtype=torch.long)}
    encoded = tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first",
                        max_length=int(max_length), padding="max_length", return_tensors="pt")
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
    tokens = {k: encoded[k].long().contiguous() for k in keys}
    tokens["lengths"] = tokens["attention_mask"].sum(1)
    return tokens


def _split(tokens: Mapping[str, torch.Tensor], labels: torch.Tensor, tokenizer) -> TextSplit:
    inputs = {k: v for k, v in tokens.items() if k != "lengths"}
    return TextSplit(inputs, labels, _trim(left=getattr(tokenizer, "padding_side", "right") == "left"),
                     lengths=tokens["lengths"])


def _trim(left: bool):
    """The text plugin's trimming, which cuts the token type ids too."""
    trim = trim_transform(left)

    def transform(batch: Mapping[str, torch.Tensor], train: bool) -> dict[str, torch.Tensor]:
        out = trim(batch, train)
        if "token_type_ids" in batch:
            width = out["attention_mask"].shape[1]
            types = batch["token_type_ids"]
            out["token_type_ids"] = (types[:, -width:] if left else types[:, :width]).long()
        return out

    return transform


def _columns(options: Mapping[str, Any]) -> dict[str, str]:
    columns = {key: str((options or {}).get(key, default)) for key, default in COLUMNS.items()}
    if len(set(columns.values())) < 3:
        raise UsageError(f"data options first_column, second_column and label_column must name three different "
                         f"columns, not {columns}")
    return columns


def _records(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the records of a CSV file, each with the line it starts on."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: bytes that are not UTF-8 at byte {exc.start}; save the file as UTF-8") from None
    rows = []
    for line, record in numbered_records(csv.reader(io.StringIO(text, newline=""))):
        if isinstance(record, csv.Error):
            raise DataError(f"{path}:{line}: not valid CSV ({record}); quote texts that hold commas or quotes")
        if any(cell.strip() for cell in record):
            rows.append((line, record))
    if not rows:
        raise DataError(f"{path} is empty; it needs a header line and one pair per line")
    (_, header), records = rows[0], rows[1:]
    return [h.strip() for h in header], records


def _read_csv(path: Path, columns: Mapping[str, str]) -> list[tuple[tuple[str, str], str]]:
    """``((first, second), label)`` per row; a missing column, a row too short or an empty cell is a DataError."""
    header, records = _records(path)
    missing = [c for c in columns.values() if c not in header]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r} in the header ({', '.join(header)}); name the columns "
                        f"{', '.join(columns.values())} or set the data options first_column, second_column, "
                        "label_column")
    at = {key: header.index(name) for key, name in columns.items()}
    rows = []
    for line, record in records:
        if len(record) < len(header):
            raise DataError(f"{path}:{line}: {len(record)} fields, the header has {len(header)}")
        values = {key: record[i] for key, i in at.items()}
        empty = [columns[key] for key, value in values.items() if not value.strip()]
        if empty:
            raise DataError(f"{path}:{line}: the {empty[0]} column is empty; every pair needs two texts and a label")
        rows.append(((values["first_column"], values["second_column"]), values["label_column"].strip()))
    if not rows:
        raise DataError(f"{path} holds a header and no pairs")
    return rows


def _pair(item: Any, first: str, second: str, index: int) -> tuple[str, str]:
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, str) for t in item):
        return item[0], item[1]
    if isinstance(item, Mapping):
        missing = [c for c in (first, second) if c not in item]
        if missing:
            raise DataError(f"input {index} has no {missing[0]!r} column, which the bundle reads the pair's texts from")
        return str(item[first]), str(item[second])
    raise DataError(f"cannot predict on a {type(item).__name__} (input {index}): give (first text, second text) pairs")


@hookimpl
def register_tasks(register):
    register(TextPairClassification())


__all__ = ["TextPairClassification", "encode_pairs", "register_tasks"]
