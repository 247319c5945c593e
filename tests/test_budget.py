"""The time budget's rule (autotl/budget.py): what the trials leave for the work after them, when they stop, what a
configuration costs from the trials recorded, and the shorter trial run where a typical one no longer fits."""

from __future__ import annotations

import datetime
import time

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from autotl.budget import KEEP_S, Budget, estimated_cost, measured_cost, short_start, shortest_seconds

DISTRIBUTIONS = {"model": CategoricalDistribution(["a", "b"]), "freeze": IntDistribution(0, 5),
                 "lr": FloatDistribution(1e-5, 1e-1, log=True), "epochs": IntDistribution(1, 20)}


def add(study: optuna.Study, value: float, *, model: str = "a", freeze: int = 0, lr: float = 1e-3, epochs: int = 4,
        epoch_s: float = 10.0, setup: float = 2.0, prefix: float = 0.0, seconds: float | None = None,
        state: TrialState = TrialState.COMPLETE, **attrs) -> None:
    """A done trial of ``epochs`` epochs of ``epoch_s`` seconds each, as the search records one."""
    params = {"model": model, "freeze": freeze, "lr": lr, "epochs": epochs}
    start = datetime.datetime(2026, 1, 1)
    seconds = seconds if seconds is not None else setup + prefix + epochs * epoch_s
    user_attrs = {"config": dict(params, batch_size=16), "epoch_seconds": [epoch_s] * epochs,
                  "timing": {"setup": setup, "prefix": prefix, "eval": 0.5 * epochs}, **attrs}
    study.add_trial(optuna.trial.FrozenTrial(
        number=len(study.trials), state=state, value=value if state == TrialState.COMPLETE else None,
        values=None, datetime_start=start, datetime_complete=start + datetime.timedelta(seconds=seconds),
        params=params, distributions=DISTRIBUTIONS, user_attrs=user_attrs, system_attrs={},
        intermediate_values={e: value for e in range(1, epochs + 1)}, trial_id=0))


@pytest.fixture
def study():
    return optuna.create_study(direction="maximize")


def test_before_any_trial_the_reserve_is_kept_then_the_estimate_replaces_it(study):
    now = time.time()
    budget = Budget(time_budget=100.0, started=now - 10.0, reserved=0.25, after=lambda s: 20.0)
    assert budget.trials_end(study) == pytest.approx(budget.end - 25.0)
    add(study, 0.5)
    assert budget.trials_end(study) == pytest.approx(budget.end - 24.0)  # 20s estimated, with a fifth more
    assert Budget(time_budget=100.0, started=now, reserved=0.25, after=lambda s: 70.0).held(study)[0] == 50.0  # half


def test_the_test_scores_and_the_ensemble_are_kept_inside_the_budget(study):
    now = time.time()
    add(study, 0.5)
    budget = Budget(time_budget=100.0, started=now - 60.0, finishing=lambda s: 30.0)
    assert budget.trials_end(study) == pytest.approx(budget.end - 30.0)
    assert "30s for the test scores and the ensemble" in budget.reason_to_stop(study)  # 40s left, 30s kept
    budget = Budget(time_budget=100.0, started=now, reserved=0.25, after=lambda s: 50.0, finishing=lambda s: 50.0)
    assert budget.trials_end(study) == pytest.approx(budget.end - 75.0)  # never more than three quarters kept


def test_the_trials_go_on_while_the_shortest_trial_seen_fits(study):
    add(study, 0.5, epoch_s=10.0, setup=2.0, epochs=8)  # a typical trial: 82s
    add(study, 0.4, epoch_s=4.0, setup=1.0, epochs=8)
    assert shortest_seconds(study.trials) == pytest.approx(1.0 + 4.0 + KEEP_S)  # no keeping recorded: KEEP_S
    now = time.time()
    assert Budget(time_budget=100.0, started=now - 90.0).reason_to_stop(study) == ""  # 10s left: a short one fits
    reason = Budget(time_budget=100.0, started=now - 94.0).reason_to_stop(study)
    assert "the shortest trial takes 8s" in reason
    assert "time budget of 100s used" in Budget(time_budget=100.0, started=now - 101.0).reason_to_stop(study)
    assert "--trials 2" in Budget(trials=2, time_budget=100.0, started=now).reason_to_stop(study)


def test_the_cost_of_a_configuration_comes_from_the_trials_most_like_it(study):
    add(study, 0.5, model="a", freeze=0, epoch_s=10.0, setup=3.0, prefix=30.0)
    add(study, 0.5, model="a", freeze=3, epoch_s=2.0, setup=3.0)
    add(study, 0.5, model="b", freeze=3, epoch_s=5.0, setup=1.0)
    params = {"model": "a", "freeze": 0, "lr": 0.05, "epochs": 9, "batch_size": 16}
    cost = estimated_cost(study.trials, params)
    assert (cost.setup, cost.epoch) == (33.0, 10.0)  # the same shape: its learning rate and epochs do not count
    assert estimated_cost(study.trials, dict(params, batch_size=64)).epoch == 10.0  # same model and freeze depth
    assert estimated_cost(study.trials, dict(params, freeze=5)).epoch == 6.0  # same model: the median
    assert estimated_cost(study.trials, dict(params, model="c")) is None
    assert cost.epochs_within(33.0 + KEEP_S + 25.0) == 2
    converged = optuna.create_study()
    add(converged, 0.5, config={"model": "a", "head_fit": "converged"})
    assert measured_cost(converged.trials[0]) is None  # one fit, no epochs: never a cost per epoch


