"""Reading labelled texts once: CSV, TSV or JSON Lines files; check, fingerprint, split, tokenise per length.

Every problem names the file, the line and the column, and says what to do. Lines are counted as a
text editor counts them: the header is line 1, and a quoted CSV text that spans several lines
starts on the line where its record starts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from autotl import DataReport, SkippedItem
from autotl.errors import DataError, UsageError
from autotl.utils import json_lines, numbered_records, stratified_split

SPLITS = ("train", "val", "test")
FORMATS = (".csv", ".tsv", ".jsonl")
MAX_LISTED_SKIPS = 1000  # the report lists this many skipped lines; the counts cover them all
csv.field_size_limit(max(csv.field_size_limit(), 64 * 1024 * 1024))  # long e-mails are fine


@dataclass
class Options:
    text_column: str = "text"
    label_column: str = "label"
    on_bad_lines: str = "error"  # or "skip"

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any], label_column: str = "label") -> "Options":
        """The options of a recipe's ``data`` section; ``label_column`` is the default name of the label column."""
        for key in ("text_column", "label_column", "on_bad_lines"):
            if isinstance(options.get(key), (list, dict)) or (key in options and options[key] is None):
                raise UsageError(f"data option {key} must be a name, not {options[key]!r}; e.g. -d {key}=review "
                                 f"(or `data: {{{key}: review}}` in the recipe)")
        opts = cls(**{"label_column": label_column,
                      **{k: str(options[k]) for k in ("text_column", "label_column", "on_bad_lines") if k in options}})
        if opts.on_bad_lines not in ("error", "skip"):
            raise UsageError(f"recipe data.on_bad_lines must be error or skip, not {opts.on_bad_lines!r}")
        if opts.text_column == opts.label_column:
            raise UsageError(f"recipe data: text_column and label_column are both {opts.text_column!r}")
        return opts


class LabelKind:
    """How the label column of a table of texts is read, checked, split and given to the model.

    This class reads one class per text (text classification); a task whose label column holds
    something else (a number, a set of labels) hands :func:`load_text_folder` a subclass. A label value
    goes through three forms: the cell (a stripped string), what :meth:`parse` makes of it, and what
    :meth:`index` stores per text given the label names (a class index, a number, label indices).
    """

    #: what one cell holds, for messages: ``give each row {holds}``.
    holds = "a label"
    #: whether an empty cell is a value (an empty set of labels) rather than a missing one.
    allows_empty = False
    #: what, besides the column names, decides the values read (a separator): part of the data's fingerprint.
    fingerprint = ""

    def parse(self, cell: str) -> Any:
        """The value of one non-empty cell (or an empty one, with :attr:`allows_empty`).

        :raises ValueError: with a short message (``'abc' is not a number``) for a cell that holds no value.
        """
        return cell

    def names(self, values: Sequence[Any], column: str, where: str) -> list[str]:
        """The label names (the model's outputs, in order), from the training values of ``column`` read from
        ``where`` (a file name).

        :raises DataError: where the values cannot train a model (a single class, say).
        """
        counts = Counter(values)
        if len(counts) < 2:
            raise DataError(f"{where}, column {column!r}: every row has the label {next(iter(counts))!r}; "
                            "classification needs at least two labels")
        return _sorted_labels(counts)

    def unknown(self, value: Any, names: Mapping[str, int]) -> str | None:
        """A label of ``value`` (a validation or test row's) that is not among the names, or ``None``."""
        return None if value in names else value

    def index(self, value: Any, names: Mapping[str, int]) -> Any:
        """What is stored per text: here the class index."""
        return names[value]

    def tensor(self, stored: Sequence[Any], width: int) -> torch.Tensor:
        """The labels of a split as the task's target reads them."""
        return torch.tensor(list(stored), dtype=torch.long)

    def split(self, stored: Sequence[Any], names: Sequence[str], val_fraction: float, seed: int,
              where: Callable[[int], str]) -> tuple[list[int], list[int]]:
        """The training and validation positions of a training file without a validation file of its own.

        ``where(i)`` names the i-th row (``train.csv line 7``) for messages.
        """
        def too_few(label: int, members: list[int]) -> str:
            return (f"{where(members[0])}: label {names[label]!r} has only this one row; a validation split needs "
                    "at least 2 rows per label: add rows, or give a val file of your own")

        return stratified_split(list(stored), len(names), val_fraction, seed, too_few=too_few)

    def counts(self, stored: Sequence[Any], names: Sequence[str]) -> dict[str, int]:
        """Rows per label name, for the data report."""
        return {name: list(stored).count(i) for i, name in enumerate(names)}

    def details(self, stored: Sequence[Any], names: Sequence[str]) -> dict[str, Any]:
        """More about a split's values for the data report (a number's range...); the default: nothing."""
        return {}


