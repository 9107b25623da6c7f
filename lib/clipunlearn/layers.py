"""Which parameter tensors to update: per-tensor gradient scores and top-k masks.

Two scores share the machinery here:

* **mean absolute gradient** (paper B, "selective layers"): each parameter tensor
  ``l`` of the image and text encoders gets ``s_l = mean_i |dL/dtheta_{l,i}|`` for the
  forgetting loss ``L``; only the top-k tensors per encoder are updated
  (:func:`score_layers`, :func:`select_top_k`).
* **relative Fisher information** (paper A, forgetting stage):
  ``I_l = E_Df[g_l^2] / E_Dr[g_l^2]`` of the image-text similarity, i.e. how much
  more a tensor matters to the forget set than to the retain set
  (:func:`relative_fisher_scores`).

Names follow open_clip: the image encoder is ``visual.*`` (ViT or ModifiedResNet);
the text encoder is ``transformer.*``, ``token_embedding``, ``positional_embedding``,
``ln_final`` and ``text_projection``; anything else (``logit_scale``) is "other".
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = [
    "ENCODERS", "TEXT_PREFIXES", "encoder_of", "split_by_encoder", "score_layers", "scores_from_grads",
    "select_top_k", "mask_gradients", "paper_b_frozen", "fisher_scores", "relative_fisher_scores",
    "similarity_score",
]

ENCODERS = ("image", "text", "other")
TEXT_PREFIXES = ("transformer.", "token_embedding", "positional_embedding", "ln_final", "text_projection",
                 "text.")  # "text." = open_clip's CustomTextCLIP tower

#: Tensors paper B's code never updates, as regular expressions (``re.search`` on the name).
#: Text side: its scoring only looks at ``model.transformer``, so embeddings, final norm and
#: projection stay frozen. ResNet side: convolutions, down-sampling branches, BatchNorm
#: (frozen by ``freeze_batch_norm``) and the attention-pool positional embedding.
PAPER_B_TEXT_FROZEN = (r"^token_embedding\.", r"^positional_embedding$", r"^ln_final\.", r"^text_projection$")
PAPER_B_RESNET_FROZEN = (
    r"^visual\.conv\d\.", r"^visual\.bn\d\.", r"^visual\.layer\d+\.\d+\.conv\d\.", r"^visual\.layer\d+\.\d+\.bn\d\.",
    r"^visual\.layer\d+\.\d+\.downsample\.", r"^visual\.attnpool\.positional_embedding$",
)


def encoder_of(name: str) -> str:
    """Return ``"image"``, ``"text"`` or ``"other"`` for an open_clip parameter name."""
    if name.startswith("visual."):
        return "image"
    if name.startswith(TEXT_PREFIXES):
        return "text"
    return "other"


def split_by_encoder(names: Iterable[str]) -> dict[str, list[str]]:
    """Return ``{"image": [...], "text": [...], "other": [...]}`` keeping the given order."""
    out = {e: [] for e in ENCODERS}
    for n in names:
        out[encoder_of(n)].append(n)
    return out


def paper_b_frozen(model) -> tuple[str, ...]:
    """Return the name patterns paper B's code keeps frozen for ``model`` (ResNet rules only for a ResNet tower)."""
    from .models import is_resnet

    return PAPER_B_TEXT_FROZEN + (PAPER_B_RESNET_FROZEN if is_resnet(model) else ())


def _call_loss(loss_fn, model, batch) -> torch.Tensor:
    out = loss_fn(model, batch)
    return out[0] if isinstance(out, tuple) else out


def _to_device(batch, device):
    if isinstance(batch, dict):
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    return [v.to(device) if torch.is_tensor(v) else v for v in batch]


def _named_trainable(model, names=None) -> list[tuple[str, torch.nn.Parameter]]:
    wanted = None if names is None else set(names)
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and (wanted is None or n in wanted)]


def _batch_grads(model, loss_fn, batches, *, device, square: bool, progress: bool, desc: str):
    """Sum over batches of the per-tensor gradient (or squared gradient) and the batch count."""
    params = _named_trainable(model)
    sums = {n: torch.zeros_like(p) for n, p in params}
    used = set()
    count = 0
    for batch in tqdm(batches, desc=desc, leave=False, disable=not progress):
        loss = _call_loss(loss_fn, model, _to_device(batch, device))
        grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
        for (n, _), g in zip(params, grads):
            if g is not None:
                sums[n] += g.detach() ** 2 if square else g.detach()
                used.add(n)
        count += 1
    if count == 0:
        raise ValueError("no batches given: pass at least one batch to score the layers on")
    return {n: s for n, s in sums.items() if n in used}, count


