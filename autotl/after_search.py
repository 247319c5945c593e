"""After the search: the best trial scored once on the test split, and the from-scratch baseline.

The test split chose nothing (trials are ranked on validation), so its score of the best trial is an
honest estimate; it is recorded on the study (``test_scores``). The scratch baseline trains the best
trial's network from random weights, everything trainable, to show what transfer learning bought.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.trial import FrozenTrial

from .base import Backbone, LoadedData, Task, TensorSplit
from .files import load_weights
from .inference import accuracy
from .leaderboard import best_trial
from .network import trained_network
from .progress import Reporter
from .records import TrialRecord, record_scratch, record_test_score
from .training import train


def test_split_accuracy(backbone: Backbone, num_classes: int, test: TensorSplit, weights: Path,
                        device: torch.device) -> float:
    """``backbone``'s network, with the weights in the file ``weights``, scored on the prepared split ``test``."""
    model = trained_network(backbone, num_classes, load_weights(weights), device)
    return accuracy(model, test, device)


def score_best_on_test(study: optuna.Study, task: Task, data: LoadedData, zoo: dict[str, Backbone],
                       kept_weights: Callable[[FrozenTrial], Path | None], out: Path, device: torch.device,
                       reporter: Reporter) -> dict[str, Any] | None:
    """Score the best trial on the test split and record it on the study: ``{trial, test_accuracy, test_size}``.

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
    test_accuracy = test_split_accuracy(backbone, len(data.label_names), split, weights, device)
    score = {"trial": best.number, "test_accuracy": test_accuracy, "test_size": len(split)}
    record_test_score(study, best.number, test_accuracy)
    return score


def scratch_baseline(study: optuna.Study, task: Task, data: LoadedData, zoo: dict[str, Backbone],
                     device: torch.device, seed: int, reporter: Reporter) -> dict[str, Any] | None:
    """Train the best trial's network from random weights (everything trains), score it, record it on the study."""
    best = best_trial(study)
    if best is None:
        return None
    params = dict(TrialRecord.params(best), freeze=0, lora_rank=0)
    backbone = zoo[params["model"]]
    reporter.message(f"From-scratch comparison: {params['model']} with random weights, "
                     f"{params['epochs']} epochs, lr {params['lr']:.2g} ...")
    prepared = task.prepare(data, backbone, params)
    started = time.time()
    result = train(backbone, params, prepared.train, prepared.val, len(data.label_names), device=device,
                   seed=seed, pretrained=False)
    model = result.adapted.model
    model.load_state_dict(result.best_state)
    scratch = {"model": params["model"], "params": params, "val_accuracy": result.best_accuracy,
               "test_accuracy": accuracy(model, prepared.test, device) if prepared.test is not None else None,
               "duration_s": round(time.time() - started, 1), "compared_with_trial": best.number}
    record_scratch(study, scratch)
    return scratch


__all__ = ["score_best_on_test", "scratch_baseline", "test_split_accuracy"]
