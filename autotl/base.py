"""What plugins implement: backbone families, backbones and tasks, and the data they hand over.

The core reaches every model family and every task type only through these classes; it never
imports a plugin. A task and a backbone that serve the same ``modality`` (``"image"``,
``"text"``, ...) agree between themselves on the input format and on :meth:`Backbone.preprocessing`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Union

import torch
from torch import nn

Inputs = Union[torch.Tensor, Mapping[str, torch.Tensor]]


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

    def preprocessing(self) -> dict[str, Any]:
        """Input settings that travel with the weights (image size, mean and std; max length)."""
        return {}

    def describe(self) -> str:
        """A short human description for listings."""
        return self.name


class BackboneFamily(ABC):
    """A family of backbones (timm, Hugging Face transformers, ...) registered by a plugin."""

    name: str
    modality: str

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


@dataclass
class LoadedData:
    """A dataset loaded and checked by a task, before any model-specific preprocessing.

    :attr label_names: class names, in the order of the model's outputs.
    :attr fingerprint: a digest of the data's content; a resumed study must see the same one.
    :attr report: counts and skipped files, JSON-serialisable, shown to the user.
    :attr has_test: whether a test split exists.
    :attr payload: whatever the task needs later in :meth:`Task.prepare`.
    """

    label_names: list[str]
    fingerprint: str
    report: dict[str, Any]
    has_test: bool
    payload: Any = None


@dataclass
class TensorSplit:
    """One split as tensors already in memory: decoded once, batched every epoch.

    :attr inputs: a tensor whose first dimension indexes samples, or a mapping of such tensors.
    :attr labels: integer class indices.
    :attr transform: applied to each batch of inputs, ``transform(inputs, train)``; it
        normalises, and augments when ``train`` is true.
    """

    inputs: Inputs
    labels: torch.Tensor
    transform: Callable[[Inputs, bool], Inputs] | None = None

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
            batch = _index(self.inputs, idx)
            if self.transform is not None:
                batch = self.transform(batch, train)
            yield batch, self.labels[idx]


def _index(inputs: Inputs, idx: torch.Tensor) -> Inputs:
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
    """A task type (image classification, text classification, ...) registered by a plugin.

    :attr name: the value of ``autotl search --task``.
    :attr modality: backbones of the same modality serve this task.
    """

    name: str
    modality: str
    description: str = ""

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


@dataclass
class Registry:
    """Everything the loaded plugins registered, and which plugin registered what."""

    families: dict[str, BackboneFamily] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    provided_by: dict[str, list[str]] = field(default_factory=dict)

    def families_for(self, task: Task) -> list[BackboneFamily]:
        """The backbone families that can serve ``task``."""
        return [f for f in self.families.values() if f.modality == task.modality]
