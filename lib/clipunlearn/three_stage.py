"""Paper A's three-stage subgroup unlearning: forget, remind, restore.

*Targeted Forgetting of Image Subgroups in CLIP Models* (arXiv 2506.03117, CVPR 2025)
has no public code; this module follows its description (``docs/PAPERS.md``) and names
every detail it had to choose as the "project's choice", always as a keyword argument.

1. **Forgetting** (:func:`forget_stage`): rank the layers by relative Fisher information
   of the image-text similarity (``layers.relative_fisher_scores``), adapt only the top
   ``n_layers`` (LoRA, ``lora.add_lora``, or full fine-tuning) and lower the cosine
   similarity of the forget pairs to their class text until it falls below ``margin``.
2. **Reminding**: (a) *alignment* (:func:`align_images`): small bounded input
   perturbations make the retain images' feature statistics at every BatchNorm match its
   running statistics; (b) (:func:`remind_stage`) label-aware CLIP contrastive
   fine-tuning on the (aligned) retain pairs plus distillation from the original model,
   keeping an exponential moving average (EMA) of the weights.
3. **Restoring** (:func:`restore_stage`): souping ``alpha * theta_unlearned +
   (1 - alpha) * theta_original``, alpha chosen on a calibration set
   (``souping.select_alpha``).

:func:`three_stage_unlearn` runs all three with the paper's ablation switches. The
model stays in eval mode throughout: BatchNorm running statistics are never updated.

Notebook 30's settings per profile and its model, data and tasks: :func:`paper_a_settings`,
:func:`load_paper_a_tasks`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import data, harness, models
from . import layers as layer_scores
from .configs import load_paper_config, mini_settings, parse_seeds, split_names
from .losses import contrastive_loss, encode_pairs, lipschitz_bounds, pair_positives
from .lora import add_lora, has_lora, lora_parameters, lora_targets, merge_lora
from .clip import RequiresGrad, copy_frozen, get_normalization, make_adamw, to_device
from .paths import check_profile
from .report import summarise
from .souping import interpolate_state_dicts, select_alpha
from .unlearning import _cycle

#: Paper A's ablations: method name -> switches of ``three_stage.three_stage_unlearn`` (variant = name after "-").
THREE_STAGE_ABLATIONS = {
    "three_stage-no_fisher_all": {"layer_choice": "all"},
    "three_stage-no_fisher_random": {"layer_choice": "random"},
    "three_stage-no_align": {"align": False},
    "three_stage-no_distill": {"distill": False},
    "three_stage-no_soup": {"soup": False},
    "three_stage-no_lora": {"use_lora": False},
    "three_stage-text_only": {"encoders": ("text",)},
    "three_stage-long_remind": {"remind_steps": 60},
}
#: Paper A's ablation table (relative Fisher, alignment, distillation, souping, LoRA); the other variants of
#: :data:`THREE_STAGE_ABLATIONS` change a project's choice: the text tower's layers only (both towers by
#: default), and 60 reminding steps (30 by default).
THREE_STAGE_PAPER_ABLATIONS = ("three_stage-no_fisher_all", "three_stage-no_fisher_random", "three_stage-no_align",
                               "three_stage-no_distill", "three_stage-no_soup", "three_stage-no_lora")
__all__ = [
    "LAYER_CHOICES", "ThreeStageResult", "candidate_layers", "choose_layers", "pair_similarities", "forget_stage",
    "batchnorm_layers", "alignment_loss", "align_images", "distillation_loss", "remind_loss", "remind_stage",
    "restore_stage", "three_stage_unlearn", "content_key", "loader_key", "PAPER_A_BASELINES",
    "MINI_STYLE_ABLATIONS", "parse_subgroups", "paper_a_settings", "load_paper_a_tasks", "paper_a_targets",
]

LAYER_CHOICES = ("fisher", "all", "random")


def _layer_tensors(model, names: Sequence[str]) -> list[str]:
    """Return the plain parameter names (``state_dict`` keys) of the modules ``names``."""
    out = []
    for name in names:
        for sub, _ in model.get_submodule(name).named_parameters():
            out.append(f"{name}.{sub}")
    return out


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


def forget_stage(model, *, forget_loader, retain_loader=None, layers: Sequence[str], margin: float = 0.0,
                 lr: float = 1e-3, max_steps: int = 50, use_lora: bool = True, rank: int = 4,
                 lora_alpha: float | None = None, weight_decay: float = 0.0, retain_weight: float = 0.0,
                 device="cpu", progress: bool = False) -> dict:
    """Lower the forget pairs' image-text similarity by tuning only ``layers``; return what happened.

    Loss: the mean cosine similarity of each forget image with its class caption
    (``+ retain_weight *`` the label-aware CLIP loss on a retain batch; project's
    choice ``retain_weight=0``: the paper leaves retention to the reminding stage).
    AdamW on the LoRA adapters (``use_lora``; merged into the weights at the end) or on
    the layers' full weights. Stop rule (project's choice): before each step the mean
    similarity of the next forget batch is measured; the stage stops once it is below
    ``margin``, or after ``max_steps`` updates. The model stays in eval mode and comes
    back plain (no adapters) with its ``requires_grad`` flags unchanged.
    Returns ``{"steps", "stopped", "similarity_before", "similarity_after", "history"}``.
    """
    if retain_weight and retain_loader is None:
        raise ValueError("retain_weight > 0 needs a retain_loader")
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
                loss = sims.mean()
                history.append({"step": steps, "similarity": float(loss.detach())})
                if history[-1]["similarity"] < margin:
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


def alignment_loss(model, images: torch.Tensor) -> torch.Tensor:
    """Return ``sum_l |mu_l - BN_mu_l|_1 + |sigma_l - BN_sigma_l|_1`` over the image tower's BatchNorm layers.

    ``mu_l`` / ``sigma_l``: per-channel mean and standard deviation (over batch and
    space) of the features entering BatchNorm ``l`` (forward pre-hooks);
    ``BN_mu_l`` / ``BN_sigma_l``: its running mean and ``sqrt(running_var + eps)``. Raises
    a ValueError for an image tower without BatchNorm (a ViT).
    """
    bns = batchnorm_layers(model)
    if not bns:
        raise ValueError("the image tower has no BatchNorm layers (a ViT?): alignment needs running statistics; "
                         "run three_stage_unlearn with align=False or on a ResNet tower")
    terms = []

    def hook(module, inputs):
        x = inputs[0].float()
        mu = x.mean(dim=(0, 2, 3))
        sigma = (x.var(dim=(0, 2, 3), unbiased=False) + module.eps).sqrt()
        terms.append((mu - module.running_mean).abs().sum()
                     + (sigma - (module.running_var + module.eps).sqrt()).abs().sum())

    handles = [m.register_forward_pre_hook(hook) for _, m in bns]
    try:
        model.encode_image(images)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(terms).sum()


def align_images(model, images: torch.Tensor, *, eps: float = 8 / 255, steps: int = 10, lr: float = 2 / 255,
                 device="cpu") -> tuple[torch.Tensor, dict]:
    """Return ``(aligned images, {"loss_before", "loss_after"})``: ``images + delta`` minimising :func:`alignment_loss`.

    ``delta`` is learnt with Adam (``steps`` steps, learning rate ``lr`` in pixel units)
    and bounded in pixel units, ``||delta||_inf <= eps`` of the [0, 1] pixel range (project's choice:
    8/255, as in adversarial-perturbation work), then mapped to model space with the
    model's normalisation; aligned images stay in the valid pixel range. ``model`` is
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
    apply = lambda d: torch.maximum(torch.minimum(images + d / scale, hi), lo)
    before = None
    for _ in range(steps):
        loss = alignment_loss(model, apply(delta))
        before = float(loss.detach()) if before is None else before  # delta = 0 at the first step
        (grad,) = torch.autograd.grad(loss, [delta])
        optimizer.zero_grad(set_to_none=True)
        delta.grad = grad
        optimizer.step()
        with torch.no_grad():
            delta.clamp_(-eps, eps)
    with torch.no_grad():
        aligned = apply(delta)
        after = float(alignment_loss(model, aligned))
    return aligned.detach(), {"loss_before": after if before is None else before, "loss_after": after}


