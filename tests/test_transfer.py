"""Zero-cost pre-ranking: the transferability estimates on synthetic features, and the search's use of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from click.testing import CliRunner
from tiny import TINY, make_image_folder, save_tiny_weights
from timm.models import build_model_with_cfg, register_model
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet

from autotl import transfer
from autotl.cli import cli
from autotl.errors import UsageError
from autotl.plugins import get_registry
from autotl.progress import Reporter
from autotl.recipes import PRERANK_DEFAULTS, parse_recipe
from autotl.controller import Search, SearchOptions
from autotl.records import PRERANK_DROPPED_ATTR, TRANSFERABILITY_ATTR
from autotl.transfer import (Ranked, choose_dropped, combine, gbc, hscore, logme,
                             plan_start_points, sampled_models)

ESTIMATES = {"logme": logme, "hscore": hscore, "gbc": gbc}
TINY2 = "autotl_tiny_effnet_wide"


def _tiny_wide(pretrained: bool = False, **kwargs):
    arch = [["ds_r1_k3_s1_c12"], ["ir_r1_k3_s2_e3_c16"]]
    return build_model_with_cfg(EfficientNet, TINY2, pretrained, block_args=decode_arch_def(arch),
                                num_features=24, stem_size=8, **kwargs)


if not timm.is_model(TINY2):
    _tiny_wide.__name__ = TINY2
    register_model(_tiny_wide)


# -- synthetic features ------------------------------------------------------------------------------

def clusters(n=240, d=32, classes=4, noise=1.0, seed=0):
    """Class centres plus isotropic noise: separable for small ``noise``."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(size=(classes, d)) * 3
    return centres[labels] + noise * rng.normal(size=(n, d)), labels


def icml_logme(f: np.ndarray, y: np.ndarray) -> float:
    """LogME as the ICML 2021 paper computes it: the D x D eigen-decomposition of F^T F, iterated to convergence."""
    n, d = f.shape
    v, s, vh = np.linalg.svd(f.T @ f, full_matrices=True)
    evidences = []
    for c in np.unique(y):
        t = (y == c).astype(np.float64)
        projected = vh @ (f.T @ t)
        alpha, beta = 1.0, 1.0
        for _ in range(10_000):
            gamma = (s / (s + alpha / beta)).sum()
            m = v @ (projected * beta / (alpha + beta * s))
            alpha_de = (m * m).sum()
            beta_de = ((t - f @ m) ** 2).sum()
            new_alpha, new_beta = gamma / (alpha_de + 1e-5), (n - gamma) / (beta_de + 1e-5)
            done = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < 1e-12
            alpha, beta = new_alpha, new_beta
            if done:
                break
        evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * s))
                    - beta / 2 * beta_de - alpha / 2 * alpha_de - n / 2 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


@pytest.mark.parametrize("n,d", [(200, 20), (60, 100)])
def test_logme_equals_the_icml_algorithm_with_more_samples_or_more_features(n, d):
    features, labels = clusters(n=n, d=d, noise=2.0, seed=n)
    expected = icml_logme(features / np.sqrt(np.mean(features**2)), labels)  # logme() scales features to RMS 1
    assert logme(features, labels, tol=1e-10) == pytest.approx(expected, abs=1e-6)
    # the default tolerance (LogME's 1e-3 on alpha / beta) lands next to the exact maximum
    assert logme(features, labels) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("name", ESTIMATES)
def test_separable_features_score_higher_than_noise(name):
    separable, labels = clusters(noise=0.5)
    noise = np.random.default_rng(1).normal(size=separable.shape) * separable.std()
    assert ESTIMATES[name](separable, labels) > ESTIMATES[name](noise, labels)


@pytest.mark.parametrize("name", ESTIMATES)
def test_the_estimates_follow_how_separable_the_classes_are(name):
    scores = [ESTIMATES[name](*clusters(noise=noise)) for noise in (0.5, 2.0, 8.0)]
    assert scores[0] > scores[1] > scores[2], scores


