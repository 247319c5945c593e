"""token-classification: a tag per word (part of speech, BIO entities...) from CoNLL-style files.

Layout: ``DATA/train.conll`` and optional ``val.conll``, ``test.conll`` (or ``.conllu``, ``.tsv``, ``.txt``):
one word a line, its columns separated by tabs (or spaces), a blank line between sentences; lines that
start with ``#`` and hold no tab are comments. Which columns hold the word and its tag are data options
(``token_column``, default the first; ``tag_column``, default the last). Without a validation file, whole
sentences are held out (seeded). Words are cut into the tokenizer's pieces; a word's tag is learnt and
predicted on its first piece. A sentence longer than ``max_length`` pieces is split into windows of whole
words, each tagged on its own, so that every word gets a tag.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence, TextIO

import torch
import torch.nn.functional as F

from autotl import Backbone, DataReport, LoadedData, Param, Target, Task, TextPreprocessing, TrialData
from autotl.errors import DataError, PluginError, UsageError
from autotl_text import TextSplit, max_length_for, tokenizer_of, trim_transform

from .targets import ClassLabel

SPLITS = ("train", "val", "test")
FORMATS = (".conll", ".conllu", ".tsv", ".txt")
IGNORE = -100  # the label of positions that are not scored: later pieces of a word, special tokens, padding


class TagSequence(Target):
    """A tag per word: cross-entropy on each word's first piece; token accuracy and tag macro-F1, and entity-level
    F1 (seqeval, strict IOB2) as primary where every tag is ``O``, ``B-x`` or ``I-x``."""

    per_position = True
    WORDS = {"token_accuracy": "maximize", "macro_f1": "maximize"}

    def __init__(self, label_names: Sequence[str] | None = None):
        self.label_names = list(label_names) if label_names is not None else None
        entities = self.label_names is None or is_bio(self.label_names)
        self.metrics = {"entity_f1": "maximize", **self.WORDS} if entities else dict(self.WORDS)
        self.primary = "entity_f1" if entities and self.label_names is not None else "token_accuracy"

    def for_labels(self, label_names: Sequence[str]) -> "TagSequence":
        return TagSequence(label_names)

    def loss(self, outputs, labels, calibration, params) -> torch.Tensor:
        labels = aligned(labels, outputs.shape[1])
        return F.cross_entropy(outputs.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)

    def score(self, outputs, labels, calibration) -> dict[str, float]:
        labels = aligned(labels, outputs.shape[1] if outputs.dim() == 3 else labels.shape[1])
        scored = labels != IGNORE
        if not scored.any():
            return {name: float("nan") for name in self.metrics}
        from sklearn.metrics import f1_score

        guess = outputs.argmax(-1)
        true, pred = labels[scored], guess[scored]
        out = {"token_accuracy": int((true == pred).sum()) / len(true),
               "macro_f1": float(f1_score(true.numpy(), pred.numpy(), labels=true.unique().numpy(), average="macro",
                                          zero_division=0))}
        if "entity_f1" in self.metrics:
            out["entity_f1"] = self._entity_f1(labels, guess, scored)
        return out

    def _entity_f1(self, labels: torch.Tensor, guess: torch.Tensor, scored: torch.Tensor) -> float:
        if not self.label_names:
            return float("nan")
        from seqeval.metrics import f1_score
        from seqeval.scheme import IOB2

        names = self.label_names
        true = [[names[t] for t in row[keep].tolist()] for row, keep in zip(labels, scored)]
        pred = [[names[t] for t in row[keep].tolist()] for row, keep in zip(guess, scored)]
        return float(f1_score(true, pred, mode="strict", scheme=IOB2, zero_division=0))

    def decode(self, outputs, split, calibration, label_names, top_k: int = 1) -> list[dict[str, Any]]:
        """``{"tokens": [...], "tags": [...]}`` per item (its windows joined); with ``top_k`` above one, ``top_k``:
        the likeliest tags of each word with their probabilities."""
        probs = self.probabilities(outputs)
        labels = aligned(split.labels, probs.shape[1])
        words, owner = getattr(split, "words", None), getattr(split, "owner", None)
        items: dict[int, dict[str, Any]] = {}
        for row in range(len(labels)):
            item = items.setdefault(int(owner[row]) if owner is not None else row,
                                    {"tokens": [], "tags": [], **({"top_k": []} if top_k > 1 else {})})
            first = (labels[row] != IGNORE).nonzero().flatten()
            values, indices = probs[row, first].topk(max(1, min(top_k, len(label_names))), dim=-1)
            item["tokens"].extend(words[row] if words is not None else [None] * len(first))
            item["tags"].extend(label_names[int(i)] for i in indices[:, 0])
            if top_k > 1:
                item["top_k"].extend([{"tag": label_names[int(i)], "probability": float(v)} for v, i in zip(vs, ix)]
                                     for vs, ix in zip(values, indices))
        return [items[key] for key in sorted(items)]

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(outputs.float(), dim=-1)

    def figure(self, outputs, labels, calibration, label_names) -> Any:
        """The per-tag confusion matrix over the words (true tags in rows, predicted in columns)."""
        labels = aligned(labels, outputs.shape[1])
        scored = labels != IGNORE
        fig = ClassLabel().figure(outputs[scored], labels[scored], calibration, label_names)
        fig.update_layout(title="Per-tag confusion over the test words: rows are the true tags, columns the "
                                "predictions; the numbers are counts, the colour the share of the true tag")
        return fig


def is_bio(names: Sequence[str]) -> bool:
    """Whether the tags are IOB2 entity tags: ``O``, ``B-type`` and ``I-type``, with at least one ``B-``."""
    return any(n.startswith("B-") for n in names) and all(n == "O" or n[:2] in ("B-", "I-") for n in names)


def aligned(labels: torch.Tensor, positions: int) -> torch.Tensor:
    """``labels`` cut or padded (with the ignored label) to ``positions`` columns, as the outputs were trimmed."""
    if labels.shape[1] >= positions:
        return labels[:, :positions]
    return F.pad(labels, (0, positions - labels.shape[1]), value=IGNORE)


# -- reading CoNLL files -------------------------------------------------------------------------------------

@dataclass
class Sentence:
    line: int  # where its first word is, counted from 1
    words: list[str]
    tags: list[str]
    fields: list[list[str]] = field(default_factory=list, repr=False)  # every column, for predict


@dataclass
class TagData:
    tags: list[str]
    splits: dict[str, list[Sentence]]
    files: dict[str, str]
    options: dict[str, int]
    val_from_train: bool
    encoded: dict[tuple, "TagSplit"] = field(default_factory=dict, repr=False)


def column(options: Mapping[str, Any], key: str, default: int) -> int:
    try:
        return int(options.get(key, default))
    except (TypeError, ValueError):
        raise UsageError(f"data option {key} must be a column number (0 the first, -1 the last), not "
                         f"{options.get(key)!r}; e.g. -d {key}=1") from None


def read_conll(path: Path, token_column: int = 0, tag_column: int | None = -1) -> list[Sentence]:
    """The sentences of a CoNLL-style file (``tag_column=None``: no tags read)."""
    try:
        text = path.read_bytes().removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path.name}: bytes that are not UTF-8 at byte {exc.start}; save it as UTF-8") from None
    sentences: list[Sentence] = []
    current: Sentence | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or (line.startswith("#") and "\t" not in line):
            current = None
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        try:
            word = fields[token_column].strip()
            tag = fields[tag_column].strip() if tag_column is not None else ""
            if tag_column is not None and token_column % len(fields) == tag_column % len(fields):
                raise IndexError
        except IndexError:
            raise DataError(f"{path.name} line {number}: {len(fields)} column(s), but the data options read column "
                            f"{token_column} (token_column) and {tag_column} (tag_column); give a word and its tag "
                            "a line, or set -d token_column=N -d tag_column=N") from None
        if not word or (tag_column is not None and not tag):
            raise DataError(f"{path.name} line {number}: an empty word or tag; give a word and its tag a line")
        if current is None:
            current = Sentence(number, [], [])
            sentences.append(current)
        current.words.append(word)
        current.tags.append(tag)
        if tag_column is None:
            current.fields.append(fields)
    return sentences


def load_conll_folder(root: Path, *, seed: int, val_fraction: float, options: Mapping[str, Any]) -> TagData:
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}; give a folder holding train.conll (and optional "
                        "val.conll, test.conll)")
    files = {}
    for split in SPLITS:
        found = [root / f"{split}{ext}" for ext in FORMATS if (root / f"{split}{ext}").is_file()]
        if len(found) > 1:
            raise DataError(f"{root} holds {' and '.join(p.name for p in found)}; keep one file per split")
        if found:
            files[split] = found[0]
    if "train" not in files:
        raise DataError(f"{root} has no train.conll; put the tagged sentences there (a word and its tag a line, a "
                        "blank line between sentences)")
    opts = {"token_column": column(options, "token_column", 0), "tag_column": column(options, "tag_column", -1)}
    splits = {split: read_conll(path, opts["token_column"], opts["tag_column"]) for split, path in files.items()}
    for split, sentences in splits.items():
        if not sentences:
            raise DataError(f"{files[split].name} holds no sentences; give a word and its tag a line")
    tags = sorted({t for s in splits["train"] for t in s.tags})
    if len(tags) < 2:
        raise DataError(f"{files['train'].name}: every word has the tag {tags[0]!r}; tagging needs at least two tags")
    for split in ("val", "test"):
        for s in splits.get(split, []):
            unknown = next((t for t in s.tags if t not in tags), None)
            if unknown is not None:
                raise DataError(f"{files[split].name}, sentence at line {s.line}: the tag {unknown!r} never occurs "
                                f"in {files['train'].name}; fix the tag or add sentences with it to the training file")
    val_from_train = "val" not in splits
    if val_from_train:
        train = splits["train"]
        if len(train) < 2:
            raise DataError(f"{files['train'].name} holds one sentence: too few to hold some out for validation; "
                            "add sentences or a val.conll")
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        held = set(order[:min(len(train) - 1, max(1, round(val_fraction * len(train))))])
        splits["val"] = [s for i, s in enumerate(train) if i in held]
        splits["train"] = [s for i, s in enumerate(train) if i not in held]
    return TagData(tags, splits, {s: p.name for s, p in files.items()}, opts, val_from_train)


# -- words to pieces ---------------------------------------------------------------------------------------

@dataclass
class TagSplit(TextSplit):
    """Tokenised windows of sentences; ``owner``: the sentence (item) each row belongs to, ``words`` its words."""

    owner: torch.Tensor | None = None
    words: list[list[str]] | None = None

    def take(self, idx: torch.Tensor) -> "TagSplit":
        taken = super().take(idx)
        return replace(taken, words=None if self.words is None else [self.words[i] for i in idx.tolist()])


def encode_words(tokenizer, sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[int]] | None,
                 max_length: int) -> TagSplit:
    """Sentences of words (and their tag indices) as pieces, labelled on each word's first piece.

    A sentence longer than ``max_length`` pieces (special tokens included) becomes several rows, windows of
    whole words; a word the tokenizer drops (no piece) is read as its unknown token, so that every word is tagged.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise PluginError(f"{type(tokenizer).__name__} is not a fast tokenizer: token classification aligns words to "
                          "pieces through a fast tokenizer's word_ids; choose a model with a tokenizer.json")
    budget = max(1, max_length - tokenizer.num_special_tokens_to_add(pair=False))
    try:
        pieces = tokenizer([list(s) for s in sentences], is_split_into_words=True, add_special_tokens=False)
    except (ValueError, AssertionError) as exc:
        raise PluginError(f"the tokenizer cannot take words already split: {str(exc).splitlines()[0]}") from exc
    rows: list[tuple[int, list[str], list[int]]] = []
    for i, words in enumerate(sentences):
        counts = Counter(w for w in pieces.word_ids(i) if w is not None)
        words = [w if counts[j] else tokenizer.unk_token or w for j, w in enumerate(words)]
        start, used = 0, 0
        for j in range(len(words) + 1):
            if j == len(words) or (used and used + max(1, counts[j]) > budget):
                rows.append((i, words[start:j], list(tags[i][start:j]) if tags is not None else [0] * (j - start)))
                start, used = j, 0
            if j < len(words):
                used += max(1, counts[j])
    encoded = tokenizer([r[1] for r in rows], is_split_into_words=True, truncation=True, max_length=max_length,
                        return_token_type_ids=False)
    width = max((len(ids) for ids in encoded["input_ids"]), default=1)
    pad = int(tokenizer.pad_token_id or 0)
    ids = torch.full((len(rows), width), pad, dtype=torch.int32)
    mask = torch.zeros((len(rows), width), dtype=torch.int8)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for r, (_, _, row_tags) in enumerate(rows):
        row_ids = encoded["input_ids"][r]
        ids[r, :len(row_ids)] = torch.tensor(row_ids, dtype=torch.int32)
        mask[r, :len(row_ids)] = 1
        previous = None
        for p, w in enumerate(encoded.word_ids(r)):
            if w is not None and w != previous:
                labels[r, p] = row_tags[w]
            previous = w
    return TagSplit({"input_ids": ids, "attention_mask": mask}, labels, trim_transform(left=False),
                    lengths=mask.sum(1).to(torch.int32), owner=torch.tensor([r[0] for r in rows]),
                    words=[r[1] for r in rows])


