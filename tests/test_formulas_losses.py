"""Formula checks of every loss in ``clipunlearn.losses``: naive loops on hand-made toys.

Each expected value is computed independently (``tests/formula_helpers.py``: Python floats and
``math``) and compared to 1e-6. Weighted losses are checked term by term (other weights 0) and
in their sum; symmetric terms in both directions. The DIRECTION tests take one small SGD step
on the tiny open_clip model and check the loss moves the way its name says.
"""

from __future__ import annotations

import math

import pytest
import torch

from clipunlearn import losses
from clipunlearn.losses import LOSSES, get_loss


from .formula_helpers import (TOL, batch, cosine, cross_entropy, feature_model, features, kl, label_aware_contrastive,
                              logits_of, norm, rows, soft_target_ce, softmax, transpose)

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


@pytest.fixture
def toy():
    """``(model, original, forget batch, retain batch)`` of the toy feature model (the two models differ)."""
    return feature_model(1, scale=3.0), feature_model(2, scale=2.0), batch(3, [0, 0, 0]), batch(4, [1, 2, 1, 3])


def naive_rm(model, b):
    i2t, t2i = label_aware_contrastive(logits_of(model, b), b["labels"].tolist())
    return (i2t + t2i) / 2


def naive_fm(model, b):
    img, txt = features(model, b)
    return sum(cosine(i, t) for i, t in zip(img, txt)) / len(img)


def naive_cm_parts(model, original, b, *, reverse=False):
    """``(KL image part, KL text part)`` of L_CM: rows = images over texts, then texts over images."""
    lu, lo = logits_of(model, b), logits_of(original, b)
    parts = []
    for u_rows, o_rows in ((lu, lo), (transpose(lu), transpose(lo))):
        terms = []
        for u, o in zip(u_rows, o_rows):
            p_o, p_u = softmax(o), softmax(u)
            terms.append(kl(p_u, p_o) if reverse else kl(p_o, p_u))
        parts.append(sum(terms) / len(terms))  # batchmean
    return tuple(parts)


def naive_zero_shot_ce(model, b, class_texts):
    img, _ = features(model, b)
    txt = [list(r) for r in features(model, {"images": b["images"], "texts": class_texts})[1]]
    s = math.exp(model.logit_scale.item())
    return sum(cross_entropy([s * cosine(i, t) for t in txt], y) for i, y in zip(img, b["labels"].tolist())) / len(img)


def naive_forget_ce_against_batches(model, forget, retain):
    img, _ = features(model, forget)
    _, txt_f = features(model, forget)
    _, txt_r = features(model, retain)
    txt = txt_f + txt_r
    lab = forget["labels"].tolist() + retain["labels"].tolist()
    s = math.exp(model.logit_scale.item())
    logit_rows = [[s * cosine(i, t) for t in txt] for i in img]
    pos = [[1.0 if y == l else 0.0 for l in lab] for y in forget["labels"].tolist()]
    return soft_target_ce(logit_rows, pos)


# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #
def test_formula_registry_lists_every_loss_checked_here():
    """Every registered loss has a formula test below (a new loss must get one)."""
    assert set(LOSSES) == {"ft", "ga", "ga_pairs", "graddiff", "neggrad_plus", "random_labels", "cliperase",
                           "cliperase_paper", "lipschitz"}
    for name in LOSSES:
        assert get_loss(name) is LOSSES[name] and get_loss(name).loss_name == name


# --------------------------------------------------------------------------- #
# Contrastive loss, both directions
# --------------------------------------------------------------------------- #
def test_formula_clip_contrastive_2x2_hand_worked_both_directions():
    """Standard CLIP loss on a 2x2 hand example, scale 1, logits ``img @ txt.T = [[2, 0], [1.5, 0.5]]``.

    i2t: rows [2, 0] target 0, [1.5, 0.5] target 1 -> (log(1 + e^-2) + log(1 + e^1)) / 2.
    t2i: columns [2, 1.5] target 0, [0, 0.5] target 1 -> (log(1 + e^-0.5) + log(1 + e^-0.5)) / 2.
    """
    img = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    txt = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    logits = img @ txt.T
    i2t = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1.0))) / 2
    t2i = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(-0.5))) / 2
    assert abs(i2t - t2i) > 0.1  # the example tells the two directions apart
    assert torch.equal(logits, torch.tensor([[2.0, 0.0], [1.5, 0.5]]))
    assert float(losses.contrastive_loss(img, txt, 1.0)) == pytest.approx((i2t + t2i) / 2, abs=TOL)
    # the label-aware form with the identity positives is the same loss
    pos = torch.eye(2, dtype=torch.bool)
    assert float(losses.contrastive_loss(img, txt, 1.0, positives=pos)) == pytest.approx((i2t + t2i) / 2, abs=TOL)
    # swapping the towers swaps the directions: the symmetric loss is unchanged
    assert float(losses.contrastive_loss(txt, img, 1.0)) == pytest.approx((i2t + t2i) / 2, abs=TOL)


