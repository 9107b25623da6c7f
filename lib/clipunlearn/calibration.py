"""Time one step of each kind of work a notebook does, on this machine's device: what ``plan`` multiplies.

A step is one of: a registered loss (``ft``, ``cliperase``, ...: forward, backward and a fused Adam step, as
``unlearning.unlearn`` runs it, called ``loss(model, original, forget_batch, retain_batch)``), ``lipschitz``
(paper B's loss with its noise samples), ``synthetic`` (one ascent step of paper B's synthetic images) or
``eval`` (image encoding without gradients). The model has random weights (``models.load_clip(name, "random")``):
a step takes the same time as with trained weights, and nothing is downloaded. On the CPU a step of a paper model
takes seconds, so :func:`calibrate_steps` times a small batch there and scales per image (``per_image=True``).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Iterable

import torch

from . import models, synthetic
from .clip import autocast, copy_frozen, get_image_size, get_normalization
from .losses import LOSSES

__all__ = ["SPECIAL_STEPS", "StepTime", "calibrate_steps", "make_batch", "time_calls", "time_step"]

#: Steps that are not a registered loss.
SPECIAL_STEPS = ("synthetic", "eval")
#: Noise samples of the Lipschitz loss (paper B's setting).
LIPSCHITZ_SAMPLES = 25


@dataclass(frozen=True)
class StepTime:
    """Seconds of one step of ``step`` on ``model`` at ``batch`` images (``measured_batch``: the batch timed; a
    smaller one is scaled per image)."""

    model: str
    step: str
    batch: int
    seconds: float
    measured_batch: int
    device: str


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, *, device, warmup: int, repeats: int) -> list[float]:
    """Return the seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (CUDA synchronised)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _time(fn, *, device: torch.device, warmup: int, repeats: int) -> float:
    return statistics.median(time_calls(fn, device=device, warmup=warmup, repeats=repeats))


def make_batch(tokenizer, *, size: int, image_size: int, device, seed: int) -> dict:
    """A random batch as the losses take it: ``{"images", "texts", "labels"}`` of 10 classes."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(size) % 10
    return {"images": torch.randn(size, 3, image_size, image_size, generator=g).to(device),
            "texts": tokenizer([f"a photo of a class {int(c)} object." for c in labels]).to(device),
            "labels": labels.to(device)}


def time_step(model, tokenizer, *, step: str, batch: int, device, precision: str = "fp32", warmup: int = 1,
              repeats: int = 2) -> float:
    """Return the median seconds of one ``step`` (a registered loss, ``lipschitz``, ``synthetic`` or ``eval``) of
    ``model`` at ``batch`` images; ``model`` is trained in place (random weights: it does not matter)."""
    device = torch.device(device)
    size = get_image_size(model)
    if step == "eval":
        images = torch.randn(batch, 3, size, size).to(device)

        def run():
            with torch.no_grad(), autocast(device, precision):
                model.encode_image(images)
        return _time(run, device=device, warmup=warmup, repeats=repeats)
    if step == "synthetic":
        mean, std = get_normalization(model)
        weights = torch.nn.functional.normalize(torch.randn(model.visual.output_dim, 10), dim=0).to(device)

        def generate(steps: int):
            synthetic.generate_synthetic(model, weights, classes=[0], n_per_class=batch, image_size=size, mean=mean,
                                         std=std, steps=steps, thresholds=1.01, patience=0, batch_size=batch, seed=0,
                                         device=device, progress=False)
        one = _time(lambda: generate(1), device=device, warmup=warmup, repeats=1)
        three = _time(lambda: generate(3), device=device, warmup=0, repeats=1)
        return max(three - one, 0.0) / 2
    if step not in LOSSES:
        raise ValueError(f"unknown step {step!r}; valid: {', '.join((*LOSSES, *SPECIAL_STEPS))}")
    kwargs = {"n_samples": LIPSCHITZ_SAMPLES} if step == "lipschitz" else {}
    forget = make_batch(tokenizer, size=batch, image_size=size, device=device, seed=1)
    retain = make_batch(tokenizer, size=batch, image_size=size, device=device, seed=2)
    original = copy_frozen(model)  # the model stays in eval mode, as the unlearning loop keeps it (BatchNorm frozen)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-9, fused=True if device.type in ("cuda", "cpu") else None)

    def run():
        with autocast(device, precision):
            loss, _ = LOSSES[step](model, original, forget, retain, **kwargs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    try:
        return _time(run, device=device, warmup=warmup, repeats=repeats)
    finally:
        model.zero_grad(set_to_none=True)


def calibrate_steps(needed: Iterable[tuple[str, str, int]], *, device, precision: str = "fp32",
                    max_batch: int | None = None, warmup: int = 1, repeats: int = 2,
                    log=print) -> dict[tuple[str, str, int], StepTime]:
    """Time every ``(model, step, batch)`` of ``needed``; return ``{key: StepTime}``.

    Each model is built once with random weights. ``max_batch``: time at most this batch and scale per image
    (the CPU, where a paper-size step takes seconds); None: the batch asked for. ``log``: one line per step.
    """
    device = torch.device(device)
    out: dict[tuple[str, str, int], StepTime] = {}
    by_model: dict[str, list[tuple[str, int]]] = {}
    for name, step, batch in dict.fromkeys(needed):
        by_model.setdefault(name, []).append((step, batch))
    for name, steps in by_model.items():
        model, _, tokenizer = models.load_clip(name, "random" if name not in models.MINI_MODELS else None,
                                               device=device)
        measured: dict[tuple[str, int], float] = {}
        for step, batch in steps:
            size = min(batch, max_batch) if max_batch else batch
            if (step, size) not in measured:
                measured[step, size] = time_step(model, tokenizer, step=step, batch=size, device=device,
                                                 precision=precision, warmup=warmup, repeats=repeats)
            seconds = measured[step, size] * batch / size
            out[name, step, batch] = StepTime(name, step, batch, seconds, size, str(device))
            if log is not None:
                log(f"calibrated {name} {step} batch {batch}: {seconds * 1000:.1f} ms/step"
                    + (f" (timed at batch {size}, scaled per image)" if size != batch else ""))
        del model
    return out
