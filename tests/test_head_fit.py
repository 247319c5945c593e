"""The converged-head fit (``head_fit: converged``): the head alone, fitted to convergence on frozen features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autotl import Backbone, TensorSplit
from autotl.errors import UsageError
from autotl.head_fit import head_inputs, head_module
from autotl.training import train
from autotl_tasks.targets import ClassLabel, LabelSet, Number

CPU = torch.device("cpu")


class _Net(nn.Module):
    def __init__(self, width: int, features: int = 24, inputs: int = 10, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(inputs, features), nn.Tanh())
        self.head = nn.Linear(features, width)

    def forward(self, x):
        return self.head(self.body(x))


class _Rest(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.head(x)


class TinyBackbone(Backbone):
    """A frozen random projection (the body: what a pretrained network would give) and a linear head."""

    name, family, modality = "tiny-projection", "test", "vector"

    def __init__(self, cut: bool = True):
        self.cut = cut

    def build(self, num_classes: int, pretrained: bool = True) -> nn.Module:
        return _Net(num_classes)

    def layer_groups(self, model):
        return [["body"], ["head"]]

    def lora_targets(self, model):
        return ["body.0"]

    def split(self, model, freeze):
        return (model.body, _Rest(model)) if self.cut and freeze == 1 else None


def blobs(n: int, classes: int = 3, seed: int = 0, inputs: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian classes: a fit that stops early scores differently from the optimum."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (classes, inputs))
    y = rng.integers(0, classes, n)
    x = centres[y] + rng.normal(0, 1.6, (n, inputs))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def splits(n_train=240, n_val=400):
    x, y = blobs(n_train + n_val)
    return (TensorSplit(x[:n_train], y[:n_train], random_augmentation=False),
            TensorSplit(x[n_train:], y[n_train:], random_augmentation=False))


CONVERGED = {"head_fit": "converged", "freeze": 1, "lr": 1e-3, "epochs": 3, "batch_size": 16}


def features(backbone, split):
    model = backbone.build(3)
    with torch.no_grad():
        return model.body(split.inputs).double().numpy()


@pytest.mark.parametrize("c", [1.0, 0.05])
def test_a_converged_head_reproduces_scikit_learns_l2_penalised_fit_on_the_same_features(c):
    from sklearn.linear_model import LogisticRegression

    backbone = TinyBackbone()
    train_split, val_split = splits()
    result = train(backbone, {**CONVERGED, "head_fit_c": c, "label_smoothing": 0.1}, train_split, val_split,
                   ClassLabel(), 3, device=CPU, seed=0)
    reference = LogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(features(backbone, train_split),
                                                                        train_split.labels.numpy())
    val_features = features(backbone, val_split)
    expected_accuracy = reference.score(val_features, val_split.labels.numpy())
    assert result.best_value == pytest.approx(expected_accuracy, abs=1.5 / len(val_split))  # one item at most
    model = result.adapted.model
    model.load_state_dict(result.best_state)
    with torch.no_grad():
        probabilities = torch.softmax(model(val_split.inputs), -1).double().numpy()
    assert np.abs(probabilities - reference.predict_proba(val_features)).max() < 2e-3
    assert result.head_fit["converged"] and result.head_fit["through"] == "head"
    assert result.head_fit["C"] == c and result.head_fit["items"] == len(train_split)
    assert result.curve == [result.best_value] and result.best_epoch == 0
    # the frozen body is the pretrained one, untouched
    assert torch.equal(result.best_state["body.0.weight"], backbone.build(3).state_dict()["body.0.weight"])


def test_training_the_head_by_sgd_for_a_few_epochs_stays_further_from_the_optimum():
    """What the issue measured: a short AdamW probe is not the converged fit (so the test above can fail)."""
    backbone = TinyBackbone()
    train_split, val_split = splits()
    converged = train(backbone, CONVERGED, train_split, val_split, ClassLabel(), 3, device=CPU, seed=0)
    sgd = train(backbone, {**CONVERGED, "head_fit": "sgd", "lr": 1e-3}, train_split, val_split, ClassLabel(), 3,
                device=CPU, seed=0)
    assert sgd.best_state["head.weight"].abs().max() < 0.5 * converged.best_state["head.weight"].abs().max()
    assert len(sgd.curve) == 3 and not sgd.head_fit


def test_without_a_cut_or_a_cache_the_fit_runs_the_whole_network_once_and_reaches_the_same_head(tmp_path):
    from autotl.cache import FeatureCache

    train_split, val_split = splits()
    cut = train(TinyBackbone(cut=True), CONVERGED, train_split, val_split, ClassLabel(), 3, device=CPU, seed=0,
                cache=FeatureCache(64, 64, tmp_path))
    whole = train(TinyBackbone(cut=False), CONVERGED, train_split, val_split, ClassLabel(), 3, device=CPU, seed=0,
                  cache=FeatureCache(64, 64, tmp_path))
    assert cut.cache == {"train": "computed", "val": "computed"}
    assert whole.cache == {"skipped": "tiny-projection cannot be cut after 1 layer groups"}
    assert torch.allclose(cut.best_state["head.weight"], whole.best_state["head.weight"], atol=1e-4)
    assert cut.best_value == whole.best_value


def test_a_head_followed_by_more_network_is_fitted_through_the_network():
    class Scaled(_Net):
        def forward(self, x):
            return 2.0 * self.head(self.body(x))  # the outputs are not the head's: its input cannot stand for them

    class ScaledBackbone(TinyBackbone):
        def build(self, num_classes, pretrained=True):
            return Scaled(num_classes)

    train_split, val_split = splits()
    plain = train(TinyBackbone(cut=False), CONVERGED, train_split, val_split, ClassLabel(), 3, device=CPU, seed=0)
    scaled = train(ScaledBackbone(cut=False), CONVERGED, train_split, val_split, ClassLabel(), 3, device=CPU, seed=0)
    assert scaled.head_fit["through"] == "network" and plain.head_fit["through"] == "head"
    # the same optimum of the network's outputs: the weights halve, the penalty on them quarters (C = 1 either way)
    assert scaled.head_fit["converged"]
    assert scaled.best_value == pytest.approx(plain.best_value, abs=0.05)


def test_the_head_input_is_refused_where_something_follows_the_head():
    backbone = TinyBackbone()
    model = backbone.build(3)
    train_split, _ = splits()
    captured = head_inputs(model, model.head, train_split, CPU, 64)
    assert captured is not None and captured[0].shape == (len(train_split), 24)
    assert head_inputs(nn.Sequential(model, nn.Tanh()), model.head, train_split, CPU, 64) is None
    assert head_module(model, ["head"]) is model.head and head_module(model, ["body.0", "head"]) is None


@pytest.mark.parametrize("target, labels", [
    (Number(), lambda y: y.float() * 3.0 + 1.0),
    (LabelSet(), lambda y: torch.stack([y == 0, y != 1], 1).float()),
])
def test_any_target_with_a_loss_gets_a_converged_head(target, labels):
    train_split, val_split = splits()
    train_split = TensorSplit(train_split.inputs, labels(train_split.labels), random_augmentation=False)
    val_split = TensorSplit(val_split.inputs, labels(val_split.labels), random_augmentation=False)
    width = 1 if isinstance(target, Number) else 2
    converged = train(TinyBackbone(), CONVERGED, train_split, val_split, target, width, device=CPU, seed=0)
    sgd = train(TinyBackbone(), {**CONVERGED, "head_fit": "sgd"}, train_split, val_split, target, width, device=CPU,
                seed=0)
    assert converged.head_fit["converged"]
    assert target.best_epoch(converged.best_value, sgd.best_value, target.primary)  # better than 3 epochs of AdamW


@pytest.mark.parametrize("params, message", [
    ({**CONVERGED, "freeze": 0}, "head_fit: converged fits the head alone: freeze must be 1 for tiny-projection"),
    ({**CONVERGED, "lora_rank": 4}, "lora_rank must be 0, not 4"),
    ({**CONVERGED, "head_fit": "closed"}, "head_fit must be one of sgd, converged, not 'closed'"),
    ({**CONVERGED, "head_fit_c": 0}, "head_fit_c must be a number, 1e-06 or more, not 0"),
])
def test_a_converged_head_with_settings_it_cannot_honour_is_a_usage_error(params, message):
    train_split, val_split = splits()
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(TinyBackbone(), params, train_split, val_split, ClassLabel(), 3, device=CPU, seed=0)


# -- in a search --------------------------------------------------------------------------------------

def test_a_new_search_runs_a_converged_head_trial_per_model_first_and_exports_it(tmp_path, tiny_backbone):
    from click.testing import CliRunner
    from tiny import TINY, make_image_folder, save_tiny_weights

    from autotl.cli import cli as autotl_cli
    from autotl.leaderboard import trial_rows
    from autotl.records import TrialRecord
    from autotl.runs import load_study, locate

    folder = make_image_folder(tmp_path / "data", per_class=10)
    weights = save_tiny_weights(tmp_path / "tiny.safetensors")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("task: image-classification\ndata: {val_fraction: 0.25}\n"
                      "space:\n  lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n  resolution: {choices: [24, 32]}\n"
                      "  augment: {choices: [flip, none]}\n"
                      "fixed: {epochs: 2, batch_size: 16, label_smoothing: 0.1}\n"
                      "start_with:\n  - {model: " + TINY + ", freeze: 0, lr: 5.0e-3}\n"
                      "converged_head: {C: 0.5}\npruner: {name: median}\n")
    out = tmp_path / "run"

    def cli(*args):
        result = CliRunner().invoke(autotl_cli, [str(a) for a in args])
        return result.exit_code, result.output

    code, output = cli("search", "--task", "image-classification", folder, "--out", out, "--recipe", recipe,
                       "--models", TINY, "--weights", f"{TINY}={weights}", "--trials", 2, "--seed", 0)
    assert code == 0, output
    assert "Queued first: a converged-head trial for each of 1 model(s)" in output
    assert "converged head: " in output and "L-BFGS iterations on 24 items" in output
    study = load_study(locate(str(out), None, None))
    first, second = study.trials[:2]
    params = TrialRecord.params(first)
    assert params["head_fit"] == "converged" and params["head_fit_c"] == 0.5 and params["lora_rank"] == 0
    assert params["freeze"] == len(tiny_backbone.layer_groups(tiny_backbone.build(3))) - 1  # all groups but the head
    assert params["resolution"] == 32 and params["augment"] == "flip"  # the largest resolution, the first choice
    assert first.params["head_fit"] == "converged" and first.intermediate_values == {}  # no epoch for the pruner
    fit = TrialRecord.from_trial(first).converged_fit
    assert fit["converged"] and fit["through"] == "head" and fit["C"] == 0.5
    assert TrialRecord.from_trial(first).cache == {"train": "computed", "val": "computed"}
    assert first.value == TrialRecord.from_trial(first).val_curve[0]
    # then the recipe's start point, trained as always
    assert TrialRecord.params(second)["freeze"] == 0 and "head_fit" not in TrialRecord.params(second)
    assert "head_fit" not in second.params
    rows = {r["number"]: r for r in trial_rows(study)}
    code, output = cli("trials", out)
    assert code == 0, output
    row = next(line for line in output.splitlines() if "│ 0 │" in line)
    assert "converged" in row and "5.00e-03" not in row
    # the converged trial's weights are a plain network: exported and checked by the round trip like any trial's
    code, output = cli("export", out, "--out", tmp_path / "bundle", "--trial", 0)
    assert code == 0, output
    config = __import__("json").loads((tmp_path / "bundle" / "config.json").read_text())
    assert config["trial"]["number"] == 0 and config["trial"]["params"]["head_fit"] == "converged"
    assert rows[0]["weights"]
    # --refit fits the head to convergence again, on train and val together: only the head moves
    code, output = cli("export", out, "--out", tmp_path / "refit", "--trial", 0, "--refit")
    assert code == 0, output
    assert "the head fitted to convergence again, C 0.5" in output
    refit = __import__("json").loads((tmp_path / "refit" / "config.json").read_text())["refit"]
    assert refit["note"].startswith("the head fitted to convergence again") and refit["samples"] == 30
    from autotl.files import load_weights

    saved, again = load_weights(out / rows[0]["weights"]), load_weights(tmp_path / "refit" / "model.safetensors")
    assert saved.keys() == again.keys()
    moved = {k for k in saved if not torch.equal(saved[k], again[k])}
    assert moved and all(k.startswith("classifier.") for k in moved), moved


def test_the_recipe_switch_turns_the_queued_trials_off_and_checks_c(tmp_path):
    from autotl.errors import UsageError
    from autotl.recipes import parse_recipe

    base = {"task": "image-classification", "space": {"lr": {"low": 1e-3, "high": 1e-2}}}
    assert parse_recipe(base, "r").converged_head == {"enabled": True, "C": 1.0}
    assert parse_recipe({**base, "converged_head": {"enabled": False}}, "r").converged_head["enabled"] is False
    with pytest.raises(UsageError, match=r"recipe r: converged_head.C: must be a number, 1e-06 or more, not 0"):
        parse_recipe({**base, "converged_head": {"C": 0}}, "r")
    with pytest.raises(UsageError, match=r"converged_head.c: unknown key; known keys are enabled, C"):
        parse_recipe({**base, "converged_head": {"c": 1}}, "r")


# -- the search space ---------------------------------------------------------------------------------

def _recipe(**sections):
    from autotl.recipes import parse_recipe

    raw = {"task": "image-classification", "space": {"lr": {"low": 1e-3, "high": 1e-2, "log": True},
                                                     "lora_rank": {"choices": [0, 4]},
                                                     "resolution": {"choices": [96, 128]},
                                                     "augment": {"choices": ["none", "flip+shift"]},
                                                     "label_smoothing": {"low": 0.0, "high": 0.2}},
           "fixed": {"epochs": 3}}
    raw.update(sections)
    return parse_recipe(raw, "r")


def test_queued_converged_points_take_the_richest_features_and_the_sampler_never_draws_head_fit():
    import optuna

    from autotl.space import converged_points, suggest

    recipe = _recipe(converged_head={"C": 2.0})
    counts = {"a": 5, "b": 3}
    points = converged_points(recipe, ["b", "a"], counts, loss_parameters={"label_smoothing"})
    assert points == [
        {"model": "b", "head_fit": "converged", "head_fit_c": 2.0, "freeze": 2, "resolution": 128, "augment": "none"},
        {"model": "a", "head_fit": "converged", "head_fit_c": 2.0, "freeze": 4, "resolution": 128, "augment": "none"}]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for point in points:
        study.enqueue_trial(point)
    seen = []
    for _ in range(8):
        trial = study.ask()
        params = suggest(trial, recipe, counts)
        seen.append(params)
        study.tell(trial, 0.5)
    assert [p.get("head_fit") for p in seen[:2]] == ["converged", "converged"]
    assert seen[0]["freeze"] == 2 and seen[0]["lora_rank"] == 0 and seen[0]["head_fit_c"] == 2.0
    assert study.trials[0].params["head_fit"] == "converged" and study.trials[0].params["freeze"] == 2
    assert all("head_fit" not in p and "head_fit_c" not in p for p in seen[2:])  # never sampled
    assert all("head_fit" not in t.params for t in study.trials[2:])
    # a retry of a queued trial (autotl/runs.py: queue_retry keeps its system attributes) is converged again
    from autotl.runs import queue_retry

    queue_retry(study, study.trials[1])
    retry = study.ask()
    assert suggest(retry, recipe, counts)["head_fit"] == "converged"


def test_a_recipe_may_fix_or_search_head_fit_and_a_bounded_freeze_range_still_gets_its_converged_trial():
    import optuna

    from autotl.space import converged_points, suggest

    counts = {"a": 5}
    fixed = _recipe(fixed={"epochs": 3, "head_fit": "converged", "freeze": 1, "lora_rank": 4})
    study = optuna.create_study()
    for _ in range(3):
        params = suggest(study.ask(), fixed, counts)
        assert params["head_fit"] == "converged" and params["freeze"] == 4 and params["lora_rank"] == 0
    searched = _recipe(space={"lr": {"low": 1e-3, "high": 1e-2}, "head_fit": {"choices": ["sgd", "converged"]}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    drawn = {suggest(study.ask(), searched, counts)["head_fit"] for _ in range(12)}
    assert drawn == {"sgd", "converged"}
    bounded = _recipe(space={"lr": {"low": 1e-3, "high": 1e-2}, "freeze": {"low": 0, "high": 2}})
    point = converged_points(bounded, ["a"], counts)[0]
    assert "freeze" not in point  # outside the sampled range: not suggested, but the trial is still the head alone
    study = optuna.create_study()
    study.enqueue_trial(point)
    trial = study.ask()
    assert suggest(trial, bounded, counts)["freeze"] == 4 and "freeze" not in trial.params


def test_a_tag_per_word_gets_a_converged_head_from_one_pass_of_the_frozen_network(tmp_path):
    """Per-position targets: the tiny BERT tagger cannot be cut before its head (the cache says why), so the
    frozen network runs once, the head's input (hidden states per position) is captured, and the head fitted."""
    import tinybert
    from test_tokens import TASK, make_conll

    from autotl.cache import FeatureCache
    from autotl.inference import predict_outputs
    from autotl.plugins import target_of
    from autotl_transformers import TransformersFamily

    model = str(tinybert.save_tiny_bert(tmp_path / "m"))
    backbone = TransformersFamily().get(model)
    data = TASK.load(make_conll(tmp_path / "data", sentences=(("train", 200), ("test", 20))), seed=0,
                     val_fraction=0.2, options={})
    target = target_of(TASK, data.label_names)
    last = len(backbone.layer_groups(backbone.build_per_position(3))) - 1
    params = {"model": model, "freeze": last, "lora_rank": 0, "lr": 3e-3, "epochs": 5, "batch_size": 16}
    prepared = TASK.prepare(data, backbone, params)
    width = target.width(data.label_names)
    cache = FeatureCache(256, 0, tmp_path / "cache")
    converged = train(backbone, {**params, "head_fit": "converged"}, prepared.train, prepared.val, target, width,
                      device=CPU, seed=0, cache=cache)
    sgd = train(backbone, params, prepared.train, prepared.val, target, width, device=CPU, seed=0, cache=cache)
    assert converged.head_fit["converged"] and converged.head_fit["through"] == "head"
    assert "cannot be cut" in converged.cache["skipped"]
    assert converged.best_value > sgd.best_value
    network = converged.adapted.model
    network.load_state_dict(converged.best_state)
    outputs = predict_outputs(network, prepared.val, CPU)
    assert target.score(outputs, prepared.val.labels, converged.calibration)[target.primary] == converged.best_value


