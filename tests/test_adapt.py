"""Adapting the tiny network: freeze depth, batch-norm statistics of frozen groups, LoRA and merging."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autotl.adapt import adapt, merged
from autotl.errors import UsageError

NUM_CLASSES = 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny network gains nothing from threads, and on a busy 2-core machine they cost seconds."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def model(tiny_backbone):
    torch.manual_seed(0)
    return tiny_backbone.build(NUM_CLASSES)


@pytest.fixture
def groups(tiny_backbone, model):
    return tiny_backbone.layer_groups(model)


def under(name: str, modules: list[str]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def test_the_tiny_network_has_four_body_groups_and_a_head(groups):
    assert len(groups) == 5
    assert groups[-1] == ["classifier"]


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_freeze_k_leaves_exactly_the_first_k_groups_without_grad(tiny_backbone, model, groups, k):
    names = [name for name, _ in model.named_parameters()]
    adapted = adapt(model, tiny_backbone, freeze=k)
    frozen_modules = [m for group in groups[:k] for m in group]
    expected_trainable = [n for n in names if not under(n, frozen_modules)]
    assert trainable_names(adapted.model) == expected_trainable
    assert adapted.n_groups == 5
    assert adapted.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_freezing_all_but_the_last_group_trains_only_the_head(tiny_backbone, model, groups):
    adapted = adapt(model, tiny_backbone, freeze=len(groups) - 1)
    assert trainable_names(adapted.model) == ["classifier.weight", "classifier.bias"]
    assert adapted.trainable_params == NUM_CLASSES * 32 + NUM_CLASSES
    assert adapted.total_params == sum(p.numel() for p in model.parameters())


def test_frozen_groups_keep_batch_norm_in_eval_mode_while_the_rest_train(tiny_backbone, model, groups):
    adapted = adapt(model, tiny_backbone, freeze=2)
    adapted.train_mode()
    frozen = [m for group in groups[:2] for m in group]
    norms = {name: m for name, m in adapted.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    frozen_norms = {n for n in norms if under(n, frozen)}
    assert frozen_norms == {"bn1", "blocks.0.0.bn1", "blocks.0.0.bn2"}
    for name, norm in norms.items():
        assert norm.training == (name not in frozen_norms), name


def test_frozen_batch_norm_statistics_do_not_move_in_training(tiny_backbone, model):
    adapted = adapt(model, tiny_backbone, freeze=2)
    before_frozen = model.bn1.running_mean.clone()
    before_open = model.bn2.running_mean.clone()
    adapted.train_mode()
    with torch.no_grad():
        adapted.model(torch.randn(4, 3, 32, 32))
    assert torch.equal(model.bn1.running_mean, before_frozen)
    assert not torch.equal(model.bn2.running_mean, before_open)


def test_lora_trains_only_the_adapters_and_the_head(tiny_backbone, model):
    n_targets = len(tiny_backbone.lora_targets(model))
    adapted = adapt(model, tiny_backbone, freeze=0, lora_rank=4)
    names = trainable_names(adapted.model)
    assert names
    for name in names:
        assert ".lora_A." in name or ".lora_B." in name or ".classifier.modules_to_save." in name, name
    assert any(".classifier.modules_to_save." in n for n in names)
    assert adapted.lora_modules == n_targets
    assert adapted.trainable_params < adapted.total_params


def test_lora_leaves_the_base_weights_frozen(tiny_backbone, model):
    adapted = adapt(model, tiny_backbone, freeze=0, lora_rank=4)
    params = dict(adapted.model.named_parameters())
    assert not params["base_model.model.conv_stem.base_layer.weight"].requires_grad
    assert not params["base_model.model.bn2.weight"].requires_grad
    assert not params["base_model.model.blocks.0.0.conv_dw.weight"].requires_grad


def test_lora_adapters_wrap_only_targets_of_the_unfrozen_groups(tiny_backbone, model):
    adapted = adapt(model, tiny_backbone, freeze=2, lora_rank=4)
    wrapped = {n.split(".lora_A.")[0].removeprefix("base_model.model.")
               for n in trainable_names(adapted.model) if ".lora_A." in n}
    assert wrapped == {"blocks.1.0.conv_pw", "blocks.1.0.conv_pwl", "blocks.2.0.conv_pw",
                       "blocks.2.0.conv_pwl", "conv_head"}
    assert adapted.lora_modules == 5


def test_lora_with_every_body_group_frozen_is_a_usage_error(tiny_backbone, model, groups):
    with pytest.raises(UsageError, match="LoRA has nothing to adapt"):
        adapt(model, tiny_backbone, freeze=len(groups) - 1, lora_rank=4)


def test_a_merged_lora_network_loads_into_a_plain_one_and_predicts_the_same(tiny_backbone, model):
    original_stem = model.conv_stem.weight.detach().clone()
    adapted = adapt(model, tiny_backbone, freeze=1, lora_rank=4)
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, NUM_CLASSES, (8,))
    optimizer = torch.optim.SGD([p for p in adapted.model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(5):
        adapted.train_mode()
        loss = F.cross_entropy(adapted.model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    adapted.model.eval()
    with torch.no_grad():
        expected = adapted.model(x)

    state = merged(adapted.model).state_dict()
    plain = tiny_backbone.build(NUM_CLASSES, pretrained=False)
    plain.load_state_dict(state, strict=True)
    plain.eval()
    with torch.no_grad():
        got = plain(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(state["conv_stem.weight"], original_stem)  # frozen group: no adapter merged in
    assert not torch.allclose(state["conv_head.weight"], plain_conv_head(tiny_backbone))  # adapters moved it


def test_merging_a_network_without_lora_changes_nothing(tiny_backbone, model):
    adapted = adapt(model, tiny_backbone, freeze=1)
    assert merged(adapted.model) is model


@pytest.mark.parametrize("freeze", [-1, 5, 99])
def test_a_freeze_depth_out_of_range_is_a_usage_error_naming_the_range(tiny_backbone, model, freeze):
    with pytest.raises(UsageError, match=rf"freeze={freeze} is out of range.*0\.\.4"):
        adapt(model, tiny_backbone, freeze=freeze)


def plain_conv_head(backbone) -> torch.Tensor:
    """conv_head's pretrained weight, as the checkpoint holds it."""
    return backbone.build(NUM_CLASSES).conv_head.weight.detach()


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_head_bias_sets_the_heads_output_biases_after_zeroing(tiny_backbone, model, lora_rank):
    bias = [0.5, -1.0, -3.0]
    adapted = adapt(model, tiny_backbone, freeze=0, lora_rank=lora_rank, zero_head=True, head_bias=bias)
    x = torch.randn(2, 3, 32, 32)
    adapted.model.eval()
    with torch.no_grad():
        out = adapted.model(x)
    assert torch.allclose(out, torch.tensor([bias, bias]))  # the zeroed weights leave only the biases


def test_head_bias_of_another_width_leaves_the_head_as_built(tiny_backbone, model):
    adapt(model, tiny_backbone, freeze=0, zero_head=True, head_bias=[1.0, 2.0])
    assert not model.classifier.bias.abs().sum()
