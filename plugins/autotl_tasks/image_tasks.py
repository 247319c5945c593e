"""Image tasks whose labels come in CSV files: a number per image, a set of labels per image.

Data: a folder holding ``train.csv``, optional ``val.csv`` and ``test.csv``, and the images. Each CSV
has a header line and one row per image: its file (column ``image``, a path relative to the CSV's
folder) and its label: a number (``image-regression``, column ``target``) or labels joined by ``|``
(``image-multilabel``, column ``labels``). Columns and separator are data options (docs/tasks.md).
Decoding, resizing, export and prediction are :class:`autotl_image.ImageTask`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from autotl import DataReport, LoadedData, quantile_bins, set_stratified_split, stratified_split
from autotl.errors import DataError
from autotl_image import ImageData, ImageTask, hold_out, parse_label_set, parse_number

from .targets import LabelSet, Number

IMAGE_COLUMN = "column of the CSV files naming each image file, relative to the CSV's folder (default image)"


class ImageRegression(ImageTask):
    """A number per image (``target`` column): RMSE, MAE and Pearson's r in the target's own units."""

    name = "image-regression"
    target = Number()
    description = "a number per image: DATA/train.csv (columns image,target), optional val.csv and test.csv"
    data_options = {**ImageTask.data_options, "image_column": IMAGE_COLUMN,
                    "target_column": "column of the CSV files holding each image's number (default target)"}

    def load(self, path: Path, *, seed: int, val_fraction: float, options: Mapping[str, Any]) -> LoadedData:
        column = str(options.get("target_column") or "target")
        images = self.load_table(path, options, column, lambda row: parse_number(row, column))
        images.classes, images.label_dtype = [column], torch.float64  # scored in the CSV's own numbers
        if "val" not in images.splits:  # hold out alike from every range of the target: its quantile bins
            values = images.splits["train"][1]
            bins = quantile_bins(values, bins=max(1, min(10, round(len(values) * val_fraction))))
            hold_out(images, stratified_split(bins, max(bins) + 1, val_fraction, seed, too_few=_too_few(path))[1])
        ranges = {split: {"min": min(s[1]), "mean": sum(s[1]) / len(s[1]), "max": max(s[1])}
                  for split, s in images.splits.items()}
        counts = {split: {column: len(s[1])} for split, s in images.splits.items()}
        return self.loaded(images, options, _report(images, counts, {"target": ranges}))


class ImageMultilabel(ImageTask):
    """A set of labels per image (``labels`` column, joined by ``|``): micro-F1, macro-F1, mean average precision."""

    name = "image-multilabel"
    target = LabelSet()
    default_fit = "pad"  # a label may be anywhere in the image: keep all of it
    description = "a set of labels per image: DATA/train.csv (columns image,labels; labels joined by |), optional " \
                  "val.csv and test.csv"
    data_options = {**ImageTask.data_options, "image_column": IMAGE_COLUMN,
                    "label_column": "column of the CSV files holding each image's labels (default labels)",
                    "separator": "what joins the labels of an image (default |)"}

    def load(self, path: Path, *, seed: int, val_fraction: float, options: Mapping[str, Any]) -> LoadedData:
        column, separator = str(options.get("label_column") or "labels"), str(options.get("separator") or "|")
        images = self.load_table(path, options, column, lambda row: parse_label_set(row, column, separator))
        names = sorted(set().union(*images.splits["train"][1]))
        for split, (_, sets, paths) in images.splits.items():
            for labels, file in zip(sets, paths):
                unknown = sorted(set(labels) - set(names))
                if unknown:
                    raise DataError(f"{split}.csv: image {file} has the label(s) {', '.join(map(repr, unknown))}, which "
                                    "no image of train.csv has; the model can only learn labels it trains on")
        counts = {split: {name: sum(name in labels for labels in s[1]) for name in names}
                  for split, s in images.splits.items()}
        images.splits = {split: (pictures, [[float(n in labels) for n in names] for labels in sets], paths)
                         for split, (pictures, sets, paths) in images.splits.items()}
        images.classes, images.label_dtype = names, torch.float32
        if "val" not in images.splits:  # every label's share held out alike (iterative stratification)
            hold_out(images, set_stratified_split(images.splits["train"][1], val_fraction, seed)[1])
            counts["val"] = {n: int(sum(row[i] for row in images.splits["val"][1])) for i, n in enumerate(names)}
            counts["train"] = {n: counts["train"][n] - counts["val"][n] for n in names}
        per_image = {split: sum(map(sum, s[1])) / len(s[1]) for split, s in images.splits.items()}
        return self.loaded(images, options, _report(images, counts, {"labels_per_image": per_image}))


def _too_few(path: Path):
    return lambda label, members: (f"{Path(path) / 'train.csv'} has too few images ({len(members)} in a range of the "
                                   "target) to hold out a validation split; add images or give a val.csv")


def _report(images: ImageData, counts: dict[str, dict[str, int]], details: dict[str, Any]) -> DataReport:
    """``counts`` per split and label, the images per split (``items``: an image may carry several labels), the
    skipped files, and the task's ``details``."""
    items = {split: len(s[0]) for split, s in images.splits.items()}
    return DataReport(classes=list(images.classes), counts=counts, val_from_train=images.val_from_train,
                      skipped=images.skipped, root=str(images.root), details={"items": items, **details})


__all__ = ["ImageMultilabel", "ImageRegression"]
