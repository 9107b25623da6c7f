"""Several runs trained at once (``stacked_runs``): the same weights as the runs one after the other."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.func import functional_call, vmap

from clipunlearn import losses
from clipunlearn.clip import copy_frozen
from clipunlearn.stacked_runs import (STACKED_METHODS, _UnderVmap, _LossOf, load_run, stack_runs, step_adamw,
                                      train_stacked, unstack_state)

from .test_unlearning import class_prompts, loaders

# Adam divides a gradient by its own size, so rounding (the stacked and the single runs sum in other orders: their
# gradients differ by ~3e-6 of the largest) moves a weight whose gradient is tiny by a visible part of lr. The
# comparisons therefore keep the attention's key biases out (their gradient is zero but for rounding, ~1e-10: a
# softmax ignores a shift shared by all keys), take eps 1e-6 (a gradient under it moves its weight by less than lr)
# and learning rates up to 3e-4: the largest difference is then ~3e-6, and a weight moves by ~lr a step.
LRS = (3e-5, 1e-4, 3e-4)
EPS = 1e-6


def compared(model) -> list[str]:
    """The parameters the comparisons train: all but the attention's key biases."""
    return [n for n, _ in model.named_parameters() if not n.endswith(("in_proj_bias", "k_proj.bias"))]


def step_batches(tokenizer, steps: int = 3) -> tuple[list[dict], list[dict]]:
    """``steps`` forget and retain batches of the toy world (the forget loader's second epoch after its first)."""
    forget, retain = loaders(tokenizer)
    return ([*forget.batches(0), *forget.batches(1)][:steps], [*retain.batches(0), *retain.batches(1)][:steps])


