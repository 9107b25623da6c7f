"""Small helpers over an open_clip model that import nothing of the package.

Everything here is a leaf of the dependency graph (docs/ARCHITECTURE.md): normalisation and
image size, tower kind, frozen copies, the optimiser factory, devices and precision,
parameter naming by tower, requires-grad bookkeeping and freeing memory between runs.
"""

from __future__ import annotations

import contextlib
import copy
import gc
from typing import Collection

import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

#: Numeric precisions every path takes (the synthetic-image ascent too): full float32, or bf16 autocast.
PRECISIONS = ("fp32", "bf16")
#: What :func:`autocast` and the unlearning loop take: :data:`PRECISIONS`, fp16 autocast (the loop then scales
#: the loss on CUDA) and ``auto`` (the fastest the device runs well: :func:`resolve_precision`).
AMP_PRECISIONS = (*PRECISIONS, "fp16", "auto")
#: The compute capability from which a CUDA card runs bf16 at full speed (Ampere, e.g. A100: 8.0; a T4 is 7.5).
BF16_CAPABILITY = (8, 0)
#: Towers of a CLIP model, as :func:`encoder_of` names them.
ENCODERS = ("image", "text", "other")
#: Parameter-name prefixes of open_clip's text tower (the rest of a CLIP, but ``visual.`` and ``logit_``).
TEXT_PREFIXES = ("transformer.", "token_embedding", "positional_embedding", "ln_final", "text_projection",
                 "text.")  # "text." = open_clip's CustomTextCLIP tower


def get_normalization(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return the ``(mean, std)`` pixel normalisation the model expects (open_clip's preprocess config)."""
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    mean = cfg.get("mean", getattr(model.visual, "image_mean", None))
    std = cfg.get("std", getattr(model.visual, "image_std", None))
    if mean is None or std is None:
        mean, std = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def get_image_size(model) -> int:
    """Return the side in pixels of the images ``model`` takes (open_clip's ``visual.image_size``)."""
    size = getattr(model.visual, "image_size", None)
    if size is None:
        size = (getattr(model.visual, "preprocess_cfg", None) or {}).get("size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def is_resnet(model) -> bool:
    """Return True when ``model``'s image tower is open_clip's ModifiedResNet (False for a ViT)."""
    return hasattr(model.visual, "attnpool") or hasattr(model.visual, "layer1")


def use_channels_last(model):
    """Return ``model`` with a ResNet image tower (:func:`is_resnet`) in channels-last memory layout.

    The same numbers in another order in memory: the mini CLIP's convolutions then run about 25% faster on a
    2-core CPU (outputs agree to 1e-7). A ViT tower is left as it is. Deep copies and state dicts keep it.
    """
    if is_resnet(model):
        model.visual.to(memory_format=torch.channels_last)
    return model


def copy_frozen(model):
    """Return a frozen copy of ``model`` (eval mode, no gradients) on the same device."""
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


def make_adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW over ``params`` (tensors or parameter groups), fused where torch has it (CPU and CUDA floats).

    A fused step runs one kernel for all tensors: about 10% faster unlearning steps on a 2-core CPU.
    """
    params = list(params)
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    fused = all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)


def resolve_precision(precision: str, device, *, capability: tuple[int, int] | None = None) -> str:
    """Return ``precision`` with ``"auto"`` made concrete for ``device``; raise a ValueError for an unknown one.

    ``auto``: ``bf16`` on a CUDA card of compute capability :data:`BF16_CAPABILITY` or more that supports bf16
    (Ampere or newer), ``fp16`` on an older CUDA card (e.g. a T4), ``fp32`` elsewhere (CPU, MPS). ``capability``
    (``(major, minor)``): used instead of asking the card, and then taken to support bf16 from 8.0 on.
    """
    if precision not in AMP_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(AMP_PRECISIONS)}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type != "cuda":
        return "fp32"
    if capability is None:
        capability = torch.cuda.get_device_capability(device)
        fast = tuple(capability) >= BF16_CAPABILITY and torch.cuda.is_bf16_supported(including_emulation=False)
    else:
        fast = tuple(capability) >= BF16_CAPABILITY
    return "bf16" if fast else "fp16"


def autocast(device, precision: str = "fp32"):
    """Return a ``torch.autocast`` context for ``device`` in ``precision`` (``bf16`` / ``fp16``), else a no-op one.

    ``"auto"`` is resolved for ``device`` first (:func:`resolve_precision`).
    """
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)


def to_device(batch, device):
    """Return ``batch`` (a dict or a sequence; None passes) with its tensors on ``device`` (None: unchanged)."""
    if batch is None or device is None:
        return batch
    if isinstance(batch, dict):
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    return [v.to(device) if torch.is_tensor(v) else v for v in batch]


def encoder_of(name: str) -> str:
    """Return ``"image"``, ``"text"`` or ``"other"`` for an open_clip parameter name."""
    if name.startswith("visual."):
        return "image"
    if name.startswith(TEXT_PREFIXES):
        return "text"
    return "other"


class RequiresGrad:
    """Context: remember every parameter's ``requires_grad`` and put it back on exit.

    ``only`` (parameter names): inside the context, exactly those require gradients.
    """

    def __init__(self, model, *, only: Collection[str] | None = None):
        self.model, self.only = model, None if only is None else set(only)

    def __enter__(self):
        self.flags = {n: p.requires_grad for n, p in self.model.named_parameters()}
        if self.only is not None:
            for n, p in self.model.named_parameters():
                p.requires_grad_(n in self.only)
        return self

    def __exit__(self, *exc):
        for n, p in self.model.named_parameters():
            p.requires_grad_(self.flags.get(n, p.requires_grad))


def release_memory() -> None:
    """Free what a finished run left behind (Python garbage, the CUDA cache).

    The first call also moves every object alive then (the imported libraries, the loaded data and model:
    about 400,000 objects) out of the garbage collector's reach (``gc.freeze``), so that this and every later
    collection costs about 0.03 s instead of 0.25 s on a 2-core CPU, twice per run. They are still freed by
    reference counting; only a reference cycle among them would outlive its use.
    """
    gc.collect()
    if not gc.get_freeze_count():
        gc.freeze()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
