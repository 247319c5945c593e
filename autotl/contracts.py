"""The typed contracts between tasks, backbones and the core: what crosses a plugin boundary.

- :class:`ImagePreprocessing` and :class:`TextPreprocessing`: what a backbone of the ``image`` or
  ``text`` modality returns from :meth:`autotl.Backbone.preprocessing`, and what the built-in image
  and text tasks read (``ImagePreprocessing.of(backbone)``).
- :class:`DataReport` (and :class:`SkippedItem`): what a task's :class:`autotl.LoadedData` holds as
  ``report``, shown by the console reporter and written as ``data_report.json``.
- :class:`FittedRange`: a range a task fits to the data it loaded (:meth:`autotl.Task.fitted_space`), which
  the core applies where the recipe marks the parameter's range ``fit: data`` (autotl/fitted_space.py).

Each is a dataclass whose fields are the contract (like timm's ``PretrainedCfg``); ``to_dict()``
gives its JSON form. For code written against the plain dicts of earlier versions, each is also a
read-only mapping of ``to_dict()`` (``pre["mean"]``, ``report.get("counts")``), and a backbone or
task that still returns such a dict is converted on the way in (:meth:`Preprocessing.from_mapping`,
:meth:`DataReport.from_mapping`): missing image settings take ImageNet's defaults, a text backbone
without a tokenizer is a :class:`~autotl.errors.PluginError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Iterator, TypeVar

from .errors import PluginError

#: ImageNet's channel means and standard deviations: the image defaults when a backbone names none.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _MappingView(Mapping):
    """A read-only mapping of ``self.to_dict()``: what code written against the earlier plain dicts reads."""

    __hash__ = None  # type: ignore[assignment]  # mutable dataclasses: not hashable

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


P = TypeVar("P", bound="Preprocessing")


@dataclass(eq=False)
class Preprocessing(_MappingView):
    """What a backbone hands the task of its modality (:meth:`autotl.Backbone.preprocessing`).

    The base class has no field: a backbone of a modality with no declared contract returns it (or
    its own subclass, read by its own task).
    """

    #: the modality whose tasks read this object.
    modality: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """The fields, by name, in declaration order (a tokenizer stays the object it is)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __eq__(self, other: object) -> bool:
        if type(other) is type(self):
            return self.to_dict() == other.to_dict()  # type: ignore[union-attr]
        return Mapping.__eq__(self, other)

    @classmethod
    def from_mapping(cls: type[P], values: Mapping[str, Any], owner: str = "a backbone") -> P:
        """The settings of an earlier plugin's plain dict: the keys named like fields, others ignored.

        :param owner: who returned it, for the error message (``backbone 'x' (family y)``).
        :raises PluginError: naming ``owner`` and the key, for a required key missing or a bad value.
        """
        known = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if values.get(f.name) is None and f.default is MISSING
                   and f.default_factory is MISSING]
        if missing:
            raise PluginError(f"{owner}: preprocessing() gives no {', '.join(repr(m) for m in missing)}; return "
                              f"autotl.{cls.__name__}(...) with it")
        try:
            return cls(**{key: value for key, value in values.items() if key in known})
        except (TypeError, ValueError) as exc:
            raise PluginError(f"{owner}: preprocessing() holds a bad value ({exc}); return "
                              f"autotl.{cls.__name__}(...)") from exc

    @classmethod
    def of(cls: type[P], backbone: Any) -> P:
        """``backbone.preprocessing()`` as this class: converted from a plain dict, refused if anything else.

        :raises PluginError: naming the backbone, for a value of another type or a dict that lacks
            a required key or holds a bad value (see :meth:`from_mapping`).
        """
        owner = f"backbone {getattr(backbone, 'name', type(backbone).__name__)!r} (family " \
                f"{getattr(backbone, 'family', '?')!r})"
        value = backbone.preprocessing()
        if isinstance(value, cls):
            return value
        if type(value) is Preprocessing or (isinstance(value, Mapping) and not isinstance(value, Preprocessing)):
            return cls.from_mapping(value, owner)  # the base default (no settings) or an earlier plugin's dict
        raise PluginError(f"{owner}: preprocessing() returned a {type(value).__name__}; a {cls.modality} task "
                          f"needs an autotl.{cls.__name__}")


