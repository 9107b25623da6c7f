"""Is it forgotten or hidden? Four attacks that try to bring a forgotten target back.

Each attack has one signature, ``attack(model, task, settings) -> metrics``, and never changes ``model``:

* :func:`relearn_retain` (benign relearning): fine-tune on retain pairs only (the FT loss) and measure the
  forget, sibling and retain accuracies after each of ``settings.retain_steps``;
* :func:`relearn_forget` (targeted relearning): fine-tune on ``n`` forget-class image-caption pairs of the
  unseen pool (:func:`unseen_forget_pool`: test images that are in no split of the task) and measure the
  forget accuracy after each of ``settings.forget_steps``;
* :func:`probe_features` (linear probe): a logistic regression on the frozen image features of the retain and
  forget training images, scored on the forget test images: does the image tower still encode the target?
* :func:`quantise_weights`: the model with bf16 weights (and bf16 compute) and with int8 dynamic quantisation of
  its linear layers, beside its fp32 accuracies.

Fine-tuning runs through the one loop (``unlearning.unlearn`` with the ``ft`` loss; its ``stop_fn`` hook
measures at the requested steps). Every metric name starts with the attack's name.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from .. import metrics
from ..clip import autocast
from ..unlearning import make_pair_loader, unlearn
from .task import Task, _cap_per_class

__all__ = ["ATTACKS", "AttackSettings", "RELEARN_LR", "check_steps", "finetune_pairs", "measure_accuracies",
           "probe_features", "quantise_weights", "relearn_forget", "relearn_retain", "run_attacks",
           "unseen_forget_pool"]

#: The one learning rate of both relearning attacks (the top of the mini grid, ``harness.MINI_LR_GRID``).
RELEARN_LR = 3.16e-4


@dataclass(frozen=True)
class AttackSettings:
    """What every attack needs besides the model and the task."""

    tokenizer: object
    lr: float = RELEARN_LR
    batch_size: int = 32
    retain_steps: tuple = (10, 30, 100)
    forget_sizes: tuple = (5, 20)
    forget_steps: tuple = (10, 30)
    #: sibling and retain test images per class measured after relearning and quantisation (a fixed draw; the
    #: forget test images are all measured)
    measure_per_class: int = 50
    #: training images per class the probe is fitted on (a fixed draw)
    probe_per_class: int = 100
    seed: int = 0
    device: object = "cpu"


def check_steps(steps: Sequence[int]) -> list[int]:
    """Return ``steps`` sorted; a ValueError unless they are whole numbers >= 1."""
    steps = list(steps)
    if not steps or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in steps):
        raise ValueError(f"steps must be whole numbers >= 1 (e.g. 10, 30, 100); got {steps}")
    return sorted(set(steps))


def unseen_forget_pool(task: Task) -> torch.Tensor:
    """Return the indices into ``task.test`` of the forget images no method and no model saw.

    Test images (never training images of the mini CLIP or of its retrained model) of the task's forget classes in
    its forget style that are in no test subset of the task, and whose source image has no rendering in any test
    subset (a sketch and a photo of one Fashion-MNIST image share its ``image_ids``)."""
    test = task.test
    forget = task.eval_sets["forget"]
    targets = torch.as_tensor(test.targets)
    keep = torch.isin(targets, torch.as_tensor(task.forget_classes))
    used = torch.cat([idx for idx in task.eval_sets.values() if len(idx)])
    keep[used] = False
    if getattr(test, "styles", None) is not None:
        styles = torch.as_tensor(test.styles)
        keep &= torch.isin(styles, styles[forget].unique())
    if getattr(test, "image_ids", None) is not None:
        ids = torch.as_tensor(test.image_ids)
        keep &= ~torch.isin(ids, ids[used])
    return keep.nonzero().flatten()


@torch.no_grad()
def measure_accuracies(model, task: Task, *, tokenizer, device="cpu", sets: Sequence[str] = ("forget", "sibling",
                                                                                                "retain"),
                       per_class: int | None = None) -> dict:
    """Return ``{<set>_acc}``: zero-shot accuracy on each of the task's test subsets ``sets`` it has; ``per_class``
    caps the sibling and retain subsets per class (a fixed draw; None: every image)."""
    model.eval()
    clf = metrics.build_classifier(model, tokenizer, task.classnames, task.templates, device=device)
    out = {}
    for name in sets:
        idx = task.eval_sets.get(name)
        if idx is None or not len(idx):
            continue
        idx = idx if name == "forget" else _cap_per_class(task.test, idx, per_class, 0)
        out[f"{name}_acc"] = metrics.accuracy(model, clf, task.test, indices=idx, device=device)
    return out


def finetune_pairs(model, loader, *, steps: Sequence[int], lr: float, seed: int, device="cpu",
                   measure: Callable[[object], dict]) -> tuple[dict[int, dict], list[float]]:
    """Fine-tune a copy of ``model`` on ``loader``'s pairs (the ``ft`` loss) for ``max(steps)`` steps; return
    ``({step: measure(model) after that step}, [loss per step])``."""
    steps = check_steps(steps)
    tuned, out = copy.deepcopy(model), {}

    def at_step(m, step, _last_eval):
        if step in steps:
            out[step] = measure(m)
            m.eval()
        return False

    run = unlearn(tuned, method="ft", retain_loader=loader, max_steps=steps[-1], lr=lr, stop_fn=at_step,
                  device=device, seed=seed, progress=False, logit_scale="clamped")
    if run.failed:
        raise RuntimeError(f"relearning diverged: {run.stopped_early}")
    return out, [h["loss"] for h in run.history]


def relearn_retain(model, task: Task, settings: AttackSettings) -> dict:
    """Benign relearning: fine-tune on retain pairs only; ``relearn_retain/<steps>/<set>_acc`` after each step
    count of ``settings.retain_steps``."""
    loader = make_pair_loader(task.train, tokenizer=settings.tokenizer, templates=task.templates,
                              indices=task.retain_train, batch_size=settings.batch_size, seed=settings.seed * 7 + 3,
                              device=settings.device)
    measured, _ = finetune_pairs(model, loader, steps=settings.retain_steps, lr=settings.lr, seed=settings.seed,
                                 device=settings.device, measure=lambda m: measure_accuracies(
                                     m, task, tokenizer=settings.tokenizer, device=settings.device,
                                     per_class=settings.measure_per_class))
    return {f"relearn_retain/{step}/{k}": v for step, accs in measured.items() for k, v in accs.items()}


def draw_unseen(task: Task, n: int, *, seed: int) -> torch.Tensor:
    """Return ``n`` indices of :func:`unseen_forget_pool` (a seeded draw; a ValueError when the pool is smaller)."""
    pool = unseen_forget_pool(task)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(pool):
        raise ValueError(f"n must be a whole number from 1 to {len(pool)} (the unseen {task.target!r} images); "
                         f"got {n!r}")
    return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]].sort().values


def relearn_forget(model, task: Task, settings: AttackSettings) -> dict:
    """Targeted relearning: fine-tune on ``n`` unseen forget-class pairs (each of ``settings.forget_sizes``);
    ``relearn_forget/n<n>/<steps>/forget_acc`` on the forget test images after each of ``settings.forget_steps``."""
    steps = check_steps(settings.forget_steps)
    out = {}
    for n in settings.forget_sizes:
        idx = draw_unseen(task, n, seed=settings.seed)
        loader = make_pair_loader(task.test, tokenizer=settings.tokenizer, templates=task.templates, indices=idx,
                                  batch_size=settings.batch_size, seed=settings.seed * 7 + 4, device=settings.device)
        measured, _ = finetune_pairs(model, loader, steps=steps, lr=settings.lr, seed=settings.seed,
                                     device=settings.device, measure=lambda m: measure_accuracies(
                                         m, task, tokenizer=settings.tokenizer, device=settings.device,
                                         sets=("forget",)))
        out.update({f"relearn_forget/n{n}/{step}/forget_acc": accs["forget_acc"] for step, accs in measured.items()})
    return out


def probe_features(model, task: Task, settings: AttackSettings) -> dict:
    """Linear probe: a logistic regression on the frozen image features of retain and forget training images
    (``settings.probe_per_class`` per class, with their class labels); ``probe_features/forget_acc`` on the forget
    test images, ``probe_features/retain_acc`` on the retain ones."""
    fit = torch.cat([_cap_per_class(task.train, idx, settings.probe_per_class, 0)
                     for idx in (task.retain_train, task.forget_train)])
    x, y = metrics.encode_images(model, task.train, indices=fit, device=settings.device)
    tests = {name: metrics.encode_images(model, task.test, indices=task.eval_sets[name], device=settings.device)
             for name in ("forget", "retain")}
    # one BLAS thread: beside torch's OpenMP threads a 2-thread OpenBLAS fit of these 1000 x 128 features took
    # 1.97 s on 2 cores, one thread 0.1 s (benchmarks/README.md)
    with threadpool_limits(limits=1, user_api="blas"):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        probe.fit(x.numpy(), y.numpy())
        return {f"probe_features/{name}_acc": float((probe.predict(tx.numpy()) == ty.numpy()).mean())
                for name, (tx, ty) in tests.items()}


def quantisable_linears(model) -> set[str]:
    """Return the names of ``model``'s linear layers that dynamic quantisation can replace: every ``nn.Linear``
    except those whose weights another module reads directly (a ResNet tower's attention pool: its projections
    feed ``multi_head_attention_forward``)."""
    return {name for name, m in model.named_modules() if type(m) is torch.nn.Linear and ".attnpool." not in
            f".{name}."}


def quantise_weights(model, task: Task, settings: AttackSettings) -> dict:
    """``quantise_weights/<precision>/<set>_acc`` for fp32, bf16 (weights rounded to bf16, bf16 autocast) and int8
    (``torch.ao.quantization.quantize_dynamic`` of the linear layers of :func:`quantisable_linears`, on the CPU;
    convolutions stay fp32)."""
    kw = dict(tokenizer=settings.tokenizer, sets=("forget", "retain"), per_class=settings.measure_per_class)
    out = {"fp32": measure_accuracies(model, task, device=settings.device, **kw)}
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    with autocast(settings.device, "bf16"):
        out["bf16"] = measure_accuracies(rounded, task, device=settings.device, **kw)
    int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).cpu(), quantisable_linears(model),
                                                  dtype=torch.qint8)
    for module in int8.modules():  # open_clip reads the text tower's dtype from a linear layer's weight
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            module.int8_original_dtype = torch.float32
    out["int8"] = measure_accuracies(int8, task, device="cpu", **kw)
    return {f"quantise_weights/{p}/{k}": v for p, accs in out.items() for k, v in accs.items()}


#: Every attack by name, in reporting order.
ATTACKS: dict[str, Callable[[object, Task, AttackSettings], dict]] = {
    "relearn_retain": relearn_retain, "relearn_forget": relearn_forget, "probe_features": probe_features,
    "quantise_weights": quantise_weights}


def run_attacks(model, task: Task, settings: AttackSettings, *, attacks: Sequence[str] = tuple(ATTACKS)) -> dict:
    """Return the metrics of every attack of ``attacks`` on ``model`` (each on its own copy)."""
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attacks {unknown}; valid: {', '.join(ATTACKS)}")
    check_steps(settings.retain_steps)
    check_steps(settings.forget_steps)
    for n in settings.forget_sizes:  # fail before any work
        draw_unseen(task, n, seed=settings.seed)
    out = {}
    for name in attacks:
        out.update(ATTACKS[name](model, task, settings))
    return out
