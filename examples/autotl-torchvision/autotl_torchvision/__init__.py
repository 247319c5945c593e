"""An autotl backbone family for torchvision's own model definitions: a worked third-party plugin.

Models are named ``torchvision/<architecture>`` (``torchvision/resnet18``, ``torchvision/mobilenet_v3_small``,
...: :data:`ARCHITECTURES`). The prefix keeps them apart from timm's models of the same names.

Weights, in this order:

1. ``--weights torchvision/resnet18=FILE``: a local checkpoint (safetensors, or a torch state dict such
   as ``torchvision.models.resnet18(weights="DEFAULT").state_dict()`` saved where the network is
   reachable). Its 1000-class head is dropped; the rest must fit.
2. torchvision's own file in the torch hub cache (``torch.hub.get_dir()/checkpoints``), where an
   earlier ``weights="DEFAULT"`` left it. Only these models are in the default zoo.
3. With ``AUTOTL_TORCHVISION_RANDOM_WEIGHTS=1``: random weights, announced loudly. Transfer learning
   from random weights is no transfer at all; use it to try the plugin out, never to compare models.

Nothing is ever downloaded.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
import torchvision
from torch import nn
from torchvision import models

from autotl import Backbone, BackboneFamily, ImagePreprocessing, hookimpl
from autotl.errors import ModelUnavailableError
from autotl.files import read_state_dict
from autotl.utils import is_under, load_without_head

PREFIX = "torchvision/"
RANDOM_ENV = "AUTOTL_TORCHVISION_RANDOM_WEIGHTS"
#: architectures whose layer groups this plugin knows, and their interpolation (torchvision's transforms).
ARCHITECTURES = {
    "resnet18": "bilinear", "resnet34": "bilinear", "resnet50": "bilinear",
    "mobilenet_v2": "bilinear", "mobilenet_v3_small": "bilinear", "mobilenet_v3_large": "bilinear",
    "efficientnet_b0": "bicubic", "efficientnet_b1": "bicubic",
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@hookimpl
def register_backbone_families(register):
    register(TorchvisionFamily(allow_random=os.environ.get(RANDOM_ENV, "") == "1"))


class TorchvisionFamily(BackboneFamily):
    name = "torchvision"
    modality = "image"

    def __init__(self, allow_random: bool = False):
        self.allow_random = allow_random

    def default_zoo(self) -> list[str]:
        return [PREFIX + arch for arch in ARCHITECTURES if cached_checkpoint(arch) is not None]

    def owns(self, name: str) -> bool:
        return name.startswith(PREFIX)

    def get(self, name: str, weights: str | None = None) -> Backbone:
        arch = architecture(name)
        if weights is not None:
            path = Path(weights)
            if not path.is_file():
                raise ModelUnavailableError(f"weights file for {name!r} not found: {path}")
            return TorchvisionBackbone(name, ("file", str(path)))
        cached = cached_checkpoint(arch)
        if cached is not None:
            return TorchvisionBackbone(name, ("file", str(cached)))
        if self.allow_random:
            warnings.warn(f"{name}: RANDOM WEIGHTS: no pretrained weights, nothing transfers; "
                          "for trying the plugin out only", stacklevel=2)
            return TorchvisionBackbone(name, ("random", None))
        raise ModelUnavailableError(
            f"no weights for {name!r}: torchvision's file {_file_name(arch)} is not in {_cache_dir()} and autotl "
            f"never downloads; give --weights {name}=FILE (a state dict saved from torchvision.models.{arch}"
            f"(weights='DEFAULT')), or set {RANDOM_ENV}=1 to try it with random weights"
        )

    def from_bundle(self, name: str, config: Mapping[str, Any], directory: Path) -> Backbone:
        """torchvision builds the network from its architecture name alone: nothing to read but the name."""
        arch = str(config.get("architecture") or "")
        if arch not in ARCHITECTURES or not hasattr(models, arch):
            raise ModelUnavailableError(f"the bundle's architecture {arch!r} is unknown to this autotl-torchvision "
                                        f"and torchvision {torchvision.__version__}; install the versions that "
                                        f"wrote it (torchvision {config.get('torchvision_version', '?')})")
        return TorchvisionBackbone(PREFIX + arch, ("bundle", None))


class TorchvisionBackbone(Backbone):
    family = "torchvision"
    modality = "image"

    def __init__(self, name: str, source: tuple[str, str | None]):
        self.name = name
        self.arch = architecture(name)
        self.source = source

    def build(self, num_classes: int, pretrained: bool = True) -> nn.Module:
        kind, where = self.source
        if pretrained and kind == "bundle":
            raise ModelUnavailableError(f"{self.name!r} was rebuilt from a bundle: it has no pretrained weights")
        model = models.get_model(self.arch, weights=None, num_classes=num_classes)
        if pretrained and kind == "file":
            load_without_head(model, read_state_dict(Path(where)), self.head_names(model), model_name=repr(self.name),
                              origin=where, hint=f"give a checkpoint of torchvision.models.{self.arch}")
        return model

    def head_names(self, model: nn.Module) -> list[str]:
        if hasattr(model, "fc"):
            return ["fc"]
        last = len(model.classifier) - 1
        return [f"classifier.{last}"]

    def layer_groups(self, model: nn.Module) -> list[list[str]]:
        if hasattr(model, "fc"):  # ResNets: the stem, the four stages, the head
            return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"], ["fc"]]
        # MobileNets and EfficientNets: each block of `features`, the pre-logits layers, the head
        groups = [[f"features.{i}"] for i, block in enumerate(model.features) if _has_params(block)]
        head = self.head_names(model)
        pre_logits = [f"classifier.{i}" for i, layer in enumerate(model.classifier)
                      if _has_params(layer) and f"classifier.{i}" not in head]
        if pre_logits:
            groups.append(pre_logits)
        return groups + [head]

    def lora_targets(self, model: nn.Module) -> list[str]:
        head = self.head_names(model)
        return [name for name, module in model.named_modules()
                if not is_under(name, head)
                and (isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1))]

    def preprocessing(self) -> ImagePreprocessing:
        return ImagePreprocessing(input_size=224, mean=MEAN, std=STD, interpolation=ARCHITECTURES[self.arch])

    def describe(self) -> str:
        kind, where = self.source
        origin = {"file": f"weights from {where}", "random": "RANDOM weights, nothing pretrained",
                  "bundle": "weights from an autotl bundle"}[kind]
        return f"{self.name} (torchvision {torchvision.__version__}; {origin})"

    def bundle_files(self, directory: Path) -> dict[str, Any]:
        return {"architecture": self.arch, "torchvision_version": torchvision.__version__,
                "pretrained_source": self.describe()}


def architecture(name: str) -> str:
    arch = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if arch not in ARCHITECTURES:
        raise ModelUnavailableError(f"autotl-torchvision does not know {name!r}; it knows "
                                    + ", ".join(PREFIX + a for a in ARCHITECTURES))
    return arch


def _cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _file_name(arch: str) -> str:
    url = models.get_model_weights(arch).DEFAULT.url
    return url.rsplit("/", 1)[-1]


def cached_checkpoint(arch: str) -> Path | None:
    """torchvision's weights file for ``arch`` in the torch hub cache, if an earlier download left it there."""
    path = _cache_dir() / _file_name(arch)
    return path if path.is_file() else None


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


__all__ = ["ARCHITECTURES", "PREFIX", "TorchvisionBackbone", "TorchvisionFamily", "register_backbone_families"]
