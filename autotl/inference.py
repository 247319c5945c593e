"""Running a network on inputs: batches moved to a device, the forward call, a split's logits and accuracy.

Training (autotl/training.py), the frozen-prefix cache (autotl/cache.py), latency measurement,
the bundle's predictions and the conformance kit all run networks through these, so a bundle
predicts exactly what the search scored.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Inputs, TensorSplit


def forward(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    """``model`` on one batch: a tensor (images) as the argument, a dict (texts) as keyword arguments."""
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    return model(**inputs)


def to_device(inputs: Inputs, device: torch.device) -> Inputs:
    """A batch of inputs on ``device``; image batches in channels-last memory format."""
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
    """The float32 logits of every sample of ``split``, in its order, on the CPU (eval mode, no gradients)."""
    model.eval()
    outputs = [forward(model, to_device(x, device)).float().cpu() for x, _ in split.batches(batch_size)]
    return torch.cat(outputs) if outputs else torch.empty(0)


@torch.inference_mode()
def predict_outputs(model: nn.Module, split: TensorSplit, device: torch.device, batch_size: int = 128) -> torch.Tensor:
    """SHIM (helper EXPORT, replaced by TRAIN's at merge): the float32 outputs of every item of ``split``, on the
    CPU; per-position outputs right-padded with zeros along dim 1 to the widest batch."""
    model.eval()
    outputs = [forward(model, to_device(x, device)).float().cpu() for x, _ in split.batches(batch_size)]
    if not outputs:
        return torch.empty(0)
    if outputs[0].dim() == 3:
        width = max(o.shape[1] for o in outputs)
        outputs = [torch.nn.functional.pad(o, (0, 0, 0, width - o.shape[1])) for o in outputs]
    return torch.cat(outputs)


def accuracy(model: nn.Module, split: TensorSplit, device: torch.device) -> float:
    """The share of ``split`` whose top logit is its label (``nan`` for an empty split)."""
    logits = predict_logits(model, split, device)
    return float((logits.argmax(-1) == split.labels).float().mean()) if len(split) else float("nan")


__all__ = ["accuracy", "forward", "predict_logits", "predict_outputs", "to_device"]