# --------------------------------------------------------------------------- #
# Stage 2b: reminding (contrastive + distillation + EMA)
# --------------------------------------------------------------------------- #
def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """Return ``T^2 * KL(softmax(teacher / T) || softmax(logits / T))`` per row, averaged (Hinton et al.)."""
    t = temperature
    return t * t * F.kl_div((logits / t).log_softmax(1), (teacher_logits / t).log_softmax(1), log_target=True,
                            reduction="batchmean")


def remind_loss(model, original, batch: dict, *, kd_weight: float = 1.0,
                kd_temperature: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Return the reminding loss on a retain batch and its parts: contrastive ``+ kd_weight *`` distillation.

    Contrastive: ``losses.contrastive_loss`` with label-aware positives. Distillation
    (project's choice of target): the original model's in-batch image-to-text
    distribution, ``softmax(logit_scale * cos)`` over the batch's captions, taught to
    the model with :func:`distillation_loss` at ``kd_temperature``.
    """
    img, txt = encode_pairs(model, batch)
    logits = model.logit_scale.exp() * img @ txt.T
    contrastive = contrastive_loss(img, txt, model.logit_scale.exp(), positives=pair_positives(batch["labels"]))
    if not kd_weight:
        return contrastive, {"contrastive": float(contrastive.detach()), "kd": 0.0}
    with torch.no_grad():
        img_o, txt_o = encode_pairs(original, batch)
        teacher = original.logit_scale.exp() * img_o @ txt_o.T
    kd = distillation_loss(logits, teacher, temperature=kd_temperature)
    return contrastive + kd_weight * kd, {"contrastive": float(contrastive.detach()), "kd": float(kd.detach())}


def remind_stage(model, *, original, retain_loader, layers: Sequence[str], lr: float = 1e-4, steps: int = 30,
                 kd_weight: float = 1.0, kd_temperature: float = 1.0, ema_decay: float = 0.9, use_lora: bool = True,
                 rank: int = 4, lora_alpha: float | None = None, weight_decay: float = 0.0,
                 align_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, device="cpu",
                 progress: bool = False) -> dict:
    """Fine-tune ``layers`` on retain pairs with :func:`remind_loss`; leave the model at the EMA weights.

    ``align_fn(images) -> images`` (e.g. :func:`align_images` on the original model)
    transforms each retain batch first. Trains the same kind of parameters as the
    forgetting stage (fresh LoRA adapters, merged at the end, or full weights). The
    EMA (project's choice: of the *effective* weights of ``layers``, i.e. ``W + BA``
    under LoRA, ``ema <- decay * ema + (1 - decay) * W`` after every step, started at
    the weights before the stage) replaces the weights at the end; ``ema_decay=0``
    keeps the last weights. ``kd_weight=0`` turns distillation off.
    Returns ``{"steps", "loss_before", "loss_after", "history"}`` (``loss_*``: the
    first and last batch's loss).
    """
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    model.eval()
    original.eval()
    keys = _layer_tensors(model, layers)
    ema = {k: _read_tensor(model, k).detach().clone() for k in keys}
    history = []
    retain_iter = _cycle(retain_loader)
    bar = tqdm(total=steps, desc="remind", leave=False, disable=not progress)
    with RequiresGrad(model):
        params = _trainable(model, layers, use_lora=use_lora, rank=rank, lora_alpha=lora_alpha)
        optimizer = make_adamw(params, lr=lr, weight_decay=weight_decay)
        try:
            for step in range(steps):
                batch = to_device(next(retain_iter), device)
                if align_fn is not None:
                    batch = {**batch, "images": align_fn(batch["images"])}
                loss, logs = remind_loss(model, original, batch, kd_weight=kd_weight, kd_temperature=kd_temperature)
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
            "loss_after": history[-1]["loss"] if history else math.nan, "history": history}


# --------------------------------------------------------------------------- #
# Stage 3: restoring by souping
# --------------------------------------------------------------------------- #
def restore_stage(model, *, original_state: dict, unlearned_state: dict, calib_fn: Callable[[torch.nn.Module], dict],
                  alphas: Sequence[float], max_forget: float = 0.05, forget_key: str = "forget_acc",
                  retain_key: str | Sequence[str] = "retain_acc") -> dict:
    """Score ``alpha * unlearned + (1 - alpha) * original`` for each alpha and load the chosen soup into ``model``.

    ``calib_fn(model) -> dict`` evaluates on a calibration set; the choice is
    ``souping.select_alpha`` (largest retained accuracy with forget accuracy <=
    ``max_forget``). Returns ``{"alpha", "alpha_curve": [{"alpha", **metrics}], "metrics"}``.
    """
    curve = []
    for alpha in alphas:
        model.load_state_dict(interpolate_state_dicts(original_state, unlearned_state, float(alpha)))
        model.eval()
        curve.append({"alpha": float(alpha), **calib_fn(model)})
    alpha = select_alpha(curve, forget_key=forget_key, retain_key=retain_key, max_forget=max_forget)
    model.load_state_dict(interpolate_state_dicts(original_state, unlearned_state, alpha))
    model.eval()
    return {"alpha": alpha, "alpha_curve": curve, "metrics": next(t for t in curve if t["alpha"] == alpha)}


# --------------------------------------------------------------------------- #
# The whole method
# --------------------------------------------------------------------------- #
@dataclass
class ThreeStageResult:
    """What :func:`three_stage_unlearn` did, stage by stage (``to_dict`` for JSON records)."""

    layer_scores: dict = field(default_factory=dict)  # layer -> relative Fisher, high to low ({} unless "fisher")
    layers: list = field(default_factory=list)  # the layers tuned in both training stages
    forget: dict = field(default_factory=dict)  # forget_stage's report
    alignment: dict = field(default_factory=dict)  # {"loss_before", "loss_after", "batches"} or {"skipped": why}
    remind: dict = field(default_factory=dict)  # remind_stage's report ({"skipped": ...} with remind_steps=0)
    alpha_curve: list = field(default_factory=list)  # [{"alpha", **calib_fn(model)}]
    alpha: float = 1.0  # weight of the unlearned model in the final soup
    metrics: dict = field(default_factory=dict)  # calib_fn of the final model (empty without calib_fn)
    stages: dict = field(default_factory=dict)  # stage_fn after each stage: {"forget", "remind", "restore"}
    reused: list = field(default_factory=list)  # what came from the cache: "fisher", "forget", "align", "remind"
    seconds: dict = field(default_factory=dict)  # per stage: fisher, forget, align, remind, restore, total
    config: dict = field(default_factory=dict)  # the hyper-parameters of the run

    def to_dict(self) -> dict:
        return asdict(self)


def three_stage_unlearn(model, *, original=None, forget_loader, retain_loader,
                        calib_fn: Callable[[torch.nn.Module], dict] | None = None, n_layers: int = 2,
                        layer_choice: str = "fisher", encoders: Sequence[str] = ("image", "text"),
                        fisher_batches: int = 2, align: bool = True, distill: bool = True, use_lora: bool = True,
                        soup: bool = True, alphas: Sequence[float] = tuple(i / 10 for i in range(11)),
                        max_forget: float = 0.05, forget_key: str = "forget_acc",
                        retain_key: str | Sequence[str] = "retain_acc", rank: int = 4,
                        lora_alpha: float | None = None, forget_lr: float = 1e-3, forget_steps: int = 100,
                        margin: float = -0.2, retain_weight: float = 0.0, align_eps: float = 8 / 255,
                        align_steps: int = 3, align_lr: float = 2 / 255, remind_lr: float = 3e-3,
                        remind_steps: int = 30, kd_weight: float = 1.0, kd_temperature: float = 1.0,
                        ema_decay: float = 0.9, stage_fn: Callable[[str, torch.nn.Module], dict] | None = None,
                        cache: dict | None = None, device="cpu", seed: int = 0,
                        progress: bool = False) -> ThreeStageResult:
    """Unlearn a subgroup with paper A's three stages, in place; return a :class:`ThreeStageResult`.

    Batches are dicts ``{"images", "texts", "labels"}`` (``unlearning.make_pair_loader``).
    ``original``: the frozen starting model (default: a frozen copy taken first).

    * layers: ``layer_choice="fisher"`` ranks ``candidate_layers(encoders)`` by relative
      Fisher on ``fisher_batches`` forget and retain batches and keeps the top
      ``n_layers``; ``"all"`` tunes every candidate, ``"random"`` ``n_layers`` at random
      (the "without relative Fisher" ablations).
    * forgetting: :func:`forget_stage` (``forget_lr``, ``forget_steps``, ``margin``,
      ``retain_weight``, ``use_lora``, ``rank``, ``lora_alpha``).
    * reminding: :func:`remind_stage` on the same layers for ``remind_steps`` retain
      batches (``remind_lr``, ``kd_weight``, ``kd_temperature``, ``ema_decay``); with
      ``align`` each batch is first aligned by :func:`align_images` on the original
      model (``align_eps``, ``align_steps``, ``align_lr``); an image tower without
      BatchNorm (ViT) skips alignment and says so in ``result.alignment["skipped"]``
      (project's choice). ``distill=False`` sets ``kd_weight=0``.
    * restoring: with ``soup``, :func:`restore_stage` over ``alphas`` with ``calib_fn``
      (keys ``forget_key`` / ``retain_key``, criterion ``souping.select_alpha`` with
      ``max_forget``); without it the final model is the reminded one (alpha 1).
    * ``stage_fn(stage, model) -> dict``, when given, reports on the model after each
      stage (``"forget"``, ``"remind"``, ``"restore"``) into ``result.stages``; it must not
      change the model, and its time is left out of ``result.seconds``.
    * ``cache``: a dict kept across runs that start from the same model (one dict per
      starting model), holding what depends only on that model, the data and the
      settings: the relative Fisher scores of the same scoring batches, the aligned
      images of the same retain batches, and the tuned layers' weights after the
      forgetting and the reminding stage of the same settings (keys are content hashes of
      the loaders, batches and settings, so anything else misses). Reused work is exact
      (the stages are deterministic; reminding reseeds with ``seed + 1``); its original
      time is ``result.seconds["reused"]`` and its stages ``result.reused``.

    The model ends in eval mode with its ``requires_grad`` flags as they were; no
    stage updates BatchNorm running statistics. Default hyper-parameters: chosen on
    held-out training images of the mini model (forget "sandal", keep "sneaker" and
    "ankle boot"; ``remind_lr`` also on "sketch:sneaker", where forgetting through the
    image stem erases every sneaker and reminding must bring the photos back: the LoRA
    ``B`` starts at zero, and at 1e-4 thirty steps hardly move it); a real CLIP may need others.
    """
    if soup and calib_fn is None:
        raise ValueError("soup=True needs calib_fn(model) -> {forget_key: ..., retain_key: ...} to choose alpha")
    config = {k: v for k, v in locals().items() if k not in ("model", "original", "forget_loader", "retain_loader",
                                                              "calib_fn", "stage_fn", "cache", "device", "progress")}
    config["encoders"], config["alphas"] = list(encoders), [float(a) for a in alphas]
    start = time.perf_counter()
    torch.manual_seed(seed)
    model.eval()
    original = copy_frozen(model) if original is None else original.eval()
    result = ThreeStageResult(config=config)
    seconds = result.seconds
    seconds["report"] = 0.0

    def report(stage: str) -> None:
        if stage_fn is not None:
            t0 = time.perf_counter()
            result.stages[stage] = stage_fn(stage, model)
            model.eval()
            seconds["report"] += time.perf_counter() - t0

    # stage 1: which layers, then forget
    t = time.perf_counter()
    candidates = candidate_layers(model, encoders=encoders)
    if layer_choice == "fisher":
        names = _layer_tensors(model, candidates)
        forget_batches = [to_device(b, device) for b in itertools.islice(_cycle(forget_loader), fisher_batches)]
        retain_batches = [to_device(b, device) for b in itertools.islice(_cycle(retain_loader), fisher_batches)]
        key = ("fisher", content_key(*(b[k] for b in forget_batches + retain_batches for k in ("images", "texts")),
                                     names))
        result.layer_scores = dict(_cached(cache, key, result, "fisher", lambda: layer_scores.relative_fisher_scores(
            model, forget_batches, retain_batches, names=names, per="layer", device=device, progress=progress)))
    result.layers = choose_layers(result.layer_scores or None, candidates, n_layers=n_layers,
                                  layer_choice=layer_choice, seed=seed)
    seconds["fisher"] = time.perf_counter() - t
    t = time.perf_counter()
    tuned = _layer_tensors(model, result.layers)
    forget_cache_key = ("forget", loader_key(forget_loader), loader_key(retain_loader) if retain_weight else None,
                  content_key(result.layers, margin, forget_lr, forget_steps, use_lora, rank, lora_alpha, retain_weight,
                              seed))

    def run_forget():
        report_ = forget_stage(model, forget_loader=forget_loader, retain_loader=retain_loader, layers=result.layers,
                               margin=margin, lr=forget_lr, max_steps=forget_steps, use_lora=use_lora, rank=rank,
                               lora_alpha=lora_alpha, retain_weight=retain_weight, device=device, progress=progress)
        return report_, {k: _read_tensor(model, k).detach().to("cpu", copy=True) for k in tuned}

    result.forget, weights = _cached(cache, forget_cache_key, result, "forget", run_forget)
    _load_tensors(model, weights)
    seconds["forget"] = time.perf_counter() - t
    report("forget")

    # stage 2: align (lazily, per retain batch) and remind
    torch.manual_seed(seed + 1)  # the same draws whether or not the forgetting stage came from the cache
    align_fn, align_logs = None, []
    seconds["align"] = 0.0
    if not align:
        alignment = {"skipped": "align=False"}
    elif not batchnorm_layers(original):
        alignment = {"skipped": "the image tower has no BatchNorm running statistics (ViT): not aligned"}
    else:
        alignment = {}

        def align_fn(images):
            t0 = time.perf_counter()
            key = ("align", content_key(images, align_eps, align_steps, align_lr))
            aligned, logs = _cached(cache, key, result, "align", lambda: _on_cpu(align_images(
                original, images, eps=align_eps, steps=align_steps, lr=align_lr, device=device)))
            align_logs.append(logs)
            seconds["align"] += time.perf_counter() - t0
            return aligned.to(device)
    t = time.perf_counter()
    kd = kd_weight if distill else 0.0
    remind_cache_key = ("remind", forget_cache_key, loader_key(retain_loader),
                  content_key(remind_lr, remind_steps, kd, kd_temperature, ema_decay, use_lora, rank, lora_alpha,
                              align_fn is not None, align_eps, align_steps, align_lr, seed))

    def run_remind():
        if remind_steps > 0:
            report_ = remind_stage(model, original=original, retain_loader=retain_loader, layers=result.layers,
                                   lr=remind_lr, steps=remind_steps, kd_weight=kd, kd_temperature=kd_temperature,
                                   ema_decay=ema_decay, use_lora=use_lora, rank=rank, lora_alpha=lora_alpha,
                                   align_fn=align_fn, device=device, progress=progress)
        else:
            report_ = {"skipped": "remind_steps=0"}
        if align_logs:
            aligned = {"loss_before": sum(a["loss_before"] for a in align_logs) / len(align_logs),
                       "loss_after": sum(a["loss_after"] for a in align_logs) / len(align_logs),
                       "batches": len(align_logs)}
        else:
            aligned = alignment or {"skipped": "no retain batches were reminded (remind_steps=0)"}
        return report_, aligned, {k: _read_tensor(model, k).detach().to("cpu", copy=True) for k in tuned}

    result.remind, result.alignment, weights = _cached(cache, remind_cache_key, result, "remind", run_remind)
    _load_tensors(model, weights)
    seconds["remind"] = time.perf_counter() - t - seconds["align"]
    report("remind")

    # stage 3: restore by souping
    t = time.perf_counter()
    if soup:
        unlearned = {k: v.detach().clone() for k, v in model.state_dict().items()}
        restored = restore_stage(model, original_state=original.state_dict(), unlearned_state=unlearned,
                                 calib_fn=calib_fn, alphas=alphas, max_forget=max_forget, forget_key=forget_key,
                                 retain_key=retain_key)
        result.alpha, result.alpha_curve, result.metrics = restored["alpha"], restored["alpha_curve"], \
            restored["metrics"]
    elif calib_fn is not None:
        result.metrics = {"alpha": 1.0, **calib_fn(model)}
    seconds["restore"] = time.perf_counter() - t
    model.eval()
    report("restore")
    seconds["total"] = time.perf_counter() - start - seconds["report"]
    return result


def loader_key(loader) -> str:
    """Return a content key of what ``loader`` yields (a ``PairLoader``'s indices, seed, batch size and captions;
    every batch of a list of batches; else its first batch)."""
    if all(hasattr(loader, a) for a in ("indices", "seed", "batch_size", "tokens")):
        return content_key(loader.indices, loader.seed, loader.batch_size, getattr(loader, "shuffle", None),
                           getattr(loader, "drop_last", None), loader.tokens)
    batches = list(loader) if isinstance(loader, (list, tuple)) else [next(iter(_cycle(loader)))]
    return content_key(*(b[k] for b in batches for k in sorted(b) if torch.is_tensor(b[k])))


def _cached(cache: dict | None, key, result: ThreeStageResult, stage: str, compute: Callable):
    """Return ``compute()``, or its value stored in ``cache`` under ``key``. The time the stored work took
    (its own reuse included) is added to ``result.seconds["reused"]`` and ``stage`` to ``result.reused``, so a
    run's reported cost can be what it would cost on its own."""
    seconds = result.seconds
    if cache is not None and key in cache:
        value, took = cache[key]
        seconds["reused"] = seconds.get("reused", 0.0) + took
        if stage not in result.reused:
            result.reused.append(stage)
        return value
    t0, reused0 = time.perf_counter(), seconds.get("reused", 0.0)
    value = compute()
    if cache is not None:
        cache[key] = (value, time.perf_counter() - t0 + seconds.get("reused", 0.0) - reused0)
    return value


def _on_cpu(pair: tuple) -> tuple:
    images, logs = pair
    return images.detach().to("cpu", copy=True), logs


@torch.no_grad()
def _load_tensors(model, tensors: dict) -> None:
    for k, v in tensors.items():
        _read_tensor(model, k).copy_(v)


# --------------------------------------------------------------------------- #
# Paper A's settings and tasks per profile (notebook 30)
# --------------------------------------------------------------------------- #
#: The baselines beside three-stage and paper B's Lipschitz forgetting (``lipschitz_synthetic``).
PAPER_A_BASELINES = ("ft", "ga", "cliperase")
#: The mini profile's variants on the style subgroup (where the three stages lose the siblings): the text
#: tower's layers only, and longer reminding.
MINI_STYLE_ABLATIONS = ("three_stage-text_only", "three_stage-long_remind")


def parse_subgroups(text: str) -> dict[str, list[str]]:
    """Parse ``"TARGET:CLASS+CLASS+...;..."`` (notebook 30's ``SUBGROUPS``) into ``{target: classes of its group}``.

    Each group lists its target and at least one sibling class (the classes to keep).
    """
    groups = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        target, colon, classes = (s.strip() for s in part.partition(":"))
        names = [c.strip() for c in classes.split("+")]
        if not colon or not target or not all(names):
            raise ValueError(f"subgroup {part!r}: write TARGET:CLASS+CLASS+... (e.g. "
                             "'automobile:automobile+truck+airplane'), several joined by ';'")
        if target not in names or len(set(names)) < 2:
            raise ValueError(f"subgroup {part!r}: its group must list the target {target!r} and at least one sibling "
                             f"class to keep (e.g. '{target}:{target}+OTHER')")
        groups[target] = names
    if not groups:
        raise ValueError(f"no subgroup in {text!r}: write TARGET:CLASS+CLASS+..., several joined by ';'")
    return groups


def _paper_a_profile(profile: str) -> dict:
    """The full-size settings of ``profile``: mini from ``configs.mini_settings()``, paper from the paper configs."""
    if profile == "mini":
        mini = mini_settings()  # the method settings shared with notebooks 20 and 40
        return dict(
            model="mini", pretrained=None,
            targets={"sandal": "forget-subgroup", "sketch:sneaker": "forget-style-subgroup"},
            task=dict(retain_per_class=300, eval_per_class=150, val_per_class=50),
            baselines=list(PAPER_A_BASELINES), steps=30, batch_size=32, grid={"lr": list(harness.MINI_LR_GRID)},
            three_stage={**mini["three_stage"], "examples": 6}, three_stage_grid=mini["grids"]["three_stage"],
            lipschitz=mini["lipschitz"], lipschitz_grid=mini["grids"]["lipschitz_synthetic"],
            ablations=list(THREE_STAGE_PAPER_ABLATIONS), style_ablations=list(MINI_STYLE_ABLATIONS),
            dataset="fashion-mnist", transfer=[], hierarchy=None,  # the Fashion-MNIST hierarchy
        )
    paper, paper_b = load_paper_config("paper_a"), load_paper_config("paper_b")
    gen, forget = paper_b["generation"], paper_b["forgetting"]  # LIP: paper B's method as paper B runs it
    [(model, pretrained)] = list(paper["backbones"].items())[:1]  # RN50 (RN101: model=)
    return dict(
        model=model, pretrained=pretrained,
        targets={t: "forget-subgroup" for t in paper["subgroup_tasks"]},
        task=dict(retain_per_class=5, eval_per_class=None),
        transfer=list(paper["datasets"]["transfer"]),  # CIFAR-10, Food-101, STL-10, ObjectNet (from a folder)
        baselines=list(PAPER_A_BASELINES), steps=100, batch_size=32, grid={"lr": [1e-6, 1e-5, 1e-4]},
        three_stage=dict(batch_size=32, calib_per_class=10, examples=6, settings=dict(n_layers=2, rank=4)),
        three_stage_grid={"lr": [1e-4, 3e-4, 1e-3]},
        lipschitz=dict(
            generation=dict(image_size=gen["image_size"], steps=gen["steps"], step_size=gen["step_size"],
                            jitter=gen["jitter"], blur_every=gen["blur_every"], blur_sigma=gen["blur_sigma"],
                            norm_weight=gen["norm_weight"], thresholds=0.6, threshold_decay=gen["threshold_decay"],
                            min_threshold=gen["min_threshold"], patience=300, logit_scale="model", grayscale=False,
                            batch_size=64),
            forgetting=dict(n_samples=forget["n_samples"], threshold=forget["stop_accuracy"],
                            max_epochs=forget["max_epochs"], betas=tuple(forget["betas"]), eps=forget["eps"],
                            weight_decay=forget["weight_decay"], batch_size=forget["batch_size"]),
            n_train=gen["n_per_class"], n_val=32),
        lipschitz_grid={"lr": [2e-5, forget["lr"], 1e-4]},
        ablations=list(THREE_STAGE_PAPER_ABLATIONS), style_ablations=[],
        dataset=paper["datasets"]["forget"],
        hierarchy={t["group"]: t["classes"] for t in paper["subgroup_tasks"].values()},
    )


def paper_a_settings(profile: str, *, quick: bool = False, seeds="0,1,2", model: str = "", pretrained: str = "",
                     dataset: str = "", subgroups: str = "", transfer: str = "") -> dict:
    """Return notebook 30's settings of paper A for ``profile`` (``"mini"`` or ``"paper"``), parameters applied.

    Keys: ``model`` / ``pretrained`` (``models.load_clip``), ``targets`` (``{target: task kind}``),
    ``task`` (sizes for ``harness.build_task``), ``dataset``, ``transfer`` (zero-shot
    transfer datasets), ``groups`` (``{target: classes of its group}`` from ``subgroups``, else
    None) and ``hierarchy`` (``build_task``'s; None: Fashion-MNIST's), ``baselines``, ``steps``,
    ``batch_size``, the grids ``grid`` (baselines), ``three_stage_grid``, ``lipschitz_grid``
    and ``grids`` (``{method: grid}``) of the ``methods``, ``three_stage`` / ``lipschitz``
    (the method settings), ``ablations`` (paper A's table), ``style_ablations`` (more
    three-stage variants) and ``seeds`` (list of ints). Mini settings come from
    ``configs.mini_settings()``; the paper's from ``paper_a.json`` (backbone, subgroups,
    datasets) and ``paper_b.json`` (LIP). The string arguments are the notebook's
    parameters: ``seeds`` comma-separated; ``model`` / ``pretrained`` (refused by mini)
    replace the backbone; ``dataset``, ``subgroups`` (``TARGET:CLASS+CLASS+...``, several
    joined by ``;``, see :func:`parse_subgroups`) and ``transfer`` (comma-separated) are for
    the paper profile (ignored by mini). ``quick``: the first task, one seed, one grid
    value, few steps, small sets and two ablations (the CI smoke test).
    """
    check_profile(profile)
    settings = _paper_a_profile(profile)
    seed_list = parse_seeds(seeds)
    [(settings["model"], settings["pretrained"])] = models.override_backbones(
        {settings["model"]: settings["pretrained"]}, profile=profile, model=model, pretrained=pretrained).items()
    groups = None
    if profile == "paper":
        if dataset:
            data.get_dataset_spec(dataset)  # an unknown name lists the registered ones
            if dataset != settings["dataset"] and not subgroups:
                raise ValueError(f"the paper's subgroups are {settings['dataset']} classes: name {dataset}'s in "
                                 "subgroups (TARGET:CLASS+CLASS+..., e.g. 'automobile:automobile+truck+airplane')")
            settings["dataset"] = dataset
        if subgroups:
            groups = parse_subgroups(subgroups)
            settings["targets"] = {t: "forget-subgroup" for t in groups}
            settings["hierarchy"] = {f"{t} group": classes for t, classes in groups.items()}
        if transfer:
            settings["transfer"] = split_names(transfer)
            for name in settings["transfer"]:
                data.get_dataset_spec(name)
    settings["groups"] = groups
    if quick:  # CI: the first task, one seed, one grid value, few steps, small sets, two ablations
        seed_list = seed_list[:1]
        settings.update(targets=dict(list(settings["targets"].items())[:1]), steps=10, grid={"lr": [1e-4]},
                        three_stage_grid={"lr": [1e-3]}, lipschitz_grid={"lr": [1e-2]},
                        task=dict(retain_per_class=50, eval_per_class=50, val_per_class=20),
                        ablations=["three_stage-no_fisher_all", "three_stage-no_soup"], style_ablations=[])
        settings["three_stage"]["settings"].update(remind_steps=10, forget_steps=50)
        settings["lipschitz"].update(n_train=16, n_val=8)
        settings["lipschitz"]["forgetting"].update(max_epochs=5, n_samples=10)
        settings["lipschitz"]["generation"].update(steps=min(50, settings["lipschitz"]["generation"]["steps"]),
                                                   patience=10)
    settings["seeds"] = seed_list
    settings["methods"] = ["three_stage", *settings["baselines"], "lipschitz_synthetic"]
    settings["grids"] = {"three_stage": settings["three_stage_grid"], "lipschitz_synthetic": settings["lipschitz_grid"],
                         **{m: settings["grid"] for m in settings["baselines"]}}
    return settings


def load_paper_a_tasks(*, model: str, pretrained: str | None, dataset: str, targets: dict, seeds: Sequence[int],
                       hierarchy: dict | None = None, transfer: Sequence[str] = (), retain_per_class: int | None = 300,
                       eval_per_class: int | None = 300, val_per_class: int = 100, device="cpu", data_dir=None):
    """Load paper A's model, dataset and subgroup tasks; return ``(model, preprocess, tokenizer, train, test, tasks)``.

    ``tasks`` is ``{target: [harness.Task per seed]}`` (``targets``: ``{target: task kind}``,
    ``hierarchy``: ``{group: [class names]}`` naming each subgroup's siblings; None:
    Fashion-MNIST's). Fashion-MNIST is the mini world (every style, the mini model's
    ``n_seen``); another registered ``dataset`` is loaded with the model's ``preprocess``.
    Every task scores the test sets of the ``transfer`` datasets with their own prompts
    (``Task.extra_sets``). ``data_dir``: empty for ``$CLIPUNLEARN_DATA`` or the cache.
    """
    data_dir = data_dir or None
    base, preprocess, tokenizer = models.load_clip(model, pretrained, device=device)
    if dataset == "fashion-mnist":
        train, test = data.load_mini_world(data_dir=data_dir)
        templates, n_seen = data.FASHION_MNIST_TEMPLATES, models.MINI_SEEN_IMAGES
    else:
        train, test = (data.load_dataset(dataset, split=s, transform=preprocess, data_dir=data_dir)
                       for s in ("train", "test"))
        templates, n_seen = data.get_templates(dataset), None
    extra = {}
    for name in transfer:
        ds = data.load_dataset(name, split="test", transform=preprocess, data_dir=data_dir)
        extra[name] = dict(dataset=ds, classnames=ds.classnames, templates=data.get_templates(name))
    tasks = {target: [harness.build_task(train, test, kind=kind, target=target, seed=s, templates=templates,
                                            n_seen=n_seen, hierarchy=hierarchy, retain_per_class=retain_per_class,
                                            eval_per_class=eval_per_class, val_per_class=val_per_class)
                      for s in seeds]
             for target, kind in targets.items()}
    for seeded in tasks.values():
        for task in seeded:
            task.extra_sets.update(extra)
    return base, preprocess, tokenizer, train, test, tasks


def paper_a_targets(records: list[dict]) -> dict[str, bool]:
    """Return the project's targets for three-stage on notebook 30's records, each with whether it holds.

    ``forget-subgroup``: forget accuracy <= 0.05, sibling and retain accuracy within 3 points
    of the original; ``forget-style-subgroup``: forget accuracy <= 0.10, sibling accuracy within
    5 points (means over seeds). Tasks without records are left out.
    """
    bars = {"forget-subgroup": (0.05, {"sibling_acc": 0.03, "retain_acc": 0.03}),
            "forget-style-subgroup": (0.10, {"sibling_acc": 0.05})}
    out = {}
    for task, (forget_bar, keep) in bars.items():
        if not any(r.get("task") == task and r["method"] == "three_stage" for r in records):
            continue
        frame = summarise(records, task=task, numeric=True, metrics=["forget_acc", *keep])
        ours, original = frame.loc["three_stage"], frame.loc["original"]
        out[f"{task}: forget_acc {ours.forget_acc:.3f} <= {forget_bar}"] = bool(ours.forget_acc <= forget_bar)
        for metric, drop in keep.items():
            out[f"{task}: {metric} {ours[metric]:.3f} within {drop * 100:.0f} points of {original[metric]:.3f}"] = \
                bool(original[metric] - ours[metric] <= drop)
    return out

