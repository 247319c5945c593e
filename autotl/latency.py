"""What a trained network costs to run: parameter count and per-item inference latency.

Measured after every completed trial on the network as it would be deployed (a plain network, LoRA
merged, in eval mode, under ``torch.inference_mode``), on real validation inputs, on the search's
device: batch 1, and a batch of :data:`BATCH` items (tiled from the validation inputs when the split
is smaller). A few warm-up runs, then the median of a few timed runs, within a small time budget, so
that it costs well under a second for small models.

On a CPU the measurement runs on :data:`CPU_THREADS` thread(s): one request per worker thread is how
small models are usually served, and it keeps trials comparable when other work shares the machine
(with every core's thread busy elsewhere, a multi-threaded forward pass can take a hundred times
longer than a single-threaded one, which would make latency a measure of the machine's load).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from .base import Backbone, Inputs, TensorSplit
from .inference import forward, to_device
from .network import trained_network

#: the batch size of the "batched" latency.
BATCH = 16
#: warm-up runs, then at most this many timed runs per batch size ...
WARMUP, REPEATS = 2, 15
#: ... stopping early once this many seconds were spent on one batch size (at least three timed runs).
BUDGET_S = 0.3
MIN_REPEATS = 3
#: threads a CPU measurement runs on (see above).
CPU_THREADS = 1


def count_parameters(model: nn.Module) -> int:
    """Every parameter of the network (a merged LoRA network counts as the plain network)."""
    return sum(p.numel() for p in model.parameters())


def sample_inputs(split: TensorSplit, batch_size: int = BATCH) -> Inputs:
    """``batch_size`` real inputs from ``split`` as the model sees them (transformed), tiled if fewer."""
    batch, _ = next(iter(split.batches(batch_size)))
    return _tile(batch, batch_size)


def _tile(inputs: Inputs, n: int) -> Inputs:
    if isinstance(inputs, Mapping):
        return {k: _tile(v, n) for k, v in inputs.items()}
    if inputs.shape[0] >= n:
        return inputs[:n]
    reps = -(-n // inputs.shape[0])
    return inputs.repeat(reps, *([1] * (inputs.dim() - 1)))[:n]


def first(inputs: Inputs, n: int) -> Inputs:
    """The first ``n`` items of a batch."""
    if isinstance(inputs, Mapping):
        return {k: v[:n] for k, v in inputs.items()}
    return inputs[:n]


def time_call(run: Callable[[], Any], *, warmup: int = WARMUP, repeats: int = REPEATS, budget_s: float = BUDGET_S,
              sync: Callable[[], None] | None = None) -> float:
    """Median seconds of ``run()`` after ``warmup`` calls; stops early past ``budget_s``."""
    for _ in range(warmup):
        run()
    if sync:
        sync()
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats and (len(times) < min(MIN_REPEATS, repeats) or spent < budget_s):
        start = time.perf_counter()
        run()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return statistics.median(times)


@contextlib.contextmanager
def cpu_threads(n: int = CPU_THREADS) -> Iterator[int]:
    """Run the block with torch on ``n`` CPU threads; the former number comes back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def measure_model(model: nn.Module, inputs: Inputs, device: torch.device, *, channels_last: bool = False,
                  batch_size: int = BATCH) -> dict[str, Any]:
    """Per-item latency in milliseconds of a PyTorch network at batch 1 and at ``batch_size``."""
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    out: dict[str, Any] = {}
    with torch.inference_mode(), cpu_threads() as threads:
        for key, n in (("batch1_ms", 1), ("batched_ms", batch_size)):
            batch = to_device(first(_tile(inputs, batch_size), n), device)
            seconds = time_call(lambda: forward(model, batch), sync=sync, warmup=WARMUP if n == 1 else 1)
            out[key] = round(seconds * 1000.0 / n, 4)
    out.update({"batch_size": batch_size, "device": _describe_device(device),
                "threads": threads if device.type == "cpu" else None, "engine": "pytorch"})
    return out


def measure_trial(backbone: Backbone, state: Mapping[str, torch.Tensor], width: int, val: TensorSplit,
                  device: torch.device, *, per_position: bool = False) -> dict[str, Any]:
    """Parameter count and latency of a trial's merged network, built as a bundle builds it: ``width`` outputs
    per item, or per position where the task's target has :attr:`~autotl.Target.per_position`.

    Returns the trial user attributes ``inference_params`` and ``latency`` (see :func:`measure_model`).
    """
    model = trained_network(backbone, width, state, per_position=per_position)
    params = count_parameters(model)
    latency = measure_model(model, sample_inputs(val), device, channels_last=backbone.channels_last)
    latency["pass_ms"] = pass_ms(model, val, device)
    return {"inference_params": params, "latency": latency}


#: the validation items :func:`pass_ms` predicts, and its batch size
PASS_ITEMS, PASS_BATCH = 64, 16


@torch.inference_mode()
def pass_ms(model: nn.Module, split: TensorSplit, device: torch.device) -> float:
    """Milliseconds an item of ``split`` takes when a whole split is predicted as the search predicts one
    (:func:`autotl.inference.predict_outputs`, on this process's threads): :data:`PASS_ITEMS` items spread over
    the split's sizes (every k-th in its :meth:`~autotl.TensorSplit.search_order`, so that texts of every length
    count), batched by :data:`PASS_BATCH` in that order. What the scoring of a test split and an ensemble's
    predictions are estimated from (autotl/after_search.py), where the one-thread latency above overstates them."""
    from .inference import predict_outputs

    n = len(split)
    if n == 0:
        return 0.0
    order = split.search_order()
    order = torch.arange(n) if order is None else order
    sample = split.take(order[:: max(1, n // PASS_ITEMS)][:PASS_ITEMS])
    model = model.to(device).eval()
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    started = time.perf_counter()
    predict_outputs(model, sample, device, batch_size=PASS_BATCH)
    if sync:
        sync()
    return round((time.perf_counter() - started) * 1000.0 / len(sample), 4)


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"


__all__ = ["count_parameters", "cpu_threads", "measure_model", "measure_trial", "sample_inputs", "time_call", "BATCH"]
