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
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from .base import Backbone, BackboneFamily, Registry, Task
from .kit.adaptation import AdaptationChecks
from .kit.structure import StructureChecks
from .kit.subject import ATOL, NUM_CLASSES, Shared, Subject
from .kit.subject import describe as _describe

#: the checks, in the order they run.
CHECKS = ("build", "forward", "layer_groups", "freeze", "lora", "split", "bundle")


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
    shared = Shared(family, tiny, dict(weights or {}), task, examples, params)
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


# -- the checks, grouped by what they check (autotl/kit/) ------------------------------------------------

class _BundleChecks(Subject):
    """The export path: a bundle written as ``autotl export`` writes it, loaded back, predicts the same."""

    def check_bundle(self) -> None:
        from .base import ExportUnsupportedError
        from .bundle import load, sha256_file
        from .bundle_config import CARD, CONFIG, WEIGHTS, BackboneInfo, BundleConfig, WeightsInfo
        from .files import save_weights

        c = "bundle"
        backbone = self.backbone(c)
        task = self.task(c)
        state, split, expected = self.exported_network(c)
        labels = [f"class_{i}" for i in range(NUM_CLASSES)]
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

    def exported_network(self, c: str):
        """A network with weights unlike any fresh build's (the reload must really load them): its state
        dict, the example inputs as a split, and its logits on them."""
        from .inference import predict_outputs

        model = self.build(c, seed=1)
        with torch.no_grad():
            g = torch.Generator().manual_seed(2)
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
        split = self.split(c)
        return state, split, predict_outputs(model, split, torch.device("cpu"))

    def check_architecture(self, c: str, backbone: Backbone, state: dict, split, expected) -> None:
        """``family.architecture`` (export without --refit, the report) loads the saved weights into the same network."""
        from .inference import predict_outputs

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
        got = predict_outputs(rebuilt, split, torch.device("cpu"))
        if got.shape != expected.shape or not torch.allclose(expected, got, atol=ATOL, rtol=1e-3):
            raise self.fail(c, f"family.architecture({self.name!r}) builds a network that predicts differently from "
                               "get()'s with the same weights")


class _Subject(StructureChecks, AdaptationChecks, _BundleChecks):
    """One backbone of a family, and every check on it (``check_<name>`` for each of :data:`CHECKS`)."""


__all__ = ["CHECKS", "Check", "backbone_checks", "check_backbone_family"]
