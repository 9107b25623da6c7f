"""Paper B as the authors' code runs it: the options of synthetic.generate_synthetic and lipschitz.forget_lipschitz."""

import copy

import pytest
import torch
import torch.nn.functional as F

from clipunlearn import image_cache, layers, metrics, models, synthetic
from clipunlearn.methods import lipschitz
from clipunlearn.papers import paper_b
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


# --------------------------------------------------------------------------- #
# Lipschitz forgetting
# --------------------------------------------------------------------------- #
def make_forget_data(model, tokenizer, *, n=8, batch_size=8):
    weights = make_weights(model, tokenizer)
    syn = synthetic.generate_synthetic(model, weights, classes=["cat"], classnames=CLASSNAMES, n_per_class=n,
                                       image_size=32, steps=3, step_size=3.0, jitter=2, mean=MEAN, std=STD,
                                       progress=False)
    loader = make_pair_loader(syn, tokenizer=tokenizer, templates=["A picture of {}"], batch_size=batch_size,
                              shuffle=False, seed=0)
    return syn, loader


def forget(model, tokenizer, syn, loader, **overrides):
    kwargs = dict(forget_loader=loader, tokenizer=tokenizer, classnames=CLASSNAMES, templates=["a photo of a {}."],
                  stop_dataset=syn, k_schedule=[(2, 2)] * 3, sigma_schedule=(0.1, 0.3, 0.5), n_samples=2,
                  threshold=-1.0, lr=1e-2, max_epochs=1, progress=False)
    return lipschitz.forget_lipschitz(model, **{**kwargs, **overrides})


def test_loss_scale_and_batch_noise_clamp_match_a_hand_computation(tiny_clip, tiny_batch):
    model = tiny_clip.model
    batch = dict(tiny_batch, images=tiny_batch["images"].clamp(-1.5, 1.2))
    torch.manual_seed(7)
    loss, _ = lipschitz.lipschitz_loss(model, batch, n_samples=3, sigma=0.7, loss_scale="sum", noise_clamp="batch")
    torch.manual_seed(7)
    mean_loss, _ = lipschitz.lipschitz_loss(model, batch, n_samples=3, sigma=0.7, noise_clamp="batch")
    # the authors' loop: for each sample s, sum over the batch of (|t - f(x')| + |f(x) - f(x')|) / (2 |x - x'|),
    # x' clamped to the scalar min / max of the batch tensor; total / (2 n)
    torch.manual_seed(7)
    images, texts = batch["images"], batch["texts"]
    noise = 0.7 * torch.randn(4, 3, *images.shape[1:])
    lo, hi = images.min(), images.max()
    f_txt, f_img = model.encode_text(texts), model.encode_image(images)
    total = 0.0
    for s in range(3):
        x2 = torch.clamp(images + noise[:, s], min=lo, max=hi)
        with torch.no_grad():
            f2 = model.encode_image(x2)
        out = (f_txt - f2).norm(dim=1) + (f_img - f2).norm(dim=1)
        total = total + (out / (2 * (images - x2).flatten(1).norm(dim=1))).sum()
    expected = total / (2 * 3)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() == pytest.approx(mean_loss.item() * 4 / 2, rel=1e-6)  # B / 2 times the mean
    with pytest.raises(ValueError, match="valid: mean, sum"):
        lipschitz.lipschitz_loss(model, batch, n_samples=1, sigma=0.1, loss_scale="total")


