"""One trial's training loop on the tiny network: head start, weight averaging, deadline, divergence."""

from __future__ import annotations

import time

import pytest
import torch

from autotl.errors import UsageError
from autotl.training import train
from autotl_tasks.targets import ClassLabel
from tiny import accuracy

PARAMS = {"freeze": 0, "lora_rank": 0, "lr": 5e-3, "epochs": 3, "batch_size": 8, "resolution": 32,
          "augment": "flip"}


@pytest.fixture
def splits(tiny_folder, tiny_backbone):
    from autotl_image import ImageClassification

    task = ImageClassification()
    data = task.load(tiny_folder, seed=0, val_fraction=0.25, options={})
    return task.prepare(data, tiny_backbone, PARAMS)


def run(tiny_backbone, splits, **overrides):
    params = {**PARAMS, **overrides}
    return train(tiny_backbone, params, splits.train, splits.val, ClassLabel(), 3, device=torch.device("cpu"), seed=0)


def test_training_returns_the_best_epoch_and_its_weights(tiny_backbone, splits):
    result = run(tiny_backbone, splits)
    assert len(result.curve) == 3
    assert result.best_value == max(result.curve)
    assert result.curve[result.best_epoch] == result.best_value
    assert result.best_metrics["accuracy"] == result.best_value and set(result.best_metrics) == set(ClassLabel.metrics)
    model = result.adapted.model
    model.load_state_dict(result.best_state)
    assert accuracy(model, splits.val, torch.device("cpu")) == result.best_value


def test_the_new_head_starts_at_zero_by_default(tiny_backbone, splits):
    seen = {}

    def first_epoch(epoch, loss, val_accuracy):
        seen.setdefault("loss", loss)

    train(tiny_backbone, {**PARAMS, "lr": 1e-12, "epochs": 1}, splits.train, splits.val, ClassLabel(), 3,
          device=torch.device("cpu"), seed=0, on_epoch=first_epoch)
    assert seen["loss"] == pytest.approx(torch.log(torch.tensor(3.0)).item(), abs=1e-3)  # uniform over 3 classes


def test_weight_averaging_keeps_the_averaged_weights(tiny_backbone, splits):
    plain = run(tiny_backbone, splits)
    averaged = run(tiny_backbone, splits, ema_decay=0.9)
    key = next(k for k in plain.best_state if k.endswith("conv_stem.weight"))
    assert not torch.equal(plain.best_state[key], averaged.best_state[key])
    model = averaged.adapted.model
    model.load_state_dict(averaged.best_state)
    assert accuracy(model, splits.val, torch.device("cpu")) == averaged.best_value


def test_a_bad_ema_decay_is_a_usage_error(tiny_backbone, splits):
    with pytest.raises(UsageError, match="ema_decay"):
        run(tiny_backbone, splits, ema_decay=1.5)


def test_a_passed_deadline_cuts_the_epoch_short_and_keeps_what_was_learnt(tiny_backbone, splits):
    result = train(tiny_backbone, {**PARAMS, "epochs": 5}, splits.train, splits.val, ClassLabel(), 3, device=torch.device("cpu"),
                   seed=0, deadline=time.time())
    assert len(result.curve) == 1
    assert result.stopped == "time budget reached during epoch 1 of 5"
    assert result.best_state is not None


def test_a_diverging_loss_fails_with_a_clear_message(tiny_backbone, splits):
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        run(tiny_backbone, splits, lr=1e12, head_init="default")


def test_threads_follow_the_usable_cores_unless_omp_num_threads_is_set(monkeypatch):
    from autotl.training import configure_threads, usable_cpus

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        torch.set_num_threads(max(1, usable_cpus() + 3))
        assert configure_threads() == usable_cpus()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(max(1, usable_cpus() + 3))
        assert configure_threads() == usable_cpus() + 3  # the user's setting wins: left alone
    finally:
        torch.set_num_threads(before)


def test_the_moving_average_follows_the_warm_up_formula():
    from autotl.training import _ema

    net = torch.nn.Linear(2, 1)
    frozen = torch.nn.Linear(2, 1).requires_grad_(False)
    model = torch.nn.Sequential(net, frozen)
    ema = _ema(model, 0.9)
    expected = None
    for n in range(4):
        with torch.no_grad():
            net.weight.add_(1.0)
        current = net.weight.detach().clone()
        d = min(0.9, (1 + n) / (10 + n))
        expected = current if n == 0 else expected * d + current * (1 - d)
        ema.update_parameters(model)
        assert torch.allclose(ema.module[0].weight, expected)
    assert torch.equal(ema.module[1].weight, frozen.weight)  # frozen weights: never averaged, never moved