def test_formula_clip_contrastive_label_aware_multi_positive_both_directions():
    """UniCL targets: uniform over the positives, i2t over each image's row, t2i over each text's column."""
    g = torch.Generator().manual_seed(5)
    img, txt = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = [0, 1, 0, 2, 0]
    scale = 2.5
    logit_rows = [[scale * dot for dot in r] for r in rows(img @ txt.T)]
    i2t, t2i = label_aware_contrastive(logit_rows, labels)
    assert abs(i2t - t2i) > 1e-3
    pos = losses.pair_positives(torch.tensor(labels))
    assert float(losses.contrastive_loss(img, txt, scale, positives=pos)) == pytest.approx((i2t + t2i) / 2, abs=TOL)
    # text-to-image alone: swap towers and transpose positives -> i2t and t2i exchange, mean unchanged
    assert float(losses.contrastive_loss(txt, img, scale, positives=pos.T)) == pytest.approx((i2t + t2i) / 2, abs=TOL)


def test_formula_clip_contrastive_t2i_leaves_out_texts_matching_no_image():
    """A text column with no positive image is dropped from t2i (but stays a negative in i2t)."""
    g = torch.Generator().manual_seed(6)
    img, txt = torch.randn(2, 3, generator=g), torch.randn(3, 3, generator=g)
    pos = losses.pair_positives_between(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    logit_rows = rows(img @ txt.T)
    pos_rows = [[float(v) for v in r] for r in pos.tolist()]
    i2t = soft_target_ce(logit_rows, pos_rows)  # rows see all 3 texts
    cols = transpose(logit_rows)[:2]  # text 2 matches no image: left out
    t2i = soft_target_ce(cols, [[1.0, 0.0], [0.0, 1.0]])
    assert float(losses.contrastive_loss(img, txt, 1.0, positives=pos)) == pytest.approx((i2t + t2i) / 2, abs=TOL)


# --------------------------------------------------------------------------- #
# CLIPErase modules
# --------------------------------------------------------------------------- #
def test_formula_cliperase_forgetting_module_is_mean_pair_cosine(toy):
    model, _, forget, _ = toy
    assert float(losses.forgetting_loss(model, forget).detach()) == pytest.approx(naive_fm(model, forget), abs=TOL)


def test_formula_cliperase_retention_module_is_symmetric_label_aware_clip_loss(toy):
    model, _, _, retain = toy
    i2t, t2i = label_aware_contrastive(logits_of(model, retain), retain["labels"].tolist())
    assert abs(i2t - t2i) > 1e-3
    assert float(losses.retention_loss(model, retain)) == pytest.approx((i2t + t2i) / 2, abs=TOL)
    assert float(losses.pair_clip_loss(model, retain)) == pytest.approx((i2t + t2i) / 2, abs=TOL)


def test_formula_cliperase_consistency_is_kl_orig_to_unlearned_image_and_text_rows(toy):
    """L_CM = KL(p_orig_img || p_unl_img) + KL(p_orig_txt || p_unl_txt), batchmean; not the reverse KL."""
    model, original, _, retain = toy
    img_part, txt_part = naive_cm_parts(model, original, retain)
    rev = sum(naive_cm_parts(model, original, retain, reverse=True))
    assert abs(img_part - txt_part) > 1e-3  # both directions are needed to match
    assert abs(rev - (img_part + txt_part)) > 1e-3  # the KL direction matters on this example
    got = float(losses.consistency_loss(model, original, retain))
    assert got == pytest.approx(img_part + txt_part, abs=TOL)
    assert abs(got - rev) > 1e-3
    # identical models: zero
    assert float(losses.consistency_loss(original, original, retain)) == pytest.approx(0.0, abs=TOL)


@pytest.mark.parametrize("lambdas", [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.5, 2.0, 7.0),
                                     (1.0, 3.0, 3.0)])
