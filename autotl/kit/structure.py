"""The conformance checks of what a backbone is: ``build``, ``forward`` and ``layer_groups``.

See :mod:`autotl.testing` for what each check asserts.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..base import Backbone
from ..contracts import ImagePreprocessing, TextPreprocessing
from ..errors import PluginError
from ..utils import is_under
from .subject import NUM_CLASSES, Subject, describe

#: the preprocessing type a backbone of each declared modality returns (:mod:`autotl.contracts`).
PREPROCESSING = {"image": ImagePreprocessing, "text": TextPreprocessing}


class StructureChecks(Subject):
    """The family's and the backbone's names, the network's logits, and its layer groups."""

    def check_build(self) -> None:
        c = "build"
        self._check_family_names(c)
        backbone = self.backbone(c)
        if not isinstance(backbone, Backbone):
            raise self.fail(c, f"family.get() returned a {type(backbone).__name__}, not an autotl.Backbone")
        for attr, expected in (("family", self.family.name), ("modality", self.family.modality)):
            if getattr(backbone, attr, None) != expected:
                raise self.fail(c, f"backbone.{attr} is {getattr(backbone, attr, None)!r}, but its family's "
                                   f"{'name' if attr == 'family' else attr} is {expected!r}")
        if not isinstance(getattr(backbone, "name", None), str) or not backbone.name:
            raise self.fail(c, "backbone.name must be a non-empty string (the leaderboard shows it)")
        model = self.build(c)
        if not any(True for _ in model.parameters()):
            raise self.fail(c, "build() returned a network without parameters")
        self._check_preprocessing(c, backbone)
        described = backbone.describe()
        if not isinstance(described, str) or not described.strip():
            raise self.fail(c, "describe() must return a non-empty string")

    def _check_family_names(self, c: str) -> None:
        """The family has a name and a modality, and owns the model."""
        for attr in ("name", "modality"):
            if not isinstance(getattr(self.family, attr, None), str) or not getattr(self.family, attr):
                raise self.fail(c, f"the family has no {attr!r} string attribute")
        try:
            owned = self.family.owns(self.name)
        except Exception as exc:
            raise self.fail(c, f"family.owns({self.name!r}) raised {describe(exc)}") from exc
        if not owned:
            raise self.fail(c, f"family.owns({self.name!r}) is False: the search would not find this model's family")

    def _check_preprocessing(self, c: str, backbone: Backbone) -> None:
        """``preprocessing()`` is a :class:`~autotl.Preprocessing`, of its modality's type where one is declared."""
        pre = backbone.preprocessing()
        if not isinstance(pre, Mapping):
            raise self.fail(c, f"preprocessing() must return an autotl.Preprocessing (ImagePreprocessing for images, "
                               f"TextPreprocessing for texts), not a {type(pre).__name__}")
        declared = PREPROCESSING.get(self.family.modality)
        if declared is not None:
            try:
                declared.of(backbone)
            except PluginError as exc:
                raise self.fail(c, str(exc)) from exc

    def check_forward(self) -> None:
        c = "forward"
        inputs = self.inputs(c)
        batch = len(self.examples(c))
        for num_classes in (NUM_CLASSES, NUM_CLASSES + 2):
            model = self.build(c, num_classes)
            out = self.logits(c, model, inputs)
            if not isinstance(out, torch.Tensor):
                raise self.fail(c, f"the network returned a {type(out).__name__}, not a tensor of logits "
                                   "(wrap a model that returns an output object so that it returns its logits)")
            if tuple(out.shape) != (batch, num_classes):
                raise self.fail(c, f"logits have shape {tuple(out.shape)}, expected (batch, num_classes) = "
                                   f"({batch}, {num_classes}) for build({num_classes})")
            if not torch.isfinite(out).all():
                raise self.fail(c, f"logits of build({num_classes}) are not all finite")

    def check_layer_groups(self) -> None:
        c = "layer_groups"
        model = self.build(c)
        groups = self.groups(c, model)
        if len(groups) < 2:
            raise self.fail(c, f"layer_groups() gave {len(groups)} group(s); at least two are needed (the body, "
                               "then the new head last)")
        self._check_groups_cover(c, model, groups)
        self._check_groups_order(c, model, groups)
        self._check_head_group(c, model, groups)

    def _check_groups_cover(self, c: str, model: nn.Module, groups: list[list[str]]) -> None:
        """Every group names existing modules, and every parameter lies in exactly one group."""
        modules = dict(model.named_modules())
        owner: dict[str, int] = {}
        for i, group in enumerate(groups):
            if not group:
                raise self.fail(c, f"group {i} is empty: every group needs at least one module")
            for name in group:
                if not isinstance(name, str) or name not in modules or name == "":
                    raise self.fail(c, f"group {i} names {name!r}, which is not a submodule of the network "
                                       f"(model.named_modules())")
            for pname, _ in model.named_parameters():
                if is_under(pname, group):
                    if pname in owner and owner[pname] != i:
                        raise self.fail(c, f"parameter {pname!r} lies in group {owner[pname]} and in group {i}: "
                                           "groups must not overlap")
                    owner[pname] = i
        missing = [p for p, _ in model.named_parameters() if p not in owner]
        if missing:
            raise self.fail(c, f"{len(missing)} parameter(s) lie in no layer group (e.g. "
                               f"{', '.join(missing[:4])}): the groups must cover the whole network")

    def _check_groups_order(self, c: str, model: nn.Module, groups: list[list[str]]) -> None:
        """The groups run from input to output, and the last one (the head) runs."""
        order = first_calls(model, groups, self.inputs(c))
        ran = [(i, order[i]) for i in range(len(groups)) if order[i] is not None]
        for (i, first_i), (j, first_j) in zip(ran, ran[1:]):
            if first_j < first_i:
                raise self.fail(c, f"group {j} ({show(groups[j])}) runs before group {i} ({show(groups[i])}) in "
                                   "the forward pass: groups must be ordered from input to output")
        if order[-1] is None:
            raise self.fail(c, f"the last group ({show(groups[-1])}) never runs in the forward pass; it must be "
                               "the new head")

    def _check_head_group(self, c: str, model: nn.Module, groups: list[list[str]]) -> None:
        """Every parameter whose shape depends on the number of classes lies in the last group."""
        other = self.build(c, NUM_CLASSES + 2)
        shapes = {k: v.shape for k, v in other.state_dict().items()}
        varying = [k for k, v in model.state_dict().items() if k in shapes and shapes[k] != v.shape]
        if not varying:
            raise self.fail(c, "no parameter changes shape with num_classes: build(num_classes) must add a new "
                               "head of num_classes outputs")
        outside = [k for k in varying if not is_under(k, groups[-1])]
        if outside:
            raise self.fail(c, f"the last layer group must be the new head, but {outside[0]!r} (whose shape depends "
                               f"on num_classes) is outside it ({show(groups[-1])})")


def first_calls(model: nn.Module, groups: list[list[str]], inputs) -> list[int | None]:
    """For each group, the position of the first forward call of any module in it (None: never called)."""
    from ..inference import forward

    first: list[int | None] = [None] * len(groups)
    counter = [0]
    handles = []

    def hook_for(index: int):
        def hook(module, args):
            counter[0] += 1
            if first[index] is None:
                first[index] = counter[0]
        return hook

    for name, module in model.named_modules():
        for i, group in enumerate(groups):
            if is_under(name, group):
                handles.append(module.register_forward_pre_hook(hook_for(i)))
                break
    model.eval()
    try:
        with torch.no_grad():
            forward(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return first


def show(group: list[str]) -> str:
    """A group's first modules, for a message."""
    return ", ".join(group[:3]) + (f", ... ({len(group)} modules)" if len(group) > 3 else "")
