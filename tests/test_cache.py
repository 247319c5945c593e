"""The frozen-prefix cache: cutting networks, training on cached outputs, keys, bounds, two processes."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import timm
import torch
from click.testing import CliRunner
from tiny import TINY

from autotl.adapt import adapt
from autotl.cache import FeatureCache, default_dir, prefix_key, tensor_digest
from autotl.cli import cli
from autotl.errors import UsageError
from autotl.recipes import parse_recipe
from autotl.training import train, unwrapped
from autotl_tasks.targets import ClassLabel

PARAMS = {"freeze": 3, "lora_rank": 0, "lr": 5e-3, "epochs": 3, "batch_size": 8, "resolution": 32, "augment": "none"}
CPU = torch.device("cpu")


@pytest.fixture
def image_task():
    from autotl_image import ImageClassification

    return ImageClassification()


@pytest.fixture
def loaded(image_task, tiny_folder):
    return image_task.load(tiny_folder, seed=0, val_fraction=0.25, options={})


def prepared(image_task, loaded, backbone, **params):
    return image_task.prepare(loaded, backbone, {**PARAMS, **params})


def run(backbone, data, cache, **params):
    params = {**PARAMS, **params}
    return train(backbone, params, data.train, data.val, ClassLabel(), 3, device=CPU, seed=0, cache=cache,
                 cache_context={"task": "image-classification", "fingerprint": "f"})


# -- cutting a network ---------------------------------------------------------------------------
@pytest.mark.parametrize("lora_rank", [0, 4])
def test_the_rest_of_the_prefix_is_the_whole_network_at_every_depth(tiny_backbone, lora_rank):
    n = len(tiny_backbone.layer_groups(tiny_backbone.build(3)))
    x = torch.randn(4, 3, 32, 32)
    for freeze in range(1, n - 1 if lora_rank else n):  # LoRA needs an unfrozen group besides the head
        net = adapt(tiny_backbone.build(3), tiny_backbone, freeze, lora_rank).model.eval()
        assert net(x).abs().sum() > 0  # timm's random head: the logits are not all zero
        cut = tiny_backbone.split(unwrapped(net), freeze)
        assert cut is not None, freeze
        prefix, rest = cut
        with torch.no_grad():
            assert torch.allclose(rest.eval()(prefix(x)), net(x), atol=1e-5), freeze
        frozen = {id(p) for group in tiny_backbone.layer_groups(unwrapped(net))[:freeze] for name in group
                  for p in unwrapped(net).get_submodule(name).parameters()}
        assert {id(p) for p in prefix.parameters()} == frozen  # the prefix is exactly the frozen groups


def test_a_network_whose_modules_do_not_run_in_turn_is_not_cut():
    from autotl_timm import TimmBackbone

    backbone = TimmBackbone("vit_tiny_patch16_224", ("hub", None))
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, depth=2)
    assert backbone.split(model, 2) is None  # position embeddings are added between its modules


@pytest.fixture(scope="module")
def tiny_text_backbone(tmp_path_factory):
    import tinybert
    from autotl_transformers import TransformersFamily

    return TransformersFamily().get(str(tinybert.save_tiny_bert(tmp_path_factory.mktemp("tinybert") / "m", layers=3)))


def test_the_text_backbone_cuts_between_layers_and_before_the_head(tiny_text_backbone):
    backbone = tiny_text_backbone
    model = backbone.build(3)
    torch.nn.init.normal_(model.classifier.weight)
    groups = backbone.layer_groups(model)
    assert len(groups) == 5  # embeddings, three layers, the head
    ids = torch.randint(5, 40, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # a padded text: the rest must mask the same positions
    model.eval()
    with torch.no_grad():
        want = model(ids, mask)
        for k in range(1, len(groups)):
            prefix, rest = backbone.split(model, k)
            frozen = {id(p) for g in groups[:k] for name in g for p in model.get_submodule(name).parameters()}
            assert {id(p) for p in prefix.parameters()} == frozen, k
            out = prefix(input_ids=ids, attention_mask=mask)
            got = rest.eval()(**out) if isinstance(out, dict) else rest.eval()(out)
            assert torch.allclose(got, want, atol=1e-5), k
    assert len(list(model.transformer.encoder.layer)) == 3  # the views left the network whole


def test_a_text_encoder_with_a_final_norm_is_cut_before_the_head_only(tiny_text_backbone):
    from autotl_transformers._model import layer_cut

    model = tiny_text_backbone.build(2)
    model.transformer.final_norm = torch.nn.LayerNorm(model.transformer.config.hidden_size)  # an "after" group
    assert layer_cut(model, 2) is None


@pytest.mark.parametrize("freeze", [2, 4])  # between two layers; before the head (a linear probe)
def test_a_cached_text_trial_trains_the_same_network_as_an_uncached_one(tiny_text_backbone, tmp_path, freeze):
    import tinybert
    from autotl_text import TextClassification

    task = TextClassification()
    data = task.load(tinybert.make_text_folder(tmp_path / "d", per_class=20), seed=0, val_fraction=0.25, options={})
    params = {"freeze": freeze, "lora_rank": 0, "lr": 3e-3, "epochs": 2, "batch_size": 4, "max_length": 32}
    split = task.prepare(data, tiny_text_backbone, params)
    results = [train(tiny_text_backbone, params, split.train, split.val, ClassLabel(), 2, device=CPU, seed=0, cache=cache,
                     cache_context={"task": task.name, "fingerprint": data.fingerprint})
               for cache in (None, FeatureCache(directory=tmp_path / "c"))]
    plain, cached = results
    assert cached.cache == {"train": "computed", "val": "computed"}
    assert cached.curve == pytest.approx(plain.curve, abs=1e-6)
    for key, value in plain.best_state.items():
        assert torch.allclose(cached.best_state[key].float(), value.float(), atol=1e-4), key


# -- training on cached prefix outputs -------------------------------------------------------------
def test_a_cached_trial_trains_the_same_network_as_an_uncached_one(tiny_backbone, image_task, loaded, tmp_path):
    data = prepared(image_task, loaded, tiny_backbone)
    plain = run(tiny_backbone, data, None)
    cached = run(tiny_backbone, data, FeatureCache(directory=tmp_path))
    assert cached.cache == {"train": "computed", "val": "computed"}
    assert plain.cache == {}
    assert cached.curve == pytest.approx(plain.curve, abs=1e-6)
    for key, value in plain.best_state.items():
        assert torch.allclose(cached.best_state[key].float(), value.float(), atol=1e-4), key
    assert cached.timing["prefix"] > 0 and plain.timing["prefix"] == 0


def test_lora_and_weight_averaging_train_on_cached_outputs(tiny_backbone, image_task, loaded, tmp_path):
    data = prepared(image_task, loaded, tiny_backbone)
    params = {"freeze": 2, "lora_rank": 4, "ema_decay": 0.9}
    plain = run(tiny_backbone, data, None, **params)
    cached = run(tiny_backbone, data, FeatureCache(directory=tmp_path), **params)
    assert cached.cache == {"train": "computed", "val": "computed"}
    assert cached.curve == pytest.approx(plain.curve, abs=1e-6)


def test_later_trials_read_the_outputs_from_memory_then_from_disk(tiny_backbone, image_task, loaded, tmp_path):
    data = prepared(image_task, loaded, tiny_backbone)
    cache = FeatureCache(directory=tmp_path)
    run(tiny_backbone, data, cache)
    again = run(tiny_backbone, data, cache, lr=1e-3)  # another trial, same model, depth and inputs
    assert again.cache == {"train": "memory", "val": "memory"}
    other_process = run(tiny_backbone, data, FeatureCache(directory=tmp_path), lr=2e-3)
    assert other_process.cache == {"train": "disk", "val": "disk"}
    assert cache.stats.computed == 2 and cache.stats.hits_memory == 2


def test_subsets_of_one_split_are_served_from_its_outputs_computed_once(tiny_backbone, image_task, loaded, tmp_path):
    """The folds of a cross-validation (autotl/selection.py) take their samples from one split: its frozen-prefix
    outputs are computed once for every fold, and a fold trains as it would on outputs computed for it alone."""
    data = prepared(image_task, loaded, tiny_backbone)
    n = len(data.train)
    cache = FeatureCache(directory=tmp_path)
    folds = [torch.arange(n) % 2 == k for k in (0, 1)]
    served = [run(tiny_backbone, SimpleNamespace(train=data.train.take(torch.nonzero(~held).flatten()),
                                                 val=data.train.take(torch.nonzero(held).flatten())), cache)
              for held in folds]
    assert cache.stats.computed == 1  # the whole split's outputs, once, for both folds and both of their splits
    assert served[0].cache["train"].startswith("computed") and served[1].cache["train"].startswith("memory")
    assert f"of {n} samples" in served[1].cache["val"]
    rest, held = torch.nonzero(~folds[1]).flatten(), torch.nonzero(folds[1]).flatten()
    alone = run(tiny_backbone, SimpleNamespace(train=_copy(data.train.take(rest)), val=_copy(data.train.take(held))),
                FeatureCache(directory=tmp_path / "alone"))
    assert alone.cache == {"train": "computed", "val": "computed"}  # a split of its own: its own outputs
    assert served[1].curve == pytest.approx(alone.curve, abs=1e-5)


def _copy(split):
    """``split`` as a split of its own (no origin)."""
    return dataclasses.replace(split, origin=None)


def test_take_composes_origins_and_concatenation_makes_a_split_of_its_own(image_task, loaded, tiny_backbone):
    from autotl.base import concat_splits

    split = prepared(image_task, loaded, tiny_backbone).train
    once = split.take(torch.tensor([5, 3, 1, 0]))
    twice = once.take(torch.tensor([2, 0]))
    assert twice.origin[0] is split and twice.origin[1].tolist() == [1, 5]
    assert torch.equal(twice.inputs, split.inputs[[1, 5]])
    assert split.origin is None and concat_splits(once, twice).origin is None


def test_augmented_or_unfrozen_trials_are_not_cached(tiny_backbone, image_task, loaded, tmp_path):
    cache = FeatureCache(directory=tmp_path)
    augmented = run(tiny_backbone, prepared(image_task, loaded, tiny_backbone, augment="flip"), cache, augment="flip")
    assert "randomly augmented" in augmented.cache["skipped"]
    assert run(tiny_backbone, prepared(image_task, loaded, tiny_backbone), cache, freeze=0).cache == {}
    assert not list(tmp_path.rglob("*.safetensors"))


def test_a_trial_whose_outputs_exceed_the_memory_bound_runs_uncached(tiny_backbone, image_task, loaded, tmp_path):
    result = run(tiny_backbone, prepared(image_task, loaded, tiny_backbone), FeatureCache(memory_mb=0.001,
                                                                                           directory=tmp_path))
    assert "more than the cache's memory bound" in result.cache["skipped"]
    assert len(result.curve) == PARAMS["epochs"]


# -- keys ----------------------------------------------------------------------------------------------
def test_the_key_changes_with_data_model_depth_and_preprocessing(tiny_backbone, image_task, loaded):
    data = prepared(image_task, loaded, tiny_backbone)
    base = dict(split_name="train", context={"task": "t", "fingerprint": "f"})
    key = prefix_key(tiny_backbone, 2, data.train, **base)
    assert key == prefix_key(tiny_backbone, 2, prepared(image_task, loaded, tiny_backbone).train, **base)
    assert key != prefix_key(tiny_backbone, 3, data.train, **base)  # depth
    assert key != prefix_key(tiny_backbone, 2, prepared(image_task, loaded, tiny_backbone, resolution=40).train,
                             **base)  # resolution
    assert key != prefix_key(tiny_backbone, 2, data.train, split_name="val", context=base["context"])
    assert key != prefix_key(tiny_backbone, 2, data.train, split_name="train", context={"task": "t", "fingerprint": "g"})
    edited = data.train.inputs.clone()
    edited[0, 0, 0, 0] ^= 1  # one pixel of one image
    changed = type(data.train)(edited, data.train.labels, data.train.transform, random_augmentation=False)
    assert key != prefix_key(tiny_backbone, 2, changed, **base)
    renormalised = type(data.train)(data.train.inputs, data.train.labels, lambda x, train: x.float() / 255,
                                    random_augmentation=False)
    assert key != prefix_key(tiny_backbone, 2, renormalised, **base)  # another transform

    class Other(type(tiny_backbone)):
        def describe(self):
            return "the same architecture with other weights"

    other = Other.__new__(Other)
    other.__dict__.update(tiny_backbone.__dict__)
    assert key != prefix_key(other, 2, data.train, **base)


def test_a_tensor_digest_is_remembered_but_never_for_another_tensor():
    a = torch.arange(12, dtype=torch.uint8)
    first = tensor_digest(a)
    assert tensor_digest(a) == first
    assert tensor_digest(a.clone()) == first
    assert tensor_digest(a + 1) != first
    assert tensor_digest(a.to(torch.int16)) != first


# -- the store: bounds, damage, two processes ---------------------------------------------------------
def test_memory_bound_keeps_the_most_recently_used(tmp_path):
    cache = FeatureCache(memory_mb=3 * 4 * 2**18 / 2**20, disk_mb=0, directory=tmp_path)  # room for 3 of 2**18 floats
    for key in "abcd":
        cache.get_or_compute(key, lambda: torch.zeros(2**18))
    assert list(cache._memory) == ["b", "c", "d"] and cache.stats.evicted == 1
    assert cache.get_or_compute("b", lambda: torch.ones(1))[1] == "memory"
    assert not list(tmp_path.iterdir())  # disk_mb 0: nothing written


def test_disk_bound_drops_the_least_recently_used_files(tmp_path):
    size_mb = 4 * 2**16 / 2**20
    cache = FeatureCache(memory_mb=0, disk_mb=2.5 * size_mb, directory=tmp_path)
    for i, key in enumerate(["k1", "k2", "k3"]):
        cache.get_or_compute(key, lambda: torch.zeros(2**16))
        for path in tmp_path.rglob("*.safetensors"):  # make the order of use unambiguous
            os.utime(path, (i, i)) if path.stem == key else None
    kept = sorted(p.stem for p in tmp_path.rglob("*.safetensors"))
    assert kept == ["k2", "k3"]


def test_an_unreadable_cache_file_is_computed_again(tmp_path):
    FeatureCache(directory=tmp_path).get_or_compute("key", lambda: torch.arange(5.0))
    path = next(tmp_path.rglob("*.safetensors"))
    path.write_bytes(b"\x00" * 10)
    features, source = FeatureCache(directory=tmp_path).get_or_compute("key", lambda: torch.arange(5.0))
    assert source == "computed" and torch.equal(features, torch.arange(5.0))


def _slow_compute(directory: str, marker: str, queue) -> None:
    def compute():
        with open(marker, "a") as f:
            f.write("computed\n")
        import time

        time.sleep(1.0)
        return torch.arange(1000.0)

    features, source = FeatureCache(directory=directory).get_or_compute("shared", compute)
    queue.put((source, float(features.sum())))


def test_two_processes_asking_for_one_key_compute_it_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    marker = tmp_path / "computed.txt"
    procs = [ctx.Process(target=_slow_compute, args=(str(tmp_path / "cache"), str(marker), queue)) for _ in range(2)]
    for proc in procs:
        proc.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    assert [source for source, _ in results] == ["computed", "disk"]
    assert results[0][1] == results[1][1] == float(torch.arange(1000.0).sum())
    assert marker.read_text().count("computed") == 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_the_default_folder_follows_autotl_cache_dir_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOTL_CACHE_DIR", str(tmp_path / "a"))
    assert default_dir() == tmp_path / "a"
    monkeypatch.delenv("AUTOTL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_dir() == tmp_path / "x" / "autotl" / "features"


def test_an_entry_written_before_the_marker_is_still_the_caches_own(tmp_path):
    from safetensors.torch import save_file

    key = "ab" + "0" * 62
    old = tmp_path / key[:2] / f"{key}.safetensors"
    old.parent.mkdir()
    save_file({"features": torch.zeros(2**16)}, str(old), metadata={"format": "1"})  # as autotl wrote it before
    os.utime(old, (0, 0))
    cache = FeatureCache(memory_mb=0, disk_mb=4 * 2**16 * 1.5 / 2**20, directory=tmp_path)
    cache.get_or_compute("cd" + "1" * 62, lambda: torch.zeros(2**16))
    assert not old.exists() and cache.stats.evicted == 1


# -- recipe and command line ------------------------------------------------------------------------------
@pytest.mark.parametrize("cache, message", [
    ({"memory_mb": -1}, "cache.memory_mb: must be a number of MiB"),
    ({"disk_mb": "lots"}, "cache.disk_mb: must be a number"),
    ({"enabled": "yes"}, "cache.enabled: must be true or false"),
    ({"size": 3}, "cache.size: unknown key"),
    ({"dir": 3}, "cache.dir: must be a folder path"),
])
def test_a_bad_cache_section_names_the_field(cache, message):
    with pytest.raises(UsageError, match=message.replace(".", r"\.")):
        parse_recipe({"task": "image-classification", "space": {"lr": {"low": 0.1, "high": 0.2}}, "cache": cache}, "r")


def test_a_search_records_how_the_cache_served_each_trial_and_no_cache_turns_it_off(tiny_folder, tiny_weights, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "task: image-classification\ndata: {val_fraction: 0.25}\nspace:\n  lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n"
        "fixed: {resolution: 32, epochs: 2, batch_size: 8, augment: none, freeze: 3, lora_rank: 0}\n"
        f"pruner: {{name: none}}\ncache: {{dir: {json.dumps(str(tmp_path / 'cache'))}}}\n"
        "converged_head: {enabled: false}\n")  # its trials alone: a converged-head trial has a freeze depth of its own

    def search(out, *extra):
        result = CliRunner().invoke(cli, ["search", "--task", "image-classification", str(tiny_folder), "--out",
                                          str(out), "--recipe", str(recipe), "--models", TINY, "--weights",
                                          f"{TINY}={tiny_weights}", "--trials", "2", *extra])
        assert result.exit_code == 0, result.output
        study = optuna.load_study(study_name="autotl", storage=f"sqlite:///{out / 'study.db'}")
        return [t.user_attrs for t in study.trials]

    cached = search(tmp_path / "run")
    assert [a["cache"] for a in cached] == [{"train": "computed", "val": "computed"}, {"train": "memory", "val": "memory"}]
    assert all(set(a["timing"]) == {"setup", "prefix", "data", "step", "eval", "keep"} for a in cached)
    assert list((tmp_path / "cache").rglob("*.safetensors"))
    assert all("cache" not in a for a in search(tmp_path / "plain", "--no-cache"))


def cached_search(tmp_path, tiny_folder, tiny_weights, cache: str, trials: int = 2) -> list[optuna.trial.FrozenTrial]:
    """A tiny search through the CLI whose trials freeze 3 groups without augmentation: the cache serves them."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "task: image-classification\ndata: {val_fraction: 0.25}\nspace:\n  lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n"
        "fixed: {resolution: 32, epochs: 1, batch_size: 8, augment: none, freeze: 3, lora_rank: 0}\n"
        f"pruner: {{name: none}}\ncache: {cache}\nconverged_head: {{enabled: false}}\n"
        "selection: {cv_below: 0}\n")  # the trials alone: the cross-validation's folds would cache their own
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["search", "--task", "image-classification", str(tiny_folder), "--out", str(out),
                                      "--recipe", str(recipe), "--models", TINY, "--weights", f"{TINY}={tiny_weights}",
                                      "--trials", str(trials), "--device", "cpu", "--no-prerank"])
    assert result.exit_code == 0, result.output
    return optuna.load_study(study_name="autotl", storage=f"sqlite:///{out / 'study.db'}").trials


