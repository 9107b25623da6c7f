"""Several runs of one unlearning method trained at once: K copies of a model stepped as one under ``torch.func.vmap``.

A grid's runs of one seed read the same batches and differ in their learning rate. Here the K copies' trained
weights are one stacked tensor ``[K, N]`` (``torch.func.stack_module_state``, each tensor flattened), the registered
loss (``losses.get_loss``) runs on every copy at once (``functional_call`` under ``vmap``; the batches and the frozen
``original`` shared, not stacked) and AdamW (:func:`step_adamw`, a pure function of stacked tensors) steps every run
with its own learning rate and moments. Small-batch steps are launch bound on a GPU, where K runs at once fill the
card; on a CPU the work is compute bound and stacking saves little (and attention loops over the runs there: torch
has no vmap rule for its CPU flash-attention kernel, and warns so once).

Every registered loss reads its logs with ``.item()``, which has no one value under vmap: inside the vmapped call
it gives NaN (the logs are dropped here, :class:`_UnderVmap`). Losses that draw random numbers or decide in Python
on a run's values cannot run: :data:`UNSTACKABLE` says which and why. Under bf16 autocast, vmap runs a convolution
of stacked weights in float32 (its batching rule passes autocast by) and the linear layers in bf16.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Collection, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap
from torch.overrides import TorchFunctionMode

from .clip import PRECISIONS, RequiresGrad, autocast, copy_frozen, to_device
from .losses import LOSSES, get_loss

__all__ = ["STACKED_METHODS", "UNSTACKABLE", "StackedRuns", "check_stacked_settings", "load_run", "make_stacked_step",
           "stack_runs", "step_adamw", "step_adamw_", "train_stacked", "unstack_state"]

#: Registered losses that run stacked: no random draw, no Python decision on a run's values.
STACKED_METHODS = ("ft", "ga", "ga_pairs", "graddiff", "neggrad_plus", "cliperase", "cliperase_paper")
#: Registered losses that cannot, and why.
UNSTACKABLE = {"random_labels": "it draws random target classes (torch.randint), which vmap refuses",
               "lipschitz": "it draws random noise and reads its loss with float() for its logs"}


@dataclass
class StackedRuns:
    """K runs' trained tensors ``names`` (of ``shapes``) as ``weights [K, N]``, their AdamW moments, learning rates
    ``lrs [K]``, the steps taken and a scratch tensor for the AdamW step."""

    names: list[str]
    shapes: list[torch.Size]
    weights: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    lrs: torch.Tensor
    steps: int = 0
    scratch: torch.Tensor | None = None

    def split(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        """One run's flat weights ``[N]`` as ``{name: tensor}`` views."""
        parts = row.split([math.prod(s) for s in self.shapes])
        return {n: t.view(s) for n, t, s in zip(self.names, parts, self.shapes)}


def check_stacked_settings(*, method: str, lrs, precision: str = "fp32") -> None:
    """Raise a ValueError for a method that cannot run stacked, no learning rate, one that is negative or not
    finite (0: the run keeps its weights) or a precision other than :data:`clip.PRECISIONS`."""
    if method not in STACKED_METHODS:
        what = f"method {method!r} cannot be trained stacked" if method in LOSSES else f"unknown method {method!r}"
        why = f" ({UNSTACKABLE[method]})" if method in UNSTACKABLE else ""
        raise ValueError(f"{what}{why}; valid: {', '.join(STACKED_METHODS)}")
    lrs = list(lrs)
    if not lrs:
        raise ValueError("lrs is empty: give one learning rate per run (valid: finite numbers >= 0)")
    bad = [lr for lr in lrs if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr)
           or lr < 0]
    if bad:
        raise ValueError(f"learning rates must be finite numbers >= 0, got {bad}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")


def stack_runs(model: nn.Module, lrs: Sequence[float], *, trainable: Collection[str] | None = None) -> StackedRuns:
    """Stack ``len(lrs)`` copies of ``model``'s ``trainable`` parameters (None: all) as one ``[K, N]`` tensor, on
    the model's device, with zero AdamW moments."""
    named = dict(model.named_parameters())
    wanted = set(named) if trainable is None else set(trainable)
    if wanted - set(named):
        raise ValueError(f"unknown parameter names in trainable: {sorted(wanted - set(named))[:5]}")
    names = [n for n in named if n in wanted]
    if not names or len({named[n].dtype for n in names}) != 1 or not named[names[0]].is_floating_point():
        raise ValueError("stacked runs need at least one trained parameter, all of one floating dtype")
    stacked, _ = stack_module_state([model] * len(lrs))
    weights = torch.cat([stacked[n].detach().reshape(len(lrs), -1) for n in names], dim=1)
    return StackedRuns(names=names, shapes=[named[n].shape for n in names], weights=weights,
                       exp_avg=torch.zeros_like(weights), exp_avg_sq=torch.zeros_like(weights),
                       scratch=torch.empty_like(weights),
                       lrs=torch.tensor([float(lr) for lr in lrs], dtype=weights.dtype, device=weights.device))


