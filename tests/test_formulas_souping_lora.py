"""Formula checks of souping (paper A's restoring stage) and LoRA, by hand values and loops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clipunlearn import lora, souping

from .formula_helpers import TOL, rows


# --------------------------------------------------------------------------- #
# Souping: theta = alpha * theta_unlearned + (1 - alpha) * theta_original
# --------------------------------------------------------------------------- #
def sd(w, b, n=3):
    return {"w": torch.tensor(w), "b": torch.tensor(b), "n": torch.tensor(n)}


def test_formula_interpolation_alpha_weighs_theta_1_hand_values_and_boundaries():
    """(1 - alpha) * theta_0 + alpha * theta_1: theta_0 w=[1, 2], theta_1 w=[3, -2]; alpha .25 -> [1.5, 1]."""
    t0, t1 = sd([1.0, 2.0], 0.0, n=3), sd([3.0, -2.0], 4.0, n=7)
    mid = souping.interpolate_state_dicts(t0, t1, 0.25)
    assert mid["w"].tolist() == pytest.approx([1.5, 1.0], abs=TOL) and float(mid["b"]) == pytest.approx(1.0, abs=TOL)
    assert int(mid["n"]) == 3  # integer buffers: from the first state dict
    assert souping.interpolate_state_dicts(t0, t1, 0.0)["w"].tolist() == pytest.approx([1.0, 2.0], abs=TOL)
    assert souping.interpolate_state_dicts(t0, t1, 1.0)["w"].tolist() == pytest.approx([3.0, -2.0], abs=TOL)


def test_formula_soup_weighted_average_hand_values():
    a, b, c = sd([0.0, 3.0], 1.0), sd([3.0, 0.0], 2.0), sd([6.0, 6.0], 6.0)
    uniform = souping.soup_state_dicts([a, b, c])
    assert uniform["w"].tolist() == pytest.approx([3.0, 3.0], abs=TOL) and float(uniform["b"]) == pytest.approx(3.0)
    weighted = souping.soup_state_dicts([a, b, c], [0.5, 0.25, 0.25])
    assert weighted["w"].tolist() == pytest.approx([2.25, 3.0], abs=TOL)  # [0 + .75 + 1.5, 1.5 + 0 + 1.5]


def test_formula_search_alpha_ties_go_to_the_first_alpha():
    model = nn.Linear(1, 1, bias=False)
    t0, t1 = {"weight": torch.tensor([[0.0]])}, {"weight": torch.tensor([[1.0]])}
    # score: 1 - |w - 0.5| rounded -> alphas 0.4 and 0.6 tie (0.9), 0.5 best (1.0) -> 0.5
    score = lambda m: 1.0 - abs(m.weight.item() - 0.5)
    best, trials = souping.search_alpha(model, t0, t1, score_fn=score, alphas=(0.4, 0.6, 0.5))
    assert best == 0.5 and float(model.weight) == pytest.approx(0.5)
    best, _ = souping.search_alpha(model, t0, t1, score_fn=score, alphas=(0.6, 0.4))
    assert best == 0.6  # a tie: the first in the grid


def trials(*rows_):
    return [{"alpha": a, "forget_acc": f, "retain_acc": r} for a, f, r in rows_]


def test_formula_select_alpha_max_forget_boundary_both_sides():
    """forget <= max_forget is allowed (== the bar included); bar + 1e-3 is not."""
    t = trials((0.2, 0.05, 0.80), (0.4, 0.051, 0.95), (1.0, 0.0, 0.50))
    assert souping.select_alpha(t, max_forget=0.05) == 0.2  # 0.4 is 1e-3 over the bar: out
    assert souping.select_alpha(t, max_forget=0.051) == 0.4  # now exactly at the bar: in
    # float noise at the bar (rounded to SCORE_DECIMALS) is still at the bar
    assert souping.select_alpha(trials((0.3, 0.05 + 3e-8, 0.9), (1.0, 0.0, 0.1)), max_forget=0.05) == 0.3


def test_formula_select_alpha_tie_rules():
    # equal retained: the lower forget accuracy wins
    assert souping.select_alpha(trials((0.2, 0.04, 0.8), (0.4, 0.01, 0.8))) == 0.4
    assert souping.select_alpha(trials((0.2, 0.01, 0.8), (0.4, 0.04, 0.8))) == 0.2
    # equal retained and forget: the larger alpha
    assert souping.select_alpha(trials((0.6, 0.02, 0.8), (0.2, 0.02, 0.8))) == 0.6
    # retained ties after rounding (3e-8 apart): still a tie
    assert souping.select_alpha(trials((0.6, 0.02, 0.8), (0.2, 0.02, 0.8 + 3e-8))) == 0.6
    # nobody forgets enough: the lowest forget accuracy, then larger retained, then larger alpha
    assert souping.select_alpha(trials((0.2, 0.3, 0.9), (0.4, 0.2, 0.1))) == 0.4
    assert souping.select_alpha(trials((0.2, 0.2, 0.9), (0.4, 0.2, 0.1))) == 0.2
    assert souping.select_alpha(trials((0.2, 0.2, 0.5), (0.4, 0.2, 0.5))) == 0.4


def test_formula_select_alpha_retained_is_mean_of_several_keys():
    t = [{"alpha": 0.2, "forget_acc": 0.0, "sibling_acc": 0.9, "retain_acc": 0.5},   # mean 0.7
         {"alpha": 0.4, "forget_acc": 0.0, "sibling_acc": 0.6, "retain_acc": 0.9}]   # mean 0.75
    assert souping.select_alpha(t, retain_key=("sibling_acc", "retain_acc")) == 0.4
    assert souping.select_alpha(t, retain_key="sibling_acc") == 0.2


# --------------------------------------------------------------------------- #
# LoRA: W x + (alpha / rank) * B A x
# --------------------------------------------------------------------------- #
def naive_lora_linear(W, b, A, B, scale, x):
    """y_o = sum_i W_oi x_i + b_o + scale * sum_r B_or sum_i A_ri x_i (lists)."""
    out = []
    for o in range(len(W)):
        base = sum(W[o][i] * x[i] for i in range(len(x))) + b[o]
        low = sum(B[o][r] * sum(A[r][i] * x[i] for i in range(len(x))) for r in range(len(A)))
        out.append(base + scale * low)
    return out


def set_adapter(module, tensor_name, A, B):
    adapter = next(p for p in getattr(module.parametrizations, tensor_name) if isinstance(p, lora.LoRAParametrization))
    with torch.no_grad():
        adapter.lora_A.copy_(A)
        adapter.lora_B.copy_(B)
    return adapter


@pytest.mark.parametrize("rank,alpha", [(2, 6.0), (2, None), (1, 3.0), (3, 1.5)])
def test_formula_lora_forward_is_w_x_plus_alpha_over_rank_b_a_x(rank, alpha):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    W, b = rows(model[0].weight), rows(model[0].bias)
    lora.add_lora(model, ["0"], rank=rank, alpha=alpha)
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(rank, 4, generator=g), torch.randn(3, rank, generator=g)
    set_adapter(model[0], "weight", A, B)
    x = torch.randn(2, 4, generator=g)
    scale = (rank if alpha is None else alpha) / rank
    want = [naive_lora_linear(W, b, rows(A), rows(B), scale, xi) for xi in rows(x)]
    with torch.no_grad():
        got = model(x)
    assert torch.allclose(got, torch.tensor(want, dtype=got.dtype), atol=1e-5)
    # merging folds the same update into W: the merged plain layer computes the same outputs
    lora.merge_lora(model)
    assert not lora.has_lora(model)
    with torch.no_grad():
        assert torch.allclose(model(x), torch.tensor(want, dtype=got.dtype), atol=1e-5)
        merged = rows(model[0].weight)
    for o in range(3):
        for i in range(4):
            update = scale * sum(rows(B)[o][r] * rows(A)[r][i] for r in range(rank))
            assert merged[o][i] == pytest.approx(W[o][i] + update, abs=1e-5)


def test_formula_lora_rank_1_and_rank_2_same_alpha_scale_differently():
    """Same product B A (rank 2's second component is zero), same alpha = 2: scaling 2 (rank 1) vs 1 (rank 2)."""
    torch.manual_seed(0)
    x = torch.randn(1, 4)
    outs = {}
    for rank in (1, 2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3))
        base = model(x).detach()
        lora.add_lora(model, ["0"], rank=rank, alpha=2.0)
        A = torch.zeros(rank, 4)
        A[0] = torch.tensor([1.0, -1.0, 0.5, 2.0])
        B = torch.zeros(3, rank)
        B[:, 0] = torch.tensor([0.5, 1.0, -1.0])
        set_adapter(model[0], "weight", A, B)
        outs[rank] = (model(x).detach() - base)[0]
    ax = 1.0 * x[0, 0] - x[0, 1] + 0.5 * x[0, 2] + 2.0 * x[0, 3]
    low = torch.tensor([0.5, 1.0, -1.0]) * ax
    assert torch.allclose(outs[1], 2.0 * low, atol=1e-5)
    assert torch.allclose(outs[2], 1.0 * low, atol=1e-5)


