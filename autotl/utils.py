"""Plugin utilities: the plumbing that backbone and task plugins share, so that none writes its own copy.

For backbone families:

- :func:`is_under`: whether a parameter or module name lies under one of some module names (a layer
  group, the head, LoRA's targets).
- :func:`load_without_head`: load a pretrained checkpoint into a freshly built network, all but its
  new head; anything else missing, extra or of another shape is a one-line
  :class:`~autotl.errors.ModelUnavailableError`.

For tasks:

- :func:`stratified_split`: the seeded, per-class hold-out of a validation split out of the training
  split (``Task.load`` without a validation split of its own).
- :func:`set_stratified_split`: the same for items that each carry a set of labels (0/1 rows): every
  label's share held out as evenly as its items allow (iterative stratification).
- :func:`quantile_bins`: a numeric value per item as the index of its quantile bin, so that
  :func:`stratified_split` can hold out every range of values alike.
- :func:`numbered_records`: the records of a :func:`csv.reader` with the line each starts on (a
  quoted text may span lines), and the records that are not valid CSV, for messages that name the line.
- :func:`json_lines`: the JSON objects of a JSON Lines text with their line numbers, and the lines that
  are not a JSON object.

Every name here is exported from :mod:`autotl` and documented in docs/plugins.md; the built-in plugins
and ``examples/autotl-torchvision`` use them.
"""

from __future__ import annotations

import csv
import json
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .errors import DataError, ModelUnavailableError


def is_under(name: str, prefixes: str | Iterable[str]) -> bool:
    """Whether ``name`` is one of ``prefixes`` or lies under one: ``blocks.1.conv`` is under ``blocks.1``,
    ``blocks.10`` is not.

    :param prefixes: a module name, or several (``[""]`` does not mean everything: only ``""`` itself).
    """
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def load_without_head(model: nn.Module, state: Mapping[str, torch.Tensor], head: Sequence[str], *,
                      model_name: str, origin: str, hint: str = "") -> None:
    """Load the pretrained ``state`` into ``model``, all but the new head, whose weights stay as built.

    The checkpoint's own head (a 1000-class classifier, say) is dropped: every key under one of the
    ``head`` module names. Every other weight of the network must be in ``state``, with its shape, and
    ``state`` may hold nothing else.

    :param model_name: the model, as the message names it (``"timm model 'resnet18'"``).
    :param origin: where the weights come from (a file path, a package), for the message.
    :param hint: what to do, appended to the message (``"give a checkpoint of torchvision.models.resnet18"``).
    :raises ModelUnavailableError: naming ``origin`` and ``model_name``, how many keys are missing,
        unexpected or of another shape, and a few of them.
    """
    body = {key: value for key, value in state.items() if not is_under(key, head)}
    own = model.state_dict()
    wrong = [key for key, value in body.items() if key in own and own[key].shape != value.shape]
    result = model.load_state_dict({k: v for k, v in body.items() if k not in wrong}, strict=False)
    missing = [key for key in result.missing_keys if not is_under(key, head)]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected or wrong:
        examples = (wrong + missing + unexpected)[:3]
        raise ModelUnavailableError(
            f"weights from {origin} do not fit {model_name}: {len(wrong)} of another shape, {len(missing)} missing "
            f"and {len(unexpected)} unexpected keys (e.g. {', '.join(examples)})" + (f"; {hint}" if hint else ""))


def stratified_split(labels: Sequence[int], num_classes: int, val_fraction: float, seed: int, *,
                     too_few: Callable[[int, list[int]], str] | None = None) -> tuple[list[int], list[int]]:
    """Hold out ``val_fraction`` of each class for validation (at least one sample, never the last), seeded.

    Classes are visited in order ``0 .. num_classes - 1``, each drawing a permutation of its members
    from one ``numpy.random.default_rng(seed)``: the same labels and seed give the same split.

    :param labels: each sample's class index.
    :param too_few: the message for a class with fewer than two samples, given its index and the
        positions of its samples [default: a message naming the class index].
    :return: the positions of the training and of the validation samples, each in ascending order.
    :raises DataError: for a class with fewer than two samples (no validation sample can be spared).
    """
    labels_arr = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val_idx: list[int] = []
    for label in range(num_classes):
        members = np.flatnonzero(labels_arr == label)
        if len(members) < 2:
            raise DataError(too_few(label, members.tolist()) if too_few is not None else
                            f"class {label} has {len(members)} sample(s); a validation split needs at least 2 per "
                            "class")
        n_val = min(len(members) - 1, max(1, int(round(val_fraction * len(members)))))
        val_idx.extend(rng.permutation(members)[:n_val].tolist())
    val_set = set(val_idx)
    return [i for i in range(len(labels_arr)) if i not in val_set], sorted(val_idx)


