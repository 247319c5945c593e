"""Writing files so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[Path], None], *, sync: bool = True) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The file gets the mode the umask gives any new file (``0666 & ~umask``), not the private 0600 of
    :func:`tempfile.mkstemp` (or of safetensors, which writes through a temporary file of its own),
    so that in a shared run folder other users can read it. Whatever ``write`` raises (a full disk,
    its library's own error), the temporary file is removed. ``sync=False`` skips the fsync (the
    frozen-prefix cache: a damaged entry is computed again).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        mode = stat.S_IMODE(tmp.stat().st_mode)  # what creating a file here gives: 0666 less the umask
        write(tmp)
        if stat.S_IMODE(tmp.stat().st_mode) != mode:
            tmp.chmod(mode)
        if sync:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_temp(path: Path) -> Path:
    """A new empty file ``.NAME.XXXXXXXX.tmp`` beside ``path``, created as ``open()`` creates files (umask applies)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.randbits(32):08x}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written atomically; objects with a ``to_dict()`` (:class:`autotl.DataReport`)
    as what it returns, anything else JSON cannot hold as its ``str``."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n",
                                                  encoding="utf-8"))


def _json_default(value: Any) -> Any:
    to_dict = getattr(value, "to_dict", None)
    return to_dict() if callable(to_dict) else str(value)


def save_weights(path: Path, state: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def load_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def read_state_dict(path: Path) -> dict:
    """A state dict from a ``.safetensors`` file or a torch file loaded with ``weights_only=True``.

    Never unpickles code. A checkpoint that wraps its state dict (``state_dict``, ``model``,
    ``state_dict_ema``) is unwrapped, and a ``module.`` prefix (DataParallel) is dropped.

    :raises autotl.errors.ModelUnavailableError: the file cannot be read or holds no tensors.
    """
    import torch

    from .errors import ModelUnavailableError

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            return load_weights(path)
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if exc.__class__.__name__ == "UnpicklingError":  # weights_only refused a Python object: it may run code
            raise ModelUnavailableError(
                f"cannot read weights file {path}: it holds Python objects besides tensors (a pickle that could run "
                "code), which autotl never loads; give a .safetensors file or a torch state dict of tensors only"
            ) from exc
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
        raise ModelUnavailableError(
            f"cannot read weights file {path}: {exc.__class__.__name__}: {first[0][:200] if first else ''}; "
            "give a .safetensors file or a torch state dict"
        ) from exc
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelUnavailableError(f"weights file {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def check_weights_file(path: Path) -> None:
    """Fail early, before any trial, on a weights file that cannot be read.

    A ``.safetensors`` file has its header checked (no tensor is read); a torch file is read as
    :func:`read_state_dict` reads it, with ``weights_only=True``, so a pickle that holds code is refused.

    :raises autotl.errors.ModelUnavailableError: the file is missing, corrupt, or not a state dict.
    """
    from .errors import ModelUnavailableError

    path = Path(path)
    if not path.is_file():
        raise ModelUnavailableError(f"weights file not found: {path}; give the path of a .safetensors file or a "
                                    "torch state dict")
    if path.suffix != ".safetensors":
        read_state_dict(path)
        return
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as exc:
        first = str(exc).strip().splitlines()
        raise ModelUnavailableError(
            f"cannot read weights file {path}: {exc.__class__.__name__}: {first[0][:200] if first else ''}; it is not "
            "a complete safetensors file: save it again or give another file"
        ) from exc
