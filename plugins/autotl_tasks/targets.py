"""What the built-in tasks predict: one class per item, a number, a set of labels, a tag per token.

Each is an :class:`autotl.Target`: its loss, its metrics (the primary first), how outputs become
predictions. Task plugins, built-in or a third party's, name one as their ``target``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from autotl import Param, Target, TensorSplit
from autotl.base import stack_weighted


class ClassLabel(Target):
    """One class per item: softmax over the classes, cross-entropy (with the trial's ``label_smoothing``).

    Accuracy is the primary metric; balanced accuracy and macro-F1 suit imbalanced classes (recipe
    ``metric: balanced_accuracy``), log-loss ranks finely where a few items decide accuracy.
    """

    metrics = {"accuracy": "maximize", "balanced_accuracy": "maximize", "macro_f1": "maximize",
               "log_loss": "minimize"}
    primary = "accuracy"
    parameters = (Param("label_smoothing", "float", "label smoothing of the cross-entropy loss", default=0.0, low=0,
                        high=1),)

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, calibration: Mapping[str, Any],
             params: Mapping[str, Any]) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), labels, label_smoothing=float(params.get("label_smoothing") or 0.0))

    def score(self, outputs: torch.Tensor, labels: torch.Tensor, calibration: Mapping[str, Any]) -> dict[str, float]:
        if not len(labels):
            return {name: float("nan") for name in self.metrics}
        from sklearn.metrics import balanced_accuracy_score, f1_score

        predicted = outputs.argmax(-1)
        true, guess = labels.numpy(), predicted.numpy()
        present = np.unique(true)
        return {
            "accuracy": float((predicted == labels).float().mean()),
            "balanced_accuracy": float(balanced_accuracy_score(true, guess)),
            "macro_f1": float(f1_score(true, guess, labels=present, average="macro", zero_division=0)),
            "log_loss": float(F.cross_entropy(outputs.float(), labels)),
        }

    def decode(self, outputs: torch.Tensor, split: TensorSplit, calibration: Mapping[str, Any],
               label_names: Sequence[str], top_k: int = 1) -> list[dict[str, Any]]:
        probs = self.probabilities(outputs)
        k = max(1, min(top_k, len(label_names)))
        values, indices = probs.topk(k, dim=-1)
        decoded = []
        for row in range(len(probs)):
            top = [{"label": label_names[int(i)], "probability": float(v)} for v, i in zip(values[row], indices[row])]
            decoded.append({"label": top[0]["label"], "probability": top[0]["probability"], "top_k": top})
        return decoded

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(outputs.float(), dim=-1)

    def combine(self, outputs: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        """The log of the weighted mean of the members' softmax probabilities: its softmax is that mean."""
        return mean_probability_log(outputs, weights)

    def rankable(self, labels: torch.Tensor) -> torch.Tensor | None:
        return labels

    def figure(self, outputs: torch.Tensor, labels: torch.Tensor, calibration: Mapping[str, Any],
               label_names: Sequence[str]) -> Any:
        """The confusion matrix: true classes in rows, predictions in columns; counts, coloured by the share of
        the true class."""
        import plotly.graph_objects as go

        n = len(label_names)
        matrix = [[0] * n for _ in range(n)]
        for truth, guess in zip(labels.tolist(), outputs.argmax(-1).tolist()):
            matrix[truth][guess] += 1
        totals = [max(1, sum(row)) for row in matrix]
        share = [[v / totals[i] for v in row] for i, row in enumerate(matrix)]
        names = list(label_names)
        fig = go.Figure(go.Heatmap(
            z=share, x=names, y=names, colorscale="Blues", zmin=0, zmax=1,
            text=[[str(v) for v in row] for row in matrix], texttemplate="%{text}",
            hovertemplate="true %{y}, predicted %{x}: %{text} (%{z:.0%} of the class)<extra></extra>",
            colorbar={"title": "share of<br>true class"}))
        fig.update_xaxes(title="predicted", side="bottom", tickangle=-30 if n > 6 else 0)
        fig.update_yaxes(title="true", autorange="reversed")
        fig.update_layout(title="Confusion matrix: rows are the true classes, columns the predictions; the numbers "
                                "are counts, the colour the share of the true class", title_font_size=13,
                          height=min(760, max(360, 48 * n + 160)))
        return fig




class Number(Target):
    """A number per item: one output, trained on standardised targets (mean squared error), reported in the
    target's own units.

    :meth:`fit` records the training targets' mean and standard deviation; the network learns
    ``(y - mean) / std`` and every metric and prediction is scaled back. RMSE is the primary metric; MAE
    and Pearson's r are reported beside it.
    """

    metrics = {"rmse": "minimize", "mae": "minimize", "pearson_r": "maximize"}
    primary = "rmse"

    def width(self, label_names: Sequence[str]) -> int:
        return 1

    def fit(self, labels: torch.Tensor) -> dict[str, Any]:
        values = labels.double().flatten()
        if not len(values):
            return {"mean": 0.0, "std": 1.0}
        std = float(values.std(unbiased=False)) if len(values) > 1 else 0.0
        return {"mean": float(values.mean()), "std": std if std > 1e-12 else 1.0}

    def values(self, outputs: torch.Tensor, calibration: Mapping[str, Any]) -> torch.Tensor:
        """The outputs in the target's own units: ``output * std + mean``."""
        return outputs.double().reshape(len(outputs), -1)[:, 0] * float(calibration.get("std", 1.0)) \
            + float(calibration.get("mean", 0.0))

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, calibration: Mapping[str, Any],
             params: Mapping[str, Any]) -> torch.Tensor:
        scaled = (labels.float() - float(calibration.get("mean", 0.0))) / float(calibration.get("std", 1.0))
        return F.mse_loss(outputs.float().reshape(len(outputs), -1)[:, 0], scaled.reshape(-1))

    def score(self, outputs: torch.Tensor, labels: torch.Tensor, calibration: Mapping[str, Any]) -> dict[str, float]:
        if not len(labels):
            return {name: float("nan") for name in self.metrics}
        guess = self.values(outputs, calibration).numpy()
        true = labels.double().reshape(-1).numpy()
        error = guess - true
        if len(true) > 1 and np.std(guess) > 0 and np.std(true) > 0:
            pearson = float(np.corrcoef(guess, true)[0, 1])
        else:
            pearson = float("nan")
        return {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error))),
                "pearson_r": pearson}

    def decode(self, outputs: torch.Tensor, split: TensorSplit, calibration: Mapping[str, Any],
               label_names: Sequence[str], top_k: int = 1) -> list[dict[str, Any]]:
        return [{"value": float(v)} for v in self.values(outputs, calibration).tolist()]

    def figure(self, outputs: torch.Tensor, labels: torch.Tensor, calibration: Mapping[str, Any],
               label_names: Sequence[str]) -> Any:
        """Predicted against true, one point per item, with the diagonal where the two agree."""
        import plotly.graph_objects as go

        guess = self.values(outputs, calibration).tolist()
        true = labels.double().reshape(-1).tolist()
        low, high = min(true + guess, default=0.0), max(true + guess, default=1.0)
        name = label_names[0] if label_names else "target"
        fig = go.Figure([
            go.Scatter(x=true, y=guess, mode="markers", name="items", marker={"size": 5, "opacity": 0.5},
                       hovertemplate="true %{x:.3g}, predicted %{y:.3g}<extra></extra>"),
            go.Scatter(x=[low, high], y=[low, high], mode="lines", name="predicted = true",
                       line={"dash": "dash", "color": "grey"}),
        ])
        fig.update_xaxes(title=f"true {name}")
        fig.update_yaxes(title=f"predicted {name}", scaleanchor="x", scaleratio=1)
        fig.update_layout(title="Predicted against true: points on the dashed diagonal are exact", title_font_size=13,
                          height=560)
        return fig


