"""The BatchNorm image prior of the synthetic forget samples (DeepInversion) and the closeness measures."""

import pytest
import torch

from clipunlearn import metrics, synthetic_prior
from clipunlearn.harness.store import _identity
from clipunlearn.methods.three_stage_stages import batchnorm_layers
from clipunlearn.papers import paper_b_datafree

CLASSNAMES = ["cat", "dog", "car", "ship"]
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def randomise_running_stats(model, seed=0):
    """Give every BatchNorm layer distinct running statistics (a fresh model has 0 / 1 everywhere)."""
    g = torch.Generator().manual_seed(seed)
    for _, bn in batchnorm_layers(model):
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=g))
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g) + 0.5)


def naive_layer_stats(model, images):
    """Per BatchNorm layer, the per-channel mean and biased variance of its input, by explicit loops over channels."""
    inputs = []
    handles = [bn.register_forward_pre_hook(lambda m, i: inputs.append(i[0].detach())) for _, bn in
               batchnorm_layers(model)]
    with torch.no_grad():
        model.encode_image(images)
    for h in handles:
        h.remove()
    out = []
    for x in inputs:
        means, variances = [], []
        for c in range(x.shape[1]):
            values = x[:, c].flatten().double()
            mu = values.sum() / len(values)
            means.append(float(mu))
            variances.append(float(((values - mu) ** 2).sum() / len(values)))  # biased, as BatchNorm's
        out.append((means, variances))
    return out


def l2(a, b):
    return sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5


def naive_layer_terms(model, images):
    """Per BatchNorm layer, ||mean - running_mean||_2 + ||var - running_var||_2."""
    return [l2(m, bn.running_mean.tolist()) + l2(v, bn.running_var.tolist())
            for (m, v), (_, bn) in zip(naive_layer_stats(model, images), batchnorm_layers(model))]


def test_total_variation_matches_a_hand_worked_example():
    x = torch.tensor([[1.0, 2.0], [4.0, 8.0]]).view(1, 1, 2, 2)
    # horizontal (1-2, 4-8), vertical (1-4, 2-8), diagonal x[1,0]-x[0,1] = 4-2, diagonal x[0,0]-x[1,1] = 1-8
    expected = (1 + 16) ** 0.5 + (9 + 36) ** 0.5 + 2.0 + 7.0
    assert synthetic_prior.total_variation_l2(x).item() == pytest.approx(expected)


def test_batchnorm_feature_loss_matches_a_naive_loop_and_weights_the_first_layer(tiny_resnet_clip):
    model = tiny_resnet_clip.model
    randomise_running_stats(model)
    images = torch.randn(6, 3, 32, 32)
    terms = naive_layer_terms(model, images)
    assert len(terms) == len(batchnorm_layers(model)) > 3
    got = synthetic_prior.batchnorm_feature_loss(model, images).item()
    assert got == pytest.approx(sum(terms), rel=1e-4)
    weighted = synthetic_prior.batchnorm_feature_loss(model, images, first_multiplier=10.0).item()
    assert weighted == pytest.approx(10 * terms[0] + sum(terms[1:]), rel=1e-4)


def test_feature_statistics_distance_is_zero_to_itself_and_matches_the_loop(tiny_resnet_clip):
    model = tiny_resnet_clip.model
    a, b = torch.randn(5, 3, 32, 32), torch.randn(7, 3, 32, 32) * 0.5 + 0.3
    assert synthetic_prior.feature_statistics_distance(model, a, a) == pytest.approx(0.0, abs=1e-6)
    expected = sum(l2(ma, mb) + l2(va, vb) for (ma, va), (mb, vb) in
                   zip(naive_layer_stats(model, a), naive_layer_stats(model, b)))
    assert expected > 0
    assert synthetic_prior.feature_statistics_distance(model, a, b) == pytest.approx(expected, rel=1e-4)


