"""The one unlearning loop shared by every method.

``unlearn`` owns the optimiser, the steps, the evaluation cadence, checkpoint
selection, logging, the progress bar, early stops (NaN loss, ``stop_fn``) and
resume; a method only contributes its loss (``losses.LOSSES``).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Sequence

import torch

from .losses import get_loss
from .models import copy_frozen, load_checkpoint, make_adamw, save_checkpoint


# --------------------------------------------------------------------------- #
# Image-caption batches
# --------------------------------------------------------------------------- #
class PairLoader:
    """Iterable of batch dicts ``{"images", "texts", "labels"}`` over a labelled dataset.

    Each image is paired with a caption of its class (``dataset.classnames``) from
    one of ``templates``; the order and the template of every sample depend only on
    ``seed`` and the epoch (each ``iter()`` is the next epoch), so runs repeat
    exactly. In-memory datasets are sliced with ``get_batch`` (no per-item Python).
    """

    def __init__(self, dataset, *, tokenizer, templates: Sequence[str], indices=None, batch_size: int = 64,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False, device="cpu"):
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.seed, self.drop_last, self.device = seed, drop_last, device
        self.indices = (torch.arange(len(dataset)) if indices is None
                        else torch.as_tensor(indices, dtype=torch.long))
        if len(self.indices) == 0:
            raise ValueError("PairLoader got no samples: check the class names / indices of the split")
        templates = list(templates)
        texts = [t.format(c) if isinstance(t, str) else t(c) for c in dataset.classnames for t in templates]
        self.tokens = tokenizer(texts).view(len(dataset.classnames), len(templates), -1)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batches(self, epoch: int):
        """Yield the batches of ``epoch`` (deterministic)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = self.indices[torch.randperm(len(self.indices), generator=g)] if self.shuffle else self.indices
        template_ids = torch.randint(self.tokens.shape[1], (len(order),), generator=g)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            if hasattr(self.dataset, "get_batch"):
                images, labels = self.dataset.get_batch(idx)
            else:
                items = [self.dataset[int(i)] for i in idx]
                images, labels = torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items])
            texts = self.tokens[labels, template_ids[b * self.batch_size:(b + 1) * self.batch_size]]
            yield {"images": images.to(self.device), "texts": texts.to(self.device), "labels": labels.to(self.device)}

    def __iter__(self):
        self.epoch += 1
        return self.batches(self.epoch - 1)


def make_pair_loader(dataset, *, tokenizer, templates, indices=None, batch_size: int = 64, shuffle: bool = True,
                     seed: int = 0, drop_last: bool = False, device="cpu") -> PairLoader:
    """Return a ``PairLoader`` over ``dataset`` (or its ``indices``) with class captions from ``templates``."""
    return PairLoader(dataset, tokenizer=tokenizer, templates=templates, indices=indices, batch_size=batch_size,
                      shuffle=shuffle, seed=seed, drop_last=drop_last, device=device)


# --------------------------------------------------------------------------- #
# The loop
# --------------------------------------------------------------------------- #
@dataclass
class UnlearnResult:
    """What ``unlearn`` did: per-step history, steps taken, the selected step and the wall time."""

    history: list = field(default_factory=list)
    steps: int = 0
    best_step: int | None = None
    seconds: float = 0.0
    stopped_early: str | None = None

    @property
    def evals(self) -> list[dict]:
        """The evaluations, as ``{"step": s, **eval_dict}``."""
        return [{"step": h["step"], **h["eval"]} for h in self.history if "eval" in h]


def _select_trainable(model, trainable) -> list[tuple[str, torch.nn.Parameter]]:
    named = list(model.named_parameters())
    if trainable is None:
        return named
    if callable(trainable):
        return [(n, p) for n, p in named if trainable(n, p)]
    wanted = set(trainable)
    unknown = wanted - {n for n, _ in named}
    if unknown:
        raise ValueError(f"unknown parameter names in trainable: {sorted(unknown)[:5]}")
    return [(n, p) for n, p in named if n in wanted]


def _cpu_state(model) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _cycle(loader, *, start_step: int = 0):
    """Yield batches of ``loader`` forever, epoch after epoch, starting after ``start_step`` batches."""
    epoch, skip = divmod(start_step, len(loader))
    while True:
        batches = loader.batches(epoch) if hasattr(loader, "batches") else iter(loader)
        for i, batch in enumerate(batches):
            if i >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