def run_one_after_another(model, method, lr, forget, retain, *, original, loss_kwargs, weight_decay):
    """One ordinary run: a copy of ``model`` and ``torch.optim.AdamW``; return it and its losses."""
    run = copy.deepcopy(model).eval()
    trained = set(compared(run))
    optimizer = torch.optim.AdamW([p for n, p in run.named_parameters() if n in trained], lr=lr,
                                  weight_decay=weight_decay, eps=EPS)
    seen = []
    for f, r in zip(forget, retain):
        loss, _ = losses.get_loss(method)(run, original, f, r, **loss_kwargs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen.append(loss.item())
    return run, seen


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.parametrize("clip, method, weight_decay", [
    ("tiny_resnet_clip", "ft", 0.0), ("tiny_resnet_clip", "ft", 0.1), ("tiny_resnet_clip", "ga", 0.0),
    ("tiny_resnet_clip", "ga", 0.1), ("tiny_resnet_clip", "cliperase", 0.0), ("tiny_resnet_clip", "cliperase", 0.1),
    ("tiny_resnet_clip", "graddiff", 0.1), ("tiny_clip", "cliperase", 0.1)])
def test_stacked_runs_are_the_runs_one_after_another(request, clip, method, weight_decay):
    model, tokenizer = request.getfixturevalue(clip)
    forget, retain = step_batches(tokenizer)
    loss_kwargs = {"class_texts": class_prompts(tokenizer)} if method in ("ga", "graddiff") else {}
    original = copy_frozen(model)
    before = copy.deepcopy(model.state_dict())
    runs = train_stacked(model, method=method, lrs=LRS, forget_batches=forget, retain_batches=retain,
                         original=original, loss_kwargs=loss_kwargs, weight_decay=weight_decay, eps=EPS,
                         trainable=compared(model))
    assert largest_difference(model.state_dict(), before) == 0  # the model lends its weights, keeps them
    assert len(runs) == len(LRS)
    for k, lr in enumerate(LRS):
        alone, seen = run_one_after_another(model, method, lr, forget, retain, original=original,
                                            loss_kwargs=loss_kwargs, weight_decay=weight_decay)
        assert largest_difference(runs[k]["state"], alone.state_dict()) < 1e-5, (k, lr)
        assert runs[k]["losses"] == pytest.approx(seen, abs=1e-5)
        assert largest_difference(load_run(model, runs, k).state_dict(), alone.state_dict()) < 1e-5
        assert largest_difference(alone.state_dict(), before) > lr  # the run trained: AdamW moves a weight ~lr a step


def test_a_run_at_lr_0_keeps_its_weights_and_the_others_train(tiny_resnet_clip):
    model, tokenizer = tiny_resnet_clip
    forget, retain = step_batches(tokenizer, steps=2)
    runs = train_stacked(model, method="cliperase", lrs=[0.0, 1e-3], forget_batches=forget, retain_batches=retain,
                         weight_decay=0.1)
    start = model.state_dict()
    assert largest_difference(runs[0]["state"], start) == 0
    assert largest_difference(runs[1]["state"], start) > 1e-3
    assert runs[0]["losses"][0] == runs[1]["losses"][0]  # the first step's loss is the same model's


def test_only_the_trainable_tensors_are_stacked_and_trained(tiny_resnet_clip):
    model, tokenizer = tiny_resnet_clip
    _, retain = step_batches(tokenizer, steps=2)
    names = ["logit_scale", "text_projection"]
    stacked = stack_runs(model, [1e-3, 1e-2], trainable=names)
    assert stacked.names == names[::-1] and stacked.weights.shape == (2, 1 + model.text_projection.numel())
    runs = train_stacked(model, method="ft", lrs=[1e-3, 1e-2], retain_batches=retain, trainable=names)
    start = model.state_dict()
    moved = {k for k in start if not torch.equal(runs[1]["state"][k], start[k])}
    assert moved == set(names)
    assert torch.equal(unstack_state(model, stacked, 0)["logit_scale"], start["logit_scale"])
    with pytest.raises(ValueError, match=r"unknown parameter names in trainable: \['nope'\]"):
        stack_runs(model, [1e-3], trainable=["nope"])


# --------------------------------------------------------------------------- #
# the AdamW step of stacked tensors
# --------------------------------------------------------------------------- #
GRADS = [[0.3, -0.02, 1.5], [-0.4, 0.05, 0.9], [0.25, -0.01, -2.0]]  # 3 steps of a 3-element tensor
START = [1.0, -2.0, 0.5]
SETTINGS = dict(betas=(0.8, 0.9), eps=0.05, weight_decay=0.3)


def adamw_by_hand(w0, grads, *, lr, betas, eps, weight_decay, bias_correction=True):
    """The AdamW formula, element by element in Python floats (Loshchilov & Hutter; torch.optim.AdamW's form)."""
    b1, b2 = betas
    out = []
    for i, w in enumerate(w0):
        m = v = 0.0
        for t, g in enumerate((step[i] for step in grads), start=1):
            w = w - lr * weight_decay * w
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = (m / (1 - b1 ** t), v / (1 - b2 ** t)) if bias_correction else (m, v)
            w = w - lr * m_hat / (math.sqrt(v_hat) + eps)
        out.append(w)
    return out


def test_step_adamw_is_the_adamw_formula_with_each_run_its_own_lr():
    lrs = [0.1, 0.02]
    weights = torch.tensor([START, START], dtype=torch.float64)
    exp_avg, exp_avg_sq = torch.zeros_like(weights), torch.zeros_like(weights)
    for t, g in enumerate(GRADS, start=1):
        grads = torch.tensor([g, g], dtype=torch.float64)
        new = step_adamw(weights, grads, exp_avg, exp_avg_sq, step=t, lrs=torch.tensor(lrs, dtype=torch.float64),
                         **SETTINGS)
        assert torch.equal(weights, weights.clone()) and new[0] is not weights  # a pure function
        weights, exp_avg, exp_avg_sq = new
    for k, lr in enumerate(lrs):
        expected = adamw_by_hand(START, GRADS, lr=lr, **SETTINGS)
        assert weights[k].tolist() == pytest.approx(expected, abs=1e-12)
        # torch's own AdamW agrees
        p = torch.nn.Parameter(torch.tensor(START, dtype=torch.float64))
        opt = torch.optim.AdamW([p], lr=lr, **SETTINGS)
        for g in GRADS:
            p.grad = torch.tensor(g, dtype=torch.float64)
            opt.step()
        assert weights[k].tolist() == pytest.approx(p.tolist(), abs=1e-12)


@pytest.mark.parametrize("change", [dict(lr=0.05), dict(weight_decay=0.0), dict(betas=(0.9, 0.9)),
                                    dict(betas=(0.8, 0.999)), dict(eps=1e-8), dict(bias_correction=False)])
def test_every_term_of_the_adamw_formula_matters_here(change):
    # the settings above are chosen so that each term moves the result far beyond the 1e-12 of the test above
    base = dict(lr=0.1, **SETTINGS)
    assert max(abs(a - b) for a, b in zip(adamw_by_hand(START, GRADS, **base),
                                          adamw_by_hand(START, GRADS, **{**base, **change}))) > 1e-3


# --------------------------------------------------------------------------- #
# precision and bad input
# --------------------------------------------------------------------------- #
def test_bf16_runs_stay_near_the_fp32_runs(tiny_resnet_clip):
    # a ResNet: its batch norms take bf16 inputs, which vmap refuses but for stacked_runs._UnderVmap
    model, tokenizer = tiny_resnet_clip
    forget, retain = step_batches(tokenizer, steps=2)
    lrs = [1e-4, 1e-3]
    fp32, bf16 = (train_stacked(model, method="cliperase", lrs=lrs, forget_batches=forget, retain_batches=retain,
                                precision=p) for p in ("fp32", "bf16"))
    for k, lr in enumerate(lrs):
        assert bf16[k]["losses"] != fp32[k]["losses"]  # autocast did run the loss in bf16
        assert bf16[k]["losses"] == pytest.approx(fp32[k]["losses"], rel=3e-2)
        assert all(t.dtype == fp32[k]["state"][n].dtype for n, t in bf16[k]["state"].items())
        # an AdamW step moves a weight by about lr at most: bf16 noise may flip a small gradient's sign
        assert largest_difference(bf16[k]["state"], fp32[k]["state"]) < 2 * len(forget) * lr * 1.5


@pytest.mark.parametrize("kwargs, message", [
    (dict(lrs=[]), r"^lrs is empty: give one learning rate per run \(valid: finite numbers >= 0\)$"),
    (dict(lrs=[1e-3, -1e-4]), r"^learning rates must be finite numbers >= 0, got \[-0.0001\]$"),
    (dict(lrs=[float("nan")]), r"^learning rates must be finite numbers >= 0, got \[nan\]$"),
    (dict(method="erase"), r"^unknown method 'erase'; valid: ft, ga, ga_pairs, graddiff, "
                           r"neggrad_plus, cliperase, cliperase_paper$"),
    (dict(method="random_labels"), r"^method 'random_labels' cannot be trained stacked \(it draws random target "
                                   r"classes \(torch.randint\), which vmap refuses\); valid: ft, ga, .*cliperase"),
    (dict(method="lipschitz"), r"^method 'lipschitz' cannot be trained stacked \(it draws random noise .*\); "
                               r"valid: ft, ga, "),
    (dict(precision="fp16"), r"^unknown precision 'fp16'; valid: fp32, bf16$"),
    (dict(forget_batches=None, retain_batches=None), "^train_stacked needs forget_batches or retain_batches$"),
    (dict(retain_batches=[{}]), r"^2 forget batches but 1 retain batches: one of each per step$"),
])
def test_bad_input_is_refused_before_any_work(tiny_resnet_clip, kwargs, message):
    model, tokenizer = tiny_resnet_clip
    forget, retain = step_batches(tokenizer, steps=2)
    settings = dict(method="ft", lrs=[1e-3], forget_batches=forget, retain_batches=retain) | kwargs
    with pytest.raises(ValueError, match=message):
        train_stacked(model, **settings)
    assert set(STACKED_METHODS) <= set(losses.LOSSES)  # every name it offers is a registered loss


def test_under_vmap_the_logs_item_gives_nan_and_random_draws_still_fail(tiny_resnet_clip):
    # why the registry's losses run stacked (their logs' .item() answered NaN) and random_labels is refused
    model, tokenizer = tiny_resnet_clip
    forget, retain = step_batches(tokenizer, steps=1)
    params = {f"model.{k}": v.detach().unsqueeze(0).repeat(2, *[1] * v.dim()) for k, v in model.named_parameters()}

    def stacked_loss(method, kwargs):
        wrapper = _LossOf(model, losses.get_loss(method))
        return vmap(lambda p: functional_call(wrapper, p, (model, forget[0], retain[0], kwargs)))(params)

    with pytest.raises(RuntimeError, match=r"\.item\(\)"):
        stacked_loss("ft", {})
    with _UnderVmap():
        two = stacked_loss("ft", {})
        with pytest.raises(RuntimeError, match="random"):
            stacked_loss("random_labels", {"class_texts": class_prompts(tokenizer)})
    assert two.tolist() == pytest.approx([losses.ft_loss(model, model, None, retain[0])[0].item()] * 2, abs=1e-6)
    assert torch.tensor(1.5).item() == 1.5  # outside vmap .item() is untouched
