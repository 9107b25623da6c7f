"""Layer scores: checks written for the mutants that survived the other tests (benchmarks/mutation.md).

Expected values are worked out by hand in each test.
"""

import pytest
import torch

from clipunlearn import layers

from .formula_helpers import batch, feature_model


def test_select_top_k_accepts_zero_from_an_encoder():
    scores = {"visual.a.weight": 3.0, "visual.b.weight": 1.0, "transformer.c.weight": 2.0}
    assert layers.select_top_k(scores, k_image=0, k_text=1) == ["transformer.c.weight"]
    assert layers.select_top_k(scores, k_image=1, k_text=0) == ["visual.a.weight"]
    with pytest.raises(ValueError, match="must be >= 0"):
        layers.select_top_k(scores, k_image=-1, k_text=0)


def test_score_layers_skips_frozen_tensors():
    model = feature_model(0)
    model.wt.requires_grad_(False)
    b = batch(1, [0, 1])
    loss_fn = lambda m, bt: (m.encode_image(bt["images"]) * m.encode_text(bt["texts"])).sum()
    scores = layers.score_layers(model, [b], loss_fn=loss_fn)
    assert set(scores) == {"wi"}  # wt is frozen, logit_scale gets no gradient
    # d/dWi sum_b <x_b Wi, t_b Wt> = sum_b x_b^T (t_b Wt): mean |.| over the 3 x 3 elements
    x, t, wt = b["images"].double(), b["texts"].double(), model.wt.detach().double()
    grad = sum(torch.outer(x[i], t[i] @ wt) for i in range(2))
    assert scores["wi"] == pytest.approx(float(grad.abs().mean()), rel=1e-6)


def test_per_sample_fisher_returns_one_value_per_sample():
    model, b = feature_model(2), batch(3, [0, 1, 0])
    out = layers.per_sample_fisher(model, b, names=["wi"])
    assert list(out) == ["wi"] and out["wi"].shape == (3,)
    # the sum over samples is what fisher_scores averages
    assert float(out["wi"].sum()) / 3 == pytest.approx(layers.fisher_scores(model, [b], names=["wi"])["wi"], rel=1e-6)


def test_relative_fisher_forwards_names_grouping_and_score_fn():
    model = feature_model(4)
    forget, retain = [batch(5, [0, 0])], [batch(6, [1, 2])]
    assert list(layers.relative_fisher_scores(model, forget, retain, names=["wi"])) == ["wi"]
    # per="tensor" with a tower module: groups are tensors, not the owning layer
    vis = torch.nn.Module()
    vis.proj = torch.nn.Linear(3, 3, bias=True)
    model.visual_layer = vis
    names = ["visual_layer.proj.weight", "visual_layer.proj.bias"]
    summed = lambda m, bt: m.visual_layer.proj(bt["images"]).sum()
    out = layers.relative_fisher_scores(model, forget, retain, names=names, per="tensor", score_fn=summed)
    assert sorted(out) == sorted(names)
    # d/d bias of sum_o (W x + b)_o is 1 for each of the 3 outputs, for every sample: F = 3 / 3 = 1 on both
    # sets, so the ratio is 1 (the default score_fn does not touch this module: its ratio would be 0)
    assert out["visual_layer.proj.bias"] == pytest.approx(1.0, rel=1e-9)
    grouped = layers.relative_fisher_scores(model, forget, retain, names=names, score_fn=summed)
    assert list(grouped) == ["visual_layer.proj"]


def test_layer_score_errors_say_what_is_missing():
    model = feature_model(7)
    loss_fn = lambda m, bt: m.encode_image(bt["images"]).sum()
    with pytest.raises(ValueError) as err:
        layers.score_layers(model, [], loss_fn=loss_fn)
    assert str(err.value) == "no batches given: pass at least one batch to score the layers on"
    with pytest.raises(ValueError) as err:
        layers.fisher_scores(model, [])
    assert str(err.value) == "no batches given: pass at least one batch to compute the Fisher information on"
    with pytest.raises(ValueError) as err:
        layers.per_sample_fisher(model, batch(8, [0]), names=list("abcdef"))
    assert str(err.value) == "unknown parameter names ['a', 'b', 'c', 'd', 'e']; see model.named_parameters()"


def test_per_sample_fisher_groups_by_layer_by_default_and_batches_may_carry_other_values():
    model, b = feature_model(9), batch(10, [0, 1])
    assert list(layers.per_sample_fisher(model, b)) == ["wi", "wt", "logit_scale"]  # tensors of the model root
    b_with_names = dict(b, classnames=["t-shirt", "trouser"])  # not a tensor: left as it is
    loss_fn = lambda m, bt: m.encode_image(bt["images"]).sum()
    assert set(layers.score_layers(model, [b_with_names], loss_fn=loss_fn)) == {"wi"}
    assert set(layers.score_layers(model, [[b["images"], "no tensor"]],
                                   loss_fn=lambda m, bt: m.encode_image(bt[0]).sum())) == {"wi"}
