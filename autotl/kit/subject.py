"""The backbone under test and what every check needs: its family, the inputs, a fresh network, failures.

Part of the conformance kit (:mod:`autotl.testing`): :class:`Subject` builds the backbone once per
family and name, makes inputs through a task of its modality (its ``preprocess_for_predict``, the way
``autotl predict`` makes them), and turns every problem into an :class:`AssertionError` that starts
with ``family/model [check]``. The checks themselves are grouped by what they check in
:mod:`autotl.kit.structure`, :mod:`autotl.kit.adaptation` and :mod:`autotl.testing` (the bundle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..base import Backbone, BackboneFamily, Task

#: how far the rebuilt bundle's and the merged LoRA network's outputs may be from the original's.
ATOL = 1e-4
NUM_CLASSES = 3


@dataclass
class Shared:
    """The options of one ``backbone_checks`` call, and the backbones built so far (one per name)."""

    family: BackboneFamily
    tiny: bool
    weights: dict[str, str]
    task: Task | None
    examples: Sequence[Any] | None
    params: Mapping[str, Any] | None
    backbones: dict[str, Backbone] = field(default_factory=dict)


def default_examples(modality: str) -> list[Any] | None:
    """Three raw items of ``modality`` a task preprocesses (made-up images of three sizes and modes; sentences)."""
    if modality == "image":
        from PIL import Image

        g = torch.Generator().manual_seed(0)

        def noise(h: int, w: int, channels: int) -> Any:
            pixels = torch.randint(0, 256, (h, w, channels), generator=g, dtype=torch.uint8).numpy()
            return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels)

        return [noise(40, 30, 3), noise(20, 20, 1), noise(50, 64, 3)]
    if modality == "text":
        return ["a short sentence", "another sentence, a little longer than the first one, with more words", "ok"]
    return None


def default_params(modality: str, tiny: bool) -> dict[str, Any]:
    """Trial parameters for ``export_settings``: small inputs when ``tiny`` (resolution 32, 16 tokens)."""
    if not tiny:
        return {}
    return {"image": {"resolution": 32}, "text": {"max_length": 16}}.get(modality, {})


class Subject:
    """One backbone of a family under test: the helpers its checks share (the checks are in subclasses)."""

    def __init__(self, shared: Shared, name: str):
        self.shared = shared
        self.family = shared.family
        self.name = name
        self.short_name = Path(name).name if ("/" in name and Path(name).exists()) else name

    def fail(self, check: str, message: str) -> AssertionError:
        return AssertionError(f"{self.family.name}/{self.short_name} [{check}]: {message}")

    def backbone(self, check: str) -> Backbone:
        cached = self.shared.backbones.get(self.name)
        if cached is not None:
            return cached
        try:
            backbone = self.family.get(self.name, self.shared.weights.get(self.name))
        except Exception as exc:
            raise self.fail(check, f"family.get({self.name!r}) raised {describe(exc)}") from exc
        self.shared.backbones[self.name] = backbone
        return backbone

    def build(self, check: str, num_classes: int = NUM_CLASSES, seed: int = 0) -> nn.Module:
        backbone = self.backbone(check)
        torch.manual_seed(seed)
        try:
            model = backbone.build(num_classes, pretrained=not self.shared.tiny)
        except Exception as exc:
            raise self.fail(check, f"build({num_classes}, pretrained={not self.shared.tiny}) raised "
                                   f"{describe(exc)}") from exc
        if not isinstance(model, nn.Module):
            raise self.fail(check, f"build() returned a {type(model).__name__}, not a torch.nn.Module")
        return model

    def task(self, check: str) -> Task:
        if self.shared.task is not None:
            return self.shared.task
        from ..plugins import get_registry

        modality = self.family.modality
        tasks = [t for t in get_registry().tasks.values() if t.modality == modality]
        if not tasks:
            raise self.fail(check, f"no installed task serves modality {modality!r}, so the kit cannot make "
                                   "inputs; pass task=YourTask() to backbone_checks")
        self.shared.task = tasks[0]
        return tasks[0]

    def examples(self, check: str) -> list[Any]:
        examples = self.shared.examples or default_examples(self.family.modality)
        if not examples:
            raise self.fail(check, f"the kit has no example inputs for modality {self.family.modality!r}; pass "
                                   "examples=[...] (raw items your task's preprocess_for_predict takes)")
        return list(examples)

    def params(self) -> dict[str, Any]:
        if self.shared.params is not None:
            return dict(self.shared.params)
        return default_params(self.family.modality, self.shared.tiny)

    def settings(self, check: str, backbone: Backbone) -> dict[str, Any]:
        task = self.task(check)
        try:
            return task.export_settings({}, backbone, self.params())
        except Exception as exc:
            raise self.fail(check, f"task {task.name!r} export_settings() raised {describe(exc)}") from exc

    def split(self, check: str, backbone: Backbone | None = None):
        """The examples as the task preprocesses them for ``backbone``: a TensorSplit."""
        backbone = backbone or self.backbone(check)
        task = self.task(check)
        try:
            return task.preprocess_for_predict(self.examples(check), backbone, self.settings(check, backbone))
        except Exception as exc:
            raise self.fail(check, f"task {task.name!r} could not preprocess the example inputs for this "
                                   f"backbone: {describe(exc)}") from exc

    def inputs(self, check: str):
        split = self.split(check)
        batch, _ = next(split.batches(len(split)))
        return batch

    def logits(self, check: str, model: nn.Module, inputs, train: bool = False) -> torch.Tensor:
        from ..inference import forward

        model.train(train)
        try:
            if train:
                return forward(model, inputs)
            with torch.no_grad():
                return forward(model, inputs)
        except Exception as exc:
            raise self.fail(check, f"the forward pass raised {describe(exc)}") from exc

    def groups(self, check: str, model: nn.Module) -> list[list[str]]:
        try:
            groups = self.backbone(check).layer_groups(model)
        except Exception as exc:
            raise self.fail(check, f"layer_groups() raised {describe(exc)}") from exc
        if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
            raise self.fail(check, f"layer_groups() must return a list of lists of module names, not {groups!r:.120}")
        return groups

    def train_step(self, check: str, model: nn.Module, inputs, adapted) -> None:
        """One SGD step on a cross-entropy loss, in the search's training mode (frozen groups in eval)."""
        from ..inference import forward

        adapted.train_mode()
        try:
            out = forward(model, inputs)
            labels = torch.arange(out.shape[0]) % out.shape[1]
            nn.functional.cross_entropy(out, labels).backward()
        except Exception as exc:
            raise self.fail(check, f"a training step (forward and backward in train mode) raised "
                                   f"{describe(exc)}") from exc
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad and p.grad is not None:
                    p.add_(p.grad, alpha=-1.0)
        model.zero_grad(set_to_none=True)
        model.eval()


def describe(exc: BaseException) -> str:
    """An exception as ``Type: its first line`` (300 characters at most), for a failure message."""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__

