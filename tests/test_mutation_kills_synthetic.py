"""Synthetic forget images (paper B): checks written for the mutants of ``synthetic`` that survived the other
tests (the survivors listed in benchmarks/mutation.md).

They pin the image step of ``_optimise_chunk`` against a naive loop (jitter applied and undone, the unit step
also for tiny gradients, the norm penalty's centre, channel-averaged gradients when grayscale, clamping, the
blur cadence and sigma), the stop rule (strictly above the threshold), ``steps_taken``, the threshold lowering
every ``patience`` steps of the images still searching, bf16 encodings; the settings ``generate_synthetic``
hands to each ascent and its documented defaults (a fake ``_optimise_chunk`` records them), the per-image
random streams of ``image_generator`` (noise, jitter, the draws of restarts), the restart schedule (one
lowering per class and round when batched, one per failed image in the one-image loop, the floor,
``max_attempts``, steps summed over attempts, the attempt kept), the patience default, the frozen model, the
authors' parametrisation (``_Space``), the result set (targets, ``get_batch``, ``subset``, ``summary``), the
image helpers, quiet and shown progress bars and the error messages. Expected values come from hand-worked
examples, naive loops or an independent draw of the documented random streams.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from clipunlearn import synthetic


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
class RecordingModel(nn.Module):
    """``encode_image(x) = flatten(x) @ W``; records the mode and the parameters' ``requires_grad`` at each call."""

    def __init__(self, d_in, d=3, seed=7):
        super().__init__()
        self.W = nn.Parameter(torch.randn(d_in, d, generator=torch.Generator().manual_seed(seed)))
        self.b = nn.Parameter(torch.zeros(d), requires_grad=False)
        self.calls = []

    def encode_image(self, x):
        self.calls.append((self.training, self.W.requires_grad, self.b.requires_grad))
        return x.flatten(1) @ self.W + self.b


class FakeChunk:
    """Stands in for ``synthetic._optimise_chunk``: records every call and answers ``reached`` from a script.

    ``script``: one list of booleans per call (default: nothing reached). Call ``k`` (1-based) returns
    ``final = x``, ``probs = k / 10 + position / 100``, ``steps_taken = k`` and the thresholds it was given.
    """

    def __init__(self, script=None):
        self.script = script
        self.calls = []

    def __call__(self, model, weights, x, targets, thresholds, offsets, *, threshold_decay, bar, **kwargs):
        k = len(self.calls) + 1
        self.calls.append(dict(x=x.clone(), targets=targets.clone(), thresholds=thresholds.clone(),
                               offsets=offsets.clone(), threshold_decay=threshold_decay.clone(), **kwargs))
        n = len(x)
        reached = (torch.tensor(self.script[k - 1], dtype=torch.bool) if self.script is not None
                   else torch.zeros(n, dtype=torch.bool))
        assert len(reached) == n, f"call {k}: script has {len(reached)} entries for {n} images"
        probs = k / 10 + torch.arange(n, dtype=torch.float32) / 100
        return x, x.clone(), probs, torch.full((n,), k, dtype=torch.long), reached, thresholds.clone()


def fake_chunk(monkeypatch, script=None) -> FakeChunk:
    fake = FakeChunk(script)
    monkeypatch.setattr(synthetic, "_optimise_chunk", fake)
    return fake


def stream_draws(seed, index, count, *, image_size, steps, jitter, init_std=1.0, center=0.0, grayscale=False):
    """The first ``count`` (noise, offsets) draws of image ``index``: the documented order of its stream."""
    g = synthetic.image_generator(seed, index)
    out = []
    for _ in range(count):
        noise = torch.randn(1 if grayscale else 3, image_size, image_size, generator=g) * init_std + center
        offsets = torch.randint(0, jitter + 1, (steps, 2), generator=g)
        out.append((noise.expand(3, -1, -1) if grayscale else noise, offsets))
    return out


def text_weights(num_classes=3, d=4, seed=5):
    return torch.randn(d, num_classes, generator=torch.Generator().manual_seed(seed))


def small_set():
    images = torch.arange(5 * 3 * 1 * 1, dtype=torch.float32).view(5, 3, 1, 1)
    return synthetic.SyntheticSet(
        images, torch.tensor([2, 0, 2, 2, 0], dtype=torch.int32), classnames=["a", "b", "c"],
        probs=torch.tensor([0.5, 0.9, 0.7, 0.3, 0.6]), steps_taken=torch.tensor([4, 1, 2, 9, 3]),
        reached=torch.tensor([True, True, False, True, False]), thresholds=torch.tensor([0.4, 0.8, 0.6, 0.2, 0.5]))


