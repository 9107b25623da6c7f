"""Benchmark the training steps behind the mini profile's wall time.

1. Mini CLIP training step (``models.train_step``, as ``train_mini_clip`` runs
   it): batch 256 of 32x32 images against the 78 captions, forward + backward +
   AdamW, with plain or fused AdamW and contiguous or channels-last convolutions
   (the recipe uses fused + channels-last).
2. Unlearning step of the shared loop (``unlearning.unlearn``, CLIPErase, batch
   32): plain against fused AdamW (``models.make_adamw``, what the loop uses).

Timings are medians over the measured steps after warm-up, on a randomly
initialised mini model (same cost as the trained one). Example::

    python benchmarks/bench_training.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def time_training_steps(*, fused: bool, channels_last: bool, steps: int, warmup: int, batch_size: int) -> float:
    """Return the median milliseconds of one mini-training step."""
    from clipunlearn import data, models

    model, _, tokenizer = models.create_mini_model("mini")
    captions, compatible = models.build_caption_vocabulary()
    tokens = tokenizer(captions)
    train = data.load_fashion_mnist("train", styles=data.STYLES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused or None)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.visual.to(memory_format=fmt)
    n = len(train) // len(data.STYLES)
    g = torch.Generator().manual_seed(0)
    times = []
    model.train()
    for i in range(warmup + steps):
        start = time.perf_counter()
        idx, styles = torch.randint(n, (batch_size,), generator=g), torch.randint(3, (batch_size,), generator=g)
        images, labels = train.get_batch(idx + styles * n)
        models.train_step(model, optimizer, images.contiguous(memory_format=fmt), tokens, compatible[styles, labels])
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def time_unlearning_steps(*, fused: bool, steps: int, repeats: int) -> float:
    """Return the median milliseconds per step of a CLIPErase run of ``steps`` steps."""
    from clipunlearn import data, models, unlearning

    train = data.load_fashion_mnist("train")
    _, _, tokenizer = models.create_mini_model("mini")
    sneaker = data.check_classnames(["sneaker"], train.classnames)
    pairs = lambda idx: unlearning.make_pair_loader(train, tokenizer=tokenizer, templates=data.FASHION_MNIST_TEMPLATES,
                                                    indices=idx, batch_size=32, seed=0)
    forget = data.select_indices(train, classes=sneaker, limit_per_class=500)
    retain = data.select_indices(train, exclude_classes=sneaker, limit_per_class=100)
    real_make_adamw = unlearning.make_adamw
    if not fused:  # the loop builds its optimiser with make_adamw: swap in plain AdamW
        unlearning.make_adamw = lambda params, **kw: torch.optim.AdamW(params, **kw)
    try:
        times = []
        for _ in range(repeats):
            model, _, _ = models.create_mini_model("mini")
            start = time.perf_counter()
            unlearning.unlearn(model, method="cliperase", forget_loader=pairs(forget), retain_loader=pairs(retain),
                               lr=1e-4, max_steps=steps, progress=False)
            times.append((time.perf_counter() - start) / steps)
    finally:
        unlearning.make_adamw = real_make_adamw
    return 1000 * statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--steps", type=int, default=20, help="measured training steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up training steps per variant")
    parser.add_argument("--unlearn-steps", type=int, default=30, help="steps of each CLIPErase run")
    parser.add_argument("--repeats", type=int, default=3, help="CLIPErase runs per variant")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    print("\nmini CLIP training step (batch 256, forward + backward + AdamW)")
    print(f"{'AdamW':>7} {'memory format':>15} {'ms/step':>9} {'speed-up':>9}")
    base = None
    for fused, channels_last in ((False, False), (True, False), (False, True), (True, True)):
        ms = time_training_steps(fused=fused, channels_last=channels_last, steps=args.steps, warmup=args.warmup,
                                 batch_size=256)
        base = base or ms
        print(f"{'fused' if fused else 'plain':>7} {'channels-last' if channels_last else 'contiguous':>15} "
              f"{ms:9.1f} {base / ms:8.2f}x")

    print(f"\nCLIPErase unlearning step (batch 32, {args.unlearn_steps} steps, median of {args.repeats} runs)")
    plain = time_unlearning_steps(fused=False, steps=args.unlearn_steps, repeats=args.repeats)
    fused = time_unlearning_steps(fused=True, steps=args.unlearn_steps, repeats=args.repeats)
    print(f"  plain AdamW {plain:7.1f} ms/step\n  fused AdamW {fused:7.1f} ms/step  ({plain / fused:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
