"""Paper B's procedure in the authors' form (``AUTHORS_OPTIONS``): their loss scaling and noise clamp,
their Adam with coupled L2, their epoch (scores recomputed every batch, gradient accumulation),
BatchNorm frozen as in ``train_forget.py``. :mod:`clipunlearn.methods.lipschitz` chooses between this and
the shared loop.
"""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import layers, metrics
from ..clip import make_adamw
from ..losses import lipschitz_bounds, lipschitz_penalty

#: The valid values of each option of the procedure (project / authors).
_CHOICES = {"optimizer": ("adamw", "adam"), "rescore": ("epoch", "batch"), "baseline": ("measured", "one"),
            "loss_scale": ("mean", "sum"), "noise_clamp": ("pixel", "batch"), "fallback": ("original", "last")}


def _freeze_batch_norm(model) -> list[str]:
    """Put BatchNorm layers in eval mode with frozen affine parameters (original ``freeze_batch_norm``)."""
    frozen = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
            for pname, p in module.named_parameters(recurse=False):
                p.requires_grad_(False)
                frozen.append(f"{name}.{pname}")
    return frozen

def lipschitz_loss(model, batch: dict, *, n_samples: int, sigma: float, loss_scale: str = "mean",
                   noise_clamp: str = "pixel", precision: str = "fp32") -> tuple[torch.Tensor, dict]:
    """Return paper B's Lipschitz loss of ``batch`` (``losses.lipschitz_penalty``) in either form, and its logs.

    ``n_samples`` perturbations ``N(0, sigma^2)`` per image from the global RNG;
    ``noise_clamp="pixel"`` clamps ``x + noise`` per channel to the model's valid pixel
    range, ``"batch"`` (authors) to the scalar min / max of the whole batch tensor;
    ``loss_scale="mean"`` averages over images and samples, ``"sum"`` (authors) sums
    and divides by ``2 n_samples`` (= ``B / 2`` times the mean). ``precision="bf16"``
    runs the forward passes under bf16 autocast.
    """
    for name, value in (("loss_scale", loss_scale), ("noise_clamp", noise_clamp)):
        if value not in _CHOICES[name]:
            raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(_CHOICES[name])}")
    images, texts = batch["images"], batch["texts"]
    noise = sigma * torch.randn((images.shape[0], n_samples, *images.shape[1:]), device=images.device)
    if noise_clamp == "batch":
        bounds = (images.detach().min().view(1, 1, 1, 1), images.detach().max().view(1, 1, 1, 1))
    else:
        bounds = lipschitz_bounds(model, device=images.device)
    with metrics.autocast(images.device, precision):
        loss, logs = lipschitz_penalty(model, images, texts, noise=noise, bounds=bounds)
    if loss_scale == "sum":
        loss = loss * (images.shape[0] / 2)
    return loss, logs

def _make_optimizer(kind: str, params: list, *, lr, betas, eps, weight_decay):
    """``"adam"``: torch.optim.Adam with coupled L2 weight decay (authors); ``"adamw"``: the project's AdamW."""
    if kind == "adamw":
        return make_adamw(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused or None)

def _own_epoch(model, *, optimizer, forget_loader, loss_fn, candidates, selective: bool, rescore: str, trainable,
               k_image: int, k_text: int, exclude, accumulate: int, step_offset: int, seed: int, on_step: Callable,
               progress: bool, desc: str) -> tuple[list[str], str | None]:
    """One epoch of the authors' loop; return (tensors stepped, why it stopped early or None).

    Their order of steps, not ``unlearning.unlearn``'s (``docs/ARCHITECTURE.md``, "Loops outside the one loop").

    Per batch: loss / accumulation, backward, top-k selection on this gradient (``rescore="batch"``)
    or the epoch's ``trainable``, other gradients dropped, optimiser step every ``accumulate``
    batches, then ``on_step(model) -> stop?``.
    """
    n_batches = len(forget_loader)
    acc_step = max(1, min(n_batches, accumulate))
    stepped: dict[str, None] = {}
    optimizer.zero_grad(set_to_none=True)
    batches = iter(forget_loader)  # a PairLoader's next epoch
    model.train()
    _freeze_batch_norm(model)  # the authors' train_epoch: train mode, BatchNorm frozen
    with tqdm(total=n_batches, desc=desc, leave=False, disable=not progress) as bar:
        for i, batch in enumerate(batches):
            torch.manual_seed(seed * 1_000_003 + step_offset + i)  # stochastic noise repeats for a given seed
            loss, _ = loss_fn(model, batch)
            if not torch.isfinite(loss):
                return list(stepped), f"non-finite loss at step {step_offset + i}"
            (loss / acc_step).backward()
            if not selective:
                chosen = candidates
            elif rescore == "batch":
                scores = {n: v for n, v in layers.scores_from_grads(model).items() if n in candidates}
                chosen = layers.select_top_k(scores, k_image=k_image, k_text=k_text, exclude=exclude)
            else:
                chosen = trainable
            layers.mask_gradients(model, chosen)
            stepped.update(dict.fromkeys(chosen))
            if (i + 1) % acc_step == 0 or i + 1 == n_batches:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            bar.update()
            if on_step(model):
                return list(stepped), f"stop at step {step_offset + i + 1}"
            model.train()
            _freeze_batch_norm(model)
    return list(stepped), None