#: the threshold of a label without positives in the validation split: where its F1 cannot be tuned.
DEFAULT_THRESHOLD = 0.5


class LabelSet(Target):
    """A set of labels per item: one sigmoid per label, binary cross-entropy, a threshold per label.

    Labels are 0/1 rows ``(items, labels)``. :meth:`fit` records each label's share of the training
    items (the head's biases start at its log-odds, :meth:`initial_bias`); :meth:`tune` picks each
    label's threshold maximising its F1 on the validation outputs (0.5 for a label without positives
    there). Micro-F1 is the primary metric; macro-F1 (over labels that occur) and mean average precision
    (over labels that occur) are reported beside it.
    """

    metrics = {"micro_f1": "maximize", "macro_f1": "maximize", "mean_average_precision": "maximize"}
    primary = "micro_f1"

    def fit(self, labels: torch.Tensor) -> dict[str, Any]:
        share = labels.double().mean(0) if len(labels) else torch.zeros(labels.shape[-1], dtype=torch.float64)
        return {"prior": [float(p) for p in share.tolist()]}

    def initial_bias(self, calibration: Mapping[str, Any]) -> list[float] | None:
        """The log-odds of each label's training share: a new head starts predicting the label's frequency,
        so that rare labels' outputs are not pushed down from 0.5 for the first many steps."""
        prior = calibration.get("prior")
        if not prior:
            return None
        p = np.clip(np.asarray(prior, dtype=np.float64), 1e-4, 1 - 1e-4)
        return [float(v) for v in np.log(p / (1 - p))]

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, calibration: Mapping[str, Any],
             params: Mapping[str, Any]) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(outputs.float(), labels.float())

    def thresholds(self, calibration: Mapping[str, Any], width: int) -> np.ndarray:
        found = calibration.get("thresholds")
        if not found or len(found) != width:
            return np.full(width, DEFAULT_THRESHOLD)
        return np.asarray(found, dtype=np.float64)

    def tune(self, calibration: Mapping[str, Any], outputs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        from sklearn.metrics import precision_recall_curve

        probs = self.probabilities(outputs).double().numpy()
        truth = labels.numpy() > 0.5
        chosen = []
        for j in range(probs.shape[1] if probs.ndim == 2 else 0):
            if not truth[:, j].any():
                chosen.append(DEFAULT_THRESHOLD)
                continue
            precision, recall, cuts = precision_recall_curve(truth[:, j], probs[:, j])
            f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
            best = int(np.argmax(f1))
            below = probs[:, j][probs[:, j] < cuts[best]]
            # half way to the next lower output: the same validation F1, less tied to one item's output
            chosen.append(float((cuts[best] + below.max()) / 2 if len(below) else cuts[best]))
        return {**dict(calibration), "thresholds": chosen}

    def predicted(self, outputs: torch.Tensor, calibration: Mapping[str, Any]) -> np.ndarray:
        """Which labels each item is given: its probability at or above the label's threshold, (items, labels) bool."""
        probs = self.probabilities(outputs).double().numpy()
        return probs >= self.thresholds(calibration, probs.shape[1])[None, :]

    def score(self, outputs: torch.Tensor, labels: torch.Tensor, calibration: Mapping[str, Any]) -> dict[str, float]:
        if not len(labels):
            return {name: float("nan") for name in self.metrics}
        from sklearn.metrics import average_precision_score, f1_score

        truth = (labels.numpy() > 0.5).astype(int)
        guess = self.predicted(outputs, calibration).astype(int)
        present = np.flatnonzero(truth.sum(0) > 0)
        if not len(present):
            return {"micro_f1": float(f1_score(truth, guess, average="micro", zero_division=0)),
                    "macro_f1": float("nan"), "mean_average_precision": float("nan")}
        probs = self.probabilities(outputs).double().numpy()
        return {
            "micro_f1": float(f1_score(truth, guess, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(truth[:, present], guess[:, present], average="macro", zero_division=0)),
            "mean_average_precision": float(average_precision_score(truth[:, present], probs[:, present],
                                                                    average="macro")),
        }

    def decode(self, outputs: torch.Tensor, split: TensorSplit, calibration: Mapping[str, Any],
               label_names: Sequence[str], top_k: int = 1) -> list[dict[str, Any]]:
        probs = self.probabilities(outputs).tolist()
        given = self.predicted(outputs, calibration)
        return [{"labels": [name for name, on in zip(label_names, row) if on],
                 "probabilities": {name: float(p) for name, p in zip(label_names, item)}}
                for row, item in zip(given.tolist(), probs)]

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(outputs.float())

    def combine(self, outputs: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        """The logit of the weighted mean of the members' sigmoid probabilities, label by label: its sigmoid is that
        mean (the thresholds are tuned again on it)."""
        stacked, share = stack_weighted(outputs, weights)
        mean = (torch.sigmoid(stacked.double()) * share.double()).sum(0)
        return torch.logit(mean.clamp(1e-12, 1 - 1e-12)).float()

    def figure(self, outputs: torch.Tensor, labels: torch.Tensor, calibration: Mapping[str, Any],
               label_names: Sequence[str]) -> Any:
        """Each label's F1 at its threshold, labels by how many items carry them (the most frequent first)."""
        import plotly.graph_objects as go
        from sklearn.metrics import f1_score

        truth = (labels.numpy() > 0.5).astype(int)
        guess = self.predicted(outputs, calibration).astype(int)
        per_label = f1_score(truth, guess, average=None, zero_division=0)
        counts = truth.sum(0)
        order = np.argsort(-counts, kind="stable")
        names = [label_names[i] for i in order]
        fig = go.Figure(go.Bar(
            x=names, y=[float(per_label[i]) for i in order], customdata=[int(counts[i]) for i in order],
            hovertemplate="%{x}: F1 %{y:.3f} (%{customdata} items carry it)<extra></extra>"))
        fig.update_xaxes(title="label (most frequent first)", tickangle=-30 if len(names) > 6 else 0)
        fig.update_yaxes(title="F1 at the label's threshold", range=[0, 1])
        fig.update_layout(title="F1 per label on the test split", title_font_size=13, height=460)
        return fig


class TagSequence(Target):
    """A tag per word: cross-entropy on each word's first piece; token accuracy and tag macro-F1, and entity-level
    F1 (seqeval, strict IOB2) as primary where every tag is ``O``, ``B-x`` or ``I-x``."""

    per_position = True
    WORDS = {"token_accuracy": "maximize", "macro_f1": "maximize"}

    def __init__(self, label_names: Sequence[str] | None = None):
        self.label_names = list(label_names) if label_names is not None else None
        entities = self.label_names is None or is_bio(self.label_names)
        self.metrics = {"entity_f1": "maximize", **self.WORDS} if entities else dict(self.WORDS)
        self.primary = "entity_f1" if entities and self.label_names is not None else "token_accuracy"

    def for_labels(self, label_names: Sequence[str]) -> "TagSequence":
        return TagSequence(label_names)

    def loss(self, outputs, labels, calibration, params) -> torch.Tensor:
        labels = aligned(labels, outputs.shape[1])
        return F.cross_entropy(outputs.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)

    def score(self, outputs, labels, calibration) -> dict[str, float]:
        labels = aligned(labels, outputs.shape[1] if outputs.dim() == 3 else labels.shape[1])
        scored = labels != IGNORE
        if not scored.any():
            return {name: float("nan") for name in self.metrics}
        from sklearn.metrics import f1_score

        guess = outputs.argmax(-1)
        true, pred = labels[scored], guess[scored]
        out = {"token_accuracy": int((true == pred).sum()) / len(true),
               "macro_f1": float(f1_score(true.numpy(), pred.numpy(), labels=true.unique().numpy(), average="macro",
                                          zero_division=0))}
        if "entity_f1" in self.metrics:
            out["entity_f1"] = self._entity_f1(labels, guess, scored)
        return out

    def _entity_f1(self, labels: torch.Tensor, guess: torch.Tensor, scored: torch.Tensor) -> float:
        if not self.label_names:
            return float("nan")
        from seqeval.metrics import f1_score
        from seqeval.scheme import IOB2

        names = self.label_names
        true = [[names[t] for t in row[keep].tolist()] for row, keep in zip(labels, scored)]
        pred = [[names[t] for t in row[keep].tolist()] for row, keep in zip(guess, scored)]
        return float(f1_score(true, pred, mode="strict", scheme=IOB2, zero_division=0))

    def decode(self, outputs, split, calibration, label_names, top_k: int = 1) -> list[dict[str, Any]]:
        """``{"tokens": [...], "tags": [...]}`` per item (its windows joined); with ``top_k`` above one, ``top_k``:
        the likeliest tags of each word with their probabilities."""
        probs = self.probabilities(outputs)
        labels = aligned(split.labels, probs.shape[1])
        words, owner = getattr(split, "words", None), getattr(split, "owner", None)
        items: dict[int, dict[str, Any]] = {}
        for row in range(len(labels)):
            item = items.setdefault(int(owner[row]) if owner is not None else row,
                                    {"tokens": [], "tags": [], **({"top_k": []} if top_k > 1 else {})})
            first = (labels[row] != IGNORE).nonzero().flatten()
            values, indices = probs[row, first].topk(max(1, min(top_k, len(label_names))), dim=-1)
            item["tokens"].extend(words[row] if words is not None else [None] * len(first))
            item["tags"].extend(label_names[int(i)] for i in indices[:, 0])
            if top_k > 1:
                item["top_k"].extend([{"tag": label_names[int(i)], "probability": float(v)} for v, i in zip(vs, ix)]
                                     for vs, ix in zip(values, indices))
        return [items[key] for key in sorted(items)]

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(outputs.float(), dim=-1)

    def combine(self, outputs: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
        """Position by position, the log of the weighted mean of the members' tag probabilities (members of the
        same word pieces: the core ensembles only networks whose validation labels are the same)."""
        return mean_probability_log(outputs, weights)

    def figure(self, outputs, labels, calibration, label_names) -> Any:
        """The per-tag confusion matrix over the words (true tags in rows, predicted in columns)."""
        labels = aligned(labels, outputs.shape[1])
        scored = labels != IGNORE
        fig = ClassLabel().figure(outputs[scored], labels[scored], calibration, label_names)
        fig.update_layout(title="Per-tag confusion over the test words: rows are the true tags, columns the "
                                "predictions; the numbers are counts, the colour the share of the true tag")
        return fig


def mean_probability_log(outputs: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """The log of the weighted mean of the softmax probabilities (over the last dimension) of ``outputs``: outputs
    whose softmax is that mean (probabilities kept above the smallest normal float, so that logs stay finite)."""
    stacked, share = stack_weighted(outputs, weights)
    mean = (torch.softmax(stacked.double(), dim=-1) * share.double()).sum(0)
    return torch.log(mean.clamp_min(torch.finfo(torch.float32).tiny)).float()


#: the label of positions a per-position target does not score: a word's later pieces, special tokens, padding.
IGNORE = -100


def is_bio(names: Sequence[str]) -> bool:
    """Whether the tags are IOB2 entity tags: ``O``, ``B-type`` and ``I-type``, with at least one ``B-``."""
    return any(n.startswith("B-") for n in names) and all(n == "O" or n[:2] in ("B-", "I-") for n in names)


def aligned(labels: torch.Tensor, positions: int) -> torch.Tensor:
    """``labels`` cut or padded (with the ignored label) to ``positions`` columns, as the outputs were trimmed."""
    if labels.shape[1] >= positions:
        return labels[:, :positions]
    return F.pad(labels, (0, positions - labels.shape[1]), value=IGNORE)


__all__ = ["IGNORE", "ClassLabel", "LabelSet", "Number", "TagSequence", "is_bio"]
