"""Reading checkpoint files without unpickling code, and checking that hub weights can be had."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import timm

from autotl.files import read_state_dict

load_checkpoint = read_state_dict  # the core's reader: safetensors or weights_only torch files


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
        if constants.HF_HUB_OFFLINE:
            return ("HF_HUB_OFFLINE is set and the weights are not in the local Hugging Face cache, so they cannot "
                    "be downloaded")
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
