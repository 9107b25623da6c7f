"""Formulas measured against the retrained gold standard and the MIA family, each computed another way.

``gap_to_retrain`` and ``mia_advantage`` / ``auc_standard_error`` (``scores``), ``js_divergence``,
``output_divergence``, ``prediction_entropy`` and ``mia_efficacy`` (``metrics``).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from clipunlearn import metrics, scores

from .test_experiment import tiny_world


# --------------------------------------------------------------------------- #
# gap to the retrained model
# --------------------------------------------------------------------------- #
def test_gap_to_retrain_is_the_mean_absolute_difference_of_the_shared_accuracies():
    run = {"forget_acc": 0.1, "sibling_acc": 0.8, "retain_acc": 0.9, "other_acc": 0.5, "other_forget_acc": 0.2,
           "mia": 0.9, "seconds": 100.0}
    gold = {"forget_acc": 0.0, "sibling_acc": 0.9, "retain_acc": 0.85, "other_acc": 0.6, "other_forget_acc": 0.4,
            "mia": 0.5, "seconds": 1.0}
    # |0.1| + |0.1| + |0.05| + |0.1| + |0.2| = 0.55 over 5 (mia and seconds are not accuracies of the gap)
    assert scores.gap_to_retrain(run, gold) == pytest.approx(0.11)
    assert scores.gap_to_retrain(gold, run) == pytest.approx(0.11)  # symmetric
    no_sibling = {k: v for k, v in gold.items() if k != "sibling_acc"}
    assert scores.gap_to_retrain(run, no_sibling) == pytest.approx(0.45 / 4)
    assert scores.gap_to_retrain(run, {**gold, "other_acc": float("nan")}) == pytest.approx(0.45 / 4)
    assert scores.gap_to_retrain(gold, gold) == 0.0
    assert scores.gap_to_retrain({"mia": 0.5}, gold) is None


# --------------------------------------------------------------------------- #
# membership inference as an advantage with its standard error
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("n_pos, n_neg", [(300, 300), (10, 20), (1, 1)])
def test_auc_standard_error_at_chance_is_the_mann_whitney_null(n_pos, n_neg):
    # at A = 0.5 Hanley-McNeil reduces to the exact null variance of the Mann-Whitney U / (n_pos n_neg)
    expected = math.sqrt((n_pos + n_neg + 1) / (12 * n_pos * n_neg))
    assert scores.auc_standard_error(0.5, n_pos, n_neg) == pytest.approx(expected)


def test_auc_standard_error_by_hand_and_its_limits():
    # A = 0.8, 10 and 20: Q1 = 0.8 / 1.2, Q2 = 1.28 / 1.8, var = (0.16 + 9 (Q1 - 0.64) + 19 (Q2 - 0.64)) / 200
    q1, q2 = 0.8 / 1.2, 1.28 / 1.8
    assert scores.auc_standard_error(0.8, 10, 20) == pytest.approx(
        math.sqrt((0.16 + 9 * (q1 - 0.64) + 19 * (q2 - 0.64)) / 200))
    assert scores.auc_standard_error(0.8, 10, 20) == pytest.approx(0.0935713, abs=1e-6)
    assert scores.auc_standard_error(1.0, 50, 50) == 0.0  # a perfect attack has no spread
    assert scores.auc_standard_error(0.8, 20, 10) != scores.auc_standard_error(0.8, 10, 20)  # the sides differ
    with pytest.raises(ValueError, match="^an AUC needs samples on both sides, got 0 and 3$"):
        scores.auc_standard_error(0.5, 0, 3)


def test_mia_advantage_is_the_distance_from_chance():
    below, above = scores.mia_advantage(0.47, 300, 300), scores.mia_advantage(0.53, 300, 300)
    assert below["mia_advantage"] == pytest.approx(0.03) and above["mia_advantage"] == pytest.approx(0.03)
    assert below["mia_se"] == pytest.approx(scores.auc_standard_error(0.47, 300, 300))
    assert scores.mia_advantage(0.5, 300, 300)["mia_advantage"] == 0.0


def test_the_auc_standard_error_matches_a_simulation():
    # 600 random attacks at chance with 30 members and 40 non-members: the AUCs' spread is the formula's (within 10%,
    # about 3.4 standard errors of a standard deviation estimated from 600 draws)
    g = torch.Generator().manual_seed(0)
    aucs = torch.tensor([metrics.auc_score(torch.rand(30, generator=g), torch.rand(40, generator=g))
                         for _ in range(600)])
    assert float(aucs.std()) == pytest.approx(scores.auc_standard_error(0.5, 30, 40), rel=0.1)


# --------------------------------------------------------------------------- #
# output distance
# --------------------------------------------------------------------------- #
def naive_js(p, q):
    total = 0.0
    for a, b in zip(p, q):
        m = (a + b) / 2
        total += 0.5 * (a * math.log2(a / m) if a > 0 else 0.0) + 0.5 * (b * math.log2(b / m) if b > 0 else 0.0)
    return total


def test_js_divergence_by_hand_and_by_a_loop():
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.2, 0.8], [0.3, 0.7]])
    q = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.2, 0.8], [0.6, 0.4]])
    out = metrics.js_divergence(p, q)
    # disjoint: 1 bit; (0.5, 0.5) vs (1, 0): (0.5 log2(2/3) + 0.5 + log2(4/3)) / 2 = 0.3112781; equal rows: 0
    assert out[:3].tolist() == pytest.approx([1.0, 0.3112781, 0.0], abs=1e-7)
    assert out.tolist() == pytest.approx([naive_js(a.tolist(), b.tolist()) for a, b in zip(p, q)], abs=1e-12)
    assert torch.equal(metrics.js_divergence(q, p), out)  # symmetric


def test_output_divergence_is_zero_against_itself_and_the_mean_js_otherwise(tiny_clip):
    model, tokenizer = tiny_clip
    test = tiny_world(n_per_class=3, seed=1)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.visual.parameters():
            p.add_(0.05 * torch.randn_like(p))
    kw = dict(tokenizer=tokenizer, classnames=test.classnames, templates=["a photo of a {}."], indices=[0, 5, 11])
    assert metrics.output_divergence(model, copy.deepcopy(model), test, **kw) == pytest.approx(0.0, abs=1e-12)
    got = metrics.output_divergence(model, other, test, **kw)

    def probs(m):
        clf = metrics.build_classifier(m, tokenizer, test.classnames, ["a photo of a {}."])
        return metrics.predict_logits(m, clf, test, indices=[0, 5, 11])[0].softmax(1).double()

    expected = sum(naive_js(a.tolist(), b.tolist()) for a, b in zip(probs(model), probs(other))) / 3
    assert got == pytest.approx(expected, rel=1e-6) and got > 0


# --------------------------------------------------------------------------- #
# the entropy attack (MIA-efficacy)
# --------------------------------------------------------------------------- #
def test_prediction_entropy():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -1e9, -1e9]],
                          dtype=torch.float64)
    # uniform over 4: ln 4; one-hot: 0; (3/4, 1/4): -(0.75 ln 0.75 + 0.25 ln 0.25)
    assert metrics.prediction_entropy(logits).tolist() == pytest.approx(
        [math.log(4), 0.0, -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))], abs=1e-9)


def test_mia_efficacy_counts_the_forget_samples_called_non_members():
    g = torch.Generator().manual_seed(0)
    member = 0.1 + 0.1 * torch.rand(200, generator=g)  # confident on what it trained on
    nonmember = 1.0 + 0.2 * torch.rand(100, generator=g)  # unsure on unseen images (fewer: weights balance it)
    forgotten, remembered = 1.1 * torch.ones(30), 0.15 * torch.ones(30)
    assert metrics.mia_efficacy(member, nonmember, forgotten) == 1.0
    assert metrics.mia_efficacy(member, nonmember, remembered) == 0.0
    assert metrics.mia_efficacy(member, nonmember, torch.cat([forgotten[:10], remembered])) == pytest.approx(0.25)
    assert math.isnan(metrics.mia_efficacy(member, nonmember, torch.empty(0)))