# --------------------------------------------------------------------------- #
# The result set
# --------------------------------------------------------------------------- #
def test_synthetic_set_targets_are_long_and_get_batch_takes_empty_or_numpy_indices():
    s = small_set()
    assert s.targets.dtype == torch.long and s.targets.tolist() == [2, 0, 2, 2, 0]
    x, y = s.get_batch([])
    assert x.shape == (0, 3, 1, 1) and y.shape == (0,)
    x, y = s.get_batch(np.array([3, 1], dtype=np.int32))
    assert torch.equal(x, s.images[[3, 1]]) and y.tolist() == [2, 0]
    pairs = s.__getitems__([3, 1])  # what a DataLoader fetches: one (image, target) pair per index
    assert len(pairs) == 2 and all(torch.equal(p[0], s.images[i]) and int(p[1]) == t
                                   for p, i, t in zip(pairs, [3, 1], [2, 0]))


def test_subset_by_indices_and_by_mask_keeps_every_field():
    s = small_set()
    for sel in (torch.tensor([3, 0]), [3, 0], torch.tensor([True, False, False, True, False])):
        sub = s.subset(sel)
        order = [3, 0] if not (isinstance(sel, torch.Tensor) and sel.dtype == torch.bool) else [0, 3]
        assert torch.equal(sub.images, s.images[order])
        assert sub.targets.tolist() == [s.targets.tolist()[i] for i in order]
        assert sub.probs.tolist() == pytest.approx([s.probs.tolist()[i] for i in order])
        assert sub.steps_taken.tolist() == [s.steps_taken.tolist()[i] for i in order]
        assert sub.reached.tolist() == [s.reached.tolist()[i] for i in order]
        assert sub.thresholds.tolist() == pytest.approx([s.thresholds.tolist()[i] for i in order])
        assert sub.classnames == ["a", "b", "c"]


def test_summary_per_class_hand_values():
    got = small_set().summary()
    # class 2 ("c"): images 0, 2, 3; class 0 ("a"): images 1, 4
    assert got == {
        "c": {"n": 3, "reached": 2, "mean_prob": pytest.approx(0.5), "mean_steps": pytest.approx(5.0),
              "max_steps": 9, "min_threshold": pytest.approx(0.2)},
        "a": {"n": 2, "reached": 1, "mean_prob": pytest.approx(0.75), "mean_steps": pytest.approx(2.0),
              "max_steps": 3, "min_threshold": pytest.approx(0.5)},
    }


# --------------------------------------------------------------------------- #
# Image helpers
# --------------------------------------------------------------------------- #
def test_minmax_rescale_each_image_by_its_own_range_even_below_one():
    x = torch.tensor([[0.0, 0.25, 0.5], [2.0, 10.0, 4.0]]).view(2, 3, 1, 1)  # ranges 0.5 and 8 (2 images, 3 channels)
    got = synthetic.minmax_rescale(x)
    assert got.flatten().tolist() == pytest.approx([0.0, 0.5, 1.0, 0.0, 1.0, 0.25])
    flat = synthetic.minmax_rescale(torch.full((1, 3, 2, 2), 0.3))  # no range: (x - min) / 1e-12 = 0
    assert flat.abs().max().item() == 0.0


def test_gaussian_blur_radius_one_blurs_and_default_sigma_is_half_a_pixel():
    x = torch.tensor([0.0, 0.0, 6.0, 0.0]).view(1, 1, 1, 4).expand(1, 1, 4, 4).contiguous()
    sigma = 0.3  # radius int(4 * 0.3 + 0.5) = 1: weights exp(-0.5 (d / 0.3)^2), d = -1, 0, 1
    e = np.exp(-0.5 / 0.09)
    k = [e / (1 + 2 * e), 1 / (1 + 2 * e), e / (1 + 2 * e)]
    got = synthetic.gaussian_blur(x, sigma=sigma)
    # columns are constant along H (so the H pass leaves them), the W pass blurs the spike with reflection
    want = [0.0, 6 * k[0], 6 * k[1], 6 * k[2]]
    for y in range(4):
        assert got[0, 0, y].tolist() == pytest.approx(want, abs=1e-6)
    assert torch.equal(synthetic.gaussian_blur(x), synthetic.gaussian_blur(x, sigma=0.5))


def test_clamp_to_range_keeps_the_images_dtype():
    x = torch.tensor([-3.0, 0.0, 3.0]).view(1, 3, 1, 1)
    for dtype in (torch.bfloat16, torch.float64):
        got = synthetic.clamp_to_range(x.to(dtype), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        assert got.dtype == dtype and got.flatten().tolist() == [-1.0, 0.0, 1.0]


def test_image_generator_seeds_with_the_seedsequence_word_masked_to_63_bits():
    # pairs whose 64-bit word has the top bit set and / or is odd (see the hex values)
    for seed, index, word in ((0, 0, 0xDB2CD7E7B0F478BE), (1, 0, 0x672D8EE56D6791FF), (0, 2, 0xEEA20BBDBB39A27F),
                              (3, 5, 0x87E33A9EDF477EE5)):
        assert int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]) == word
        assert synthetic.image_generator(seed, index).initial_seed() == word & (2 ** 63 - 1)