def step_adamw_(weights: torch.Tensor, grads: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, *,
                step: int, lrs: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                weight_decay: float = 0.0, scratch: torch.Tensor | None = None) -> None:
    """:func:`step_adamw` in place: ``weights``, ``exp_avg`` and ``exp_avg_sq`` are updated; ``scratch`` (a tensor
    like ``weights``; None: a new one) holds the step (a fresh CPU tensor of a large model costs more than the step)."""
    b1, b2 = betas
    lr = lrs.to(weights.dtype).view(-1, *[1] * (weights.dim() - 1))
    weights.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grads, 1 - b1)  # b1 m + (1 - b1) g, as torch.optim.AdamW computes it
    exp_avg_sq.mul_(b2).addcmul_(grads, grads, value=1 - b2)
    update = torch.sqrt(exp_avg_sq, out=scratch).div_(math.sqrt(1 - b2 ** step)).add_(eps)  # the denominator
    torch.div(exp_avg, update, out=update)
    weights.sub_(update.mul_(lr / (1 - b1 ** step)))


def step_adamw(weights: torch.Tensor, grads: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, *,
               step: int, lrs: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
               weight_decay: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One AdamW step of stacked runs (dim 0: the run); return new ``(weights, exp_avg, exp_avg_sq)``.

    ``torch.optim.AdamW``'s formula with run ``k``'s learning rate ``lrs[k]``: decoupled decay ``w -= lr * wd * w``,
    then ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2`` and ``w -= lr / (1 - b1^t) * m /
    (sqrt(v / (1 - b2^t)) + eps)`` at ``step`` ``t`` (1 at the first step). The inputs are not changed (the
    training step uses :func:`step_adamw_`, the same operations in place: a copy of the weights costs memory).
    """
    out = weights.clone(), exp_avg.clone(), exp_avg_sq.clone()
    step_adamw_(out[0], grads, out[1], out[2], step=step, lrs=lrs, betas=betas, eps=eps, weight_decay=weight_decay)
    return out


class _UnderVmap(TorchFunctionMode):
    """Two calls made to work under vmap; any other call is unchanged.

    ``Tensor.item()`` of a transformed tensor gives NaN instead of failing (the losses' logs, dropped here), and a
    batch norm of a lower-precision input (bf16 autocast) with float32 statistics, which vmap refuses, runs on the
    input in float32 and returns the input's dtype (what the mixed-precision kernel does outside vmap).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.item and torch._C._functorch.is_functorch_wrapped_tensor(args[0]):
            return math.nan
        if func is F.batch_norm:
            x, stats = args[0], args[1] if len(args) > 1 else kwargs.get("running_mean")
            if stats is not None and stats.dtype == torch.float32 and x.dtype != torch.float32:
                return func(x.float(), *args[1:], **kwargs).to(x.dtype)
        return func(*args, **kwargs)


class _LossOf(nn.Module):
    """A registered loss of ``model`` as a module's forward, so that ``functional_call`` swaps in a run's weights."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, original, forget_batch, retain_batch, loss_kwargs):
        return self.loss_fn(self.model, original, forget_batch, retain_batch, **loss_kwargs)[0].float()


def make_stacked_step(model: nn.Module, runs: StackedRuns, *, method: str, original: nn.Module,
                      loss_kwargs: dict | None = None, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                      weight_decay: float = 0.0, precision: str = "fp32") -> Callable:
    """Return ``step(forget_batch, retain_batch) -> losses [K]``: one step of every run of ``runs`` (updated in
    place), the loss of ``method`` under ``precision`` autocast; ``model`` lends its structure, buffers and untrained
    weights (keep it in eval mode and its parameters out of autograd: :func:`train_stacked` does)."""
    check_stacked_settings(method=method, lrs=runs.lrs.tolist(), precision=precision)
    wrapper, kwargs = _LossOf(model, get_loss(method)), dict(loss_kwargs or {})

    def step(forget_batch, retain_batch):
        def run_loss(row):
            params = {f"model.{n}": t for n, t in runs.split(row).items()}
            with autocast(row.device, precision):
                return functional_call(wrapper, params, (original, forget_batch, retain_batch, kwargs))

        # each run's gradient under vmap: its backward is the run's own, batched (autograd through the vmapped
        # forward instead computes a linear layer's weight gradient token by token and sums them)
        with _UnderVmap():
            grads, losses = vmap(grad_and_value(run_loss))(runs.weights)
        runs.steps += 1
        step_adamw_(runs.weights, grads, runs.exp_avg, runs.exp_avg_sq, step=runs.steps, lrs=runs.lrs, betas=betas,
                    eps=eps, weight_decay=weight_decay, scratch=runs.scratch)
        return losses.detach()
    return step


def unstack_state(model: nn.Module, runs: StackedRuns, k: int) -> dict[str, torch.Tensor]:
    """``model``'s state dict with run ``k``'s trained weights (copies)."""
    state = {name: t.detach().clone() for name, t in model.state_dict().items()}
    state.update({n: t.clone() for n, t in runs.split(runs.weights[k].detach()).items()})
    return state


def load_run(model: nn.Module, runs: list[dict], k: int) -> nn.Module:
    """Return a copy of ``model`` holding run ``k`` of :func:`train_stacked`'s ``runs``: an ordinary model."""
    out = copy.deepcopy(model)
    out.load_state_dict(runs[k]["state"])
    return out


def train_stacked(model: nn.Module, *, method: str, lrs: Sequence[float], forget_batches: Sequence[dict] | None = None,
                  retain_batches: Sequence[dict] | None = None, original: nn.Module | None = None,
                  loss_kwargs: dict | None = None, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                  weight_decay: float = 0.0, precision: str = "fp32", trainable: Collection[str] | None = None,
                  device=None) -> list[dict]:
    """Train ``len(lrs)`` copies of ``model`` at once with loss ``method``, run ``k`` at learning rate ``lrs[k]``;
    return ``[{"state": state dict of run k, "losses": [loss per step]}]``. ``model`` is not changed.

    Every run takes the same batches, step ``i`` the ``i``-th of ``forget_batches`` and of ``retain_batches``
    (None: not used; both given: of one length), moved to ``device`` (None: where they are; the model must be
    there). Each run is ``unlearning.unlearn`` with ``torch.optim.AdamW(lr=lrs[k], betas, eps, weight_decay)``
    over ``trainable`` (None: every parameter, the temperature trained freely), the model in eval mode and the
    loss under ``precision`` autocast (``fp32`` or ``bf16``); ``original`` (default: a frozen copy of ``model``)
    is shared. A run whose loss turns NaN goes on (the others are not touched): read its ``losses``. Only the
    :data:`STACKED_METHODS`; per-run batches (several seeds) are not supported.
    """
    check_stacked_settings(method=method, lrs=lrs, precision=precision)
    driver = forget_batches if forget_batches is not None else retain_batches
    if driver is None:
        raise ValueError("train_stacked needs forget_batches or retain_batches")
    if forget_batches is not None and retain_batches is not None and len(forget_batches) != len(retain_batches):
        raise ValueError(f"{len(forget_batches)} forget batches but {len(retain_batches)} retain batches: one of "
                         "each per step")
    was_training = model.training
    model.eval()
    original = copy_frozen(model) if original is None else original
    runs = stack_runs(model, lrs, trainable=trainable)
    step = make_stacked_step(model, runs, method=method, original=original, loss_kwargs=loss_kwargs, betas=betas,
                             eps=eps, weight_decay=weight_decay, precision=precision)
    history = []
    with RequiresGrad(model, only=()):  # the stacked weights get the gradients, not the model's own
        for i in range(len(driver)):
            forget = to_device(forget_batches[i], device) if forget_batches is not None else None
            retain = to_device(retain_batches[i], device) if retain_batches is not None else None
            history.append(step(forget, retain))
    losses = torch.stack(history, dim=1).cpu().tolist() if history else [[] for _ in lrs]  # one sync at the end
    out = [{"state": unstack_state(model, runs, k), "losses": losses[k]} for k in range(len(lrs))]
    model.train(was_training)
    return out
