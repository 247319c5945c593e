"""One trial's life: build the network, adapt it, train epoch by epoch, validate, keep the best epoch."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .adapt import Adapted, adapt, merged
from .base import Backbone, Inputs, Target, TensorSplit, index_inputs
from .cache import FeatureCache, module_digest, prefix_key, prefix_outputs
from .errors import UsageError
from .head_fit import fit as fit_head, head_inputs, head_module
from .inference import forward, predict_outputs, to_device
from .network import built
from .params import TrainingParams


@dataclass
class TrainResult:
    """What training one configuration gave: its best epoch (by the metric trained for) and how it got there."""

    best_value: float  # the metric at the best epoch (``nan`` when no epoch scored)
    best_epoch: int  # 0-based; -1 when no epoch scored
    curve: list[float]  # the metric after each epoch
    #: every metric of the target at the best epoch (:meth:`autotl.Target.score`)
    best_metrics: dict[str, float]
    #: the target's calibration: fit on the training labels, tuned on the best epoch's validation outputs
    calibration: dict[str, Any]
    epoch_seconds: list[float]
    adapted: Adapted
    best_state: dict[str, torch.Tensor] = field(repr=False)
    stopped: str = ""  # why training ended before its last epoch, if it did
    #: where the wall time went, in seconds: ``data`` (batches fetched, transformed, moved),
    #: ``step`` (forward, loss, backward, optimizer), ``eval`` (validation), ``prefix`` (computing
    #: frozen-prefix outputs for the cache), ``setup`` (building and adapting the network)
    timing: dict[str, float] = field(default_factory=dict)
    #: how the frozen-prefix cache served this trial: ``{"train": "computed", "val": "disk"}``, or
    #: ``{"skipped": reason}``; empty when the trial had nothing to cache
    cache: dict[str, str] = field(default_factory=dict)
    #: the last epoch's weights of the network validated (its moving average where there is one), on the CPU:
    #: what a training that no held-out split chose an epoch for keeps (autotl/selection.py)
    last_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    #: how a converged head fit went (``head_fit: converged``, autotl/head_fit.py): iterations, objective,
    #: gradient, converged, C, items, seconds, and ``through`` (``head``: on its captured input, or ``network``);
    #: empty for the training loop
    head_fit: dict[str, Any] = field(default_factory=dict)
    #: why the trial trained on a random part of its training split, if it did: the frozen pass over all of it would
    #: have ended past the deadline (:func:`_within_deadline`)
    subsample: str = ""
    #: the best epoch's outputs on the validation split, on the CPU: what an ensemble of the trials is selected on
    #: (autotl/after_search.py) without running the network again
    val_outputs: torch.Tensor | None = field(default=None, repr=False)

    def merged_state(self, backbone: Backbone, *, last: bool = False) -> dict[str, torch.Tensor]:
        """The best epoch's weights (with ``last``: the last epoch's) as a plain network's state dict (LoRA merged)."""
        model = self.adapted.model
        model.load_state_dict(self.last_state if last else self.best_state)
        return {k: v.detach().cpu().clone().contiguous() for k, v in merged(model).state_dict().items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(
    backbone: Backbone,
    params: Mapping[str, Any],
    train_split: TensorSplit,
    val_split: TensorSplit,
    target: Target,
    width: int,
    *,
    metric: str | None = None,
    device: torch.device,
    seed: int,
    pretrained: bool = True,
    on_epoch: Callable[[int, float, float], str | None] | None = None,
    deadline: float | None = None,
    cache: FeatureCache | None = None,
    cache_context: Mapping[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
    calibration: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train one configuration and return the epoch with the best validation ``metric``.

    The task's ``target`` decides everything task-specific (:class:`autotl.Target`): the network
    has ``width`` outputs per item (or per position, :attr:`~autotl.Target.per_position`); the loss
    is ``target.loss``, with the ``calibration`` fit on the training labels (``None``:
    ``target.fit(train_split.labels)``); after each epoch the validation outputs tune it
    (``target.tune``) and are scored (``target.score``); the best epoch is the best ``metric``
    (``None``: the target's primary) in its direction (``target.best_epoch``).

    ``on_epoch(epoch, train_loss, value)`` runs after every epoch with the epoch's ``metric``. If it returns a reason
    (a non-empty string), training stops there and the result keeps the best epoch so far; an
    exception it raises (Optuna's ``TrialPruned``, say) abandons the training. Past ``deadline``
    (a ``time.time()`` value) the epoch under way is cut short, validated, and training stops.

    With a ``cache`` (autotl/cache.py), a trial whose first ``freeze`` groups are frozen and whose
    training inputs are not randomly augmented trains the rest of the network on cached prefix
    outputs; ``cache_context`` (the task's name, the data's fingerprint) goes into the cache keys.
    ``stats``, a dict, receives ``timing`` and ``cache`` (as on the result) while training runs.
    On CUDA the training forward pass runs in bfloat16 autocast where the card supports it
    (``precision: fp32`` in the recipe's ``fixed`` section turns it off); validation stays float32,
    so the score recorded is what the exported float32 network gives.

    ``head_fit: converged`` in ``params`` fits the head alone to convergence instead (:func:`_converged`,
    autotl/head_fit.py): the result is one "epoch", the fit, validated and kept like any other.
    """
    setup_started = time.perf_counter()
    seed_everything(seed)
    settings = TrainingParams.from_params(params)
    metric = metric or target.primary
    fitted = dict(target.fit(train_split.labels) if calibration is None else calibration)
    if settings.head_fit == "converged":
        return _converged(backbone, params, settings, train_split, val_split, target, width, metric, device,
                          pretrained, on_epoch, cache, cache_context, stats, fitted, setup_started, deadline)
    adapted = _adapted(backbone, settings, width, target.per_position, pretrained, device,
                       target.initial_bias(fitted))
    model = adapted.model
    subsample = ""
    if cache is not None and settings.freeze and not train_split.random_augmentation:  # a frozen prefix to compute
        train_split, subsample = _within_deadline(backbone, model, settings.freeze, train_split, val_split, device,
                                                  cache, cache_context, deadline, share=PREFIX_SHARE, prefix=True)
    autocast = _autocast(device, settings.precision)
    optimizer, scheduler = _optimizer(model, settings, len(train_split))
    ema = _ema(model, settings.ema_decay)
    evaluated = ema.module if ema is not None else model
    timing = {"setup": time.perf_counter() - setup_started, "prefix": 0.0, "data": 0.0, "step": 0.0, "eval": 0.0}
    runs, run_evaluated, train_split, val_split, cache_info = _through_cache(
        backbone, model, evaluated, settings, train_split, val_split, device, cache, cache_context, timing)
    if stats is not None:  # filled as training goes, so that a trial that is pruned or fails still has them
        stats.update(timing=timing, cache=cache_info)
    stepper = _Stepper(model, runs, optimizer, scheduler, autocast, ema, target, fitted, params, device)
    progress = _Progress(evaluated, target, metric, calibration=dict(fitted))
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(settings.epochs):
        started = time.perf_counter()
        adapted.train_mode()
        loss, cut = _train_epoch(stepper, train_split, settings.batch_size, generator, epoch, deadline, timing)
        metrics, tuned, outputs = _evaluate(run_evaluated, val_split, target, fitted, device, timing)
        progress.keep(epoch, metrics, tuned, time.perf_counter() - started, outputs)
        stopped = (on_epoch(epoch, loss, metrics[metric]) or "") if on_epoch is not None else ""
        if cut and not stopped:
            stopped = f"time budget reached during epoch {epoch + 1} of {settings.epochs}"
        if stopped:
            progress.stopped = stopped
            break
    result = progress.result(adapted, timing, cache_info)
    result.subsample = subsample
    result.last_state = {k: v.detach().cpu().clone() for k, v in evaluated.state_dict().items()}
    return result


def _converged(backbone: Backbone, params: Mapping[str, Any], settings: TrainingParams, train_split: TensorSplit,
               val_split: TensorSplit, target: Target, width: int, metric: str, device: torch.device, pretrained: bool,
               on_epoch: Callable[[int, float, float], str | None] | None, cache: FeatureCache | None,
               cache_context: Mapping[str, Any] | None, stats: dict[str, Any] | None, fitted: dict[str, Any],
               setup_started: float, deadline: float | None = None) -> TrainResult:
    """``head_fit: converged``: every group but the head frozen, the head fitted to convergence (autotl/head_fit.py).

    The frozen part runs once over the training split's un-augmented inputs (through the frozen-prefix cache
    where it serves: the prefix outputs a linear probe's trials share); the head is fitted on what it receives
    there, minimising the target's own loss (the parameters the target declares at their defaults) plus
    the L2 penalty of ``head_fit_c``; then the network is validated and kept like any trial's best epoch. The
    learning rate, epochs, batch size, weight averaging and augmentation of ``params`` do not apply.

    With a ``deadline`` the frozen pass is fitted to it (:func:`_within_deadline`): where the pass over the whole
    training split and the validation split would take more than half the time left, the head is fitted on a random
    part of the training split that takes half (recorded in ``head_fit["subsample"]``).
    """
    if settings.lora_rank:
        raise UsageError(f"head_fit: converged fits the head alone: lora_rank must be 0, not {settings.lora_rank}")
    adapted = _adapted(backbone, settings, width, target.per_position, pretrained, device, target.initial_bias(fitted))
    if settings.freeze != adapted.n_groups - 1:
        raise UsageError(f"head_fit: converged fits the head alone: freeze must be {adapted.n_groups - 1} for "
                         f"{backbone.name} (its layer groups but the head), not {settings.freeze}")
    model = adapted.model
    model.eval()  # nothing runs in training mode: the head's input is the frozen network's, as validation sees it
    train_split, subsample = _within_deadline(backbone, model, settings.freeze, train_split, val_split, device, cache,
                                              cache_context, deadline, share=PREFIX_SHARE)
    timing = {"setup": time.perf_counter() - setup_started, "prefix": 0.0, "data": 0.0, "step": 0.0, "eval": 0.0}
    runs, _, fit_split, val_split, cache_info = _through_cache(backbone, model, model, settings, train_split,
                                                               val_split, device, cache, cache_context, timing,
                                                               unaugmented=True)
    if stats is not None:
        stats.update(timing=timing, cache=cache_info)
    loss_params = {**params, **{p.name: p.default for p in getattr(target, "parameters", ()) if p.default is not None}}

    def loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return target.loss(outputs.float(), labels, fitted, loss_params)

    batch_size = max(settings.batch_size, 64)
    head = head_module(model, backbone.layer_groups(model)[-1])
    started = time.perf_counter()
    captured = None if head is None else head_inputs(runs, head, fit_split, device, batch_size)
    timing["prefix"] += time.perf_counter() - started
    trainable = [p for p in model.parameters() if p.requires_grad]
    started = time.perf_counter()
    if captured is not None:
        info = fit_head(head, [captured], trainable, loss, settings.head_fit_c, len(captured[1]))
        info.update(through="head", features=list(captured[0].shape[1:]))
    else:  # the network's unfrozen part on every step, batch by batch
        batches = [(to_device(inputs, device), labels.to(device)) for inputs, labels in fit_split.batches(batch_size)]
        info = fit_head(lambda inputs: forward(runs, inputs), batches, trainable, loss, settings.head_fit_c,
                        len(fit_split))
        info.update(through="network")
    timing["step"] += time.perf_counter() - started
    metrics, tuned, outputs = _evaluate(runs, val_split, target, fitted, device, timing)
    progress = _Progress(model, target, metric, calibration=dict(fitted))
    progress.keep(0, metrics, tuned, time.perf_counter() - setup_started, outputs)
    if on_epoch is not None:
        on_epoch(0, info["loss"], metrics[metric])  # one "epoch": the fit (a reason to stop changes nothing)
    result = progress.result(adapted, timing, cache_info)
    if subsample:
        info["subsample"] = subsample
    result.head_fit, result.subsample = info, subsample
    result.last_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}  # the fit: its only "epoch"
    return result


#: the training items a trial fitted to its deadline keeps at least (all of a smaller split), how many random items
#: time the frozen network's pass beforehand (after one batch more that warms it up), and the share of the time left
#: a frozen pass may take (the rest: a training trial's epochs; after a converged head, a new study's first
#: trial, the trials the time budget also holds for and what follows them, unknown until a trial is done)
MIN_HEAD_ITEMS = 100
TIMED_ITEMS = 24
PREFIX_SHARE = 0.5


@torch.no_grad()
def _within_deadline(backbone: Backbone, model: nn.Module, freeze: int, train_split: TensorSplit,
                     val_split: TensorSplit, device: torch.device, cache: FeatureCache | None,
                     context: Mapping[str, Any] | None, deadline: float | None, *, share: float = 1.0,
                     prefix: bool = False) -> tuple[TensorSplit, str]:
    """The training split a trial trains on by ``deadline``, and why it is a part, if it is.

    The frozen network (``prefix``: only its first ``freeze`` groups, the part the cache computes) runs over a few
    random training items, timed; where that rate over the training and validation splits would take more than
    ``share`` of the time left, the trial gets the random part of the training split that fits (at least
    :data:`MIN_HEAD_ITEMS`), a split of its own (the cache computes its outputs alone). The whole split where the
    cache already holds its outputs (they cost nothing), or without a deadline.
    """
    n = len(train_split)
    if deadline is None or n <= MIN_HEAD_ITEMS:
        return train_split, ""
    cut = backbone.split(unwrapped(model), freeze)
    if _cached(backbone, cut, freeze, train_split, cache, context):
        return train_split, ""
    timed_module = cut[0] if prefix and cut is not None else model
    if prefix and cut is None:
        return train_split, ""  # no prefix the cache computes: the epochs are cut at the deadline instead
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(n, generator=generator)
    batches = list(train_split.take(order[:TIMED_ITEMS + 8]).batches(8))
    was_training = timed_module.training
    timed_module.eval()  # batch norm statistics stay as they are
    try:
        forward(timed_module, to_device(batches[0][0], device))  # the first call pays for allocations
        started = time.perf_counter()
        for inputs, _ in batches[1:]:
            forward(timed_module, to_device(inputs, device))
        per_item = (time.perf_counter() - started) / max(1, sum(len(b[1]) for b in batches[1:]))
    finally:
        timed_module.train(was_training)
    left = share * (deadline - time.time())
    if per_item <= 0 or per_item * (n + len(val_split)) <= left:
        return train_split, ""
    keep = max(MIN_HEAD_ITEMS, int(left / per_item) - len(val_split))
    if keep >= n:
        return train_split, ""
    part = train_split.take(order[:keep].sort().values)
    part = dataclasses.replace(part, origin=None)  # its own split: the cache computes these items alone
    return part, (f"{keep} of {n} training items, drawn at random: the frozen network takes about "
                  f"{per_item * 1000:.0f} ms an item here, and {max(left, 0):.0f} s were left for it")


def _cached(backbone: Backbone, cut: tuple[nn.Module, nn.Module] | None, freeze: int, split: TensorSplit,
            cache: FeatureCache | None, context: Mapping[str, Any] | None) -> bool:
    """Whether ``cache`` holds the outputs of the prefix of ``cut`` (the first ``freeze`` groups) on ``split``."""
    if cache is None or cut is None:
        return False
    computed = split if split.origin is None else split.origin[0]
    key = prefix_key(backbone, freeze, computed, split_name="train" if split.origin is None else "taken from",
                     context={**(context or {}), "prefix_weights": module_digest(cut[0])})
    return cache.holds(key)


def _through_cache(backbone: Backbone, model: nn.Module, evaluated: nn.Module, settings: TrainingParams,
                   train_split: TensorSplit, val_split: TensorSplit, device: torch.device, cache: FeatureCache | None,
                   context: Mapping[str, Any] | None, timing: dict[str, float], unaugmented: bool = False):
    """What the batches go through, the splits they come from, and how the cache served them.

    Without a cache or a frozen prefix: the network (and its averaged copy) on the splits given, ``{}``.
    Otherwise the network's rest on the cached prefix outputs (``timing["prefix"]``: the seconds they took),
    or, where the prefix cannot be cached, the whole network and ``{"skipped": why}``. ``unaugmented``: the
    caller reads the training split without augmentation (a converged head fit), so an augmenting one is cached too.
    """
    if cache is None or settings.freeze == 0:
        return model, evaluated, train_split, val_split, {}
    plan = _cached_prefix(backbone, model, evaluated, settings.freeze, train_split, val_split, device, cache,
                          dict(context or {}), settings.batch_size, unaugmented)
    if isinstance(plan, str):
        return model, evaluated, train_split, val_split, {"skipped": plan}
    (runs, run_evaluated), train_split, val_split, cache_info, timing["prefix"] = plan
    return runs, run_evaluated, train_split, val_split, cache_info


def _adapted(backbone: Backbone, settings: TrainingParams, width: int, per_position: bool, pretrained: bool,
             device: torch.device, bias: Sequence[float] | None = None) -> Adapted:
    """The network built, adapted (frozen groups, LoRA, the new head zeroed or not, its output biases set to
    ``bias`` where given) and moved to ``device``."""
    model = built(backbone, width, pretrained=pretrained, per_position=per_position)
    adapted = adapt(model, backbone, settings.freeze, settings.lora_rank,
                    zero_head=pretrained and settings.head_init == "zeros", head_bias=bias)
    adapted.model.to(device)
    if backbone.channels_last:
        adapted.model.to(memory_format=torch.channels_last)
    return adapted


def _optimizer(model: nn.Module, settings: TrainingParams, samples: int):
    """AdamW over the trainable parameters, and its per-step schedule: linear warm-up, then cosine decay."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = max(1, math.ceil(samples / settings.batch_size))
    schedule = _warmup_cosine(steps_per_epoch * settings.epochs, steps_per_epoch * settings.warmup_epochs)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


@dataclass
class _Stepper:
    """One optimisation step: forward (under autocast), the target's loss, backward, optimizer and schedule, average."""

    model: nn.Module  # the adapted network: what the optimizer and the moving average follow
    runs: nn.Module  # what the batches go through: the network, or its rest after a cached prefix
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    autocast: Any
    ema: "_EMA | None"
    target: Target
    calibration: Mapping[str, Any]  # what the target fit on the training labels
    params: Mapping[str, Any]  # the trial's: the target's loss may read its own
    device: torch.device

    def step(self, inputs: Inputs, labels: torch.Tensor, epoch: int) -> float:
        """Train on one batch (already on the device); returns the batch's summed loss."""
        with self.autocast:
            loss = self.target.loss(forward(self.runs, inputs).float(), labels, self.calibration, self.params)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch + 1}; lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return loss.item() * len(labels)  # .item() waits for the device: the step's time is real


def _train_epoch(stepper: _Stepper, split: TensorSplit, batch_size: int, generator: torch.Generator, epoch: int,
                 deadline: float | None, timing: dict[str, float]) -> tuple[float, bool]:
    """One pass over ``split``'s shuffled batches; returns the mean loss and whether ``deadline`` cut it short.

    ``timing`` gains the seconds spent fetching batches (``data``) and stepping (``step``).
    """
    total_loss, seen = 0.0, 0
    batches = iter(split.batches(batch_size, train=True, generator=generator))
    while True:
        fetched = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            return total_loss / max(seen, 1), False
        if deadline is not None and seen and time.time() > deadline:
            return total_loss / max(seen, 1), True
        inputs, labels = to_device(batch[0], stepper.device), batch[1].to(stepper.device)
        stepped = time.perf_counter()
        timing["data"] += stepped - fetched
        total_loss += stepper.step(inputs, labels, epoch)
        seen += len(labels)
        timing["step"] += time.perf_counter() - stepped


def _evaluate(model: nn.Module, split: TensorSplit, target: Target, calibration: Mapping[str, Any],
              device: torch.device, timing: dict[str, float]
              ) -> tuple[dict[str, float], dict[str, Any], torch.Tensor]:
    """Every metric of ``model`` on the validation ``split``, the ``calibration`` tuned on its outputs, and the
    outputs; ``timing["eval"]`` gains the seconds it took."""
    started = time.perf_counter()
    outputs = predict_outputs(model, split, device)
    tuned = target.tune(calibration, outputs, split.labels)
    metrics = target.score(outputs, split.labels, tuned)
    timing["eval"] += time.perf_counter() - started
    return metrics, tuned, outputs


@dataclass
class _Progress:
    """The validation curve so far (of ``metric``), and the best epoch's metrics, calibration and weights (of
    ``evaluated``: the network or its average)."""

    evaluated: nn.Module
    target: Target
    metric: str
    curve: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    best_value: float = float("nan")
    best_epoch: int = -1
    best_metrics: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = None
    best_outputs: torch.Tensor | None = None
    stopped: str = ""

    def keep(self, epoch: int, metrics: Mapping[str, float], calibration: Mapping[str, Any], seconds: float,
             outputs: torch.Tensor | None = None) -> None:
        """Record an epoch; copy the weights and the validation ``outputs`` off the device when it is the best so
        far."""
        value = metrics[self.metric]
        self.epoch_seconds.append(seconds)
        self.curve.append(value)
        if self.target.best_epoch(value, self.best_value, self.metric):
            self.best_value, self.best_epoch = value, epoch
            self.best_metrics, self.calibration = dict(metrics), dict(calibration)
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.evaluated.state_dict().items()})
            self.best_outputs = outputs.detach().cpu().clone() if outputs is not None else None

    def result(self, adapted: Adapted, timing: dict[str, float], cache_info: dict[str, str]) -> TrainResult:
        return TrainResult(self.best_value, self.best_epoch, self.curve, self.best_metrics, self.calibration,
                           self.epoch_seconds, adapted, self.best_state, self.stopped,
                           {k: round(v, 3) for k, v in timing.items()}, cache_info, val_outputs=self.best_outputs)


def usable_cpus() -> int:
    """CPU cores this process may run on: its affinity mask, capped by a cgroup CPU quota (containers)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def configure_threads() -> int:
    """One torch thread per usable core, unless OMP_NUM_THREADS or MKL_NUM_THREADS says otherwise.

    torch counts the host's cores, which in a container limited to a few CPUs oversubscribes them.
    """
    if not (os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS")):
        torch.set_num_threads(usable_cpus())
    return torch.get_num_threads()


def _autocast(device: torch.device, precision: str):
    """bfloat16 autocast for the training forward pass where ``precision`` (auto, fp32, bf16) and the card allow."""
    if device.type == "cuda" and precision != "fp32" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16" and device.type != "cuda":
        raise UsageError("precision: bf16 needs a CUDA device; use auto or fp32 on the CPU")
    return contextlib.nullcontext()


def unwrapped(model: nn.Module) -> nn.Module:
    """The network under peft's wrapper (LoRA layers injected in place), or ``model`` itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _cached_prefix(backbone: Backbone, model: nn.Module, evaluated: nn.Module, freeze: int, train_split: TensorSplit,
                   val_split: TensorSplit, device: torch.device, cache: FeatureCache, context: dict[str, Any],
                   batch_size: int, unaugmented: bool = False):
    """Cut the network after its frozen groups and serve their outputs from ``cache``; or why not (a str).

    The outputs are always those of the un-augmented inputs; a randomly augmented training split is refused
    unless the caller reads it ``unaugmented`` too.
    """
    if train_split.random_augmentation and not unaugmented:
        return "training inputs are randomly augmented (augment: none caches them)"
    cut = backbone.split(unwrapped(model), freeze)
    if cut is None:
        return f"{backbone.name} cannot be cut after {freeze} layer groups"
    prefix, rest = cut
    rest_evaluated = rest
    if evaluated is not model:  # the EMA copy: its own modules, the same frozen prefix
        cut_evaluated = backbone.split(unwrapped(evaluated), freeze)
        if cut_evaluated is None:
            return f"{backbone.name}'s averaged copy cannot be cut after {freeze} layer groups"
        rest_evaluated = cut_evaluated[1]
    prefix.eval()
    sample = next(iter(val_split.batches(2)), None) or next(iter(train_split.batches(2)), None)
    if sample is None:
        return "no samples"
    with torch.no_grad():
        out = forward(prefix, to_device(sample[0], device))
    per_sample = (out.numel() * 4 if isinstance(out, torch.Tensor)
                  else sum(v.numel() * v.element_size() for v in out.values())) / len(sample[1])
    roots = {id(r): len(r) for r in (s.origin[0] if s.origin is not None else s for s in (train_split, val_split))}
    needed = per_sample * sum(roots.values())  # subsets of one split: that split's outputs, once
    if not cache.fits(int(needed)):
        return (f"its prefix outputs need {needed / 2**20:.0f} MiB, more than the cache's memory bound "
                f"({cache.memory_bytes / 2**20:.0f} MiB; cache.memory_mb in the recipe)")
    started = time.perf_counter()
    context = {**context, "prefix_weights": module_digest(prefix)}  # a checkpoint replaced under the same name
    splits, source = [], {}
    for name, split in (("train", train_split), ("val", val_split)):
        computed, where = (split, None) if split.origin is None else split.origin  # a subset: its split's outputs
        key = prefix_key(backbone, freeze, computed, split_name=name if where is None else "taken from",
                         context=context)
        features, source[name] = cache.get_or_compute(
            key, lambda computed=computed: prefix_outputs(prefix, computed, device, max(batch_size, 64)))
        if where is not None:
            features = index_inputs(features, where)
            source[name] += f" ({len(where)} of {len(computed)} samples)"
        splits.append(split.with_inputs(features))
    return (rest, rest_evaluated), splits[0], splits[1], source, time.perf_counter() - started


class _EMA:
    """An exponential moving average of the weights (and batch-norm statistics): ``.module`` is the copy.

    The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the first update
    copies), so that the average follows the first steps instead of lingering on the pretrained
    weights. Only what moves is averaged: the trainable parameters and the floating-point buffers,
    in one fused ``torch._foreach_lerp_`` per step; frozen weights are never touched, so a linear
    probe pays for its head alone.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model)
        self.decay = decay
        self.updates = 0
        mine = dict(self.module.named_parameters())
        moving = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self._params = ([mine[name] for name, _ in moving], [p for _, p in moving])
        my_buffers = dict(self.module.named_buffers())
        buffers = list(model.named_buffers())
        self._float_buffers = ([my_buffers[n] for n, b in buffers if b.is_floating_point()],
                               [b for _, b in buffers if b.is_floating_point()])
        self._other_buffers = [(my_buffers[n], b) for n, b in buffers if not b.is_floating_point()]

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        n = self.updates
        weight = 1.0 if n == 0 else 1.0 - min(self.decay, (1.0 + n) / (10.0 + n))
        for mine, theirs in (self._params, self._float_buffers):
            if mine:
                torch._foreach_lerp_(mine, theirs, weight)
        for mine, theirs in self._other_buffers:
            mine.copy_(theirs)
        self.updates += 1


def _ema(model: nn.Module, decay: float) -> _EMA | None:
    """An exponential moving average of ``model`` (see :class:`_EMA`), or ``None`` when ``decay`` is 0."""
    if not decay:
        return None
    return _EMA(model, decay)  # 0 < decay < 1: TrainingParams checked it (autotl/params.py)


def _warmup_cosine(total_steps: int, warmup_steps: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