# --------------------------------------------------------------------------- #
# Arguments and errors
# --------------------------------------------------------------------------- #
def test_class_resolution_by_index_and_by_name_and_its_errors(monkeypatch):
    fake = fake_chunk(monkeypatch)
    w = text_weights(3)
    out = synthetic.generate_synthetic(nn.Linear(1, 1), w, classes=[0, 2], n_per_class=1, image_size=2, steps=1,
                                       progress=False)
    assert out.targets.tolist() == [0, 2] and out.classnames == ["0", "1", "2"]
    assert fake.calls[0]["targets"].tolist() == [0, 2]
    kw = dict(n_per_class=1, image_size=2, steps=1, progress=False)
    with pytest.raises(ValueError, match=r"class index 3 out of range: the classifier has 3 classes"):
        synthetic.generate_synthetic(nn.Linear(1, 1), w, classes=[3], **kw)
    with pytest.raises(ValueError, match=r"class 'cat' given by name: pass classnames="):
        synthetic.generate_synthetic(nn.Linear(1, 1), w, classes=["cat"], **kw)
    with pytest.raises(ValueError, match=r"^classes is empty: name at least one class to generate$"):
        synthetic.generate_synthetic(nn.Linear(1, 1), w, classes=[], **kw)
    with pytest.raises(ValueError, match=r"^unknown precision 'fp16'; valid: fp32, bf16$"):
        synthetic.generate_synthetic(nn.Linear(1, 1), w, classes=[0], precision="fp16", **kw)


def test_per_class_values_by_name_by_index_and_their_errors(monkeypatch):
    fake = fake_chunk(monkeypatch)
    w = text_weights(3)
    kw = dict(n_per_class=1, image_size=2, steps=1, progress=False)
    names = ["cat", "dog", "car"]
    synthetic.generate_synthetic(nn.Linear(1, 1), w, classes=["car", "cat"], classnames=names,
                                 thresholds={"cat": 0.7, "car": 0.6}, threshold_decay={"cat": 0.01, "car": 0.02}, **kw)
    assert fake.calls[-1]["thresholds"].tolist() == pytest.approx([0.6, 0.7])
    assert fake.calls[-1]["threshold_decay"].tolist() == pytest.approx([0.02, 0.01])
    # without class names a dict is keyed by class index
    synthetic.generate_synthetic(nn.Linear(1, 1), w, classes=[2, 0], thresholds={0: 0.3, 2: 0.4},
                                 threshold_decay={0: 0.05, 2: 0.06}, **kw)
    assert fake.calls[-1]["thresholds"].tolist() == pytest.approx([0.4, 0.3])
    assert fake.calls[-1]["threshold_decay"].tolist() == pytest.approx([0.06, 0.05])
    with pytest.raises(ValueError, match=r"^thresholds has no entry for \['car'\]; keys: \['cat'\]$"):
        synthetic.generate_synthetic(nn.Linear(1, 1), w, classes=["car", "cat"], classnames=names,
                                     thresholds={"cat": 0.7}, **kw)
    with pytest.raises(ValueError, match=r"^threshold_decay has no entry for \['cat'\]; keys: \['car'\]$"):
        synthetic.generate_synthetic(nn.Linear(1, 1), w, classes=["car", "cat"], classnames=names,
                                     threshold_decay={"car": 0.1}, **kw)
    with pytest.raises(ValueError, match=r"^1 thresholds for 2 classes: give one per class, a single float or a "
                                         r"dict \{classname: value\}$"):
        synthetic.generate_synthetic(nn.Linear(1, 1), w, classes=[0, 1], thresholds=[0.5], **kw)
    with pytest.raises(ValueError, match=r"^3 threshold_decay for 2 classes"):
        synthetic.generate_synthetic(nn.Linear(1, 1), w, classes=[0, 1], threshold_decay=[0.1, 0.2, 0.3], **kw)


