"""Synthetic forget samples (paper B): batched gradient ascent from noise."""

import pytest
import torch

from clipunlearn import metrics, synthetic

CLASSNAMES = ["cat", "dog", "car", "ship"]
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def make_weights(model, tokenizer):
    return metrics.build_classifier(model, tokenizer, CLASSNAMES, ["a photo of a {}."])


#: small settings: 3 images of 2 classes, 12 steps, threshold lowered every 4 steps
SETTINGS = dict(classes=["cat", "ship"], classnames=CLASSNAMES, n_per_class=3, image_size=32, steps=12,
                step_size=3.0, jitter=2, thresholds=0.35, patience=4, threshold_decay=0.02, min_threshold=0.2,
                mean=MEAN, std=STD, seed=0, progress=False)


def generate(model, weights, **overrides):
    return synthetic.generate_synthetic(model, weights, **{**SETTINGS, **overrides})


@pytest.fixture(params=["vit", "resnet"])
def clip_and_weights(request, tiny_clip, tiny_resnet_clip):
    model, tokenizer = tiny_clip if request.param == "vit" else tiny_resnet_clip
    return model, make_weights(model, tokenizer)


# --------------------------------------------------------------------------- #
# Image operations
# --------------------------------------------------------------------------- #
def test_roll_images_matches_torch_roll():
    x = torch.randn(3, 3, 7, 9)
    shifts = torch.tensor([[0, 0], [2, -3], [-5, 11]])
    out = synthetic.roll_images(x, shifts)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        assert torch.equal(out[i], torch.roll(x[i], (dy, dx), dims=(1, 2)))
    assert torch.equal(synthetic.roll_images(out, -shifts), x)  # the jitter is undone exactly


def test_gaussian_blur_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.randn(2, 3, 10, 12, dtype=torch.float64)
    expected = ndimage.gaussian_filter1d(ndimage.gaussian_filter1d(x.numpy(), 0.5, axis=2), 0.5, axis=3)
    assert torch.allclose(synthetic.gaussian_blur(x, sigma=0.5), torch.from_numpy(expected), atol=1e-12)
    wide = ndimage.gaussian_filter1d(ndimage.gaussian_filter1d(x.numpy(), 1.2, axis=2), 1.2, axis=3)
    assert torch.allclose(synthetic.gaussian_blur(x, sigma=1.2), torch.from_numpy(wide), atol=1e-12)


def test_clamp_to_range_uses_model_space_bounds():
    x = torch.full((1, 3, 2, 2), 10.0)
    mean, std = (0.48, 0.45, 0.40), (0.27, 0.26, 0.28)
    out = synthetic.clamp_to_range(torch.cat([x, -x]), mean=mean, std=std)
    for c in range(3):
        assert torch.allclose(out[0, c], torch.tensor((1 - mean[c]) / std[c]))
        assert torch.allclose(out[1, c], torch.tensor((0 - mean[c]) / std[c]))


def test_lipschitz_bounds_are_the_pixel_bounds_of_the_model(tiny_clip):
    from clipunlearn import losses, models

    lo, hi = losses.lipschitz_bounds(tiny_clip.model)
    ref_lo, ref_hi = synthetic.pixel_bounds(*models.get_normalization(tiny_clip.model))
    assert torch.equal(lo, ref_lo) and torch.equal(hi, ref_hi) and lo.shape == (1, 3, 1, 1)
    mean, std = models.get_normalization(tiny_clip.model)
    assert torch.allclose(hi.flatten(), (1 - torch.tensor(mean)) / torch.tensor(std))


# --------------------------------------------------------------------------- #
# Generation
# --------------------------------------------------------------------------- #
def test_generation_is_deterministic(tiny_clip):
    model, tokenizer = tiny_clip
    weights = make_weights(model, tokenizer)
    a, b = generate(model, weights), generate(model, weights)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.steps_taken, b.steps_taken) and torch.equal(a.probs, b.probs)
    other = generate(model, weights, seed=1)
    assert not torch.allclose(a.images, other.images)


def test_batched_equals_sequential(clip_and_weights):
    model, weights = clip_and_weights
    batched = generate(model, weights)
    sequential = synthetic.generate_synthetic_sequential(model, weights, **SETTINGS)
    assert torch.equal(batched.steps_taken, sequential.steps_taken)
    assert torch.equal(batched.reached, sequential.reached)
    assert torch.allclose(batched.images, sequential.images, atol=1e-4)
    assert torch.allclose(batched.probs, sequential.probs, atol=1e-4)


def test_result_does_not_depend_on_batch_size(tiny_clip):
    model, tokenizer = tiny_clip
    weights = make_weights(model, tokenizer)
    full, chunked = generate(model, weights), generate(model, weights, batch_size=4)
    assert torch.equal(full.steps_taken, chunked.steps_taken)
    assert torch.allclose(full.images, chunked.images, atol=1e-4)