def test_eviction_never_deletes_files_the_cache_did_not_write(tiny_folder, tiny_weights, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    folder = tmp_path / "shared"  # AUTOTL_CACHE_DIR pointed at a folder that holds other things too
    monkeypatch.setenv("AUTOTL_CACHE_DIR", str(folder))
    big = {"weight": torch.zeros(2**19)}  # 2 MiB each: far over the cache's 1 MiB bound
    foreign = [folder / "bundle" / "model.safetensors", folder / "mine" / "features.safetensors",
               folder / "ab" / f"ab{'0' * 62}.safetensors"]  # a bundle, a file of the user's, one named like an entry
    for path in foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(big, str(path), metadata={"format": "1"})
        os.utime(path, (0, 0))  # the least recently used of all
    (folder / "bundle" / "config.json").write_text("{}")
    trials = cached_search(tmp_path, tiny_folder, tiny_weights, "{disk_mb: 1}")
    assert trials[0].user_attrs["cache"] == {"train": "computed", "val": "computed"}
    entries = [p for p in folder.glob("*/*.safetensors") if p not in foreign]
    assert len(entries) == 2  # the cache's own (train and val), within its bound
    assert all(path.is_file() for path in foreign)
    assert (folder / "bundle" / "config.json").is_file()


def test_a_failed_cache_write_leaves_no_temporary_file_and_the_trial_goes_on(tiny_folder, tiny_weights, tmp_path,
                                                                           monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    folder = tmp_path / "cache"
    save_file = safetensors.torch.save_file

    def disk_full(tensors, filename, metadata=None):
        if not str(filename).startswith(str(folder)):
            return save_file(tensors, filename, metadata=metadata)  # the trial's own weights: written
        Path(filename).write_bytes(b"\0" * 1000)  # half written, then the disk is full
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    trials = cached_search(tmp_path, tiny_folder, tiny_weights, f"{{dir: {json.dumps(str(folder))}}}")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    served = trials[0].user_attrs["cache"]
    assert served["train"].startswith("computed (not kept on disk: SafetensorError: ") and "No space left" in \
        served["train"]
    assert trials[1].user_attrs["cache"] == {"train": "memory", "val": "memory"}  # the features stayed in memory
    assert not [p for p in folder.rglob("*") if p.suffix in (".tmp", ".safetensors")]


def test_other_weights_under_the_same_model_name_are_another_key(tiny_backbone, image_task, loaded, tmp_path):
    # `--weights NAME=FILE` with the file replaced: same name and description, other frozen weights
    data = prepared(image_task, loaded, tiny_backbone)
    cache = FeatureCache(directory=tmp_path)
    run(tiny_backbone, data, cache)

    class Retrained(type(tiny_backbone)):
        def build(self, num_classes, pretrained=True):
            model = super().build(num_classes, pretrained)
            with torch.no_grad():
                model.conv_stem.weight.mul_(0.5)
            return model

    other = Retrained.__new__(Retrained)
    other.__dict__.update(tiny_backbone.__dict__)
    assert run(other, data, cache).cache == {"train": "computed", "val": "computed"}


@pytest.mark.parametrize("architecture", ["roberta", "distilbert"])
def test_other_bert_like_encoders_are_cut_between_layers(architecture):
    from autotl_transformers._model import TextClassifier, layer_cut, layer_groups
    from transformers import DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel

    if architecture == "roberta":  # position ids made from the input ids, in the embeddings
        encoder = RobertaModel(RobertaConfig(vocab_size=60, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                             intermediate_size=32, max_position_embeddings=40, pad_token_id=1))
    else:  # embeddings(input_ids, inputs_embeds) by position, its stack under transformer.layer
        encoder = DistilBertModel(DistilBertConfig(vocab_size=60, dim=16, n_layers=3, n_heads=2, hidden_dim=32,
                                                   max_position_embeddings=40))
    model = TextClassifier(encoder, 3).eval()
    torch.nn.init.normal_(model.classifier.weight)
    ids = torch.randint(3, 60, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        want = model(ids, mask)
        for k in range(1, len(layer_groups(model)) - 1):
            prefix, rest = layer_cut(model, k)
            assert torch.allclose(rest.eval()(**prefix(ids, mask)), want, atol=1e-5), k
