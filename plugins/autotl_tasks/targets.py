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


__all__ = ["ClassLabel"]
