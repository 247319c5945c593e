"""Running a network on inputs: batches moved to a device, the forward call, a split's outputs.

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
def predict_outputs(model: nn.Module, split: TensorSplit, device: torch.device, batch_size: int = 128) -> torch.Tensor:
    """The float32 outputs for every item of ``split``, in its order, on the CPU (eval mode, no gradients).

    ``(items, width)``; or, for a network giving one output per position, ``(items, positions, width)``,
    each batch right-padded with zeros along the positions to the widest batch's. The task's
    :class:`~autotl.Target` scores and decodes them. A split with a :meth:`~autotl.TensorSplit.search_order`
    (texts, longest first) is run in that order, so that batches hold items of similar size, and its
    outputs are put back in the split's own order: the same items give the same batches, whether the
    search's prepared split or the bundle's split of a file.
    """
    model.eval()
    order = split.search_order()
    run = split if order is None else split.take(order)
    outputs = [forward(model, to_device(x, device)).float().cpu() for x, _ in run.batches(batch_size)]
    if not outputs:
        return torch.empty(0)
    if outputs[0].dim() == 3:
        widest = max(o.shape[1] for o in outputs)
        outputs = [torch.nn.functional.pad(o, (0, 0, 0, widest - o.shape[1])) for o in outputs]
    joined = torch.cat(outputs)
    if order is None:
        return joined
    back = torch.empty_like(joined)
    back[order] = joined
    return back


__all__ = ["forward", "predict_outputs", "to_device"]
