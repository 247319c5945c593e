"""A bundle's ``config.json`` as one typed, versioned record: :class:`BundleConfig`.

``autotl export`` fills it in (autotl/export.py), :func:`autotl.bundle.load` reads it back to
rebuild the network, the model card (autotl/card.py) is written from it, and the conformance kit
(autotl/testing.py) writes the smallest one a bundle loads with. Each part of the JSON is a
dataclass here, written under the same keys as its fields, so that a reader finds every key of
``config.json`` in one place.

A key added later gets a default, so that bundles written before it still load; a change that
older readers cannot follow raises :data:`FORMAT_VERSION`, and a bundle of a newer version is
refused with a message to upgrade autotl.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import BundleError
from .files import write_json

FORMAT = "autotl-bundle"
#: the newest version of config.json this autotl reads (and every older one). Version 2 added ``target`` (the
#: metric, the network's width and layout, the calibration) and the ``scores``' metric dicts; a version 1
#: bundle reads as one of its task's primary metric, one output per label and an empty calibration. Version 3
#: is an ensemble's bundle (``ensemble``: its members, each a bundle of its own in a folder of the bundle, and
#: no ``backbone``), which an older autotl refuses; a bundle of one network is still written as version 2
#: (:data:`NETWORK_FORMAT_VERSION`), which older autotl reads.
FORMAT_VERSION = 3
#: the version a bundle of one network is written as.
NETWORK_FORMAT_VERSION = 2
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CARD = "README.md"
ONNX = "model.onnx"
TORCHSCRIPT = "model.torchscript.pt"


@dataclass
class BackboneInfo:
    """``backbone``: the family that rebuilds the network, and the settings it saved for that."""

    family: str
    name: str
    modality: str | None = None
    #: where the weights came from, as ``Backbone.describe()`` said at export.
    description: str | None = None
    #: what ``Backbone.bundle_files`` returned; handed back to ``BackboneFamily.from_bundle``.
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class WeightsInfo:
    """``weights``: the plain network (LoRA merged) in ``model.safetensors``, checked on every load."""

    file: str = WEIGHTS
    sha256: str | None = None
    bytes: int | None = None
    lora_rank: int = 0
    lora_merged: bool = True
    dtype: str = "float32"


@dataclass
class TrialInfo:
    """``trial``: which trial of the search the bundle holds, and why it was chosen.

    ``rank`` is written as ``rank_by_val_<metric>`` (the metric the search ranked by), the key version 1
    bundles hold.
    """

    number: int
    chosen_by: str
    rank: int
    params: dict[str, Any]
    best_epoch: int | None = None
    #: the ranking metric on the validation split after each epoch.
    val_curve: list[float] | None = None

    def to_json(self, metric: str) -> dict[str, Any]:
        data = asdict(self)
        data[f"rank_by_val_{metric}"] = data.pop("rank")
        return data

    @classmethod
    def from_json(cls, value: Any) -> "TrialInfo | None":
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ValueError("trial is not an object")
        ranks = [v for k, v in value.items() if k.startswith("rank_by_val_")]
        return _part(cls, {**value, "rank": ranks[0] if ranks else value.get("rank")}, "trial")


@dataclass
class Scores:
    """``scores``: the validation score (chose the trial) and the test score (never chose anything).

    ``metric`` is the one the search ranked by; its scores are written under ``val_<metric>``,
    ``test_<metric>`` and ``test_<metric>_from`` (the keys version 1 bundles hold), every metric of
    the target under ``val_metrics`` and ``test_metrics``.
    """

    metric: str
    val: float | None = None
    test: float | None = None
    #: ``search`` (scored once the search chose its best trial) or ``export``.
    test_from: str | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)
    test_metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        m = self.metric
        return {"metric": m, f"val_{m}": self.val, f"test_{m}": self.test, f"test_{m}_from": self.test_from,
                "val_metrics": dict(self.val_metrics), "test_metrics": dict(self.test_metrics)}

    @classmethod
    def from_json(cls, value: Any, metric: str | None) -> "Scores | None":
        """The scores of a ``scores`` object; ``metric`` is the bundle's (a version 1 bundle records none: its
        one ``val_<metric>`` key names it)."""
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ValueError("scores is not an object")
        metric = value.get("metric") or metric
        if not metric:
            named = [k[4:] for k in value if k.startswith("val_") and k != "val_metrics"]
            if len(named) != 1:
                raise ValueError("scores names no metric")
            metric = named[0]
        return cls(metric=metric, val=value.get(f"val_{metric}"), test=value.get(f"test_{metric}"),
                   test_from=value.get(f"test_{metric}_from"),
                   val_metrics=_mapping(value.get("val_metrics"), "scores.val_metrics"),
                   test_metrics=_mapping(value.get("test_metrics"), "scores.test_metrics"))


@dataclass
class TargetInfo:
    """``target``: what the network's outputs are, and how the task's target reads them.

    ``None`` in a version 1 bundle: :meth:`BundleConfig.target_info` fills it in from the task's target.
    """

    #: the metric the search ranked trials by, and its direction (``maximize`` or ``minimize``).
    metric: str
    direction: str
    #: the network's outputs per item (or per position).
    width: int
    #: one output per input position (a word piece, say) rather than one per item.
    per_position: bool = False
    #: what the target fitted on the training labels and tuned on the validation outputs
    #: (:meth:`autotl.Target.fit` then :meth:`~autotl.Target.tune`); decoding and scoring read it.
    calibration: dict[str, Any] = field(default_factory=dict)


@dataclass
class RefitInfo:
    """``refit``: how the network was trained again on train+val (``None``: the trial's own weights)."""

    on: str
    samples: int
    epochs: int
    seed: int
    duration_s: float
    note: str


@dataclass
class Cost:
    """``cost``: the network's size and latency (each latency as :func:`autotl.latency.measure_model` gives it)."""

    parameters: int | None = None
    latency_at_search: dict[str, Any] | None = None
    latency_at_export: dict[str, Any] | None = None


@dataclass
class SearchInfo:
    """``search``: the search the trial came from, for the card (the storage URL without its password)."""

    location: str | None = None
    study: str | None = None
    storage: str | None = None
    created: str | None = None
    #: how many trials ended ``complete``, ``pruned`` and ``fail``.
    trials: dict[str, int] = field(default_factory=dict)
    models: dict[str, str] | None = None
    space: dict[str, Any] | None = None
    fixed: dict[str, Any] | None = None
    sampler: str | None = None
    pruner: str | None = None
    seed: int | None = None
    recipe_source: str | None = None


@dataclass
class DataInfo:
    """``data``: the data the network was trained and checked on."""

    path: str | None = None
    fingerprint: str | None = None
    #: samples per split (``train``, ``val``, ``test``), when the data was there at export.
    sizes: dict[str, int | None] | None = None
    val_from_train: bool | None = None
    val_fraction: float | None = None
    #: why the scores were not checked again at export, if they were not.
    note: str = ""


@dataclass
class ScoreCheck:
    """One entry of ``verification``: a score the bundle gives at export beside the one recorded."""

    recorded: float | None
    bundle: float
    equal: bool | None


@dataclass
class EnsembleMember:
    """One member of an ensemble's bundle: a whole bundle of its own in ``folder`` (relative to the ensemble's)."""

    trial: int
    folder: str
    weight: float
    model: str | None = None
    #: the trial's validation score (the study's metric), and its batch-1 latency at the search.
    val: float | None = None
    latency_ms: float | None = None


@dataclass
class EnsembleInfo:
    """``ensemble`` (version 3): a bundle of several networks whose outputs the task's target combines
    (:meth:`autotl.Target.combine`) with the members' weights, then scores and decodes with ``target``'s
    calibration (tuned on the combined validation outputs)."""

    members: list[EnsembleMember]
    #: how the members and weights were chosen, in words (greedy selection on validation outputs, or --members).
    chosen_by: str
    #: the items that chose them (``validation``), and why their score there is optimistic.
    selected_on: str = "validation"
    val_note: str = ""
    #: the best single trial of the search, with its validation and test scores, to compare with.
    best_single: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: Any) -> "EnsembleInfo | None":
        if value is None:
            return None
        if not isinstance(value, Mapping) or not isinstance(value.get("members"), list) or not value["members"]:
            raise ValueError("ensemble names no members")
        info = _part(cls, value, "ensemble")
        info.members = [_part(EnsembleMember, m, "ensemble.members") for m in value["members"]]
        return info