def test_formula_cliperase_total_weights_each_module_by_its_own_lambda(toy, lambdas):
    """L = lambda1 L_RM + lambda2 L_FM + lambda3 L_CM: each module alone (others 0) and weighted sums."""
    model, original, forget, retain = toy
    l1, l2, l3 = lambdas
    rm, fm, cm = naive_rm(model, retain), naive_fm(model, forget), sum(naive_cm_parts(model, original, retain))
    assert min(abs(rm), abs(fm), abs(cm)) > 1e-2 and len({round(rm, 3), round(fm, 3), round(cm, 3)}) == 3
    loss, logs = losses.cliperase_loss(model, original, forget, retain, lambda1=l1, lambda2=l2, lambda3=l3)
    assert float(loss) == pytest.approx(l1 * rm + l2 * fm + l3 * cm, abs=TOL)
    for key, value, lam in (("rm", rm, l1), ("fm", fm, l2), ("cm", cm, l3)):
        assert logs[key] == pytest.approx(value if lam else 0.0, abs=TOL)


def test_formula_cliperase_default_lambdas_are_the_papers_1_3_3(toy):
    model, original, forget, retain = toy
    expected = naive_rm(model, retain) + 3 * naive_fm(model, forget) + 3 * sum(naive_cm_parts(model, original, retain))
    loss, _ = losses.cliperase_loss(model, original, forget, retain)
    assert float(loss) == pytest.approx(expected, abs=TOL)


# --------------------------------------------------------------------------- #
# Ascent baselines: GA, GradDiff, NegGrad+, random labels, FT
# --------------------------------------------------------------------------- #
CLASS_TEXTS = torch.tensor([[1.0, 0.0, 0.2], [0.0, 1.0, -0.3], [0.3, -0.2, 1.0], [-1.0, 0.5, 0.5]])


def test_formula_zero_shot_forget_ce_over_class_prompts(toy):
    model, _, forget, _ = toy
    forget = {**forget, "labels": torch.tensor([0, 2, 1])}
    expected = naive_zero_shot_ce(model, forget, CLASS_TEXTS)
    got = losses.zero_shot_forget_ce(model, forget, class_texts=CLASS_TEXTS)
    assert float(got) == pytest.approx(expected, abs=TOL)


def test_formula_zero_shot_forget_ce_against_forget_and_retain_captions(toy):
    """Without class prompts: label-aware CE of each forget image over forget + retain captions."""
    model, _, forget, retain = toy
    expected = naive_forget_ce_against_batches(model, forget, retain)
    got = losses.zero_shot_forget_ce(model, forget, other_batch=retain)
    assert float(got) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("with_prompts", [True, False])
def test_formula_ga_is_minus_forget_ce(toy, with_prompts):
    """GA descends -CE_f (ascends the forget cross-entropy): the sign is negative."""
    model, original, forget, retain = toy
    kw = {"class_texts": CLASS_TEXTS} if with_prompts else {}
    ce = naive_zero_shot_ce(model, forget, CLASS_TEXTS) if with_prompts else \
        naive_forget_ce_against_batches(model, forget, retain)
    loss, logs = losses.ga_loss(model, original, forget, retain, **kw)
    assert ce > 0.1
    assert float(loss) == pytest.approx(-ce, abs=TOL)
    assert logs["forget_loss"] == pytest.approx(ce, abs=TOL)


@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 1.0), (2.0, 0.5), (1.0, 1.0)])
def test_formula_graddiff_is_retain_weight_times_retain_minus_forget_weight_times_forget_ce(toy, weights):
    model, original, forget, retain = toy
    rw, fw = weights
    ce, rm = naive_zero_shot_ce(model, forget, CLASS_TEXTS), naive_rm(model, retain)
    loss, logs = losses.graddiff_loss(model, original, forget, retain, class_texts=CLASS_TEXTS,
                                      forget_weight=fw, retain_weight=rw)
    assert float(loss) == pytest.approx(rw * rm - fw * ce, abs=TOL)
    assert logs["forget_loss"] == pytest.approx(ce, abs=TOL) and logs["retain_loss"] == pytest.approx(rm, abs=TOL)


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.3, 0.9])
def test_formula_neggrad_plus_is_beta_retain_minus_one_minus_beta_forget_ce(toy, beta):
    model, original, forget, retain = toy
    ce, rm = naive_zero_shot_ce(model, forget, CLASS_TEXTS), naive_rm(model, retain)
    loss, _ = losses.neggrad_plus_loss(model, original, forget, retain, class_texts=CLASS_TEXTS, beta=beta)
    assert float(loss) == pytest.approx(beta * rm - (1 - beta) * ce, abs=TOL)


