"""One trial's life: build the network, adapt it, train epoch by epoch, validate, keep the best epoch."""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adapt import Adapted, adapt, merged
from .base import Backbone, Inputs, TensorSplit
from .errors import UsageError


@dataclass
class TrainResult:
    best_accuracy: float
    best_epoch: int
    curve: list[float]
    epoch_seconds: list[float]
    adapted: Adapted
    best_state: dict[str, torch.Tensor] = field(repr=False)
    stopped: str = ""  # why training ended before its last epoch, if it did

    def merged_state(self, backbone: Backbone, num_classes: int) -> dict[str, torch.Tensor]:
        """The best epoch's weights as a plain network's state dict (LoRA merged)."""
        model = self.adapted.model
        model.load_state_dict(self.best_state)
        return {k: v.detach().cpu().clone().contiguous() for k, v in merged(model).state_dict().items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def forward(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    return model(**inputs)


def to_device(inputs: Inputs, device: torch.device) -> Inputs:
    if isinstance(inputs, torch.Tensor):
        return _move(inputs, device)
    return {k: _move(v, device) for k, v in inputs.items()}


def _move(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    tensor = tensor.to(device, non_blocking=True)
    if tensor.dim() == 4:  # images: a no-op for contiguous networks, faster for channels-last ones
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor


@torch.inference_mode()
def predict_logits(model: nn.Module, split: TensorSplit, device: torch.device, batch_size: int = 128) -> torch.Tensor:
    model.eval()
    outputs = [forward(model, to_device(x, device)).float().cpu() for x, _ in split.batches(batch_size)]
    return torch.cat(outputs) if outputs else torch.empty(0)


def accuracy(model: nn.Module, split: TensorSplit, device: torch.device) -> float:
    logits = predict_logits(model, split, device)
    return float((logits.argmax(-1) == split.labels).float().mean()) if len(split) else float("nan")


def train(
    backbone: Backbone,
    params: Mapping[str, Any],
    train_split: TensorSplit,
    val_split: TensorSplit,
    num_classes: int,
    *,
    device: torch.device,
    seed: int,
    pretrained: bool = True,
    on_epoch: Callable[[int, float, float], str | None] | None = None,
    deadline: float | None = None,
) -> TrainResult:
    """Train one configuration and return the epoch with the best validation accuracy.

    ``on_epoch(epoch, train_loss, val_accuracy)`` runs after every epoch. If it returns a reason
    (a non-empty string), training stops there and the result keeps the best epoch so far; an
    exception it raises (Optuna's ``TrialPruned``, say) abandons the training. Past ``deadline``
    (a ``time.time()`` value) the epoch under way is cut short, validated, and training stops.
    """
    seed_everything(seed)
    if params.get("head_init", "zeros") not in ("zeros", "default"):
        raise UsageError(f"head_init must be zeros or default, not {params['head_init']!r}")
    model = backbone.build(num_classes, pretrained=pretrained)
    adapted = adapt(model, backbone, int(params.get("freeze", 0)), int(params.get("lora_rank", 0)),
                    zero_head=pretrained and params.get("head_init", "zeros") == "zeros")
    model = adapted.model.to(device)
    if backbone.channels_last:
        model = model.to(memory_format=torch.channels_last)

    epochs = int(params["epochs"])
    batch_size = int(params["batch_size"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=float(params["lr"]), weight_decay=float(params.get("weight_decay", 0.0)))
    steps_per_epoch = max(1, math.ceil(len(train_split) / batch_size))
    schedule = _warmup_cosine(steps_per_epoch * epochs, steps_per_epoch * float(params.get("warmup_epochs", 0)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    smoothing = float(params.get("label_smoothing", 0.0))
    generator = torch.Generator().manual_seed(seed)

    ema = _ema(model, float(params.get("ema_decay", 0.0)))
    evaluated = ema.module if ema is not None else model
    curve: list[float] = []
    epoch_seconds: list[float] = []
    best_accuracy, best_epoch, best_state, stopped = -1.0, -1, None, ""
    for epoch in range(epochs):
        started = time.perf_counter()
        adapted.train_mode()
        total_loss, seen, cut = 0.0, 0, False
        for inputs, labels in train_split.batches(batch_size, train=True, generator=generator):
            if deadline is not None and seen and time.time() > deadline:
                cut = True
                break
            inputs, labels = to_device(inputs, device), labels.to(device)
            loss = F.cross_entropy(forward(model, inputs), labels, label_smoothing=smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch + 1}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            total_loss += loss.item() * len(labels)
            seen += len(labels)
        val_accuracy = accuracy(evaluated, val_split, device)
        epoch_seconds.append(time.perf_counter() - started)
        curve.append(val_accuracy)
        if val_accuracy > best_accuracy:
            best_accuracy, best_epoch = val_accuracy, epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in evaluated.state_dict().items()})
        if on_epoch is not None:
            stopped = on_epoch(epoch, total_loss / max(seen, 1), val_accuracy) or ""
        if cut and not stopped:
            stopped = f"time budget reached during epoch {epoch + 1} of {epochs}"
        if stopped:
            break
    return TrainResult(best_accuracy, best_epoch, curve, epoch_seconds, adapted, best_state, stopped)


def _ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the weights (and batch-norm statistics), or ``None``.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that the average
    follows the first steps instead of lingering on the pretrained weights.
    """
    if not decay:
        return None
    if not 0.0 < decay < 1.0:
        raise UsageError(f"ema_decay must be 0 (off) or between 0 and 1, not {decay}")

    def average(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return averaged * d + current * (1.0 - d)

    return torch.optim.swa_utils.AveragedModel(model, avg_fn=average, use_buffers=True)


def _warmup_cosine(total_steps: int, warmup_steps: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