@pytest.mark.parametrize("name", ESTIMATES)
def test_the_estimates_ignore_scale_rotation_sample_order_and_class_names(name):
    features, labels = clusters(n=120, d=16, noise=2.0)
    score = ESTIMATES[name](features, labels)
    rng = np.random.default_rng(3)
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    order = rng.permutation(len(labels))
    renamed = np.array([7, 2, 9, 4])[labels]
    assert ESTIMATES[name](features * 1000.0, labels) == pytest.approx(score, rel=1e-3, abs=1e-3)
    assert ESTIMATES[name](features @ rotation, labels) == pytest.approx(score, rel=1e-6, abs=1e-6)
    assert ESTIMATES[name](features[order], labels[order]) == pytest.approx(score, rel=1e-6, abs=1e-6)
    assert ESTIMATES[name](features, renamed) == pytest.approx(score, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("name", ESTIMATES)
@pytest.mark.parametrize("case", ["one sample per class", "one class", "constant features", "zero features",
                                  "one sample", "one feature", "duplicated samples"])
def test_degenerate_inputs_give_a_finite_score(name, case):
    rng = np.random.default_rng(0)
    features, labels = {
        "one sample per class": (rng.normal(size=(5, 8)), np.arange(5)),
        "one class": (rng.normal(size=(20, 8)), np.zeros(20, dtype=int)),
        "constant features": (np.ones((20, 8)) * 3.0, np.arange(20) % 2),
        "zero features": (np.zeros((20, 8)), np.arange(20) % 2),
        "one sample": (rng.normal(size=(1, 8)), np.array([0])),
        "one feature": (rng.normal(size=(20, 1)), np.arange(20) % 2),
        "duplicated samples": (np.repeat(rng.normal(size=(4, 8)), 5, axis=0), np.repeat(np.arange(4) % 2, 5)),
    }[case]
    assert np.isfinite(ESTIMATES[name](features, labels))


@pytest.mark.parametrize("name", ESTIMATES)
def test_bad_inputs_are_refused_with_a_message(name):
    with pytest.raises(ValueError, match="2-D"):
        ESTIMATES[name](np.zeros(5), np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="labels"):
        ESTIMATES[name](np.zeros((5, 2)), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="NaN"):
        ESTIMATES[name](np.full((5, 2), np.nan), np.zeros(5, dtype=int))


def test_gbc_is_zero_for_perfectly_separated_classes_and_minus_pairs_for_identical_ones():
    features, labels = clusters(n=40, d=4, classes=2, noise=1e-6)
    assert gbc(features * 1e6, labels) == pytest.approx(0.0, abs=1e-9)
    same = np.random.default_rng(0).normal(size=(40, 4))
    assert gbc(np.vstack([same, same]), np.repeat([0, 1], 40)) == pytest.approx(-2.0)


# -- combining and using the ranking ------------------------------------------------------------------

def test_combine_takes_the_mean_rank_over_the_estimates():
    scores = {"a": {"logme": 3.0, "hscore": 1.0, "gbc": -1.0},
              "b": {"logme": 2.0, "hscore": 5.0, "gbc": -0.5},
              "c": {"logme": 1.0, "hscore": 0.0, "gbc": -0.5}}
    # ranks: logme a1 b2 c3; hscore b1 a2 c3; gbc b and c tie for 1 and 2 (1.5 each), a3
    assert combine(scores) == {"a": pytest.approx(2.0), "b": pytest.approx(1.5), "c": pytest.approx(2.5)}


def rows(*entries):
    """Ranked rows from (model, logme[, mean rank]) tuples, already best first."""
    return [Ranked(e[0], {"logme": e[1], "hscore": 0.0, "gbc": 0.0}, rank=i, mean_rank=float(e[2] if len(e) > 2 else i))
            for i, e in enumerate(entries, 1)]


def test_only_models_far_below_the_best_and_in_the_lower_half_are_dropped():
    ranked = rows(("a", 1.0), ("b", 0.2), ("c", 0.9), ("d", 0.1))
    dropped = choose_dropped(ranked, 0.5)
    assert set(dropped) == {"d"}  # b is far below too, but the estimates put it in the upper half
    assert "0.9000 below the best" in dropped["d"] and "rank 4 of 4" in dropped["d"]
    assert choose_dropped(ranked, None) == {}
    assert choose_dropped(ranked, 2.0) == {}
    assert set(choose_dropped(ranked, 0.0)) == {"c", "d"}
    unscored = ranked + [Ranked("e", error="ValueError: boom")]
    assert "e" not in choose_dropped(unscored, 0.0)
    # two models the estimates tie on (mean rank 1.5 each): LogME alone does not drop the second
    assert choose_dropped(rows(("a", 3.0, 1.5), ("b", 1.0, 1.5)), 0.5) == {}
    assert set(choose_dropped(rows(("a", 3.0, 1.33), ("b", 1.0, 1.67)), 0.5)) == {"b"}


def test_start_points_follow_the_ranking_and_the_best_model_gets_a_seeded_one():
    points = [{"model": "a", "lr": 1}, {"model": "b", "lr": 2, "freeze": 9}, {"model": "a", "lr": 3}]
    planned, note = plan_start_points(points, rows(("b", 1.0), ("a", 0.5)), {}, {"a": 4, "b": 12})
    assert [(p["model"], p["lr"]) for p in planned] == [("b", 2), ("a", 1), ("a", 3)] and not note

    planned, note = plan_start_points(points, rows(("c", 1.0), ("a", 0.5), ("b", 0.1)), {"b": "hopeless"},
                                      {"a": 4, "b": 12, "c": 3})
    assert [(p["model"], p["lr"]) for p in planned] == [("c", 1), ("a", 1), ("a", 3)]
    assert "seeded a start point for c" in note
    planned, _ = plan_start_points(points[1:2], rows(("c", 1.0), ("b", 0.5)), {}, {"b": 12, "c": 3})
    assert planned[0] == {"model": "c", "lr": 2, "freeze": 2}  # freeze kept within c's 3 layer groups


def test_sampled_models_leave_out_what_the_study_dropped():
    counts = {"a": 3, "b": 4}
    assert sampled_models(counts, {}) == counts
    assert sampled_models(counts, {PRERANK_DROPPED_ATTR: {"b": "why"}}) == {"a": 3}


def test_the_recipe_prerank_section_is_checked():
    base = {"task": "image-classification", "space": {"lr": {"low": 1e-3, "high": 1e-2}}}
    assert parse_recipe(base, "r.yaml").prerank == PRERANK_DEFAULTS
    assert parse_recipe(dict(base, prerank={"drop_below": None}), "r.yaml").prerank["drop_below"] is None
    for bad, where in [({"enabled": "yes"}, "prerank.enabled"), ({"drop_below": -1}, "prerank.drop_below"),
                       ({"max_samples": 1}, "prerank.max_samples"), ({"drop": 1}, "prerank.drop")]:
        with pytest.raises(UsageError, match=where):
            parse_recipe(dict(base, prerank=bad), "r.yaml")


# -- features through the plugin contract ---------------------------------------------------------------

def test_the_default_feature_extractor_gives_the_head_input_of_a_timm_network(tiny_backbone):
    extractor = tiny_backbone.feature_extractor()
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        features = extractor(x)
        reference = tiny_backbone.build(5).eval()
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
    assert features.shape == (3, 32)
    torch.testing.assert_close(features, expected)
    assert not extractor.training


def test_the_default_feature_extractor_gives_pooled_text_features(tmp_path):
    from tinybert import save_tiny_bert

    from autotl_transformers import TransformersFamily

    backbone = TransformersFamily().get(str(save_tiny_bert(tmp_path / "bert", hidden=16)))
    ids = torch.tensor([[2, 10, 11, 3, 0], [2, 12, 3, 0, 0]])
    with torch.inference_mode():
        features = backbone.feature_extractor()(input_ids=ids, attention_mask=(ids != 0).long())
    assert features.shape == (2, 16) and torch.isfinite(features).all()


# -- the search ------------------------------------------------------------------------------------------

@pytest.fixture
def two_models(tmp_path):
    """Weights of two tiny networks and a recipe with a start point for the first."""
    weights = {TINY: save_tiny_weights(tmp_path / "a.safetensors", seed=2)}
    torch.manual_seed(5)
    weights[TINY2] = tmp_path / "b.pt"
    torch.save(timm.create_model(TINY2, num_classes=1000).state_dict(), weights[TINY2])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "image-classification", "data": {"val_fraction": 0.25},
        "space": {"freeze": {"low": 0}, "lr": {"low": 1e-3, "high": 1e-2, "log": True}},
        "fixed": {"resolution": 32, "epochs": 1, "batch_size": 32, "augment": "flip"},
        "start_with": [{"model": TINY, "freeze": 0, "lr": 3e-3}],
        "sampler": {"name": "random"}, "pruner": {"name": "none"},
    }))
    return weights, recipe