@dataclass
class Row:
    line: int
    text: str
    label: str
    value: Any = None


@dataclass
class TextData:
    """Texts and integer labels of every split, and the tokenised tensors already computed."""

    root: Path
    classes: list[str]
    splits: dict[str, tuple[list[str], list[int]]]
    files: dict[str, str]
    fingerprint: str
    skipped: list[SkippedItem]
    skipped_counts: dict[str, int]
    val_from_train: bool
    options: Options
    test_in_train: int = 0
    kind: LabelKind = field(default_factory=LabelKind)
    _tokens: dict[tuple, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    def labels(self, split: str) -> torch.Tensor:
        return self.kind.tensor(self.splits[split][1], len(self.classes))

    def report(self) -> DataReport:
        present = [split for split in SPLITS if split in self.splits]
        counts = {split: self.kind.counts(self.splits[split][1], self.classes) for split in present}
        details: dict[str, Any] = {"files": self.files, "text_column": self.options.text_column,
                                   "label_column": self.options.label_column, "skipped_counts": self.skipped_counts,
                                   "items": {split: len(self.splits[split][0]) for split in present}}
        extra = {split: self.kind.details(self.splits[split][1], self.classes) for split in present}
        if any(extra.values()):
            details["labels"] = extra
        if "test" in self.splits:
            details["test_texts_also_in_train"] = self.test_in_train
        return DataReport(classes=self.classes, counts=counts, val_from_train=self.val_from_train,
                          skipped=self.skipped[:MAX_LISTED_SKIPS], root=str(self.root), details=details)


# -- reading ---------------------------------------------------------------------------------------

def load_text_folder(root: Path, *, seed: int, val_fraction: float, options: Options,
                     kind: LabelKind | None = None) -> TextData:
    """Read, check and split the tables of texts in ``root``; ``kind`` reads the label column [one class a text]."""
    kind = kind or LabelKind()
    root = Path(root)
    if root.is_file() and root.suffix in FORMATS:
        raise DataError(f"{root} is a file; give the folder that holds it (named train{root.suffix}), "
                        f"e.g. {root.parent}")
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}; give a folder holding train.csv (and optional val.csv, "
                        "test.csv)")
    files = {split: path for split in SPLITS if (path := _find_file(root, split)) is not None}
    if "train" not in files:
        raise DataError(f"{root} has no train.csv, train.tsv or train.jsonl; put the labelled texts there "
                        f"(columns {options.text_column},{options.label_column})")

    skipped: list[SkippedItem] = []
    skipped_counts: dict[str, int] = {}
    rows: dict[str, list[Row]] = {}
    digest = hashlib.sha256(f"{options.text_column}\0{options.label_column}\0{kind.fingerprint}".encode())
    for split, path in files.items():
        split_rows, split_skips = read_rows(path, options, kind)
        skipped.extend(split_skips)
        skipped_counts[split] = len(split_skips)
        if not split_rows:
            why = (f": every one of its {len(split_skips)} rows was skipped ({split_skips[0].reason} on line "
                   f"{split_skips[0].file.rsplit(':', 1)[1]}, ...)" if split_skips else " has no rows")
            raise DataError(f"{path.name}{why}; it needs one row per text under a header line "
                            f"`{options.text_column},{options.label_column}`")
        rows[split] = split_rows
        for row in split_rows:
            digest.update(f"{split}\0{row.label}\0{row.text}\0".encode())

    train_name = files["train"].name
    classes = kind.names([row.value for row in rows["train"]], options.label_column, train_name)
    index = {label: i for i, label in enumerate(classes)}
    for split in ("val", "test"):
        for row in rows.get(split, []):
            label = kind.unknown(row.value, index)
            if label is not None:
                shown = ", ".join(repr(c) for c in classes[:10]) + (", ..." if len(classes) > 10 else "")
                raise DataError(f"{files[split].name} line {row.line}, column {options.label_column!r}: label "
                                f"{label!r} never occurs in {train_name} (its labels: {shown}); fix the label "
                                f"or add rows with it to {train_name}")

    splits = {split: ([r.text for r in split_rows], [kind.index(r.value, index) for r in split_rows])
              for split, split_rows in rows.items()}
    val_from_train = "val" not in splits
    if val_from_train:
        splits["train"], splits["val"] = split_validation(rows["train"], splits["train"][1], classes, kind,
                                                          val_fraction, seed, train_name)
    test_in_train = 0
    if "test" in splits:
        seen = set(splits["train"][0]) | set(splits["val"][0])
        test_in_train = sum(text in seen for text in splits["test"][0])
    return TextData(root, classes, splits, {s: p.name for s, p in files.items()}, digest.hexdigest()[:16],
                    skipped, skipped_counts, val_from_train, options, test_in_train, kind=kind)


