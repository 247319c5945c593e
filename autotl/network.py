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


def trained_network(backbone: Backbone, num_classes: int, state: Mapping[str, torch.Tensor],
                    device: torch.device | None = None) -> nn.Module:
    """``backbone``'s network with ``num_classes`` outputs and the weights ``state`` (strict), ready to predict.

    Raises :class:`RuntimeError` (torch's) when ``state`` does not fit the network; callers say what to do.
    """
    model = backbone.build(num_classes, pretrained=False)
    model.load_state_dict(state, strict=True)
    if device is not None:
        model.to(device)
    model.eval()
    if backbone.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


__all__ = ["trained_network"]
