"""Zero-cost pre-ranking of source models: transferability estimates from pretrained features.

Before the first trial of a new study, every source model of the search runs once, without its
head, over the target's training split (never validation or test), and three estimates score how
well its pooled features suit the target labels:

- ``logme``: LogME (You et al., ICML 2021; the fixed-point algorithm of the 2022 JMLR version):
  the log marginal evidence per sample of a Bayesian linear model from features to each one-hot
  label column, its prior and noise precisions (``alpha``, ``beta``) set by evidence maximisation,
  averaged over the classes.
- ``hscore``: the regularised H-score (Ibrahim et al., ICLR 2022): the H-score of Bao et al. (2019),
  ``tr(cov(f)^-1 cov(E[f|y]))``, with the feature covariance shrunk by Ledoit-Wolf, which keeps it
  stable when features outnumber samples.
- ``gbc``: the Gaussian Bhattacharyya coefficient (Pandy et al., CVPR 2022): features reduced to 64
  principal components, one diagonal Gaussian per class, minus the sum of the Bhattacharyya
  coefficients of every ordered pair of classes (0 = perfectly separated classes).

Higher is better for all three. No single estimate is reliable, so models are ordered by their
mean rank over the three (:func:`combine`). LEEP and NCE need the source head's predictions over its
own (ImageNet) classes, which the plugin contract does not expose; they are not computed.

The search uses the ranking to order its start points (best model first), to seed a start point
for the best model when it has none, and to drop hopeless models from the sampled space
(:func:`choose_dropped`); ``autotl search --no-prerank`` or ``prerank: {enabled: false}`` in the
recipe turns it off. The core reaches models only through :meth:`Backbone.feature_extractor`, and
the labels only through the task's target (:meth:`autotl.Target.rankable`): a target that gives no
class per item to rank by skips the pre-ranking, which the run records (``prerank_skipped``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .base import Backbone, LoadedData, Task, TensorSplit
from .recipes import DEFAULTS, PRERANK_DEFAULTS, Recipe, defaults_for
from .cache import prefix_outputs
from .records import StudyRecord, record_prerank_skipped, record_transferability

#: metric name -> column title; the order of the table's columns.
METRICS = {"logme": "LogME", "hscore": "H-score", "gbc": "GBC"}

_EPS = 1e-5  # LogME's epsilon in the denominators of its alpha and beta updates
_TINY = np.finfo(np.float64).tiny


# -- the estimates ----------------------------------------------------------------------------------

def _checked(features: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2:
        raise ValueError(f"features must be a 2-D array (samples, features), not shape {f.shape}")
    if y.ndim != 1 or y.shape[0] != f.shape[0]:
        raise ValueError(f"labels must be a 1-D array of {f.shape[0]} class indices, not shape {y.shape}")
    if f.shape[0] == 0:
        raise ValueError("no samples to score")
    if not np.isfinite(f).all():
        raise ValueError("features hold NaN or infinite values")
    return f, y


def logme(features: Any, labels: Any, *, max_iterations: int = 100, tol: float = 1e-3) -> float:
    """LogME: the mean over classes of the maximum log evidence per sample (higher is better).

    For each class ``c`` the target is ``t = (labels == c)`` and the model ``t = F w + noise`` with
    ``w ~ N(0, I / alpha)`` and noise ``N(0, 1 / beta)``. With ``F = U S V^T`` (thin SVD,
    ``sigma = S^2``) and ``t = alpha / beta`` MacKay's fixed point is iterated in the SVD basis:
    ``gamma = sum(sigma / (sigma + t))``, ``alpha = gamma / |m|^2``, ``beta = (N - gamma) / |t - F m|^2``
    until ``t`` changes by less than ``tol`` (relative). The evidence is

        D/2 log alpha + N/2 log beta - 1/2 log|alpha I + beta F^T F| - beta/2 |t - F m|^2
        - alpha/2 |m|^2 - N/2 log 2 pi,

    divided by ``N``. The ``D - rank`` zero eigenvalues of ``F^T F`` contribute ``log alpha`` each
    to the log determinant and cancel with ``D/2 log alpha``; the sum is taken in that cancelled form,
    so that the result is exact (and equal to the ICML algorithm's) when features outnumber samples.

    The evidence maximised over ``alpha`` does not depend on the scale of the features, but LogME's
    ``1e-5`` safeguards in the updates do; the features are therefore divided by their root mean
    square first, which makes the score exactly scale-invariant.
    """
    f, y = _checked(features, labels)
    n = f.shape[0]
    rms = math.sqrt(float(np.mean(f**2)))
    if rms > 0:
        f = f / rms
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = s**2
    return float(np.mean([_class_evidence(u, sigma, (y == c).astype(np.float64), n, max_iterations, tol)
                          for c in np.unique(y)]))


def _class_evidence(u: np.ndarray, sigma: np.ndarray, target: np.ndarray, n: int, max_iterations: int,
                    tol: float) -> float:
    x2 = (u.T @ target) ** 2
    outside = max(float(target @ target - x2.sum()), 0.0)  # the part of the target no feature direction holds
    if not np.any(sigma > 0):  # features all zero: only the noise explains the target
        res2 = float(target @ target)
        beta = max(n / (res2 + _EPS), _TINY)
        return float((n / 2 * math.log(beta) - beta / 2 * res2 - n / 2 * math.log(2 * math.pi)) / n)
    alpha, beta = 1.0, 1.0
    for _ in range(max_iterations):
        t = alpha / beta
        gamma = float(np.sum(sigma / (sigma + t)))
        m2 = float(np.sum(sigma * x2 / (t + sigma) ** 2))
        res2 = float(np.sum(x2 / (1 + sigma / t) ** 2)) + outside
        alpha = max(gamma / (m2 + _EPS), _TINY)
        beta = max((n - gamma) / (res2 + _EPS), _TINY)
        if abs(alpha / beta - t) / t <= tol:
            break
    t = alpha / beta
    evidence = (-0.5 * float(np.sum(np.log1p(sigma / t))) + n / 2 * math.log(beta) - beta / 2 * res2
                - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi))
    return evidence / n


def hscore(features: Any, labels: Any) -> float:
    """The regularised H-score: ``tr(S_lw^-1 (1 - a) cov(E[f|y]))`` (higher is better).

    ``S_lw = (1 - a) cov(f) + a mu I`` is the Ledoit-Wolf shrunk covariance of the centred features
    (``a`` its shrinkage, ``mu`` the mean variance); ``cov(E[f|y])`` is the covariance of the
    features with every sample replaced by its class mean. Invariant to scaling and rotating the
    features; 0 when the features are constant or there is one class.
    """
    from sklearn.covariance import ledoit_wolf

    f, y = _checked(features, labels)
    f = f - f.mean(axis=0)
    classes, index = np.unique(y, return_inverse=True)
    if f.shape[0] < 2 or len(classes) < 2 or not np.any(f):
        return 0.0
    cov, shrinkage = ledoit_wolf(f, assume_centered=True)
    counts = np.bincount(index).astype(np.float64)
    means = np.zeros((len(classes), f.shape[1]))
    np.add.at(means, index, f)
    means /= counts[:, None]
    try:
        solved = np.linalg.solve(cov, means.T)
    except np.linalg.LinAlgError:  # no shrinkage and a singular covariance
        solved = np.linalg.pinv(cov) @ means.T
    weights = counts / counts.sum()
    return float((1 - shrinkage) * np.sum(weights * np.einsum("cd,dc->c", means, solved)))


def gbc(features: Any, labels: Any, *, components: int = 64) -> float:
    """The Gaussian Bhattacharyya coefficient: ``-sum over class pairs of exp(-D_B)`` (higher is better).

    The centred features are projected on their first ``components`` principal components; each
    class is a diagonal Gaussian (its per-dimension mean and variance) and ``D_B`` the Bhattacharyya
    distance of two of them. Variances are floored at 1e-4 times the mean variance of the projected
    features (the reference implementation floors at an absolute 1e-4, which is not scale-invariant).
    0 means every pair of classes is perfectly separated, ``-C (C - 1)`` that no pair is.
    """
    f, y = _checked(features, labels)
    f = f - f.mean(axis=0)
    classes, index = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        return 0.0
    k = max(1, min(components, f.shape[0], f.shape[1]))
    _, _, vt = np.linalg.svd(f, full_matrices=False)
    z = f @ vt[:k].T
    floor = 1e-4 * float(z.var(axis=0).mean())
    floor = floor if floor > 0 else 1.0  # constant features: every class is the same Gaussian
    mu = np.stack([z[index == c].mean(axis=0) for c in range(len(classes))])
    var = np.stack([np.maximum(z[index == c].var(axis=0), floor) for c in range(len(classes))])
    avg = (var[:, None, :] + var[None, :, :]) / 2
    log_var = np.log(var)
    distance = (np.sum((mu[:, None, :] - mu[None, :, :]) ** 2 / avg, axis=-1) / 8
                + 0.5 * (np.sum(np.log(avg), axis=-1) - 0.5 * log_var.sum(-1)[:, None] - 0.5 * log_var.sum(-1)[None, :]))
    coefficient = np.exp(-distance)
    np.fill_diagonal(coefficient, 0.0)
    return float(-coefficient.sum())


ESTIMATES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"logme": logme, "hscore": hscore, "gbc": gbc}


def score_features(features: Any, labels: Any) -> dict[str, float]:
    """Every estimate of :data:`METRICS` for one model's features."""
    return {name: ESTIMATES[name](features, labels) for name in METRICS}


def combine(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The mean rank of each model over the estimates (1 = best under every estimate; ties share a rank)."""
    from scipy.stats import rankdata

    names = list(scores)
    if not names:
        return {}
    ranks = np.stack([rankdata([-scores[m][metric] for m in names], method="average") for metric in METRICS])
    return {name: float(r) for name, r in zip(names, ranks.mean(axis=0))}


# -- features from the models ------------------------------------------------------------------------

@torch.inference_mode()
def extract_features(backbone: Backbone, split: TensorSplit, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """Pooled features ``(samples, features)`` of ``split`` (un-augmented) from the pretrained network."""
    model = backbone.feature_extractor().to(device)
    if backbone.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    out = prefix_outputs(model, split, device, batch_size)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{backbone.name}.feature_extractor() returned {shape}; it must return (batch, features)")
    return out.numpy().astype(np.float64)


def feature_params(recipe: Recipe, model: str, defaults: Mapping[str, Any] = DEFAULTS) -> dict[str, Any]:
    """The trial parameters the features of ``model`` are computed with: its preprocessing as a trial's.

    The ``defaults`` (:func:`autotl.recipes.defaults_for` the task's target) and the recipe's ``fixed``
    settings, then the model's own start point, or else the recipe's first start point (its resolution or
    max length, say), with ``model`` set.
    """
    params: dict[str, Any] = dict(defaults)
    params.update(recipe.fixed)
    own = next((p for p in recipe.start_with if p.get("model") == model), None)
    params.update(own or (recipe.start_with[0] if recipe.start_with else {}))
    params["model"] = model
    return params


@dataclass
class Ranked:
    """One model's row of the ranking."""

    model: str
    scores: dict[str, float] = field(default_factory=dict)
    mean_rank: float | None = None
    rank: int | None = None
    seconds: float = 0.0
    samples: int = 0
    features: int = 0
    error: str = ""
    dropped: str = ""

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"model": self.model}
        row.update({name: _round(self.scores.get(name)) for name in METRICS})  # (-0.0 shown as 0)
        row.update(rank=self.rank, mean_rank=_round(self.mean_rank), seconds=round(self.seconds, 2),
                   samples=self.samples, features=self.features)
        if self.error:
            row["error"] = self.error
        if self.dropped:
            row["dropped"] = self.dropped
        return row


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.6g}") + 0.0


class Unrankable(Exception):
    """The task's target gives no class per item (:meth:`autotl.Target.rankable` is ``None``): nothing to rank by."""


def rank_models(task: Task, data: LoadedData, zoo: Mapping[str, Backbone], recipe: Recipe, device: torch.device,
                *, settings: Mapping[str, Any] | None = None, seed: int = 0,
                say: Callable[[str], None] = lambda text: None) -> list[Ranked]:
    """Score every model of ``zoo`` on the training split of ``data``; the rows best first.

    The labels the features are scored against are the task's target's :meth:`~autotl.Target.rankable` ones;
    :class:`Unrankable` where it gives none. A model that fails (its features cannot be had) is reported and
    listed last, without a rank. At most ``settings["max_samples"]`` training samples are used (a seeded
    random subset).
    """
    settings = {**PRERANK_DEFAULTS, **(settings or {})}
    target = task.target
    defaults = defaults_for(target)
    rows: list[Ranked] = []
    chosen: torch.Tensor | None = None
    for i, (name, backbone) in enumerate(zoo.items(), 1):
        started = time.perf_counter()
        row = Ranked(name)
        try:
            split = task.prepare(data, backbone, feature_params(recipe, name, defaults)).train
            if chosen is None:
                chosen = _sample(len(split), int(settings["max_samples"]), seed)
            if chosen is not None and len(chosen) < len(split):
                split = split.take(chosen)
            rankable = target.rankable(split.labels)
            if rankable is None:
                raise Unrankable(f"task {task.name!r} gives no class per item to rank source models' features by "
                                 "(its target's rankable() is None)")
            features = extract_features(backbone, split, device, int(settings["batch_size"]))
            labels = rankable.numpy()
            row.samples, row.features = features.shape
            row.scores = score_features(features, labels)
        except Unrankable:
            raise
        except Exception as exc:  # the ranking only advises: a model it cannot score is still searched
            row.error = f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
        row.seconds = time.perf_counter() - started
        if row.error:
            say(f"  [{i}/{len(zoo)}] {name}: not scored ({row.error}), {row.seconds:.1f}s")
        else:
            say(f"  [{i}/{len(zoo)}] {name}: {row.samples} x {row.features} features, LogME {row.scores['logme']:.4f}, "
                f"{row.seconds:.1f}s")
        rows.append(row)
    scored = [r for r in rows if not r.error]
    means = combine({r.model: r.scores for r in scored})
    for r in scored:
        r.mean_rank = means[r.model]
    scored.sort(key=lambda r: (r.mean_rank, -r.scores["logme"], r.model))
    for position, r in enumerate(scored, 1):
        r.rank = position
    return scored + [r for r in rows if r.error]


def _sample(n: int, limit: int, seed: int) -> torch.Tensor | None:
    if n <= limit:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values


def choose_dropped(rows: Sequence[Ranked], drop_below: float | None) -> dict[str, str]:
    """Models to leave out of the sampled space, with the reason: hopeless by every account.

    A model is dropped when its LogME is more than ``drop_below`` (nats per sample) below the best
    model's and its mean rank over the estimates is worse than the middle rank ``(n + 1) / 2`` of the
    ``n`` scored models: the estimates, on average, put it in the lower half, and LogME by a wide
    margin. The best-ranked model and unscored models are never dropped (nor one tied at the middle);
    ``drop_below`` of ``None`` drops nothing.
    """
    scored = [r for r in rows if r.rank is not None]
    if drop_below is None or len(scored) < 2:
        return {}
    best = max(r.scores["logme"] for r in scored)
    middle = (len(scored) + 1) / 2
    dropped = {}
    for r in scored:
        gap = best - r.scores["logme"]
        if r.rank > 1 and r.mean_rank > middle and gap > drop_below:
            dropped[r.model] = (f"LogME {r.scores['logme']:.4f} is {gap:.4f} below the best ({best:.4f}; "
                                f"drop_below {drop_below:g}) and its mean rank {r.mean_rank:.2f} is in the lower half "
                                f"(rank {r.rank} of {len(scored)})")
    return dropped


def plan_start_points(points: Sequence[Mapping[str, Any]], rows: Sequence[Ranked], dropped: Mapping[str, str],
                      group_counts: Mapping[str, int]) -> tuple[list[dict[str, Any]], str]:
    """The start points to enqueue, best-ranked model first, and a note on a seeded one.

    Points of dropped models are left out. When the best-ranked model has no start point of its own,
    one is seeded first: a copy of the best-ranked remaining point (else the first given) with that
    model (its freeze depth kept within the model's layer groups).
    """
    order = {r.model: i for i, r in enumerate(rows)}
    kept = [dict(p) for p in points if p.get("model") not in dropped]
    kept.sort(key=lambda p: order.get(p.get("model"), len(order)))  # stable: a model's points keep their order
    note = ""
    top = next((r.model for r in rows if r.rank == 1), None)
    template = kept[0] if kept else (dict(points[0]) if points else None)
    if top is not None and template is not None and not any(p.get("model") == top for p in kept):
        seeded = dict(template, model=top)
        if "freeze" in seeded and top in group_counts:
            seeded["freeze"] = min(int(seeded["freeze"]), group_counts[top] - 1)
        kept.insert(0, seeded)
        note = f"seeded a start point for {top} (ranked first; it had none) from {template.get('model')}'s"
    return kept, note


def table(rows: Sequence[Ranked]) -> list[str]:
    """The ranking as aligned text lines."""
    width = max([len("model")] + [len(r.model) for r in rows])
    head = f"  {'rank':>4}  {'model':<{width}}" + "".join(f"  {title:>10}" for title in METRICS.values())
    lines = [head + f"  {'mean rank':>9}  {'time':>6}"]
    for r in rows:
        values = "".join(f"  {r.scores[m] + 0.0:>10.4g}" if m in r.scores else f"  {'-':>10}" for m in METRICS)
        mean = f"{r.mean_rank:>9.2f}" if r.mean_rank is not None else f"{'-':>9}"
        mark = "  dropped" if r.dropped else ("  not scored" if r.error else "")
        lines.append(f"  {r.rank if r.rank is not None else '-':>4}  {r.model:<{width}}{values}  {mean}  "
                     f"{r.seconds:>5.1f}s{mark}")
    return lines


# -- the search's use of it -----------------------------------------------------------------------

def prerank_study(study, task: Task, data: LoadedData, zoo: Mapping[str, Backbone], recipe: Recipe,
                  points: Sequence[Mapping[str, Any]], group_counts: Mapping[str, int], device: torch.device,
                  *, seed: int = 0, say: Callable[[str], None] = lambda text: None) -> list[dict[str, Any]]:
    """Rank the models of a new study, record it on the study, and return the start points to enqueue.

    Stores the rows under the study's user attribute ``transferability`` (best first) and the
    dropped models under ``prerank_dropped``; :func:`sampled_models` applies the latter on every
    opening of the study, resumed ones included.
    """
    settings = recipe.prerank
    started = time.perf_counter()
    say(f"Pre-ranking {len(zoo)} source models by transferability (features of the training split; "
        f"LogME, H-score, GBC) ...")
    try:
        rows = rank_models(task, data, zoo, recipe, device, settings=settings, seed=seed, say=say)
    except Unrankable as exc:
        say(f"Pre-ranking skipped: {exc}; the models keep their order")
        record_prerank_skipped(study, str(exc))
        return [dict(p) for p in points]
    dropped = choose_dropped(rows, settings.get("drop_below"))
    for r in rows:
        r.dropped = dropped.get(r.model, "")
    elapsed = time.perf_counter() - started
    say(f"Pre-ranking ({elapsed:.1f}s; higher is better, models ordered by their mean rank over the three):")
    for line in table(rows):
        say(line)
    for name, reason in dropped.items():
        say(f"Dropped {name} from the search: {reason}")
    planned, note = plan_start_points(points, rows, dropped, group_counts)
    if note:
        say(f"Pre-ranking {note}")
    record_transferability(study, [r.as_dict() for r in rows], dropped)
    return planned


def sampled_models(group_counts: Mapping[str, int], user_attrs: Mapping[str, Any]) -> dict[str, int]:
    """``group_counts`` without the models the study's pre-ranking dropped (the sampled space)."""
    dropped = StudyRecord.from_attrs(user_attrs).prerank_dropped or {}
    kept = {name: n for name, n in group_counts.items() if name not in dropped}
    return kept or dict(group_counts)


__all__ = ["ESTIMATES", "METRICS", "PRERANK_DEFAULTS", "Ranked", "choose_dropped", "combine",
           "extract_features", "feature_params", "gbc", "hscore", "logme", "plan_start_points", "prerank_study",
           "rank_models", "sampled_models", "score_features", "table"]