def _find_file(root: Path, split: str) -> Path | None:
    found = [root / f"{split}{ext}" for ext in FORMATS if (root / f"{split}{ext}").is_file()]
    if len(found) > 1:
        raise DataError(f"{root} holds {' and '.join(p.name for p in found)}; keep one file per split")
    return found[0] if found else None


def _sorted_labels(counts: Counter) -> list[str]:
    labels = list(counts)
    try:
        return sorted(labels, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(labels)


def read_rows(path: Path, options: Options, kind: LabelKind | None = None) -> tuple[list[Row], list[SkippedItem]]:
    """The usable rows of one file, and the lines skipped (empty texts; bad lines with ``on_bad_lines: skip``)."""
    kind = kind or LabelKind()
    data = path.read_bytes()
    name = path.name
    if not data.strip():
        raise DataError(f"{name} is empty; it needs a header line `{options.text_column},{options.label_column}` "
                        "and one row per text" if path.suffix != ".jsonl" else
                        f"{name} is empty; it needs one JSON object per line, such as "
                        f'{{"{options.text_column}": "...", "{options.label_column}": "..."}}')
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        _raise_not_utf8(path, data, exc, options)
    rows: list[Row] = []
    skipped: list[SkippedItem] = []

    def bad(line: int, problem: str, fix: str) -> None:
        if options.on_bad_lines == "skip":
            skipped.append(SkippedItem(f"{name}:{line}", problem.lstrip(", ")))
            return
        raise DataError(f"{name} line {line}{problem if problem.startswith(',') else ': ' + problem}; {fix} "
                        "(or skip such lines: -d on_bad_lines=skip, or `data: {on_bad_lines: skip}` in the recipe)")

    for line, record, problem, fix in _records(path, text, options):
        if problem:
            bad(line, problem, fix)
            continue
        raw_text, raw_label = record
        label = _label_str(raw_label)
        if label is None:
            bad(line, f", column {options.label_column!r}: the label is not a string or number ({raw_label!r})",
                f"give each row {kind.holds}")
            continue
        if not label and not kind.allows_empty:
            bad(line, f", column {options.label_column!r}: the label is empty", f"give each row {kind.holds}")
            continue
        try:
            value = kind.parse(label)
        except ValueError as exc:
            bad(line, f", column {options.label_column!r}: {exc}", f"give each row {kind.holds}")
            continue
        text_value = "" if raw_text is None else raw_text if isinstance(raw_text, str) else str(raw_text)
        surrogate = next(((column, found) for column, value in ((options.text_column, text_value),
                                                                 (options.label_column, label))
                          if (found := lone_surrogate(value))), None)
        if surrogate:
            bad(line, f", column {surrogate[0]!r}: {surrogate[1]}", SURROGATE_FIX)
            continue
        if not text_value.strip():
            skipped.append(SkippedItem(f"{name}:{line}", "empty text"))
            continue
        rows.append(Row(line, text_value, label, value))
    return rows, skipped


#: how to mend a JSON text holding half of a surrogate pair.
SURROGATE_FIX = "write the character itself, or both halves of its pair (\\ud83d\\ude00), or remove it"
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> str:
    """``""``, or what is wrong with a text holding a lone surrogate (JSON ``"\\ud800"``): not a character."""
    found = _SURROGATE.search(text)
    return f"\\u{ord(found.group()):04x} is half of a UTF-16 surrogate pair, not a character" if found else ""


def _label_str(value: Any) -> str | None:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float, str)):
        return str(value).strip()
    return None


