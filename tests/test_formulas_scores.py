"""Formula checks of the aggregate scores and paper A's training terms.

``experiment.unlearning_score`` / ``selection_score``, paper B's ``compute_avg_gain``, the Fisher and
relative-Fisher layer scores (a naive per-sample autograd loop on a 2-layer toy), paper B's mean
|grad| layer score, the distillation KL with temperature, paper A's BatchNorm alignment loss and the
reminding loss. Expected values by hand or by loops; compared to 1e-6.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipunlearn import experiment, layers
from clipunlearn.methods import three_stage, three_stage_stages
from clipunlearn.methods.lipschitz import compute_avg_gain

from .formula_helpers import (TOL, batch, feature_model, kl, label_aware_contrastive, logits_of, rows, softmax,
                              transpose)

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


# --------------------------------------------------------------------------- #
# The project's unlearning score (harmonic mean of forgetting and retention)
# --------------------------------------------------------------------------- #
ORIGINAL = {"forget_acc": 0.8, "sibling_acc": 0.5, "retain_acc": 0.9, "other_acc": 0.6}


def test_formula_unlearning_score_hand_worked():
    """F = 1 - 0.2 / 0.8 = 0.75; R = mean(0.4/0.5, 0.45/0.9, 0.6/0.6) = (0.8 + 0.5 + 1) / 3 = 23/30;
    score = 2 F R / (F + R) = 2 * .75 * 23/30 / (.75 + 23/30)."""
    run = {"forget_acc": 0.2, "sibling_acc": 0.4, "retain_acc": 0.45, "other_acc": 0.6}
    f, r = 0.75, 23 / 30
    assert experiment.unlearning_score(run, ORIGINAL) == pytest.approx(2 * f * r / (f + r), abs=TOL)


def test_formula_unlearning_score_clamps_on_both_sides():
    base = {"sibling_acc": 0.5, "retain_acc": 0.9, "other_acc": 0.6}
    # forgetting: forget_acc above the original clamps to 0 -> score 0; at 0 it is 1
    assert experiment.unlearning_score({**base, "forget_acc": 0.9}, ORIGINAL) == pytest.approx(0.0, abs=TOL)
    assert experiment.unlearning_score({**base, "forget_acc": 0.0}, ORIGINAL) == pytest.approx(1.0, abs=TOL)
    # the untouched model: F = 0 -> 0
    assert experiment.unlearning_score(ORIGINAL, ORIGINAL) == pytest.approx(0.0, abs=TOL)
    # retention: an accuracy above the original counts 1 (min(1, .)), just below counts its ratio
    above = {"forget_acc": 0.0, "sibling_acc": 0.6, "retain_acc": 0.95, "other_acc": 0.7}
    assert experiment.unlearning_score(above, ORIGINAL) == pytest.approx(1.0, abs=TOL)
    below = {"forget_acc": 0.0, "sibling_acc": 0.45, "retain_acc": 0.9, "other_acc": 0.6}  # R = (0.9 + 1 + 1) / 3
    r = 2.9 / 3
    assert experiment.unlearning_score(below, ORIGINAL) == pytest.approx(2 * r / (1 + r), abs=TOL)
    # forgets everything: R = 0, F = 1 -> 0; both 0 -> 0
    dead = {"forget_acc": 0.0, "sibling_acc": 0.0, "retain_acc": 0.0, "other_acc": 0.0}
    assert experiment.unlearning_score(dead, ORIGINAL) == pytest.approx(0.0, abs=TOL)
    assert experiment.unlearning_score({**dead, "forget_acc": 0.8}, ORIGINAL) == 0.0


def test_formula_unlearning_score_uses_only_keys_both_have_and_none_when_undefined():
    run = {"forget_acc": 0.4, "retain_acc": 0.45}  # only retain: R = 0.5, F = 0.5 -> 0.5
    assert experiment.unlearning_score(run, ORIGINAL) == pytest.approx(0.5, abs=TOL)
    assert experiment.unlearning_score(run, {**ORIGINAL, "forget_acc": 0.0}) is None  # no original forget acc
    assert experiment.unlearning_score({"retain_acc": 0.4}, ORIGINAL) is None
    assert experiment.unlearning_score({"forget_acc": float("nan"), "retain_acc": 0.4}, ORIGINAL) is None


def test_formula_selection_score_is_val_retain_minus_val_forget_rounded():
    assert experiment.selection_score({"val_retain_acc": 0.9, "val_forget_acc": 0.25}) == pytest.approx(0.65, abs=TOL)
    assert experiment.selection_score({"val_retain_acc": 0.1, "val_forget_acc": 0.6}) == pytest.approx(-0.5, abs=TOL)
    # rounding to 4 decimals on both sides of the half
    assert experiment.selection_score({"val_retain_acc": 0.50004, "val_forget_acc": 0.0}) == 0.5
    assert experiment.selection_score({"val_retain_acc": 0.50006, "val_forget_acc": 0.0}) == 0.5001


# --------------------------------------------------------------------------- #
# Paper B's avg_gain (the authors' compute_avg_gain)
# --------------------------------------------------------------------------- #
def test_formula_avg_gain_hand_worked_two_other_datasets():
    """(0.1/0.5 + (0.8-0.6)/0.8 + (0.5-0.4)/0.5 + max(0, (0.6-0.7)/0.6)) / 4 = (0.2 + 0.25 + 0.2 + 0) / 4."""
    ref = {"forget_acc": 0.5, "retain_acc": 0.8, "other_acc/x": 0.5, "other_acc/y": 0.6}
    res = {"forget_acc": 0.1, "retain_acc": 0.6, "other_acc/x": 0.4, "other_acc/y": 0.7}
    assert compute_avg_gain(res, ref) == pytest.approx((0.2 + 0.25 + 0.2 + 0.0) / 4, abs=TOL)
    # other_names picks the datasets: only x -> / 3
    assert compute_avg_gain(res, ref, other_names=["x"]) == pytest.approx((0.2 + 0.25 + 0.2) / 3, abs=TOL)


def test_formula_avg_gain_zero_reference_accuracy_counts_zero():
    ref = {"forget_acc": 0.0, "retain_acc": 0.8, "other_acc/x": 0.0, "other_acc/y": 0.5}
    res = {"forget_acc": 0.3, "retain_acc": 0.4, "other_acc/x": 0.2, "other_acc/y": 0.25}
    # forget term 0 (never recognised), retain 0.5, x 0 (undefined drop), y 0.5 -> 1.0 / 4
    assert compute_avg_gain(res, ref) == pytest.approx(0.25, abs=TOL)


# --------------------------------------------------------------------------- #
# Fisher and relative Fisher (paper A), mean |grad| (paper B)
# --------------------------------------------------------------------------- #
class TwoLayer(nn.Module):
    """Toy with the CLIP names the layer code reads: ``visual.*`` (2 layers) and ``transformer.fc``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.visual = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        self.transformer = nn.Module()
        self.transformer.fc = nn.Linear(3, 2)

    def encode_image(self, x, normalize=False):
        f = self.visual(x)
        return F.normalize(f, dim=-1) if normalize else f

    def encode_text(self, t, normalize=False):
        f = self.transformer.fc(t)
        return F.normalize(f, dim=-1) if normalize else f


