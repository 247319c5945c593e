"""Reading checkpoint files without unpickling code, and checking that hub weights can be had."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch

from autotl.errors import ModelUnavailableError


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a torch file loaded with ``weights_only=True``."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelUnavailableError(
            f"cannot read weights file {path}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}; "
            "give a .safetensors file or a torch state dict"
        ) from exc
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelUnavailableError(f"weights file {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def hub_source_ready(name: str, timeout: float = 3.0) -> str | None:
    """``None`` when timm can fetch (or has cached) pretrained weights for ``name``; else why not."""
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return "timm has no pretrained weights for it"
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        for filename in ("model.safetensors", "pytorch_model.bin", cfg.hf_hub_filename):
            if filename and isinstance(try_to_load_from_cache(repo, filename), str):
                return None
        endpoint = urlparse(constants.ENDPOINT)
    else:
        endpoint = urlparse(cfg.url)
    host = endpoint.hostname
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host} cannot be reached ({exc.strerror or exc}) and the weights are not in the local cache"
    return None