# --------------------------------------------------------------------------- #
# What each ascent is given
# --------------------------------------------------------------------------- #
def test_omitted_arguments_are_the_documented_defaults(monkeypatch):
    fake = fake_chunk(monkeypatch, script=[[True]])
    synthetic.generate_synthetic(nn.Linear(1, 1), text_weights(3), classes=[2], n_per_class=1, progress=False)
    (first,) = fake.calls
    assert first["x"].shape == (1, 3, 224, 224) and first["offsets"].shape == (1, 3000, 2)
    assert {k: first[k] for k in ("steps", "step_size", "blur_every", "blur_sigma", "norm_weight", "center",
                                  "min_threshold", "patience", "logit_scale", "stop_logit_scale", "grayscale",
                                  "precision")} == dict(
        steps=3000, step_size=25.0, blur_every=10, blur_sigma=0.5, norm_weight=1e-3, center=0.0, min_threshold=0.45,
        patience=300, logit_scale=100.0, stop_logit_scale=100.0, grayscale=False, precision="fp32")
    assert first["thresholds"].tolist() == pytest.approx([0.8])
    assert first["threshold_decay"].tolist() == pytest.approx([0.025])
    space = first["space"]
    assert space.kind == "project"
    assert torch.allclose(space.bounds[1].flatten(), (1 - torch.tensor([0.48145466, 0.4578275, 0.40821073]))
                          / torch.tensor([0.26862954, 0.26130258, 0.27577711]))
    # noise N(0, 1) and jitter in [0, 16] from image 0's stream of seed 0
    noise, offsets = stream_draws(0, 0, 1, image_size=224, steps=3000, jitter=16)[0]
    assert torch.equal(first["x"][0], noise) and torch.equal(first["offsets"][0], offsets)
    assert int(offsets.max()) == 16 and int(offsets.min()) == 0


def test_omitted_count_and_batch_size_are_64_per_class_in_batched_chunks_of_64(monkeypatch):
    fake = fake_chunk(monkeypatch, script=[[True] * 64, [True] * 64])
    out = synthetic.generate_synthetic(nn.Linear(1, 1), text_weights(3), classes=[2, 0], image_size=2, steps=2,
                                       progress=False)
    assert [len(c["x"]) for c in fake.calls] == [64, 64]
    assert out.targets.tolist() == [2] * 64 + [0] * 64 and out.images.shape == (128, 3, 2, 2)
    last = stream_draws(0, 127, 1, image_size=2, steps=2, jitter=16)[0]
    assert torch.equal(out.images[127], last[0]) and torch.equal(fake.calls[1]["offsets"][63], last[1])


def test_settings_reach_the_ascent_and_streams_follow_seed_jitter_grayscale(monkeypatch):
    fake = fake_chunk(monkeypatch)
    synthetic.generate_synthetic(
        nn.Linear(1, 1), text_weights(3), classes=[1], n_per_class=3, image_size=5, steps=7, step_size=2.5, jitter=1,
        blur_every=3, blur_sigma=0.7, norm_weight=0.2, thresholds=0.66, threshold_decay=0.03, min_threshold=0.1,
        patience=4, logit_scale=9.0, stop_logit_scale=50.0, init_std=0.3, center=-0.2, grayscale=True, seed=11,
        batch_size=2, precision="bf16", progress=False)
    assert [len(c["x"]) for c in fake.calls] == [2, 1]
    call = fake.calls[0]
    assert {k: call[k] for k in ("steps", "step_size", "blur_every", "blur_sigma", "norm_weight", "center",
                                 "min_threshold", "patience", "logit_scale", "stop_logit_scale", "grayscale",
                                 "precision")} == dict(
        steps=7, step_size=2.5, blur_every=3, blur_sigma=0.7, norm_weight=0.2, center=-0.2, min_threshold=0.1,
        patience=4, logit_scale=9.0, stop_logit_scale=50.0, grayscale=True, precision="bf16")
    xs = torch.cat([c["x"] for c in fake.calls])
    offs = torch.cat([c["offsets"] for c in fake.calls])
    for i in range(3):
        noise, offsets = stream_draws(11, i, 1, image_size=5, steps=7, jitter=1, init_std=0.3, center=-0.2,
                                      grayscale=True)[0]
        assert torch.equal(xs[i], noise) and torch.equal(offs[i], offsets)
    assert torch.equal(xs[:, 0], xs[:, 2])


@pytest.mark.parametrize("steps, restart, want", [(10, False, 1), (15, False, 1), (20, False, 2), (35, False, 3),
                                                  (5, False, 1), (20, True, 0)])
def test_patience_defaults_to_a_tenth_of_the_steps_or_zero_with_restarts(monkeypatch, steps, restart, want):
    fake = fake_chunk(monkeypatch, script=[[True]])
    synthetic.generate_synthetic(nn.Linear(1, 1), text_weights(3), classes=[0], n_per_class=1, image_size=2,
                                 steps=steps, restart=restart, progress=False)
    got = fake.calls[0]["patience"]
    assert got == want and type(got) is int