def score_layers(model, batches, *, loss_fn: Callable, device="cpu", progress: bool = False) -> dict[str, float]:
    """Return ``{param_name: mean |grad|}`` of ``loss_fn`` over ``batches`` per parameter tensor (paper B).

    ``loss_fn(model, batch)`` returns a scalar loss (or ``(loss, logs)``, as the
    registered losses do). Gradients are averaged over the batches before taking
    ``|.|`` and the mean over elements. Only tensors that require grad and receive
    a gradient get a score; ``.grad`` of the model is left untouched.
    """
    sums, count = _batch_grads(model, loss_fn, batches, device=device, square=False, progress=progress,
                               desc="layer scores")
    return {n: float((s / count).abs().mean()) for n, s in sums.items()}


def scores_from_grads(model) -> dict[str, float]:
    """Return ``{param_name: mean |p.grad|}`` for every parameter that holds a gradient (the original code's score)."""
    return {n: float(p.grad.abs().mean()) for n, p in model.named_parameters() if p.grad is not None}


def select_top_k(scores: dict[str, float], *, k_image: int, k_text: int, exclude: Sequence[str] = ()) -> list[str]:
    """Return the names of the ``k_image`` image-encoder and ``k_text`` text-encoder tensors with the highest score.

    ``exclude``: regular expressions (``re.search``) of names that are never chosen
    (e.g. :func:`paper_b_frozen`). Ties keep the order of ``scores``. "Other" tensors
    (``logit_scale``) are never chosen.
    """
    if k_image < 0 or k_text < 0:
        raise ValueError(f"k_image and k_text must be >= 0, got {k_image}, {k_text}")
    patterns = [re.compile(p) for p in exclude]
    keep = [n for n in scores if not any(p.search(n) for p in patterns)]
    groups = split_by_encoder(keep)
    chosen = []
    for enc, k in (("image", k_image), ("text", k_text)):
        ranked = sorted(groups[enc], key=lambda n: -scores[n])  # stable: ties keep order
        chosen += ranked[:k]
    return chosen


def mask_gradients(model, keep: Iterable[str]) -> int:
    """Set ``p.grad = None`` for every parameter not in ``keep`` (the optimiser then skips it); return how many kept."""
    keep = set(keep)
    kept = 0
    for n, p in model.named_parameters():
        if n in keep:
            kept += p.grad is not None
        else:
            p.grad = None
    return kept


# --------------------------------------------------------------------------- #
# Fisher information (paper A)
# --------------------------------------------------------------------------- #
def similarity_score(model, batch) -> torch.Tensor:
    """Return the mean cosine similarity of each image with its caption (what paper A's forgetting lowers)."""
    img = F.normalize(model.encode_image(batch["images"]), dim=-1)
    txt = F.normalize(model.encode_text(batch["texts"]), dim=-1)
    return (img * txt).sum(-1).mean()


def fisher_scores(model, batches, *, score_fn: Callable = similarity_score, device="cpu",
                  progress: bool = False) -> dict[str, float]:
    """Return ``{param_name: E[g^2]}`` (empirical Fisher, mean over the tensor's elements) of ``score_fn``.

    ``g`` is the gradient of ``score_fn(model, batch)`` on each batch; the
    expectation is the mean over batches (batch size 1 gives the per-sample Fisher).
    """
    sums, count = _batch_grads(model, score_fn, batches, device=device, square=True, progress=progress,
                               desc="fisher")
    return {n: float((s / count).mean()) for n, s in sums.items()}


def relative_fisher_scores(model, forget_batches, retain_batches, *, score_fn: Callable = similarity_score,
                           device="cpu", eps: float = 1e-20, progress: bool = False) -> dict[str, float]:
    """Return ``{param_name: I_l}`` with ``I_l = E_Df[g_l^2] / E_Dr[g_l^2]`` (paper A, relative Fisher).

    Both expectations come from :func:`fisher_scores` with the same ``score_fn``
    (default: image-caption cosine similarity); a high ``I_l`` marks a tensor that
    matters to the forget set much more than to the retain set. ``eps`` guards
    against tensors with no retain gradient.
    """
    forget = fisher_scores(model, forget_batches, score_fn=score_fn, device=device, progress=progress)
    retain = fisher_scores(model, retain_batches, score_fn=score_fn, device=device, progress=progress)
    return {n: forget[n] / (retain.get(n, 0.0) + eps) for n in forget}
