"""Synthetic forget samples with an image prior: DeepInversion's BatchNorm feature statistics (project variant).

Paper B's ascent (:func:`clipunlearn.synthetic.generate_synthetic`) makes images the model
assigns to a class, with no prior on what images look like. This module adds one
principled prior, the one of DeepInversion (Yin et al., "Dreaming to Distill: Data-free
Knowledge Transfer via DeepInversion", CVPR 2020; ``NVlabs/DeepInversion``): the batch
mean and variance of the features entering every BatchNorm layer of the image tower are
pulled to the layer's running statistics (what real training images produced), together
with a total-variation and an l2 image prior and random jitter / flips. The loss per batch::

    CE(logit_scale * cos(f_img(x), W), y)
      + bn_weight * sum_l m_l (||mu_l(x) - running_mean_l||_2 + ||var_l(x) - running_var_l||_2)
      + tv_weight * TV_2(x) + l2_weight * mean_i ||x_i||_2

with ``m_1 = first_bn_multiplier`` and ``m_l = 1`` otherwise, ``TV_2`` the sum of the l2 norms
of the horizontal, vertical and both diagonal pixel differences, minimised with Adam
(betas (0.5, 0.9)) under a cosine learning-rate schedule for a fixed number of steps.

It needs BatchNorm running statistics: any ResNet image tower (the mini tower, RN50). A ViT
has only LayerNorm, which keeps no statistics of the training data; there one would use a
prior on its tokens instead, e.g. the patch-similarity entropy of PSAQ-ViT (Li et al., ECCV 2022)
or statistics of the tokens stored from real data. :data:`SYNTHETIC_PRIORS` names the
variants; ``"none"`` is paper B's generation (the paper profile's default).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from . import synthetic
from .methods.three_stage_stages import batchnorm_layers
from .registry import register_label
from .report import label_variants

__all__ = ["SYNTHETIC_PRIORS", "batchnorm_feature_loss", "total_variation_l2", "generate_bn_prior",
           "generate_with_prior", "feature_statistics_distance", "PRIOR_VARIANT", "split_priors"]

#: The image priors of the synthetic generation: none (paper B's ascent) or DeepInversion's BatchNorm prior.
SYNTHETIC_PRIORS = ("none", "bn")
#: The display name of ``lipschitz_synthetic`` records made on BatchNorm-prior images (:func:`split_priors`).
PRIOR_VARIANT = "lipschitz_synthetic_bn"
register_label(PRIOR_VARIANT, "Lipschitz, synthetic + BN prior")


def _statistics(model, images: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Return ``(image features, [(mu_l, var_l), ...])``: one forward pass with the statistics of every BatchNorm input.

    ``mu_l`` / ``var_l``: per-channel mean and biased variance (over batch and space) of the features
    entering BatchNorm ``l`` of the image tower (the layers of paper A's alignment,
    ``three_stage_stages.batchnorm_layers``, in forward order). A ValueError for a tower without BatchNorm.
    """
    bns = batchnorm_layers(model)
    if not bns:
        raise ValueError("the image tower has no BatchNorm layers (a ViT?): the BatchNorm prior needs running "
                         f"statistics; use synthetic_prior='none' (valid: {', '.join(SYNTHETIC_PRIORS)})")
    stats = []

    def hook(module, inputs):
        h = inputs[0].float()
        stats.append((h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)))

    handles = [m.register_forward_pre_hook(hook) for _, m in bns]
    try:
        feats = model.encode_image(images)
    finally:
        for h in handles:
            h.remove()
    return feats, stats


def _feature_terms(model, stats, first_multiplier: float) -> torch.Tensor:
    """``sum_l m_l (||mu_l - rm_l||_2 + ||var_l - rv_l||_2)`` against the running statistics."""
    terms = [torch.linalg.vector_norm(var - m.running_var) + torch.linalg.vector_norm(mu - m.running_mean)
             for (mu, var), (_, m) in zip(stats, batchnorm_layers(model))]
    multipliers = torch.ones(len(terms), device=terms[0].device)
    multipliers[0] = first_multiplier
    return (torch.stack(terms) * multipliers).sum()


