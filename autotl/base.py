"""What plugins implement: backbone families, backbones and tasks, and the data they hand over.

The core reaches every model family and every task type only through these classes; it never
imports a plugin. A task and a backbone that serve the same ``modality`` (``"image"``,
``"text"``, ...) agree between themselves on the input format and on :meth:`Backbone.preprocessing`,
whose types for the ``image`` and ``text`` modalities are declared in :mod:`autotl.contracts`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TextIO, Union

import torch
from torch import nn

from .contracts import DataReport, FittedRange, Preprocessing
from .errors import PluginError
from .params import Param

Inputs = Union[torch.Tensor, Mapping[str, torch.Tensor]]


class ExportUnsupportedError(PluginError):
    """A plugin does not implement the export part of the contract (bundles, ``autotl predict``)."""


def _unsupported(obj: object, kind: str, method: str) -> ExportUnsupportedError:
    plugin = type(obj).__module__.split(".")[0]
    return ExportUnsupportedError(
        f"plugin {plugin!r} ({kind} {getattr(obj, 'name', type(obj).__name__)!r}) does not support export: "
        f"it does not implement {method}; upgrade the plugin or ask its authors for it"
    )


class Backbone(ABC):
    """One source model that can be adapted to a new task.

    :attr name: the name used in the search space and on the leaderboard.
    :attr family: the name of the :class:`BackboneFamily` it belongs to.
    :attr modality: the kind of input it consumes; tasks with the same modality can use it.
    """

    name: str
    family: str
    modality: str
    #: whether the network runs faster on channels-last (NHWC) image tensors.
    channels_last: bool = False

    @abstractmethod
    def build(self, num_classes: int, pretrained: bool = True) -> nn.Module:
        """Return the network with a new, randomly initialised head of ``num_classes`` outputs.

        The module takes what the task's splits yield (a tensor, or a mapping passed as keyword
        arguments) and returns logits of shape ``(batch, num_classes)``. With ``pretrained=False``
        every weight is random (the from-scratch comparison, and the skeleton that saved weights
        are loaded into).
        """

    @abstractmethod
    def layer_groups(self, model: nn.Module) -> list[list[str]]:
        """Names of the submodules of ``model`` in groups ordered from input to output.

        The freeze depth ``k`` freezes the first ``k`` groups. The last group is the new head, which
        always trains; together the groups must cover every parameter of the model.
        """

    @abstractmethod
    def lora_targets(self, model: nn.Module) -> list[str]:
        """Names of the submodules that LoRA adapters may wrap (``nn.Linear`` or ``nn.Conv2d``)."""

    def preprocessing(self) -> Preprocessing:
        """How the network's inputs are made, for the task of its modality: the settings that travel with the weights.

        An ``image`` backbone returns an :class:`autotl.ImagePreprocessing` (input size, mean, std,
        interpolation), a ``text`` backbone an :class:`autotl.TextPreprocessing` (its loaded tokenizer,
        default and largest max length); see :mod:`autotl.contracts`. A plain dict with those keys
        (the contract of earlier versions) is still converted. The default: no settings.
        """
        return Preprocessing()

    def feature_extractor(self) -> nn.Module:
        """The pretrained network without its head, in eval mode: what ranks source models before any trial.

        It takes what the task's splits yield (like :meth:`build`'s network) and returns pooled
        features of shape ``(batch, features)``: the input of the new head. The default builds the
        pretrained network and replaces every module of the last layer group (the head, see
        :meth:`layer_groups`) with ``nn.Identity``; override it where that does not leave pooled
        features (a head group that also holds the pooling, say).
        """
        model = self.build(2, pretrained=True)
        for name in self.layer_groups(model)[-1]:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
        return model.eval()

    def split(self, model: nn.Module, freeze: int) -> tuple[nn.Module, nn.Module] | None:
        """``model`` as its first ``freeze`` layer groups and the rest: what the frozen-prefix cache needs.

        Return ``(prefix, rest)``, modules that share ``model``'s submodules (no copies), such that
        ``rest(prefix(x))`` equals ``model(x)`` for what the task's splits yield: ``prefix`` runs exactly
        the modules of ``layer_groups(model)[:freeze]`` and returns a tensor (or a mapping of tensors,
        handed to ``rest`` as keyword arguments); ``rest`` runs everything else, the head included, and
        must hold ``model`` as a submodule so that ``rest.eval()`` and ``rest.train()`` reach every
        module. ``model`` may already carry LoRA layers in its unfrozen groups (the core passes the
        network under peft's wrapper). A trial whose prefix is frozen and whose training inputs are
        not randomly augmented then computes the prefix once, caches its outputs, and trains ``rest``
        on them every epoch (autotl/cache.py).

        Return ``None`` (the default) where the network cannot be cut at ``freeze``: its trials run the
        whole network every epoch, as before. ``autotl.testing`` checks the equality on every backbone.
        """
        return None

    def build_per_position(self, num_outputs: int, pretrained: bool = True) -> nn.Module:
        """Like :meth:`build`, with a head giving ``num_outputs`` numbers per input position (each word piece).

        What a task whose :attr:`Target.per_position` is true (a tag per word, say) trains: the module
        returns ``(batch, positions, num_outputs)``, positions as in its input. :meth:`layer_groups`,
        :meth:`lora_targets` and :meth:`split` must work on it as on :meth:`build`'s network.

        :raises autotl.errors.PluginError: by default: the backbone gives one output per input only.
        """
        raise PluginError(f"backbone {self.name!r} gives one output per input, not one per position (word piece); "
                          "choose a model whose plugin implements Backbone.build_per_position")

    def describe(self) -> str:
        """A short human description for listings."""
        return self.name

    # -- export (bundles); see docs/plugins.md -------------------------------------------------
    def bundle_files(self, directory: Path) -> dict[str, Any]:
        """Save what, besides the weights, rebuilding this network offline needs; return its settings.

        Called by ``autotl export`` with the bundle folder being written. Write there any file that
        :meth:`BackboneFamily.from_bundle` will need (a tokenizer's files, a model config), and
        return JSON-serialisable settings (the architecture's name, its configuration); the bundle's
        ``config.json`` keeps them under ``backbone.config`` and hands them back to ``from_bundle``.
        Never write the weights: the core saves them (LoRA merged) as ``model.safetensors``, and
        ``model.safetensors``, ``config.json`` and ``README.md`` are the core's names.

        :raises ExportUnsupportedError: by default.
        """
        raise _unsupported(self, "backbone", "Backbone.bundle_files(directory)")


class BackboneFamily(ABC):
    """A family of backbones (timm, Hugging Face transformers, ...) registered by a plugin."""

    name: str
    modality: str
    #: the trial parameters this family adds besides the core's and the task's (autotl/params.py), which a
    #: recipe may then name; a task of its modality reads them for its backbones. The default: none.
    parameters: Sequence[Param] = ()

    @abstractmethod
    def default_zoo(self) -> list[str]:
        """Names of the models searched by default: those whose weights need no network."""

    @abstractmethod
    def owns(self, name: str) -> bool:
        """Whether ``name`` is a model of this family (e.g. a name timm knows)."""

    @abstractmethod
    def get(self, name: str, weights: str | None = None) -> Backbone:
        """Return the backbone ``name``, checking that its weights can be had.

        :param weights: a local checkpoint file that replaces the default source of weights.
        :raises autotl.errors.ModelUnavailableError: with a one-line message naming the model and
            how to supply its weights.
        """

    def architecture(self, name: str, weights: str | None = None) -> Backbone:
        """Return the backbone ``name`` as :meth:`get` would, without reading or checking its pretrained weights.

        What ``autotl export`` (without ``--refit``) and ``autotl report`` use to load weights a search
        saved: ``build(num_classes, pretrained=False)`` must give the architecture ``get(name, weights)``
        gave, and ``preprocessing()``, ``describe()`` and ``bundle_files()`` must say what they said
        then; ``build(pretrained=True)`` is never called. So a checkpoint that moved, a missing offline
        weights package or an unreachable hub must not fail here. ``weights`` is the checkpoint the
        search was given (it may no longer exist), for the description only.

        The default calls :meth:`get`: a plugin that does not override it needs the pretrained
        weights at export as at the search.
        """
        return self.get(name, weights)

    def from_bundle(self, name: str, config: Mapping[str, Any], directory: Path) -> Backbone:
        """Rebuild the backbone ``name`` from a bundle, with no network and no original weights.

        :param config: what :meth:`Backbone.bundle_files` returned when the bundle was written.
        :param directory: the bundle folder, holding the files ``bundle_files`` wrote.

        Only ``build(num_classes, pretrained=False)`` and ``preprocessing()`` of the returned
        backbone are used: it must build exactly the architecture whose state dict the bundle's
        weights are (the core loads them with ``strict=True``), and the task's
        :meth:`Task.preprocess_for_predict` gets it as its ``backbone``. Never unpickle anything.

        :raises autotl.errors.ModelUnavailableError: when the installed library cannot build it
            (e.g. an architecture the installed version does not know).
        :raises ExportUnsupportedError: by default.
        """
        raise _unsupported(self, "backbone family", "BackboneFamily.from_bundle(name, config, directory)")


@dataclass
class LoadedData:
    """A dataset loaded and checked by a task, before any model-specific preprocessing.

    :attr label_names: class names, in the order of the model's outputs.
    :attr fingerprint: a digest of the data's content; a resumed study must see the same one.
    :attr report: classes, counts per split and skipped inputs, shown to the user and written as
        ``data_report.json``; a plain dict (earlier tasks) is converted (:meth:`DataReport.of`).
    :attr has_test: whether a test split exists.
    :attr payload: whatever the task needs later in :meth:`Task.prepare`.
    """

    label_names: list[str]
    fingerprint: str
    report: DataReport
    has_test: bool
    payload: Any = None

    def __post_init__(self) -> None:
        self.report = DataReport.of(self.report, self.label_names)


@dataclass
class TensorSplit:
    """One split as tensors already in memory: decoded once, batched every epoch.

    :attr inputs: a tensor whose first dimension indexes samples, or a mapping of such tensors.
    :attr labels: the targets, one row per sample, as the task's :class:`Target` reads them (class
        indices, numbers, 0/1 rows of label sets, a tag index per position with -100 where none is scored).
    :attr transform: applied to each batch of inputs, ``transform(inputs, train)``; it
        normalises, and augments when ``train`` is true.
    :attr random_augmentation: whether ``transform(inputs, True)`` is random (augmentation). Only a
        split without it has a frozen prefix whose outputs can be computed once and cached; say
        ``False`` where training inputs are what evaluation sees.
    :attr origin: for a split made by :meth:`take`, ``(root, idx)``: it holds ``root``'s samples at ``idx`` (set by
        :meth:`take`, never by hand), so that the frozen-prefix cache computes ``root``'s outputs once and serves
        every subset of it (the folds of a cross-validation) from them; ``None`` for a split of its own.
    """

    inputs: Inputs
    labels: torch.Tensor
    transform: Callable[[Inputs, bool], Inputs] | None = None
    random_augmentation: bool = True
    origin: tuple[Any, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batches(
        self,
        batch_size: int,
        *,
        train: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[Inputs, torch.Tensor]]:
        """Yield ``(inputs, labels)`` batches; shuffled and augmented when ``train``."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if train else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if train and len(idx) < 2 and n >= 2:
                continue  # a batch of one breaks batch norm and adds only noise
            batch = index_inputs(self.inputs, idx)
            if self.transform is not None:
                batch = self.transform(batch, train)
            yield batch, self.labels[idx]

    def take(self, idx: torch.Tensor) -> "TensorSplit":
        """The samples at ``idx``, in that order: every per-sample tensor field (and mapping of them) indexed.

        Fields of a subclass (a text split's lengths) are indexed too; the transform is kept, and the
        :attr:`origin` says which samples of the first split taken from these are.
        """
        n = len(self)

        def pick(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
                return value[idx]
            if isinstance(value, Mapping):
                return {key: pick(v) for key, v in value.items()}
            return value

        idx = torch.as_tensor(idx)
        idx = torch.nonzero(idx).flatten() if idx.dtype == torch.bool else idx.long()  # positions, to compose
        root, where = self.origin if self.origin is not None else (self, None)
        return replace(self, **{f.name: pick(getattr(self, f.name)) for f in fields(self)
                                if f.name not in ("transform", "origin")},
                       origin=(root, idx if where is None else where[idx]))

    def search_order(self) -> torch.Tensor | None:
        """An order to run the samples through a network in, samples of similar size together, or ``None``.

        ``None`` (the default): the split's own order is as good as any. A text split returns its
        texts longest first, so that batches carry little padding; the frozen-prefix cache computes
        in this order and puts the outputs back in the split's.
        """
        return None

    def with_inputs(self, inputs: Inputs) -> "TensorSplit":
        """The same samples, in the same order, with other inputs: a frozen prefix's outputs (autotl/cache.py).

        Their training batches need no augmentation (the cache holds only splits without random
        augmentation). The default batches them as :class:`TensorSplit` does, with no transform;
        override it where batching belongs to the split: a text split that groups texts of similar
        length and trims each batch to its longest keeps doing so over the cached hidden states.
        """
        return TensorSplit(inputs, self.labels, None, random_augmentation=False)


def concat_splits(first: TensorSplit, second: TensorSplit) -> TensorSplit:
    """One split holding ``first``'s samples, then ``second``'s, with ``first``'s transform.

    Every tensor field (and every tensor of a mapping field) is concatenated along its first
    dimension; 2-D tensors of different widths are right-padded with zeros first. Extra dataclass
    fields of a :class:`TensorSplit` subclass are concatenated the same way when they are tensors.
    """
    import dataclasses

    def cat(a: Any, b: Any) -> Any:
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.dim() == 2 and b.dim() == 2 and a.shape[1] != b.shape[1]:
                width = max(a.shape[1], b.shape[1])
                a, b = (torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in (a, b))
            return torch.cat([a, b])
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            return {key: cat(a[key], b[key]) for key in a}
        return a

    changes = {f.name: cat(getattr(first, f.name), getattr(second, f.name))
               for f in dataclasses.fields(first) if f.name not in ("transform", "origin")}
    return dataclasses.replace(first, **changes, origin=None)


def index_inputs(inputs: Inputs, idx: torch.Tensor) -> Inputs:
    """The samples of ``inputs`` (a tensor, or a mapping of tensors) at ``idx``, in that order."""
    if isinstance(inputs, torch.Tensor):
        return inputs[idx]
    return {key: value[idx] for key, value in inputs.items()}


@dataclass
class TrialData:
    """The splits a trial trains, validates and tests on, prepared for one backbone."""

    train: TensorSplit
    val: TensorSplit
    test: TensorSplit | None = None


class Task(ABC):
    """A task type registered by a plugin (``autotl plugins`` lists those installed).

    :attr name: the value of ``autotl search --task``.
    :attr modality: backbones of the same modality serve this task.
    """

    name: str
    modality: str
    description: str = ""
    #: what the task predicts and how it is scored (its loss, metrics and decoding): see :class:`Target`.
    target: "Target"
    #: the options :meth:`load` reads from the recipe's ``data`` section (and ``--data-option``), each
    #: with a short description; ``autotl search`` refuses any other option. ``None``: not declared,
    #: every option is handed to :meth:`load` unchecked. ``val_fraction`` is the core's own.
    data_options: Mapping[str, str] | None = None
    #: the trial parameters :meth:`prepare` reads besides the core's (autotl/params.py: type, range or
    #: choices, default), which a recipe's ``space``, ``fixed`` and ``start_with`` may then name; any other
    #: name is refused when the recipe is read. ``None``: not declared, every name the core does not know
    #: is handed to :meth:`prepare` unchecked.
    parameters: Sequence[Param] | None = None

    @abstractmethod
    def load(self, path: Path, *, seed: int, val_fraction: float, options: Mapping[str, Any]) -> LoadedData:
        """Read and check the dataset at ``path``.

        Without a validation split of its own, carve one out of the training split (stratified,
        seeded by ``seed``, ``val_fraction`` of it). Unreadable samples are skipped and listed in
        the report; a dataset that cannot be used raises :class:`autotl.errors.DataError`.

        :param options: task options from the recipe's ``data`` section.
        """

    @abstractmethod
    def prepare(self, data: LoadedData, backbone: Backbone, params: Mapping[str, Any]) -> TrialData:
        """Turn the loaded data into tensors for ``backbone`` and the trial's ``params``.

        Expensive work (decoding, resizing, tokenising) should be cached on ``data`` so that later
        trials with the same preprocessing reuse it.
        """

    def fitted_space(self, data: LoadedData, backbones: Mapping[str, Backbone],
                     asked: Mapping[str, Any]) -> Sequence[FittedRange]:
        """Ranges fitted to the data just loaded, before a new study's first trial: one :class:`FittedRange` per
        parameter of ``asked`` the data says something about (image sides to resolutions, text lengths to a
        max length...), each with why. The core applies them (autotl/fitted_space.py); a parameter left out
        keeps the recipe's range.

        :param backbones: the models searched, by name (their native input size or longest input caps a range).
        :param asked: the recipe's ``space`` entries marked ``fit: data`` (:class:`autotl.recipes.ParamSpec`:
            the fallback range, its ``choices`` or ``low``/``high``), by parameter name; no other is changed.
        The default fits nothing.
        """
        return ()

    def split_items(self, data: LoadedData, split: str) -> tuple[list[Any], list[int]] | None:
        """The raw items of ``split`` (``"train"``, ``"val"`` or ``"test"``) and their class indices.

        Items are what :meth:`preprocess_for_predict` takes (image file paths, texts), in any one
        order shared by the two lists. ``autotl report`` predicts them through the bundle's path to
        draw the best trial's confusion matrix and to show misclassified samples (image files as
        thumbnails, strings as text). The default, ``None``, leaves those out of the report.
        """
        return None

    # -- export and prediction (bundles); see docs/plugins.md ------------------------------------
    def prepare_refit(self, data: LoadedData, backbone: Backbone, params: Mapping[str, Any]) -> TrialData:
        """The splits for ``autotl export --refit``: ``train`` is the train and validation splits together.

        ``val`` is the validation split (now part of training: only progress is shown from it) and
        ``test`` the test split. The default concatenates :meth:`prepare`'s train and val splits with
        :func:`concat_splits` (right-padding 2-D tensors of different widths with zeros); override it
        where that is wrong (left-padded tokens, say).
        """
        prepared = self.prepare(data, backbone, params)
        return TrialData(train=concat_splits(prepared.train, prepared.val), val=prepared.val, test=prepared.test)

    def export_settings(self, data_options: Mapping[str, Any], backbone: Backbone,
                        params: Mapping[str, Any]) -> dict[str, Any]:
        """Every preprocessing setting a trial's inputs went through, JSON-serialisable.

        Stored as ``preprocessing`` in the bundle's ``config.json`` and handed back to
        :meth:`preprocess_for_predict` as ``settings``: together with the backbone rebuilt by
        :meth:`BackboneFamily.from_bundle` it must determine the preprocessing completely (image
        size, resizing, mean and std; max length, truncation, padding side...).

        :param data_options: the recipe's ``data`` section the search loaded the data with.
        :param params: every parameter of the trial.
        :raises ExportUnsupportedError: by default.
        """
        raise _unsupported(self, "task", "Task.export_settings(data_options, backbone, params)")

    def read_inputs(self, sources: Sequence[str], *, stdin: TextIO | None = None) -> list[tuple[str, Any]]:
        """What ``autotl predict BUNDLE SOURCE...`` names, as ``(name, item)`` pairs in order.

        ``sources`` are the command's arguments as given (files, folders, a CSV...; ``-`` means
        ``stdin``, which is also what an empty ``sources`` means). ``name`` identifies the item in the
        output (a path, ``line 3``); ``item`` is what :meth:`preprocess_for_predict` takes. Raise
        :class:`autotl.errors.DataError` with a one-line message for a missing or unreadable source
        or when nothing is found.

        :raises ExportUnsupportedError: by default.
        """
        raise _unsupported(self, "task", "Task.read_inputs(sources, stdin=...)")

    def preprocess_for_predict(self, raw: Sequence[Any], backbone: Backbone,
                               settings: Mapping[str, Any]) -> TensorSplit:
        """Turn raw items into a split the model predicts on, through the same code as :meth:`prepare`.

        ``raw`` are items as :meth:`read_inputs` yields them, or as a user hands them to
        ``autotl.load(BUNDLE).predict(...)`` (image: file paths or PIL images; text: strings).
        Return a :class:`TensorSplit` (labels: any integers, e.g. zeros) whose batches, with its
        ``transform`` applied (``train=False``), equal what the search validated on for the same
        inputs: the bundle's promise is that predicting the validation split reproduces the
        trial's validation score exactly. Raise :class:`autotl.errors.DataError` for an item
        that cannot be read, naming it; for items ``autotl predict`` may skip (an image that does
        not decode), one :class:`autotl.errors.UnreadableInputs` listing every one of them.

        :raises ExportUnsupportedError: by default.
        """
        raise _unsupported(self, "task", "Task.preprocess_for_predict(raw, backbone, settings)")


class Target(ABC):
    """What a task predicts and how it is scored: its loss, its metrics, how outputs become predictions.

    A :class:`Task` names its target (:attr:`Task.target`); the core trains, validates, ranks, prunes,
    exports and predicts only through it, so it names no loss, metric or kind of label itself. Built-in
    targets (one class per item, a number, a set of labels, a tag per word) live in the ``autotl_tasks``
    plugin (:mod:`autotl_tasks.targets`), which a third party may import or copy.

    ``outputs`` below is what the network returns for a whole split, float32 on the CPU
    (:func:`autotl.inference.predict_outputs`): ``(items, width)``, or ``(items, positions, width)``
    for a target with :attr:`per_position`; ``labels`` is the split's :attr:`TensorSplit.labels`.
    ``calibration`` is a JSON-serialisable dict: what :meth:`fit` learnt from the training labels
    (a numeric target's mean and spread), completed by :meth:`tune` on the validation outputs (the
    thresholds of a target of label sets). It is recorded with every trial and travels in the bundle.

    :attr metrics: every metric :meth:`score` reports, name -> ``"maximize"`` or ``"minimize"``.
    :attr primary: the metric trials are ranked by, unless the recipe's ``metric:`` names another of
        :attr:`metrics`.
    :attr per_position: the network gives one output per input position (a word piece), not one per
        item: the backbone is built with :meth:`Backbone.build_per_position`.
    :attr parameters: the trial parameters :meth:`loss` reads (autotl/params.py: type, range or choices,
        default), which a recipe's ``space``, ``fixed`` and ``start_with`` may then name, as the task's
        own :attr:`Task.parameters`; every trial records their defaults where the recipe sets none.
    """

    metrics: Mapping[str, str]
    primary: str
    per_position: bool = False
    parameters: Sequence[Param] = ()

    def for_labels(self, label_names: Sequence[str]) -> "Target":
        """This target for a dataset whose labels are ``label_names``: the core asks wherever it knows them.

        A target whose metrics or primary depend on the labels (scores that only some label sets
        allow) returns a target bound to them; the default returns ``self``. The core calls it on the
        loaded data's labels, on a study's recorded ones and on a bundle's.
        """
        return self

    def width(self, label_names: Sequence[str]) -> int:
        """How many numbers the network outputs per item (or per position): by default one per label name."""
        return len(label_names)

    def fit(self, labels: torch.Tensor) -> dict[str, Any]:
        """What the loss and the scores need from the training split's labels (the default: nothing)."""
        return {}

    def initial_bias(self, calibration: Mapping[str, Any]) -> "list[float] | None":
        """What the new head's output biases start at, one per output, from :meth:`fit`'s ``calibration``.

        ``None`` (the default): the head starts as built (zeros, or the layer's own initialisation). A
        target of rare outputs may start each at its training frequency's log-odds, say. The core sets the
        one bias vector of the head's modules (:meth:`Backbone.layer_groups`' last group) that has one
        number per output; a head without one keeps its initialisation.
        """
        return None

    @abstractmethod
    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, calibration: Mapping[str, Any],
             params: Mapping[str, Any]) -> torch.Tensor:
        """The training loss of one batch (a scalar, the mean over its items); ``params`` are the trial's."""

    def tune(self, calibration: Mapping[str, Any], outputs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """``calibration`` completed on the validation split's outputs (thresholds...); the default: unchanged."""
        return dict(calibration)

    @abstractmethod
    def score(self, outputs: torch.Tensor, labels: torch.Tensor, calibration: Mapping[str, Any]) -> dict[str, float]:
        """Every metric of :attr:`metrics` on a split (``nan`` where undefined, an empty split say)."""

    @abstractmethod
    def decode(self, outputs: torch.Tensor, split: "TensorSplit", calibration: Mapping[str, Any],
               label_names: Sequence[str], top_k: int = 1) -> list[dict[str, Any]]:
        """One JSON-serialisable prediction per item of ``split``, from its ``outputs``.

        What ``autotl predict`` prints besides the input's name (``{"label": ..., "probability": ...}``, a
        number in the target's units, a set of labels, a tag per word). ``split`` is what
        :meth:`Task.preprocess_for_predict` made: a per-position target reads there which positions
        start a word.
        """

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """The outputs as the numbers an exported format must reproduce (probabilities); the default: as they are."""
        return outputs

    def combine(self, outputs: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        """Several networks' outputs on the same items as one set of outputs: an ensemble's, weight for weight.

        ``outputs`` are whole splits' outputs as :meth:`score` takes them, one per network, for the same
        items in the same order; ``weights`` are non-negative, one per network (normalised here to sum to 1).
        The result is again outputs that :meth:`score`, :meth:`decode`, :meth:`tune` and
        :meth:`probabilities` accept. A target averages where averaging means something (the probabilities
        of a class, say, and back to the outputs' space); the default: the weighted mean of the outputs as
        they are. Per-position outputs of different widths are right-padded with zeros to the widest first.
        """
        stacked, share = stack_weighted(outputs, weights)
        return (stacked * share).sum(0)

    def rankable(self, labels: torch.Tensor) -> "torch.Tensor | None":
        """Class indices (one per item) that source models' features can be ranked by before any trial.

        ``None`` (the default): the transferability pre-ranking is left out for this target.
        """
        return None

    def figure(self, outputs: torch.Tensor, labels: torch.Tensor, calibration: Mapping[str, Any],
               label_names: Sequence[str]) -> Any:
        """A plotly figure of the best trial's test predictions for ``autotl report`` (a confusion matrix,
        predicted against true, per-label scores...), or ``None`` (the default: no such plot)."""
        return None

    def best_epoch(self, value: float, best: float, metric: str) -> bool:
        """Whether an epoch scoring ``value`` on ``metric`` beats the best so far (``nan`` never does)."""
        if value != value:
            return False
        if best != best:
            return True
        return value < best if self.metrics.get(metric) == "minimize" else value > best


def stack_weighted(outputs: Sequence[torch.Tensor], weights: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """``outputs`` stacked along a new first dimension (float32; per-position ones right-padded with zeros along
    their positions to the widest), and ``weights`` normalised to sum to 1, shaped to broadcast against them:
    what :meth:`Target.combine` averages."""
    if not len(outputs) or len(outputs) != len(weights):
        raise ValueError(f"combine needs one weight per output ({len(outputs)} outputs, {len(weights)} weights)")
    share = torch.tensor([float(w) for w in weights], dtype=torch.float64)
    if (share < 0).any() or not share.sum() > 0:
        raise ValueError(f"combine needs non-negative weights with a positive sum, not {list(weights)}")
    share = (share / share.sum()).float()
    parts = [o.float() for o in outputs]
    if parts[0].dim() == 3:
        widest = max(p.shape[1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, 0, 0, widest - p.shape[1])) for p in parts]
    stacked = torch.stack(parts)
    return stacked, share.reshape(-1, *([1] * (stacked.dim() - 1)))


@dataclass
class Registry:
    """Everything the loaded plugins registered, and which plugin registered what."""

    families: dict[str, BackboneFamily] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    provided_by: dict[str, list[str]] = field(default_factory=dict)

    def families_for(self, task: Task) -> list[BackboneFamily]:
        """The backbone families that can serve ``task``."""
        return [f for f in self.families.values() if f.modality == task.modality]