def _part(cls, value: Any, key: str):
    """The dataclass ``cls`` from ``value`` (a JSON object); keys it does not know are left out."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} is not an object")
    known = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in value.items() if k in known})
    except TypeError as exc:
        raise ValueError(f"{key} lacks a field ({exc})") from exc


def _mapping(value: Any, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} is not an object")
    return dict(value)


@dataclass(kw_only=True)
class BundleConfig:
    """What a bundle says about itself: ``config.json``, field for key, part for part.

    ``task``, ``label_names`` (in the order of the network's outputs), ``backbone``,
    ``preprocessing`` (the task's ``export_settings``) and ``weights`` are what loading needs;
    the rest describes where the network came from and how it was checked, for the card.
    """

    format: str = FORMAT
    format_version: int = NETWORK_FORMAT_VERSION
    created: str | None = None
    task: str
    label_names: list[str]
    #: ``None`` only in an ensemble's bundle, whose members each name their own.
    backbone: BackboneInfo | None
    #: how the task preprocesses inputs for this network (``Task.export_settings``).
    preprocessing: dict[str, Any] = field(default_factory=dict)
    #: ``None`` only in a version 1 bundle: read it through :meth:`target_info`.
    target: TargetInfo | None = None
    trial: TrialInfo | None = None
    scores: Scores | None = None
    refit: RefitInfo | None = None
    cost: Cost | None = None
    search: SearchInfo | None = None
    data: DataInfo | None = None
    weights: WeightsInfo = field(default_factory=WeightsInfo)
    #: the scores checked at export: ``val_<metric>`` and ``test_<metric>``, when they were.
    verification: dict[str, ScoreCheck] = field(default_factory=dict)
    #: ``onnx`` and ``torchscript``: what :func:`autotl.formats.export_format` recorded of each.
    formats: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: sha256 of every file in the bundle but config.json and README.md, by relative path.
    files: dict[str, str] = field(default_factory=dict)
    #: the versions of Python and the libraries that wrote the bundle.
    versions: dict[str, str] = field(default_factory=dict)
    #: an ensemble's members and how they were chosen (version 3); ``None``: the bundle holds one network.
    ensemble: EnsembleInfo | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object written as ``config.json``."""
        data = asdict(self)
        if self.trial is not None:
            data["trial"] = self.trial.to_json(self.metric or "metric")
        if self.scores is not None:
            data["scores"] = self.scores.to_json()
        if self.ensemble is None:  # the key of version 3 only
            del data["ensemble"]
        if self.target is None:  # a version 1 record writes back as it was read
            del data["target"]
            if self.scores is not None:
                for key in ("metric", "val_metrics", "test_metrics"):
                    del data["scores"][key]
        return data

    @property
    def metric(self) -> str | None:
        """The metric the search ranked by, as recorded (``None``: a version 1 bundle with no scores)."""
        if self.target is not None:
            return self.target.metric
        return self.scores.metric if self.scores is not None else None

    def target_info(self, target: Any) -> TargetInfo:
        """:attr:`target`, or for a version 1 bundle what it was: ``target``'s primary metric (the one its
        scores hold, where they name one), one output per label, no calibration."""
        if self.target is not None:
            return self.target
        metric = self.metric or target.primary
        return TargetInfo(metric=metric, direction=target.metrics.get(metric, "maximize"),
                          width=len(self.label_names), per_position=bool(target.per_position))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "BundleConfig":
        """The record of a ``config.json`` object; ``ValueError`` names a part that is not what it must be."""
        for key in ("task", "label_names") + (() if data.get("ensemble") is not None else ("backbone",)):
            if data.get(key) is None:
                raise ValueError(f"it lacks {key}")
        if not isinstance(data["label_names"], list):
            raise ValueError("label_names is not a list")
        verification = _mapping(data.get("verification"), "verification")
        target = _part(TargetInfo, data.get("target"), "target")
        return cls(
            format=data.get("format", FORMAT), format_version=int(data.get("format_version", 0)),
            created=data.get("created"), task=data["task"], label_names=list(data["label_names"]),
            backbone=_part(BackboneInfo, data.get("backbone"), "backbone"),
            preprocessing=_mapping(data.get("preprocessing"), "preprocessing"),
            target=target,
            trial=TrialInfo.from_json(data.get("trial")),
            scores=Scores.from_json(data.get("scores"), target.metric if target is not None else None),
            refit=_part(RefitInfo, data.get("refit"), "refit"),
            cost=_part(Cost, data.get("cost"), "cost"),
            search=_part(SearchInfo, data.get("search"), "search"),
            data=_part(DataInfo, data.get("data"), "data"),
            weights=_part(WeightsInfo, data.get("weights") or {}, "weights"),
            verification={k: _part(ScoreCheck, v, f"verification.{k}") for k, v in verification.items()},
            formats=_mapping(data.get("formats"), "formats"),
            files=_mapping(data.get("files"), "files"),
            versions=_mapping(data.get("versions"), "versions"),
            ensemble=EnsembleInfo.from_json(data.get("ensemble")),
        )

    @classmethod
    def read(cls, directory: str | Path) -> "BundleConfig":
        """The ``config.json`` of the bundle in ``directory``; :class:`~autotl.errors.BundleError` if it is none."""
        directory = Path(directory)
        if not directory.exists():
            raise BundleError(f"no bundle at {directory}: it does not exist; give the --out folder of `autotl export`")
        if not directory.is_dir():
            raise BundleError(f"{directory} is a file, not a bundle folder; give the --out folder of `autotl export`")
        path = directory / CONFIG
        if not path.is_file():
            raise BundleError(f"{directory} is not an autotl bundle ({CONFIG} is missing); give the --out folder "
                              "of `autotl export`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise BundleError(f"{path} is unreadable ({exc}); export the bundle again") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BundleError(f"{path} is not the config of an autotl bundle; give the --out folder of `autotl export`")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise BundleError(f"{directory} was written by a newer autotl (bundle format {data['format_version']}); "
                              "upgrade autotl")
        try:
            return cls.from_json(data)
        except (ValueError, TypeError) as exc:
            raise BundleError(f"{path} is not a complete bundle config: {exc}; export the bundle again") from exc

    def write(self, directory: str | Path) -> Path:
        """Write ``config.json`` into ``directory`` (atomically) and return its path."""
        path = Path(directory) / CONFIG
        write_json(path, self.to_json())
        return path


def library_versions() -> dict[str, str]:
    """Python's version and those of the libraries this process used, for :attr:`BundleConfig.versions`."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["autotl", "torch", "safetensors", "peft", "optuna", "numpy", "timm", "torchvision", "transformers",
             "tokenizers", "pillow", "onnx", "onnxruntime", "onnxscript"]
    modules = {"pillow": "PIL"}
    found = {"python": platform.python_version()}
    for name in names:
        if name not in ("autotl", "torch", "safetensors") and modules.get(name, name) not in sys.modules:
            continue  # only what this process used
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


__all__ = ["BackboneInfo", "BundleConfig", "CARD", "CONFIG", "Cost", "DataInfo", "EnsembleInfo", "EnsembleMember", "FORMAT",
           "FORMAT_VERSION", "NETWORK_FORMAT_VERSION", "ONNX",
           "RefitInfo", "ScoreCheck", "Scores", "SearchInfo", "TORCHSCRIPT", "TargetInfo", "TrialInfo", "WEIGHTS", "WeightsInfo",
           "library_versions"]
