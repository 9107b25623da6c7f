"""Several runs trained at once: K copies of a CLIP stacked (``torch.func.stack_module_state``) and stepped as one
under ``torch.func.vmap``, against the same K runs one after the other.

The FT loss (``losses.pair_clip_loss``, the label-aware CLIP loss) on the same retain batches for every run, each run
its own weights and AdamW state (one fused AdamW over the stacked tensors: elementwise, so each run's update is its
own). Prints the milliseconds per run-step of both and the largest difference of the K runs' weights after the last
step from the sequential runs' (float32: summation order only). Small-batch steps of a small model are launch bound
on a GPU, where stacking runs fills the card; on a CPU the same work is compute bound. Example::

    python benchmarks/bench_stacked_runs.py --runs 4 12 --steps 20 --device cpu

Measured numbers go to ``benchmarks/README.md`` with the machine named.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch.func import functional_call, stack_module_state, vmap

from clipunlearn import data, models
from clipunlearn.clip import make_adamw
from clipunlearn.losses import pair_clip_loss
from clipunlearn.unlearning import make_pair_loader


def make_batches(*, tokenizer, steps: int, batch_size: int, device) -> list[dict]:
    """``steps`` retain batches of the mini world (photos of every class with their captions)."""
    train, _ = data.load_mini_world()
    idx = torch.arange(0, 20000, 7)
    loader = make_pair_loader(train, tokenizer=tokenizer, templates=("a photo of a {}.",), indices=idx,
                              batch_size=batch_size, seed=3, device=device)
    return [b for _, b in zip(range(steps), loader)]


def run_sequential(base, batches, *, runs: int, lr: float) -> tuple[list[dict], float]:
    """Train ``runs`` copies one after the other; return their final states and ms per run-step."""
    states, start = [], time.perf_counter()
    for _ in range(runs):
        model = copy.deepcopy(base)
        opt = make_adamw(list(model.parameters()), lr=lr)
        for b in batches:
            loss = pair_clip_loss(model, b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        states.append({k: v.detach().clone() for k, v in model.named_parameters()})
    _sync(batches)
    return states, (time.perf_counter() - start) / (runs * len(batches)) * 1e3


class LossOf(torch.nn.Module):
    """The FT loss of a CLIP as a module's forward, so that ``functional_call`` can swap in a run's weights."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, batch):
        return pair_clip_loss(self.clip, batch)


def run_stacked(base, batches, *, runs: int, lr: float) -> tuple[list[dict], float]:
    """Train ``runs`` stacked copies at once (vmap); return their final states and ms per run-step."""
    wrapper = LossOf(base)
    params, buffers = stack_module_state([LossOf(copy.deepcopy(base)) for _ in range(runs)])
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = make_adamw(list(params.values()), lr=lr)
    losses_of = vmap(lambda p, b, batch: functional_call(wrapper, (p, b), (batch,)), in_dims=(0, 0, None))
    start = time.perf_counter()
    for b in batches:
        losses = losses_of(params, buffers, b)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        opt.step()
    _sync(batches)
    ms = (time.perf_counter() - start) / (runs * len(batches)) * 1e3
    return [{k[len("clip."):]: v[i].detach() for k, v in params.items()} for i in range(runs)], ms


def _sync(batches) -> None:
    if batches and batches[0]["images"].is_cuda:
        torch.cuda.synchronize()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[4, 12])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base, _, tokenizer = models.load_clip("mini", device=args.device)
    base.eval()
    batches = make_batches(tokenizer=tokenizer, steps=args.steps, batch_size=args.batch_size, device=args.device)
    run_sequential(base, batches[:3], runs=1, lr=args.lr)  # warm-up
    print(f"device {args.device}, {args.threads} threads, batch {args.batch_size}, {args.steps} steps")
    for runs in args.runs:
        seq, seq_ms = run_sequential(base, batches, runs=runs, lr=args.lr)
        stacked, vm_ms = run_stacked(base, batches, runs=runs, lr=args.lr)
        diff = max(float((stacked[i][k] - s[k]).abs().max()) for i, s in enumerate(seq) for k in s)
        print(f"{runs:3d} runs: one after the other {seq_ms:6.1f} ms per run-step, stacked {vm_ms:6.1f} ms "
              f"({seq_ms / vm_ms:.2f}x); largest weight difference {diff:.1e}")


if __name__ == "__main__":
    main()
