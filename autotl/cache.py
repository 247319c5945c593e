"""The frozen-prefix cache: a frozen prefix's outputs, computed once and reused by every epoch and trial.

A trial that freezes the first ``k`` layer groups of its network and trains on inputs without random
augmentation computes the same prefix outputs in every epoch. With a backbone that can cut its
network there (:meth:`autotl.Backbone.split`) the trial computes them once, keeps them here, and
trains only the rest of the network on them; later trials with the same model, ``k`` and inputs
(another learning rate, LoRA rank, epoch count...) reuse them, and a linear probe trains its head
on cached features alone.

Keys: a SHA-256 over the backbone (name, weights source, preprocessing), the prefix's weights
themselves, ``k``, the task, the data's fingerprint, the split, a digest of the split's input tensors (their bytes: whatever the
task's preprocessing did to them, resolution and max length included) and of what its transform
makes of the first samples. A change of data, model or preprocessing changes the key, so stale
features are never served.

Bounds: ``memory_mb`` for the features kept in this process (least recently used dropped first)
and ``disk_mb`` for the folder (``$AUTOTL_CACHE_DIR``, else ``~/.cache/autotl/features``), shared by
the processes of one machine. A trial whose features alone exceed the memory bound runs uncached.
Files are written under a temporary name and renamed, so a reader never sees half a file; a lock
file per key lets one process compute while another waiting for the same key reads its result. A
write that fails (a full disk) leaves no temporary file, and the trial goes on with the features in
memory. Eviction deletes only the cache's own entries: ``XX/<key>.safetensors`` (``XX`` the key's
first two characters) whose header carries the cache's marker and that key; other files in the
folder (a bundle's ``model.safetensors``, say) are never touched.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .base import Backbone, Inputs, TensorSplit
from .inference import forward, to_device
from .recipes import CACHE_DEFAULTS

FORMAT = 1  # bump when what a file holds changes
#: the header metadata that marks a file as an entry this cache wrote (with ``key``: the entry's key).
MARKER = {"autotl_cache": "frozen-prefix outputs"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def default_dir() -> Path:
    if os.environ.get("AUTOTL_CACHE_DIR"):
        return Path(os.environ["AUTOTL_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "autotl" / "features"


@dataclass
class CacheStats:
    hits_memory: int = 0
    hits_disk: int = 0
    computed: int = 0
    compute_s: float = 0.0
    evicted: int = 0
    write_failures: int = 0


class FeatureCache:
    """Frozen-prefix outputs by key, in memory and on disk, each within its bound."""

    def __init__(self, memory_mb: float = CACHE_DEFAULTS["memory_mb"], disk_mb: float = CACHE_DEFAULTS["disk_mb"],
                 directory: str | Path | None = None):
        self.memory_bytes = int(memory_mb * 2**20)
        self.disk_bytes = int(disk_mb * 2**20)
        self.directory = Path(directory) if directory else default_dir()
        self._memory: OrderedDict[str, Inputs] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self.stats = CacheStats()

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> "FeatureCache | None":
        if not settings.get("enabled", True):
            return None
        settings = {**CACHE_DEFAULTS, **settings}  # a parsed recipe's section has them all already
        return cls(settings["memory_mb"], settings["disk_mb"], settings["dir"])

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.memory_bytes

    def holds(self, key: str) -> bool:
        """Whether the features under ``key`` are in memory or on disk (no computing needed)."""
        return key in self._memory or (self.disk_bytes > 0 and self._path(key).is_file())

    def get_or_compute(self, key: str, compute: Callable[[], Inputs]) -> tuple[Inputs, str]:
        """The features under ``key`` and where they came from (``memory``, ``disk`` or ``computed``)."""
        if key in self._memory:
            self._memory.move_to_end(key)
            self.stats.hits_memory += 1
            return self._memory[key], "memory"
        path = self._path(key)
        use_disk = self.disk_bytes > 0
        if use_disk:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                use_disk = False
        if not use_disk:
            return self._computed(key, compute), "computed"
        with open(path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process computes a key; the others wait and read it
            try:
                features = _read(path)
                if features is not None:
                    os.utime(path)  # recently used: evicted last
                    self.stats.hits_disk += 1
                    self._remember(key, features)
                    return features, "disk"
                features = self._computed(key, compute)
                if _nbytes(features) <= self.disk_bytes:
                    problem = _write(path, features, key)
                    if problem:
                        self.stats.write_failures += 1
                        return features, f"computed (not kept on disk: {problem})"
                    self._evict_disk(keep=path)
                return features, "computed"
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _computed(self, key: str, compute: Callable[[], Inputs]) -> Inputs:
        started = time.perf_counter()
        features = compute()
        self.stats.computed += 1
        self.stats.compute_s += time.perf_counter() - started
        self._remember(key, features)
        return features

    def _remember(self, key: str, features: Inputs) -> None:
        size = _nbytes(features)
        if size > self.memory_bytes:
            return
        self._memory[key] = features
        self._sizes[key] = size
        while sum(self._sizes.values()) > self.memory_bytes:
            old, _ = self._memory.popitem(last=False)
            del self._sizes[old]
            self.stats.evicted += 1

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def _evict_disk(self, keep: Path) -> None:
        """Delete the least recently used of the cache's own entries until the folder's are within the bound."""
        files = []
        for path in self.directory.glob("*/*.safetensors"):
            if not _is_entry(path):
                continue  # not written by this cache: never counted, never deleted
            try:
                stat = path.stat()
            except FileNotFoundError:  # another process evicted it
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.disk_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)  # a process reading it keeps its open file
            total -= size
            self.stats.evicted += 1


def _nbytes(features: Inputs) -> int:
    if isinstance(features, torch.Tensor):
        return features.numel() * features.element_size()
    return sum(t.numel() * t.element_size() for t in features.values())


def _read(path: Path) -> Inputs | None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        path.unlink(missing_ok=True)  # unreadable (a disk that filled up): compute it again
        return None
    if set(tensors) == {"features"}:
        return tensors["features"]
    return {key.removeprefix("features."): value for key, value in tensors.items()}


def _write(path: Path, features: Inputs, key: str) -> str | None:
    """Write an entry; ``None``, or why it could not be written (the features then stay in memory only)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from .files import atomic_write

    tensors = ({"features": features} if isinstance(features, torch.Tensor)
               else {f"features.{k}": v for k, v in features.items()})
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    metadata = {"format": str(FORMAT), **MARKER, "key": key}
    try:  # the temporary file is removed whatever fails
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), sync=False)
    except (OSError, SafetensorError) as exc:  # a full or read-only disk (safetensors raises its own error)
        first = str(exc).strip().splitlines()
        return f"{exc.__class__.__name__}: {first[0][:200] if first else ''}".rstrip(": ")
    return None


