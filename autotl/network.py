"""A trained network rebuilt from its weights: the one way autotl does it.

A trial's kept weights, a bundle's ``model.safetensors`` and a trial's merged state in memory are all
plain state dicts of the network the backbone builds (LoRA merged). :func:`trained_network` builds that
network without pretrained weights (the state replaces all of them), loads the state, and readies it
for inference: evaluation mode, on the device, channels-last where the backbone asks for it.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .base import Backbone


def built(backbone: Backbone, width: int, *, pretrained: bool, per_position: bool = False) -> nn.Module:
    """``backbone``'s network with a new head of ``width`` outputs per item, or per position (word piece) where the
    task's target asks for that (:attr:`autotl.Target.per_position`)."""
    if per_position:
        return backbone.build_per_position(width, pretrained=pretrained)
    return backbone.build(width, pretrained=pretrained)


def trained_network(backbone: Backbone, width: int, state: Mapping[str, torch.Tensor],
                    device: torch.device | None = None, *, per_position: bool = False) -> nn.Module:
    """``backbone``'s network with ``width`` outputs and the weights ``state`` (strict), ready to predict.

    Raises :class:`RuntimeError` (torch's) when ``state`` does not fit the network; callers say what to do.
    """
    model = built(backbone, width, pretrained=False, per_position=per_position)
    model.load_state_dict(state, strict=True)
    if device is not None:
        model.to(device)
    model.eval()
    if backbone.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


__all__ = ["built", "trained_network"]
