"""Which parameter tensors to update: per-tensor gradient scores and top-k masks.

Two scores share the machinery here:

* **mean absolute gradient** (paper B, "selective layers"): each parameter tensor
  ``l`` of the image and text encoders gets ``s_l = mean_i |dL/dtheta_{l,i}|`` for the
  forgetting loss ``L``; only the top-k tensors per encoder are updated
  (:func:`score_layers`, :func:`select_top_k`).
* **relative Fisher information** (paper A, forgetting stage):
  ``I_l = E_Df[||g_l||^2] / E_Dr[||g_l||^2]`` of the image-text similarity with
  per-sample gradients ``g_l``, per layer (:func:`layer_of`) or per tensor, i.e. how
  much more a layer matters to the forget set than to the retain set
  (:func:`relative_fisher_scores`).

Names follow open_clip: the image encoder is ``visual.*`` (ViT or ModifiedResNet);
the text encoder is ``transformer.*``, ``token_embedding``, ``positional_embedding``,
``ln_final`` and ``text_projection``; anything else (``logit_scale``) is "other".
"""

from __future__ import annotations

import hashlib
import re
import warnings
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoints import fingerprint_state
from .clip import ENCODERS, TEXT_PREFIXES, encoder_of, is_resnet, to_device

__all__ = [
    "ENCODERS", "LayerScoreCache", "TEXT_PREFIXES", "drop_excluded", "encoder_of", "split_by_encoder", "score_layers",
    "scores_from_grads",
    "select_top_k", "mask_gradients", "paper_b_frozen", "fisher_scores", "relative_fisher_scores",
    "similarity_score", "layer_of", "group_by_layer", "per_sample_fisher",
]


#: Tensors paper B's code never updates, as regular expressions (``re.search`` on the name).
#: Text side: its scoring only looks at ``model.transformer``, so embeddings, final norm and
#: projection stay frozen. ResNet side: convolutions, down-sampling branches, BatchNorm
#: (frozen by ``freeze_batch_norm``) and the attention-pool positional embedding.
PAPER_B_TEXT_FROZEN = (r"^token_embedding\.", r"^positional_embedding$", r"^ln_final\.", r"^text_projection$")
PAPER_B_RESNET_FROZEN = (
    r"^visual\.conv\d\.", r"^visual\.bn\d\.", r"^visual\.layer\d+\.\d+\.conv\d\.", r"^visual\.layer\d+\.\d+\.bn\d\.",
    r"^visual\.layer\d+\.\d+\.downsample\.", r"^visual\.attnpool\.positional_embedding$",
)


def split_by_encoder(names: Iterable[str]) -> dict[str, list[str]]:
    """Return ``{"image": [...], "text": [...], "other": [...]}`` keeping the given order."""
    out = {e: [] for e in ENCODERS}
    for n in names:
        out[encoder_of(n)].append(n)
    return out


def paper_b_frozen(model) -> tuple[str, ...]:
    """Return the name patterns paper B's code keeps frozen for ``model`` (ResNet rules only for a ResNet tower)."""
    return PAPER_B_TEXT_FROZEN + (PAPER_B_RESNET_FROZEN if is_resnet(model) else ())


def _call_loss(loss_fn, model, batch) -> torch.Tensor:
    out = loss_fn(model, batch)
    return out[0] if isinstance(out, tuple) else out


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
        loss = _call_loss(loss_fn, model, to_device(batch, device))
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


class LayerScoreCache:
    """:func:`score_layers` remembered by everything that determines it: the model's weights and buffers, which
    tensors require gradients, the batches' contents, the random state on entry (the loss's noise) and the loss's
    ``settings``. A hit returns the same scores and leaves the random state where scoring would have left it, so a
    run cannot tell (paper B's grid: every learning rate's first epoch scores the same starting model on the same
    batches with the same noise). Keeps the ``size`` newest entries."""

    def __init__(self, size: int = 8):
        self.size, self.entries, self.hits = size, {}, 0

    def score(self, model, batches, *, loss_fn: Callable, settings: tuple, device="cpu") -> dict[str, float]:
        """Return :func:`score_layers` of ``model`` on ``batches`` (iterated once, as it would be)."""
        batches = list(batches)
        cuda = torch.device(device).type == "cuda"
        digest = hashlib.sha256(repr((settings, str(device), [n for n, _ in _named_trainable(model)])).encode())
        for t in [torch.get_rng_state(), *([torch.cuda.get_rng_state(device)] if cuda else []),
                  *(v for b in batches for v in (b.values() if isinstance(b, dict) else b))]:
            digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                          if torch.is_tensor(t) else repr(t).encode())
        key = (fingerprint_state(model.state_dict()), digest.hexdigest())
        if key in self.entries:
            self.hits += 1
            scores, cpu_rng, cuda_rng = self.entries[key]
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, device)
            return dict(scores)
        scores = score_layers(model, batches, loss_fn=loss_fn, device=device)
        self.entries[key] = (dict(scores), torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None)
        while len(self.entries) > self.size:
            self.entries.pop(next(iter(self.entries)))
        return scores


