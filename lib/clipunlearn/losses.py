"""Unlearning losses, one signature, one registry.

Every method is ``loss_fn(model, original, forget_batch, retain_batch, **hparams)
-> (loss, logs)``: ``model`` is being unlearned, ``original`` is the frozen
starting model, batches are dicts ``{"images", "texts", "labels"}`` (or None when a
method does not use them), ``logs`` maps names to floats. ``LOSSES`` maps the
registry names to these functions (:mod:`clipunlearn.registry`, with each method's
label and needs); ``unlearning.unlearn`` runs any of them.

Contrastive terms use *label-aware* targets: pairs of the same class in a batch
are positives (with distinct captions this is exactly the standard CLIP loss;
class captions repeat within a batch, and treating them as negatives would teach
the model to separate images of one class). The ascent baselines (GA, GradDiff,
NegGrad+) ascend the forget images' zero-shot cross-entropy over all class prompts
instead (:func:`zero_shot_forget_ce`): a one-class forget batch's own contrastive
loss has no gradient that separates its images from their class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .clip import get_normalization
from .images import pixel_bounds
from .registry import LOSSES, get_loss, register_loss, register_method


# --------------------------------------------------------------------------- #
# Building blocks
# --------------------------------------------------------------------------- #
def encode_pairs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Return L2-normalised ``(image_features, text_features)`` of a batch's pairs."""
    return (model.encode_image(batch["images"], normalize=True),
            model.encode_text(batch["texts"], normalize=True))


def pair_positives(labels: torch.Tensor) -> torch.Tensor:
    """Return ``[B, B]`` positives: pairs with the same label."""
    return pair_positives_between(labels, labels)


def pair_positives_between(row_labels: torch.Tensor, column_labels: torch.Tensor) -> torch.Tensor:
    """Return ``[R, K]`` positives: row ``i`` and column ``k`` share a label."""
    return row_labels.view(-1, 1) == column_labels.view(1, -1)