@dataclass(eq=False)
class ImagePreprocessing(Preprocessing):
    """How an image backbone's inputs are made: what an ``image`` task reads from it.

    Pixels are scaled to ``[0, 1]`` and then standardised, ``(x - mean) / std`` per RGB channel.
    """

    modality: ClassVar[str] = "image"

    #: the side, in pixels, of the square inputs the network was trained on (a trial may choose
    #: another ``resolution``).
    input_size: int = 224
    #: per-channel means (R, G, B) of pixels in ``[0, 1]``.
    mean: tuple[float, float, float] = IMAGENET_MEAN
    #: per-channel standard deviations (R, G, B).
    std: tuple[float, float, float] = IMAGENET_STD
    #: how images are resized: ``bilinear``, ``bicubic``, ``nearest``, ``lanczos``, ``box`` or ``hamming``.
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        self.input_size = int(self.input_size)
        self.mean = _three("mean", self.mean)
        self.std = _three("std", self.std)
        self.interpolation = str(self.interpolation)
        if self.input_size < 1:
            raise ValueError(f"input_size must be a positive number of pixels, not {self.input_size}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, not {self.std}")


def _three(name: str, value: Any) -> tuple[float, float, float]:
    numbers = tuple(float(v) for v in value)
    if len(numbers) != 3:
        raise ValueError(f"{name} must hold three numbers (R, G, B), not {len(numbers)}")
    return numbers  # type: ignore[return-value]


@dataclass(eq=False)
class TextPreprocessing(Preprocessing):
    """How a text backbone's inputs are made: what a ``text`` task reads from it."""

    modality: ClassVar[str] = "text"

    #: a Hugging Face tokenizer (``transformers.PreTrainedTokenizerBase``), loaded: called on a list of
    #: texts with ``truncation``, ``max_length`` and ``padding``; its padding id, ``padding_side``
    #: and ``truncation_side`` are read, and it is saved into bundles by the backbone's ``bundle_files``.
    tokenizer: Any
    #: a name for the tokenizer shared by the backbones that use it: texts are tokenised once per key
    #: and max length [default: the tokenizer's ``name_or_path``].
    tokenizer_key: str | None = None
    #: the max length (tokens) of a trial that chooses none [default: 128, at most ``model_max_length``].
    max_length: int | None = None
    #: the longest input (tokens) the network takes; a trial's max length is cut to it [default: 512].
    model_max_length: int | None = None

    def __post_init__(self) -> None:
        if self.tokenizer is None:
            raise ValueError("a TextPreprocessing needs a tokenizer, not None")
        for name in ("max_length", "model_max_length"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, int(value))


@dataclass
class SkippedItem:
    """One input the task could not use, and why: listed in the data report and on the console."""

    #: where it is: a path relative to the data folder, ``train.csv:12``...
    file: str
    #: why, in a few words, with what to do where that is not obvious.
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason}


@dataclass
class FittedRange:
    """A parameter's range fitted to the data, and why: what :meth:`autotl.Task.fitted_space` returns.

    Give ``choices`` or both ``low`` and ``high`` (a range of numbers, searched as the recipe's fallback range
    was: whole or real numbers, its ``log``). ``why`` says in a few words what in the data chose it (the search
    prints it and records it on the study): ``median image side 480 px``.
    """

    #: the parameter, a name of the recipe's ``space`` marked ``fit: data``.
    param: str
    #: what in the data chose the range, in a few words.
    why: str
    choices: list | None = None
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if (self.choices is None) == (self.low is None or self.high is None):
            raise PluginError(f"a fitted range of {self.param} needs choices or both low and high, not "
                              f"choices={self.choices!r}, low={self.low!r}, high={self.high!r}")
        if self.choices is not None:
            self.choices = list(self.choices)
            if not self.choices:
                raise PluginError(f"a fitted range of {self.param} offers no choice")
        elif self.low > self.high:
            raise PluginError(f"a fitted range of {self.param}: low ({self.low}) is above high ({self.high})")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"param": self.param}
        out.update({"choices": self.choices} if self.choices is not None else {"low": self.low, "high": self.high})
        out["why"] = self.why
        return out

    def describe(self) -> str:
        """The range in words: ``resolution choices [96, 128, 160, 224]``, ``epochs 8 to 21``."""
        if self.choices is not None:
            return f"{self.param} choices [{', '.join(str(c) for c in self.choices)}]"
        return f"{self.param} {self.low:g} to {self.high:g}"


