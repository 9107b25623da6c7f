"""Formula checks of paper B's synthetic-image ascent: jitter applied and undone, the normalised
step, clamping, Gaussian blur, the stop rule's threshold on both sides and its lowering; by loops / hand values.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from clipunlearn import synthetic

from .formula_helpers import TOL, rows

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


def test_formula_roll_images_is_per_image_torch_roll_and_minus_shift_undoes_it():
    x = torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).view(2, 2, 3, 4)
    shifts = torch.tensor([[1, -1], [2, 3]])
    got = synthetic.roll_images(x, shifts)
    # by hand for image 0, channel 0, pixel (0, 0): comes from (0 - 1) % 3 = 2, (0 + 1) % 4 = 1
    assert float(got[0, 0, 0, 0]) == float(x[0, 0, 2, 1])
    for i in range(2):
        for c in range(2):
            for y in range(3):
                for z in range(4):
                    src = ((y - int(shifts[i, 0])) % 3, (z - int(shifts[i, 1])) % 4)
                    assert float(got[i, c, y, z]) == float(x[i, c, src[0], src[1]])
    assert torch.equal(synthetic.roll_images(got, -shifts), x)


def reflect(i, n):
    """scipy.ndimage 'reflect' (edge-symmetric: d c b a | a b c d | d c b a) for an offset of at most n."""
    if i < 0:
        return -i - 1
    if i >= n:
        return 2 * n - i - 1
    return i


def naive_blur(x, sigma, truncate=4.0):
    r = int(truncate * sigma + 0.5)
    k = [math.exp(-0.5 * (d / sigma) ** 2) for d in range(-r, r + 1)]
    k = [v / sum(k) for v in k]
    b, c, h, w = x.shape
    a = rows(x)
    tmp = [[[[sum(k[d + r] * a[i][ch][reflect(y + d, h)][z] for d in range(-r, r + 1)) for z in range(w)]
              for y in range(h)] for ch in range(c)] for i in range(b)]
    return [[[[sum(k[d + r] * tmp[i][ch][y][reflect(z + d, w)] for d in range(-r, r + 1)) for z in range(w)]
              for y in range(h)] for ch in range(c)] for i in range(b)]


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_formula_gaussian_blur_separable_reflect_loop(sigma):
    x = torch.randn(1, 2, 5, 6, generator=torch.Generator().manual_seed(80))
    want = torch.tensor(naive_blur(x, sigma))
    assert torch.allclose(synthetic.gaussian_blur(x, sigma=sigma), want, atol=1e-5)


def test_formula_pixel_bounds_and_clamp_hand_values():
    lo, hi = synthetic.pixel_bounds((0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    assert lo.flatten().tolist() == pytest.approx([-1.0, -1.0, 0.0]) and hi.flatten().tolist() == pytest.approx(
        [1.0, 3.0, 0.5])
    x = torch.tensor([[-1.5, 0.5, 4.0], [1.5, -2.0, 0.25]]).T.reshape(1, 3, 1, 2)
    got = synthetic.clamp_to_range(x, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    assert got.flatten().tolist() == pytest.approx([-1.0, 1.0, 0.5, -1.0, 0.5, 0.25])


def test_formula_minmax_rescale_per_image_over_all_channels():
    x = torch.tensor([[[[2.0, 4.0]], [[6.0, 10.0]]]])  # min 2, max 10
    assert synthetic.minmax_rescale(x).flatten().tolist() == pytest.approx([0.0, 0.25, 0.5, 1.0])


# --------------------------------------------------------------------------- #
# One ascent step, written out
# --------------------------------------------------------------------------- #
class LinearImages(nn.Module):
    """``encode_image(x) = flatten(x) @ W``: not translation invariant, so the jitter changes the gradient."""

    def __init__(self, d_in, d=3, seed=90):
        super().__init__()
        self.W = nn.Parameter(torch.randn(d_in, d, generator=torch.Generator().manual_seed(seed)))

    def encode_image(self, x):
        return x.flatten(1) @ self.W


def run_chunk(model, weights, x, targets, thresholds, offsets, *, steps=1, step_size=0.5, blur_every=0,
              norm_weight=1e-3, patience=0, decay=0.025, min_threshold=0.45, logit_scale=10.0, stop_scale=100.0,
              bounds=((0.0,) * 3, (1.0,) * 3)):
    space = synthetic._Space("project", mean=bounds[0], std=bounds[1], device="cpu")
    return synthetic._optimise_chunk(
        model, weights, x.clone(), targets, torch.tensor(thresholds), offsets, steps=steps, step_size=step_size,
        blur_every=blur_every, blur_sigma=0.5, norm_weight=norm_weight, center=0.0,
        threshold_decay=torch.full((len(x),), decay), min_threshold=min_threshold, patience=patience,
        logit_scale=logit_scale, stop_logit_scale=stop_scale, space=space, grayscale=False, precision="fp32",
        bar=None)


def naive_step(model, weights, x, targets, shifts, *, step_size, norm_weight, logit_scale, lo, hi, blur):
    """x += step * roll(g, -s) / ||g|| with g = d/dx' [logit_scale * cos(f(x'), w_y) - nw * ||x'||] at x' = roll(x, s),
    then clamp to [lo, hi] per channel, then blur if asked."""
    out = []
    for i in range(len(x)):
        xs = torch.roll(x[i], shifts=(int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2)).requires_grad_(True)
        f = model.encode_image(xs[None])[0]
        w = weights[int(targets[i])]
        score = logit_scale * (f @ w) / (f.norm() * w.norm()) - norm_weight * xs.norm()
        (g,) = torch.autograd.grad(score, xs)
        step = torch.roll(g / g.norm(), shifts=(-int(shifts[i, 0]), -int(shifts[i, 1])), dims=(1, 2))
        new = x[i] + step_size * step
        new = torch.stack([new[c].clamp(lo[c], hi[c]) for c in range(3)])
        out.append(new)
    out = torch.stack(out).detach()
    return torch.tensor(naive_blur(out, 0.5)) if blur else out


@pytest.mark.parametrize("blur_every", [0, 1])
def test_formula_ascent_step_normalised_gradient_jitter_undone_clamped_blurred(blur_every):
    g = torch.Generator().manual_seed(91)
    x = torch.rand(2, 3, 3, 4, generator=g)
    model = LinearImages(36)
    weights = nn.functional.normalize(torch.randn(2, 3, generator=g), dim=-1)
    targets = torch.tensor([0, 1])
    shifts = torch.tensor([[1, 2], [-1, 3]])
    offsets = shifts.view(2, 1, 2)
    lo, hi = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    out = run_chunk(model, weights, x, targets, [1.0, 1.0], offsets, step_size=0.5, blur_every=blur_every)[0]
    want = naive_step(model, weights, x, targets, shifts, step_size=0.5, norm_weight=1e-3, logit_scale=10.0,
                      lo=lo, hi=hi, blur=bool(blur_every))
    assert torch.allclose(out, want, atol=1e-5)
    # the clamp is exercised (a step of 0.5 pushes pixels past [0, 1]) ...
    unclamped = x + 0.5 * 1  # upper bound of any pixel after the step
    assert (unclamped > 1).any()
    # ... and the jitter matters: without it the result differs
    no_jitter = run_chunk(model, weights, x, targets, [1.0, 1.0], torch.zeros_like(offsets), blur_every=blur_every)[0]
    assert not torch.allclose(no_jitter, out, atol=1e-4)


def stop_prob(model, weights, img, target, scale):
    f = rows(model.encode_image(img[None]))[0]
    nf = math.sqrt(sum(v * v for v in f))
    logit = [scale * sum(a * b for a, b in zip(f, w)) / nf for w in rows(weights)]
    m = max(logit)
    e = [math.exp(v - m) for v in logit]
    return e[target] / sum(e)


def test_formula_stop_rule_softmax_of_scaled_cosine_above_threshold_both_sides():
    """An image stops when its class is the arg-max and softmax(100 cos)[y] > threshold (strictly)."""
    g = torch.Generator().manual_seed(92)
    x = torch.rand(1, 3, 2, 2, generator=g)
    model = LinearImages(12, seed=93)
    with torch.no_grad():  # class 0's text lies near the image's features: class 0 is the arg-max
        near = model.encode_image(x)[0] + 0.3 * torch.randn(3, generator=g)
    weights = nn.functional.normalize(torch.stack([near, -near + 0.5 * torch.randn(3, generator=g),
                                                   torch.randn(3, generator=g)]), dim=-1)
    offsets = torch.zeros(1, 1, 2, dtype=torch.long)
    out, _, probs, steps_taken, reached, _ = run_chunk(model, weights, x, torch.tensor([0]), [0.999],
                                                       offsets, stop_scale=5.0)
    p = stop_prob(model, weights, out[0], 0, 5.0)
    assert float(probs[0]) == pytest.approx(p, abs=1e-5)
    assert p > max(stop_prob(model, weights, out[0], c, 5.0) for c in (1, 2))  # the target is the arg-max
    for thr, expect in ((p - 1e-4, True), (p + 1e-4, False)):
        *_, reached, _ = run_chunk(model, weights, x, torch.tensor([0]), [thr], offsets, stop_scale=5.0)
        assert bool(reached[0]) is expect


def test_formula_threshold_lowered_by_decay_after_patience_not_below_floor():
    g = torch.Generator().manual_seed(94)
    x = torch.rand(2, 3, 2, 2, generator=g)
    model = LinearImages(12, seed=95)
    weights = nn.functional.normalize(torch.randn(2, 3, generator=g), dim=-1)
    offsets = torch.zeros(2, 2, 2, dtype=torch.long)
    # thresholds above 1 are never reached: with patience 1, two steps lower each twice by 0.3, not below 1.05
    *_, thresholds = run_chunk(model, weights, x, torch.tensor([0, 1]), [1.7, 1.2], offsets, steps=2, patience=1,
                               decay=0.3, min_threshold=1.05)
    assert thresholds.tolist() == pytest.approx([1.7 - 0.6, 1.05], abs=TOL)  # 1.2 - 0.3 = 0.9 -> floor 1.05