class _SlowBody(nn.Module):
    """The tiny body, 2 ms an item: a frozen pass over 700 items takes about 1.4 s."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        import time

        time.sleep(0.002 * len(x))
        return self.body(x)


class SlowBackbone(TinyBackbone):
    name = "slow-projection"

    def build(self, num_classes: int, pretrained: bool = True) -> nn.Module:
        model = _Net(num_classes)
        model.body = _SlowBody(model.body)
        return model

    def lora_targets(self, model):
        return ["body.body.0"]


def test_a_converged_head_whose_frozen_pass_would_end_past_the_deadline_fits_on_a_random_part(tmp_path):
    import time

    from autotl.cache import FeatureCache
    from autotl.training import MIN_HEAD_ITEMS

    train_split, val_split = splits(n_train=600, n_val=100)
    whole = train(SlowBackbone(), CONVERGED, train_split, val_split, ClassLabel(), 3, device=CPU, seed=0,
                  deadline=time.time() + 60)
    assert whole.head_fit["items"] == 600 and "subsample" not in whole.head_fit  # time enough: all of it
    part = train(SlowBackbone(), CONVERGED, train_split, val_split, ClassLabel(), 3, device=CPU, seed=0,
                 deadline=time.time() + 0.6, cache=FeatureCache(64, 64, tmp_path))
    assert MIN_HEAD_ITEMS <= part.head_fit["items"] < 300  # half of 0.6 s of 2 ms items, less the 100 validated
    assert part.head_fit["subsample"].startswith(f"{part.head_fit['items']} of 600 training items, drawn at random")
    assert part.best_value > 0.5  # a sound head all the same (three classes)
    # where the cache holds the whole split's outputs already, they cost nothing: the head gets all of them
    cache = FeatureCache(64, 64, tmp_path / "warm")
    train(SlowBackbone(), CONVERGED, train_split, val_split, ClassLabel(), 3, device=CPU, seed=0, cache=cache)
    warm = train(SlowBackbone(), CONVERGED, train_split, val_split, ClassLabel(), 3, device=CPU, seed=0,
                 deadline=time.time() + 0.1, cache=cache)
    assert warm.head_fit["items"] == 600 and "subsample" not in warm.head_fit


def test_a_trial_whose_frozen_prefix_would_take_most_of_the_time_left_trains_on_a_random_part(tmp_path):
    import time

    from autotl.cache import FeatureCache
    from autotl.training import MIN_HEAD_ITEMS

    train_split, val_split = splits(n_train=600, n_val=100)
    probe = {"freeze": 1, "lr": 1e-2, "epochs": 2, "batch_size": 32}
    part = train(SlowBackbone(), probe, train_split, val_split, ClassLabel(), 3, device=CPU, seed=0,
                 deadline=time.time() + 1.0, cache=FeatureCache(64, 64, tmp_path))
    assert MIN_HEAD_ITEMS <= int(part.subsample.split()[0]) < 400  # half of 1 s for the prefix, less validation
    assert part.subsample.endswith("s were left for it") and len(part.curve) >= 1
    whole = train(SlowBackbone(), probe, train_split, val_split, ClassLabel(), 3, device=CPU, seed=0,
                  deadline=time.time() + 60, cache=FeatureCache(64, 64, tmp_path / "b"))
    assert whole.subsample == "" and len(whole.curve) == 2


class _NormBody(_SlowBody):
    def __init__(self, body):
        super().__init__(nn.Sequential(body, nn.BatchNorm1d(24)))


class NormBackbone(SlowBackbone):
    name = "slow-normed-projection"

    def build(self, num_classes: int, pretrained: bool = True) -> nn.Module:
        model = _Net(num_classes)
        model.body = _NormBody(model.body)
        return model

    def lora_targets(self, model):
        return ["body.body.0.0"]


def test_timing_the_frozen_prefix_leaves_its_batch_norm_statistics_alone(tmp_path):
    import time

    from autotl.cache import FeatureCache

    train_split, val_split = splits(n_train=600, n_val=100)
    part = train(NormBackbone(), {"freeze": 1, "lr": 1e-2, "epochs": 1, "batch_size": 32}, train_split, val_split,
                 ClassLabel(), 3, device=CPU, seed=0, deadline=time.time() + 1.0, cache=FeatureCache(64, 64, tmp_path))
    assert part.subsample  # the prefix was timed (and the trial fitted to the deadline)
    assert torch.equal(part.best_state["body.body.1.running_mean"], torch.zeros(24))  # as built: never updated