def scores_from_grads(model) -> dict[str, float]:
    """Return ``{param_name: mean |p.grad|}`` for every parameter that holds a gradient (the original code's score)."""
    return {n: float(p.grad.abs().mean()) for n, p in model.named_parameters() if p.grad is not None}


def drop_excluded(names: Iterable[str], exclude: Sequence[str]) -> list[str]:
    """Return ``names`` without those an ``exclude`` regular expression finds (``re.search``), in order."""
    patterns = [re.compile(p) for p in exclude]
    return [n for n in names if not any(p.search(n) for p in patterns)]


def select_top_k(scores: dict[str, float], *, k_image: int, k_text: int, exclude: Sequence[str] = ()) -> list[str]:
    """Return the names of the ``k_image`` image-encoder and ``k_text`` text-encoder tensors with the highest score.

    ``exclude``: regular expressions (``re.search``) of names that are never chosen
    (e.g. :func:`paper_b_frozen`). Ties keep the order of ``scores``. "Other" tensors
    (``logit_scale``) are never chosen.
    """
    if k_image < 0 or k_text < 0:
        raise ValueError(f"k_image and k_text must be >= 0, got {k_image}, {k_text}")
    groups = split_by_encoder(drop_excluded(scores, exclude))
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
#: Modules whose own parameters are each a layer of their own: the model and its towers hold
#: embeddings and projections (``positional_embedding``, ``text_projection``, ``visual.proj``).
TOWER_ROOTS = ("", "visual", "text")
FISHER_GROUPINGS = ("layer", "tensor")


def layer_of(name: str) -> str:
    """Return the layer of parameter ``name``: the module that owns it (the one definition used here).

    ``visual.layer3.1.conv2.weight`` -> ``visual.layer3.1.conv2``; the output
    projection of an attention block belongs to the attention module
    (``transformer.resblocks.1.attn.out_proj.weight`` -> ``transformer.resblocks.1.attn``, so
    a ``nn.MultiheadAttention`` with its fused ``in_proj_weight`` is one layer); a tensor
    held directly by the model or a tower (:data:`TOWER_ROOTS`, e.g. ``text_projection``,
    ``visual.proj``, ``visual.class_embedding``) is a layer of its own, named like the tensor.
    """
    owner, _, _ = name.rpartition(".")
    if owner in TOWER_ROOTS:
        return name
    if owner.endswith(".out_proj"):
        return owner[: -len(".out_proj")]
    return owner


def group_by_layer(names: Iterable[str], *, per: str = "layer") -> dict[str, list[str]]:
    """Return ``{group: [param names]}`` in first-seen order: per :func:`layer_of` layer, or one per tensor."""
    if per not in FISHER_GROUPINGS:
        raise ValueError(f"unknown grouping {per!r}; valid: {', '.join(FISHER_GROUPINGS)}")
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(layer_of(n) if per == "layer" else n, []).append(n)
    return groups


def similarity_score(model, batch) -> torch.Tensor:
    """Return the mean cosine similarity of each image with its caption (what paper A's forgetting lowers)."""
    img = F.normalize(model.encode_image(batch["images"]), dim=-1)
    txt = F.normalize(model.encode_text(batch["texts"]), dim=-1)
    return (img * txt).sum(-1).mean()


class _ScoreCall(torch.nn.Module):
    """``forward(images, texts) = score_fn(model, batch)``, so ``functional_call`` can swap the model's tensors."""

    def __init__(self, model, score_fn: Callable):
        super().__init__()
        self.model, self.score_fn = model, score_fn

    def forward(self, images, texts):
        return self.score_fn(self.model, {"images": images, "texts": texts})