def _records(path: Path, text: str, options: Options) -> Iterator[tuple[int, tuple | None, str, str]]:
    """``(line, (text, label) or None, problem, fix)`` for every record of the file, header excluded."""
    if path.suffix == ".jsonl":
        yield from _jsonl_records(path, text, options)
    else:
        yield from _delimited_records(path, text, options)


def _columns(path: Path, header: list[str], options: Options) -> tuple[int, int]:
    names = [h.strip() for h in header]
    positions = []
    for key, wanted in (("text_column", options.text_column), ("label_column", options.label_column)):
        if wanted in names:
            positions.append(names.index(wanted))
            continue
        folded = [n.lower() for n in names]
        if wanted.lower() in folded:
            positions.append(folded.index(wanted.lower()))
            continue
        shown = ", ".join(repr(n) for n in names[:10]) + (", ..." if len(names) > 10 else "")
        raise DataError(f"{path.name} line 1: no column {wanted!r} (its columns: {shown}); rename the column, or "
                        f"name yours with -d {key}=NAME (or `data: {{{key}: NAME}}` in the recipe)")
    return positions[0], positions[1]


def _delimited_records(path: Path, text: str, options: Options):
    tsv = path.suffix == ".tsv"
    # TSV: a tab ends a field, quotes are plain characters (texts cannot hold tabs or line breaks).
    reader = _csv_reader(text, tsv)
    header: list[str] | None = None
    text_at = label_at = 0
    for start, record in numbered_records(reader):
        if isinstance(record, csv.Error):
            exc = record
            if header is None:
                raise DataError(f"{path.name} line {start}: the header line cannot be read ({exc})") from exc
            if "unexpected end of data" in str(exc):
                problem = "a double quote opens a text that is never closed"
                fix = "close the quote, and double every quote inside a quoted text (\"\")"
            else:
                problem = f"not valid CSV ({exc})"
                fix = "put texts that hold commas or quotes in double quotes, doubling the quotes inside (\"\")"
            yield start, None, problem, fix
            continue
        if header is None:
            if not record or not any(cell.strip() for cell in record):
                raise DataError(f"{path.name} line {start}: the first line must be the header, e.g. "
                                f"`{options.text_column},{options.label_column}`; it is empty")
            header = record
            text_at, label_at = _columns(path, header, options)
            continue
        if not any(cell.strip() for cell in record):
            continue  # a blank line (or one of empty fields only)
        if len(record) != len(header):
            sep = "tab" if tsv else "comma"
            fix = ("remove tabs inside texts" if tsv else
                   "put texts that hold commas in double quotes")
            yield start, None, f"{len(record)} fields where the header has {len(header)} (a {sep} too many or " \
                               "too few?)", fix
            continue
        yield start, (record[text_at], record[label_at]), "", ""


