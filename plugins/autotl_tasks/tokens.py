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

from autotl import Backbone, DataReport, LoadedData, Param, Task, TextPreprocessing, TrialData
from autotl.errors import DataError, UsageError
from autotl_text import WordSplit, encode_words, max_length_for, tokenizer_of

from .targets import TagSequence

SPLITS = ("train", "val", "test")
FORMATS = (".conll", ".conllu", ".tsv", ".txt")


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
    encoded: dict[tuple, WordSplit] = field(default_factory=dict, repr=False)


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

    def _split(self, data: LoadedData, backbone: Backbone, params: Mapping[str, Any], names: tuple) -> WordSplit:
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

    def preprocess_for_predict(self, raw: Sequence[Any], backbone: Backbone, settings: Mapping[str, Any]) -> WordSplit:
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


__all__ = ["TokenClassification", "load_conll_folder", "read_conll"]