# --------------------------------------------------------------------------- #
# Restarts (the authors' failure rule)
# --------------------------------------------------------------------------- #
def test_restart_schedule_lowers_each_class_once_per_round_and_keeps_the_last_attempt(monkeypatch):
    """Hand-worked: classes cat (0.9, decay 0.1) and dog (0.7, decay 0.05), floor 0.58, 3 images each,
    chunks of 4 ([cat, cat, cat, dog], [dog, dog]), at most 3 attempts; the fake reaches as scripted."""
    script = [[True, False, False, False],  # chunk 1, attempt 1: images 0..3
              [True, False, False],         # attempt 2: images 1, 2, 3 (cat 0.8, dog 0.65)
              [False, False],               # attempt 3: images 2, 3 (cat 0.7, dog 0.6); then cat 0.6, dog 0.58
              [True, False],                # chunk 2, attempt 1: images 4, 5 at dog 0.58
              [True]]                       # attempt 2: image 5 (floor 0.58)
    fake = fake_chunk(monkeypatch, script)
    names = ["cat", "dog", "car"]
    out = synthetic.generate_synthetic(
        nn.Linear(1, 1), text_weights(3), classes=["cat", "dog"], classnames=names, n_per_class=3, image_size=3,
        steps=4, jitter=2, thresholds={"cat": 0.9, "dog": 0.7}, threshold_decay={"cat": 0.1, "dog": 0.05},
        min_threshold=0.58, restart=True, max_attempts=3, batch_size=4, seed=3, progress=False)
    assert [c["thresholds"].tolist() for c in fake.calls] == [
        pytest.approx([0.9, 0.9, 0.9, 0.7]), pytest.approx([0.8, 0.8, 0.65]), pytest.approx([0.7, 0.6]),
        pytest.approx([0.58, 0.58]), pytest.approx([0.58])]
    assert [c["targets"].tolist() for c in fake.calls] == [[0, 0, 0, 1], [0, 0, 1], [0, 1], [1, 1], [1]]
    assert [c["threshold_decay"].tolist() for c in fake.calls][1] == pytest.approx([0.1, 0.1, 0.05])
    assert out.reached.tolist() == [True, True, False, False, True, True]
    assert out.thresholds.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.58, 0.58])
    assert out.steps_taken.tolist() == [1, 1 + 2, 1 + 2 + 3, 1 + 2 + 3, 4, 4 + 5]  # call k takes k steps
    # probs of the last attempt (call k, position p: k / 10 + p / 100)
    assert out.probs.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.31, 0.4, 0.5])
    # each restart draws fresh noise and jitter from the image's own stream, after its earlier draws
    draws = {i: stream_draws(3, i, 3, image_size=3, steps=4, jitter=2) for i in range(6)}
    sent = [(0, 3, 3, 0), (1, 0, 1, 1), (1, 1, 2, 1), (1, 2, 3, 1), (2, 0, 2, 2), (2, 1, 3, 2), (3, 1, 5, 0),
            (4, 0, 5, 1)]  # (call, position, image, draw)
    for call, pos, image, draw in sent:
        noise, offsets = draws[image][draw]
        assert torch.equal(fake.calls[call]["x"][pos], noise)
        assert torch.equal(fake.calls[call]["offsets"][pos], offsets)
    # the returned image is the final image of the attempt that ended (the fake returns x)
    for image, draw in {0: 0, 1: 1, 2: 2, 3: 2, 4: 0, 5: 1}.items():
        assert torch.equal(out.images[image], draws[image][draw][0])


def test_restart_batched_lowers_once_per_round_sequential_once_per_failed_image(monkeypatch):
    """One class, 3 images that never reach, 2 attempts, threshold 0.9 lowered by 0.1 (floor 0)."""
    kw = dict(classes=[0], n_per_class=3, image_size=2, steps=2, thresholds=0.9, threshold_decay=0.1,
              min_threshold=0.0, restart=True, max_attempts=2, progress=False)
    fake_chunk(monkeypatch)
    batched = synthetic.generate_synthetic(nn.Linear(1, 1), text_weights(3), **kw)
    assert batched.thresholds.tolist() == pytest.approx([0.8, 0.8, 0.8])
    assert batched.steps_taken.tolist() == [3, 3, 3] and not batched.reached.any()
    # one image at a time: 0.9 fail, 0.8 fail, lowered to 0.7; 0.7 fail, 0.6 fail -> 0.5; 0.5, 0.4
    fake = fake_chunk(monkeypatch)
    sequential = synthetic.generate_synthetic_sequential(nn.Linear(1, 1), text_weights(3), **kw)
    assert [len(c["x"]) for c in fake.calls] == [1] * 6
    assert sequential.thresholds.tolist() == pytest.approx([0.8, 0.6, 0.4])
    explicit = synthetic.generate_synthetic(nn.Linear(1, 1), text_weights(3), batched=False, **kw)
    assert explicit.thresholds.tolist() == pytest.approx([0.8, 0.6, 0.4])
    chunk_of_one = synthetic.generate_synthetic(nn.Linear(1, 1), text_weights(3), batch_size=1, **kw)
    assert chunk_of_one.thresholds.tolist() == pytest.approx([0.8, 0.6, 0.4])