def naive_per_sample_sq_grads(model, b):
    """``{param name: [||d s_i / d p||^2 for each sample i]}`` with s_i the image-caption cosine, one sample at a time."""
    named = dict(model.named_parameters())
    out = {n: [] for n in named}
    for i in range(len(b["images"])):
        fi, ft = model.encode_image(b["images"][i:i + 1]), model.encode_text(b["texts"][i:i + 1])
        s = (fi[0] @ ft[0]) / (fi[0].norm() * ft[0].norm())
        grads = torch.autograd.grad(s, list(named.values()))
        for n, g in zip(named, grads):
            out[n].append(sum(v * v for v in g.flatten().tolist()))
    return out


def naive_fisher(model, batches, per="layer"):
    named = dict(model.named_parameters())
    group = (lambda n: n.rsplit(".", 1)[0]) if per == "layer" else (lambda n: n)
    sums, numel, count = {}, {}, 0
    for b in batches:
        sq = naive_per_sample_sq_grads(model, b)
        for n, vals in sq.items():
            sums[group(n)] = sums.get(group(n), 0.0) + sum(vals)
        count += len(b["images"])
    for n, p in named.items():
        numel[group(n)] = numel.get(group(n), 0) + p.numel()
    return {gname: sums[gname] / count / numel[gname] for gname in sums}