def per_sample_fisher(model, batch, *, score_fn: Callable = similarity_score, names: Iterable[str] | None = None,
                      per: str = "layer", chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """Return ``{group: [B]}``: each sample's squared gradient of ``score_fn``, averaged over the group's elements.

    For sample ``i`` and group ``l`` (a :func:`layer_of` layer, or a tensor with
    ``per="tensor"``): ``||d s_i / d theta_l||^2 / numel(theta_l)`` with ``s_i =
    score_fn(model, {"images": x_i[None], "texts": t_i[None]})``. Per-sample gradients
    come from ``torch.func`` (``vmap`` over ``grad`` of a ``functional_call``), in eval mode
    (BatchNorm uses its running statistics, so samples do not interact).
    ``names``: the parameters to differentiate (default: all that require grad); memory is
    ``chunk_size`` (default: the batch) times their element count.
    """
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if names is None else list(names)
    unknown = [n for n in names if n not in named]
    if unknown:
        raise ValueError(f"unknown parameter names {unknown[:5]}; see model.named_parameters()")
    groups = group_by_layer(names, per=per)
    wrapper = _ScoreCall(model, score_fn)
    params = {f"model.{n}": named[n].detach() for n in names}

    def score_one(p, image, text):
        return torch.func.functional_call(wrapper, p, (image[None], text[None]), strict=False)

    per_sample = torch.func.vmap(torch.func.grad(score_one), in_dims=(None, 0, 0), chunk_size=chunk_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # attention has no vmap batching rule on CPU: torch loops over the samples (correct, slower)
            warnings.filterwarnings("ignore", message="There is a performance drop")
            grads = per_sample(params, batch["images"], batch["texts"])
    finally:
        model.train(was_training)
    n_samples = len(batch["images"])
    return {g: sum(grads[f"model.{n}"].pow(2).reshape(n_samples, -1).sum(1) for n in members)
            / sum(named[n].numel() for n in members) for g, members in groups.items()}


def fisher_scores(model, batches, *, score_fn: Callable = similarity_score, names: Iterable[str] | None = None,
                  per: str = "layer", device="cpu", chunk_size: int | None = None,
                  progress: bool = False) -> dict[str, float]:
    """Return ``{group: F_l}``, the empirical Fisher ``F_l = E_i[||d s_i / d theta_l||^2] / numel(theta_l)``.

    The expectation is the mean over every sample of ``batches`` of the per-sample
    squared gradients of :func:`per_sample_fisher` (so it does not depend on the batch
    size); groups are layers (:func:`layer_of`) or, with ``per="tensor"``, tensors.
    """
    names = None if names is None else list(names)
    sums: dict[str, float] = {}
    count = 0
    for batch in tqdm(batches, desc="fisher", leave=False, disable=not progress):
        batch = to_device(batch, device)
        for g, v in per_sample_fisher(model, batch, score_fn=score_fn, names=names, per=per,
                                      chunk_size=chunk_size).items():
            sums[g] = sums.get(g, 0.0) + float(v.double().sum())
        count += len(batch["images"])
    if count == 0:
        raise ValueError("no batches given: pass at least one batch to compute the Fisher information on")
    return {g: s / count for g, s in sums.items()}


def relative_fisher_scores(model, forget_batches, retain_batches, *, score_fn: Callable = similarity_score,
                           names: Iterable[str] | None = None, per: str = "layer", device="cpu",
                           eps: float = 1e-20, chunk_size: int | None = None,
                           progress: bool = False) -> dict[str, float]:
    """Return ``{group: I_l}`` with ``I_l = F_l(D_f) / F_l(D_r)`` (paper A, relative Fisher), ranked high to low.

    Both Fisher values come from :func:`fisher_scores` with the same ``score_fn``
    (default: image-caption cosine similarity, the quantity the forgetting stage
    lowers) and per-sample gradients; a high ``I_l`` marks a layer that matters to the
    forget set much more than to the retain set. ``eps`` guards against groups with
    no retain gradient. Ties keep the model's parameter order.
    """
    names = None if names is None else list(names)
    kwargs = dict(score_fn=score_fn, names=names, per=per, device=device, chunk_size=chunk_size, progress=progress)
    forget = fisher_scores(model, forget_batches, **kwargs)
    retain = fisher_scores(model, retain_batches, **kwargs)
    ratios = {g: forget[g] / (retain.get(g, 0.0) + eps) for g in forget}
    return dict(sorted(ratios.items(), key=lambda kv: -kv[1]))