def test_restart_max_attempts_defaults_to_twenty_and_thresholds_lower_within_attempts_only_with_patience(monkeypatch):
    fake = fake_chunk(monkeypatch)
    out = synthetic.generate_synthetic(nn.Linear(1, 1), text_weights(3), classes=[1], n_per_class=1, image_size=2,
                                       steps=2, thresholds=0.9, threshold_decay=0.01, restart=True, progress=False)
    assert len(fake.calls) == 20 and out.steps_taken.tolist() == [sum(range(1, 21))]
    assert [c["patience"] for c in fake.calls] == [0] * 20
    assert fake.calls[-1]["thresholds"].tolist() == pytest.approx([0.9 - 19 * 0.01])
    # the floor (default 0.45) stops the lowering
    fake = fake_chunk(monkeypatch)
    synthetic.generate_synthetic(nn.Linear(1, 1), text_weights(3), classes=[1], n_per_class=1, image_size=2,
                                 steps=2, thresholds=0.6, threshold_decay=0.1, restart=True, max_attempts=4,
                                 progress=False)
    assert [c["thresholds"].tolist() for c in fake.calls] == [pytest.approx([v]) for v in (0.6, 0.5, 0.45, 0.45)]


# --------------------------------------------------------------------------- #
# The model during generation
# --------------------------------------------------------------------------- #
def test_model_is_frozen_in_eval_mode_during_generation_and_restored_after():
    model = RecordingModel(3 * 4 * 4).train()
    synthetic.generate_synthetic(model, text_weights(3, d=3), classes=[0, 1], n_per_class=2, image_size=4, steps=3,
                                 jitter=1, blur_every=0, thresholds=2.0, mean=(0.5,) * 3, std=(0.5,) * 3,
                                 restart=True, max_attempts=2, progress=False)
    # one chunk, 2 attempts of 3 steps, each step one ascent and one stop-check encoding
    assert len(model.calls) == 2 * 3 * 2 and set(model.calls) == {(False, False, False)}
    assert model.training and model.W.requires_grad and not model.b.requires_grad


def test_encode_bf16_runs_the_encoder_under_autocast_and_returns_unit_float32_features():
    seen = []

    class Model(nn.Module):
        def encode_image(self, x):
            seen.append((torch.is_autocast_enabled("cpu"), x.device.type))
            return torch.tensor([[3.0, 4.0]], dtype=torch.bfloat16)

    got = synthetic._encode(Model(), torch.zeros(1, 3, 2, 2), "bf16")
    assert seen == [(True, "cpu")] and got.dtype == torch.float32 and got.tolist() == [pytest.approx([0.6, 0.8])]
    got = synthetic._encode(Model(), torch.zeros(1, 3, 2, 2), "fp32")
    assert seen[-1] == (False, "cpu") and got.tolist() == [pytest.approx([0.6, 0.8])]


def test_authors_space_normalises_twice_and_clamps_to_the_imagenet_range():
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 2.0)
    space = synthetic._Space("authors", mean=mean, std=std, device="cpu")
    lo, hi = space.bounds
    im_mean, im_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    assert lo.shape == (1, 3, 1, 1)
    assert lo.flatten().tolist() == pytest.approx([-m / s for m, s in zip(im_mean, im_std)])
    assert hi.flatten().tolist() == pytest.approx([(1 - m) / s for m, s in zip(im_mean, im_std)])
    x = torch.tensor([[1.0, -1.0], [0.5, 2.0], [0.0, -2.0]]).view(1, 3, 1, 2).expand(2, 3, 4, 2).contiguous()
    x[1] *= 0.5
    got_in = space.model_input(x)
    for c in range(3):  # the model sees the variable normalised once more: (x - mean) / std
        assert torch.allclose(got_in[:, c], (x[:, c] - mean[c]) / std[c])
    # final: minmax_rescale(x * imagenet_std + imagenet_mean) per image, then (v - mean) / std (by hand)
    got = space.final(x)
    for b in range(2):
        pix = [[float(x[b, c, 0, j]) * im_std[c] + im_mean[c] for j in range(2)] for c in range(3)]
        low, high = min(min(r) for r in pix), max(max(r) for r in pix)
        want = [[((v - low) / (high - low) - mean[c]) / std[c] for v in pix[c]] for c in range(3)]
        for c in range(3):
            assert got[b, c, 0].tolist() == pytest.approx(want[c], abs=1e-5)
            assert torch.equal(got[b, c], got[b, c, :1].expand(4, 2))
    project = synthetic._Space("project", mean=mean, std=std, device="cpu")
    assert project.model_input(x) is x and project.final(x) is x
    assert project.bounds[1].flatten().tolist() == pytest.approx([1.0, 3.0, 0.5])
    with pytest.raises(ValueError, match=r"^unknown parametrisation 'pixels'; valid: project, authors$"):
        synthetic._Space("pixels", mean=mean, std=std, device="cpu")