def fisher_batches(seed, sizes):
    g = torch.Generator().manual_seed(seed)
    return [{"images": torch.randn(k, 3, generator=g), "texts": torch.randn(k, 3, generator=g)} for k in sizes]


@pytest.mark.parametrize("per", ["layer", "tensor"])
def test_formula_fisher_is_mean_per_sample_squared_gradient_per_element(per):
    """F_l = (1 / N) sum_i ||d s_i / d theta_l||^2 / numel(theta_l), over all samples of all batches."""
    model = TwoLayer()
    batches = fisher_batches(50, [2, 3])
    want = naive_fisher(model, batches, per=per)
    got = layers.fisher_scores(model, batches, per=per)
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-12)


def test_formula_relative_fisher_is_forget_fisher_over_retain_fisher_ranked():
    """I_l = F_l(D_f) / F_l(D_r), sorted high to low (paper A's layer ranking)."""
    model = TwoLayer()
    forget, retain = fisher_batches(51, [3]), fisher_batches(52, [2, 2])
    ff, fr = naive_fisher(model, forget), naive_fisher(model, retain)
    want = {k: ff[k] / fr[k] for k in ff}
    got = layers.relative_fisher_scores(model, forget, retain)
    assert list(got) == sorted(want, key=lambda k: -want[k])
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5)
    # the inverse ratio is a different ranking on this example
    assert list(got) != sorted(want, key=lambda k: want[k])


def test_formula_choose_layers_takes_the_top_n_by_score():
    scores = {"a": 0.1, "b": 3.0, "c": 2.0, "d": 5.0}
    assert three_stage.choose_layers(scores, ["a", "b", "c", "d"], n_layers=2) == ["d", "b"]
    assert three_stage.choose_layers(scores, ["a", "b", "c"], n_layers=1) == ["b"]


def test_formula_paper_b_layer_score_is_mean_abs_of_batch_averaged_gradient():
    """s_l = mean_elements |(1 / n_batches) sum_batches dL/dtheta_l|, L the loss of each batch."""
    model = TwoLayer()
    batches = fisher_batches(53, [2, 3])
    loss_fn = lambda m, b: layers.similarity_score(m, b)
    named = dict(model.named_parameters())
    acc = {n: torch.zeros_like(p) for n, p in named.items()}
    for b in batches:
        for n, g in zip(named, torch.autograd.grad(loss_fn(model, b), list(named.values()))):
            acc[n] += g
    want = {n: sum(abs(v) for v in (a / 2).flatten().tolist()) / a.numel() for n, a in acc.items()}
    got = layers.score_layers(model, batches, loss_fn=loss_fn)
    for n in want:
        assert got[n] == pytest.approx(want[n], rel=1e-5)
    # top-k per encoder: image tensors ranked by score, text tensors by score
    top = layers.select_top_k(got, k_image=2, k_text=1)
    image = sorted([n for n in got if n.startswith("visual.")], key=lambda n: -want[n])[:2]
    text = sorted([n for n in got if n.startswith("transformer.")], key=lambda n: -want[n])[:1]
    assert top == image + text


def test_formula_similarity_score_is_mean_pair_cosine():
    model = TwoLayer()
    b = fisher_batches(54, [3])[0]
    fi, ft = rows(model.encode_image(b["images"])), rows(model.encode_text(b["texts"]))
    cos = [sum(x * y for x, y in zip(a, c)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in c))
           for a, c in zip(fi, ft)]
    assert float(layers.similarity_score(model, b)) == pytest.approx(sum(cos) / 3, abs=TOL)
    assert three_stage_stages.pair_similarities(model, b).tolist() == pytest.approx(cos, abs=TOL)


# --------------------------------------------------------------------------- #
# Distillation with temperature, reminding loss
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("t", [1.0, 2.0, 0.5])
def test_formula_distillation_is_t_squared_kl_teacher_to_student(t):
    """T^2 * mean_rows KL(softmax(teacher / T) || softmax(student / T)); the reverse KL is another number."""
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]]
    fwd = sum(kl(softmax([v / t for v in tr]), softmax([v / t for v in sr])) for sr, tr in zip(student, teacher)) / 2
    rev = sum(kl(softmax([v / t for v in sr]), softmax([v / t for v in tr])) for sr, tr in zip(student, teacher)) / 2
    got = float(three_stage_stages.distillation_loss(torch.tensor(student), torch.tensor(teacher), temperature=t))
    assert got == pytest.approx(t * t * fwd, abs=TOL)
    assert abs(t * t * rev - got) > 1e-3


