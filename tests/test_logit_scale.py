"""CLIP's temperature during unlearning: trained freely, clamped to [0, ln 100] as open_clip does, or frozen."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from clipunlearn import harness, losses, unlearning

from .test_experiment import tiny_world


@pytest.fixture
def task():
    train, test = tiny_world(seed=0), tiny_world(n_per_class=6, seed=1)
    return harness.build_task(train, test, kind="forget-class", target="bag", seed=0, eval_per_class=4)


@pytest.mark.parametrize("mode", ["trainable", "clamped", "frozen"])
def test_logit_scale_modes(tiny_clip, task, mode):
    model = tiny_clip.model
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100) - 1e-3)  # just under open_clip's clamp
    start = float(model.logit_scale.detach())
    unlearned, record = harness.run_method("ga", task, model=model, tokenizer=tiny_clip.tokenizer, lr=0.5, steps=3,
                                           logit_scale=mode)
    after = float(unlearned.logit_scale.detach())
    if mode == "frozen":
        assert after == start
    elif mode == "clamped":
        assert after <= math.log(100) + 1e-7
    assert record["config"]["logit_scale"] == mode  # stated in every record


def test_run_method_clamps_the_temperature_by_default(tiny_clip, task):
    model = tiny_clip.model
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100) - 1e-3)
    unlearned, record = harness.run_method("ga", task, model=model, tokenizer=tiny_clip.tokenizer, lr=0.5, steps=3)
    assert record["config"]["logit_scale"] == "clamped"
    assert float(unlearned.logit_scale.detach()) <= math.log(100) + 1e-7


def test_trainable_logit_scale_moves_past_the_clamp_and_an_unknown_mode_is_refused(tiny_clip, monkeypatch):
    model = tiny_clip.model
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100))
    # a loss that only wants a larger temperature: trainable goes past ln 100, clamped stays at it
    monkeypatch.setitem(losses.LOSSES, "sharpen", lambda m, original, forget, retain, **kw: (-m.logit_scale, {}))
    free, clamped = copy.deepcopy(model), copy.deepcopy(model)
    unlearning.unlearn(free, method="sharpen", forget_loader=[{}] * 3, lr=0.1, progress=False)
    unlearning.unlearn(clamped, method="sharpen", forget_loader=[{}] * 3, lr=0.1, progress=False,
                       logit_scale="clamped")
    assert float(free.logit_scale.detach()) > math.log(100) + 0.1
    assert float(clamped.logit_scale.detach()) == pytest.approx(math.log(100))
    with pytest.raises(ValueError, match="^unknown logit_scale mode 'fixed'; valid: trainable, clamped, frozen$"):
        unlearning.unlearn(model, method="sharpen", forget_loader=[{}], lr=0.1, logit_scale="fixed", progress=False)