def contrastive_loss(image_features, text_features, logit_scale, *, positives=None) -> torch.Tensor:
    """Symmetric CLIP contrastive loss (image-to-text and text-to-image cross-entropy, averaged).

    ``positives[i, j]`` marks text ``j`` as a match of image ``i`` (default: the
    diagonal, the standard CLIP loss); targets are uniform over the positives
    (UniCL). Texts that match no image of the batch are left out of the
    text-to-image term (the mini model's training vocabulary has such captions).
    """
    logits = logit_scale * image_features @ text_features.T
    if positives is None:
        target = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    pos = positives.float()
    i2t = -(pos / pos.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    used = pos.sum(0) > 0
    pos_t = pos[:, used].T
    t2i = -(pos_t / pos_t.sum(1, keepdim=True) * logits[:, used].T.log_softmax(1)).sum(1).mean()
    return (i2t + t2i) / 2


#: Targets of the retention module: ``label`` (pairs of one class are positives: the mini world, where class
#: captions repeat within a batch) or ``diagonal`` (the standard CLIP loss, each image's own caption: the paper).
TARGETS = ("label", "diagonal")


def batch_positives(labels: torch.Tensor, *, targets: str = "label") -> torch.Tensor | None:
    """Return the positives of a batch for :func:`contrastive_loss`: same-label pairs (``targets="label"``) or
    None, the diagonal (``targets="diagonal"``, the standard CLIP loss)."""
    if targets not in TARGETS:
        raise ValueError(f"unknown contrastive targets {targets!r}; valid: {', '.join(TARGETS)}")
    return pair_positives(labels) if targets == "label" else None


def retention_loss(model, batch: dict, *, targets: str = "label") -> torch.Tensor:
    """CLIPErase retention module L_RM: the symmetric CLIP contrastive loss on retain pairs (``targets``:
    :data:`TARGETS`)."""
    img, txt = encode_pairs(model, batch)
    return contrastive_loss(img, txt, model.logit_scale.exp(), positives=batch_positives(batch["labels"],
                                                                                         targets=targets))


def forgetting_loss(model, batch: dict) -> torch.Tensor:
    """CLIPErase forgetting module L_FM = mean_i f_img(x_i) . f_txt(t_i) over forget pairs.

    Features are L2-normalised (CLIP's similarity), so minimising drives each
    forget pair's cosine similarity to zero and below.
    """
    img, txt = encode_pairs(model, batch)
    return (img * txt).sum(-1).mean()


def consistency_loss(model, original, batch: dict, *, features=None) -> torch.Tensor:
    """CLIPErase consistency module L_CM on retain pairs.

    ``KL(p_orig_img || p_unl_img) + KL(p_orig_txt || p_unl_txt)``, where ``p_img``
    is the softmax over each image's similarity row to the batch's texts and
    ``p_txt`` each text's row to the batch's images (project's choice of the
    unimodal distributions; ``batchmean`` KL, logit scales of each model).
    ``features``: the model's ``(image, text)`` features of ``batch`` when already computed.
    """
    img, txt = features if features is not None else encode_pairs(model, batch)
    with torch.no_grad():
        img_o, txt_o = encode_pairs(original, batch)
        logits_o = original.logit_scale.exp() * img_o @ txt_o.T
    logits = model.logit_scale.exp() * img @ txt.T
    kl_img = F.kl_div(logits.log_softmax(1), logits_o.log_softmax(1), log_target=True, reduction="batchmean")
    kl_txt = F.kl_div(logits.T.log_softmax(1), logits_o.T.log_softmax(1), log_target=True, reduction="batchmean")
    return kl_img + kl_txt


def pair_clip_loss(model, batch: dict) -> torch.Tensor:
    """The label-aware CLIP contrastive loss of a batch (what FT and the retain terms descend)."""
    return retention_loss(model, batch)


def zero_shot_logits(model, images: torch.Tensor, class_texts: torch.Tensor) -> torch.Tensor:
    """Return ``[B, C]`` zero-shot logits: ``logit_scale.exp() * cos(f_img(image), f_txt(class prompt))``.

    ``class_texts`` holds one tokenised prompt per class, ``[C, ctx]``; the scale is the
    model's own learned temperature. Gradients reach both towers.
    """
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(class_texts.to(img.device), normalize=True)
    return model.logit_scale.exp() * img @ txt.T


def zero_shot_forget_ce(model, batch: dict, *, class_texts: torch.Tensor | None = None,
                        other_batch: dict | None = None) -> torch.Tensor:
    """Return the forget term of the ascent baselines: cross-entropy of the forget images' true classes.

    With ``class_texts`` (``[C, ctx]``, one prompt per class; ``batch["labels"]`` index
    its rows) it is the zero-shot classification loss over all class prompts, the
    classification form of the papers' GA baselines: ascending it lowers the true
    class's logit *relative to the other classes*. Without it, each forget image is
    contrasted with the captions of ``batch`` and ``other_batch`` (the retain batch)
    together, with label-aware targets (uniform over the captions of its class).

    Why not the pair contrastive loss of the forget batch alone: a forget batch is
    usually one class, so every pair is a positive, the targets are uniform and the
    loss does not change when a whole row of logits moves; its gradient cannot
    lower the similarity of forget images to their class captions.
    """
    labels = batch["labels"]
    if class_texts is not None:
        return F.cross_entropy(zero_shot_logits(model, batch["images"], class_texts), labels.to(
            batch["images"].device))
    if other_batch is None:
        raise ValueError("the forget term needs other classes to move away from: pass class_texts (tokenised class "
                         "prompts [C, ctx], loss_kwargs={'class_texts': ...}) or a retain batch (retain_loader=...)")
    img = model.encode_image(batch["images"], normalize=True)
    txt = model.encode_text(torch.cat([batch["texts"], other_batch["texts"].to(batch["texts"].device)]),
                            normalize=True)
    all_labels = torch.cat([labels, other_batch["labels"].to(labels.device)])
    pos = pair_positives_between(labels, all_labels).float()
    logits = model.logit_scale.exp() * img @ txt.T
    return -(pos / pos.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()


# --------------------------------------------------------------------------- #
# Methods
# --------------------------------------------------------------------------- #
# The forget term of GA, GradDiff and NegGrad+ is :func:`zero_shot_forget_ce` (see its
# docstring for why not the forget batch's own contrastive loss); their retain term is
# the label-aware contrastive loss of the retain batch.
@register_method("ft", label="FT")
def ft_loss(model, original, forget_batch, retain_batch):
    """FT: fine-tune on the retain set only (catastrophic forgetting of D_f)."""
    loss = pair_clip_loss(model, retain_batch)
    return loss, {"retain_loss": loss.item()}


@register_method("ga", label="GA", needs_class_texts=True)
def ga_loss(model, original, forget_batch, retain_batch, *, class_texts=None):
    """GA: gradient ascent on the forget images' zero-shot cross-entropy (minimise its negative).

    Forget term: :func:`zero_shot_forget_ce` over ``class_texts`` (all class prompts,
    ``[C, ctx]``); without them, against the forget and retain captions together (the
    retain batch is only used there).
    """
    forget = zero_shot_forget_ce(model, forget_batch, class_texts=class_texts, other_batch=retain_batch)
    return -forget, {"forget_loss": forget.item()}


@register_method("ga_pairs", label="GA (forget pairs' CLIP loss)", in_explorer=False)
def ga_pairs_loss(model, original, forget_batch, retain_batch):
    """GA as papers A and C describe it: gradient ascent on the standard CLIP contrastive loss of the forget
    pairs (diagonal targets; minimise its negative). The retain batch is unused.

    Weaker than :func:`ga_loss` (which classifies over every class prompt): when a forget batch's captions
    are all alike (one class, one template) its image-to-text term does not depend on the images, and the
    ascent can only spread the images' scores against that caption apart (:func:`zero_shot_forget_ce`'s
    docstring says why a one-class batch's own contrastive loss cannot separate it from its class).
    """
    img, txt = encode_pairs(model, forget_batch)
    forget = contrastive_loss(img, txt, model.logit_scale.exp())
    return -forget, {"forget_loss": forget.item()}


@register_method("graddiff", label="GradDiff", needs_class_texts=True)
def graddiff_loss(model, original, forget_batch, retain_batch, *, class_texts=None, forget_weight: float = 1.0,
                  retain_weight: float = 1.0):
    """GradDiff: ``retain_weight * L(D_r) - forget_weight * CE_f``.

    ``L(D_r)``: label-aware contrastive loss of the retain batch; ``CE_f``: the forget
    images' zero-shot cross-entropy (:func:`zero_shot_forget_ce`, over ``class_texts``
    when given, else against the forget and retain captions together).
    """
    forget = zero_shot_forget_ce(model, forget_batch, class_texts=class_texts, other_batch=retain_batch)
    retain = pair_clip_loss(model, retain_batch)
    return retain_weight * retain - forget_weight * forget, {"forget_loss": forget.item(),
                                                             "retain_loss": retain.item()}


@register_method("neggrad_plus", label="NegGrad+", needs_class_texts=True)
def neggrad_plus_loss(model, original, forget_batch, retain_batch, *, class_texts=None, beta: float = 0.9):
    """NegGrad+ (Kurmanji et al., 2023): ``beta * L(D_r) - (1 - beta) * CE_f``.

    Same two terms as GradDiff (:func:`graddiff_loss`), as a convex combination.
    """
    forget = zero_shot_forget_ce(model, forget_batch, class_texts=class_texts, other_batch=retain_batch)
    retain = pair_clip_loss(model, retain_batch)
    return beta * retain - (1 - beta) * forget, {"forget_loss": forget.item(), "retain_loss": retain.item()}


@register_method("random_labels", label="random labels", needs_class_texts=True)
def random_labels_loss(model, original, forget_batch, retain_batch, *, class_texts=None, retain_weight: float = 1.0):
    """Random labels: train each forget image towards a random *wrong* class, plus ``L(D_r)``.

    With ``class_texts`` (tokenised captions of every class, ``[C, ctx]``) the forget
    images are classified zero-shot over all classes (:func:`zero_shot_logits`) with
    cross-entropy towards a uniformly drawn class other than their own (SalUn's RL,
    in CLIP form); without it, towards a random caption of the retain batch. Targets
    come from torch's global RNG, which the loop seeds per step.
    """
    images, labels = forget_batch["images"], forget_batch["labels"]
    if class_texts is not None:
        logits = zero_shot_logits(model, images, class_texts)
        shift = torch.randint(1, logits.shape[1], (len(images),), device=logits.device)
        target = (labels.to(logits.device) + shift) % logits.shape[1]  # never the true class
    else:
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(retain_batch["texts"], normalize=True)
        logits = model.logit_scale.exp() * img @ txt.T
        target = torch.randint(len(txt), (len(img),), device=img.device)
    relabel = F.cross_entropy(logits, target)
    retain = pair_clip_loss(model, retain_batch)
    return relabel + retain_weight * retain, {"relabel_loss": relabel.item(), "retain_loss": retain.item()}


@register_method("cliperase", label="CLIPErase")
def cliperase_loss(model, original, forget_batch, retain_batch, *, lambda1: float = 1.0, lambda2: float = 3.0,
                   lambda3: float = 3.0, targets: str = "label"):
    """CLIPErase (Yang et al., 2025): ``L = lambda1 * L_RM + lambda2 * L_FM + lambda3 * L_CM``.

    Setting a lambda to 0 removes that module (the paper's ablation); the default
    weights are the paper's (1, 3, 3). ``targets`` of the retention module (:data:`TARGETS`): ``label``
    (the project's, for the mini world's repeated captions) or ``diagonal`` (the standard CLIP loss).
    """
    zero = torch.zeros((), device=forget_batch["images"].device)
    fm = forgetting_loss(model, forget_batch) if lambda2 else zero
    # the retain pairs are encoded once for both modules that use them
    retain = encode_pairs(model, retain_batch) if (lambda1 or lambda3) else None
    rm = (contrastive_loss(*retain, model.logit_scale.exp(),
                           positives=batch_positives(retain_batch["labels"], targets=targets))
          if lambda1 else zero)
    cm = consistency_loss(model, original, retain_batch, features=retain) if lambda3 else zero
    loss = lambda1 * rm + lambda2 * fm + lambda3 * cm
    return loss, {"fm": fm.item(), "rm": rm.item(), "cm": cm.item()}


@register_method("cliperase_paper", label="CLIPErase (paper protocol)", in_explorer=False)
def cliperase_paper_loss(model, original, forget_batch, retain_batch, *, lambda1: float = 1.0,
                         lambda2: float = 3.0, lambda3: float = 3.0):
    """CLIPErase as the paper states it: :func:`cliperase_loss` with the standard CLIP loss (``targets="diagonal"``)
    as its retention module. Its own row in the records, run at the paper's fixed learning rate (no grid;
    ``papers.paper_c``)."""
    return cliperase_loss(model, original, forget_batch, retain_batch, lambda1=lambda1, lambda2=lambda2,
                          lambda3=lambda3, targets="diagonal")


# --- Paper B: Lipschitz forgetting ---
# Kravets & Namboodiri, "Zero-Shot Class Unlearning in CLIP with Synthetic Samples" (WACV 2025).
# The iterative procedure that drives it is clipunlearn.lipschitz.


def lipschitz_bounds(model, *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the valid pixel range in model space, ``((0 - mean) / std, (1 - mean) / std)``, as ``[1, 3, 1, 1]``.

    ``images.pixel_bounds`` of the model's normalisation (``models.get_normalization``).
    """
    mean, std = get_normalization(model)
    return pixel_bounds(mean, std, device=device)


def lipschitz_penalty(model, images: torch.Tensor, texts: torch.Tensor, *, noise: torch.Tensor,
                      bounds: tuple[torch.Tensor, torch.Tensor] | None = None, batched: bool = True,
                      chunk_size: int = 1024) -> tuple[torch.Tensor, dict[str, float]]:
    """Return paper B's Lipschitz loss for ``images [B, 3, H, W]`` with captions ``texts [B, ctx]``, and logs.

    For every image and each of the ``n`` perturbations ``noise [B, n, 3, H, W]``,
    ``x' = clamp(x + noise)`` (clamped to ``bounds``) and

        L = mean_{i, s} (||f_txt(t_i) - f_img(x'_is)|| + ||f_img(x_i) - f_img(x'_is)||) / (2 ||x_i - x'_is||)

    with unnormalised embeddings and ``f_img(x')`` computed without gradient. All
    ``B * n`` perturbed images go through one batched forward pass (in chunks of
    ``chunk_size``); ``batched=False`` runs the reference loop of ``n`` passes.
    """
    b, n = noise.shape[:2]
    noisy = images.detach().unsqueeze(1) + noise.to(images.device, images.dtype)
    if bounds is not None:
        lo, hi = (t.to(images.device, images.dtype).unsqueeze(1) for t in bounds)
        noisy = torch.maximum(torch.minimum(noisy, hi), lo)
    in_norm = (images.detach().unsqueeze(1) - noisy).flatten(2).norm(dim=2)  # [B, n]
    f_txt = model.encode_text(texts)  # [B, D], unnormalised
    f_img = model.encode_image(images)
    with torch.no_grad():
        if batched:
            flat = noisy.flatten(0, 1)
            f_noisy = torch.cat([model.encode_image(flat[i:i + chunk_size])
                                 for i in range(0, len(flat), chunk_size)]).view(b, n, -1)
        else:
            f_noisy = torch.stack([model.encode_image(noisy[:, s]) for s in range(n)], dim=1)
    out_txt = (f_txt.unsqueeze(1) - f_noisy).norm(dim=-1)  # [B, n]
    out_img = (f_img.unsqueeze(1) - f_noisy).norm(dim=-1)
    loss = ((out_txt + out_img) / (2 * in_norm.clamp_min(1e-12))).mean()
    logs = {"lipschitz": float(loss.detach()), "out_txt": float(out_txt.detach().mean()),
            "out_img": float(out_img.detach().mean()), "in_norm": float(in_norm.mean())}
    return loss, logs


@register_method("lipschitz", label="Lipschitz", in_explorer=False)
def lipschitz_loss(model, original, forget_batch, retain_batch=None, *, n_samples: int = 25, sigma: float = 0.1,
                   chunk_size: int = 1024, generator: torch.Generator | None = None):
    """Return paper B's Lipschitz forgetting loss on the forget batch (``original`` and retain batch unused).

    Draws ``n_samples`` Gaussian perturbations ``N(0, sigma^2)`` per image (from
    ``generator`` or the global RNG), clamps ``x + noise`` to the valid pixel range of
    ``model`` and returns :func:`lipschitz_penalty` (one batched forward pass).
    """
    images, texts = forget_batch["images"], forget_batch["texts"]
    noise = torch.randn((images.shape[0], n_samples, *images.shape[1:]), generator=generator,
                        device="cpu" if generator is not None else images.device)
    bounds = lipschitz_bounds(model, device=images.device)
    return lipschitz_penalty(model, images, texts, noise=sigma * noise.to(images.device), bounds=bounds,
                             chunk_size=chunk_size)
