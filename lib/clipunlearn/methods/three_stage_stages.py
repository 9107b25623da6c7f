"""The stages of paper A's three-stage unlearning, each on its own: forgetting on the chosen layers
(relative Fisher, LoRA), reminding (BatchNorm alignment of the retain images, contrastive fine-tuning with
distillation and an EMA of the weights) and restoring (souping with the original, alpha on a calibration set).
:func:`clipunlearn.methods.three_stage.three_stage_unlearn` runs them in turn.
"""

from __future__ import annotations

import hashlib
import math
import time
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import layers as layer_scores
from ..clip import RequiresGrad, get_normalization, make_adamw, to_device
from ..lora import add_lora, has_lora, lora_parameters, lora_targets, merge_lora
from ..losses import contrastive_loss, encode_pairs, lipschitz_bounds, pair_positives
from ..metrics import round_score
from ..souping import interpolate_state_dicts, select_alpha
from ..unlearning import _cycle


LAYER_CHOICES = ("fisher", "all", "random")


def content_key(*parts) -> str:
    """Return a SHA-1 of tensors (shape, dtype and bytes) and plain values: a cache key for data-only results.

    Every piece enters with its length in front, so that no two different sequences of parts hash the
    same bytes (without it ``content_key(0.5, 11) == content_key(0.51, 1)``).
    """
    h = hashlib.sha1()

    def add(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    for part in parts:
        if torch.is_tensor(part):
            t = part.detach().cpu().contiguous()
            add(f"tensor{tuple(t.shape)}{t.dtype}".encode())
            add(t.view(-1).view(torch.uint8).numpy().tobytes())
        else:
            add(repr(part).encode())
    return h.hexdigest()

def mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    """Return the step-wise mean of ``curves`` of any lengths, each held at its last value after it ends."""
    curves = [list(c) for c in curves if len(c)]
    if not curves:
        return []
    n = max(len(c) for c in curves)
    return [sum(c[min(i, len(c) - 1)] for c in curves) / len(curves) for i in range(n)]

def _layer_tensors(model, names: Sequence[str]) -> list[str]:
    """Return the plain parameter names (``state_dict`` keys) of the modules ``names``."""
    out = []
    for name in names:
        for sub, _ in model.get_submodule(name).named_parameters():
            out.append(f"{name}.{sub}")
    return out

def _read_tensor(model, key: str) -> torch.Tensor:
    """Return the current value of parameter ``key``, through any LoRA parametrization (``W + BA``)."""
    owner, _, attr = key.rpartition(".")
    return getattr(model.get_submodule(owner) if owner else model, attr)

# --------------------------------------------------------------------------- #
# Which layers
# --------------------------------------------------------------------------- #
def candidate_layers(model, *, encoders: Sequence[str] = ("image", "text")) -> list[str]:
    """Return the layers paper A may tune: adaptable modules (``lora.lora_targets``) of the given encoders.

    Project's choice: the same candidates with and without LoRA (``nn.Linear``,
    ``nn.Conv2d``, ``nn.MultiheadAttention``; normalisation layers, embeddings and the
    final projections are never tuned), so the "without LoRA" ablation changes only
    how the chosen layers are updated.
    """
    unknown = set(encoders) - {"image", "text"}
    if unknown:
        raise ValueError(f"unknown encoders {sorted(unknown)}; valid: image, text")
    return [n for n in lora_targets(model) if layer_scores.encoder_of(f"{n}.weight") in encoders]

def choose_layers(scores: dict[str, float] | None, candidates: Sequence[str], *, n_layers: int,
                  layer_choice: str = "fisher", seed: int = 0) -> list[str]:
    """Return the layers to tune: top ``n_layers`` by score, all candidates, or ``n_layers`` at random (seeded)."""
    if layer_choice not in LAYER_CHOICES:
        raise ValueError(f"unknown layer_choice {layer_choice!r}; valid: {', '.join(LAYER_CHOICES)}")
    if layer_choice == "all":
        return list(candidates)
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    if layer_choice == "random":
        g = torch.Generator().manual_seed(seed)
        picked = torch.randperm(len(candidates), generator=g)[:n_layers].sort().values
        return [candidates[i] for i in picked.tolist()]
    if scores is None:
        raise ValueError("layer_choice='fisher' needs the layer scores")
    return sorted(candidates, key=lambda n: -scores.get(n, float("-inf")))[:n_layers]

# --------------------------------------------------------------------------- #
# Stage 1: forgetting
# --------------------------------------------------------------------------- #
def pair_similarities(model, batch: dict) -> torch.Tensor:
    """Return each pair's cosine similarity ``[B]`` between image ``i`` and its caption ``i``."""
    img, txt = encode_pairs(model, batch)
    return (img * txt).sum(-1)

def _trainable(model, layers: Sequence[str], *, use_lora: bool, rank: int, lora_alpha: float | None):
    """Unfreeze only ``layers`` (LoRA adapters or their full weights); return the parameters to optimise."""
    if use_lora:
        add_lora(model, layers, rank=rank, alpha=lora_alpha)
        return lora_parameters(model)
    keep = set(_layer_tensors(model, layers))
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
    return [p for n, p in model.named_parameters() if n in keep]

FORGET_CRITERIA = ("per_sample", "mean")


def forget_loss(sims: torch.Tensor, *, margin: float, criterion: str = "per_sample") -> torch.Tensor:
    """Return the forgetting loss of the pair similarities ``sims``: their mean (``"mean"``), or per sample
    (``"per_sample"``, paper A's condition ``s_i < delta``) the mean of ``max(s_i - margin, 0)``: a pair already
    below the threshold ``margin`` is not pushed further."""
    if criterion not in FORGET_CRITERIA:
        raise ValueError(f"unknown forget criterion {criterion!r}; valid: {', '.join(FORGET_CRITERIA)}")
    return sims.mean() if criterion == "mean" else (sims - margin).clamp_min(0).mean()


def forget_stage(model, *, forget_loader, retain_loader=None, layers: Sequence[str], margin: float = 0.0,
                 lr: float = 1e-3, max_steps: int = 50, use_lora: bool = True, rank: int = 4,
                 lora_alpha: float | None = None, weight_decay: float = 0.0, retain_weight: float = 0.0,
                 criterion: str = "mean", device="cpu", progress: bool = False) -> dict:
    """Lower the forget pairs' image-text similarity by tuning only ``layers``; return what happened.

    Its own loop, not ``unlearning.unlearn``: a stop check on the next batch before each step and adapters made
    and merged here (``docs/ARCHITECTURE.md``, "Loops outside the one loop").

    Loss: :func:`forget_loss` of the cosine similarity of each forget image with its caption
    (``+ retain_weight *`` the label-aware CLIP loss on a retain batch; project's
    choice ``retain_weight=0``: the paper leaves retention to the reminding stage).
    AdamW on the LoRA adapters (``use_lora``; merged into the weights at the end) or on
    the layers' full weights. Stop rule: before each step the next forget batch is measured; with
    ``criterion="per_sample"`` (paper A's) the stage stops once *every* pair's similarity is below ``margin``
    (the paper's delta), with ``"mean"`` (this function's default; ``three_stage_unlearn`` passes its setting) once
    their mean is; or after ``max_steps`` updates. The history holds the mean similarity and, per sample, the
    largest (``max_similarity``). The model stays in eval mode and comes
    back plain (no adapters) with its ``requires_grad`` flags unchanged.
    Returns ``{"steps", "stopped", "similarity_before", "similarity_after", "history"}``.
    """
    if retain_weight and retain_loader is None:
        raise ValueError("retain_weight > 0 needs a retain_loader")
    if criterion not in FORGET_CRITERIA:
        raise ValueError(f"unknown forget criterion {criterion!r}; valid: {', '.join(FORGET_CRITERIA)}")
    model.eval()
    history, stopped, steps = [], "max_steps", 0
    forget_iter = _cycle(forget_loader)
    retain_iter = _cycle(retain_loader) if retain_weight else None
    bar = tqdm(total=max_steps, desc="forget", leave=False, disable=not progress)
    with RequiresGrad(model):
        params = _trainable(model, layers, use_lora=use_lora, rank=rank, lora_alpha=lora_alpha)
        optimizer = make_adamw(params, lr=lr, weight_decay=weight_decay)
        try:
            while True:
                batch = to_device(next(forget_iter), device)
                sims = pair_similarities(model, batch)
                loss = forget_loss(sims, margin=margin, criterion=criterion)
                history.append({"step": steps, "similarity": float(sims.detach().mean())})
                if criterion == "per_sample":
                    history[-1]["max_similarity"] = float(sims.detach().max())
                if history[-1]["max_similarity" if criterion == "per_sample" else "similarity"] < margin:
                    stopped = "margin"
                    break
                if steps >= max_steps:
                    break
                if retain_iter is not None:
                    retain = to_device(next(retain_iter), device)
                    img, txt = encode_pairs(model, retain)
                    retain_loss = contrastive_loss(img, txt, model.logit_scale.exp(),
                                                   positives=pair_positives(retain["labels"]))
                    loss = loss + retain_weight * retain_loss
                    history[-1]["retain_loss"] = float(retain_loss.detach())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                bar.update()
        finally:
            bar.close()
            if has_lora(model):
                merge_lora(model)
    return {"steps": steps, "stopped": stopped, "similarity_before": history[0]["similarity"],
            "similarity_after": history[-1]["similarity"], "history": history}

# --------------------------------------------------------------------------- #
# Stage 2a: alignment to the BatchNorm statistics
# --------------------------------------------------------------------------- #
def batchnorm_layers(model) -> list[tuple[str, torch.nn.Module]]:
    """Return the image tower's 2-d batch-norm layers (modules with running mean / var), in forward order."""
    return [(n, m) for n, m in model.visual.named_modules()
            if isinstance(m, torch.nn.BatchNorm2d) or type(m).__name__ == "FrozenBatchNorm2d"]

def alignment_loss(model, images: torch.Tensor, *, per_sample: bool = False) -> torch.Tensor:
    """Return ``sum_l |mu_l - BN_mu_l|_1 + |sigma_l - BN_sigma_l|_1`` over the image tower's BatchNorm layers.

    ``mu_l`` / ``sigma_l``: per-channel mean and standard deviation (over batch and
    space; with ``per_sample``, paper A's ``mu_l(x_i + delta_i)``, over space for each image, the sum then
    averaged over the images) of the features entering BatchNorm ``l`` (forward pre-hooks);
    ``BN_mu_l`` / ``BN_sigma_l``: its running mean and ``sqrt(running_var + eps)``. Raises
    a ValueError for an image tower without BatchNorm (a ViT).
    """
    bns = batchnorm_layers(model)
    if not bns:
        raise ValueError("the image tower has no BatchNorm layers (a ViT?): alignment needs running statistics; "
                         "run three_stage_unlearn with align=False or on a ResNet tower")
    terms, seen = [], set()

    dims = (2, 3) if per_sample else (0, 2, 3)

    def hook(module, inputs):
        x = inputs[0].float()
        mu = x.mean(dim=dims)
        sigma = (x.var(dim=dims, unbiased=False) + module.eps).sqrt()
        gap = (mu - module.running_mean).abs() + (sigma - (module.running_var + module.eps).sqrt()).abs()
        terms.append(gap.sum(-1).mean() if per_sample else gap.sum())
        seen.add(id(module))
        if len(seen) == len(bns):  # the rest of the tower (the attention pool) adds nothing to the loss
            raise _AllStatisticsRead

    handles = [m.register_forward_pre_hook(hook) for _, m in bns]
    try:
        model.encode_image(images)
    except _AllStatisticsRead:
        pass
    finally:
        for h in handles:
            h.remove()
    return torch.stack(terms).sum()


class _AllStatisticsRead(Exception):
    """Raised by :func:`alignment_loss`'s last BatchNorm hook to skip the rest of the forward pass."""

def align_images(model, images: torch.Tensor, *, eps: float = 8 / 255, steps: int = 10, lr: float = 2 / 255,
                 per_sample: bool = False, tol: float = 0.0, patience: int = 3,
                 device="cpu") -> tuple[torch.Tensor, dict]:
    """Return ``(aligned images, {"loss_before", "loss_after", "curve", "steps"})``: ``images + delta`` minimising
    :func:`alignment_loss` (``per_sample``: each image's own statistics, a ``delta_i`` per image).

    ``delta`` is learnt with Adam (at most ``steps`` steps, learning rate ``lr`` in pixel units); with
    ``tol > 0`` it stops once the loss has not fallen below ``(1 - tol)`` times its best for ``patience`` steps
    (converged); ``curve`` is the loss before each step and at the end. ``delta`` is bounded in pixel units,
    ``||delta||_inf <= eps`` of the [0, 1] pixel range (project's choice: 8/255, as in adversarial-perturbation
    work), then mapped to model space with the model's normalisation; aligned images stay in the valid pixel
    range. ``model`` is
    not changed (use the original model: its statistics define the pre-training
    distribution).
    """
    model.eval()
    images = images.to(device)
    _, std = get_normalization(model)
    scale = torch.tensor(std, device=device, dtype=images.dtype).view(1, -1, 1, 1)
    lo, hi = lipschitz_bounds(model, device=device)
    delta = torch.zeros_like(images, requires_grad=True)  # pixel units
    optimizer = torch.optim.Adam([delta], lr=lr)

    def apply(d):
        return torch.maximum(torch.minimum(images + d / scale, hi), lo)

    curve, best, stale = [], math.inf, 0
    loss_fn = partial(alignment_loss, per_sample=True) if per_sample else alignment_loss
    for _ in range(steps):
        loss = loss_fn(model, apply(delta))
        curve.append(float(loss.detach()))  # delta = 0 at the first step
        if tol > 0:
            stale = 0 if curve[-1] < (1 - tol) * best else stale + 1
            best = min(best, curve[-1])
            if stale >= patience:
                break
        (grad,) = torch.autograd.grad(loss, [delta])
        optimizer.zero_grad(set_to_none=True)
        delta.grad = grad
        optimizer.step()
        with torch.no_grad():
            delta.clamp_(-eps, eps)
    with torch.no_grad():
        aligned = apply(delta)
        after = float(loss_fn(model, aligned))
    curve.append(after)
    return aligned.detach(), {"loss_before": curve[0], "loss_after": after, "curve": curve, "steps": len(curve) - 1}

# --------------------------------------------------------------------------- #
# Stage 2b: reminding (contrastive + distillation + EMA)
# --------------------------------------------------------------------------- #
def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Return ``T^2 * KL(softmax(teacher / T) || softmax(logits / T))`` per row, averaged (Hinton et al.)."""
    t = temperature
    return t * t * F.kl_div((logits / t).log_softmax(1), (teacher_logits / t).log_softmax(1), log_target=True,
                            reduction="batchmean")

def teacher_logits(original, batch: dict, *, cache: dict | None = None) -> tuple[torch.Tensor, float]:
    """Return ``(logit_scale * cos)`` of ``original``'s in-batch image-to-text similarities on ``batch`` (the
    distillation target of :func:`remind_loss`) and the seconds ``cache`` saved: a dict of runs that share
    ``original`` (``three_stage_unlearn``'s ``cache``; the runs of a grid remind on the same batches) keeps it by
    the batch's content, computed once (the same numbers)."""
    key = ("teacher", content_key(batch["images"], batch["texts"])) if cache is not None else None
    if key is not None and key in cache:
        return cache[key]
    t0 = time.perf_counter()
    with torch.no_grad():
        img_o, txt_o = encode_pairs(original, batch)
        teacher = original.logit_scale.exp() * img_o @ txt_o.T
    if key is not None:
        cache[key] = (teacher, time.perf_counter() - t0)
    return teacher, 0.0


def remind_loss(model, original, batch: dict, *, kd_weight: float = 1.0, kd_temperature: float = 1.0,
                distill_batch: dict | None = None, teacher: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Return the reminding loss on a retain batch and its parts: contrastive ``+ kd_weight *`` distillation.

    Contrastive: ``losses.contrastive_loss`` with label-aware positives. Distillation
    (project's choice of target): the original model's in-batch image-to-text
    distribution, ``softmax(logit_scale * cos)`` over the batch's captions, taught to
    the model with :func:`distillation_loss` at ``kd_temperature``, on ``distill_batch`` when given (a
    style subgroup: the other classes' photos), else on ``batch``; ``teacher``: its logits there, when known
    (:func:`teacher_logits`).
    """
    img, txt = encode_pairs(model, batch)
    contrastive = contrastive_loss(img, txt, model.logit_scale.exp(), positives=pair_positives(batch["labels"]))
    if not kd_weight:
        return contrastive, {"contrastive": float(contrastive.detach()), "kd": 0.0}
    if distill_batch is not None:
        batch = distill_batch
        img, txt = encode_pairs(model, batch)
    logits = model.logit_scale.exp() * img @ txt.T
    if teacher is None:
        teacher, _ = teacher_logits(original, batch)
    kd = distillation_loss(logits, teacher, temperature=kd_temperature)
    return contrastive + kd_weight * kd, {"contrastive": float(contrastive.detach()), "kd": float(kd.detach())}

def remind_stage(model, *, original, retain_loader, layers: Sequence[str], lr: float = 1e-4, steps: int = 30,
                 kd_weight: float = 1.0, kd_temperature: float = 1.0, ema_decay: float = 0.9, use_lora: bool = True,
                 rank: int = 4, lora_alpha: float | None = None, weight_decay: float = 0.0,
                 align_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, distill_loader=None,
                 teacher_cache: dict | None = None, device="cpu", progress: bool = False) -> dict:
    """Fine-tune ``layers`` on retain pairs with :func:`remind_loss`; leave the model at the EMA weights.

    Its own loop, not ``unlearning.unlearn``: a weight average after every step replaces the weights at the end,
    and each batch may be aligned first (``docs/ARCHITECTURE.md``, "Loops outside the one loop").

    ``align_fn(images) -> images`` (e.g. :func:`align_images` on the original model)
    transforms each retain batch first. ``distill_loader``: batches the distillation term is computed on
    instead of the retain batch (:func:`remind_loss`; ``teacher_cache``: see :func:`teacher_logits`). Trains the
    same kind of parameters as the forgetting stage (fresh LoRA adapters, merged at the end, or full weights). The
    EMA (project's choice: of the *effective* weights of ``layers``, i.e. ``W + BA``
    under LoRA, ``ema <- decay * ema + (1 - decay) * W`` after every step, started at
    the weights before the stage) replaces the weights at the end; ``ema_decay=0``
    keeps the last weights. ``kd_weight=0`` turns distillation off.
    Returns ``{"steps", "loss_before", "loss_after", "history"}`` (``loss_*``: the first and last batch's loss),
    with a ``teacher_cache`` also ``"teacher_reused_seconds"`` (what its hits saved).
    """
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    model.eval()
    original.eval()
    keys = _layer_tensors(model, layers)
    ema = {k: _read_tensor(model, k).detach().clone() for k in keys}
    history, reused = [], 0.0
    retain_iter = _cycle(retain_loader)
    distill_iter = _cycle(distill_loader) if distill_loader is not None and kd_weight else None
    bar = tqdm(total=steps, desc="remind", leave=False, disable=not progress)
    with RequiresGrad(model):
        params = _trainable(model, layers, use_lora=use_lora, rank=rank, lora_alpha=lora_alpha)
        optimizer = make_adamw(params, lr=lr, weight_decay=weight_decay)
        try:
            for step in range(steps):
                batch = to_device(next(retain_iter), device)
                if align_fn is not None:
                    batch = {**batch, "images": align_fn(batch["images"])}
                extra = {"distill_batch": to_device(next(distill_iter), device)} if distill_iter is not None else {}
                if kd_weight and teacher_cache is not None:
                    extra["teacher"], saved = teacher_logits(original, extra.get("distill_batch", batch),
                                                             cache=teacher_cache)
                    reused += saved
                loss, logs = remind_loss(model, original, batch, kd_weight=kd_weight, kd_temperature=kd_temperature,
                                         **extra)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    for k in keys:
                        ema[k].mul_(ema_decay).add_(_read_tensor(model, k).detach(), alpha=1.0 - ema_decay)
                history.append({"step": step + 1, "loss": float(loss.detach()), **logs})
                bar.update()
        finally:
            bar.close()
            if has_lora(model):
                merge_lora(model)
    with torch.no_grad():
        for k in keys:
            _read_tensor(model, k).copy_(ema[k])
    return {"steps": len(history), "loss_before": history[0]["loss"] if history else math.nan,
            "loss_after": history[-1]["loss"] if history else math.nan, "history": history,
            **({"teacher_reused_seconds": reused} if teacher_cache is not None else {})}

# --------------------------------------------------------------------------- #
# Stage 3: restoring by souping
# --------------------------------------------------------------------------- #
def restore_stage(model, *, original_state: dict, unlearned_state: dict, calib_fn: Callable[[torch.nn.Module], dict],
                  alphas: Sequence[float], max_forget: float = 0.05, forget_key: str = "forget_acc",
                  retain_key: str | Sequence[str] = "retain_acc") -> dict:
    """Score ``alpha * unlearned + (1 - alpha) * original`` for each alpha and load the chosen soup into ``model``.

    ``calib_fn(model) -> dict`` evaluates on a calibration set; the choice is
    ``souping.select_alpha`` (largest retained accuracy with forget accuracy <=
    ``max_forget``). Returns ``{"alpha", "alpha_curve": [{"alpha", **metrics}], "metrics", "fallback"}``
    (``fallback``: no alpha met ``max_forget``, the one that forgets most was kept).
    """
    curve = []
    for alpha in alphas:
        model.load_state_dict(interpolate_state_dicts(original_state, unlearned_state, float(alpha)))
        model.eval()
        curve.append({"alpha": float(alpha), **calib_fn(model)})
    alpha = select_alpha(curve, forget_key=forget_key, retain_key=retain_key, max_forget=max_forget)
    model.load_state_dict(interpolate_state_dicts(original_state, unlearned_state, alpha))
    model.eval()
    met = any(round_score(t[forget_key]) <= max_forget for t in curve)
    return {"alpha": alpha, "alpha_curve": curve, "metrics": next(t for t in curve if t["alpha"] == alpha),
            "fallback": not met}
