"""The torchvision family passes autotl's conformance kit, and loads local checkpoints correctly."""

from __future__ import annotations

import pytest
import torch
from torchvision import models

from autotl.errors import ModelUnavailableError
from autotl.testing import backbone_checks
from autotl_torchvision import PREFIX, TorchvisionFamily

# Random weights for the checks (tiny=True builds with random weights anyway); two architectures
# that cover both layer-group layouts: a ResNet, and a MobileNet with a pre-logits layer.
CHECKED = [PREFIX + "mobilenet_v3_small", PREFIX + "resnet18"]


@pytest.mark.parametrize("check", backbone_checks(TorchvisionFamily(allow_random=True), CHECKED), ids=str)
def test_torchvision_family_conforms(check):
    check()


def test_a_local_checkpoint_gives_the_body_and_a_new_head(tmp_path):
    torch.manual_seed(0)
    reference = models.resnet18(weights=None)  # as if saved from weights="DEFAULT": a 1000-class head
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = TorchvisionFamily().get(PREFIX + "resnet18", str(path))
    model = backbone.build(5)
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.fc.out_features == 5
    assert str(path) in backbone.describe()


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    path = tmp_path / "mobilenet.pth"
    torch.save(models.mobilenet_v2(weights=None).state_dict(), path)
    backbone = TorchvisionFamily().get(PREFIX + "resnet18", str(path))
    with pytest.raises(ModelUnavailableError, match=r"do not fit 'torchvision/resnet18'.*torchvision.models.resnet18"):
        backbone.build(3)


def test_without_weights_it_says_how_to_supply_them(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache
    family = TorchvisionFamily()
    assert family.default_zoo() == []
    with pytest.raises(ModelUnavailableError, match=r"--weights torchvision/resnet18=FILE.*RANDOM_WEIGHTS=1"):
        family.get(PREFIX + "resnet18")
    with pytest.raises(ModelUnavailableError, match="does not know 'torchvision/vgg11'"):
        family.get(PREFIX + "vgg11")
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        backbone = TorchvisionFamily(allow_random=True).get(PREFIX + "resnet18")
    assert "RANDOM" in backbone.describe()


def test_a_cached_torchvision_download_joins_the_default_zoo(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    torch.save(models.resnet18(weights=None).state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    family = TorchvisionFamily()
    assert family.default_zoo() == [PREFIX + "resnet18"]
    assert "resnet18-f37072fd.pth" in family.get(PREFIX + "resnet18").describe()