def test_a_shorter_trial_is_shaped_like_the_best_one_that_fits(study):
    add(study, 0.9, model="a", freeze=0, epoch_s=30.0, epochs=6)  # the best, 182s a trial
    add(study, 0.7, model="b", freeze=4, epoch_s=3.0, epochs=6)
    add(study, 0.6, model="a", freeze=5, epoch_s=2.0, epochs=6)
    assert short_start(study, 300.0) is None  # a typical trial fits
    like, params = short_start(study, 15.0)  # below the median trial, 20s
    assert like.number == 1 and params == {"model": "b", "freeze": 4}  # the learning rate and epochs: sampled
    assert short_start(study, 5.0) is None  # not even one epoch of any
    assert short_start(study, 9.5)[0].number == 2  # two epochs of trial 2 fit, one of the better trial 1


def test_a_trial_started_late_runs_the_epochs_that_fit(study, tmp_path):
    from autotl.objective import Objective

    add(study, 0.5, epoch_s=10.0, setup=2.0, epochs=8)
    objective = Objective.__new__(Objective)  # only the budget's part of a trial
    objective.deadline = time.time() + 40.0
    trial = study.ask()
    params = objective._fitted(trial, {"model": "a", "freeze": 0, "lr": 0.01, "epochs": 8, "batch_size": 16})
    assert params["epochs"] == 3  # (40 - 2 setup - 3 keeping) // 10
    assert trial.user_attrs["shortened"].startswith("3 of 8 epochs: 40s left")
    assert objective._cut_at == pytest.approx(objective.deadline - 0.5 - KEEP_S)  # its last validation fits too
    objective.deadline = time.time() + 1000.0
    assert objective._fitted(study.ask(), {"model": "a", "freeze": 0, "epochs": 8, "batch_size": 16})["epochs"] == 8


def test_prediction_seconds_take_the_measured_pass_before_the_one_thread_latency():
    from optuna.trial import create_trial

    from autotl.after_search import prediction_seconds

    def trial(latency):
        return create_trial(value=0.5, user_attrs={"latency": latency})

    assert prediction_seconds(trial({"pass_ms": 2.0, "batched_ms": 10.0}), 500) == pytest.approx(1.0)
    assert prediction_seconds(trial({"batched_ms": 10.0, "batch1_ms": 30.0}), 500) == pytest.approx(5.0)
    assert prediction_seconds(trial({}), 500) == 0.0


def test_pass_ms_predicts_items_of_every_length_in_the_search_order():
    import torch

    from autotl.base import TensorSplit
    from autotl.latency import PASS_ITEMS, pass_ms

    class Lengths(TensorSplit):
        def search_order(self):
            return torch.argsort(self.inputs[:, 0], descending=True)

    seen = []

    class Net(torch.nn.Module):
        def forward(self, x):
            seen.append(x[:, 0].clone())
            return x[:, :2]

    split = Lengths(torch.arange(640.0).repeat(3, 1).T.contiguous(), torch.zeros(640, dtype=torch.long),
                    random_augmentation=False)
    assert pass_ms(Net(), split, torch.device("cpu")) >= 0
    values = torch.cat(seen)
    assert len(values) == PASS_ITEMS and values.max() == 639 and values.min() < 20  # spread over the sizes
    assert torch.equal(values, values.sort(descending=True).values)  # in the search order


def test_the_finishing_estimate_holds_for_the_test_outputs_the_next_trial_would_add():
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    from autotl.after_search import finishing_seconds

    study = optuna.create_study(direction="maximize")

    def add(value, model, pass_ms):
        study.add_trial(create_trial(value=value, params={"model": model},
                                     distributions={"model": CategoricalDistribution(["a", "b"])},
                                     user_attrs={"latency": {"pass_ms": pass_ms}}))

    add(0.8, "a", 10.0)  # 1000 test items: 10 s
    # one kept trial: its test outputs, and those of the trial about to run (priced as the costliest kept one)
    assert finishing_seconds(study, 100, 1000, None, ensemble=True) == pytest.approx(10 + 10)
    assert finishing_seconds(study, 100, 1000, None, ensemble=False) == pytest.approx(10)
    add(0.7, "b", 20.0)
    # the best's, two candidates' and the next one's (a third candidate)
    assert finishing_seconds(study, 100, 1000, None, ensemble=True) == pytest.approx(10 + 20 + 10 + 20)
    add(0.6, "b", 20.0)  # three candidates already: the next one replaces one, it adds nothing; b's soup: 0.1 s + 20 s
    assert finishing_seconds(study, 100, 1000, None, ensemble=True) == pytest.approx(10 + 10 + 20 + 20 + 2 + 20)