@pytest.mark.parametrize("retain_weight", [0.0, 1.0, 2.5])
def test_formula_random_labels_is_ce_to_a_wrong_class_plus_weighted_retain(toy, retain_weight):
    """With two class prompts the only wrong class is the other one: the target is deterministic."""
    model, original, forget, retain = toy
    two = CLASS_TEXTS[:2]
    forget = {**forget, "labels": torch.tensor([0, 1, 0])}
    img, _ = features(model, forget)
    _, txt = features(model, {"images": forget["images"], "texts": two})
    s = math.exp(model.logit_scale.item())
    relabel = sum(cross_entropy([s * cosine(i, t) for t in txt], 1 - y)
                  for i, y in zip(img, forget["labels"].tolist())) / len(img)
    rm = naive_rm(model, retain)
    loss, logs = losses.random_labels_loss(model, original, forget, retain, class_texts=two,
                                           retain_weight=retain_weight)
    assert float(loss) == pytest.approx(relabel + retain_weight * rm, abs=TOL)
    assert logs["relabel_loss"] == pytest.approx(relabel, abs=TOL)


def test_formula_random_labels_without_prompts_targets_a_retain_caption(toy):
    """Without prompts the target is a random retain caption: with one retain caption it is caption 0."""
    model, original, forget, retain = toy
    one = {k: v[:1] for k, v in retain.items()}
    img, _ = features(model, forget)
    _, txt = features(model, one)
    s = math.exp(model.logit_scale.item())
    relabel = sum(cross_entropy([s * cosine(i, t) for t in txt], 0) for i in img) / len(img)
    loss, _ = losses.random_labels_loss(model, original, forget, one, retain_weight=0.0)
    assert float(loss) == pytest.approx(relabel, abs=TOL)


def test_formula_ft_is_the_retain_contrastive_loss(toy):
    model, original, forget, retain = toy
    loss, _ = losses.ft_loss(model, original, forget, retain)
    assert float(loss) == pytest.approx(naive_rm(model, retain), abs=TOL)


# --------------------------------------------------------------------------- #
# Paper B: the Lipschitz loss
# --------------------------------------------------------------------------- #
def naive_lipschitz(model, images, texts, noise, lo, hi):
    """mean_{i,s} (||f_txt(t_i) - f_img(x'_is)|| + ||f_img(x_i) - f_img(x'_is)||) / (2 ||x_i - x'_is||)."""
    b, n = noise.shape[:2]
    x = rows(images.flatten(1))
    lo_v, hi_v = rows(lo.flatten()), rows(hi.flatten())  # one bound per channel
    per_pixel = images[0].numel() // len(lo_v)  # channel-major flattening
    img_f, txt_f = features(model, {"images": images, "texts": texts})
    total = 0.0
    for i in range(b):
        for s in range(n):
            eps = rows(noise[i, s].flatten())
            xp = []
            for k, (xv, e) in enumerate(zip(x[i], eps)):
                c = k // per_pixel
                xp.append(min(max(xv + e, lo_v[c]), hi_v[c]))
            fp = features(model, {"images": torch.tensor([xp]), "texts": texts[:1]})[0][0]
            out_t = norm([a - b_ for a, b_ in zip(txt_f[i], fp)])
            out_i = norm([a - b_ for a, b_ in zip(img_f[i], fp)])
            in_n = norm([a - b_ for a, b_ in zip(x[i], xp)])
            total += (out_t + out_i) / (2 * in_n)
    return total / (b * n)


def lipschitz_toy():
    g = torch.Generator().manual_seed(8)
    model = feature_model(9, di=12, dt=3, d=3)
    images = torch.rand(2, 3, 2, 2, generator=g) * 1.6 - 0.8
    texts = torch.randn(2, 3, generator=g)
    noise = 0.7 * torch.randn(2, 3, 3, 2, 2, generator=g)  # big enough that clamping happens
    return model, images, texts, noise