def _jsonl_records(path: Path, text: str, options: Options):
    first = True
    for number, obj in json_lines(text):
        if isinstance(obj, str):
            yield number, None, obj, ("write one JSON object per line" if obj.startswith("not valid") else
                                      f'write one object per line, such as {{"{options.text_column}": "...", '
                                      f'"{options.label_column}": "..."}}')
            continue
        keys = [options.text_column, options.label_column]
        for i, wanted in enumerate(keys):
            if wanted not in obj:
                folded = {str(k).lower(): k for k in obj}
                if wanted.lower() in folded:
                    keys[i] = folded[wanted.lower()]
                    continue
                key = ("text_column", "label_column")[i]
                if first:
                    shown = ", ".join(repr(k) for k in list(obj)[:10])
                    raise DataError(f"{path.name} line {number}: no key {wanted!r} (its keys: {shown}); rename "
                                    f"the key, or name yours with -d {key}=NAME (or `data: {{{key}: NAME}}` in "
                                    "the recipe)")
                yield number, None, f", column {wanted!r}: the key is missing", "give every object the key"
                break
        else:
            first = False
            yield number, (obj[keys[0]], obj[keys[1]]), "", ""


def _raise_not_utf8(path: Path, data: bytes, exc: UnicodeDecodeError, options: Options):
    line = data.count(b"\n", 0, exc.start) + 1
    line_start = data.rfind(b"\n", 0, exc.start) + 1
    column = ""
    try:  # which column: read the file with the bad bytes replaced, and look in the record holding that line
        holding = None
        for at, record, _, _ in _records(path, data.decode("utf-8", errors="replace"), options):
            if at > line:
                break
            holding = record
        for name, value in zip((options.text_column, options.label_column), holding or ()):
            if isinstance(value, str) and "\ufffd" in value:
                column = f", column {name!r}"
                break
    except DataError:
        pass
    raise DataError(f"{path.name} line {line}{column}: bytes that are not UTF-8 "
                    f"({data[exc.start:exc.end]!r} at byte {exc.start - line_start + 1} of the line); save "
                    "the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`)") from exc


# -- validation split --------------------------------------------------------------------------------

def split_validation(rows: list[Row], labels: list[Any], classes: list[str], kind: LabelKind, val_fraction: float,
                     seed: int, train_name: str):
    """Hold out ``val_fraction`` of the training rows as the label kind splits them (by default at least one row
    of each label, never the last one), seeded (:func:`autotl.utils.stratified_split`)."""
    train_idx, val_idx = kind.split(labels, classes, val_fraction, seed, lambda i: f"{train_name} line {rows[i].line}")

    def take(idx):
        return [rows[i].text for i in idx], [labels[i] for i in idx]

    return take(train_idx), take(val_idx)


# -- tokenisation --------------------------------------------------------------------------------------

def tokenised(data: TextData, split: str, tokenizer, key: Any, max_length: int) -> dict[str, torch.Tensor]:
    """``split`` tokenised, computed once per tokenizer and length, in the split's own (file) order.

    ``input_ids`` (int32) and ``attention_mask`` (int8) are padded to the longest text of the split
    (at most ``max_length`` tokens); ``labels`` and ``lengths`` (tokens per text) follow the same
    order, that of :meth:`autotl_text.TextClassification.split_items`. Evaluation batches texts of
    about one length all the same (:meth:`autotl_text.TextSplit.search_order`), so that trimming
    each batch to its longest text removes most of the padding.
    """
    cache_key = (key, int(max_length), split)
    if cache_key not in data._tokens:
        encoded = encode(tokenizer, data.splits[split][0], max_length)
        data._tokens[cache_key] = {
            "input_ids": encoded["input_ids"].contiguous(),
            "attention_mask": encoded["attention_mask"].contiguous(),
            "labels": data.labels(split).contiguous(),
            "lengths": encoded["lengths"].contiguous(),
        }
    return data._tokens[cache_key]


