"""The one place ``--device`` (and ``device=`` of the Python API) becomes a :class:`torch.device`."""

from __future__ import annotations

import torch

from .errors import UsageError


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (CUDA when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` as a device.

    A device given as a :class:`torch.device` is returned as it is. A CUDA device on a machine
    without one, or a name torch does not know, is a :class:`~autotl.errors.UsageError` that says
    what to give instead.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available here; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device!r} is not a device ({exc}); use auto, cpu, cuda or cuda:N") from exc


__all__ = ["resolve_device"]
