"""After the search: the best trial scored once on the test split, and the from-scratch baseline.

The test split chose nothing (trials are ranked on validation), so its score of the best trial is an
honest estimate; it is recorded on the study (``test_scores``). The scratch baseline trains the best
trial's network from random weights, everything trainable, to show what transfer learning bought.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
import torch
from optuna.trial import FrozenTrial

from .base import Backbone, LoadedData, Target, Task, TensorSplit
from .files import load_weights
from .inference import predict_outputs
from .leaderboard import best_trial
from .network import trained_network
from .progress import Reporter
from .records import TrialRecord, record_scratch, record_test_score
from .training import train


def test_split_scores(backbone: Backbone, target: Target, width: int, test: TensorSplit, weights: Path,
                      device: torch.device, calibration: Mapping[str, Any]) -> dict[str, float]:
    """Every metric of ``target`` for ``backbone``'s network, with the weights in the file ``weights`` and the
    trial's ``calibration``, on the prepared split ``test``."""
    model = trained_network(backbone, width, load_weights(weights), device, per_position=target.per_position)
    return target.score(predict_outputs(model, test, device), test.labels, calibration)


def score_best_on_test(study: optuna.Study, task: Task, target: Target, metric: str, data: LoadedData,
                       zoo: dict[str, Backbone], kept_weights: Callable[[FrozenTrial], Path | None], out: Path,
                       device: torch.device, reporter: Reporter) -> dict[str, Any] | None:
    """Score the best trial on the test split and record it on the study: ``{trial, test_<metric>, test_metrics,
    test_size}`` (``metric``: the one the study ranks by; ``test_metrics``: every metric of ``target``).

    ``None``, said to ``reporter``, when there is no completed trial, no test split, or no kept weights
    (``kept_weights(trial)``: the path in the run folder ``out``, or ``None``) or loaded model for the best trial.
    """
    best = best_trial(study)
    if best is None:
        return None
    if not data.has_test:
        reporter.message("No test/ split: the best trial is reported with its validation score only.")
        return None
    weights = kept_weights(best)
    if weights is None:
        reporter.message(f"Weights of trial {best.number} are not in {out}; no test score.")
        return None
    params = TrialRecord.params(best)
    backbone = zoo.get(params["model"])
    if backbone is None:
        reporter.message(f"Model {params['model']} of trial {best.number} is not loaded; no test score.")
        return None
    split = task.prepare(data, backbone, params).test
    metrics = test_split_scores(backbone, target, target.width(data.label_names), split, weights, device,
                                TrialRecord.from_trial(best).calibration)
    score = {"trial": best.number, f"test_{metric}": metrics[metric], "test_metrics": metrics, "test_size": len(split)}
    record_test_score(study, best.number, metrics[metric], metrics)
    return score


def scratch_baseline(study: optuna.Study, task: Task, target: Target, metric: str, data: LoadedData,
                     zoo: dict[str, Backbone], device: torch.device, seed: int, reporter: Reporter) -> dict[str, Any] | None:
    """Train the best trial's network from random weights (everything trains), score it (``val_<metric>``,
    ``test_<metric>``, and every metric in ``val_metrics``, ``test_metrics``), record it on the study."""
    best = best_trial(study)
    if best is None:
        return None
    params = dict(TrialRecord.params(best), freeze=0, lora_rank=0)
    params.pop("head_fit", None)  # the training loop, everything trained, whatever the best trial's head fit was
    params.pop("head_fit_c", None)
    backbone = zoo[params["model"]]
    reporter.message(f"From-scratch comparison: {params['model']} with random weights, "
                     f"{params['epochs']} epochs, lr {params['lr']:.2g} ...")
    prepared = task.prepare(data, backbone, params)
    started = time.time()
    result = train(backbone, params, prepared.train, prepared.val, target, target.width(data.label_names),
                   metric=metric, device=device, seed=seed, pretrained=False)
    model = result.adapted.model
    model.load_state_dict(result.best_state)
    test = (target.score(predict_outputs(model, prepared.test, device), prepared.test.labels, result.calibration)
            if prepared.test is not None else None)
    scratch = {"model": params["model"], "params": params, f"val_{metric}": result.best_value,
               f"test_{metric}": test[metric] if test is not None else None,
               "val_metrics": result.best_metrics, "test_metrics": test,
               "duration_s": round(time.time() - started, 1), "compared_with_trial": best.number}
    record_scratch(study, scratch)
    return scratch


__all__ = ["score_best_on_test", "scratch_baseline", "test_split_scores"]