def test_a_vit_tower_is_refused_with_the_valid_priors(tiny_clip):
    with pytest.raises(ValueError, match="no BatchNorm.*valid: none, bn"):
        synthetic_prior.batchnorm_feature_loss(tiny_clip.model, torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown synthetic prior 'deep'; valid: none, bn"):
        synthetic_prior.generate_with_prior(tiny_clip.model, torch.randn(32, 4), prior="deep")


def test_the_prior_lowers_the_feature_loss_and_keeps_images_valid(tiny_resnet_clip):
    model, tokenizer = tiny_resnet_clip
    randomise_running_stats(model)
    weights = metrics.build_classifier(model, tokenizer, CLASSNAMES, ["a photo of a {}."])
    kw = dict(classes=["dog"], classnames=CLASSNAMES, n_per_class=4, image_size=32, mean=MEAN, std=STD, lr=0.1,
              jitter=0, flip=False, tv_weight=0.0, l2_weight=0.0, seed=3, batch_size=4)
    start = synthetic_prior.generate_bn_prior(model, weights, steps=0, **kw)
    after = synthetic_prior.generate_bn_prior(model, weights, steps=15, bn_weight=1.0, **kw)
    before_loss = synthetic_prior.batchnorm_feature_loss(model, start.images).item()
    after_loss = synthetic_prior.batchnorm_feature_loss(model, after.images).item()
    assert after_loss < before_loss
    assert after.images.shape == (4, 3, 32, 32) and after.targets.tolist() == [1] * 4
    assert after.images.min() >= -1 - 1e-6 and after.images.max() <= 1 + 1e-6  # mean / std 0.5: pixels in [-1, 1]
    again = synthetic_prior.generate_bn_prior(model, weights, steps=15, bn_weight=1.0, **kw)
    assert torch.equal(after.images, again.images)


def test_the_classification_term_raises_the_target_probability(tiny_resnet_clip):
    model, tokenizer = tiny_resnet_clip
    weights = metrics.build_classifier(model, tokenizer, CLASSNAMES, ["a photo of a {}."])
    kw = dict(classes=["car"], classnames=CLASSNAMES, n_per_class=4, image_size=32, mean=MEAN, std=STD, lr=0.1,
              jitter=0, flip=False, bn_weight=0.0, tv_weight=0.0, l2_weight=0.0, seed=1, batch_size=4)
    start = synthetic_prior.generate_bn_prior(model, weights, steps=0, **kw)
    after = synthetic_prior.generate_bn_prior(model, weights, steps=10, **kw)
    assert after.probs.mean() > start.probs.mean()


def test_fit_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(20)
    centres = torch.eye(3, 8) * 4
    feats = centres[labels] + 0.3 * torch.randn(60, 8, generator=g)
    probe = paper_b_datafree.fit_probe(feats, labels, num_classes=3, steps=100)
    assert (probe(feats).argmax(1) == labels).float().mean() == 1.0


def test_split_priors_and_the_store_keep_the_priors_apart():
    base = {"method": "lipschitz_synthetic", "task": "forget-class", "metrics": {}}
    none = {**base, "config": {"forget_class": "sneaker", "seed": 0, "synthetic_prior": "none"}}
    bn = {**base, "config": {"forget_class": "sneaker", "seed": 0, "synthetic_prior": "bn"}}
    old = {**base, "config": {"forget_class": "sneaker", "seed": 0}}
    assert [r["method"] for r in synthetic_prior.split_priors([none, bn, old])] == [
        "lipschitz_synthetic", synthetic_prior.PRIOR_VARIANT, "lipschitz_synthetic"]
    assert _identity(none) != _identity(bn)
    sel = {"method": "nullspace", "task": "selection", "metrics": {}}
    assert _identity({**sel, "config": {"alpha": 0.5}}) != _identity({**sel, "config": {"alpha": 1.0}})


def test_fit_probe_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    feats, labels = torch.randn(12, 4, generator=torch.Generator().manual_seed(0)), torch.arange(12) % 3
    torch.manual_seed(123)
    first = paper_b_datafree.fit_probe(feats, labels, num_classes=3, steps=5, seed=7)
    assert torch.equal(torch.rand(3), expected)  # the runs after a measurement draw what they drew before
    again = paper_b_datafree.fit_probe(feats, labels, num_classes=3, steps=5, seed=7)
    assert torch.equal(first.weight, again.weight)  # and the probe itself repeats from its seed
