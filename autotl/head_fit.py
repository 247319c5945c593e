"""The converged-head fit: a network's head fitted to convergence on frozen features, by full-batch L-BFGS.

What a trial with ``head_fit: converged`` trains (:func:`autotl.training.train` hands it here): every layer
group but the head is frozen, the head's input is computed once over the training split, without random
augmentation, and the head alone is fitted to the minimum of

    mean over the n training items of the target's own loss  +  |W|^2 / (2 C n)

by L-BFGS over the whole split at once (strong-Wolfe line search, stopped by its gradient and change
tolerances or after :data:`MAX_ITERATIONS`). ``W`` are the head's weights (its parameters of two
dimensions or more; biases are not penalised) and ``C`` is the trial's ``head_fit_c``. Multiplied by
``C n`` this is scikit-learn's objective for its L2-penalised linear models (``C`` times the summed loss
plus half the squared weights), so for a target whose loss is the mean of each item's negative
log-likelihood the fit reaches scikit-learn's optimum with the same ``C`` on the same features. The
loss of a linear head is convex in its weights: wherever the search starts, this trial is the sound
baseline the frozen features allow, reached in seconds.

The head's input is captured with a forward pre-hook on the head group's one module with parameters
(:meth:`autotl.Backbone.layer_groups`' last group), and used where the network's outputs are exactly that
module's outputs on it (checked on every batch); otherwise the fit runs the network's unfrozen part on
every L-BFGS step, batch by batch (slower, the same optimum).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .base import TensorSplit
from .inference import forward, to_device

#: the most L-BFGS iterations a fit takes (each one a full pass over the features, and a few more for its
#: line search); a fit on a few thousand items of a few thousand features converges in far fewer.
MAX_ITERATIONS = 1000
#: the L-BFGS stopping tolerances: on the largest gradient entry, and on the change of the objective or the weights.
TOLERANCE_GRAD = 1e-7
TOLERANCE_CHANGE = 1e-10

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def head_module(model: nn.Module, head: Sequence[str]) -> nn.Module | None:
    """The module of the head group ``head`` (names of ``model``'s modules) holding its parameters, if only one does."""
    modules = dict(model.named_modules())
    holding = [modules[name] for name in head if name in modules and next(modules[name].parameters(), None) is not None]
    return holding[0] if len(holding) == 1 else None


@torch.no_grad()
def head_inputs(runs: nn.Module, head: nn.Module, split: TensorSplit, device: torch.device,
                batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """What ``head`` receives when ``runs`` (the network, or its rest after a cached prefix) runs over ``split``,
    and the split's labels, in the order of its un-augmented batches.

    ``None`` where the head's input cannot stand for the network: the head is not called with one tensor, or the
    network's outputs are not the head's outputs on that tensor (something follows the head). The check runs
    with the head's weights set to random numbers, so that a new head at zero cannot hide what follows it; they
    are put back after.
    """
    seen: list[Any] = []

    def keep(module: nn.Module, args: tuple) -> None:
        seen.append(args[0] if len(args) == 1 and isinstance(args[0], torch.Tensor) else None)

    runs.eval()
    chunks, labels = [], []
    saved = [p.detach().clone() for p in head.parameters()]
    generator = torch.Generator().manual_seed(0)
    for p in head.parameters():
        p.copy_(0.1 * torch.randn(p.shape, generator=generator).to(p))
    handle = head.register_forward_pre_hook(keep)
    try:
        for inputs, batch_labels in split.batches(batch_size):
            seen.clear()
            out = forward(runs, to_device(inputs, device))
            if len(seen) != 1 or seen[0] is None:
                return None
            captured = seen[0].detach()
            if not torch.allclose(head(captured).float(), out.float(), rtol=1e-4, atol=1e-5):
                return None
            chunks.append(captured.float())
            labels.append(batch_labels)
    finally:
        handle.remove()
        for p, value in zip(head.parameters(), saved):
            p.copy_(value)
    if not chunks or len({tuple(c.shape[2:]) for c in chunks}) > 1 or len({tuple(t.shape[1:]) for t in labels}) > 1:
        return None
    if chunks[0].dim() >= 3 and len({c.shape[1] for c in chunks}) > 1:  # positions trimmed to each batch's longest
        width = max(c.shape[1] for c in chunks)
        chunks = [torch.nn.functional.pad(c, (0, 0) * (c.dim() - 2) + (0, width - c.shape[1])) for c in chunks]
    return torch.cat(chunks), torch.cat(labels).to(device)


def fit(run: Callable[[Any], torch.Tensor], batches: list[tuple[Any, torch.Tensor]], parameters: list[nn.Parameter],
        loss: Loss, c: float, items: int, *, max_iterations: int = MAX_ITERATIONS) -> dict[str, Any]:
    """Fit ``parameters`` to the minimum of the items' mean ``loss`` plus ``|W|^2 / (2 c items)`` by L-BFGS.

    ``run(inputs)`` gives a batch's outputs; ``batches`` are ``(inputs, labels)`` on the device, together
    ``items`` items, each batch's loss weighted by its share of them (one batch: the plain mean). ``W``: the
    parameters of two dimensions or more. Returns what the fit did: ``iterations``, the final ``objective`` and
    ``loss``, the largest ``gradient`` entry, whether it ``converged`` (stopped by its tolerances, not by
    ``max_iterations``), ``C`` and ``seconds``.
    """
    started = time.perf_counter()
    penalised = [p for p in parameters if p.dim() >= 2]
    optimizer = torch.optim.LBFGS(parameters, lr=1.0, max_iter=max_iterations, max_eval=max_iterations * 5 // 4,
                                  tolerance_grad=TOLERANCE_GRAD, tolerance_change=TOLERANCE_CHANGE, history_size=20,
                                  line_search_fn="strong_wolfe")
    last = {"loss": float("nan")}

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=False)
        total = 0.0
        for inputs, labels in batches:
            value = loss(run(inputs), labels) * (len(labels) / items)
            if not torch.isfinite(value):
                raise FloatingPointError(f"the converged head fit's loss became {value.item()}")
            value.backward()
            total += value.item()
        penalty = sum((p.pow(2).sum() for p in penalised), torch.zeros((), device=parameters[0].device))
        penalty = penalty / (2.0 * c * items)
        penalty.backward()
        last["loss"] = total
        return torch.tensor(total + penalty.item())

    optimizer.step(closure)
    objective = float(closure())  # the gradient at the weights the fit ends with
    gradient = max(float(p.grad.abs().max()) for p in parameters if p.grad is not None)
    iterations = int(optimizer.state[parameters[0]].get("n_iter", 0))
    optimizer.zero_grad(set_to_none=True)
    return {"iterations": iterations, "objective": round(objective, 6), "loss": round(last["loss"], 6),
            "gradient": float(f"{gradient:.3g}"), "converged": iterations < max_iterations, "C": float(c),
            "items": int(items), "seconds": round(time.perf_counter() - started, 3)}


__all__ = ["MAX_ITERATIONS", "TOLERANCE_CHANGE", "TOLERANCE_GRAD", "fit", "head_inputs", "head_module"]