@pytest.mark.parametrize("kd_weight", [0.0, 1.0, 2.5])
def test_formula_remind_loss_is_contrastive_plus_kd_weight_times_distillation(kd_weight):
    model, original = feature_model(60, scale=3.0), feature_model(61, scale=2.0)
    b = batch(62, [0, 1, 0, 2])
    i2t, t2i = label_aware_contrastive(logits_of(model, b), b["labels"].tolist())
    student, teacher = logits_of(model, b), logits_of(original, b)
    kd = sum(kl(softmax(tr), softmax(sr)) for sr, tr in zip(student, teacher)) / 4  # image-to-text rows, T = 1
    loss, logs = three_stage_stages.remind_loss(model, original, b, kd_weight=kd_weight)
    assert float(loss) == pytest.approx((i2t + t2i) / 2 + kd_weight * kd, abs=TOL)
    assert logs["contrastive"] == pytest.approx((i2t + t2i) / 2, abs=TOL)
    # the teacher is image-to-text: the text-to-image rows give another number on this example
    kd_t2i = sum(kl(softmax(tr), softmax(sr)) for sr, tr in zip(transpose(student), transpose(teacher))) / 4
    assert abs(kd_t2i - kd) > 1e-3
    if kd_weight:
        assert logs["kd"] == pytest.approx(kd, abs=TOL)


# --------------------------------------------------------------------------- #
# Paper A's alignment loss: sum_l |mu_l - BN_mu_l|_1 + |sigma_l - BN_sigma_l|_1
# --------------------------------------------------------------------------- #
class BNToy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.visual = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 1),
                                    nn.BatchNorm2d(2))
        with torch.no_grad():
            for bn, mean, var in ((self.visual[1], [0.3, -0.2], [1.5, 0.4]), (self.visual[4], [0.1, 0.0], [0.2, 2.0])):
                bn.running_mean.copy_(torch.tensor(mean))
                bn.running_var.copy_(torch.tensor(var))
        self.eval()

    def encode_image(self, x):
        return self.visual(x).mean((2, 3))


def channel_stats(x, eps):
    """Per-channel mean and sqrt(biased var + eps) over batch and space, by loops."""
    b, c, h, w = x.shape
    out = []
    for ch in range(c):
        vals = [float(x[i, ch, y, z]) for i in range(b) for y in range(h) for z in range(w)]
        mu = sum(vals) / len(vals)
        var = sum((v - mu) ** 2 for v in vals) / len(vals)
        out.append((mu, math.sqrt(var + eps)))
    return out


def test_formula_alignment_loss_matches_batchnorm_running_statistics():
    model = BNToy()
    x = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(70))
    with torch.no_grad():
        in1 = model.visual[0](x)
        in2 = model.visual[3](model.visual[2](model.visual[1](in1)))
    total = 0.0
    for inp, bn in ((in1, model.visual[1]), (in2, model.visual[4])):
        for ch, (mu, sigma) in enumerate(channel_stats(inp, bn.eps)):
            total += abs(mu - float(bn.running_mean[ch]))
            total += abs(sigma - math.sqrt(float(bn.running_var[ch]) + bn.eps))
    assert float(three_stage_stages.alignment_loss(model, x)) == pytest.approx(total, abs=1e-5)


def test_formula_alignment_loss_is_zero_at_matching_statistics():
    """Features whose batch mean / std equal the running statistics give 0 (one BN, identity conv)."""
    model = BNToy()
    model.visual = nn.Sequential(nn.BatchNorm2d(3)).eval()
    x = torch.tensor([[[[1.0]], [[2.0]], [[0.0]]], [[[3.0]], [[0.0]], [[0.0]]]])  # means 2, 1, 0; biased vars 1, 1, 0
    bn = model.visual[0]
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([2.0, 1.0, 0.0]))
        bn.running_var.copy_(torch.tensor([1.0, 1.0, 0.0]))
    assert float(three_stage_stages.alignment_loss(model, x)) == pytest.approx(0.0, abs=TOL)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([2.5, 1.0, 0.0]))  # |2 - 2.5| = 0.5
    assert float(three_stage_stages.alignment_loss(model, x)) == pytest.approx(0.5, abs=TOL)
