"""autotl task plugin: text classification from a table of labelled texts, and the base of every task on such tables.

Layout: ``DATA/train.csv`` and optional ``DATA/val.csv``, ``DATA/test.csv`` (or ``.tsv``, ``.jsonl``),
columns ``text,label`` (other names through the recipe's ``data: {text_column, label_column}``).
The files are read and checked once; texts are tokenised once per tokenizer and max length, and
every epoch and later trial reuses the tensors. Batches are trimmed to their longest text.

Bundles (``autotl export``/``autotl predict``): the settings are the trial's max length, the
tokenizer's padding and truncation sides and the text column; predictions tokenise through the same
:func:`~autotl_text._table.encode` and trim batches with the same transform as the search.

:class:`TextTableTask` is all of that for any label column: a task of texts whose label column holds
something else (a number, a set of labels) subclasses it with its :class:`LabelKind` and its target
(the ``autotl_tasks`` plugin's text regression and multi-label tasks do).
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, TextIO

import torch

from autotl import (Backbone, FittedRange, LoadedData, Param, Task, TensorSplit, TextPreprocessing, TrialData,
                    hookimpl)
from autotl.base import Inputs
from autotl_tasks.fitting import epochs_by_samples, median, percentile
from autotl_tasks.targets import ClassLabel
from autotl.errors import DataError, PluginError, UsageError

from ._table import (LabelKind, Options, TableRow, TextData, decode_utf8, encode, load_text_folder,
                     read_predict_file, text_lines, tokenised)

#: the shortest max length a trial may ask for: [CLS] and [SEP] plus a few tokens.
MIN_MAX_LENGTH = 8
#: fitted max lengths are whole multiples of this many tokens, and at least this (:func:`fitted_max_length`).
LENGTH_STEP = 32
#: training texts whose token lengths :meth:`TextTableTask.fitted_space` measures (evenly spread over the split).
LENGTH_SAMPLE = 2000
#: training batches are formed among this many batches' worth of shuffled texts, by length.
BUCKET_BATCHES = 20


#: the data options every task of tables of texts reads.
TABLE_OPTIONS = {
    "text_column": "the column (or JSON key) holding the text (default text)",
    "label_column": "the column (or JSON key) holding the label (default label)",
    "on_bad_lines": "error (default) or skip: unparseable lines are skipped and listed in the data report",
}
#: the trial parameters every task of tables of texts reads.
TABLE_PARAMETERS = (Param("max_length", "int", "tokens per text, longer texts cut (default: the model's, at most 128; "
                          "capped at what the model takes)", low=MIN_MAX_LENGTH),)


class TextTableTask(Task):
    """A task on tables of texts (CSV, TSV, JSON Lines): reading, checking, splitting, tokenising, export and
    prediction, for any label column.

    A subclass sets :attr:`name`, :attr:`target`, :attr:`description`, :attr:`data_options` (those of
    :data:`TABLE_OPTIONS` and its own) and, where its label column holds more than one class per text,
    :meth:`label_kind` and :attr:`label_column`.
    """

    modality = "text"
    data_options = TABLE_OPTIONS
    parameters = TABLE_PARAMETERS
    #: the default name of the label column.
    label_column = "label"

    def label_kind(self, options: Mapping[str, Any]) -> LabelKind:
        """How the label column is read, given the recipe's ``data`` options: by default one class per text."""
        return LabelKind()

    def options(self, options: Mapping[str, Any] | None) -> Options:
        """The recipe's ``data`` options as the table reader takes them."""
        return Options.from_mapping(options or {}, label_column=self.label_column)

    def load(self, path: Path, *, seed: int, val_fraction: float, options: Mapping[str, Any]) -> LoadedData:
        texts = load_text_folder(Path(path), seed=seed, val_fraction=val_fraction, options=self.options(options),
                                 kind=self.label_kind(options or {}))
        return LoadedData(
            label_names=texts.classes,
            fingerprint=texts.fingerprint,
            report=texts.report(),
            has_test="test" in texts.splits,
            payload=texts,
        )

    def fitted_space(self, data: LoadedData, backbones: Mapping[str, Backbone],
                     asked: Mapping[str, Any]) -> list[FittedRange]:
        """``max_length`` from the training texts' token lengths (:func:`fitted_max_length`, with the first searched
        model's tokenizer), ``epochs`` from their number (:func:`autotl_tasks.fitting.epochs_by_samples`)."""
        texts: TextData = data.payload
        train = texts.splits["train"][0]
        fitted = []
        if "max_length" in asked and backbones and train:
            name, backbone = next(iter(backbones.items()))
            pre = TextPreprocessing.of(backbone)
            step = max(1, len(train) // LENGTH_SAMPLE)
            tokenizer = tokenizer_of(backbone, pre)
            encoded = tokenizer(list(train[::step]), add_special_tokens=True, truncation=False, verbose=False)
            lengths = [len(ids) for ids in encoded["input_ids"]]
            fitted.append(fitted_max_length(lengths, int(pre.model_max_length or 512), name))
        if "epochs" in asked:
            fitted.extend(epochs_by_samples(len(train), asked["epochs"]))
        return fitted

    def prepare(self, data: LoadedData, backbone: Backbone, params: Mapping[str, Any]) -> TrialData:
        texts: TextData = data.payload
        pre = TextPreprocessing.of(backbone)
        tokenizer = tokenizer_of(backbone, pre)
        key = pre.tokenizer_key or getattr(tokenizer, "name_or_path", None) or id(tokenizer)
        max_length = max_length_for(params, pre)
        transform = trim_transform(left=getattr(tokenizer, "padding_side", "right") == "left")

        def split(name: str) -> TensorSplit:
            cached = tokenised(texts, name, tokenizer, key, max_length)
            inputs = {"input_ids": cached["input_ids"], "attention_mask": cached["attention_mask"]}
            return TextSplit(inputs, cached["labels"], transform, lengths=cached["lengths"])

        return TrialData(
            train=split("train"),
            val=split("val"),
            test=split("test") if "test" in texts.splits else None,
        )

    # -- export and prediction ------------------------------------------------------------------
    def prepare_refit(self, data: LoadedData, backbone: Backbone, params: Mapping[str, Any]) -> TrialData:
        """Train and val together, padded on the tokenizer's side with its pad token (left-padded tokens too)."""
        prepared = self.prepare(data, backbone, params)
        tokenizer = tokenizer_of(backbone)
        left = getattr(tokenizer, "padding_side", "right") == "left"
        pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        train, val = prepared.train, prepared.val
        width = max(train.inputs["input_ids"].shape[1], val.inputs["input_ids"].shape[1])

        def joined(key: str, fill: int) -> torch.Tensor:
            parts = []
            for tensor in (train.inputs[key], val.inputs[key]):
                extra = width - tensor.shape[1]
                pad = (extra, 0) if left else (0, extra)
                parts.append(torch.nn.functional.pad(tensor, pad, value=fill) if extra else tensor)
            return torch.cat(parts)

        inputs = {"input_ids": joined("input_ids", pad_id), "attention_mask": joined("attention_mask", 0)}
        both = TextSplit(inputs, torch.cat([train.labels, val.labels]), train.transform,
                         lengths=torch.cat([train.lengths, val.lengths]))
        return TrialData(train=both, val=val, test=prepared.test)

    def split_items(self, data: LoadedData, split: str) -> tuple[list[Any], list[Any]] | None:
        """The texts of ``split`` and their labels as stored (class indices, numbers...), in the file's order."""
        texts: TextData = data.payload
        if split not in texts.splits:
            return None
        items, labels = texts.splits[split]
        return list(items), list(labels)

    def export_settings(self, data_options: Mapping[str, Any], backbone: Backbone,
                        params: Mapping[str, Any]) -> dict[str, Any]:
        options = self.options(data_options)
        pre = TextPreprocessing.of(backbone)
        tokenizer = tokenizer_of(backbone, pre)
        return {
            "text_column": options.text_column,
            "label_column": options.label_column,
            "max_length": max_length_for(params, pre),
            "truncation": "texts longer than max_length tokens (special tokens included) are cut",
            "truncation_side": str(getattr(tokenizer, "truncation_side", "right")),
            "padding": "each batch padded to its longest text, the attention mask marking the padding",
            "padding_side": str(getattr(tokenizer, "padding_side", "right")),
            "pad_token": str(tokenizer.pad_token),
            "token_type_ids": "not passed (the model's default)",
            "tokenizer": f"{type(tokenizer).__name__}, saved with the bundle",
        }

    def read_inputs(self, sources: Sequence[str], *, stdin: TextIO | None = None,
                    settings: Mapping[str, Any] | None = None) -> list[tuple[str, Any]]:
        """Files of texts (CSV, TSV, JSONL: the bundle's text column, ``FILE:LINE``; ``.txt``: one per line)
        and ``-`` (or nothing): one text per line of standard input (``line N``). Blank lines are skipped.

        The text column of a table is picked by :meth:`preprocess_for_predict` from the bundle's
        settings; with ``settings`` given here it is checked at once.
        """
        items: list[tuple[str, Any]] = []
        for source in list(sources) or ["-"]:
            if source == "-":
                items.extend(_stdin_lines(stdin if stdin is not None else sys.stdin))
            else:
                found = read_predict_file(str(source))
                if settings is not None and isinstance(found[0][1], TableRow):
                    found[0][1].text(str(settings.get("text_column", "text")))
                items.extend(found)
        return items

    def preprocess_for_predict(self, raw: Sequence[Any], backbone: Backbone,
                               settings: Mapping[str, Any]) -> TensorSplit:
        """Texts (``str``, rows of a table, or mappings holding the text column) tokenised as the search did."""
        column = str(settings.get("text_column", "text"))
        texts = [_text_of(item, column, i) for i, item in enumerate(raw)]
        tokenizer = tokenizer_of(backbone, pad_token=settings.get("pad_token"))
        for side in ("padding_side", "truncation_side"):
            if settings.get(side) in ("left", "right"):
                setattr(tokenizer, side, settings[side])
        try:
            max_length = int(settings["max_length"])
        except (KeyError, TypeError, ValueError):
            raise DataError("the bundle's preprocessing settings hold no max_length; export the bundle again") from None
        encoded = encode(tokenizer, texts, max_length)
        inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        return TextSplit(inputs, torch.zeros(len(texts), dtype=torch.long),
                         trim_transform(left=tokenizer.padding_side == "left"), lengths=encoded["lengths"])


class TextClassification(TextTableTask):
    name = "text-classification"
    target = ClassLabel()
    description = "labelled texts: DATA/train.csv (columns text,label), optional val.csv and test.csv; or .tsv, .jsonl"


@dataclass
class TextSplit(TensorSplit):
    """A split of tokenised texts whose training batches group texts of similar length.

    Each epoch shuffles the texts, sorts every run of ``BUCKET_BATCHES`` batches' worth by length,
    cuts it into batches and shuffles the batches: the batches differ every epoch, and trimming a
    batch to its longest text leaves little padding to compute on.
    """

    lengths: torch.Tensor | None = None
    random_augmentation: bool = False  # trimming to the longest text is all the transform does

    def batches(self, batch_size: int, *, train: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[Inputs, torch.Tensor]]:
        if not train or self.lengths is None:
            yield from super().batches(batch_size, train=train, generator=generator)
            return
        n = len(self)
        order = torch.randperm(n, generator=generator)
        groups: list[torch.Tensor] = []
        run = batch_size * BUCKET_BATCHES
        for start in range(0, n, run):
            part = order[start : start + run]
            part = part[torch.argsort(self.lengths[part], descending=True, stable=True)]
            groups.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
        for g in torch.randperm(len(groups), generator=generator).tolist():
            idx = groups[g]
            if len(idx) < 2 and n >= 2:
                continue  # a batch of one adds only noise
            batch = (self.inputs[idx] if isinstance(self.inputs, torch.Tensor)
                     else {key: value[idx] for key, value in self.inputs.items()})
            if self.transform is not None:
                batch = self.transform(batch, train)
            yield batch, self.labels[idx]

    def search_order(self) -> torch.Tensor | None:
        """The order texts are run through a network in: longest text first, ties as given.

        :func:`autotl.inference.predict_outputs` (the search's validation and test scores, the bundle's
        predictions) and the frozen-prefix cache batch in it and put the outputs back in the split's
        order: the texts of a file give the very batches the search scored, its outputs bit for bit.
        """
        return None if self.lengths is None else torch.argsort(self.lengths, descending=True, stable=True)

    def with_inputs(self, inputs: Inputs) -> TensorSplit:
        """Cached hidden states and their attention masks, batched and trimmed as the texts were.

        Pooled vectors (one tensor: a linear probe's features) are grouped the same way, untrimmed,
        so that a trial draws the same batches cached or not.
        """
        if isinstance(inputs, torch.Tensor) or "attention_mask" not in inputs:
            return TextSplit(inputs, self.labels, None, random_augmentation=False, lengths=self.lengths)
        return TextSplit(dict(inputs), self.labels, self.transform, random_augmentation=False, lengths=self.lengths)


def trim_transform(left: bool):
    """Cut a batch to its longest text (on the padding side) and give the model ``long`` token tensors.

    Floating-point tensors of the batch (the hidden states a frozen prefix cached) are cut the same
    way and passed on as they are.
    """

    def transform(batch: Mapping[str, torch.Tensor], train: bool) -> dict[str, torch.Tensor]:
        mask = batch["attention_mask"]
        longest = max(1, int(mask.sum(1).max())) if mask.numel() else 1
        cut = slice(-longest, None) if left else slice(0, longest)
        out = {"input_ids": batch["input_ids"][:, cut].long()} if "input_ids" in batch else {}
        out.update({key: value[:, cut] for key, value in batch.items()
                    if value.is_floating_point() and value.dim() >= 2})
        out["attention_mask"] = mask[:, cut].long()
        return out

    return transform


# -- texts already split into words (a label per word) ------------------------------------------------

@dataclass
class WordSplit(TextSplit):
    """Tokenised windows of sentences; ``owner``: the sentence (item) each row belongs to, ``words`` its words."""

    owner: torch.Tensor | None = None
    words: list[list[str]] | None = None

    def take(self, idx: torch.Tensor) -> "WordSplit":
        taken = super().take(idx)
        return replace(taken, words=None if self.words is None else [self.words[i] for i in idx.tolist()])


def encode_words(tokenizer, sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[int]] | None,
                 max_length: int, ignore: int = -100) -> WordSplit:
    """Sentences of words (and their tag indices) as pieces, labelled on each word's first piece (every other
    position: ``ignore``).

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
    labels = torch.full((len(rows), width), ignore, dtype=torch.long)
    for r, (_, _, row_tags) in enumerate(rows):
        row_ids = encoded["input_ids"][r]
        ids[r, :len(row_ids)] = torch.tensor(row_ids, dtype=torch.int32)
        mask[r, :len(row_ids)] = 1
        previous = None
        for p, w in enumerate(encoded.word_ids(r)):
            if w is not None and w != previous:
                labels[r, p] = row_tags[w]
            previous = w
    return WordSplit({"input_ids": ids, "attention_mask": mask}, labels, trim_transform(left=False),
                    lengths=mask.sum(1).to(torch.int32), owner=torch.tensor([r[0] for r in rows]),
                    words=[r[1] for r in rows])


def tokenizer_of(backbone: Backbone, pre: TextPreprocessing | None = None, pad_token: str | None = None):
    """The backbone's tokenizer, with a pad token (GPT-style ones pad with end-of-text: masked out anyway).

    :raises autotl.errors.PluginError: where the backbone gives no tokenizer (:class:`autotl.TextPreprocessing`).
    """
    tokenizer = (TextPreprocessing.of(backbone) if pre is None else pre).tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = pad_token if pad_token and pad_token != "None" else \
            (tokenizer.eos_token or tokenizer.unk_token)
    return tokenizer


def _text_of(item: Any, column: str, index: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, TableRow):
        return item.text(column)
    if isinstance(item, Mapping):
        if column in item:
            value = item[column]
            return value if isinstance(value, str) else "" if value is None else str(value)
        raise DataError(f"input {index} is a mapping without the key {column!r} the bundle reads its texts from")
    if isinstance(item, Path):
        raise DataError(f"input {index} is a path ({item}): give texts, or predict a file of texts with "
                        "`autotl predict` / Bundle.predict_files")
    raise DataError(f"cannot predict on a {type(item).__name__} (input {index}): give texts as str")


def _stdin_lines(stream: TextIO) -> list[tuple[str, str]]:
    raw = getattr(stream, "buffer", None)
    if raw is not None:
        text = decode_utf8(raw.read(), "standard input")
    else:
        try:
            text = stream.read()
        except UnicodeDecodeError as exc:
            raise DataError(f"standard input: bytes that are not UTF-8 ({exc.object[exc.start:exc.end]!r}); "
                            "send UTF-8 text") from exc
        text = text.removeprefix("\ufeff")
    lines = text_lines(text, lambda n: f"line {n}")
    if not lines:
        raise DataError("no texts on standard input; pipe one text per line, or give a file of texts (.csv, .tsv, "
                        ".jsonl with a text column, or .txt)")
    return lines


def max_length_for(params: Mapping[str, Any], pre: TextPreprocessing) -> int:
    """The trial's ``max_length``, or the backbone's default; at most what the model takes."""
    limit = int(pre.model_max_length or 512)
    value = params.get("max_length") or pre.max_length or min(128, limit)
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"max_length must be a whole number of tokens, not {value!r}") from None
    if value < MIN_MAX_LENGTH:
        raise UsageError(f"max_length={value} is too short; use at least {MIN_MAX_LENGTH} tokens")
    return min(value, limit)


def fitted_max_length(lengths: Sequence[int], limit: int, model: str) -> FittedRange:
    """The max lengths to search for texts of ``lengths`` tokens (special tokens included): the 95th percentile
    (nearly every text whole) and the median (half of them whole, cheaper), each rounded up to a multiple of
    :data:`LENGTH_STEP` and at most ``limit``, the longest input the model takes."""
    def rounded(value: float) -> int:
        return min(limit, max(LENGTH_STEP, LENGTH_STEP * math.ceil(value / LENGTH_STEP)))

    p95, mid = percentile(lengths, 0.95), median(lengths)
    why = f"95th percentile of the training texts {p95} tokens, median {mid:g} ({model}'s tokenizer"
    why += f", which takes at most {limit})" if rounded(p95) == limit and p95 > limit else ")"
    return FittedRange("max_length", why, choices=sorted({rounded(mid), rounded(p95)}))


@hookimpl
def register_tasks(register):
    register(TextClassification())


__all__ = ["LabelKind", "TABLE_OPTIONS", "TABLE_PARAMETERS", "TextClassification", "TextSplit", "TextTableTask",
           "WordSplit", "encode_words", "fitted_max_length", "register_tasks", "max_length_for", "trim_transform",
           "tokenizer_of"]
