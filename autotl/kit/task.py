"""The conformance checks of a task plugin: its declaration, loading, splitting, tensors, target, predictions, bundle.

Part of the conformance kit; its public API is :func:`autotl.testing.task_checks`, which says what each
check asserts. :class:`TaskSubject` holds a task under test with its tiny dataset and tiny backbone,
loads and prepares them once for all its checks, and turns every problem into an
:class:`AssertionError` that starts with ``task-name [check]``.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..base import Backbone, BackboneFamily, LoadedData, Registry, Target, Task, TensorSplit, TrialData
from ..contracts import DataReport
from ..errors import DataError
from ..params import Param
from .subject import describe

#: how far the bundle path's outputs may be from the search's (the same code on the same inputs: float noise only).
ATOL = 1e-5
DIRECTIONS = ("maximize", "minimize")

Maker = Callable[[Path], Any]


class TaskShared:
    """The options of one ``task_checks`` call, and what its checks computed so far (the data, loaded once)."""

    def __init__(self, task: Task, data: Path | Maker, family: BackboneFamily, model: str, *,
                 weights: Mapping[str, str], options: Mapping[str, Any], params: Mapping[str, Any],
                 bad_data: Sequence[Path | Maker], sources: Callable[[Path], Sequence[str]] | None,
                 val_fraction: float, seed: int):
        self.task, self.data_spec, self.family, self.model = task, data, family, model
        self.weights, self.options, self.params = dict(weights), dict(options), dict(params)
        self.bad_data, self.sources_of = list(bad_data), sources
        self.val_fraction, self.seed = val_fraction, seed
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._cache: dict[str, Any] = {}

    def folder(self, name: str) -> Path:
        """A new folder under the checks' temporary folder (removed when the process ends)."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="autotl-task-kit-")
        path = Path(self._tmp.name) / name
        n = 1
        while path.exists():
            n += 1
            path = Path(self._tmp.name) / f"{name}-{n}"
        path.mkdir(parents=True)
        return path


