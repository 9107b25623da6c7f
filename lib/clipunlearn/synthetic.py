"""Synthetic forget samples: images a CLIP model itself recognises as a class (paper B).

Paper B (Kravets & Namboodiri, "Zero-Shot Class Unlearning in CLIP with Synthetic
Samples", WACV 2025) forgets a class without any real image of it. It first
*generates* images of the class by gradient ascent from Gaussian noise on

    s(x) = logit_scale * cos(f_img(x), w_y) - norm_weight * ||x - center||_2

with a normalised step ``x <- x + step_size * g / ||g||``, a random jitter
(``torch.roll`` by up to ``jitter`` pixels, undone after the step), clamping to
the valid pixel range, a Gaussian blur (sigma 0.5) every ``blur_every`` steps, and
stops an image as soon as ``softmax(logit_scale * cos(f_img(x), W))`` ranks the
target first with probability above a per-class threshold.

The authors' code optimises one image at a time. :func:`generate_synthetic`
optimises a whole set at once: every step runs one forward/backward pass over all
images still *active*; an image that reaches its threshold is frozen (masked out)
while the others go on. :func:`generate_synthetic_sequential` is the one-image-at-
a-time reference loop of the very same algorithm (same per-image random streams),
used by the benchmark and the tests.

Threshold lowering (project's choice, the batched counterpart of the original):
the original restarts an image from new noise when it did not reach the threshold
within ``steps`` iterations and lowers the threshold of the next attempt by
``threshold_decay`` (not below ``min_threshold``). Here an image keeps its noise
and its threshold is lowered by ``threshold_decay`` (not below ``min_threshold``)
after every ``patience`` steps in which it has not reached it (default
``patience = max(1, steps // 10)``). Images that never reach it are kept with
``reached = False``; :meth:`SyntheticSet.select_reached` drops them.

Other deviations from the original, all exposed as parameters: the stop check
classifies the image itself (the original min-max rescales it first), and the
ascent uses the same ``logit_scale`` as the stop check (100, CLIP's learned value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .results import save_torch_atomic

__all__ = [
    "SyntheticSet", "generate_synthetic", "generate_synthetic_sequential", "roll_images", "gaussian_blur",
    "clamp_to_range", "image_generator", "save_synthetic", "load_synthetic",
]


# --------------------------------------------------------------------------- #
# The result
# --------------------------------------------------------------------------- #
class SyntheticSet(Dataset):
    """Generated images in model space with the bookkeeping of their generation.

    Attributes: ``images`` (float ``[N, 3, H, W]``, already normalised), ``targets``
    (LongTensor ``[N]``, index into ``classnames``), ``classnames``, ``probs`` (final
    target probability), ``steps_taken`` (steps until the image stopped),
    ``reached`` (bool: the image reached its threshold) and ``thresholds`` (the
    threshold in force when it stopped).
    """

    def __init__(self, images, targets, *, classnames, probs, steps_taken, reached, thresholds):
        self.images = images
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.classnames = list(classnames)
        self.probs, self.steps_taken = probs, steps_taken
        self.reached, self.thresholds = reached, thresholds

    def __len__(self) -> int:
        return len(self.targets)

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(images [B, 3, H, W], targets [B])`` for ``indices`` at once."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], self.targets[idx]

    def __getitem__(self, index):
        return self.images[index], self.targets[index]

    def __getitems__(self, indices):  # whole-batch fetching by DataLoader
        x, y = self.get_batch(indices)
        return list(zip(x, y))

    def subset(self, mask_or_indices) -> "SyntheticSet":
        """Return a new set with only the selected images (bool mask or indices)."""
        idx = torch.as_tensor(mask_or_indices)
        idx = idx.nonzero().flatten() if idx.dtype == torch.bool else idx.long()
        return SyntheticSet(self.images[idx], self.targets[idx], classnames=self.classnames, probs=self.probs[idx],
                            steps_taken=self.steps_taken[idx], reached=self.reached[idx],
                            thresholds=self.thresholds[idx])

    def select_reached(self) -> "SyntheticSet":
        """Return only the images that reached their threshold (what the original code keeps)."""
        return self.subset(self.reached)

    def summary(self) -> dict:
        """Return per-class counts: ``{classname: {"n", "reached", "mean_prob", "mean_steps", "max_steps"}}``."""
        out = {}
        for c in self.targets.unique().tolist():
            m = self.targets == c
            out[self.classnames[c]] = {
                "n": int(m.sum()), "reached": int(self.reached[m].sum()),
                "mean_prob": float(self.probs[m].mean()), "mean_steps": float(self.steps_taken[m].float().mean()),
                "max_steps": int(self.steps_taken[m].max()), "min_threshold": float(self.thresholds[m].min()),
            }
        return out

    def state_dict(self) -> dict:
        """Return the tensors and class names (what :func:`save_synthetic` writes)."""
        return {"images": self.images, "targets": self.targets, "classnames": list(self.classnames),
                "probs": self.probs, "steps_taken": self.steps_taken, "reached": self.reached,
                "thresholds": self.thresholds}


def save_synthetic(path, synthetic: SyntheticSet) -> Path:
    """Write ``synthetic`` to ``path`` atomically (``results.write_atomic``: temp file, then ``os.replace``)."""
    return save_torch_atomic(synthetic.state_dict(), path)


def load_synthetic(path) -> SyntheticSet:
    """Load a set written by :func:`save_synthetic` (``weights_only=True``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return SyntheticSet(state.pop("images"), state.pop("targets"), **state)


# --------------------------------------------------------------------------- #
# Image operations (batched, per-image parameters)
# --------------------------------------------------------------------------- #
def roll_images(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Return ``images [B, C, H, W]`` rolled circularly by per-image ``shifts [B, 2]`` = (dy, dx).

    Same as ``torch.roll(images[i], (dy_i, dx_i), dims=(1, 2))`` for every image, in one gather.
    """
    b, c, h, w = images.shape
    shifts = shifts.to(images.device)
    rows = (torch.arange(h, device=images.device).view(1, h) - shifts[:, :1]) % h  # [B, H]
    cols = (torch.arange(w, device=images.device).view(1, w) - shifts[:, 1:]) % w  # [B, W]
    out = images.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w))
    return out.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


def _gaussian_kernel(sigma: float, truncate: float, *, dtype, device) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def gaussian_blur(images: torch.Tensor, *, sigma: float = 0.5, truncate: float = 4.0) -> torch.Tensor:
    """Return ``images [B, C, H, W]`` blurred by a separable Gaussian of ``sigma`` pixels.

    Matches ``scipy.ndimage.gaussian_filter1d`` along H then W (mode "reflect", i.e.
    edge-symmetric padding, radius ``int(truncate * sigma + 0.5)``), as the original code.
    """
    k = _gaussian_kernel(sigma, truncate, dtype=images.dtype, device=images.device)
    r = (len(k) - 1) // 2
    if r == 0:
        return images.clone()
    b, c, h, w = images.shape
    x = images.reshape(b * c, 1, h, w)
    x = torch.cat([x[:, :, :r].flip(2), x, x[:, :, -r:].flip(2)], dim=2)
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    x = torch.cat([x[..., :r].flip(3), x, x[..., -r:].flip(3)], dim=3)
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return x.reshape(b, c, h, w)


def pixel_bounds(mean: Sequence[float], std: Sequence[float], *, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Return the valid model-space range ``((0 - mean) / std, (1 - mean) / std)`` as ``[1, 3, 1, 1]`` tensors.

    The project's one pixel-range helper (``losses.lipschitz_bounds`` applies it to a model's normalisation).
    """
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return (0 - m) / s, (1 - m) / s


def clamp_to_range(images: torch.Tensor, *, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Return ``images`` clamped per channel to the valid pixel range in model space."""
    lo, hi = pixel_bounds(mean, std, device=images.device)
    return torch.maximum(torch.minimum(images, hi.to(images.dtype)), lo.to(images.dtype))


def image_generator(seed: int, index: int) -> torch.Generator:
    """Return the CPU generator of image ``index`` for ``seed`` (independent streams via numpy SeedSequence)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


# --------------------------------------------------------------------------- #
# Generation
# --------------------------------------------------------------------------- #
def _resolve_classes(classes, classnames, num_classes: int) -> list[int]:
    out = []
    for c in classes:
        if isinstance(c, str):
            if classnames is None:
                raise ValueError(f"class {c!r} given by name: pass classnames=[...] (the classifier's columns)")
            from .data import check_classnames

            out.extend(check_classnames([c], classnames))
        else:
            if not 0 <= int(c) < num_classes:
                raise ValueError(f"class index {c} out of range: the classifier has {num_classes} classes")
            out.append(int(c))
    if not out:
        raise ValueError("classes is empty: name at least one class to generate")
    return out


def _resolve_thresholds(thresholds, classes: list[int], classnames) -> list[float]:
    if isinstance(thresholds, (int, float)):
        return [float(thresholds)] * len(classes)
    if isinstance(thresholds, dict):
        names = [classnames[c] if classnames is not None else c for c in classes]
        missing = [n for n in names if n not in thresholds]
        if missing:
            raise ValueError(f"thresholds has no entry for {missing}; keys: {list(thresholds)}")
        return [float(thresholds[n]) for n in names]
    thresholds = [float(t) for t in thresholds]
    if len(thresholds) != len(classes):
        raise ValueError(f"{len(thresholds)} thresholds for {len(classes)} classes: give one per class, "
                         "a single float or a dict {classname: threshold}")
    return thresholds


class _Frozen:
    """Context: model in eval mode with parameters not requiring grad (input gradients only)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.training = self.model.training
        self.flags = [(p, p.requires_grad) for p in self.model.parameters()]
        self.model.eval()
        for p, _ in self.flags:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p, flag in self.flags:
            p.requires_grad_(flag)
        self.model.train(self.training)


def _optimise_chunk(model, weights, x, targets, thresholds, offsets, *, steps, step_size, blur_every, blur_sigma,
                    norm_weight, center, threshold_decay, min_threshold, patience, logit_scale, bounds, grayscale, bar):
    """Run the ascent on a chunk of images at once; return (x, probs, steps_taken, reached, thresholds).

    ``weights``: class text embeddings ``[C, D]`` (unit norm); ``offsets``: jitter ``[N, steps, 2]``.
    """
    n = len(x)
    lo, hi = bounds
    w_target = weights[targets]  # [N, D]
    done = torch.zeros(n, dtype=torch.bool)
    reached = torch.zeros(n, dtype=torch.bool)
    probs = torch.zeros(n)
    steps_taken = torch.full((n,), steps, dtype=torch.long)
    thresholds = thresholds.clone()
    for t in range(steps):
        act = (~done).nonzero().flatten()
        if len(act) == 0:
            break
        act_dev = act.to(x.device)
        shifts = offsets[act, t]
        xa = roll_images(x[act_dev], shifts).requires_grad_(True)
        cos = (F.normalize(model.encode_image(xa), dim=-1) * w_target[act_dev]).sum(-1)
        score = logit_scale * cos - norm_weight * (xa - center).flatten(1).norm(dim=1)
        (grad,) = torch.autograd.grad(score.sum(), xa)
        if grayscale:
            grad = grad.mean(1, keepdim=True).expand_as(grad)
        grad = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        with torch.no_grad():
            xa = roll_images(xa.detach() + step_size * grad, -shifts)
            xa = torch.maximum(torch.minimum(xa, hi), lo)
            if blur_every and t % blur_every == 0:
                xa = gaussian_blur(xa, sigma=blur_sigma)
            x[act_dev] = xa
            p = (logit_scale * F.normalize(model.encode_image(xa), dim=-1) @ weights.T).softmax(-1).cpu()
        tgt = targets[act]
        p_target = p.gather(1, tgt.view(-1, 1)).flatten()
        hit = (p.argmax(1) == tgt) & (p_target > thresholds[act])
        probs[act] = p_target
        reached[act[hit]] = True
        done[act[hit]] = True
        steps_taken[act[hit]] = t + 1
        if patience and (t + 1) % patience == 0:  # lower the threshold of images still searching
            still = act[~hit]
            lowered = torch.clamp(thresholds[still] - threshold_decay, min=min_threshold)
            thresholds[still] = torch.minimum(thresholds[still], lowered)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(active=int((~done).sum()), reached=int(reached.sum()))
    return x, probs, steps_taken, reached, thresholds


def generate_synthetic(model, text_weights: torch.Tensor, *, classes: Sequence, n_per_class: int = 64,
                       image_size: int = 224, mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
                       std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
                       classnames: Sequence[str] | None = None, steps: int = 3000, step_size: float = 25.0,
                       jitter: int = 16, blur_every: int = 10, blur_sigma: float = 0.5, norm_weight: float = 1e-3,
                       thresholds=0.8, threshold_decay: float = 0.025, min_threshold: float = 0.45,
                       patience: int | None = None, logit_scale: float = 100.0, init_std: float = 1.0,
                       center: float = 0.0,
                       grayscale: bool = False, seed: int = 0, batch_size: int = 64, batched: bool = True,
                       device="cpu", progress: bool = True) -> SyntheticSet:
    """Return a :class:`SyntheticSet` of ``n_per_class`` images per class in ``classes``, made by gradient ascent.

    Paper B, Sec. 3.1: ascend ``logit_scale * cos(f_img(x), w_y) - norm_weight * ||x - center||`` from
    ``N(center, init_std^2)`` noise with the step ``x += step_size * g / ||g||`` (per image), a
    jitter of up to ``jitter`` pixels undone after each step, clamping to the valid range
    (from ``mean``/``std``) and a Gaussian blur every ``blur_every`` steps; an image stops
    when its target is the arg-max with ``softmax(logit_scale * cos)`` above its threshold.

    ``text_weights``: zero-shot classifier ``[D, C]`` (e.g. ``metrics.build_classifier``)
    over every class of the dataset; ``classes``: indices or names (with ``classnames``);
    ``thresholds``: a float, one per class, or ``{classname: float}``; the threshold of an
    image that has not reached it is lowered by ``threshold_decay`` (down to
    ``min_threshold``) after every ``patience`` steps (default ``steps // 10``).
    ``grayscale`` keeps the three channels equal (for models trained on grey images).
    ``center`` (model space, default 0 = the normalisation mean, as in the original where
    that is the data mean) is where the noise starts and what the norm penalty pulls to.
    ``batched=False`` runs the one-image-at-a-time reference loop (the same computation;
    only floating-point rounding differs, which the normalised ascent can amplify over
    many steps for some images). Image ``i`` draws its noise and jitter from
    :func:`image_generator` ``(seed, i)``, so results do not depend on ``batch_size``.
    """
    weights = F.normalize(text_weights.detach().float().T.to(device), dim=-1)  # [C, D]
    classes = _resolve_classes(classes, classnames, weights.shape[0])
    per_class = _resolve_thresholds(thresholds, classes, classnames)
    if patience is None:
        patience = max(1, steps // 10)
    targets = torch.tensor(classes).repeat_interleave(n_per_class)
    start = torch.tensor(per_class).repeat_interleave(n_per_class)
    n = len(targets)

    # per-image random streams: initial noise, then the jitter offsets of every step
    images, offsets = [], []
    for i in range(n):
        g = image_generator(seed, i)
        noise = torch.randn(1 if grayscale else 3, image_size, image_size, generator=g) * init_std + center
        images.append(noise.expand(3, -1, -1) if grayscale else noise)
        offsets.append(torch.randint(0, jitter + 1, (steps, 2), generator=g))
    x_all = torch.stack(images).to(device)
    offsets = torch.stack(offsets)
    bounds = tuple(b.to(device) for b in pixel_bounds(mean, std, device=device))

    chunk = batch_size if batched else 1
    out = {k: [] for k in ("x", "probs", "steps", "reached", "thr")}
    kwargs = dict(steps=steps, step_size=step_size, blur_every=blur_every, blur_sigma=blur_sigma,
                  norm_weight=norm_weight, center=center, threshold_decay=threshold_decay, min_threshold=min_threshold,
                  patience=patience, logit_scale=logit_scale, bounds=bounds, grayscale=grayscale)
    with _Frozen(model):
        chunks = list(range(0, n, chunk))
        outer = tqdm(chunks, desc="synthetic images", unit="img" if not batched else "batch",
                     disable=not progress or batched)
        for s in outer:
            sl = slice(s, s + chunk)
            bar = tqdm(total=steps, desc=f"ascent {s // chunk + 1}/{len(chunks)}", leave=False,
                       disable=not progress or not batched)
            x, p, st, r, thr = _optimise_chunk(model, weights, x_all[sl].clone(), targets[sl], start[sl],
                                               offsets[sl], bar=bar, **kwargs)
            bar.close()
            for k, v in zip(out, (x.cpu(), p, st, r, thr)):
                out[k].append(v)
    names = list(classnames) if classnames is not None else [str(c) for c in range(weights.shape[0])]
    return SyntheticSet(torch.cat(out["x"]), targets, classnames=names, probs=torch.cat(out["probs"]),
                        steps_taken=torch.cat(out["steps"]), reached=torch.cat(out["reached"]),
                        thresholds=torch.cat(out["thr"]))


def generate_synthetic_sequential(model, text_weights: torch.Tensor, **kwargs) -> SyntheticSet:
    """Return :func:`generate_synthetic` run one image at a time (the original code's loop; reference)."""
    kwargs["batched"] = False
    return generate_synthetic(model, text_weights, **kwargs)
