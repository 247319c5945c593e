"""The plugin author's conformance kit: checks that a backbone family keeps autotl's contract.

In the spirit of scikit-learn's ``parametrize_with_checks``: a plugin's own tests run every check on
every backbone it registers, each as its own pytest test::

    import pytest
    from autotl.testing import backbone_checks
    from my_package import MyFamily

    @pytest.mark.parametrize("check", backbone_checks(MyFamily(), ["my_tiny_net"]), ids=str)
    def test_conformance(check):
        check()

or all at once, raising one :class:`AssertionError` that lists every failure::

    from autotl.testing import check_backbone_family
    check_backbone_family(MyFamily(), ["my_tiny_net"])

The checks, for each backbone (see :data:`CHECKS`):

``build``
    ``family.get(name)`` gives a :class:`~autotl.Backbone` of the family's name and modality, that the
    family ``owns``; ``build(num_classes)`` gives an ``nn.Module`` with parameters.
``forward``
    Inputs made by a task of the same modality (its ``preprocess_for_predict``, the way ``autotl
    predict`` makes them) give finite logits of shape ``(batch, num_classes)`` for two class counts.
``layer_groups``
    The groups name existing modules, cover every parameter exactly once, run from input to output
    (checked with forward hooks), and the last group is the new head: every parameter whose shape
    depends on the number of classes lies in it.
``freeze``
    ``autotl.adapt.adapt(freeze=k)`` leaves exactly the parameters outside the first ``k`` groups
    trainable; a training step of the linear probe changes the head and nothing frozen (batch-norm
    statistics included).
``lora``
    ``lora_targets`` are ``nn.Linear``/``nn.Conv2d`` modules outside the head; with LoRA only the
    adapters and the head train, a training step leaves the base weights as they were, and the
    merged network computes what the adapted one did and has ``build()``'s state-dict keys.
``split``
    Where ``Backbone.split(model, k)`` cuts (the frozen-prefix cache; ``None`` is allowed), at every
    depth, with and without LoRA: the prefix holds exactly the first ``k`` groups' parameters, the
    rest holds the network, and ``rest(prefix(x))`` equals ``model(x)``.
``bundle``
    The export path of ``autotl export``: the weights as ``model.safetensors``, ``bundle_files`` (JSON
    settings, none of the core's file names), the task's ``export_settings``, then
    :func:`autotl.bundle.load` rebuilds the network through ``from_bundle`` and predicts what the
    original network predicts on the same raw inputs; ``family.architecture(name)`` (what ``autotl
    export`` without ``--refit`` and ``autotl report`` build) takes the same weights and predicts the same.

Each failure is an :class:`AssertionError` whose message starts with ``family/model [check]`` and
says what broke.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .base import Backbone, BackboneFamily, Registry, Task

#: the checks, in the order they run.
CHECKS = ("build", "forward", "layer_groups", "freeze", "lora", "split", "bundle")
#: how far the rebuilt bundle's and the merged LoRA network's outputs may be from the original's.
ATOL = 1e-4
NUM_CLASSES = 3


class Check:
    """One check of one backbone: call it to run it; ``str(check)`` is its pytest id."""

    def __init__(self, subject: "_Subject", name: str):
        self.subject = subject
        self.name = name
        self.id = f"{subject.family.name}/{subject.short_name}[{name}]"

    def __call__(self) -> None:
        getattr(self.subject, f"check_{self.name}")()

    def __str__(self) -> str:
        return self.id

    __repr__ = __str__


def backbone_checks(
    family: BackboneFamily,
    names: Sequence[str] | None = None,
    *,
    tiny: bool = True,
    weights: Mapping[str, str] | None = None,
    task: Task | None = None,
    examples: Sequence[Any] | None = None,
    params: Mapping[str, Any] | None = None,
    checks: Iterable[str] = CHECKS,
) -> list[Check]:
    """The conformance checks of every backbone ``names`` of ``family``, for ``pytest.mark.parametrize``.

    :param names: the models to check [default: the family's ``default_zoo()``].
    :param tiny: build with random weights and feed small inputs (resolution 32 for images, 16
        tokens for texts), which keeps the checks fast and needs no weight file beyond what
        ``family.get`` checks; ``False`` loads the real pretrained weights at the backbone's own
        input size.
    :param weights: ``{name: checkpoint file}`` passed to ``family.get(name, weights)``.
    :param task: the task whose ``preprocess_for_predict``/``export_settings`` make the inputs
        [default: the installed task of the family's modality]; needed for a new modality.
    :param examples: raw items the task takes (PIL images, strings...) [default: three made-up
        images for ``image``, three sentences for ``text``].
    :param params: trial parameters given to ``task.export_settings`` [default: see ``tiny``].
    :param checks: a subset of :data:`CHECKS` (e.g. without ``bundle`` for a family that does not
        support export yet).

    Each item is a :class:`Check`; use ``ids=str`` for readable test ids.
    """
    checks = list(checks)
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; the checks are {', '.join(CHECKS)}")
    if not isinstance(family, BackboneFamily):
        raise TypeError(f"{family!r} is not an autotl.BackboneFamily instance")
    if names is None:
        names = list(family.default_zoo())
        if not names:
            raise ValueError(f"backbone family {family.name!r} has no model in its default zoo here; "
                             "pass names=[...] (a tiny model of the family, say)")
    shared = _Shared(family, tiny, dict(weights or {}), task, examples, params)
    return [Check(_Subject(shared, name), check) for name in names for check in checks]


def check_backbone_family(family: BackboneFamily, names: Sequence[str] | None = None, **options: Any) -> None:
    """Run every check of :func:`backbone_checks`; raise one AssertionError listing all failures."""
    failures = []
    for check in backbone_checks(family, names, **options):
        try:
            check()
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        raise AssertionError(f"{len(failures)} conformance check(s) failed:\n- " + "\n- ".join(failures))


# -- what the checks share ----------------------------------------------------------------------------

@dataclass
class _Shared:
    family: BackboneFamily
    tiny: bool
    weights: dict[str, str]
    task: Task | None
    examples: Sequence[Any] | None
    params: Mapping[str, Any] | None
    backbones: dict[str, Backbone] = field(default_factory=dict)


def _default_examples(modality: str) -> list[Any] | None:
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


def _default_params(modality: str, tiny: bool) -> dict[str, Any]:
    if not tiny:
        return {}
    return {"image": {"resolution": 32}, "text": {"max_length": 16}}.get(modality, {})


class _Subject:
    """One backbone of a family, and the checks on it."""

    def __init__(self, shared: _Shared, name: str):
        self.shared = shared
        self.family = shared.family
        self.name = name
        self.short_name = Path(name).name if ("/" in name and Path(name).exists()) else name

    # -- helpers ------------------------------------------------------------------------------------
    def fail(self, check: str, message: str) -> AssertionError:
        return AssertionError(f"{self.family.name}/{self.short_name} [{check}]: {message}")

    def backbone(self, check: str) -> Backbone:
        cached = self.shared.backbones.get(self.name)
        if cached is not None:
            return cached
        try:
            backbone = self.family.get(self.name, self.shared.weights.get(self.name))
        except Exception as exc:
            raise self.fail(check, f"family.get({self.name!r}) raised {_describe(exc)}") from exc
        self.shared.backbones[self.name] = backbone
        return backbone

    def build(self, check: str, num_classes: int = NUM_CLASSES, seed: int = 0) -> nn.Module:
        backbone = self.backbone(check)
        torch.manual_seed(seed)
        try:
            model = backbone.build(num_classes, pretrained=not self.shared.tiny)
        except Exception as exc:
            raise self.fail(check, f"build({num_classes}, pretrained={not self.shared.tiny}) raised "
                                   f"{_describe(exc)}") from exc
        if not isinstance(model, nn.Module):
            raise self.fail(check, f"build() returned a {type(model).__name__}, not a torch.nn.Module")
        return model

    def task(self, check: str) -> Task:
        if self.shared.task is not None:
            return self.shared.task
        from .plugins import get_registry

        modality = self.family.modality
        tasks = [t for t in get_registry().tasks.values() if t.modality == modality]
        if not tasks:
            raise self.fail(check, f"no installed task serves modality {modality!r}, so the kit cannot make "
                                   "inputs; pass task=YourTask() to backbone_checks")
        self.shared.task = tasks[0]
        return tasks[0]

    def examples(self, check: str) -> list[Any]:
        examples = self.shared.examples or _default_examples(self.family.modality)
        if not examples:
            raise self.fail(check, f"the kit has no example inputs for modality {self.family.modality!r}; pass "
                                   "examples=[...] (raw items your task's preprocess_for_predict takes)")
        return list(examples)

    def params(self) -> dict[str, Any]:
        if self.shared.params is not None:
            return dict(self.shared.params)
        return _default_params(self.family.modality, self.shared.tiny)

    def settings(self, check: str, backbone: Backbone) -> dict[str, Any]:
        task = self.task(check)
        try:
            return task.export_settings({}, backbone, self.params())
        except Exception as exc:
            raise self.fail(check, f"task {task.name!r} export_settings() raised {_describe(exc)}") from exc

    def split(self, check: str, backbone: Backbone | None = None):
        """The examples as the task preprocesses them for ``backbone``: a TensorSplit."""
        backbone = backbone or self.backbone(check)
        task = self.task(check)
        try:
            return task.preprocess_for_predict(self.examples(check), backbone, self.settings(check, backbone))
        except Exception as exc:
            raise self.fail(check, f"task {task.name!r} could not preprocess the example inputs for this "
                                   f"backbone: {_describe(exc)}") from exc

    def inputs(self, check: str):
        split = self.split(check)
        batch, _ = next(split.batches(len(split)))
        return batch

    def logits(self, check: str, model: nn.Module, inputs, train: bool = False) -> torch.Tensor:
        from .inference import forward

        model.train(train)
        try:
            if train:
                return forward(model, inputs)
            with torch.no_grad():
                return forward(model, inputs)
        except Exception as exc:
            raise self.fail(check, f"the forward pass raised {_describe(exc)}") from exc

    def groups(self, check: str, model: nn.Module) -> list[list[str]]:
        try:
            groups = self.backbone(check).layer_groups(model)
        except Exception as exc:
            raise self.fail(check, f"layer_groups() raised {_describe(exc)}") from exc
        if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
            raise self.fail(check, f"layer_groups() must return a list of lists of module names, not {groups!r:.120}")
        return groups

    def train_step(self, check: str, model: nn.Module, inputs, adapted) -> None:
        """One SGD step on a cross-entropy loss, in the search's training mode (frozen groups in eval)."""
        from .inference import forward

        adapted.train_mode()
        try:
            out = forward(model, inputs)
            labels = torch.arange(out.shape[0]) % out.shape[1]
            nn.functional.cross_entropy(out, labels).backward()
        except Exception as exc:
            raise self.fail(check, f"a training step (forward and backward in train mode) raised "
                                   f"{_describe(exc)}") from exc
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad and p.grad is not None:
                    p.add_(p.grad, alpha=-1.0)
        model.zero_grad(set_to_none=True)
        model.eval()

    # -- the checks ---------------------------------------------------------------------------------
    def check_build(self) -> None:
        c = "build"
        family = self.family
        for attr in ("name", "modality"):
            if not isinstance(getattr(family, attr, None), str) or not getattr(family, attr):
                raise self.fail(c, f"the family has no {attr!r} string attribute")
        try:
            owned = family.owns(self.name)
        except Exception as exc:
            raise self.fail(c, f"family.owns({self.name!r}) raised {_describe(exc)}") from exc
        if not owned:
            raise self.fail(c, f"family.owns({self.name!r}) is False: the search would not find this model's family")
        backbone = self.backbone(c)
        if not isinstance(backbone, Backbone):
            raise self.fail(c, f"family.get() returned a {type(backbone).__name__}, not an autotl.Backbone")
        for attr, expected in (("family", family.name), ("modality", family.modality)):
            if getattr(backbone, attr, None) != expected:
                raise self.fail(c, f"backbone.{attr} is {getattr(backbone, attr, None)!r}, but its family's "
                                   f"{'name' if attr == 'family' else attr} is {expected!r}")
        if not isinstance(getattr(backbone, "name", None), str) or not backbone.name:
            raise self.fail(c, "backbone.name must be a non-empty string (the leaderboard shows it)")
        model = self.build(c)
        if not any(True for _ in model.parameters()):
            raise self.fail(c, "build() returned a network without parameters")
        pre = backbone.preprocessing()
        if not isinstance(pre, dict):
            raise self.fail(c, f"preprocessing() must return a dict, not a {type(pre).__name__}")
        described = backbone.describe()
        if not isinstance(described, str) or not described.strip():
            raise self.fail(c, "describe() must return a non-empty string")

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
                if any(_under(pname, m) for m in group):
                    if pname in owner and owner[pname] != i:
                        raise self.fail(c, f"parameter {pname!r} lies in group {owner[pname]} and in group {i}: "
                                           "groups must not overlap")
                    owner[pname] = i
        missing = [p for p, _ in model.named_parameters() if p not in owner]
        if missing:
            raise self.fail(c, f"{len(missing)} parameter(s) lie in no layer group (e.g. "
                               f"{', '.join(missing[:4])}): the groups must cover the whole network")
        order = _first_calls(model, groups, self.inputs(c))
        ran = [(i, order[i]) for i in range(len(groups)) if order[i] is not None]
        for (i, first_i), (j, first_j) in zip(ran, ran[1:]):
            if first_j < first_i:
                raise self.fail(c, f"group {j} ({_show(groups[j])}) runs before group {i} ({_show(groups[i])}) in "
                                   "the forward pass: groups must be ordered from input to output")
        last = len(groups) - 1
        if order[last] is None:
            raise self.fail(c, f"the last group ({_show(groups[-1])}) never runs in the forward pass; it must be "
                               "the new head")
        other = self.build(c, NUM_CLASSES + 2)
        shapes = {k: v.shape for k, v in other.state_dict().items()}
        varying = [k for k, v in model.state_dict().items() if k in shapes and shapes[k] != v.shape]
        if not varying:
            raise self.fail(c, "no parameter changes shape with num_classes: build(num_classes) must add a new "
                               "head of num_classes outputs")
        outside = [k for k in varying if not any(_under(k, m) for m in groups[-1])]
        if outside:
            raise self.fail(c, f"the last layer group must be the new head, but {outside[0]!r} (whose shape depends "
                               f"on num_classes) is outside it ({_show(groups[-1])})")

    def check_freeze(self) -> None:
        from .adapt import adapt

        c = "freeze"
        n = len(self.groups(c, self.build(c)))
        inputs = self.inputs(c)
        for k in sorted({0, 1, n - 1} & set(range(n))):
            model = self.build(c)
            groups = self.groups(c, model)
            try:
                adapted = adapt(model, self.backbone(c), freeze=k)
            except Exception as exc:
                raise self.fail(c, f"adapt(freeze={k}) raised {_describe(exc)}") from exc
            frozen_prefixes = [m for g in groups[:k] for m in g]
            expected = {p for p, _ in model.named_parameters() if not any(_under(p, m) for m in frozen_prefixes)}
            actual = {p for p, t in model.named_parameters() if t.requires_grad}
            if expected != actual:
                extra, lacking = sorted(actual - expected), sorted(expected - actual)
                raise self.fail(c, f"with freeze={k} of {n} groups, " + (
                    f"{len(extra)} parameter(s) of the frozen groups still train (e.g. {', '.join(extra[:3])})"
                    if extra else f"{len(lacking)} parameter(s) of the open groups do not train (e.g. "
                                  f"{', '.join(lacking[:3])}); build() must leave every parameter trainable"))
            if k != n - 1:
                continue
            frozen_state = {name: t.detach().clone() for name, t in model.state_dict().items()
                            if any(_under(name, m) for m in frozen_prefixes)}
            head = {name: t.detach().clone() for name, t in model.named_parameters()
                    if any(_under(name, m) for m in groups[-1])}
            self.train_step(c, model, inputs, adapted)
            now = model.state_dict()
            changed = [name for name, before in frozen_state.items() if not torch.equal(before, now[name])]
            if changed:
                raise self.fail(c, f"a training step with freeze={k} changed {changed[0]!r} of a frozen group"
                                   + (" (batch-norm statistics: frozen modules must stay in eval mode)"
                                      if "running" in changed[0] else ""))
            if all(torch.equal(before, now[name]) for name, before in head.items()):
                raise self.fail(c, f"a training step with freeze={k} (linear probe) left the head unchanged: "
                                   "no gradient reaches it")

    def check_lora(self) -> None:
        from .adapt import adapt, merged

        c = "lora"
        backbone = self.backbone(c)
        model = self.build(c)
        groups = self.groups(c, model)
        try:
            targets = backbone.lora_targets(model)
        except Exception as exc:
            raise self.fail(c, f"lora_targets() raised {_describe(exc)}") from exc
        modules = dict(model.named_modules())
        if not targets:
            raise self.fail(c, "lora_targets() is empty: LoRA would have nothing to adapt")
        for name in targets:
            module = modules.get(name)
            if not isinstance(module, (nn.Linear, nn.Conv2d)):
                raise self.fail(c, f"LoRA target {name!r} is a {type(module).__name__ if module is not None else 'missing module'}"
                                   ", not an nn.Linear or nn.Conv2d")
        body = [m for g in groups[:-1] for m in g]
        if not any(any(_under(t, m) for m in body) for t in targets):
            raise self.fail(c, "no LoRA target lies outside the head group: LoRA would never adapt the body")
        inputs = self.inputs(c)
        try:
            adapted = adapt(model, backbone, freeze=0, lora_rank=2)
        except Exception as exc:
            raise self.fail(c, f"adapt(freeze=0, lora_rank=2) raised {_describe(exc)}") from exc
        peft_model = adapted.model
        trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
        wrong = [n for n in trainable if "lora_" not in n and "modules_to_save" not in n]
        if wrong:
            raise self.fail(c, f"with LoRA, {len(wrong)} base parameter(s) still train (e.g. {', '.join(wrong[:3])}): "
                               "only the adapters and the head may")
        if not any("lora_" in n for n in trainable):
            raise self.fail(c, "with LoRA, no adapter parameter trains")
        if not any("modules_to_save" in n for n in trainable):
            raise self.fail(c, "with LoRA, the head does not train")
        base = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
        lora_b = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_B" in n}
        self.train_step(c, peft_model, inputs, adapted)
        now = dict(peft_model.named_parameters())
        moved = [n for n, before in base.items() if not torch.equal(before, now[n])]
        if moved:
            raise self.fail(c, f"a LoRA training step changed the frozen base weight {moved[0]!r}")
        if all(torch.equal(before, now[n]) for n, before in lora_b.items()):
            raise self.fail(c, "a LoRA training step left every adapter unchanged: no gradient reaches them")
        peft_model.eval()
        expected = self.logits(c, peft_model, inputs)
        try:
            plain = merged(peft_model)
        except Exception as exc:
            raise self.fail(c, f"merging the LoRA adapters raised {_describe(exc)}") from exc
        got = self.logits(c, plain, inputs)
        if not torch.allclose(expected, got, atol=ATOL, rtol=1e-3):
            raise self.fail(c, f"the merged network's logits differ from the adapted network's by up to "
                               f"{(expected - got).abs().max():.2e} (tolerance {ATOL:g})")
        keys = set(plain.state_dict())
        reference = set(self.build(c).state_dict())
        if keys != reference:
            extra, lacking = sorted(keys - reference), sorted(reference - keys)
            raise self.fail(c, "the merged network's state dict does not match build()'s, so it cannot be exported: "
                               + (f"extra keys {extra[:3]}" if extra else f"missing keys {lacking[:3]}"))

    def check_split(self) -> None:
        """``Backbone.split`` (the frozen-prefix cache): where it cuts, ``rest(prefix(x))`` is the network."""
        from .adapt import adapt
        from .inference import forward
        from .training import unwrapped

        c = "split"
        backbone = self.backbone(c)
        n = len(self.groups(c, self.build(c)))
        inputs = self.inputs(c)
        for k in range(1, n):
            for lora_rank in (0, 4) if k < n - 1 else (0,):
                model = self.build(c)
                with torch.no_grad():
                    for name in self.groups(c, model)[-1]:  # a head that is not zero: logits that mean something
                        for p in model.get_submodule(name).parameters():
                            p.normal_()
                try:
                    net = adapt(model, backbone, k, lora_rank).model.eval()
                except Exception:
                    continue  # no LoRA target in the open groups: the lora check covers adapt itself
                try:
                    cut = backbone.split(unwrapped(net), k)
                except Exception as exc:
                    raise self.fail(c, f"split(model, {k}) raised {_describe(exc)}; return None where the network "
                                       "cannot be cut") from exc
                if cut is None:
                    continue
                if not (isinstance(cut, tuple) and len(cut) == 2 and all(isinstance(m, nn.Module) for m in cut)):
                    raise self.fail(c, f"split(model, {k}) must return (prefix, rest) modules or None, not {cut!r:.100}")
                prefix, rest = cut
                groups = backbone.layer_groups(unwrapped(net))
                frozen = {id(p) for g in groups[:k] for name in g for p in unwrapped(net).get_submodule(name).parameters()}
                if {id(p) for p in prefix.parameters()} != frozen:
                    raise self.fail(c, f"split(model, {k}): the prefix must hold exactly the parameters of the first "
                                       f"{k} layer groups (the frozen ones), and no copies of them")
                if not any(m is unwrapped(net) for m in rest.modules()):
                    raise self.fail(c, f"split(model, {k}): rest must hold the network as a submodule, so that "
                                       "rest.eval() reaches every module")
                with torch.no_grad():
                    try:
                        got = forward(rest.eval(), forward(prefix.eval(), inputs))
                    except Exception as exc:
                        raise self.fail(c, f"rest(prefix(x)) with freeze={k} raised {_describe(exc)}") from exc
                    want = forward(net, inputs)
                if got.shape != want.shape or not torch.allclose(got, want, atol=ATOL):
                    gap = (got - want).abs().max().item() if got.shape == want.shape else f"shape {tuple(got.shape)}"
                    raise self.fail(c, f"split(model, {k}{', LoRA' if lora_rank else ''}): rest(prefix(x)) differs "
                                       f"from model(x) (max gap {gap}); the cut must run exactly the network")

    def check_bundle(self) -> None:
        from .base import ExportUnsupportedError
        from .bundle import load, sha256_file
        from .bundle_config import CARD, CONFIG, WEIGHTS, BackboneInfo, BundleConfig, WeightsInfo
        from .files import save_weights
        from .inference import predict_logits

        c = "bundle"
        backbone = self.backbone(c)
        task = self.task(c)
        model = self.build(c, seed=1)
        with torch.no_grad():  # weights unlike any fresh build's: the reload must really load them
            g = torch.Generator().manual_seed(2)
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
        labels = [f"class_{i}" for i in range(NUM_CLASSES)]
        split = self.split(c)
        expected = predict_logits(model, split, torch.device("cpu"))
        self.check_architecture(c, backbone, state, split, expected)
        with tempfile.TemporaryDirectory(prefix="autotl-kit-") as tmp:
            folder = Path(tmp)
            save_weights(folder / WEIGHTS, state)
            weights_sha = sha256_file(folder / WEIGHTS)
            try:
                backbone_config = backbone.bundle_files(folder)
            except ExportUnsupportedError as exc:
                raise self.fail(c, f"{exc}; leave 'bundle' out of checks= if the plugin does not support export "
                                   "yet") from exc
            except Exception as exc:
                raise self.fail(c, f"bundle_files() raised {_describe(exc)}") from exc
            if (folder / CONFIG).exists() or (folder / CARD).exists() or sha256_file(folder / WEIGHTS) != weights_sha:
                raise self.fail(c, f"bundle_files() wrote {CONFIG}, {CARD} or {WEIGHTS} at the top of the bundle: "
                                   "those names are the core's; use a sub-folder")
            settings = self.settings(c, backbone)
            for what, value in (("bundle_files()", backbone_config), (f"task {task.name!r} export_settings()", settings)):
                try:
                    json.dumps(value)
                except (TypeError, ValueError) as exc:
                    raise self.fail(c, f"{what} returned settings that are not JSON-serialisable: {exc}") from exc
            BundleConfig(
                task=task.name, label_names=labels,
                backbone=BackboneInfo(family=self.family.name, name=self.name, modality=backbone.modality,
                                      description=backbone.describe(), config=backbone_config),
                preprocessing=settings, weights=WeightsInfo(sha256=weights_sha),
                files={p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
                       if p.is_file() and p.name != WEIGHTS},
            ).write(folder)
            registry = Registry(families={self.family.name: self.family}, tasks={task.name: task})
            try:
                bundle = load(folder, device="cpu", registry=registry)
            except Exception as exc:
                raise self.fail(c, f"loading the bundle back (from_bundle, then build(pretrained=False) and the "
                                   f"weights with strict=True) failed: {_describe(exc)}") from exc
            try:
                got = bundle.logits(bundle.split(self.examples(c)))
            except Exception as exc:
                raise self.fail(c, f"predicting with the reloaded bundle raised {_describe(exc)}") from exc
        if got.shape != expected.shape or not torch.allclose(expected, got, atol=ATOL, rtol=1e-3):
            diff = (expected - got).abs().max() if got.shape == expected.shape else f"shape {tuple(got.shape)}"
            raise self.fail(c, f"the network rebuilt from the bundle predicts differently from the exported one "
                               f"(largest logit difference {diff}): from_bundle() must rebuild the same "
                               "architecture and preprocessing")


    def check_architecture(self, c: str, backbone: Backbone, state: dict, split, expected) -> None:
        """``family.architecture`` (export without --refit, the report) loads the saved weights into the same network."""
        from .inference import predict_logits

        try:
            skeleton = self.family.architecture(self.name, self.shared.weights.get(self.name))
            rebuilt = skeleton.build(NUM_CLASSES, pretrained=False)
            rebuilt.load_state_dict(state, strict=True)
        except Exception as exc:
            raise self.fail(c, f"family.architecture({self.name!r}) must build get()'s network with random weights, "
                               f"into which its saved weights load (strict=True): {_describe(exc)}") from exc
        if skeleton.describe() != backbone.describe():
            raise self.fail(c, f"family.architecture({self.name!r}).describe() is {skeleton.describe()!r}, but get() "
                               f"gave {backbone.describe()!r}: a bundle's card would name another source")
        got = predict_logits(rebuilt, split, torch.device("cpu"))
        if got.shape != expected.shape or not torch.allclose(expected, got, atol=ATOL, rtol=1e-3):
            raise self.fail(c, f"family.architecture({self.name!r}) builds a network that predicts differently from "
                               "get()'s with the same weights")


def _first_calls(model: nn.Module, groups: list[list[str]], inputs) -> list[int | None]:
    """For each group, the position of the first forward call of any module in it (None: never called)."""
    from .inference import forward

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
            if any(_under(name, m) for m in group):
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


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _show(group: list[str]) -> str:
    return ", ".join(group[:3]) + (f", ... ({len(group)} modules)" if len(group) > 3 else "")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


__all__ = ["CHECKS", "Check", "backbone_checks", "check_backbone_family"]