def set_stratified_split(memberships: Sequence[Sequence[int]] | np.ndarray, val_fraction: float,
                         seed: int) -> tuple[list[int], list[int]]:
    """Hold out ``val_fraction`` of the items, each label's items shared out alike (iterative stratification).

    Sechidis, Tsoumakas and Vlahavas (2011): the label with the fewest items still unplaced goes first;
    each of its items joins the side (validation or training) that still wants the most of that label,
    ties going to the side that wants the most items, then to a seeded coin. Items without any label fill
    the sides' remaining wants. The same rows and seed give the same split.

    :param memberships: ``(items, labels)`` 0/1 (or boolean): which labels each item carries.
    :return: the positions of the training and of the validation items, each in ascending order.
    :raises DataError: for fewer than two items (no validation item can be spared).
    """
    rows = np.asarray(memberships, dtype=bool)
    if rows.ndim != 2:
        rows = rows.reshape(len(rows), -1)
    n = len(rows)
    if n < 2:
        raise DataError(f"{n} item(s); a validation split needs at least 2")
    rng = np.random.default_rng(seed)
    n_val = min(n - 1, max(1, int(round(val_fraction * n))))
    wanted_items = np.array([n - n_val, n_val], dtype=np.float64)  # [train, val]
    share = np.array([1 - n_val / n, n_val / n])
    wanted = share[:, None] * rows.sum(0)[None, :].astype(np.float64)  # (2, labels)
    side = np.full(n, -1)
    order = rng.permutation(n)
    rows_in_order = rows[order]
    while True:
        open_rows = rows_in_order & (side[order] < 0)[:, None]
        counts = open_rows.sum(0)
        if not counts.any():
            break
        label = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
        for position in np.flatnonzero(open_rows[:, label]):
            item = int(order[position])
            want = wanted[:, label]
            best = np.flatnonzero(want == want.max())
            if len(best) > 1:
                best = best[wanted_items[best] == wanted_items[best].max()]
            choice = int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])
            side[item] = choice
            wanted[choice] -= rows[item]
            wanted_items[choice] -= 1
    for item in order[side[order] < 0]:
        choice = 0 if wanted_items[0] >= wanted_items[1] else 1
        side[int(item)] = choice
        wanted_items[choice] -= 1
    if not (side == 1).any() or not (side == 0).any():  # a degenerate draw: move one item over
        move = int(order[0])
        side[move] = 1 - side[move]
    return np.flatnonzero(side == 0).tolist(), np.flatnonzero(side == 1).tolist()


def quantile_bins(values: Sequence[float] | np.ndarray, bins: int = 10) -> list[int]:
    """Each value's quantile bin, ``0 .. bins - 1`` (fewer where values repeat), for :func:`stratified_split`.

    Bins hold (about) equal numbers of items; a bin left with fewer than two items joins its neighbour,
    so that every bin can spare a validation item.
    """
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    if not len(data):
        return []
    edges = np.unique(np.quantile(data, np.linspace(0, 1, max(1, int(bins)) + 1)[1:-1]))
    index = np.searchsorted(edges, data, side="right")
    # renumber the bins in use 0..k-1, then merge any bin of one item into its lower (or upper) neighbour
    used, index = np.unique(index, return_inverse=True)
    counts = np.bincount(index)
    while len(counts) > 1 and counts.min() < 2:
        small = int(np.argmin(counts))
        into = small - 1 if small > 0 else 1
        index[index == small] = into
        used, index = np.unique(index, return_inverse=True)
        counts = np.bincount(index)
    return index.astype(int).tolist()


def numbered_records(reader) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """``(line, record)`` for each record of a :func:`csv.reader`, ``line`` being where the record starts.

    A record that is not valid CSV comes as ``(line, the csv.Error)`` and reading goes on after it;
    the caller raises or skips. Line numbers count as a text editor does (the first line is 1), a
    quoted text over several lines counting all of them.
    """
    previous = 0
    while True:
        start = previous + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            previous = reader.line_num
            yield start, exc
            continue
        previous = reader.line_num
        yield start, record


def json_lines(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """``(line, object)`` for each non-blank line of a JSON Lines text, lines counted from 1.

    A line that is not a JSON object comes as ``(line, why)``, ``why`` a short string (``not valid
    JSON (Expecting value at character 1)``, ``a JSON list, not an object``); the caller raises or skips.
    """
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"not valid JSON ({exc.msg} at character {exc.colno})"
            continue
        yield number, obj if isinstance(obj, dict) else f"a JSON {type(obj).__name__}, not an object"


__all__ = ["is_under", "json_lines", "load_without_head", "numbered_records", "quantile_bins", "set_stratified_split",
           "stratified_split"]