# -- the task -------------------------------------------------------------------------------------------

class TokenClassification(Task):
    name = "token-classification"
    modality = "text"
    target = TagSequence()
    description = ("a tag per word: DATA/train.conll (a word and its tag a line, a blank line between sentences), "
                   "optional val.conll and test.conll")
    data_options = {"token_column": "the column holding the word (0 the first, default 0)",
                    "tag_column": "the column holding the tag (default -1: the last)"}
    parameters = (Param("max_length", "int", "pieces per window of words (longer sentences are split into windows; "
                        "default: the model's, at most 128)", low=8),)

    def load(self, path: Path, *, seed: int, val_fraction: float, options: Mapping[str, Any]) -> LoadedData:
        data = load_conll_folder(Path(path), seed=seed, val_fraction=val_fraction, options=options or {})
        digest = hashlib.sha256(repr(sorted(data.options.items())).encode())
        for split in SPLITS:
            for s in data.splits.get(split, []):
                digest.update(f"{split}\0{s.words}\0{s.tags}\0".encode())
        counts = {split: dict(Counter(t for s in sentences for t in s.tags)) for split, sentences in data.splits.items()}
        sizes = {split: {"sentences": len(sentences), "words": sum(len(s.words) for s in sentences)}
                 for split, sentences in data.splits.items()}
        report = DataReport(classes=data.tags, counts=counts, val_from_train=data.val_from_train, root=str(path),
                            details={"files": data.files, **data.options, "sizes": sizes,
                                     "val_split": "whole sentences, seeded; counts are words"})
        return LoadedData(data.tags, digest.hexdigest()[:16], report, "test" in data.splits, data)

    def prepare(self, data: LoadedData, backbone: Backbone, params: Mapping[str, Any]) -> TrialData:
        return TrialData(**{split: self._split(data, backbone, params, (split,)) for split in SPLITS
                            if split in data.payload.splits})

    def prepare_refit(self, data: LoadedData, backbone: Backbone, params: Mapping[str, Any]) -> TrialData:
        prepared = self.prepare(data, backbone, params)
        return replace(prepared, train=self._split(data, backbone, params, ("train", "val")))

    def _split(self, data: LoadedData, backbone: Backbone, params: Mapping[str, Any], names: tuple) -> TagSplit:
        pre = TextPreprocessing.of(backbone)
        tokenizer = tokenizer_of(backbone, pre)
        max_length = max_length_for(params, pre)
        key = (pre.tokenizer_key or id(tokenizer), max_length, names)
        payload: TagData = data.payload
        if key not in payload.encoded:
            sentences = [s for name in names for s in payload.splits[name]]
            index = {t: i for i, t in enumerate(payload.tags)}
            payload.encoded[key] = encode_words(tokenizer, [s.words for s in sentences],
                                                [[index[t] for t in s.tags] for s in sentences], max_length)
        return payload.encoded[key]

    def split_items(self, data: LoadedData, split: str) -> tuple[list[Any], list[Any]] | None:
        """The sentences of ``split`` (each its list of words, in the file's order) and their tags' indices."""
        payload: TagData = data.payload
        if split not in payload.splits:
            return None
        index = {t: i for i, t in enumerate(payload.tags)}
        sentences = payload.splits[split]
        return [list(s.words) for s in sentences], [[index[t] for t in s.tags] for s in sentences]

    # -- export and prediction -------------------------------------------------------------------------
    def export_settings(self, data_options, backbone, params) -> dict[str, Any]:
        pre = TextPreprocessing.of(backbone)
        tokenizer = tokenizer_of(backbone, pre)
        return {"token_column": column(data_options or {}, "token_column", 0),
                "max_length": max_length_for(params, pre), "pad_token": str(tokenizer.pad_token),
                "words": "each word cut into the tokenizer's pieces (is_split_into_words), tagged on its first piece",
                "long_sentences": "split into windows of whole words of at most max_length pieces",
                "padding": "right, each batch to its longest window", "tokenizer": type(tokenizer).__name__}

    def read_inputs(self, sources: Sequence[str], *, stdin: TextIO | None = None) -> list[tuple[str, Any]]:
        """CoNLL files (``.conll``, ``.conllu``, ``.tsv``: a sentence per block, the word in the bundle's token
        column; ``FILE:LINE``) and plain text (any other file, or ``-``: a sentence per line, words split at
        whitespace)."""
        items: list[tuple[str, Any]] = []
        for source in list(sources) or ["-"]:
            if source != "-" and not Path(source).is_file():
                raise DataError(f"{source}: no such file; give CoNLL files or text files (a sentence per line)")
            if source != "-" and Path(source).suffix in (".conll", ".conllu", ".tsv"):
                items += [(f"{source}:{s.line}", ConllLines(s.fields)) for s in read_conll(Path(source), 0, None)]
                continue
            if source == "-":
                text, name = (stdin if stdin is not None else sys.stdin).read(), "line {}"
            else:
                text, name = Path(source).read_bytes().decode("utf-8", errors="replace"), f"{source}:{{}}"
            items += [(name.format(n), line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        if not items:
            raise DataError("no sentences to tag; give a CoNLL file or text (a sentence per line)")
        return items

    def preprocess_for_predict(self, raw: Sequence[Any], backbone: Backbone, settings: Mapping[str, Any]) -> TagSplit:
        """Sentences (a string: words split at whitespace; a list of words; a CoNLL block) as the search encoded
        its own."""
        sentences, at = [], int(settings.get("token_column") or 0)
        for i, item in enumerate(raw):
            if isinstance(item, ConllLines):
                if any(len(f) <= at or len(f) < -at for f in item):
                    raise DataError(f"input {i}: a CoNLL line without the bundle's token column {at}")
                item = [f[at] for f in item]
            words = item.split() if isinstance(item, str) else list(item) if isinstance(item, (list, tuple)) else None
            if not words or not all(isinstance(w, str) and w for w in words):
                raise DataError(f"input {i}: give a sentence as a string or a list of words, not {item!r}")
            sentences.append(words)
        tokenizer = tokenizer_of(backbone, pad_token=settings.get("pad_token"))
        return encode_words(tokenizer, sentences, None, int(settings.get("max_length") or 128))


class ConllLines(list):
    """The lines (their columns) of one CoNLL sentence given to ``autotl predict``: the bundle's token column is read."""


__all__ = ["TagSequence", "TokenClassification", "encode_words", "read_conll", "is_bio"]