@pytest.mark.parametrize("batched", [True, False])
def test_formula_lipschitz_penalty_matches_paper_b_equation(batched):
    model, images, texts, noise = lipschitz_toy()
    lo, hi = torch.full((1, 3, 1, 1), -1.0), torch.full((1, 3, 1, 1), 1.0)
    assert ((images.unsqueeze(1) + noise).abs() > 1).any()  # the clamp is exercised
    expected = naive_lipschitz(model, images, texts, noise, lo, hi)
    loss, logs = losses.lipschitz_penalty(model, images, texts, noise=noise, bounds=(lo, hi), batched=batched)
    assert float(loss) == pytest.approx(expected, abs=TOL)
    # without bounds the perturbed image is not clamped: a different number
    unclamped = naive_lipschitz(model, images, texts, noise, torch.full((3,), -1e9), torch.full((3,), 1e9))
    loss_free, _ = losses.lipschitz_penalty(model, images, texts, noise=noise, bounds=None)
    assert float(loss_free) == pytest.approx(unclamped, abs=TOL) and abs(unclamped - expected) > 1e-3


def test_formula_lipschitz_penalty_no_gradient_through_perturbed_images():
    """f_img(x') is computed without gradient: the gradient equals that of the equation with x' detached."""
    model, images, texts, noise = lipschitz_toy()
    lo, hi = torch.full((1, 3, 1, 1), -1.0), torch.full((1, 3, 1, 1), 1.0)
    loss, _ = losses.lipschitz_penalty(model, images, texts, noise=noise, bounds=(lo, hi))
    got = torch.autograd.grad(loss, [model.wi, model.wt])
    # reference: written out with torch ops, f_img(x') detached
    noisy = torch.maximum(torch.minimum(images.unsqueeze(1) + noise, hi.unsqueeze(1)), lo.unsqueeze(1))
    total = 0.0
    for i in range(2):
        fi, ft = images[i].flatten() @ model.wi, texts[i] @ model.wt
        for s in range(3):
            fp = (noisy[i, s].flatten() @ model.wi).detach()
            total = total + ((ft - fp).norm() + (fi - fp).norm()) / (2 * (images[i] - noisy[i, s]).norm())
    want = torch.autograd.grad(total / 6, [model.wi, model.wt])
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=TOL)


def test_formula_lipschitz_registered_loss_draws_sigma_noise_and_clamps_to_pixel_range():
    """The registered loss: noise = sigma * N(0, 1) from the generator, x' clamped to ((0-m)/s, (1-m)/s)."""
    model = feature_model(9, di=12, dt=3, d=3, mean=(0.5, 0.4, 0.3), std=(0.5, 0.25, 0.2))
    _, images, texts, _ = lipschitz_toy()
    sigma, n = 0.9, 3
    noise = sigma * torch.randn((2, n, 3, 2, 2), generator=torch.Generator().manual_seed(11))
    lo = torch.tensor([(0 - 0.5) / 0.5, (0 - 0.4) / 0.25, (0 - 0.3) / 0.2])
    hi = torch.tensor([(1 - 0.5) / 0.5, (1 - 0.4) / 0.25, (1 - 0.3) / 0.2])
    expected = naive_lipschitz(model, images, texts, noise, lo, hi)
    loss, _ = losses.lipschitz_loss(model, None, {"images": images, "texts": texts}, n_samples=n, sigma=sigma,
                                    generator=torch.Generator().manual_seed(11))
    assert float(loss) == pytest.approx(expected, abs=TOL)


def test_formula_lipschitz_authors_sum_scale_and_batch_clamp():
    """Authors' form: ``loss_scale="sum"`` is ``B / 2`` times the mean (the docstring's equivalence);
    ``noise_clamp="batch"`` clamps x' to the scalar min / max of the batch tensor."""
    from clipunlearn.methods import lipschitz

    model, images, texts, _ = lipschitz_toy()
    sigma, n = 0.5, 2
    torch.manual_seed(21)
    noise = sigma * torch.randn((2, n, 3, 2, 2))
    lo, hi = images.min(), images.max()
    mean_form = naive_lipschitz(model, images, texts, noise, lo.expand(3), hi.expand(3))
    torch.manual_seed(21)
    loss, _ = lipschitz.lipschitz_loss(model, {"images": images, "texts": texts}, n_samples=n, sigma=sigma,
                                       loss_scale="sum", noise_clamp="batch")
    assert float(loss) == pytest.approx(mean_form * 2 / 2, abs=TOL)  # B = 2: B / 2 = 1
    torch.manual_seed(21)
    loss_mean, _ = lipschitz.lipschitz_loss(model, {"images": images, "texts": texts}, n_samples=n, sigma=sigma,
                                            loss_scale="mean", noise_clamp="batch")
    assert float(loss_mean) == pytest.approx(mean_form, abs=TOL)
    # B = 4: the sum form is twice the mean
    imgs4, txts4 = torch.cat([images, images.flip(0)]), torch.cat([texts, texts])
    torch.manual_seed(22)
    noise4 = sigma * torch.randn((4, n, 3, 2, 2))
    mean4 = naive_lipschitz(model, imgs4, txts4, noise4, imgs4.min().expand(3), imgs4.max().expand(3))
    torch.manual_seed(22)
    loss4, _ = lipschitz.lipschitz_loss(model, {"images": imgs4, "texts": txts4}, n_samples=n, sigma=sigma,
                                        loss_scale="sum", noise_clamp="batch")
    assert float(loss4) == pytest.approx(mean4 * 4 / 2, abs=1e-5)


