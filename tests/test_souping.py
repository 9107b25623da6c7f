"""Souping: pure functions over state dicts."""

import pytest
import torch

from clipunlearn import souping


def sd(value, bn=3):
    return {"w": torch.full((2, 2), float(value)), "bn.num_batches_tracked": torch.tensor(bn)}


def test_interpolation_endpoints_and_midpoint():
    a, b = sd(0.0), sd(4.0, bn=7)
    assert torch.equal(souping.interpolate_state_dicts(a, b, 0.0)["w"], a["w"])
    assert torch.equal(souping.interpolate_state_dicts(a, b, 1.0)["w"], b["w"])
    mid = souping.interpolate_state_dicts(a, b, 0.25)
    assert torch.allclose(mid["w"], torch.full((2, 2), 1.0))
    assert mid["bn.num_batches_tracked"] == 3  # integer buffers come from the first


def test_uniform_soup_and_key_checks():
    assert torch.allclose(souping.soup_state_dicts([sd(1), sd(2), sd(6)])["w"], torch.full((2, 2), 3.0))
    with pytest.raises(ValueError, match="different keys"):
        souping.soup_state_dicts([sd(1), {"v": torch.zeros(2, 2)}])
    with pytest.raises(ValueError, match="different shapes"):
        souping.soup_state_dicts([sd(1), {"w": torch.zeros(3), "bn.num_batches_tracked": torch.tensor(1)}])
    with pytest.raises(ValueError, match="weights"):
        souping.soup_state_dicts([sd(1), sd(2)], [1.0])


def test_search_alpha_picks_best_and_leaves_model_there():
    model = torch.nn.Linear(1, 1, bias=False)
    theta_0 = {"weight": torch.zeros(1, 1)}
    theta_1 = {"weight": torch.ones(1, 1)}
    best, trials = souping.search_alpha(model, theta_0, theta_1,
                                        score_fn=lambda m: -abs(float(m.weight.detach()) - 0.3))
    assert best == pytest.approx(0.3) and len(trials) == 11
    assert float(model.weight.detach()) == pytest.approx(0.3)