def batchnorm_feature_loss(model, images: torch.Tensor, *, first_multiplier: float = 1.0) -> torch.Tensor:
    """Return DeepInversion's feature loss ``sum_l m_l (||mu_l - rm_l||_2 + ||var_l - rv_l||_2)`` of ``images``.

    ``mu_l`` / ``var_l``: per-channel batch mean and biased variance of the features entering
    BatchNorm ``l`` (:func:`_statistics`); ``rm_l`` / ``rv_l``: its running statistics;
    ``m_1 = first_multiplier``, the others 1. A ValueError for a tower without BatchNorm (a ViT).
    """
    _, stats = _statistics(model, images)
    return _feature_terms(model, stats, first_multiplier)


def total_variation_l2(images: torch.Tensor) -> torch.Tensor:
    """Return DeepInversion's ``TV_2``: the summed l2 norms of the horizontal, vertical and two diagonal differences."""
    d1 = images[:, :, :, :-1] - images[:, :, :, 1:]
    d2 = images[:, :, :-1, :] - images[:, :, 1:, :]
    d3 = images[:, :, 1:, :-1] - images[:, :, :-1, 1:]
    d4 = images[:, :, :-1, :-1] - images[:, :, 1:, 1:]
    return sum(torch.linalg.vector_norm(d) for d in (d1, d2, d3, d4))


def _bn_prior_loss(model, x, weights, targets, *, logit_scale, bn_weight, first_bn_multiplier, tv_weight,
                   l2_weight) -> tuple[torch.Tensor, dict]:
    """The BatchNorm-prior objective of a batch (module docstring) and its terms, in one forward pass."""
    feats, stats = _statistics(model, x)
    ce = F.cross_entropy(logit_scale * F.normalize(feats.float(), dim=-1) @ weights.T, targets)
    bn = _feature_terms(model, stats, first_bn_multiplier)
    tv, l2 = total_variation_l2(x), x.flatten(1).norm(dim=1).mean()
    loss = ce + bn_weight * bn + tv_weight * tv + l2_weight * l2
    return loss, {k: float(v.detach()) for k, v in (("ce", ce), ("bn", bn), ("tv", tv), ("l2", l2))}