def test_formula_lora_conv_kernel_update_is_flattened_b_a():
    """On a convolution the update is (alpha / rank) * (B @ A).view_as(W): checked against an explicit conv."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 2, bias=False))
    W = model[0].weight.detach().clone()
    lora.add_lora(model, ["0"], rank=2, alpha=5.0)
    g = torch.Generator().manual_seed(2)
    A, B = torch.randn(2, 8, generator=g), torch.randn(3, 2, generator=g)
    set_adapter(model[0], "weight", A, B)
    x = torch.randn(1, 2, 3, 3, generator=g)
    # explicit: each output pixel = sum over the 2x2x2 patch of (W + 2.5 * BA) * patch
    Wl = rows(W.flatten(1))
    BA = [[sum(rows(B)[o][r] * rows(A)[r][k] for r in range(2)) for k in range(8)] for o in range(3)]
    eff = [[Wl[o][k] + 2.5 * BA[o][k] for k in range(8)] for o in range(3)]
    with torch.no_grad():
        got = model(x)
    for o in range(3):
        for i in range(2):
            for j in range(2):
                patch = rows(x[0, :, i:i + 2, j:j + 2].flatten())
                assert float(got[0, o, i, j]) == pytest.approx(sum(e * p for e, p in zip(eff[o], patch)), abs=1e-5)


def test_formula_lora_adapter_scaling_attribute_is_alpha_over_rank():
    p = lora.LoRAParametrization(torch.zeros(4, 4), rank=2, alpha=6.0)
    assert p.scaling == pytest.approx(3.0)
    w = torch.zeros(4, 4)
    with torch.no_grad():
        p.lora_A.fill_(1.0)
        p.lora_B.fill_(1.0)
    assert torch.allclose(p(w), torch.full((4, 4), 2 * 3.0))  # (B A)_oi = rank = 2, times alpha / rank = 3
