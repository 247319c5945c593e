"""The plugin author's conformance kit: checks that a backbone family, or a task, keeps autotl's contract.

Backbone families: :func:`backbone_checks` and :func:`check_backbone_family` (below). Task plugins:
:func:`task_checks` and :func:`check_task`, which run a task on a tiny dataset it reads with a tiny
backbone, up to a real search, an export and a prediction (see :data:`TASK_CHECKS`).

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
from typing import Any, Callable, Iterable, Mapping, Sequence

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

    def __init__(self, subject: Any, name: str):
        self.subject = subject
        self.name = name
        label = getattr(subject, "label", None) or f"{subject.family.name}/{subject.short_name}"
        self.id = f"{label}[{name}]"

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
    checks = _known(checks, CHECKS)
    _instance(family, BackboneFamily)
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


# -- task plugins ---------------------------------------------------------------------------------------

#: the checks of a task plugin, in the order they run.
TASK_CHECKS = ("declaration", "load", "bad_data", "split", "prepare", "loss", "metrics", "predict", "bundle")


def task_checks(
    task: Task,
    data: Path | str | Callable[[Path], Any],
    family: BackboneFamily,
    model: str,
    *,
    weights: Mapping[str, str] | None = None,
    options: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    bad_data: Sequence[Path | str | Callable[[Path], Any]] = (),
    sources: Callable[[Path], Sequence[str]] | None = None,
    val_fraction: float = 0.25,
    seed: int = 0,
    checks: Iterable[str] = TASK_CHECKS,
) -> list[Check]:
    """The conformance checks of a task plugin, for ``pytest.mark.parametrize``::

        @pytest.mark.parametrize("check", task_checks(MyTask(), make_tiny_data, TransformersFamily(), TINY_MODEL),
                                 ids=str)
        def test_conformance(check):
            check()

    :param task: the task, installed or not (the checks hand it to the core directly).
    :param data: a tiny dataset the task reads, with a test split and no validation split of its own
        (so that the kit sees one carved); or ``make(folder) -> path``, called once to write one there.
    :param family: a backbone family of the task's modality, and ``model`` a tiny model of it (random
        weights keep the checks fast); ``weights`` is passed to ``family.get(model, weights[model])``.
    :param options: the data options the task loads with (the recipe's ``data`` section).
    :param params: trial parameters for ``prepare``/``export_settings`` and the ``bundle`` search's
        ``fixed`` section (e.g. ``{"max_length": 16}`` or ``{"resolution": 32}``).
    :param bad_data: datasets (paths, or ``make(folder) -> path``) that ``load`` must refuse with one
        :class:`~autotl.errors.DataError` line, besides a missing path and an empty folder.
    :param sources: ``sources(data_path)`` -> what ``autotl predict`` takes for the test split (files,
        folders) [default: the one ``DATA/test*`` file or folder].
    :param checks: a subset of :data:`TASK_CHECKS`.

    The checks (each failure an :class:`AssertionError` starting with ``task-name [check]:``):

    ``declaration``
        ``name``/``modality`` strings; ``target`` an :class:`~autotl.Target` whose ``metrics`` map to
        ``maximize``/``minimize``, whose ``primary`` is one of them and whose ``best_epoch`` follows
        each direction; ``parameters`` are :class:`~autotl.Param`; ``data_options`` declare the
        options given; the family serves the task's modality.
    ``load``
        a :class:`~autotl.LoadedData` with distinct label names, a fingerprint, a JSON
        :class:`~autotl.DataReport` and a test split; loading again gives the same fingerprint;
        ``target.for_labels(label_names)`` is a target whose primary is one of its metrics (the
        later checks use it, as the core does).
    ``bad_data``
        a missing path, an empty folder and every ``bad_data`` raise a one-line ``DataError``.
    ``split``
        ``split_items`` gives every split; no item is in two splits; a carved validation split is the
        same for the same seed, another for another seed (drawn from the same training items, the test
        split untouched), and larger for a larger ``val_fraction``.
    ``prepare``
        :class:`~autotl.TensorSplit` s of one row per item of ``split_items``' lists (or more for a
        per-position target: windows of a long sentence), whose outputs through the
        backbone's network (``target.width``, ``per_position``) have the target's shape and are finite;
        training batches cover the split; preparing again gives the same tensors.
    ``loss``
        ``target.fit`` is JSON; ``target.loss`` on a training batch is a finite scalar whose gradient
        reaches the head, finite and not all zero.
    ``metrics``
        ``target.tune`` is JSON; ``target.score`` gives every declared metric, the primary finite, and
        the same after the calibration's JSON round trip, and does not fail on an empty split;
        ``target.decode`` of the validation items (through ``preprocess_for_predict``) gives one JSON
        dict per item; ``target.figure`` does not fail.
    ``predict``
        ``export_settings`` is JSON; what ``read_inputs(sources)`` gives, through
        ``preprocess_for_predict`` with the settings read back from JSON, predicts what the prepared
        test split predicts, item for item in file order (the target's probabilities), and scores the
        same; so does ``split_items(data, "test")``; a missing source is a ``DataError``.
    ``bundle``
        a real search of one trial (:func:`autotl.search`), ``export``, the bundle loaded back and
        ``predict_files(sources)``: names as ``read_inputs`` gives them, JSON predictions, and outputs
        whose scores against the test labels equal the search's recorded test metrics.
    """
    from .kit.task import TaskShared, TaskSubject

    checks = _known(checks, TASK_CHECKS)
    _instance(task, Task)
    _instance(family, BackboneFamily)
    shared = TaskShared(task, data if callable(data) else Path(data), family, model, weights=dict(weights or {}),
                        options=dict(options or {}), params=dict(params or {}),
                        bad_data=[b if callable(b) else Path(b) for b in bad_data], sources=sources,
                        val_fraction=val_fraction, seed=seed)
    subject = TaskSubject(shared)
    return [Check(subject, check) for check in checks]


def check_task(task: Task, data: Path | str | Callable[[Path], Any], family: BackboneFamily, model: str,
               **options: Any) -> None:
    """Run every check of :func:`task_checks`; raise one AssertionError listing all failures."""
    failures = []
    for check in task_checks(task, data, family, model, **options):
        try:
            check()
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        raise AssertionError(f"{len(failures)} conformance check(s) failed:\n- " + "\n- ".join(failures))


def _known(checks: Sequence[str], known: Sequence[str]) -> list[str]:
    """``checks`` as a list; a ValueError naming those not in ``known``."""
    checks = list(checks)
    unknown = [c for c in checks if c not in known]
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; the checks are {', '.join(known)}")
    return checks


def _instance(value: Any, kind: type) -> None:
    """A TypeError unless ``value`` is a ``kind`` (an autotl base class)."""
    if not isinstance(value, kind):
        raise TypeError(f"{value!r} is not an autotl.{kind.__name__} instance")


__all__ = ["CHECKS", "TASK_CHECKS", "Check", "backbone_checks", "check_backbone_family", "check_task", "task_checks"]