def _is_entry(path: Path) -> bool:
    """Whether ``path`` is an entry this cache wrote: its folder and its header's marker and key (see the module).

    Entries written before the marker (format 1, metadata ``{"format": "1"}`` alone) count when their
    name is a SHA-256 and they hold nothing but features.
    """
    if path.parent.name != path.stem[:2]:
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata, names = handle.metadata() or {}, list(handle.keys())
    except Exception:  # unreadable: not provably ours
        return False
    if metadata.get("key") == path.stem and all(metadata.get(k) == v for k, v in MARKER.items()):
        return True
    return (metadata == {"format": "1"} and bool(_SHA256.fullmatch(path.stem)) and bool(names)
            and all(n == "features" or n.startswith("features.") for n in names))


# -- keys --------------------------------------------------------------------------------------
_DIGESTS: dict[int, tuple[weakref.ref, str]] = {}


def tensor_digest(inputs: Inputs) -> str:
    """SHA-256 of the tensors' dtypes, shapes and bytes; remembered per tensor object."""
    tensors = [inputs] if isinstance(inputs, torch.Tensor) else [inputs[k] for k in sorted(inputs)]
    parts = []
    for tensor in tensors:
        known = _DIGESTS.get(id(tensor))
        if known is not None and known[0]() is tensor:
            parts.append(known[1])
            continue
        h = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
        digest = h.hexdigest()
        _DIGESTS[id(tensor)] = (weakref.ref(tensor, lambda _, i=id(tensor): _DIGESTS.pop(i, None)), digest)
        parts.append(digest)
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (parameters and buffers, by name): the weights a prefix computes with."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor_digest(tensor).encode())
    return h.hexdigest()


def prefix_key(backbone: Backbone, freeze: int, split: TensorSplit, *, split_name: str, context: dict[str, Any]) -> str:
    """The cache key of ``split``'s prefix outputs (see the module's docstring)."""
    sample = next(iter(split.batches(4)), None)
    transformed = tensor_digest(sample[0]) if sample is not None else ""
    described = {
        "format": FORMAT,
        "backbone": [backbone.family, backbone.name, backbone.describe(), _jsonable(backbone.preprocessing())],
        "freeze": freeze,
        "split": split_name,
        "inputs": tensor_digest(split.inputs),
        "transformed": transformed,
        "n": len(split),
        "torch": torch.__version__,
        **context,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, Mapping):  # a dict, or a typed preprocessing object (autotl.contracts)
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        return type(value).__name__  # a tokenizer object: its name; the input digest covers its output


def prefix_outputs(prefix: torch.nn.Module, split: TensorSplit, device: torch.device, batch_size: int) -> Inputs:
    """``prefix`` over the whole split, one row per sample in the split's order, on the CPU.

    No gradients (these are inputs). A split with a ``search_order()`` (texts, longest first) is
    run in that order, so that batches hold samples of similar size, and put back in its own order.
    Outputs whose second dimension differs from batch to batch (hidden states of texts trimmed to
    each batch's longest) are right-padded with zeros to the longest.
    """
    order = split.search_order()
    run = split if order is None else split.take(order)
    chunks: list[Inputs] = []
    with torch.no_grad():  # not inference_mode: the rest of the network trains on these tensors
        for inputs, _ in run.batches(batch_size):
            out = forward(prefix, to_device(inputs, device))
            chunks.append(_float(out).cpu().contiguous() if isinstance(out, torch.Tensor)
                          else {k: _float(v).cpu().contiguous() for k, v in out.items()})
    if not chunks:
        raise ValueError("an empty split has no prefix outputs")
    if isinstance(chunks[0], torch.Tensor):
        outputs: Inputs = _cat(chunks)
    else:
        outputs = {k: _cat([c[k] for c in chunks]) for k in chunks[0]}
    if run is split:
        return outputs
    back = torch.empty_like(order)
    back[order] = torch.arange(len(order))
    return outputs[back] if isinstance(outputs, torch.Tensor) else {k: v[back] for k, v in outputs.items()}


def _float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor  # an attention mask stays integer


def _cat(chunks: list[torch.Tensor]) -> torch.Tensor:
    if chunks[0].dim() >= 2 and len({c.shape[1] for c in chunks}) > 1:
        width = max(c.shape[1] for c in chunks)
        chunks = [torch.nn.functional.pad(c, (0, 0) * (c.dim() - 2) + (0, width - c.shape[1])) for c in chunks]
    return torch.cat(chunks)


__all__ = ["CACHE_DEFAULTS", "FeatureCache", "default_dir", "module_digest", "prefix_key", "prefix_outputs",
           "tensor_digest"]