class Collect(Reporter):
    def __init__(self):
        self.lines = []

    def message(self, text):
        self.lines.append(text)


def open_search(folder, out, weights, recipe, reporter=None, **overrides):
    options = SearchOptions(task="image-classification", data=folder, out=out, recipe=str(recipe),
                            models=list(weights), weights={k: str(v) for k, v in weights.items()}, trials=3, seed=0)
    for key, value in overrides.items():
        setattr(options, key, value)
    search = Search(options, get_registry(), reporter or Reporter())
    search.open()
    return search


def test_a_new_search_ranks_its_models_stores_the_ranking_and_starts_with_the_best(tmp_path, two_models):
    weights, recipe = two_models
    folder = make_image_folder(tmp_path / "data", per_class=8)
    reporter = Collect()
    search = open_search(folder, tmp_path / "run", weights, recipe, reporter)
    ranking = search.study.user_attrs[TRANSFERABILITY_ATTR]
    assert search.study.user_attrs[PRERANK_DROPPED_ATTR] == {}, ranking
    assert {r["model"] for r in ranking} == set(weights)
    assert ranking[0]["mean_rank"] <= ranking[1]["mean_rank"]
    assert [r["rank"] for r in ranking] == [1, 2]
    for row in ranking:
        assert {"model", "logme", "hscore", "gbc", "rank", "mean_rank", "seconds"} <= set(row)
        assert np.isfinite(row["logme"]) and row["seconds"] > 0
        assert row["samples"] == 18  # the training split only: 24 images less a quarter for validation
    text = "\n".join(reporter.lines)
    assert "Pre-ranking 2 source models" in text and "LogME" in text and "mean rank" in text
    assert all(f"{m}:" in text for m in weights)  # a progress line per model

    queued = [t.system_attrs["fixed_params"] for t in search.study.get_trials(states=(optuna_waiting(),))]
    # first a converged-head trial per model, best-ranked first (autotl/head_fit.py), then the start points
    assert [p["model"] for p in queued[:2]] == [r["model"] for r in ranking]
    assert all(p["head_fit"] == "converged" for p in queued[:2])
    waiting = queued[2:]
    assert not any("head_fit" in p for p in waiting)
    assert waiting[0]["model"] == ranking[0]["model"]  # the best-ranked model's start point first
    assert [p["model"] for p in waiting].count(TINY) == 1  # the recipe's own point, once
    expected = [ranking[0]["model"]] if ranking[0]["model"] == TINY else [TINY2, TINY]  # TINY2 first: seeded
    assert [p["model"] for p in waiting] == expected
    search.run()
    assert search.study.trials[0].params["model"] == ranking[0]["model"]
    json.dumps(search.study.user_attrs[TRANSFERABILITY_ATTR])  # JSON-serialisable for the report