def test_coupled_l2_adam_differs_from_adamw(tiny_clip, monkeypatch):
    model = tiny_clip.model
    p = model.text_projection
    start = p.detach().clone()
    for kind in ("adam", "adamw"):
        p.data.copy_(start)
        opt = lipschitz._make_optimizer(kind, [p], lr=0.01, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
        p.grad = torch.zeros_like(p)  # no loss gradient: only the weight decay acts
        opt.step()
        moved = (p.detach() - start).abs()
        if kind == "adam":  # L2 enters the gradient g' = wd * p: Adam's first step is lr * g' / (|g'| + eps)
            g = 0.2 * start.abs()
            assert isinstance(opt, torch.optim.Adam) and torch.allclose(moved, 0.01 * g / (g + 1e-6), atol=1e-7)
            assert moved.median() > 0.009
        else:  # decoupled: the weights shrink by lr * wd * |p| only
            assert torch.allclose(moved, 0.01 * 0.2 * start.abs(), atol=1e-7)
    syn, loader = make_forget_data(*tiny_clip)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    accuracies = iter([0.9, 0.5, 0.9, 0.5])  # every epoch is kept
    monkeypatch.setattr(lipschitz, "stop_accuracy", lambda m, **kwargs: next(accuracies))
    forget(a, tiny_clip.tokenizer, syn, loader, optimizer="adam", rescore="batch")
    forget(b, tiny_clip.tokenizer, syn, loader, optimizer="adamw", rescore="batch")
    assert any(not torch.allclose(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_rollback_restores_the_optimiser_state_and_baseline_one(tiny_clip, monkeypatch):
    model, tokenizer = tiny_clip
    syn, loader = make_forget_data(model, tokenizer)
    made, steps_seen = [], []
    make = lipschitz._make_optimizer
    monkeypatch.setattr(lipschitz, "_make_optimizer", lambda *a, **k: made.append(make(*a, **k)) or made[-1])
    # scripted stop accuracies: before, after epoch 1 (better), epoch 2 (worse: rolled back), epoch 3 (better)
    script = iter([0.8, 0.5, 0.6, 0.4])

    def fake_accuracy(m, **kwargs):
        if made:
            steps_seen.append(max(float(s["step"]) for s in made[0].state.values()) if made[0].state else 0.0)
        return next(script)

    monkeypatch.setattr(lipschitz, "stop_accuracy", fake_accuracy)
    result = forget(model, tokenizer, syn, loader, optimizer="adam", rescore="batch", selective=False,
                    max_epochs=3)
    assert len(made) == 1  # one optimiser for the whole run
    assert [e["accepted"] for e in result.epochs] == [True, False, True]
    # Adam's step count: 1 after epoch 1, 2 after epoch 2, back to 1 by the rollback, so 2 after epoch 3
    assert steps_seen == [0.0, 1.0, 2.0, 2.0]
    # the rollback baseline starts at 1.0: an epoch that raises the accuracy above the measured one is kept
    model2 = copy.deepcopy(tiny_clip.model)
    for baseline, accepted in (("one", True), ("measured", False)):
        script = iter([0.3, 0.6])
        monkeypatch.setattr(lipschitz, "stop_accuracy", lambda m, **kwargs: next(script))
        result = forget(copy.deepcopy(model2), tokenizer, syn, loader, optimizer="adam", baseline=baseline)
        assert result.epochs[0]["accepted"] is accepted


def test_layer_scores_recomputed_every_batch_on_the_stepped_gradient(tiny_clip, monkeypatch):
    model, tokenizer = tiny_clip
    syn, loader = make_forget_data(model, tokenizer, n=8, batch_size=4)  # two batches per epoch
    calls = []
    mask = layers.mask_gradients

    def spy(m, keep):
        grads = {n: float(p.grad.abs().mean()) for n, p in m.named_parameters() if p.grad is not None}
        calls.append((set(keep), grads))
        return mask(m, keep)

    monkeypatch.setattr(layers, "mask_gradients", spy)
    forget(model, tokenizer, syn, loader, optimizer="adam", rescore="batch", k_schedule=[(1, 1)], accumulate=1)
    assert len(calls) == 2
    exclude = layers.paper_b_frozen(model)
    for keep, grads in calls:  # the stepped tensors are the top-1 per encoder of that very gradient
        candidates = {n: v for n, v in grads.items() if layers.encoder_of(n) != "other"}
        assert keep == set(layers.select_top_k(candidates, k_image=1, k_text=1, exclude=exclude))
    # accumulation: two batches, one optimiser step (accumulate=1: one per batch)
    make = lipschitz._make_optimizer
    for accumulate, expected in ((5, 1), (1, 2)):
        stepped = []

        def counting(*args, **kwargs):
            opt = make(*args, **kwargs)
            step = opt.step
            opt.step = lambda *a, **k: stepped.append(1) or step(*a, **k)
            return opt

        monkeypatch.setattr(lipschitz, "_make_optimizer", counting)
        forget(copy.deepcopy(model), tokenizer, syn, loader, optimizer="adam", rescore="batch", accumulate=accumulate)
        assert len(stepped) == expected


def test_authors_options_run_end_to_end(tiny_resnet_clip):
    model, tokenizer = tiny_resnet_clip
    syn, loader = make_forget_data(model, tokenizer)
    before = copy.deepcopy(model.state_dict())
    result = forget(model, tokenizer, syn, loader, threshold=0.1, max_epochs=3, **lipschitz.AUTHORS_OPTIONS)
    assert 0.0 <= result.final_acc <= 1.0 and len(result.epochs) >= 1 and not result.failed
    changed = {n for n, v in model.state_dict().items() if not torch.equal(before[n], v)}
    stepped = set().union(*[e["trainable"] for e in result.epochs if e["accepted"]])
    assert changed <= stepped
    assert not any(n.startswith(("token_embedding", "ln_final")) or ".bn" in n for n in changed)
    with pytest.raises(ValueError, match="valid: adamw, adam"):
        forget(model, tokenizer, syn, loader, optimizer="sgd")


def test_compute_avg_gain_matches_the_authors_formula():
    reference = {"forget_acc": 0.8, "retain_acc": 0.9, "other_acc/a": 0.5, "other_acc/b": 0.4, "other_acc/c": 0.6}
    result = {"forget_acc": 0.2, "retain_acc": 0.81, "other_acc/a": 0.55, "other_acc/b": 0.3, "other_acc/c": 0.6}
    # forget kept 0.25, retain drop 0.1, others: rise clipped to 0, drop 0.25, 0; divided by 5
    assert lipschitz.compute_avg_gain(result, reference) == pytest.approx((0.25 + 0.1 + 0 + 0.25 + 0) / 5)
    perfect = dict(reference, forget_acc=0.0)
    assert lipschitz.compute_avg_gain(perfect, reference) == 0.0
    assert lipschitz.compute_avg_gain(result, dict(reference, **{"other_acc/b": 0.0})) == pytest.approx(
        (0.25 + 0.1) / 5)


def test_authors_classnames():
    assert paper_b.authors_classnames("stanford-cars", ["Spyker C8 Coupe 2009", "smart fortwo"]) == [
        "2009 Spyker C8 Coupe", "smart fortwo"]
    assert paper_b.authors_classnames("caltech101", ["airplanes", "faces", "euphonium"]) == [
        "airplane", "face", "euphonium"]
    assert paper_b.authors_classnames("flowers102", ["tree mallow"]) == ["tree mallow"]


def test_cached_classifier_follows_the_text_tower(tiny_clip):
    model, tokenizer = tiny_clip
    a = metrics.build_classifier(model, tokenizer, CLASSNAMES, ["a photo of a {}."], cache=True)
    assert metrics.build_classifier(model, tokenizer, CLASSNAMES, ["a photo of a {}."], cache=True) is a
    saved = copy.deepcopy(model.state_dict())
    opt = torch.optim.Adam([model.text_projection], lr=0.1, fused=True)
    model.text_projection.grad = torch.randn_like(model.text_projection)
    opt.step()
    b = metrics.build_classifier(model, tokenizer, CLASSNAMES, ["a photo of a {}."], cache=True)
    assert b is not a and not torch.allclose(a, b)
    assert torch.allclose(b, metrics.build_classifier(model, tokenizer, CLASSNAMES, ["a photo of a {}."]))
    model.load_state_dict(saved)
    c = metrics.build_classifier(model, tokenizer, CLASSNAMES, ["a photo of a {}."], cache=True)
    assert c is not b and torch.allclose(c, a)


# --------------------------------------------------------------------------- #
# Loading, devices and evaluation paths
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", models.TINY_MODELS)
def test_tiny_models_load_with_seeded_random_weights(name):
    a, preprocess, tokenizer = models.load_clip(name, models.RANDOM_WEIGHTS)
    b, _, _ = models.load_clip(name, "random")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert models.is_resnet(a) == (name == "tiny-rn") and not a.training
    with torch.no_grad():
        feats = a.encode_image(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 32) and tokenizer(["a photo of a cat."]).shape == (1, 32)
    with pytest.raises(ValueError, match="tiny test models: tiny-rn, tiny-vit"):
        models.load_clip("tiny-cnn", "random")


def test_paper_profile_on_the_cpu_warns_with_the_reason(monkeypatch):
    from clipunlearn import environment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="paper profile runs on the CPU"):
        assert environment.resolve_device("auto", profile="paper") == "cpu"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert environment.resolve_device("auto", profile="mini") == "cpu"
    with pytest.raises(ValueError, match="no CUDA GPU is usable"):
        environment.resolve_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in environment.cuda_problem()
    monkeypatch.setenv("CLIPUNLEARN_PROGRESS", "0")
    assert environment.default_progress() is False
    monkeypatch.setenv("CLIPUNLEARN_PROGRESS", "1")
    assert environment.default_progress() is True


def test_cached_images_decode_once_and_match(tmp_path):
    from PIL import Image

    from clipunlearn import data

    for c, name in enumerate(("cat", "dog")):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(((torch.rand(8, 8, 3) * 255).byte()).numpy()).save(tmp_path / name / f"{i}.png")
    import torchvision.transforms as T

    base = data.load_image_folder(tmp_path, transform=T.ToTensor())
    first = base[0][0]
    calls = []
    getitem = type(base.base).__getitem__
    base.base.__class__ = type("Counting", (type(base.base),), {
        "__getitem__": lambda self, i: calls.append(i) or getitem(self, i)})
    cached = image_cache.CachedImages(base, dtype=torch.float16)
    x, y = cached.get_batch([4, 0, 4])
    assert x.dtype == torch.float32 and y.tolist() == [1, 0, 1] and len(calls) == 2
    assert torch.allclose(x[1], first, atol=1e-3) and torch.equal(x[0], x[2])
    x2, _ = cached.get_batch([0, 4])
    assert len(calls) == 2 and torch.equal(x2, x[:2].flip(0)) and cached.cached == 2
    # evaluation through it decodes only what is new
    feats, labels = metrics.encode_images(torch.nn.Module.__new__(_Flat), cached, indices=[0, 1, 4])
    assert labels.tolist() == [0, 0, 1] and len(calls) == 3 and feats.shape == (3, 3 * 8 * 8)
    assert cached.classnames == ["cat", "dog"] and len(cached) == 6


class _Flat(torch.nn.Module):
    def encode_image(self, images, normalize=True):
        return images.flatten(1)
