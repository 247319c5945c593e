"""The built-in targets of a number and of a set of labels, and the core's split helpers, on tiny tensors.

Every metric is checked against scikit-learn's (or numpy's) own computation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, mean_absolute_error, mean_squared_error

from autotl import quantile_bins, set_stratified_split, stratified_split
from autotl_tasks.targets import DEFAULT_THRESHOLD, LabelSet, Number


# -- a number per item ---------------------------------------------------------------------------------


def test_number_standardises_for_the_loss_and_reports_in_its_own_units():
    target = Number()
    labels = torch.tensor([1.0, 3.0, 5.0, 7.0])
    calibration = target.fit(labels)
    assert calibration == pytest.approx({"mean": 4.0, "std": float(np.std([1, 3, 5, 7]))})
    assert target.width(["target"]) == 1
    perfect = ((labels - 4.0) / calibration["std"]).reshape(-1, 1)
    assert float(target.loss(perfect, labels, calibration, {})) == pytest.approx(0.0, abs=1e-7)
    assert float(target.loss(torch.zeros(4, 1), labels, calibration, {})) == pytest.approx(1.0)

    outputs = torch.tensor([[-1.0], [0.0], [0.5], [1.5]])
    guess = outputs[:, 0].double().numpy() * calibration["std"] + 4.0
    scores = target.score(outputs, labels, calibration)
    assert scores["rmse"] == pytest.approx(np.sqrt(mean_squared_error(labels.numpy(), guess)))
    assert scores["mae"] == pytest.approx(mean_absolute_error(labels.numpy(), guess))
    assert scores["pearson_r"] == pytest.approx(np.corrcoef(guess, labels.numpy())[0, 1])
    decoded = target.decode(outputs, None, calibration, ["target"])
    assert [d["value"] for d in decoded] == pytest.approx(guess.tolist())
    assert target.best_epoch(0.5, 0.7, "rmse") and not target.best_epoch(0.5, 0.7, "pearson_r")
    assert target.figure(outputs, labels, calibration, ["target"]) is not None


def test_number_of_constant_targets_keeps_a_unit_spread_and_an_undefined_correlation():
    target = Number()
    calibration = target.fit(torch.tensor([2.0, 2.0, 2.0]))
    assert calibration == {"mean": 2.0, "std": 1.0}
    scores = target.score(torch.zeros(3, 1), torch.tensor([2.0, 2.0, 2.0]), calibration)
    assert scores["rmse"] == 0.0 and np.isnan(scores["pearson_r"])
    assert all(np.isnan(v) for v in target.score(torch.zeros(0, 1), torch.zeros(0), calibration).values())


# -- a set of labels per item ------------------------------------------------------------------------------

ROWS = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]], dtype=torch.float32)
LOGITS = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.2, -2.0], [-0.3, 1.5, -1.0], [0.1, -2.0, 0.3],
                       [-1.0, -0.5, -3.0], [-0.2, -0.1, -0.5]])


def test_label_set_loss_is_binary_cross_entropy_and_the_prior_gives_log_odds_biases():
    target = LabelSet()
    calibration = target.fit(ROWS)
    assert calibration["prior"] == pytest.approx([0.5, 0.5, 0.0])
    expected = torch.nn.BCEWithLogitsLoss()(LOGITS, ROWS)
    assert float(target.loss(LOGITS, ROWS, calibration, {})) == pytest.approx(float(expected))
    bias = target.initial_bias(calibration)
    assert bias[0] == pytest.approx(0.0) and bias[2] < -9  # a label never seen starts far below 0.5


def test_label_set_thresholds_maximise_each_labels_f1_on_validation():
    target = LabelSet()
    tuned = target.tune(target.fit(ROWS), LOGITS, ROWS)
    thresholds = tuned["thresholds"]
    probs = torch.sigmoid(LOGITS).numpy()
    assert thresholds[2] == DEFAULT_THRESHOLD  # no positives in validation
    for j in range(2):
        best = max(f1_score(ROWS[:, j].numpy(), probs[:, j] >= t) for t in np.unique(probs[:, j]))
        assert f1_score(ROWS[:, j].numpy(), probs[:, j] >= thresholds[j]) == pytest.approx(best)
    assert tuned["prior"] == pytest.approx([0.5, 0.5, 0.0])


def test_label_set_scores_and_decoding_match_scikit_learn():
    target = LabelSet()
    calibration = {"thresholds": [0.55, 0.5, 0.4]}
    probs = torch.sigmoid(LOGITS).numpy()
    guess = (probs >= np.array([0.55, 0.5, 0.4])).astype(int)
    truth = ROWS.numpy().astype(int)
    scores = target.score(LOGITS, ROWS, calibration)
    assert scores["micro_f1"] == pytest.approx(f1_score(truth, guess, average="micro"))
    assert scores["macro_f1"] == pytest.approx(f1_score(truth[:, :2], guess[:, :2], average="macro"))
    assert scores["mean_average_precision"] == pytest.approx(
        np.mean([average_precision_score(truth[:, j], probs[:, j]) for j in range(2)]))
    decoded = target.decode(LOGITS, None, calibration, ["a", "b", "c"])
    assert [d["labels"] for d in decoded] == [[n for n, on in zip("abc", row) if on] for row in guess]
    assert decoded[0]["probabilities"]["a"] == pytest.approx(float(probs[0, 0]))
    assert torch.allclose(target.probabilities(LOGITS), torch.sigmoid(LOGITS))
    assert target.figure(LOGITS, ROWS, calibration, ["a", "b", "c"]) is not None


def test_label_set_without_thresholds_cuts_at_one_half():
    decoded = LabelSet().decode(torch.tensor([[0.1, -0.1]]), None, {}, ["x", "y"])
    assert decoded[0]["labels"] == ["x"]


# -- split helpers ----------------------------------------------------------------------------------------------


def test_set_stratified_split_is_seeded_complete_and_shares_every_label_out():
    rng = np.random.default_rng(0)
    rows = (rng.random((400, 6)) < np.array([0.5, 0.3, 0.1, 0.05, 0.02, 0.01])).astype(int)
    train, val = set_stratified_split(rows, 0.2, seed=3)
    assert sorted(train + val) == list(range(400)) and not set(train) & set(val)
    assert len(val) == 80
    assert (train, val) == set_stratified_split(rows, 0.2, seed=3)
    assert set_stratified_split(rows, 0.2, seed=4) != (train, val)
    for j in range(6):
        total, held = rows[:, j].sum(), rows[val, j].sum()
        assert abs(held - 0.2 * total) <= 1, (j, held, total)


def test_set_stratified_split_needs_two_items():
    with pytest.raises(Exception, match="at least 2"):
        set_stratified_split([[1, 0]], 0.2, seed=0)


def test_quantile_bins_give_equal_bins_that_a_stratified_split_can_use():
    values = np.arange(100, dtype=float)
    bins = quantile_bins(values, 5)
    assert np.bincount(bins).tolist() == [20] * 5
    assert bins == sorted(bins)
    train, val = stratified_split(bins, 5, 0.2, seed=0)
    assert np.bincount(np.asarray(bins)[val]).tolist() == [4] * 5
    skewed = quantile_bins([0, 0, 0, 0, 0, 0, 0, 0, 1, 2], 10)  # repeated values and a lone top value
    assert min(np.bincount(skewed)) >= 2 and len(skewed) == 10
    assert quantile_bins([], 4) == []
