"""How a pretrained network is adapted: the freeze depth and LoRA adapters.

``freeze = k`` freezes the backbone's first ``k`` layer groups (their batch-norm statistics too).
``lora_rank = r > 0`` leaves the base weights of the remaining groups frozen as well and trains
rank-``r`` LoRA adapters on their LoRA targets instead; the head always trains in full.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from .base import Backbone
from .errors import UsageError
from .utils import is_under


@dataclass
class Adapted:
    """A network ready to train, and what in it trains."""

    model: nn.Module
    n_groups: int
    frozen_modules: list[nn.Module]
    trainable_params: int
    total_params: int
    lora_modules: int

    def train_mode(self) -> None:
        """``model.train()``, except that frozen groups keep their batch-norm statistics."""
        self.model.train()
        for module in self.frozen_modules:
            module.eval()


def adapt(model: nn.Module, backbone: Backbone, freeze: int, lora_rank: int = 0, zero_head: bool = False,
          head_bias: Sequence[float] | None = None) -> Adapted:
    """Freeze the first ``freeze`` layer groups, add LoRA adapters of ``lora_rank`` to the rest.

    ``zero_head`` starts the new head at zero, so the first steps see a uniform prediction instead of
    large random logits that disturb the pretrained weights before the head has learnt anything.
    ``head_bias`` (one number per output, :meth:`autotl.Target.initial_bias`) then sets the head's last
    bias vector of that length, where it has one.
    """
    groups = backbone.layer_groups(model)
    n = len(groups)
    if not 0 <= freeze <= n - 1:
        raise UsageError(f"freeze={freeze} is out of range for {backbone.name}: it has {n} layer groups, so 0..{n - 1}")
    modules = dict(model.named_modules())
    if zero_head:
        for name in groups[-1]:
            for p in modules[name].parameters():
                nn.init.zeros_(p)
    if head_bias is not None:
        _set_bias(model, groups[-1], head_bias)
    frozen_names = [name for group in groups[:freeze] for name in group]
    frozen_modules = [modules[name] for name in frozen_names]
    for module in frozen_modules:
        for p in module.parameters():
            p.requires_grad_(False)

    lora_modules = 0
    if lora_rank and lora_rank > 0:
        open_names = [name for group in groups[freeze:-1] for name in group]
        targets = [t for t in backbone.lora_targets(model) if is_under(t, open_names)]
        if not targets:
            raise UsageError(
                f"LoRA has nothing to adapt in {backbone.name} with freeze={freeze}: "
                "no LoRA target lies in the unfrozen groups"
            )
        model = _apply_lora(model, targets, head=groups[-1], rank=int(lora_rank))
        lora_modules = len(targets)

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Adapted(model, n, frozen_modules, trainable, total, lora_modules)


def _set_bias(model: nn.Module, head: Sequence[str], bias: Sequence[float]) -> None:
    """Copy ``bias`` into the last bias vector of the ``head`` modules with one number per output, if any."""
    found = None
    for name, parameter in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if leaf == "bias" and parameter.dim() == 1 and parameter.numel() == len(bias) and is_under(owner, head):
            found = parameter
    if found is not None:
        with torch.no_grad():
            found.copy_(torch.tensor(list(bias), dtype=found.dtype))


def _apply_lora(model: nn.Module, targets: list[str], head: list[str], rank: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        target_modules="^(" + "|".join(re.escape(t) for t in targets) + ")$",
        modules_to_save=list(head),
    )
    return get_peft_model(model, config)


def merged(model: nn.Module) -> nn.Module:
    """The plain network: LoRA adapters merged into the base weights (a no-op without LoRA)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model