def optuna_waiting():
    from optuna.trial import TrialState

    return TrialState.WAITING


def test_a_dropped_model_is_never_sampled_and_stays_dropped_on_resume(tmp_path, two_models, monkeypatch):
    weights, recipe = two_models
    raw = yaml.safe_load(recipe.read_text())
    raw["prerank"] = {"drop_below": 0.1}
    recipe.write_text(yaml.safe_dump(raw))
    # TINY2 with every weight zero: the same features for every image, worthless by every estimate
    torch.save({k: torch.zeros_like(v) for k, v in torch.load(weights[TINY2]).items()}, weights[TINY2])
    folder = make_image_folder(tmp_path / "data", per_class=8)
    search = open_search(folder, tmp_path / "run", weights, recipe)
    ranking = search.study.user_attrs[TRANSFERABILITY_ATTR]
    loser = TINY2
    assert [r["model"] for r in ranking] == [TINY, TINY2] and ranking[1]["mean_rank"] == 2.0
    assert search.study.user_attrs[PRERANK_DROPPED_ATTR].keys() == {loser} and ranking[1]["dropped"]
    assert loser not in search.group_counts
    search.run()
    search.close()
    assert {t.params["model"] for t in search.study.trials} == {ranking[0]["model"]}

    def must_not_run(*args, **kwargs):
        raise AssertionError("a resumed study must not rank again")

    monkeypatch.setattr(transfer, "rank_models", must_not_run)
    resumed = open_search(folder, tmp_path / "run", weights, recipe, trials=5)
    assert loser not in resumed.group_counts
    resumed.run()
    assert {t.params["model"] for t in resumed.study.trials} == {ranking[0]["model"]}
    assert len(resumed.study.trials) == 5


