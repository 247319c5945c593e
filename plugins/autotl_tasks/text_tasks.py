"""Texts with a number (``text-regression``) or a set of labels (``text-multilabel``): tables as text classification's.

Both read ``DATA/train.csv`` (optional ``val.csv``, ``test.csv``; or ``.tsv``, ``.jsonl``) through
:class:`autotl_text.TextTableTask`, which tokenises, exports and predicts as for text classification;
what differs is the label column, read by a :class:`autotl_text.LabelKind`, and the target.

- ``text-regression``: a number per text, column ``target``; the validation split is stratified by the
  target's quantile bins. Predictions: ``{"value": number}``.
- ``text-multilabel``: labels joined with ``|`` (the data option ``separator``) in column ``label``; an
  empty cell is an empty set. The validation split is stratified by label set (iterative stratification).
  Predictions: ``{"labels": [...], "probabilities": {label: p}}``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from autotl import quantile_bins, set_stratified_split, stratified_split
from autotl.errors import DataError, UsageError
from autotl_text import TABLE_OPTIONS, LabelKind, TextTableTask

from .targets import LabelSet, Number

#: quantile bins of the target that the validation split holds out alike.
TARGET_BINS = 10


class NumberColumn(LabelKind):
    """A number per text."""

    holds = "a number"

    def parse(self, cell: str) -> float:
        try:
            value = float(cell)
        except ValueError:
            raise ValueError(f"{cell!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{cell!r} is not a finite number")
        return value

    def names(self, values: Sequence[float], column: str, where: str) -> list[str]:
        if len(set(values)) < 2:
            raise DataError(f"{where}, column {column!r}: every row has the target {values[0]!r}; a model of a number "
                            "needs targets that differ")
        return [column]

    def unknown(self, value: Any, names: Mapping[str, int]) -> str | None:
        return None

    def index(self, value: float, names: Mapping[str, int]) -> float:
        return value

    def tensor(self, stored: Sequence[float], width: int) -> torch.Tensor:
        return torch.tensor(list(stored), dtype=torch.float32)

    def split(self, stored: Sequence[float], names: Sequence[str], val_fraction: float, seed: int,
              where: Callable[[int], str]) -> tuple[list[int], list[int]]:
        if len(stored) < 4:
            raise DataError(f"{where(0).rsplit(' line', 1)[0]} has {len(stored)} rows; a validation split needs at "
                            "least 4: add rows, or give a val file of your own")
        bins = quantile_bins(stored, min(TARGET_BINS, len(stored) // 2))
        return stratified_split(bins, max(bins) + 1, val_fraction, seed)

    def counts(self, stored: Sequence[float], names: Sequence[str]) -> dict[str, int]:
        return {names[0]: len(stored)}

    def details(self, stored: Sequence[float], names: Sequence[str]) -> dict[str, Any]:
        values = np.asarray(stored, dtype=np.float64)
        return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
                "max": float(values.max())} if len(values) else {}


class LabelSetColumn(LabelKind):
    """Labels joined with ``separator``; an empty cell is an empty set."""

    allows_empty = True

    def __init__(self, separator: str = "|"):
        self.separator = separator
        self.holds = f"its labels joined with {separator!r} (or nothing)"
        self.fingerprint = f"labels joined with {separator}"

    def parse(self, cell: str) -> tuple[str, ...]:
        return tuple(sorted({part.strip() for part in cell.split(self.separator) if part.strip()}))

    def names(self, values: Sequence[tuple[str, ...]], column: str, where: str) -> list[str]:
        counts: dict[str, int] = {}
        for labels in values:
            for label in labels:
                counts[label] = counts.get(label, 0) + 1
        if not counts:
            raise DataError(f"{where}, column {column!r}: no row has a label; give each row its labels joined with "
                            f"{self.separator!r}")
        return sorted(counts)

    def unknown(self, value: tuple[str, ...], names: Mapping[str, int]) -> str | None:
        return next((label for label in value if label not in names), None)

    def index(self, value: tuple[str, ...], names: Mapping[str, int]) -> list[int]:
        return [names[label] for label in value]

    def tensor(self, stored: Sequence[list[int]], width: int) -> torch.Tensor:
        rows = torch.zeros(len(stored), width)
        for i, labels in enumerate(stored):
            rows[i, labels] = 1.0
        return rows

    def split(self, stored: Sequence[list[int]], names: Sequence[str], val_fraction: float, seed: int,
              where: Callable[[int], str]) -> tuple[list[int], list[int]]:
        return set_stratified_split(self.tensor(stored, len(names)).numpy(), val_fraction, seed)

    def counts(self, stored: Sequence[list[int]], names: Sequence[str]) -> dict[str, int]:
        totals = self.tensor(stored, len(names)).sum(0).tolist()
        return {name: int(n) for name, n in zip(names, totals)}

    def details(self, stored: Sequence[list[int]], names: Sequence[str]) -> dict[str, Any]:
        sizes = [len(labels) for labels in stored]
        return {"labels_per_item": float(np.mean(sizes)) if sizes else 0.0,
                "items_without_labels": sizes.count(0)}


class TextRegression(TextTableTask):
    name = "text-regression"
    target = Number()
    label_column = "target"
    description = "texts with a number: DATA/train.csv (columns text,target), optional val.csv and test.csv"
    data_options = {**TABLE_OPTIONS, "label_column": "the column (or JSON key) holding the number (default target)"}

    def label_kind(self, options: Mapping[str, Any]) -> LabelKind:
        return NumberColumn()


class TextMultilabel(TextTableTask):
    name = "text-multilabel"
    target = LabelSet()
    description = ("texts with a set of labels: DATA/train.csv (columns text,label; labels joined with |), optional "
                   "val.csv and test.csv")
    data_options = {**TABLE_OPTIONS, "label_column": "the column (or JSON key) holding the labels (default label)",
                    "separator": "what joins a row's labels in the label column (default |)"}

    def label_kind(self, options: Mapping[str, Any]) -> LabelKind:
        separator = options.get("separator", "|")
        if not isinstance(separator, str) or not separator:
            raise UsageError(f"data option separator must be one or more characters, not {separator!r}; e.g. "
                             "-d separator=';' (or `data: {separator: ';'}` in the recipe)")
        return LabelSetColumn(separator)


__all__ = ["LabelSetColumn", "NumberColumn", "TextMultilabel", "TextRegression"]
