"""LoRA: checks written for the mutants that survived the other tests (benchmarks/mutation.md).

Expected values are worked out by hand in each test.
"""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from clipunlearn import lora


class Double(nn.Module):
    """A parametrization that is not LoRA: ``W -> 2 W``."""

    def forward(self, w):
        return 2 * w


def test_adapter_tensors_follow_the_weight_dtype_and_device():
    w64 = torch.zeros(4, 3, dtype=torch.float64)
    p = lora.LoRAParametrization(w64, rank=2, alpha=2)
    assert p.lora_A.dtype == p.lora_B.dtype == torch.float64
    meta = torch.empty(4, 3, device="meta")
    p = lora.LoRAParametrization(meta, rank=2, alpha=2)
    assert p.lora_A.device.type == p.lora_B.device.type == "meta"


def test_adapter_of_a_single_row_weight():
    # out = 1: fan_in is the size of the one row (3), rank 1 is allowed
    p = lora.LoRAParametrization(torch.zeros(1, 3), rank=1, alpha=1)
    assert p.lora_A.shape == (1, 3) and p.lora_B.shape == (1, 1)


def test_adapter_defaults_to_a_trainable_base_weight():
    assert lora.LoRAParametrization(torch.zeros(4, 3), rank=1, alpha=1).base_requires_grad is True


def test_a_starts_uniform_within_one_over_sqrt_fan_in():
    # kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in)
    torch.manual_seed(0)
    fan_in = 1024
    a = lora.LoRAParametrization(torch.zeros(8, fan_in), rank=8, alpha=8).lora_A.detach()
    bound = 1 / math.sqrt(fan_in)
    assert a.abs().max() <= bound
    assert a.abs().max() > 0.97 * bound  # 8192 uniform draws come within 3% of the bound


def test_add_lora_default_rank_is_4_with_scaling_1():
    model = nn.Sequential(nn.Linear(6, 5))
    lora.add_lora(model, ["0"])
    adapter = model[0].parametrizations.weight[0]
    assert adapter.lora_A.shape == (4, 6) and adapter.rank == 4 and adapter.scaling == 1.0


def test_add_lora_error_names_five_bad_names_and_twelve_targets():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(13)])
    with pytest.raises(ValueError) as err:
        lora.add_lora(model, [f"x{i}" for i in range(6)])
    msg = str(err.value)
    assert msg.startswith("cannot add LoRA to ['x0', 'x1', 'x2', 'x3', 'x4']: not nn.Linear")
    assert msg.endswith("adaptable: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '11'] ...")


def test_add_lora_rejects_attention_with_separate_key_value_sizes():
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2, kdim=4, vdim=4)})
    with pytest.raises(ValueError) as err:
        lora.add_lora(model, ["attn"], rank=1)
    assert str(err.value) == ("LoRA on nn.MultiheadAttention needs kdim == vdim == embed_dim "
                              "(a fused in_proj_weight)")


def test_add_lora_next_to_another_parametrization_of_the_same_module():
    lin = nn.Linear(3, 3)
    parametrize.register_parametrization(lin, "bias", Double())
    model = nn.Sequential(lin)
    lora.add_lora(model, ["0"], rank=1)  # the bias's parametrization is no LoRA adapter on the weight
    assert lora.has_lora(model)
    # merging folds the weight's adapter and leaves the bias's parametrization alone
    assert lora.merge_lora(model) == ["0.weight"]
    assert parametrize.is_parametrized(lin, "bias") and not parametrize.is_parametrized(lin, "weight")


def test_merge_restores_frozen_attention_weights_as_frozen():
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(4, 2)})
    attn = model["attn"]
    attn.in_proj_weight.requires_grad_(False)
    attn.out_proj.weight.requires_grad_(False)
    lora.add_lora(model, ["attn"], rank=1)
    assert sorted(lora.merge_lora(model)) == ["attn.in_proj_weight", "attn.out_proj.weight"]
    assert attn.in_proj_weight.requires_grad is False
    assert attn.out_proj.weight.requires_grad is False


def test_lora_targets_keep_an_out_proj_outside_attention():
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(4, 2),
                           "head": nn.ModuleDict({"out_proj": nn.Linear(4, 4)})})
    assert lora.lora_targets(model) == ["attn", "head.out_proj"]


def test_merge_lora_refuses_a_chain_mixing_lora_and_another_parametrization():
    model = nn.Sequential(nn.Linear(3, 3))
    lora.add_lora(model, ["0"], rank=1)
    parametrize.register_parametrization(model[0], "weight", Double())
    with pytest.raises(ValueError) as err:
        lora.merge_lora(model)
    assert str(err.value) == ("0.weight mixes LoRA with other parametrizations: remove those first "
                              "(torch.nn.utils.parametrize.remove_parametrizations)")


def test_merge_lora_of_an_adapter_registered_by_hand():
    lin = nn.Linear(3, 2)
    adapter = lora.LoRAParametrization(lin.weight, rank=1, alpha=1)  # no parameter_order
    parametrize.register_parametrization(lin, "weight", adapter)
    assert lora.merge_lora(lin) == ["weight"]  # the root module has no name
    assert list(lin._parameters) == ["bias", "weight"]  # no recorded order: the weight comes back last


def test_merge_lora_keeps_a_parameter_added_after_add_lora_last():
    model = nn.Sequential(nn.Linear(3, 2))
    lora.add_lora(model, ["0"], rank=1)
    model[0].register_parameter("extra", nn.Parameter(torch.zeros(1)))
    lora.merge_lora(model)
    assert list(model[0]._parameters) == ["weight", "bias", "extra"]