@dataclass(eq=False)
class DataReport(_MappingView):
    """What a task found in a dataset (:attr:`autotl.LoadedData.report`): shown when a search starts,
    written as ``data_report.json`` in the run folder.

    ``to_dict()`` is the JSON: ``root``, ``classes``, ``counts``, ``val_from_train``, ``skipped``,
    then every entry of ``details``.
    """

    #: the class names, in the order of the model's outputs.
    classes: list[str]
    #: samples per split and class: ``{"train": {"cat": 40, ...}, "val": {...}, "test": {...}}``.
    counts: dict[str, dict[str, int]]
    #: whether the validation split was carved out of the training split (stratified, seeded).
    val_from_train: bool = False
    #: the inputs that were skipped (unreadable files, empty texts...), in the order met.
    skipped: list[SkippedItem] = field(default_factory=list)
    #: the dataset's location as given, if the task has one.
    root: str | None = None
    #: anything else the task reports (JSON values): its files, the columns read...
    details: dict[str, Any] = field(default_factory=dict)

    #: the keys of :meth:`to_dict` that are fields; everything else is a detail.
    FIELDS: ClassVar[tuple[str, ...]] = ("root", "classes", "counts", "val_from_train", "skipped")

    def __post_init__(self) -> None:
        self.classes = [str(c) for c in self.classes]
        self.skipped = [_skipped(item) for item in self.skipped]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.root is None else {"root": self.root}
        out.update({"classes": list(self.classes), "counts": self.counts, "val_from_train": self.val_from_train,
                    "skipped": [item.to_dict() for item in self.skipped]})
        out.update((k, v) for k, v in self.details.items() if k not in out)
        return out

    def __eq__(self, other: object) -> bool:
        return Mapping.__eq__(self, other)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], label_names: list[str] | None = None) -> "DataReport":
        """A report given as a plain dict (earlier tasks): its keys named like fields, the rest as details.

        ``classes`` falls back on ``labels``, then on ``label_names``; a missing ``counts`` is empty.

        :raises PluginError: for a skipped item without ``file`` and ``reason``.
        """
        classes = values.get("classes") or values.get("labels") or list(label_names or [])
        details = {k: v for k, v in values.items() if k not in cls.FIELDS}
        root = values.get("root")
        return cls(classes=list(classes), counts=dict(values.get("counts") or {}),
                   val_from_train=bool(values.get("val_from_train", False)), skipped=list(values.get("skipped") or []),
                   root=None if root is None else str(root), details=details)

    @classmethod
    def of(cls, value: Any, label_names: list[str] | None = None) -> "DataReport":
        """``value`` as a :class:`DataReport`: itself, or converted from a plain dict (``None``: empty).

        :raises PluginError: for anything else.
        """
        if isinstance(value, DataReport):
            return value
        if value is None:
            return cls(classes=list(label_names or []), counts={})
        if isinstance(value, Mapping):
            return cls.from_mapping(value, label_names)
        raise PluginError(f"a task's LoadedData.report is a {type(value).__name__}; make it an autotl.DataReport")


def _skipped(item: Any) -> SkippedItem:
    if isinstance(item, SkippedItem):
        return item
    if isinstance(item, Mapping) and "file" in item and "reason" in item:
        return SkippedItem(str(item["file"]), str(item["reason"]))
    raise PluginError(f"a data report's skipped item must be an autotl.SkippedItem(file, reason), not {item!r:.100}")


__all__ = ["DataReport", "FittedRange", "IMAGENET_MEAN", "IMAGENET_STD", "ImagePreprocessing", "Preprocessing", "SkippedItem",
           "TextPreprocessing"]