# --------------------------------------------------------------------------- #
# DIRECTION: one small SGD step on the tiny open_clip model
# --------------------------------------------------------------------------- #
def tiny_batches(tiny_tokenizer, tiny_batch):
    forget = {k: v[[0, 2]] for k, v in tiny_batch.items()}  # class 0 (t-shirt)
    g = torch.Generator().manual_seed(1)
    names = ["trouser", "sneaker", "bag", "trouser"]
    retain = {"images": torch.randn(4, 3, 32, 32, generator=g),
              "texts": tiny_tokenizer([f"a photo of a {n}." for n in names]), "labels": torch.tensor([1, 2, 3, 1])}
    class_texts = tiny_tokenizer([f"a photo of a {n}." for n in ["t-shirt", "trouser", "sneaker", "bag"]])
    return forget, retain, class_texts


def sgd_step(model, loss_fn, lr):
    """One plain gradient step of total length ``lr`` (normalised: small enough to be first order)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    total = math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is not None:
                p -= lr * g / total
    return float(loss)


def similarity(model, b):
    with torch.no_grad():
        return float(losses.forgetting_loss(model, b))


@pytest.mark.parametrize("method,kwargs", [
    ("ft", {}), ("ga", {"class_texts": True}), ("ga", {}), ("graddiff", {"class_texts": True}),
    ("neggrad_plus", {"class_texts": True}), ("random_labels", {"class_texts": True}), ("cliperase", {}),
    ("cliperase", {"lambda1": 0.0, "lambda3": 0.0}), ("lipschitz", {"n_samples": 2, "sigma": 0.5}),
])
def test_formula_direction_one_sgd_step_lowers_each_loss(tiny_clip, tiny_tokenizer, tiny_batch, method, kwargs):
    import copy

    model = tiny_clip.model
    original = copy.deepcopy(model)
    forget, retain, class_texts = tiny_batches(tiny_tokenizer, tiny_batch)
    kwargs = dict(kwargs)
    if kwargs.get("class_texts"):
        kwargs["class_texts"] = class_texts
    fn = get_loss(method)

    def loss_fn():
        torch.manual_seed(0)  # random labels / noise: the same draw before and after the step
        if method == "lipschitz":
            kwargs["generator"] = torch.Generator().manual_seed(0)
        return fn(model, original, forget, retain, **kwargs)[0]

    before = sgd_step(model, loss_fn, lr=1e-3)
    with torch.no_grad():
        after = float(loss_fn())
    assert after < before - 1e-7, (method, before, after)


@pytest.mark.parametrize("method,kwargs", [("ga", {"class_texts": True}), ("cliperase", {}),
                                           ("cliperase", {"lambda1": 0.0, "lambda3": 0.0})])
def test_formula_direction_forgetting_losses_raise_forget_ce_or_lower_forget_similarity(
        tiny_clip, tiny_tokenizer, tiny_batch, method, kwargs):
    """GA's step raises the forget cross-entropy (ascent); CLIPErase's lowers the forget pair cosine."""
    import copy

    model = tiny_clip.model
    original = copy.deepcopy(model)
    forget, retain, class_texts = tiny_batches(tiny_tokenizer, tiny_batch)
    kwargs = dict(kwargs)
    if kwargs.get("class_texts"):
        kwargs["class_texts"] = class_texts
    ce_before = float(losses.zero_shot_forget_ce(model, forget, class_texts=class_texts))
    sim_before = similarity(model, forget)
    sgd_step(model, lambda: get_loss(method)(model, original, forget, retain, **kwargs)[0], lr=1e-3)
    if method == "ga":
        assert float(losses.zero_shot_forget_ce(model, forget, class_texts=class_texts)) > ce_before + 1e-7
    else:
        assert similarity(model, forget) < sim_before - 1e-7
