"""Loading a bundle written by ``autotl export`` and predicting with it.

A bundle is a folder: ``model.safetensors`` (the plain network, LoRA merged), ``config.json`` (what
the network is, how inputs are preprocessed, where it came from, the weights' sha256) and
``README.md`` (the model card); optionally ``model.onnx`` and ``model.torchscript.pt``. Loading
reads JSON and safetensors only, never a pickle, and refuses weights whose checksum does not match.

The network is rebuilt by the backbone family's :meth:`~autotl.BackboneFamily.from_bundle`, inputs
are read and preprocessed by the task's :meth:`~autotl.Task.read_inputs` and
:meth:`~autotl.Task.preprocess_for_predict`, the outputs come from the same function that scored the
validation split during the search (:func:`autotl.inference.predict_outputs`), in the same batches, and
the task's target (:class:`autotl.Target`) decodes them into predictions with the calibration the trial
recorded.

An ensemble's bundle (``autotl export --ensemble``) holds its members as bundles of their own under
``members/<trial>/``; its config.json names them with their weights (:class:`EnsembleBundle`): each member
predicts on its own preprocessing of the inputs, and the task's target combines their outputs
(:meth:`autotl.Target.combine`) before decoding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TextIO

import torch

from .base import Backbone, Registry, Task, TensorSplit
from .bundle_config import CONFIG, ONNX, TORCHSCRIPT, WEIGHTS, BundleConfig, TargetInfo
from .device import resolve_device
from .errors import BundleError, UnreadableInputs, UsageError
from .formats import onnx_feed, onnx_session
from .inference import predict_outputs
from .network import trained_network

#: the search scores the validation split in batches of this size; predicting in the same batches
#: gives the same numbers.
DEFAULT_BATCH = 128
#: batches preprocessed at a time: bounds memory however many inputs there are.
CHUNK_BATCHES = 8


@dataclass
class Prediction:
    """One input's prediction: its name and what the task's target decoded (:meth:`autotl.Target.decode`).

    The decoded fields read as attributes too: ``prediction.label`` and ``prediction.probability``
    for a target that predicts one label, say.
    """

    input: str
    fields: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        fields = self.__dict__.get("fields") or {}
        if name in fields:
            return fields[name]
        raise AttributeError(f"the prediction has no {name!r} (it has {', '.join(fields) or 'no fields'})")

    def as_dict(self) -> dict[str, Any]:
        """What ``autotl predict --json`` prints of it: ``{"input": name, **decoded}``."""
        return {"input": self.input, **self.fields}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(directory: Path, name: str, expected: str | None) -> Path:
    """``directory/name``, refused unless its sha256 is ``expected``."""
    path = Path(directory) / name
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise BundleError(f"{directory / CONFIG} names a file outside the bundle ({name!r}); export the bundle again")
    if not path.is_file():
        raise BundleError(f"{path} is missing: the bundle is incomplete; export it again")
    if not expected:
        raise BundleError(f"{directory / CONFIG} records no checksum for {name}; export the bundle again")
    actual = sha256_file(path)
    if actual != expected:
        raise BundleError(f"{path} does not match the checksum in {CONFIG} (sha256 {actual[:12]}..., expected "
                          f"{expected[:12]}...): the file was changed or corrupted; export the bundle again")
    return path


class Bundle:
    """A loaded bundle: ``predict`` on raw inputs, ``predict_files`` on what ``autotl predict`` takes.

    ``config`` is its config.json as a :class:`~autotl.bundle_config.BundleConfig`.
    """

    def __init__(self, directory: Path, config: BundleConfig, task: Task, backbone: Backbone,
                 model: torch.nn.Module, device: torch.device, engine: str = "torch", session: Any = None):
        self.directory = Path(directory)
        self.config = config
        self.task = task
        self.target = task.target.for_labels(list(config.label_names))
        #: the network's width and layout, the metric and the calibration (also for a version 1 bundle).
        self.target_info: TargetInfo = config.target_info(self.target)
        self.backbone = backbone
        self.model = model
        self.device = device
        self.engine = engine
        self._session = session

    @property
    def label_names(self) -> list[str]:
        return list(self.config.label_names)

    @property
    def calibration(self) -> dict[str, Any]:
        """What the target fitted and tuned in the search (thresholds, the target's scale...), as recorded."""
        return dict(self.target_info.calibration)

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.config.preprocessing)

    # -- the prediction path ----------------------------------------------------------------------
    def split(self, items: Sequence[Any]) -> TensorSplit:
        """Raw items as the task preprocesses them for this bundle."""
        return self.task.preprocess_for_predict(list(items), self.backbone, self.settings)

    def outputs(self, split: TensorSplit, batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
        """The network's outputs on a split, as the search scored them (or from the ONNX file)."""
        if self.engine == "onnx":
            return _joined([torch.from_numpy(self._session.run(None, onnx_feed(x))[0]).float()
                           for x, _ in split.batches(batch_size)])
        return predict_outputs(self.model, split, self.device, batch_size)

    #: the former name of :meth:`outputs`.
    logits = outputs

    def probabilities(self, inputs: Sequence[Any], batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
        """The target's probabilities (:meth:`autotl.Target.probabilities`) of raw inputs, in their order: one row
        per input, one column per output of the network (in the order of :attr:`label_names`)."""
        parts = [self.target.probabilities(outputs) for _, _, outputs in self._chunks(list(inputs), batch_size)]
        return _joined(parts) if parts else torch.empty(0, self.target_info.width)

    def predict(self, inputs: Sequence[Any] | Any, *, top_k: int = 1,
                batch_size: int = DEFAULT_BATCH) -> list[Prediction]:
        """Predict raw inputs: image file paths or PIL images, texts... as the task takes them."""
        if isinstance(inputs, (str, Path)) or not isinstance(inputs, Sequence):
            inputs = [inputs]
        named = [(str(item) if isinstance(item, (str, Path)) else f"<input {i}>", item)
                 for i, item in enumerate(inputs)]
        return list(self.iter_predict(named, top_k=top_k, batch_size=batch_size))

    def predict_files(self, sources: Sequence[str], *, stdin: TextIO | None = None, top_k: int = 1,
                      batch_size: int = DEFAULT_BATCH,
                      on_skip: Callable[[str, str], None] | None = None) -> list[Prediction]:
        """Predict what ``autotl predict`` takes: files and folders (images), a CSV or ``-`` for stdin (text).

        ``on_skip``: as for :meth:`iter_predict`.
        """
        named = self.task.read_inputs([str(s) for s in sources], stdin=stdin)
        return list(self.iter_predict(named, top_k=top_k, batch_size=batch_size, on_skip=on_skip))

    def iter_predict(self, named: Sequence[tuple[str, Any]], *, top_k: int = 1, batch_size: int = DEFAULT_BATCH,
                     on_skip: Callable[[str, str], None] | None = None) -> Iterator[Prediction]:
        """Predictions for ``(name, item)`` pairs, preprocessed a few batches at a time.

        An input the task cannot read (an image that does not decode) raises
        :class:`~autotl.errors.UnreadableInputs`; with ``on_skip`` it is skipped instead:
        ``on_skip(name, reason)`` is called and the other inputs are predicted.
        """
        if top_k < 1:
            raise UsageError(f"top_k must be at least 1, not {top_k}")
        names = [name for name, _ in named]
        skip = None if on_skip is None else (lambda index, reason: on_skip(names[index], reason))
        for kept, split, outputs in self._chunks([item for _, item in named], batch_size, skip):
            decoded = self.target.decode(outputs, split, self.calibration, self.label_names, top_k)
            for index, fields in zip(kept, decoded):
                yield Prediction(names[index], dict(fields))

    def _chunks(self, items: list[Any], batch_size: int,
                on_skip: Callable[[int, str], None] | None = None) -> Iterator[tuple[list[int], TensorSplit, torch.Tensor]]:
        """The indices of ``items`` predicted, a few batches at a time, their split and the network's outputs."""
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, not {batch_size}")
        step = batch_size * CHUNK_BATCHES
        for start in range(0, len(items), step):
            kept = list(range(start, min(start + step, len(items))))
            split = None
            while kept and split is None:
                try:
                    split = self.split([items[i] for i in kept])
                except UnreadableInputs as exc:
                    if on_skip is None or not exc.problems:
                        raise
                    bad = {kept[at]: reason for at, reason in exc.problems}
                    for index, reason in bad.items():
                        on_skip(index, reason)
                    kept = [i for i in kept if i not in bad]
            if kept:
                yield kept, self._decoded(split), self.outputs(split, batch_size)

    @staticmethod
    def _decoded(split: Any) -> TensorSplit:
        """The split the target decodes with (an ensemble's first member's)."""
        return split


class EnsembleBundle(Bundle):
    """A loaded ensemble's bundle (``config.ensemble``): every member a :class:`Bundle` of its own (its network, its
    preprocessing), their outputs combined by the task's target (:meth:`autotl.Target.combine`) with the members'
    weights, then decoded with the ensemble's calibration. ``predict``, ``predict_files``, ``iter_predict`` and
    ``probabilities`` work as a single network's bundle's do.
    """

    def __init__(self, directory: Path, config: BundleConfig, task: Task, members: Sequence[Bundle],
                 weights: Sequence[float], device: torch.device, engine: str = "torch"):
        super().__init__(directory, config, task, None, None, device, engine)
        self.members = list(members)
        self.weights = [float(w) for w in weights]

    def split(self, items: Sequence[Any]) -> list[TensorSplit]:
        """Raw items as each member preprocesses them: one split per member, in the members' order."""
        return [member.split(items) for member in self.members]

    def outputs(self, splits: Sequence[TensorSplit], batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
        """The combined outputs of the members, each on its own split of the same items (:meth:`split`)."""
        if isinstance(splits, TensorSplit) or len(splits) != len(self.members):
            raise UsageError(f"an ensemble's outputs need one split per member ({len(self.members)}), as split() "
                             "makes them: each member preprocesses the inputs its own way")
        return self.target.combine([m.outputs(s, batch_size) for m, s in zip(self.members, splits)], self.weights)

    logits = outputs

    @staticmethod
    def _decoded(split: Any) -> TensorSplit:
        return split[0]


def _joined(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Outputs of consecutive batches as one tensor; per-position outputs (3-D) right-padded with zeros along
    their positions to the widest, as :func:`autotl.inference.predict_outputs` pads them."""
    if not parts:
        return torch.empty(0)
    if parts[0].dim() == 3:
        width = max(p.shape[1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, 0, 0, width - p.shape[1])) for p in parts]
    return torch.cat(list(parts))


def load(path: str | Path, *, device: str | torch.device = "auto", engine: str = "torch",
         registry: "Registry | None" = None) -> Bundle:
    """Load the bundle in folder ``path``: JSON and safetensors only, the weights' checksum verified.

    :param engine: ``torch`` (the PyTorch network) or ``onnx`` (``model.onnx`` on onnxruntime).
    :param registry: the plugins to rebuild it with [default: the installed ones]; the conformance
        kit (:mod:`autotl.testing`) passes a plugin that is not installed yet.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .plugins import get_registry

    directory = Path(path)
    config = BundleConfig.read(directory)
    if engine not in ("torch", "onnx"):
        raise UsageError(f"engine {engine!r} is unknown; use torch or onnx")
    registry = registry or get_registry()
    if config.ensemble is not None:
        return _load_ensemble(directory, config, device, engine, registry)
    task_name, family_name = config.task, config.backbone.family
    if task_name not in registry.tasks:
        raise BundleError(f"the bundle is for task {task_name!r}, which no installed plugin provides; install its "
                          f"plugin (installed tasks: {', '.join(sorted(registry.tasks)) or 'none'})")
    if family_name not in registry.families:
        raise BundleError(f"the bundle's model is of backbone family {family_name!r}, which no installed plugin "
                          f"provides; install its plugin")
    task = registry.tasks[task_name]
    weights = verify_file(directory, WEIGHTS, config.weights.sha256)
    for name, digest in config.files.items():  # what the backbone saved (tokenizer...)
        if name not in (WEIGHTS, ONNX, TORCHSCRIPT):
            verify_file(directory, name, digest)
    backbone = registry.families[family_name].from_bundle(config.backbone.name, config.backbone.config or {},
                                                          directory)
    device = resolve_device(device)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{weights} is not a readable safetensors file ({exc}); export the bundle again") from exc
    try:
        info = config.target_info(task.target.for_labels(list(config.label_names)))
        model = trained_network(backbone, info.width, state, device, per_position=info.per_position)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise BundleError(f"the weights in {weights} do not fit {config.backbone.name!r}: {first}") from exc
    session = None
    if engine == "onnx":
        session = _onnx_session(directory, config, device)
    return Bundle(directory, config, task, backbone, model, device, engine, session)


def _load_ensemble(directory: Path, config: BundleConfig, device: str | torch.device, engine: str,
                   registry: Registry) -> EnsembleBundle:
    """An ensemble's bundle: each member's config.json checked against the ensemble's checksums, then each member
    loaded as a bundle (which checks its own files)."""
    if config.task not in registry.tasks:
        raise BundleError(f"the bundle is for task {config.task!r}, which no installed plugin provides; install its "
                          f"plugin (installed tasks: {', '.join(sorted(registry.tasks)) or 'none'})")
    if config.target is None:
        raise BundleError(f"{directory / CONFIG} holds an ensemble but no target; export the bundle again")
    members = []
    for member in config.ensemble.members:
        folder = Path(member.folder)
        verify_file(directory, (folder / CONFIG).as_posix(), config.files.get((folder / CONFIG).as_posix()))
        loaded = load(directory / folder, device=device, engine=engine, registry=registry)
        if loaded.config.task != config.task or list(loaded.config.label_names) != list(config.label_names):
            raise BundleError(f"member {member.folder} of {directory} is not of the ensemble's task and labels; "
                              "export the bundle again")
        members.append(loaded)
    task = registry.tasks[config.task]
    return EnsembleBundle(directory, config, task, members, [m.weight for m in config.ensemble.members],
                          resolve_device(device), engine)


def _onnx_session(directory: Path, config: BundleConfig, device: torch.device):
    """A session on the bundle's ONNX file, once its checksum is verified."""
    info = config.formats.get("onnx") or {}
    if not info.get("file"):
        raise BundleError(f"{directory} has no ONNX model; export it with --format onnx")
    return onnx_session(verify_file(directory, info["file"], info.get("sha256")), device)


__all__ = ["Bundle", "BundleConfig", "BundleError", "EnsembleBundle", "Prediction", "load", "sha256_file", "verify_file"]
