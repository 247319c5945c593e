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


__all__ = ["is_under", "json_lines", "load_without_head", "numbered_records", "stratified_split"]