def test_progress_false_prints_nothing(capsys, monkeypatch):
    fake_chunk(monkeypatch)
    for batched in (True, False):
        synthetic.generate_synthetic(nn.Linear(1, 1), text_weights(3), classes=[0], n_per_class=2, image_size=2,
                                     steps=3, restart=True, max_attempts=2, batched=batched, progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def naive_ascent(model, weights, x, targets, offsets, *, steps, step_size, blur_every, blur_sigma, norm_weight,
                 center, logit_scale, lo, hi, grayscale):
    """Per image and step: roll by the jitter, ascend ``logit_scale cos - nw ||x' - center||`` along the unit
    gradient (channel-averaged when grayscale), roll back, clamp, blur when ``t % blur_every == 0``."""
    out = []
    for i in range(len(x)):
        xi = x[i].clone()
        for t in range(steps):
            dy, dx = int(offsets[i, t, 0]), int(offsets[i, t, 1])
            xs = torch.roll(xi, (dy, dx), dims=(1, 2)).requires_grad_(True)
            f = model.encode_image(xs[None])[0]
            w = weights[int(targets[i])]
            score = logit_scale * (f @ w) / (f.norm() * w.norm()) - norm_weight * (xs - center).norm()
            (g,) = torch.autograd.grad(score, xs)
            if grayscale:
                g = g.mean(0, keepdim=True).expand_as(g)
            xi = (xi + step_size * torch.roll(g / g.norm(), (-dy, -dx), dims=(1, 2))).detach()
            xi = torch.stack([xi[c].clamp(lo[c], hi[c]) for c in range(3)])
            if blur_every and t % blur_every == 0:
                xi = synthetic.gaussian_blur(xi[None], sigma=blur_sigma)[0]
        out.append(xi)
    return torch.stack(out)


@pytest.mark.parametrize("grayscale", [False, True])
def test_ascent_steps_blur_cadence_centre_and_tiny_gradients_match_a_naive_loop(grayscale):
    g = torch.Generator().manual_seed(21)
    x = torch.rand(2, 3, 4, 5, generator=g) * 2 - 1
    model = RecordingModel(60, d=3, seed=22)
    weights = nn.functional.normalize(torch.randn(2, 3, generator=g), dim=-1)
    targets = torch.tensor([1, 0])
    offsets = torch.randint(0, 3, (2, 4, 2), generator=g)
    lo, hi = [-1.0, -0.5, -2.0], [1.0, 0.5, 2.0]
    space = synthetic._Space("project", mean=[-l / (h - l) for l, h in zip(lo, hi)],
                             std=[1 / (h - l) for l, h in zip(lo, hi)], device="cpu")
    # logit scale and norm weight small: the raw gradient's norm is far below 1, the step is still step_size
    settings = dict(steps=4, step_size=0.3, blur_every=2, blur_sigma=0.7, norm_weight=0.002, center=0.3,
                    logit_scale=0.05)
    got = synthetic._optimise_chunk(model, weights, x.clone(), targets, torch.tensor([2.0, 2.0]), offsets,
                                    threshold_decay=torch.zeros(2), min_threshold=0.0, patience=0,
                                    stop_logit_scale=1.0, space=space, grayscale=grayscale, precision="fp32",
                                    bar=None, **settings)[0]
    want = naive_ascent(model, weights, x, targets, offsets, lo=lo, hi=hi, grayscale=grayscale, **settings)
    assert torch.allclose(got, want, atol=1e-5)


def test_stop_needs_a_probability_strictly_above_the_threshold_and_bf16_reaches_both_encodings():
    g = torch.Generator().manual_seed(31)
    x = torch.rand(1, 3, 2, 2, generator=g)
    model = RecordingModel(12, d=3, seed=32)
    weights = nn.functional.normalize(torch.randn(3, 3, generator=g), dim=-1)
    space = synthetic._Space("project", mean=(0.0,) * 3, std=(1.0,) * 3, device="cpu")
    kw = dict(steps=1, step_size=0.1, blur_every=0, blur_sigma=0.5, norm_weight=0.0, center=0.0,
              threshold_decay=torch.zeros(1), min_threshold=0.0, patience=0, logit_scale=1.0, stop_logit_scale=1.0,
              space=space, grayscale=False, bar=None)
    offsets = torch.zeros(1, 1, 2, dtype=torch.long)
    runs = [synthetic._optimise_chunk(model, weights, x.clone(), torch.tensor([c]), torch.tensor([0.0]), offsets,
                                      precision="fp32", **kw) for c in range(3)]
    (target,) = [c for c in range(3) if bool(runs[c][4][0])]  # threshold 0: only the arg-max class stops
    p = runs[target][2].clone()
    below = torch.nextafter(p, torch.zeros(1))
    _, _, _, _, reached, _ = synthetic._optimise_chunk(model, weights, x.clone(), torch.tensor([target]), below,
                                                       offsets, precision="fp32", **kw)
    assert bool(reached[0])
    _, _, _, _, reached, _ = synthetic._optimise_chunk(model, weights, x.clone(), torch.tensor([target]), p.clone(),
                                                       offsets, precision="fp32", **kw)
    assert not bool(reached[0])  # p_target == threshold: not above it
    seen = []

    class Autocast(RecordingModel):
        def encode_image(self, images):
            seen.append(torch.is_autocast_enabled("cpu"))
            return super().encode_image(images)

    synthetic._optimise_chunk(Autocast(12, d=3, seed=32), weights, x.clone(), torch.tensor([0]), torch.tensor([2.0]),
                              offsets, precision="bf16", **kw)
    assert seen == [True, True]  # the ascent's and the stop check's encodings


def test_steps_taken_counts_steps_and_only_searching_images_are_lowered_every_patience_steps():
    g = torch.Generator().manual_seed(41)
    x = torch.rand(2, 3, 2, 2, generator=g)
    model = RecordingModel(12, d=3, seed=42)
    weights = nn.functional.normalize(torch.randn(3, 3, generator=g), dim=-1)
    space = synthetic._Space("project", mean=(0.0,) * 3, std=(1.0,) * 3, device="cpu")
    kw = dict(step_size=0.1, blur_every=0, blur_sigma=0.5, norm_weight=0.0, center=0.0, logit_scale=1.0,
              stop_logit_scale=1.0, space=space, grayscale=False, precision="fp32", bar=None)
    offsets = torch.zeros(2, 5, 2, dtype=torch.long)
    first = [synthetic._optimise_chunk(model, weights, x[:1].clone(), torch.tensor([c]), torch.tensor([0.0]),
                                       offsets[:1, :1], steps=1, threshold_decay=torch.zeros(1), min_threshold=0.0,
                                       patience=0, **kw) for c in range(3)]
    (target,) = [c for c in range(3) if bool(first[c][4][0])]  # image 0 stops at step 1 for its arg-max class
    # image 0: threshold 0, stops at step 1; image 1: threshold 2 (never), lowered by 0.1 after steps 2 and 4
    _, _, _, steps_taken, reached, thresholds = synthetic._optimise_chunk(
        model, weights, x.clone(), torch.tensor([target, 0]), torch.tensor([0.0, 2.0]), offsets, steps=5,
        threshold_decay=torch.tensor([0.1, 0.1]), min_threshold=-1.0, patience=2, **kw)
    assert reached.tolist() == [True, False] and steps_taken.tolist() == [1, 5]
    assert thresholds.tolist() == pytest.approx([0.0, 1.8])


def test_progress_bar_runs_and_shows_the_ascent(capsys):
    model = RecordingModel(3 * 4 * 4, d=3)
    synthetic.generate_synthetic(model, text_weights(3, d=3), classes=[0], n_per_class=2, image_size=4, steps=2,
                                 jitter=1, blur_every=0, thresholds=2.0, restart=True, max_attempts=2, progress=True)
    assert "ascent 1/1" in capsys.readouterr().err


def test_synthetic_set_getitems_returns_image_target_pairs():
    images = torch.arange(8, dtype=torch.float32).view(4, 2, 1, 1)
    ds = synthetic.SyntheticSet(images, [2, 0, 1, 2], classnames=["a", "b", "c"], probs=torch.zeros(4),
                                steps_taken=torch.zeros(4), reached=torch.ones(4, dtype=torch.bool),
                                thresholds=torch.zeros(4))
    items = ds.__getitems__([3, 1])
    assert len(items) == 2
    assert torch.equal(items[0][0], images[3]) and int(items[0][1]) == 2
    assert torch.equal(items[1][0], images[1]) and int(items[1][1]) == 0


def test_a_class_listed_twice_keeps_each_listings_threshold_without_restarts(monkeypatch):
    """Without restarts every image starts at its own listing's threshold, even when a class is listed twice."""
    fake = fake_chunk(monkeypatch)
    synthetic.generate_synthetic(nn.Linear(1, 1), text_weights(3), classes=[0, 0], classnames=["cat", "dog", "car"],
                                 n_per_class=2, image_size=3, steps=2, jitter=1, thresholds=[0.9, 0.6],
                                 restart=False, batch_size=4, seed=0, progress=False)
    assert [c["thresholds"].tolist() for c in fake.calls] == [pytest.approx([0.9, 0.9, 0.6, 0.6])]


def test_pixel_bounds_are_float32_1x3x1x1_whatever_the_input_type():
    lo, hi = synthetic.pixel_bounds(np.array([0.5, 0.25, 0.0]), torch.tensor([0.5, 0.25, 2.0], dtype=torch.float64))
    assert lo.dtype == hi.dtype == torch.float32 and lo.shape == hi.shape == (1, 3, 1, 1)
    assert lo.flatten().tolist() == [-1.0, -1.0, 0.0] and hi.flatten().tolist() == [1.0, 3.0, 0.5]
