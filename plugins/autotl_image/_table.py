"""CSV files listing images: ``train.csv``, optional ``val.csv``, ``test.csv``, one row per image file.

Each row names an image file (a path relative to the CSV's folder) and its label, in a column the task
chooses (a number, labels joined by a separator...). Every image is decoded once, as an ImageFolder's
are (:func:`._folder._decode`); one that does not decode is skipped and listed, while a row that names
no file, a missing file or a label that cannot be read is an error naming the CSV and its line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from autotl import SkippedItem, numbered_records
from autotl.errors import DataError

from ._folder import ImageData, _decode, shown

TABLES = ("train", "val", "test")


@dataclass
class ImageRow:
    """One row of a CSV listing images: the CSV, the line the row starts on, its cells by column name."""

    table: Path
    line: int
    cells: Mapping[str, str]

    @property
    def where(self) -> str:
        """``FILE:LINE``, for messages and as the row's name in ``autotl predict``'s output."""
        return f"{shown(self.table)}:{self.line}"

    def cell(self, column: str) -> str:
        if column not in self.cells:
            raise DataError(f"{shown(self.table)} has no column {column!r} (its columns: "
                            f"{', '.join(map(repr, self.cells))}); name the column {column!r}")
        return (self.cells[column] or "").strip()

    def image(self, column: str = "image") -> Path:
        """The image file the row names in ``column``, relative to the CSV's folder (or absolute)."""
        name = self.cell(column)
        if not name:
            raise DataError(f"{self.where}: no image file in column {column!r}; give each row an image path, relative "
                            "to the CSV's folder")
        return self.table.parent / name


def read_image_csv(path: Path, columns: Sequence[str] = ()) -> list[ImageRow]:
    """The rows of a CSV with a header line, as :class:`ImageRow`; ``columns`` must be in the header.

    :raises DataError: naming the file: missing, unreadable, not UTF-8, not valid CSV (with the line),
        no header, a column missing (with the columns found), no rows.
    """
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"no such file: {shown(path)}") from None
    except OSError as exc:
        raise DataError(f"cannot read {shown(path)}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{shown(path)} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    records = numbered_records(csv.reader(io.StringIO(text, newline="")))
    header: list[str] | None = None
    rows: list[ImageRow] = []
    for line, record in records:
        if isinstance(record, csv.Error):
            raise DataError(f"{shown(path)}:{line}: not valid CSV ({record})")
        if not any(cell.strip() for cell in record):
            continue
        if header is None:
            header = [cell.strip() for cell in record]
            missing = [c for c in columns if c not in header]
            if missing:
                raise DataError(f"{shown(path)} has no column {', '.join(map(repr, missing))} in its header line (its "
                                f"columns: {', '.join(map(repr, header))}); rename the column or name it with a data "
                                "option (-d image_column=..., see docs/tasks.md)")
            continue
        rows.append(ImageRow(Path(path), line, dict(zip(header, record))))
    if header is None:
        raise DataError(f"{shown(path)} is empty; it needs a header line naming its columns and one row per image")
    if not rows:
        raise DataError(f"{shown(path)} has no rows under its header line; list one image per row")
    return rows


def parse_number(row: ImageRow, column: str) -> float:
    """The row's ``column`` as a finite number. :raises DataError: naming the row and the text."""
    text = row.cell(column)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{row.where}: {column} {text!r} is not a number; give every row a finite number "
                        f"in column {column!r}")
    return value


def parse_label_set(row: ImageRow, column: str, separator: str) -> tuple[str, ...]:
    """The row's ``column`` as its labels (split on ``separator``, blanks dropped), sorted, each once; an empty
    cell is an image with none of the labels (as text-multilabel reads it)."""
    return tuple(sorted({label.strip() for label in row.cell(column).split(separator) if label.strip()}))


def load_image_csv(root: Path, *, image_column: str, column: str, parse: Callable[[ImageRow], Any],
                   max_side: int) -> ImageData:
    """``root/train.csv``, ``root/val.csv`` (if any) and ``root/test.csv`` (if any): every listed image decoded.

    Labels are what ``parse(row)`` returns (the task encodes them next); ``classes`` is left empty and
    ``val_from_train`` false for the task to fill in. Images that do not decode are skipped and listed.

    :raises DataError: no folder or no ``train.csv``; a row naming a missing file; what
        :func:`read_image_csv` and ``parse`` raise; a table whose every image is unreadable.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {shown(root)}; give a folder holding train.csv (and test.csv) with "
                        f"the columns {image_column},{column}")
    if not (root / "train.csv").is_file():
        raise DataError(f"{shown(root)} has no train.csv; list the training images there, one row each, with the "
                        f"columns {image_column},{column} (paths relative to the CSV's folder)")
    digest = hashlib.sha256()
    skipped: list[SkippedItem] = []
    splits: dict[str, tuple[list, list, list]] = {}
    for split in TABLES:
        table = root / f"{split}.csv"
        if not table.is_file():
            continue
        rows = read_image_csv(table, (image_column, column))
        listed = [(row, row.image(image_column), parse(row)) for row in rows]
        for row, file, _ in listed:
            if not file.exists() and not file.is_symlink():
                raise DataError(f"{row.where}: image file {shown(row.cell(image_column))} not found (paths are "
                                f"relative to the folder of {table.name}); fix the path or remove the row")
        images, labels, paths = [], [], []
        for row, file, label in listed:
            image, problem = _decode(file, max_side)
            if image is None:
                skipped.append(SkippedItem(f"{table.name}:{row.line} ({shown(row.cell(image_column))})", problem))
                continue
            relative = _relative(file, root)
            digest.update(f"{split}\0{relative}\0{label!r}\0".encode("utf-8", "backslashreplace"))
            digest.update(image.tobytes())
            images.append(image)
            labels.append(label)
            paths.append(relative)
        if not images:
            raise DataError(f"{shown(table)}: no listed image could be read (e.g. {skipped[-1].reason}); check the "
                            "files it names")
        splits[split] = (images, labels, paths)
    return ImageData(root, [], splits, digest.hexdigest()[:16], skipped, False, max_side)


def _relative(file: Path, root: Path) -> str:
    try:
        return str(file.relative_to(root))
    except ValueError:  # an absolute path, or one climbing out of the data folder
        return str(file)