def test_set_contents_and_valid_range(clip_and_weights):
    model, weights = clip_and_weights
    out = generate(model, weights, grayscale=True)
    assert out.images.shape == (6, 3, 32, 32) and len(out) == 6
    assert out.targets.tolist() == [0, 0, 0, 3, 3, 3] and out.classnames == CLASSNAMES
    lo, hi = synthetic.pixel_bounds(MEAN, STD)
    assert (out.images >= lo - 1e-6).all() and (out.images <= hi + 1e-6).all()
    assert torch.equal(out.images[:, 0], out.images[:, 1]) and torch.equal(out.images[:, 0], out.images[:, 2])
    x, y = out.get_batch([1, 4])
    assert torch.equal(x, out.images[[1, 4]]) and y.tolist() == [0, 3]
    # the reported probability is the model's softmax(100 cos) for the target, on the final image
    with torch.no_grad():
        feats = torch.nn.functional.normalize(model.encode_image(out.images), dim=-1)
        probs = (100 * feats @ weights).softmax(-1)[torch.arange(6), out.targets]
    assert torch.allclose(probs, out.probs, atol=1e-5)
    assert ((out.probs > out.thresholds) | ~out.reached).all()


def test_center_sets_start_and_norm_penalty(tiny_clip):
    model, tokenizer = tiny_clip
    weights = make_weights(model, tokenizer)
    start = generate(model, weights, steps=0, center=-0.5, init_std=0.1, grayscale=True)
    assert abs(float(start.images.mean()) + 0.5) < 0.01 and abs(float(start.images.std()) - 0.1) < 0.01
    # with no class signal (logit_scale 0) the norm penalty alone pulls images to the centre
    pulled = generate(model, weights, steps=10, center=-0.5, init_std=0.5, logit_scale=0.0, norm_weight=1.0,
                      step_size=1.0, blur_every=0)
    start = generate(model, weights, steps=0, center=-0.5, init_std=0.5)
    assert (pulled.images + 0.5).flatten(1).norm(dim=1).mean() < (start.images + 0.5).flatten(1).norm(dim=1).mean()


def test_reached_image_stops_changing(tiny_clip):
    model, tokenizer = tiny_clip
    weights = make_weights(model, tokenizer)
    short, long = generate(model, weights, steps=12), generate(model, weights, steps=30)
    assert short.reached.any() and not long.reached.all(), "test needs some images that stop and some that do not"
    stopped = short.reached
    assert (short.steps_taken[stopped] < 12).any()
    # an image that reached its threshold is frozen: more steps for the others leave it untouched
    assert torch.equal(long.images[stopped], short.images[stopped])
    assert torch.equal(long.steps_taken[stopped], short.steps_taken[stopped])
    moving = ~long.reached
    assert not torch.allclose(long.images[moving], short.images[moving])


def test_threshold_is_lowered_until_the_floor(tiny_clip):
    model, tokenizer = tiny_clip
    weights = make_weights(model, tokenizer)
    # unreachable threshold: lowered by 0.1 after every 5 steps (3 times in 15 steps), never below the floor
    out = generate(model, weights, thresholds=0.999, steps=15, patience=5, threshold_decay=0.1, min_threshold=0.75)
    assert not out.reached.any()
    assert torch.allclose(out.thresholds, torch.full((6,), 0.75))
    out = generate(model, weights, thresholds=0.999, steps=10, patience=5, threshold_decay=0.1, min_threshold=0.5)
    assert torch.allclose(out.thresholds, torch.full((6,), 0.799), atol=1e-6)
    # a floor above the start never raises a threshold
    out = generate(model, weights, thresholds=0.3, steps=10, patience=5, threshold_decay=0.1, min_threshold=0.45)
    assert (out.thresholds <= 0.3 + 1e-6).all()


def test_lowering_lets_stuck_images_stop(tiny_clip):
    model, tokenizer = tiny_clip
    weights = make_weights(model, tokenizer)
    strict = generate(model, weights, thresholds=0.9, steps=20, patience=20, min_threshold=0.2)
    lowered = generate(model, weights, thresholds=0.9, steps=20, patience=2, threshold_decay=0.1, min_threshold=0.2)
    assert lowered.reached.sum() > strict.reached.sum()
    assert (lowered.steps_taken[lowered.reached] > 2).all()


def test_per_class_thresholds_and_errors(tiny_clip):
    model, tokenizer = tiny_clip
    weights = make_weights(model, tokenizer)
    out = generate(model, weights, thresholds={"cat": 0.999, "ship": 0.998}, steps=2, patience=100)
    assert torch.allclose(out.thresholds, torch.tensor([0.999] * 3 + [0.998] * 3))
    with pytest.raises(ValueError, match="valid: cat, dog, car, ship"):
        generate(model, weights, classes=["cow"])
    with pytest.raises(ValueError, match="one per class"):
        generate(model, weights, thresholds=[0.5])
    with pytest.raises(ValueError, match="out of range"):
        generate(model, weights, classes=[7])


def test_summary_subset_and_save_load(tiny_clip, tmp_path):
    model, tokenizer = tiny_clip
    weights = make_weights(model, tokenizer)
    out = generate(model, weights)
    summary = out.summary()
    assert set(summary) == {"cat", "ship"} and summary["cat"]["n"] == 3
    assert sum(s["reached"] for s in summary.values()) == int(out.reached.sum())
    kept = out.select_reached()
    assert len(kept) == int(out.reached.sum()) and kept.reached.all()
    path = synthetic.save_synthetic(tmp_path / "syn.pt", out)
    back = synthetic.load_synthetic(path)
    assert torch.equal(back.images, out.images) and back.classnames == out.classnames
    assert not list(tmp_path.glob(".*.tmp"))