def unlearn(model, *, method: str, forget_loader=None, retain_loader=None, original=None, epochs: int = 1,
            max_steps: int | None = None, lr: float = 1e-5, weight_decay: float = 0.0,
            betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, loss_kwargs: dict | None = None,
            trainable: Callable | Collection[str] | None = None, eval_fn: Callable | None = None,
            eval_every: int | None = None, eval_at_start: bool = False, select_fn: Callable | None = None,
            stop_fn: Callable | None = None, checkpoint_dir=None, checkpoint_every: int = 50, device="cpu",
            seed: int = 0, progress: bool = True) -> UnlearnResult:
    """Unlearn in place with method ``method``; return an ``UnlearnResult``.

    Steps: ``epochs`` passes over the forget loader (the retain loader when there is
    none), cut at ``max_steps``; each step draws one forget and one retain batch.
    Only ``trainable`` parameters (None: all; a callable ``(name, param) -> bool``; or
    names) get gradients and AdamW state. ``original`` (default: a frozen copy of the
    model at the start, same device) gets neither. Every ``eval_every`` steps and at
    the end, ``eval_fn(model) -> dict`` is logged; ``select_fn(eval) -> score`` keeps
    the best evaluated state and restores it at the end; ``stop_fn(model, step,
    eval) -> bool`` stops early (checked after every step, ``eval`` = last
    evaluation). A non-finite loss stops and restores the last evaluated good state.
    With ``checkpoint_dir`` the run saves ``state.pt`` every ``checkpoint_every``
    steps and resumes from it. The model stays in eval mode (BatchNorm statistics
    of the original are kept).
    """
    loss_fn = get_loss(method)
    loss_kwargs = dict(loss_kwargs or {})
    driver = forget_loader if forget_loader is not None else retain_loader
    if driver is None:
        raise ValueError("unlearn needs a forget_loader or a retain_loader")
    steps_per_epoch = len(driver)
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    model.eval()
    if original is None:
        original = copy_frozen(model)

    chosen = _select_trainable(model, trainable)
    if not chosen:
        raise ValueError("no trainable parameters selected")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    chosen_names = {n for n, _ in chosen}
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen_names)
    optimizer = make_adamw([p for _, p in chosen], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    result, step, best_score, best_state, last_eval = UnlearnResult(), 0, -math.inf, None, {}
    ckpt = Path(checkpoint_dir) / "state.pt" if checkpoint_dir is not None else None
    if ckpt is not None and ckpt.exists():
        state = load_checkpoint(ckpt)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, result.history = int(state["step"]), list(state["history"])
        best_score = float(state["best_score"])
        best_state = state.get("best_state")
        result.best_step = state.get("best_step")
        last_eval = next((h["eval"] for h in reversed(result.history) if "eval" in h), {})
    good_state = _cpu_state(model)

    def evaluate(at: int) -> dict:
        nonlocal best_score, best_state, good_state
        out = dict(eval_fn(model)) if eval_fn is not None else {}
        result.history.append({"step": at, "eval": out})
        good_state = _cpu_state(model)
        if select_fn is not None and at > 0:
            score = float(select_fn(out))
            if score > best_score:
                best_score, best_state, result.best_step = score, good_state, at
        return out

    def save(at: int) -> None:
        if ckpt is not None:
            save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": at,
                             "history": result.history, "best_score": best_score, "best_state": best_state,
                             "best_step": result.best_step}, ckpt)

    from tqdm.auto import tqdm

    start = time.perf_counter()
    if eval_at_start and step == 0 and eval_fn is not None:
        last_eval = evaluate(0)
    forget_iter = _cycle(forget_loader, start_step=step) if forget_loader is not None else None
    retain_iter = _cycle(retain_loader, start_step=step) if retain_loader is not None else None
    bar = tqdm(total=total, initial=step, desc=method, disable=not progress, leave=False)
    try:
        while step < total:
            forget_batch = next(forget_iter) if forget_iter else None
            retain_batch = next(retain_iter) if retain_iter else None
            torch.manual_seed(seed * 1_000_003 + step)  # stochastic losses repeat on resume
            loss, logs = loss_fn(model, original, forget_batch, retain_batch, **loss_kwargs)
            if not torch.isfinite(loss):
                warnings.warn(f"{method}: non-finite loss at step {step}; restoring the last good state")
                model.load_state_dict(good_state)
                result.stopped_early = f"non-finite loss at step {step}"
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            result.history.append({"step": step, "loss": float(loss.detach()), **logs})
            if eval_every and step % eval_every == 0 and step < total:
                last_eval = evaluate(step)
            if ckpt is not None and step % checkpoint_every == 0:
                save(step)
            if stop_fn is not None and stop_fn(model, step, last_eval):
                result.stopped_early = f"stop_fn at step {step}"
                break
        if result.stopped_early is None or result.stopped_early.startswith("stop_fn"):
            if eval_fn is not None and not (result.history and result.history[-1].get("step") == step
                                            and "eval" in result.history[-1]):
                evaluate(step)
        save(step)
    finally:
        bar.close()
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
    if best_state is not None:
        model.load_state_dict(best_state)
    result.steps, result.seconds = step, time.perf_counter() - start
    return result
