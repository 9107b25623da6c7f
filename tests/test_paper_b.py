"""Paper B as the authors' code runs it: the options of synthetic.generate_synthetic and lipschitz.forget_lipschitz."""

import copy

import pytest
import torch
import torch.nn.functional as F

from clipunlearn import layers, lipschitz, metrics, models, synthetic
from clipunlearn.unlearning import make_pair_loader

CLASSNAMES = ["cat", "dog", "car", "ship"]
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SETTINGS = dict(classes=["cat"], classnames=CLASSNAMES, n_per_class=2, image_size=32, steps=3, step_size=3.0,
                jitter=2, mean=MEAN, std=STD, seed=0, progress=False)


def make_weights(model, tokenizer):
    return metrics.build_classifier(model, tokenizer, CLASSNAMES, ["a photo of a {}."])


def generate(model, weights, **overrides):
    return synthetic.generate_synthetic(model, weights, **{**SETTINGS, **overrides})


def as_pixels(images):
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return images * s + m


# --------------------------------------------------------------------------- #
# Synthetic images
# --------------------------------------------------------------------------- #
def test_authors_parametrisation_start_and_final_images(tiny_clip):
    model, tokenizer = tiny_clip
    weights = make_weights(model, tokenizer)
    out = generate(model, weights, steps=0, parametrisation="authors")
    # no step: the returned image is normalise(minmax(noise * imagenet_std + imagenet_mean)) of the N(0, 1) noise
    noise = torch.randn(3, 32, 32, generator=synthetic.image_generator(0, 0))
    imnet = noise * torch.tensor(synthetic.IMAGENET_STD).view(3, 1, 1) + torch.tensor(synthetic.IMAGENET_MEAN).view(
        3, 1, 1)
    expected = (synthetic.minmax_rescale(imnet[None]) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(
        STD).view(1, 3, 1, 1)
    assert torch.allclose(out.images[:1], expected, atol=1e-6)
    # after steps, every returned image spans exactly [0, 1] in pixels (min-max rescaled)
    out = generate(model, weights, steps=4, parametrisation="authors", thresholds=1.01)
    pixels = as_pixels(out.images).flatten(1)
    assert torch.allclose(pixels.amin(1), torch.zeros(2), atol=1e-5)
    assert torch.allclose(pixels.amax(1), torch.ones(2), atol=1e-5)
    project = generate(model, weights, steps=4, thresholds=1.01)
    assert (as_pixels(project.images).flatten(1).amin(1) > 1e-3).any()  # not rescaled in the project's form


def test_authors_parametrisation_model_sees_imagenet_image_normalised_again(tiny_clip):
    model, tokenizer = tiny_clip
    weights = make_weights(model, tokenizer)
    seen = []
    encode = model.encode_image

    def spy(images, *args, **kwargs):
        if images.requires_grad:  # the ascent's forward pass
            seen.append(images.detach().clone())
        return encode(images, *args, **kwargs)

    model.encode_image = spy
    generate(model, weights, steps=3, parametrisation="authors", thresholds=1.01, blur_every=0)
    del model.encode_image
    variable = as_pixels(torch.cat(seen))  # what the model's normalisation was applied to
    lo, hi = synthetic.pixel_bounds(synthetic.IMAGENET_MEAN, synthetic.IMAGENET_STD)
    # the variable lives in ImageNet-normalised space: clamped there (after the first step), not in [0, 1]
    assert variable.min() < -0.5 and variable.max() > 1.5
    later = variable[2:]
    assert (later >= lo - 1e-5).all() and (later <= hi + 1e-5).all()


def test_restart_resets_noise_and_lowers_the_class_threshold(tiny_clip):
    model, tokenizer = tiny_clip
    weights = make_weights(model, tokenizer)
    kwargs = dict(thresholds=0.999, threshold_decay=0.1, min_threshold=0.5, n_per_class=4, batch_size=2)
    out = generate(model, weights, restart=True, max_attempts=2, **kwargs)
    assert not out.reached.any()
    # chunk 1: attempt 1 at 0.999, attempt 2 at 0.899; its failure lowers the class to 0.799 for chunk 2,
    # whose second attempt runs at 0.699
    assert torch.allclose(out.thresholds, torch.tensor([0.899, 0.899, 0.699, 0.699]), atol=1e-6)
    assert (out.steps_taken == 6).all()  # steps of both attempts
    # the second attempt started from fresh noise: not the one-attempt images, nor their continuation
    once = generate(model, weights, restart=True, max_attempts=1, **kwargs)
    longer = generate(model, weights, restart=False, patience=0, **{**kwargs, "thresholds": 0.999}, steps=6)
    assert not torch.allclose(out.images, once.images) and not torch.allclose(out.images, longer.images)
    assert torch.equal(once.thresholds[:2], torch.full((2,), 0.999))
    # the floor holds
    floor = generate(model, weights, restart=True, max_attempts=4, **{**kwargs, "min_threshold": 0.8})
    assert torch.allclose(floor.thresholds, torch.full((4,), 0.8))


def test_restart_lets_failed_images_reach_and_keeps_reached(tiny_clip):
    model, tokenizer = tiny_clip
    weights = make_weights(model, tokenizer)
    kwargs = dict(thresholds=0.9, threshold_decay=0.3, min_threshold=0.1, n_per_class=3, steps=2)
    fixed = generate(model, weights, restart=False, patience=0, **kwargs)
    restarted = generate(model, weights, restart=True, max_attempts=5, **kwargs)
    assert restarted.reached.sum() > fixed.reached.sum()
    kept = restarted.select_reached()
    assert kept.reached.all() and (kept.probs > kept.thresholds).all()


def test_stop_logit_scale_and_per_class_decay(tiny_clip):
    model, tokenizer = tiny_clip
    weights = make_weights(model, tokenizer)
    out = generate(model, weights, steps=2, logit_scale=10.0, stop_logit_scale=50.0, thresholds=1.01)
    with torch.no_grad():
        feats = F.normalize(model.encode_image(out.images), dim=-1)
        probs = (50.0 * feats @ F.normalize(weights, dim=0)).softmax(-1)[:, 0]
    assert torch.allclose(probs, out.probs, atol=1e-5)
    out = generate(model, weights, classes=["cat", "ship"], thresholds=0.999, steps=4, patience=2,
                   threshold_decay={"cat": 0.0, "ship": 0.1}, min_threshold=0.5)
    assert torch.allclose(out.thresholds, torch.tensor([0.999, 0.999, 0.799, 0.799]), atol=1e-6)
    with pytest.raises(ValueError, match="threshold_decay has no entry"):
        generate(model, weights, threshold_decay={"dog": 0.1})
    with pytest.raises(ValueError, match="valid: project, authors"):
        generate(model, weights, parametrisation="paper")


def test_generation_under_global_bf16_autocast_and_bf16_option(tiny_clip):
    model, tokenizer = tiny_clip
    weights = make_weights(model, tokenizer)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the blurred batch comes back bf16: cast back
        out = generate(model, weights, steps=3, blur_every=1, thresholds=1.01)
    assert out.images.dtype == torch.float32 and torch.isfinite(out.images).all()
    bf16 = generate(model, weights, steps=3, blur_every=1, thresholds=1.01, precision="bf16")
    fp32 = generate(model, weights, steps=3, blur_every=1, thresholds=1.01)
    assert bf16.images.dtype == torch.float32 and bf16.probs.dtype == torch.float32
    assert torch.allclose(bf16.images, fp32.images, atol=0.5) and not torch.equal(bf16.images, fp32.images)