class TaskSubject:
    """A task under test with its tiny dataset and backbone: the helpers the checks share, and the checks."""

    def __init__(self, shared: TaskShared):
        self.shared = shared
        self.task = shared.task
        self.label = getattr(shared.task, "name", type(shared.task).__name__)

    # -- helpers -------------------------------------------------------------------------------------
    def fail(self, check: str, message: str) -> AssertionError:
        return AssertionError(f"{self.label} [{check}]: {message}")

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.shared._cache:
            self.shared._cache[key] = make()
        return self.shared._cache[key]

    @property
    def target(self) -> Target:
        """The task's target, bound to the kit's labels once they are loaded (:meth:`autotl.Target.for_labels`)."""
        return self.shared._cache.get("bound") or self.task.target

    def data_path(self, c: str) -> Path:
        def make() -> Path:
            spec = self.shared.data_spec
            if callable(spec):
                try:
                    made = spec(self.shared.folder("data"))
                except Exception as exc:
                    raise self.fail(c, f"the dataset maker raised {describe(exc)}") from exc
                if made is None:
                    raise self.fail(c, "the dataset maker returned None: return the path of the dataset it wrote")
                return Path(made)
            return Path(spec)
        return self.cached("data_path", make)

    def load(self, c: str, *, seed: int | None = None, val_fraction: float | None = None,
             path: Path | None = None) -> LoadedData:
        seed = self.shared.seed if seed is None else seed
        val_fraction = self.shared.val_fraction if val_fraction is None else val_fraction
        path = self.data_path(c) if path is None else path
        try:
            data = self.task.load(path, seed=seed, val_fraction=val_fraction, options=dict(self.shared.options))
        except Exception as exc:
            raise self.fail(c, f"load(seed={seed}, val_fraction={val_fraction}) of the kit's dataset raised "
                               f"{describe(exc)}") from exc
        if not isinstance(data, LoadedData):
            raise self.fail(c, f"load() returned a {type(data).__name__}, not an autotl.LoadedData")
        return data

    def data(self, c: str) -> LoadedData:
        data = self.cached("data", lambda: self.load(c))
        if "bound" not in self.shared._cache:
            try:
                bound = self.task.target.for_labels(list(data.label_names))
            except Exception as exc:
                raise self.fail(c, f"target.for_labels(label_names) raised {describe(exc)}") from exc
            if not isinstance(bound, Target) or bound.primary not in bound.metrics:
                raise self.fail(c, "target.for_labels(label_names) must give an autotl.Target whose primary is one "
                                   "of its metrics")
            self.shared._cache["bound"] = bound
        return data

    def items(self, c: str, data: LoadedData, split: str) -> tuple[list[Any], list[Any]]:
        try:
            got = self.task.split_items(data, split)
        except Exception as exc:
            raise self.fail(c, f"split_items(data, {split!r}) raised {describe(exc)}") from exc
        if got is None:
            raise self.fail(c, f"split_items(data, {split!r}) gave None: the kit (and `autotl report`) needs the raw "
                               "items of every split, as preprocess_for_predict takes them, and their labels")
        try:
            items, labels = got
            items, labels = list(items), list(labels)
        except (TypeError, ValueError) as exc:
            raise self.fail(c, f"split_items(data, {split!r}) must return (items, labels), two lists of the same "
                               f"length, not {type(got).__name__}") from exc
        if len(items) != len(labels):
            raise self.fail(c, f"split_items(data, {split!r}) gave {len(items)} items and {len(labels)} labels")
        return items, labels

    def backbone(self, c: str) -> Backbone:
        def make() -> Backbone:
            family, name = self.shared.family, self.shared.model
            try:
                return family.get(name, self.shared.weights.get(name))
            except Exception as exc:
                raise self.fail(c, f"the kit's backbone: {family.name}.get({name!r}) raised {describe(exc)}") from exc
        return self.cached("backbone", make)

    def params(self) -> dict[str, Any]:
        """The trial parameters the checks prepare with: the kit's ``params``, the target's defaults."""
        params = {p.name: p.default for p in self.target.parameters if p.default is not None}
        params.update(self.shared.params)
        return params

    def prepared(self, c: str) -> TrialData:
        def make() -> TrialData:
            try:
                return self.task.prepare(self.data(c), self.backbone(c), self.params())
            except Exception as exc:
                raise self.fail(c, f"prepare(data, backbone, params={self.params()}) raised {describe(exc)}") from exc
        return self.cached("prepared", make)

    def width(self, c: str) -> int:
        try:
            return int(self.target.width(self.data(c).label_names))
        except Exception as exc:
            raise self.fail(c, f"target.width(label_names) raised {describe(exc)}") from exc

    def network(self, c: str, seed: int = 0) -> nn.Module:
        """The tiny backbone's network of the target's width, random weights made unlike a fresh build's."""
        from ..network import built

        torch.manual_seed(seed)
        try:
            model = built(self.backbone(c), self.width(c), pretrained=False, per_position=self.target.per_position)
        except Exception as exc:
            raise self.fail(c, f"building the backbone's network of width {self.width(c)} (per_position="
                               f"{self.target.per_position}) raised {describe(exc)}") from exc
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed + 1)
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        return model.eval()

    def outputs(self, c: str, model: nn.Module, split: TensorSplit, what: str) -> torch.Tensor:
        from ..inference import predict_outputs

        try:
            return predict_outputs(model, split, torch.device("cpu"))
        except Exception as exc:
            raise self.fail(c, f"predicting {what} raised {describe(exc)}") from exc

    def calibration(self, c: str, train: TensorSplit) -> dict[str, Any]:
        try:
            fitted = self.target.fit(train.labels)
        except Exception as exc:
            raise self.fail(c, f"target.fit(train labels) raised {describe(exc)}") from exc
        self.json(c, "target.fit()", fitted)
        return dict(fitted)

    def json(self, c: str, what: str, value: Any) -> Any:
        """``value`` after a JSON round trip (what a bundle or a record hands back); fails if it is not JSON."""
        try:
            return json.loads(json.dumps(value, allow_nan=True))
        except (TypeError, ValueError) as exc:
            raise self.fail(c, f"{what} gave something that is not JSON-serialisable ({exc}): it is recorded with "
                               "the trial and travels in the bundle") from exc

    def sources(self, c: str) -> list[str]:
        """What ``autotl predict`` is given for the test split: the kit's ``sources``, or ``DATA/test*``."""
        root = self.data_path(c)
        if self.shared.sources_of is not None:
            return [str(s) for s in self.shared.sources_of(root)]
        found = sorted(p for p in root.glob("test*") if p.is_dir() or p.is_file()) if root.is_dir() else []
        if len(found) != 1:
            raise self.fail(c, f"the kit looks for the test split's file or folder as {root}/test*, and found "
                               f"{len(found)}; pass sources=lambda data: [...] (what `autotl predict` takes for it)")
        return [str(found[0])]

    def read(self, c: str, sources: Sequence[str]) -> list[tuple[str, Any]]:
        try:
            named = self.task.read_inputs(list(sources))
        except Exception as exc:
            raise self.fail(c, f"read_inputs({list(sources)}) raised {describe(exc)}") from exc
        for pair in named:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
                raise self.fail(c, f"read_inputs() must give (name, item) pairs with str names, not {pair!r:.100}")
        return named

    def settings(self, c: str) -> dict[str, Any]:
        try:
            settings = self.task.export_settings(dict(self.shared.options), self.backbone(c), self.params())
        except Exception as exc:
            raise self.fail(c, f"export_settings() raised {describe(exc)}") from exc
        return self.json(c, "export_settings()", settings)

    def predict_split(self, c: str, items: Sequence[Any], settings: Mapping[str, Any], what: str) -> TensorSplit:
        try:
            split = self.task.preprocess_for_predict(list(items), self.backbone(c), settings)
        except Exception as exc:
            raise self.fail(c, f"preprocess_for_predict({what}) raised {describe(exc)}") from exc
        if not isinstance(split, TensorSplit):
            raise self.fail(c, f"preprocess_for_predict({what}) must give a TensorSplit, not {type(split).__name__}")
        self.check_rows(c, len(split), len(items), f"preprocess_for_predict({what})")
        return split

    def check_rows(self, c: str, rows: int, items: int, what: str) -> None:
        """One row per item; for a per-position target, at least one (a long sentence may take several windows)."""
        if rows == items or (self.target.per_position and rows >= items):
            return
        raise self.fail(c, f"{what} has {rows} rows for {items} items: one row per item"
                        + (", or more (windows of a long item)" if self.target.per_position else ""))

    def score(self, c: str, outputs: torch.Tensor, labels: torch.Tensor, calibration: Mapping[str, Any],
              what: str) -> dict[str, float]:
        try:
            scores = self.target.score(outputs, labels, calibration)
        except Exception as exc:
            raise self.fail(c, f"target.score() on {what} raised {describe(exc)}") from exc
        if not isinstance(scores, Mapping):
            raise self.fail(c, f"target.score() must return a dict of metric -> float, not {type(scores).__name__}")
        missing = [m for m in self.target.metrics if m not in scores]
        if missing:
            raise self.fail(c, f"target.score() on {what} lacks the declared metric(s) {', '.join(missing)}; it gave "
                               f"{', '.join(scores) or 'none'}")
        try:
            return {name: float(value) for name, value in scores.items()}
        except (TypeError, ValueError) as exc:
            raise self.fail(c, f"target.score() on {what} gave a value that is not a number: {exc}") from exc

    def same_outputs(self, c: str, expected: torch.Tensor, got: torch.Tensor, what: str) -> None:
        """The target's probabilities of two outputs agree item for item (per-position outputs on their common positions)."""
        a, b = self.target.probabilities(expected), self.target.probabilities(got)
        if a.dim() == 3 and b.dim() == 3 and a.shape[0] == b.shape[0] and a.shape[2] == b.shape[2]:
            width = min(a.shape[1], b.shape[1])
            a, b = a[:, :width], b[:, :width]
        if a.shape != b.shape:
            raise self.fail(c, f"{what}: outputs of shape {tuple(b.shape)}, the search's {tuple(a.shape)}")
        if not torch.allclose(a, b, atol=ATOL, rtol=1e-4):
            rows = (a - b).abs().reshape(a.shape[0], -1).amax(1)
            first = int(torch.nonzero(rows > ATOL)[0]) if bool((rows > ATOL).any()) else 0
            raise self.fail(c, f"{what} differ from the search's on the test split (first at item {first}, largest "
                               f"difference {float(rows.max()):.3g}): the items must come in the split's (file) order "
                               "and be preprocessed through the same code as prepare()")

    def same_scores(self, c: str, expected: Mapping[str, float], got: Mapping[str, float], what: str) -> None:
        for name in self.target.metrics:
            e, g = float(expected[name]), float(got[name])
            if math.isnan(e) and math.isnan(g):
                continue
            if not math.isclose(e, g, rel_tol=1e-5, abs_tol=1e-6):
                raise self.fail(c, f"{what}: {name} {g!r}, the search's {e!r}")

    # -- the checks ----------------------------------------------------------------------------------
    def check_declaration(self) -> None:
        c = "declaration"
        task = self.task
        for attr in ("name", "modality"):
            if not isinstance(getattr(task, attr, None), str) or not getattr(task, attr):
                raise self.fail(c, f"the task's {attr} must be a non-empty str")
        target = getattr(task, "target", None)
        if not isinstance(target, Target):
            raise self.fail(c, f"task.target must be an autotl.Target (e.g. autotl_tasks.targets.ClassLabel()), not "
                               f"{type(target).__name__}")
        metrics = getattr(target, "metrics", None)
        if not isinstance(metrics, Mapping) or not metrics:
            raise self.fail(c, "target.metrics must map every metric score() reports to 'maximize' or 'minimize'")
        wrong = {m: d for m, d in metrics.items() if d not in DIRECTIONS}
        if wrong:
            raise self.fail(c, f"target.metrics gives direction(s) {wrong}; each must be 'maximize' or 'minimize'")
        if getattr(target, "primary", None) not in metrics:
            raise self.fail(c, f"target.primary {getattr(target, 'primary', None)!r} is not one of target.metrics "
                               f"({', '.join(metrics)})")
        for name in metrics:
            better = 1.0 if metrics[name] == "maximize" else 0.0
            if not target.best_epoch(better, 1.0 - better, name) or target.best_epoch(1.0 - better, better, name):
                raise self.fail(c, f"target.best_epoch() does not follow {name}'s direction ({metrics[name]})")
        for owner, params in (("target.parameters", target.parameters), ("task.parameters", task.parameters or ())):
            bad = [p for p in params if not isinstance(p, Param)]
            if bad:
                raise self.fail(c, f"{owner} must be autotl.Param objects, not {bad[0]!r:.80}")
        options = task.data_options
        if options is not None:
            if not isinstance(options, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                           for k, v in options.items()):
                raise self.fail(c, "task.data_options must map each option name to a short description (str -> str)")
            undeclared = sorted(set(self.shared.options) - set(options) - {"val_fraction"})
            if undeclared:
                raise self.fail(c, f"the kit was given data option(s) {', '.join(undeclared)} that task.data_options "
                                   f"does not declare ({', '.join(options) or 'none'}): `autotl search` would refuse them")
        if self.shared.family.modality != task.modality:
            raise self.fail(c, f"the kit's backbone family {self.shared.family.name!r} serves modality "
                               f"{self.shared.family.modality!r}, the task {task.modality!r}")

    def check_load(self) -> None:
        c = "load"
        data = self.data(c)
        names = data.label_names
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise self.fail(c, f"LoadedData.label_names must be a non-empty list of str, not {names!r:.100}")
        if len(set(names)) != len(names):
            raise self.fail(c, f"LoadedData.label_names repeats a name: {names!r:.200}")
        if not isinstance(data.fingerprint, str) or not data.fingerprint:
            raise self.fail(c, "LoadedData.fingerprint must be a non-empty str (a digest of the data's content)")
        if not isinstance(data.report, DataReport):
            raise self.fail(c, "LoadedData.report must be an autotl.DataReport")
        self.json(c, "the data report (to_dict())", data.report.to_dict())
        if not data.has_test:
            raise self.fail(c, "the kit's dataset has no test split (LoadedData.has_test is False): give the kit a "
                               "dataset with one, whose predictions the checks compare")
        again = self.load(c)
        if again.fingerprint != data.fingerprint or again.label_names != names:
            raise self.fail(c, "loading the same data twice gave another fingerprint or other label names: a resumed "
                               "study would refuse its own data")
        if self.width(c) < 1:
            raise self.fail(c, f"target.width(label_names) is {self.width(c)}: the network needs an output")

    def check_bad_data(self) -> None:
        c = "bad_data"
        cases: list[tuple[str, Path]] = [("a path that does not exist", self.shared.folder("missing") / "nothing"),
                                         ("an empty folder", self.shared.folder("empty"))]
        for i, spec in enumerate(self.shared.bad_data):
            if callable(spec):
                try:
                    made = spec(self.shared.folder(f"bad-{i}"))
                except Exception as exc:
                    raise self.fail(c, f"bad dataset maker {i} raised {describe(exc)}") from exc
                cases.append((f"bad dataset {i} ({getattr(spec, '__name__', 'maker')})", Path(made)))
            else:
                cases.append((f"bad dataset {i} ({spec})", Path(spec)))
        for what, path in cases:
            try:
                self.task.load(path, seed=0, val_fraction=self.shared.val_fraction, options=dict(self.shared.options))
            except DataError as exc:
                message = str(exc).strip()
                if not message or "\n" in message:
                    raise self.fail(c, f"the DataError for {what} must be one line saying what is wrong and what to "
                                       f"do, not {message!r:.200}") from exc
                continue
            except Exception as exc:
                raise self.fail(c, f"loading {what} raised {describe(exc)}, not autotl.errors.DataError: the user "
                                   "would see a traceback instead of one `Error:` line") from exc
            raise self.fail(c, f"loading {what} raised nothing: raise autotl.errors.DataError saying what is wrong")

    def check_split(self) -> None:
        c = "split"
        data = self.data(c)
        train, _ = self.items(c, data, "train")
        val, _ = self.items(c, data, "val")
        test, _ = self.items(c, data, "test")
        if not val or not train:
            raise self.fail(c, f"the splits hold {len(train)} training and {len(val)} validation items: "
                               "both must be non-empty")

        def keys(items: list[Any]) -> list[Any]:
            return [_key(item) for item in items]

        pool = Counter(keys(train)) + Counter(keys(val))
        unique = {k for k, n in pool.items() if n == 1}
        for name, other in (("validation", val), ("test", test)):
            shared = unique & set(keys(train)) & set(keys(other))
            if shared:
                raise self.fail(c, f"an item is in the training and the {name} split: {next(iter(shared))!r:.120}")
        shared = set(keys(val)) & set(keys(test))
        if shared:
            raise self.fail(c, f"an item is in the validation and the test split: {next(iter(shared))!r:.120}")
        if not data.report.val_from_train:
            return  # the dataset has a validation split of its own: nothing is carved
        again = self.load(c)
        if keys(self.items(c, again, "val")[0]) != keys(val):
            raise self.fail(c, "loading again with the same seed gave another validation split: it must be "
                               "reproducible (seeded)")
        other = self.load(c, seed=self.shared.seed + 1)
        other_train, other_val = self.items(c, other, "train")[0], self.items(c, other, "val")[0]
        if Counter(keys(other_train)) + Counter(keys(other_val)) != pool:
            raise self.fail(c, "with another seed, the training and validation splits together hold other items: "
                               "the validation split must be carved out of the training data, nothing lost or doubled")
        if keys(self.items(c, other, "test")[0]) != keys(test):
            raise self.fail(c, "another seed changed the test split: only the validation split is drawn")
        if set(keys(other_val)) == set(keys(val)) and len(pool) >= 2 * len(val):
            raise self.fail(c, f"seeds {self.shared.seed} and {self.shared.seed + 1} drew the same validation split: "
                               "it must be drawn with the seed")
        more = self.load(c, val_fraction=min(0.5, 2 * self.shared.val_fraction))
        if len(self.items(c, more, "val")[0]) <= len(val):
            raise self.fail(c, "a larger val_fraction did not give a larger validation split")

    def check_prepare(self) -> None:
        c = "prepare"
        data = self.data(c)
        prepared = self.prepared(c)
        if not isinstance(prepared, TrialData):
            raise self.fail(c, f"prepare() must return an autotl.TrialData, not {type(prepared).__name__}")
        if prepared.test is None:
            raise self.fail(c, "prepare() gave no test split, though the data has one")
        model = self.network(c)
        for name in ("train", "val", "test"):
            split = getattr(prepared, name)
            if not isinstance(split, TensorSplit):
                raise self.fail(c, f"the {name} split is a {type(split).__name__}, not an autotl.TensorSplit")
            items, _ = self.items(c, data, name)
            self.check_rows(c, len(split), len(items), f"the prepared {name} split")
            outputs = self.outputs(c, model, split, f"the prepared {name} split")
            self._check_output_shape(c, outputs, len(split), f"the {name} split")
        try:
            batches = list(prepared.train.batches(4, train=True, generator=torch.Generator().manual_seed(0)))
        except Exception as exc:
            raise self.fail(c, f"training batches (train=True, with the transform's augmentation) raised "
                               f"{describe(exc)}") from exc
        if not batches or sum(len(labels) for _, labels in batches) < len(prepared.train) - 1:
            raise self.fail(c, "training batches leave items out")
        try:
            again = self.task.prepare(data, self.backbone(c), self.params())
        except Exception as exc:
            raise self.fail(c, f"preparing a second time raised {describe(exc)}") from exc
        first = self.outputs(c, model, prepared.val, "the val split")
        second = self.outputs(c, model, again.val, "the val split prepared again")
        if first.shape != second.shape or not torch.equal(first, second) or \
                not torch.equal(prepared.val.labels, again.val.labels):
            raise self.fail(c, "preparing the same data twice gave other validation tensors: prepare() must be "
                               "deterministic (later trials reuse its work)")

    def _check_output_shape(self, c: str, outputs: torch.Tensor, n: int, what: str) -> None:
        width = self.width(c)
        ok = outputs.dim() == 3 and outputs.shape[0] == n and outputs.shape[2] == width if self.target.per_position \
            else tuple(outputs.shape) == (n, width)
        if not ok:
            layout = "(items, positions, width)" if self.target.per_position else "(items, width)"
            raise self.fail(c, f"the network's outputs on {what} have shape {tuple(outputs.shape)}, expected {layout} "
                               f"with {n} items and width {width}")
        if not torch.isfinite(outputs).all():
            raise self.fail(c, f"the network's outputs on {what} are not all finite")

    def check_loss(self) -> None:
        from ..inference import forward

        c = "loss"
        prepared = self.prepared(c)
        calibration = self.calibration(c, prepared.train)
        model = self.network(c)
        inputs, labels = next(prepared.train.batches(8, train=True, generator=torch.Generator().manual_seed(0)))
        model.train()
        try:
            loss = self.target.loss(forward(model, inputs), labels, calibration, self.params())
        except Exception as exc:
            raise self.fail(c, f"target.loss() on a training batch raised {describe(exc)}") from exc
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise self.fail(c, f"target.loss() must return a scalar tensor (the batch's mean), not "
                               f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}")
        if not torch.isfinite(loss):
            raise self.fail(c, f"target.loss() is {float(loss)} on a training batch")
        if not loss.requires_grad:
            raise self.fail(c, "target.loss() does not depend on the network's outputs (no gradient)")
        loss.backward()
        head = self.backbone(c).layer_groups(model)[-1]
        from ..utils import is_under

        grads = [(n, p.grad) for n, p in model.named_parameters() if is_under(n, head)]
        if not grads or any(g is None for _, g in grads):
            raise self.fail(c, "the loss's gradient does not reach the network's head")
        if not all(torch.isfinite(g).all() for _, g in grads) or not any(bool(g.abs().sum() > 0) for _, g in grads):
            raise self.fail(c, "the loss's gradient on the head is zero or not finite: training would not move it")

    def check_metrics(self) -> None:
        c = "metrics"
        data = self.data(c)
        prepared = self.prepared(c)
        calibration = self.calibration(c, prepared.train)
        model = self.network(c)
        val = prepared.val
        outputs = self.outputs(c, model, val, "the val split")
        try:
            tuned = self.target.tune(calibration, outputs, val.labels)
        except Exception as exc:
            raise self.fail(c, f"target.tune() on the validation outputs raised {describe(exc)}") from exc
        if not isinstance(tuned, Mapping):
            raise self.fail(c, f"target.tune() must return the calibration dict, not {type(tuned).__name__}")
        tuned = self.json(c, "target.tune()", dict(tuned))
        scores = self.score(c, outputs, val.labels, tuned, "the validation split")
        primary = self.target.primary
        if not math.isfinite(scores[primary]):
            raise self.fail(c, f"the primary metric {primary} is {scores[primary]} on a validation split of "
                               f"{len(val)} items: trials would have no value to rank by")
        self.score(c, outputs[:0], val.labels[:0], tuned, "an empty split")
        self.check_combine(c, outputs, val.labels, tuned, scores)
        again = self.score(c, outputs, val.labels, self.json(c, "target.tune()", tuned), "the validation split")
        self.same_scores(c, scores, again, "scoring again with the calibration read back from JSON")
        items, _ = self.items(c, data, "val")
        split = self.predict_split(c, items, self.settings(c), "the validation items")
        predicted = self.outputs(c, model, split, "the validation items through preprocess_for_predict")
        try:
            decoded = self.target.decode(predicted, split, tuned, data.label_names, top_k=2)
        except Exception as exc:
            raise self.fail(c, f"target.decode() raised {describe(exc)}") from exc
        if not isinstance(decoded, list) or len(decoded) != len(items) or not all(isinstance(d, dict) for d in decoded):
            raise self.fail(c, f"target.decode() must give one dict per item ({len(items)}), not {decoded!r:.120}")
        self.json(c, "target.decode()", decoded)
        try:
            self.target.figure(outputs, val.labels, tuned, data.label_names)
        except Exception as exc:
            raise self.fail(c, f"target.figure() (the report's plot) raised {describe(exc)}") from exc

    def check_combine(self, c: str, outputs: torch.Tensor, labels: torch.Tensor, calibration: Mapping[str, Any],
                      scores: Mapping[str, float]) -> None:
        """An ensemble of one network twice over (:meth:`autotl.Target.combine`, any weights) is that network: its
        outputs have the same probabilities and scores."""
        try:
            combined = self.target.combine([outputs, outputs], [0.25, 0.75])
        except Exception as exc:
            raise self.fail(c, f"target.combine() of the validation outputs with themselves raised {describe(exc)}") \
                from exc
        if not isinstance(combined, torch.Tensor) or combined.shape != outputs.shape:
            raise self.fail(c, "target.combine() must give outputs of the shape it was given "
                               f"({tuple(outputs.shape)}), not {getattr(combined, 'shape', type(combined).__name__)}")
        a, b = self.target.probabilities(outputs), self.target.probabilities(combined)
        if not torch.allclose(a, b, atol=ATOL, rtol=1e-4):
            raise self.fail(c, "target.combine() of the same outputs twice changed their probabilities (by up to "
                               f"{float((a - b).abs().max()):.3g}): an ensemble of one network must be that network")
        self.same_scores(c, scores, self.score(c, combined, labels, calibration, "combined outputs"),
                         "scoring the combination of the validation outputs with themselves")

    def check_predict(self) -> None:
        c = "predict"
        data = self.data(c)
        prepared = self.prepared(c)
        model = self.network(c)
        settings = self.settings(c)
        calibration = self.calibration(c, prepared.train)
        test = prepared.test
        search = self.outputs(c, model, test, "the prepared test split")
        named = self.read(c, self.sources(c))
        items, _ = self.items(c, data, "test")
        if len(named) != len(items):
            raise self.fail(c, f"read_inputs({self.sources(c)}) gave {len(named)} items, the test split has "
                               f"{len(items)}")
        split = self.predict_split(c, [item for _, item in named], settings, "what read_inputs gave for the test split")
        got = self.outputs(c, model, split, "the test items through the bundle's path")
        self.same_outputs(c, search, got, "predictions of what read_inputs() gives for the test split, in its order,")
        self.same_scores(c, self.score(c, search, test.labels, calibration, "the test split"),
                         self.score(c, got, test.labels, calibration, "the bundle path's test outputs"),
                         "scoring the bundle path's test outputs")
        by_items = self.outputs(c, model, self.predict_split(c, items, settings, "split_items(data, 'test')"),
                                "split_items(data, 'test') through preprocess_for_predict")
        self.same_outputs(c, search, by_items, "predictions of split_items(data, 'test') (what `autotl report` shows)")
        missing = str(self.shared.folder("no-source") / "no-such-input")
        try:
            self.task.read_inputs([missing])
        except DataError:
            pass
        except Exception as exc:
            raise self.fail(c, f"read_inputs() of a missing source raised {describe(exc)}, not "
                               "autotl.errors.DataError") from exc
        else:
            raise self.fail(c, "read_inputs() of a missing source raised nothing: raise autotl.errors.DataError")

    def check_bundle(self) -> None:
        """A real search of one short trial, ``export``, and ``predict`` on the test split's source."""
        import yaml

        from ..api import search
        from ..bundle import load
        from ..export import ExportOptions, export_bundle

        c = "bundle"
        self.data(c)
        task, family, model = self.task, self.shared.family, self.shared.model
        registry = Registry(families={family.name: family}, tasks={task.name: task})
        work = self.shared.folder("search")
        fixed = {"epochs": 1, "batch_size": 8, "lr": 1.0e-3, "freeze": 0, "lora_rank": 0, **self.shared.params}
        recipe = work / "recipe.yaml"
        recipe.write_text(yaml.safe_dump({
            "task": task.name, "data": {"val_fraction": self.shared.val_fraction, **self.shared.options},
            "fixed": fixed, "sampler": {"name": "random"}, "pruner": {"name": "none"}}))
        weights = {model: self.shared.weights[model]} if model in self.shared.weights else {}
        try:
            result = search(self.data_path(c), task=task.name, out=work / "run", registry=registry, recipe=str(recipe),
                            models=[model], weights=weights, trials=1, device="cpu", prerank=False,
                            seed=self.shared.seed)
        except Exception as exc:
            raise self.fail(c, f"a search of one trial raised {describe(exc)}") from exc
        if result.trials_run != 1 or result.too_many_failures or not result.test_score:
            raise self.fail(c, f"the search of one trial did not complete with a test score ({result.stop_reason})")
        recorded = result.test_score["test_metrics"]
        try:
            export_bundle(result.run, ExportOptions(out=work / "bundle", device="cpu"))
            bundle = load(work / "bundle", device="cpu", registry=registry)
        except Exception as exc:
            raise self.fail(c, f"export, or loading the bundle back, raised {describe(exc)}") from exc
        sources = self.sources(c)
        named = self.read(c, sources)
        try:
            predictions = bundle.predict_files(sources, top_k=2)
        except Exception as exc:
            raise self.fail(c, f"the bundle's predict_files({sources}) (`autotl predict`) raised {describe(exc)}") from exc
        if [p.input for p in predictions] != [name for name, _ in named]:
            raise self.fail(c, "`autotl predict` named its predictions otherwise than read_inputs(), or in another order")
        self.json(c, "the bundle's predictions", [dict(p.fields) for p in predictions])
        outputs = self.outputs(c, bundle.model, bundle.split([item for _, item in named]), "the bundle")
        data, _ = result.run.load_data()
        best = result.run.best_trial()
        test = task.prepare(data, result.run.backbone(model), result.run.config(best)).test
        got = self.score(c, outputs, test.labels, bundle.calibration, "the bundle's test predictions")
        self.same_scores(c, recorded, got, "the bundle's predictions on the test source, scored against the test "
                                           "labels,")


def _key(item: Any) -> Any:
    """An item as something hashable and comparable across loads (paths and strings as they are)."""
    try:
        hash(item)
        return item
    except TypeError:
        return repr(item)


__all__ = ["TaskShared", "TaskSubject"]
