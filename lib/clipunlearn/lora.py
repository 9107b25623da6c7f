"""Low-rank adapters (LoRA) on open_clip layers, merged back into plain weights.

``add_lora`` gives each chosen weight ``W`` (out x fan_in, convolution kernels
flattened) a trainable low-rank update, ``W + (alpha / rank) * B @ A``, with ``B``
initialised to zero (the adapted model starts identical) and ``W`` frozen;
``merge_lora`` folds the update into ``W``, so the state dict is a plain open_clip one
again (e.g. for souping with the original weights).

Why not peft: the adapter must act wherever the weight is *read*, and open_clip reads
several weights without calling their module. ``AttentionPool2d`` (the ModifiedResNet
head) hands ``q_proj.weight``, ``k_proj.weight``, ``v_proj.weight`` and ``c_proj.weight`` to
``F.multi_head_attention_forward``, and ``nn.MultiheadAttention`` (ViT and text
blocks) does the same with its fused ``in_proj_weight`` and ``out_proj.weight``. peft
replaces modules with wrappers whose ``forward`` adds the adapter, so on these layers the
adapter would be silently ignored (peft's own LoRA ``MultiheadAttention`` works around
this by merging before and unmerging after every call, and warns that targeting
``out_proj`` alone is ignored). Here the adapter is a ``torch.nn.utils.parametrize``
parametrization of the weight tensor itself, so every read sees ``W + BA``: one small
class covers ``nn.Linear``, ``nn.Conv2d``, the attention pool and ``nn.MultiheadAttention``
(one adapter on the fused q/k/v projection, one on the output projection), and no new
dependency is needed.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["LoRAParametrization", "lora_targets", "add_lora", "merge_lora", "lora_parameters",
           "lora_parameter_names", "has_lora",
           "LORA_MODULE_TYPES"]

#: Module types ``add_lora`` adapts (``nn.MultiheadAttention``: ``in_proj_weight`` and ``out_proj.weight``).
LORA_MODULE_TYPES = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)


class LoRAParametrization(nn.Module):
    """Parametrization ``W -> W + (alpha / rank) * (B @ A).view_as(W)`` of a weight ``[out, ...]``.

    ``A [rank, fan_in]`` starts Kaiming-uniform (as in the LoRA reference code) and
    ``B [out, rank]`` at zero, so the adapted weight starts equal to ``W``.
    """

    def __init__(self, weight: torch.Tensor, *, rank: int, alpha: float, requires_grad: bool = True):
        super().__init__()
        out, fan_in = weight.shape[0], weight[0].numel()
        if not 1 <= rank <= min(out, fan_in):
            raise ValueError(f"LoRA rank must be in [1, {min(out, fan_in)}] for a weight of shape "
                             f"{tuple(weight.shape)}, got {rank}")
        self.lora_A = nn.Parameter(torch.empty(rank, fan_in, device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(out, rank, device=weight.device, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        self.base_requires_grad = requires_grad  # restored on the merged weight by merge_lora

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scaling * (self.lora_B @ self.lora_A).view_as(weight)


def _weight_slots(module: nn.Module) -> list[tuple[nn.Module, str]]:
    """Return the ``(owner, tensor_name)`` pairs that get an adapter in ``module``."""
    if isinstance(module, nn.MultiheadAttention):
        if not module._qkv_same_embed_dim:
            raise ValueError("LoRA on nn.MultiheadAttention needs kdim == vdim == embed_dim (a fused in_proj_weight)")
        return [(module, "in_proj_weight"), (module.out_proj, "weight")]
    return [(module, "weight")]


def lora_targets(model, names: Iterable[str] | None = None) -> list[str]:
    """Return the module names of ``model`` that ``add_lora`` can adapt (``names`` given: those of them).

    Adaptable: ``nn.Linear``, ``nn.Conv2d`` and ``nn.MultiheadAttention`` modules; the
    ``out_proj`` inside an attention module is covered by the attention module itself.
    """
    modules = dict(model.named_modules())
    attention = {n for n, m in modules.items() if isinstance(m, nn.MultiheadAttention)}
    found = [n for n, m in modules.items() if isinstance(m, LORA_MODULE_TYPES)
             and not (n.endswith(".out_proj") and n[: -len(".out_proj")] in attention)]
    return found if names is None else [n for n in names if n in set(found)]


def add_lora(model, module_names: Iterable[str], *, rank: int = 4, alpha: float | None = None) -> list[str]:
    """Add LoRA adapters to ``module_names`` of ``model`` in place; return the adapter parameter names.

    Every parameter of ``model`` is frozen except the new adapters (peft's convention);
    ``merge_lora`` puts the adapted weights' ``requires_grad`` back. ``alpha`` defaults to
    ``rank`` (scaling 1). Raises a ValueError naming the adaptable modules for an unknown
    or unsupported name, and for a module that already has an adapter.
    """
    alpha = float(rank if alpha is None else alpha)
    module_names = list(module_names)
    modules = dict(model.named_modules())
    bad = [n for n in module_names if n not in modules or not isinstance(modules[n], LORA_MODULE_TYPES)]
    if bad:
        raise ValueError(f"cannot add LoRA to {bad[:5]}: not nn.Linear / nn.Conv2d / nn.MultiheadAttention "
                         f"modules of the model; adaptable: {lora_targets(model)[:12]} ...")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for name in module_names:
        for owner, tensor_name in _weight_slots(modules[name]):
            if parametrize.is_parametrized(owner, tensor_name):
                raise ValueError(f"{name} already has a LoRA adapter: call merge_lora first")
            weight = getattr(owner, tensor_name)
            prefix = name if owner is modules[name] else f"{name}.out_proj"
            adapter = LoRAParametrization(weight, rank=rank, alpha=alpha,
                                          requires_grad=flags.get(f"{prefix}.{tensor_name}", True))
            adapter.parameter_order = list(owner._parameters)  # merge_lora restores the state-dict order
            parametrize.register_parametrization(owner, tensor_name, adapter)
    return lora_parameter_names(model)


def lora_parameter_names(model) -> list[str]:
    """Return the names of the adapter parameters (``...lora_A`` / ``...lora_B``) of ``model``."""
    return [n for n, _ in model.named_parameters() if n.endswith((".lora_A", ".lora_B"))]


def lora_parameters(model) -> list[nn.Parameter]:
    """Return the adapter parameters of ``model`` (what the optimiser updates)."""
    return [p for n, p in model.named_parameters() if n.endswith((".lora_A", ".lora_B"))]


def has_lora(model) -> bool:
    """Return True when ``model`` holds at least one LoRA adapter."""
    return any(isinstance(m, LoRAParametrization) for m in model.modules())


def merge_lora(model) -> list[str]:
    """Fold every adapter into its weight (``W <- W + scale * B @ A``) in place; return the merged tensors' names.

    Afterwards the module tree and ``state_dict`` keys are plain open_clip again and
    each merged weight's ``requires_grad`` is what it was before ``add_lora``.
    """
    merged = []
    for module_name, module in list(model.named_modules()):
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name in list(module.parametrizations.keys()):
            chain = module.parametrizations[tensor_name]
            adapters = [p for p in chain if isinstance(p, LoRAParametrization)]
            if not adapters:
                continue
            if len(adapters) != len(chain):
                raise ValueError(f"{module_name}.{tensor_name} mixes LoRA with other parametrizations: "
                                 "remove those first (torch.nn.utils.parametrize.remove_parametrizations)")
            parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
            getattr(module, tensor_name).requires_grad_(adapters[0].base_requires_grad)
            order = getattr(adapters[0], "parameter_order", [])
            rank_of = lambda key: order.index(key) if key in order else len(order)
            module._parameters = dict(sorted(module._parameters.items(), key=lambda kv: rank_of(kv[0])))
            merged.append(f"{module_name}.{tensor_name}" if module_name else tensor_name)
    return merged