def test_no_prerank_skips_the_ranking(tmp_path, two_models):
    weights, recipe = two_models
    folder = make_image_folder(tmp_path / "data", per_class=8)
    args = ["search", "--task", "image-classification", str(folder), "--out", str(tmp_path / "run"), "--recipe",
            str(recipe), "--models", ",".join(weights), "--trials", "1", "--no-prerank"]
    for name, path in weights.items():
        args += ["--weights", f"{name}={path}"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Pre-ranking" not in result.output
    search = open_search(folder, tmp_path / "run", weights, recipe)  # resumes: does not rank either
    assert TRANSFERABILITY_ATTR not in search.study.user_attrs
    assert search.study.trials[0].params["model"] == TINY  # its converged-head trial: the models in the order given
    assert search.study.trials[0].params["head_fit"] == "converged"


def test_the_recipe_switch_and_a_single_model_skip_the_ranking(tmp_path, two_models):
    weights, recipe = two_models
    folder = make_image_folder(tmp_path / "data", per_class=8)
    raw = yaml.safe_load(recipe.read_text())
    raw["prerank"] = {"enabled": False}
    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump(raw))
    assert TRANSFERABILITY_ATTR not in open_search(folder, tmp_path / "r1", weights, off).study.user_attrs
    single = {TINY: weights[TINY]}
    assert TRANSFERABILITY_ATTR not in open_search(folder, tmp_path / "r2", single, recipe).study.user_attrs


def test_a_model_whose_features_fail_is_listed_unranked_and_still_searched(tmp_path, two_models, monkeypatch):
    weights, recipe = two_models
    folder = make_image_folder(tmp_path / "data", per_class=8)
    original = transfer.extract_features

    def flaky(backbone, *args, **kwargs):
        if backbone.name == TINY2:
            raise RuntimeError("no features today")
        return original(backbone, *args, **kwargs)

    monkeypatch.setattr(transfer, "extract_features", flaky)
    reporter = Collect()
    search = open_search(folder, tmp_path / "run", weights, recipe, reporter)
    ranking = search.study.user_attrs[TRANSFERABILITY_ATTR]
    assert [(r["model"], r["rank"]) for r in ranking] == [(TINY, 1), (TINY2, None)]
    assert "no features today" in ranking[1]["error"]
    assert set(search.group_counts) == set(weights)
    assert any("not scored" in line for line in reporter.lines)