def encode(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """The one tokenisation of the search and of ``autotl predict``: texts to padded tensors, in their order.

    Truncated to ``max_length`` tokens (special tokens included), padded to the longest of ``texts``
    on the tokenizer's padding side, no token type ids. ``input_ids`` int32, ``attention_mask`` int8,
    ``lengths`` (tokens per text) int32. Padding beyond a text's own tokens never reaches the model
    unmasked, and batches are trimmed to their longest text before the model sees them.
    """
    if not texts:
        empty = torch.zeros(0, 1, dtype=torch.int32)
        return {"input_ids": empty, "attention_mask": empty.to(torch.int8),
                "lengths": torch.zeros(0, dtype=torch.int32)}
    encoded = tokenizer(list(texts), truncation=True, max_length=int(max_length), padding="longest",
                        return_attention_mask=True, return_token_type_ids=False, return_tensors="pt")
    mask = encoded["attention_mask"]
    return {
        "input_ids": encoded["input_ids"].to(torch.int32).contiguous(),
        "attention_mask": mask.to(torch.int8).contiguous(),
        "lengths": mask.sum(1).to(torch.int32).contiguous(),
    }


# -- what `autotl predict` reads ----------------------------------------------------------------------

#: files `autotl predict` reads texts from: tables (a text column) and plain text (one text per line).
PREDICT_FORMATS = FORMATS + (".txt",)


@dataclass
class Table:
    """A file of texts given to ``autotl predict``; which column holds the texts is the bundle's setting."""

    path: str  # as the user gave it
    columns: list[str]
    _at: dict[str, int] = field(default_factory=dict, repr=False)

    def position(self, column: str, line: int) -> int:
        """Where ``column`` is (exactly, else ignoring case); a :class:`DataError` naming the file if nowhere."""
        if column not in self._at:
            names = [c.strip() for c in self.columns]
            folded = [n.lower() for n in names]
            if column in names:
                self._at[column] = names.index(column)
            elif column.lower() in folded:
                self._at[column] = folded.index(column.lower())
            else:
                shown = ", ".join(repr(n) for n in names[:10]) + (", ..." if len(names) > 10 else "")
                what = "key" if self.path.endswith(".jsonl") else "column"
                raise DataError(f"{self.path} line {line}: no {what} {column!r} (its {what}s: {shown or 'none'}); "
                                f"the bundle reads its texts from {what} {column!r} (the run's data.text_column): "
                                "rename yours to that")
        return self._at[column]


@dataclass
class TableRow:
    """One record of a file given to ``autotl predict``: the text is picked from it by column name."""

    table: Table
    line: int
    cells: Any  # a list of cells (CSV, TSV; in the order of ``table.columns``) or a JSON object (JSONL)

    @property
    def name(self) -> str:
        return f"{self.table.path}:{self.line}"

    def text(self, column: str) -> str:
        if isinstance(self.cells, dict):
            keys = {str(k): k for k in self.cells}
            if column not in keys:
                folded = {k.lower(): k for k in keys}
                if column.lower() not in folded:
                    Table(self.table.path, list(keys)).position(column, self.line)
                column = folded[column.lower()]
            value = self.cells[keys[column]]
            if value is None:
                return ""
            if not isinstance(value, (str, int, float, bool)):
                raise DataError(f"{self.name}: the text {column!r} is a JSON {type(value).__name__}, not a string")
            if isinstance(value, str) and lone_surrogate(value):
                raise DataError(f"{self.name}, key {column!r}: {lone_surrogate(value)}; {SURROGATE_FIX}")
            return value if isinstance(value, str) else str(value)
        return self.cells[self.table.position(column, self.line)]


def decode_utf8(data: bytes, where: str) -> str:
    """``data`` as UTF-8 text (a byte-order mark dropped); a one-line :class:`DataError` naming ``where`` if not."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        raise DataError(f"{where} line {line}: bytes that are not UTF-8 ({data[exc.start:exc.end]!r} at byte "
                        f"{exc.start - line_start + 1} of the line); save it as UTF-8 (e.g. `iconv -f latin1 -t "
                        "utf-8 in.csv > out.csv`)") from exc


def text_lines(text: str, name: Any) -> list[tuple[str, str]]:
    """One text per line, blank lines skipped; named ``name(line_number)``."""
    return [(name(number), line.rstrip("\r")) for number, line in enumerate(text.split("\n"), start=1)
            if line.strip()]


def read_predict_file(source: str) -> list[tuple[str, Any]]:
    """``(name, item)`` for every text of a file given to ``autotl predict``; names are ``FILE:LINE``.

    CSV, TSV and JSONL files give :class:`TableRow` items (their text column is chosen later, by the
    bundle's settings; other columns, labels included, are ignored); ``.txt`` gives one ``str`` per
    line. Every problem is a one-line :class:`DataError` naming the file.
    """
    path = Path(source)
    if path.is_dir():
        raise DataError(f"{source} is a folder; give a file of texts ({', '.join(PREDICT_FORMATS)}), or - to read "
                        "one text per line from standard input")
    if not path.is_file():
        raise DataError(f"no such file: {source}; give a file of texts ({', '.join(PREDICT_FORMATS)}), or - to "
                        "read one text per line from standard input")
    suffix = path.suffix.lower()
    if suffix not in PREDICT_FORMATS:
        raise DataError(f"{source}: cannot read texts from a {path.suffix or 'suffix-less'} file; give a .csv, .tsv "
                        "or .jsonl file with a text column, a .txt file (one text per line), or - for one text per "
                        "line on standard input")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {source}: {exc.strerror or exc}") from exc
    if not data.strip(b" \t\r\n\xef\xbb\xbf"):
        raise DataError(f"{source} is empty; it needs "
                        + ("one text per line" if suffix == ".txt" else
                           "one JSON object per line, with the bundle's text key" if suffix == ".jsonl" else
                           "a header line naming the text column, and one row per text"))
    text = decode_utf8(data, source)
    if suffix == ".txt":
        items: list[tuple[str, Any]] = text_lines(text, lambda n: f"{source}:{n}")
    elif suffix == ".jsonl":
        items = _jsonl_table(source, text)
    else:
        items = _delimited_table(source, text, suffix == ".tsv")
    if not items:
        raise DataError(f"{source} has no rows" + ("" if suffix in (".txt", ".jsonl") else " under its header line")
                        + "; nothing to predict")
    return items


def _csv_reader(text: str, tsv: bool):
    """The one CSV/TSV dialect of the task: TSV splits on tabs with no quoting (texts cannot hold
    tabs or line breaks); CSV follows the usual quoting rules, strictly."""
    return csv.reader(io.StringIO(text, newline=""), delimiter="\t" if tsv else ",",
                      quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL, strict=not tsv)


def _delimited_table(source: str, text: str, tsv: bool) -> list[tuple[str, TableRow]]:
    """Records of a CSV/TSV file, read by the same rules as the search's files (see :func:`_delimited_records`)."""
    reader = _csv_reader(text, tsv)
    table: Table | None = None
    items: list[tuple[str, TableRow]] = []
    for start, record in numbered_records(reader):
        if isinstance(record, csv.Error):
            problem = ("a double quote opens a text that is never closed" if "unexpected end of data" in str(record)
                       else f"not valid CSV ({record})")
            raise DataError(f"{source} line {start}: {problem}; put texts that hold commas, quotes or line breaks "
                            "in double quotes, doubling the quotes inside (\"\")") from record
        if table is None:
            if not record or not any(cell.strip() for cell in record):
                raise DataError(f"{source} line {start}: the first line must be the header naming the columns "
                                "(e.g. `text`); it is empty")
            table = Table(source, record)
            continue
        if not any(cell.strip() for cell in record):
            continue  # a blank line
        if len(record) != len(table.columns):
            sep = "tab" if tsv else "comma"
            raise DataError(f"{source} line {start}: {len(record)} fields where the header has {len(table.columns)} "
                            f"(a {sep} too many or too few?); "
                            + ("remove tabs inside texts" if tsv else "put texts that hold commas in double quotes"))
        row = TableRow(table, start, record)
        items.append((row.name, row))
    return items


def _jsonl_table(source: str, text: str) -> list[tuple[str, TableRow]]:
    table = Table(source, [])
    items: list[tuple[str, TableRow]] = []
    for number, obj in json_lines(text):
        if isinstance(obj, str):
            fix = "write one JSON object per line" if obj.startswith("not valid") else \
                'write one object per line, such as {"text": "..."}'
            raise DataError(f"{source} line {number}: {obj}; {fix}")
        row = TableRow(table, number, obj)
        items.append((row.name, row))
    return items