def generate_bn_prior(model, text_weights: torch.Tensor, *, classes: Sequence, n_per_class: int = 64,
                      image_size: int = 224, mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
                      std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
                      classnames: Sequence[str] | None = None, steps: int = 2000, lr: float = 0.2,
                      bn_weight: float = 0.05, first_bn_multiplier: float = 10.0, tv_weight: float = 1e-4,
                      l2_weight: float = 1e-5, jitter: int = 30, flip: bool = True, logit_scale: float = 100.0,
                      stop_logit_scale: float | None = None, thresholds=0.8, grayscale: bool = False,
                      init_std: float = 1.0, seed: int = 0, batch_size: int = 64, device="cpu",
                      **ignored) -> synthetic.SyntheticSet:
    """Return a :class:`~clipunlearn.synthetic.SyntheticSet` made with DeepInversion's BatchNorm prior.

    Each batch of ``batch_size`` images (class after class, as ``generate_synthetic`` orders
    them) starts from ``N(0, init_std^2)`` noise in model space and minimises the module's
    objective for ``steps`` Adam steps (lr ``lr``, betas (0.5, 0.9), cosine schedule), each on a
    random roll of up to ``jitter`` pixels and, with ``flip``, a random horizontal flip (both
    undone: the variable is never shifted); pixels are clamped to the model's valid range.
    ``text_weights`` ``[D, C]``: the zero-shot classifier over every class. No early stop:
    ``reached`` says whether the final image's target is the arg-max of ``softmax(stop_logit_scale
    * cos)`` with probability above its threshold; ``probs`` is that probability.
    DeepInversion's ImageNet defaults; the ascent's own keywords (``step_size``, ...) are ignored.
    """
    weights = F.normalize(text_weights.detach().float().T.to(device), dim=-1)
    classes = synthetic._resolve_classes(classes, classnames, weights.shape[0])
    per_class = synthetic._per_class(thresholds, classes, classnames, "thresholds")
    stop_logit_scale = logit_scale if stop_logit_scale is None else stop_logit_scale
    lo, hi = synthetic.pixel_bounds(mean, std, device=device)
    targets = torch.tensor(classes).repeat_interleave(n_per_class)
    thr = torch.tensor(per_class).repeat_interleave(n_per_class)
    generators = [synthetic.image_generator(seed, i) for i in range(len(targets))]
    channels = 1 if grayscale else 3
    start = torch.stack([torch.randn(channels, image_size, image_size, generator=g) * init_std for g in generators])
    moves = torch.Generator().manual_seed(seed)
    out = {k: [] for k in ("x", "probs")}
    with synthetic._Frozen(model):
        for s in range(0, len(targets), batch_size):
            x = start[s:s + batch_size].clone().to(device).requires_grad_(True)
            y = targets[s:s + batch_size].to(device)
            opt = torch.optim.Adam([x], lr=lr, betas=(0.5, 0.9), eps=1e-8)
            for t in range(steps):
                for group in opt.param_groups:
                    group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * t / steps))
                dx, dy = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=moves))
                flipped = bool(flip and torch.rand((), generator=moves) < 0.5)
                view = x.expand(-1, 3, -1, -1) if grayscale else x
                view = torch.roll(view, shifts=(dx, dy), dims=(2, 3))
                view = torch.flip(view, dims=(3,)) if flipped else view
                loss, _ = _bn_prior_loss(model, view, weights, y, logit_scale=logit_scale, bn_weight=bn_weight,
                                         first_bn_multiplier=first_bn_multiplier, tv_weight=tv_weight,
                                         l2_weight=l2_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    x.copy_(torch.maximum(torch.minimum(x, hi[:, :channels]), lo[:, :channels]))
            with torch.no_grad():
                final = x.detach().expand(-1, 3, -1, -1) if grayscale else x.detach()
                p = (stop_logit_scale * synthetic._encode(model, final, "fp32") @ weights.T).softmax(-1)
            out["x"].append(final.clone())
            out["probs"].append(p.gather(1, y.view(-1, 1)).flatten().cpu())
            out.setdefault("hit", []).append((p.argmax(1) == y).cpu())
    probs = torch.cat(out["probs"])
    reached = torch.cat(out["hit"]) & (probs > thr)
    names = list(classnames) if classnames is not None else [str(c) for c in range(weights.shape[0])]
    return synthetic.SyntheticSet(torch.cat(out["x"]), targets, classnames=names, probs=probs,
                                  steps_taken=torch.full((len(targets),), steps, dtype=torch.long), reached=reached,
                                  thresholds=thr)


def generate_with_prior(model, text_weights: torch.Tensor, *, prior: str = "none", prior_settings: dict | None = None,
                        **generation) -> synthetic.SyntheticSet:
    """Return the synthetic set of ``prior`` (:data:`SYNTHETIC_PRIORS`): paper B's ascent, or the BatchNorm prior.

    ``generation``: :func:`clipunlearn.synthetic.generate_synthetic`'s keywords; the BatchNorm prior takes
    the shared ones (classes, sizes, normalisation, thresholds, seed, device) and ``prior_settings``
    (:func:`generate_bn_prior`'s ``steps``, ``lr``, weights, ``jitter``, ``flip``).
    """
    if prior not in SYNTHETIC_PRIORS:
        raise ValueError(f"unknown synthetic prior {prior!r}; valid: {', '.join(SYNTHETIC_PRIORS)}")
    if prior == "none":
        return synthetic.generate_synthetic(model, text_weights, **generation)
    shared = {k: v for k, v in generation.items() if k in (
        "classes", "classnames", "n_per_class", "image_size", "mean", "std", "thresholds", "grayscale", "seed",
        "device", "logit_scale", "stop_logit_scale", "batch_size")}
    return generate_bn_prior(model, text_weights, **shared, **(prior_settings or {}))


def feature_statistics_distance(model, images: torch.Tensor, reference: torch.Tensor) -> float:
    """Return ``sum_l ||mu_l(images) - mu_l(reference)||_2 + ||var_l(images) - var_l(reference)||_2``.

    The statistics of every BatchNorm input of the image tower (:func:`_statistics`), compared
    between two image batches (e.g. synthetic and real images of a class) instead of against the
    running statistics. The model is left as it is (use it in eval mode).
    """
    with torch.no_grad():
        _, ours = _statistics(model, images)
        _, theirs = _statistics(model, reference)
    return float(sum(torch.linalg.vector_norm(a[0] - b[0]) + torch.linalg.vector_norm(a[1] - b[1])
                     for a, b in zip(ours, theirs)))


def split_priors(records) -> list[dict]:
    """Return ``records`` with every ``lipschitz_synthetic`` record of a prior other than ``"none"`` renamed
    :data:`PRIOR_VARIANT` (a copy), so that tables and figures show the two kinds of synthetic images apart:
    ``report.label_variants``, the one renaming the README's tables use too."""
    return label_variants(records)
