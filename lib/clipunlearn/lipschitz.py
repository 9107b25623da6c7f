"""Paper B's iterative Lipschitz forgetting with selective layers and a sigma / k schedule.

Kravets & Namboodiri, "Zero-Shot Class Unlearning in CLIP with Synthetic Samples"
(WACV 2025), Sec. 3.2-3.3 and the authors' ``train_forget.py``:

1. Score every parameter tensor of the image and text encoders by the mean
   absolute gradient of the Lipschitz loss (:mod:`clipunlearn.layers`) and update
   only the top ``k_image`` / ``k_text`` tensors.
2. Train one epoch on the forget images (synthetic or real) with the Lipschitz
   loss (``losses.LOSSES["lipschitz"]``, ``n_samples`` perturbations of std
   ``sigma``) through the shared loop :func:`clipunlearn.unlearning.unlearn`;
   after every step, check zero-shot accuracy on the stop set (the synthetic
   images) and stop as soon as it is ``<= threshold``.
3. If the epoch lowered the stop-set accuracy, keep it; otherwise roll the model
   back to its state before the epoch and advance the schedule (larger sigma,
   more tensors). Stop when the schedule is exhausted, the threshold is reached
   or after ``max_epochs`` epochs.

Project choices (documented deviations from the original code): the top-k tensors
are chosen once per epoch (the original re-scores every batch; with the paper's
64 synthetic images and batch 64 an epoch is one batch, so both agree up to the
noise draw); an epoch must beat the *measured* accuracy before forgetting (the
original starts from 1.0); the stop-set classifier is rebuilt from the current
text encoder at every check, as the original does; each epoch is one call of the
shared loop, so the optimiser is its AdamW (decoupled weight decay) with a fresh
state per epoch (the original keeps one Adam with L2 weight decay across epochs);
one optimiser step per batch (the original accumulates up to 5 batches). BatchNorm
layers stay frozen (running statistics, no affine updates), as in the original.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from . import layers, metrics
from .models import is_resnet  # re-exported: lipschitz.is_resnet

__all__ = ["SIGMA_SCHEDULE", "paper_k_schedule", "LipschitzResult", "stop_accuracy", "forget_lipschitz",
           "evaluate_class_forgetting", "is_resnet"]

#: Noise standard deviations tried in turn (paper B, ``std_scheduler``).
SIGMA_SCHEDULE = (0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)
#: Increments of k per schedule stage (authors' ``set_param_schedules``).
_K_OFFSETS = {
    "resnet": {"image": (0, 2, 5, 8, 10, 15, 20), "text": (0, 2, 7, 13, 20, 25, 30, 35, 40)},
    "vit": {"image": (0, 2, 5, 8, 10, 15, 20), "text": (0, 2, 5, 8, 10, 15, 20)},
}
_K_START = {"resnet": 5, "vit": 25}


def paper_k_schedule(model, *, k_image: int | None = None, k_text: int | None = None) -> list[tuple[int, int]]:
    """Return paper B's ``[(k_image, k_text), ...]`` per schedule stage for ``model``'s tower.

    Starts at 5 / 5 (ResNet) or 25 / 25 (ViT) unless ``k_image`` / ``k_text`` are given,
    then grows by the authors' increments (7 stages, one per sigma).
    """
    arch = "resnet" if is_resnet(model) else "vit"
    k0_image = _K_START[arch] if k_image is None else k_image
    k0_text = _K_START[arch] if k_text is None else k_text
    offsets = _K_OFFSETS[arch]
    return [(k0_image + di, k0_text + dt) for di, dt in zip(offsets["image"], offsets["text"])]


@dataclass
class LipschitzResult:
    """What :func:`forget_lipschitz` did.

    ``history``: one dict per optimisation step (``step``, ``epoch``, ``stage``, ``sigma``,
    ``k_image``, ``k_text``, ``stop_acc`` and what ``eval_fn`` returned), rolled-back
    steps included (``accepted`` tells); ``epochs``: one dict per epoch (``stop_acc``
    after it, ``accepted``, the ``trainable`` names); ``initial_acc`` / ``final_acc``:
    stop-set accuracy before and after; ``reached``: final accuracy <= threshold.
    """

    history: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    initial_acc: float = float("nan")
    final_acc: float = float("nan")
    steps: int = 0
    accepted_steps: int = 0
    seconds: float = 0.0
    reached: bool = False
    threshold: float = 0.1

    def curve(self, *, accepted_only: bool = True) -> list[dict]:
        """Return the per-step history along the kept trajectory, renumbered 1..n (rolled-back epochs dropped)."""
        rows = [dict(h) for h in self.history if h["accepted"] or not accepted_only]
        for i, row in enumerate(rows, start=1):
            row["kept_step"] = i
        return rows


def stop_accuracy(model, *, tokenizer, classnames: Sequence[str], templates: Sequence, dataset, indices=None,
                  device="cpu") -> float:
    """Return zero-shot accuracy on ``dataset[indices]`` with a classifier rebuilt from the current text encoder."""
    was_training = model.training
    model.eval()
    classifier = metrics.build_classifier(model, tokenizer, classnames, templates, device=device)
    acc = metrics.accuracy(model, classifier, dataset, indices=indices, device=device)
    model.train(was_training)
    return acc


def evaluate_class_forgetting(model, *, tokenizer, classnames: Sequence[str], templates: Sequence, dataset,
                              forget_idx, retain_idx, other_sets: Sequence[dict] = (), member_dataset=None,
                              member_idx=None, batch_size: int = 512, device="cpu") -> dict[str, float]:
    """Return paper B's metrics of one forgotten class as a dict.

    ``forget_acc`` / ``retain_acc``: zero-shot accuracy on ``dataset[forget_idx]`` (the
    forgotten class) and ``dataset[retain_idx]`` (the other classes); ``other_acc``: mean
    accuracy over ``other_sets`` (other domains or datasets; each a dict with
    ``name``, ``dataset``, optional ``indices``, ``classnames``, ``templates``), also
    given per set as ``other_acc/<name>``; ``mia``: membership-inference AUC of
    ``member_dataset[member_idx]`` (training images of the class) against
    ``dataset[forget_idx]`` (unseen ones), when ``member_idx`` is given.
    """
    was_training = model.training
    model.eval()
    classifier = metrics.build_classifier(model, tokenizer, classnames, templates, device=device)
    out = metrics.evaluate_forgetting(model, classifier, dataset, forget_idx=forget_idx, retain_idx=retain_idx,
                                      batch_size=batch_size, device=device)
    others = {}
    for spec in other_sets:
        names = spec.get("classnames")
        clf = classifier if names is None else metrics.build_classifier(
            model, tokenizer, names, spec.get("templates", templates), device=device)
        others[spec["name"]] = metrics.accuracy(model, clf, spec["dataset"], indices=spec.get("indices"),
                                                batch_size=batch_size, device=device)
    if others:
        out["other_acc"] = sum(others.values()) / len(others)
        out.update({f"other_acc/{k}": v for k, v in others.items()})
    if member_idx is not None:
        mia = metrics.membership_inference(model, classifier, member_dataset if member_dataset is not None else dataset,
                                           member_idx=member_idx, nonmember_idx=forget_idx, nonmember_dataset=dataset,
                                           batch_size=batch_size, device=device)
        out["mia"] = mia["mia"]
    model.train(was_training)
    return out


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


def _lipschitz_fn(n_samples: int, sigma: float) -> Callable:
    from .losses import LOSSES

    loss = LOSSES["lipschitz"]
    return lambda model, batch: loss(model, None, batch, None, n_samples=n_samples, sigma=sigma)


def forget_lipschitz(model, *, forget_loader, tokenizer, classnames: Sequence[str], templates: Sequence,
                     stop_dataset, stop_indices=None, k_schedule: Sequence[tuple[int, int]] | None = None,
                     sigma_schedule: Sequence[float] = SIGMA_SCHEDULE, n_samples: int = 25, threshold: float = 0.1,
                     max_epochs: int = 30, lr: float = 5e-5, betas: tuple[float, float] = (0.9, 0.98),
                     eps: float = 1e-6, weight_decay: float = 0.2, selective: bool = True,
                     exclude: Sequence[str] | str = "paper", eval_fn: Callable | None = None,
                     eval_every: int = 1, device="cpu", seed: int = 0, progress: bool = True) -> LipschitzResult:
    """Forget the class of ``forget_loader``'s images with paper B's procedure; return a :class:`LipschitzResult`.

    ``forget_loader`` yields unlearning batches (``images``, ``texts`` = a caption of the
    class, ``labels``), e.g. ``unlearning.make_pair_loader`` over a synthetic set. The stop
    check is the zero-shot accuracy on ``stop_dataset[stop_indices]`` (the synthetic set)
    with prompts ``templates`` over ``classnames``, after every step; forgetting stops at
    ``<= threshold``. ``k_schedule`` (default :func:`paper_k_schedule`) and
    ``sigma_schedule`` advance together after an epoch that did not lower the stop
    accuracy (that epoch is rolled back). ``selective=False`` updates every tensor of
    both encoders (ablation). ``exclude``: name patterns never updated, ``"paper"`` =
    :func:`layers.paper_b_frozen`. ``eval_fn(model) -> dict`` adds metrics to the
    history every ``eval_every`` steps (curves). Model ends in its best state, in eval mode.
    """
    from .unlearning import unlearn

    start_time = time.perf_counter()
    model.to(device)
    k_schedule = list(k_schedule) if k_schedule is not None else paper_k_schedule(model)
    stages = min(len(k_schedule), len(sigma_schedule))
    if stages == 0:
        raise ValueError("empty schedule: give at least one sigma and one (k_image, k_text)")
    if isinstance(exclude, str):
        if exclude != "paper":
            raise ValueError(f"unknown exclude preset {exclude!r}; valid: 'paper' or a list of name patterns")
        exclude = layers.paper_b_frozen(model)
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    _freeze_batch_norm(model)

    def check(m) -> float:
        return stop_accuracy(m, tokenizer=tokenizer, classnames=classnames, templates=templates,
                             dataset=stop_dataset, indices=stop_indices, device=device)

    result = LipschitzResult(threshold=threshold)
    result.initial_acc = best_acc = check(model)
    stage, step_offset = 0, 0
    try:
        for epoch in range(max_epochs):
            if best_acc <= threshold:
                break
            sigma = float(sigma_schedule[stage])
            k_image, k_text = k_schedule[stage]
            torch.manual_seed(seed + epoch)
            if selective:
                scores = layers.score_layers(model, forget_loader, loss_fn=_lipschitz_fn(n_samples, sigma),
                                             device=device)
                trainable = layers.select_top_k(scores, k_image=k_image, k_text=k_text, exclude=exclude)
            else:  # every tensor of both encoders (BatchNorm stays frozen)
                trainable = [n for n, p in model.named_parameters()
                             if p.requires_grad and layers.encoder_of(n) != "other"]
            snapshot = copy.deepcopy(model.state_dict())
            info = dict(epoch=epoch, stage=stage, sigma=sigma, k_image=k_image, k_text=k_text)
            rows: list[dict] = []

            def eval_step(m, _info=info, _rows=rows):
                out = {"stop_acc": check(m)}
                if eval_fn is not None and (len(_rows) + 1) % eval_every == 0:
                    out.update(eval_fn(m))
                _rows.append({**_info, **out})
                return out

            run = unlearn(model, method="lipschitz", forget_loader=forget_loader, epochs=1, lr=lr,
                          weight_decay=weight_decay, betas=betas, eps=eps,
                          loss_kwargs={"n_samples": n_samples, "sigma": sigma}, trainable=trainable,
                          eval_fn=eval_step, eval_every=1,
                          stop_fn=lambda m, step, ev: ev is not None and ev.get("stop_acc", 1.0) <= threshold,
                          device=device, seed=seed + epoch, progress=progress)
            _freeze_batch_norm(model)  # the loop may have switched the model back to train mode
            acc = rows[-1]["stop_acc"] if rows else check(model)
            accepted = acc < best_acc
            for i, row in enumerate(rows):
                row.update(step=step_offset + i + 1, accepted=accepted)
            result.history.extend(rows)
            step_offset += len(rows)
            result.epochs.append({**info, "stop_acc": acc, "accepted": accepted, "steps": len(rows),
                                  "trainable": list(trainable), "seconds": getattr(run, "seconds", None)})
            if accepted:
                best_acc = acc
                result.accepted_steps += len(rows)
            else:  # roll back this epoch and advance the schedule
                model.load_state_dict(snapshot)
                stage += 1
                if stage >= stages:
                    break
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(requires_grad[n])
        model.eval()
    result.steps = step_offset
    result.final_acc = best_acc
    result.reached = best_acc <= threshold
    result.seconds = time.perf_counter() - start_time
    return result


# --------------------------------------------------------------------------- #
# Paper B on the shared harness (clipunlearn.experiment)
# --------------------------------------------------------------------------- #
def generate_task_synthetic(model, task, *, tokenizer, n_train: int, n_val: int, generation: dict, seed: int = 0,
                            device="cpu"):
    """Return ``(forget_set, val_set, cost)``: synthetic images of ``task``'s forget class, no real image used.

    One batched :func:`clipunlearn.synthetic.generate_synthetic` call makes
    ``n_train + n_val`` images (``generation``: its keyword arguments; ``"logit_scale":
    "model"`` takes the model's own); the first ``n_train`` are the forget set, the
    other ``n_val`` a held-out synthetic validation set for the data-free selection.
    """
    from . import models, synthetic

    gen = dict(generation)
    if gen.get("logit_scale") == "model":
        gen["logit_scale"] = float(model.logit_scale.detach().exp())
    mean, std = models.get_normalization(model)
    classifier = metrics.build_classifier(model, tokenizer, task.classnames, task.templates, device=device)
    with metrics.measure_run(device=device) as cost:
        syn = synthetic.generate_synthetic(model, classifier, classes=task.forget_classes,
                                           classnames=task.classnames, n_per_class=n_train + n_val, mean=mean,
                                           std=std, seed=seed, device=device, progress=False, **gen)
    forget = syn.subset(torch.arange(n_train))
    val = syn.subset(torch.arange(n_train, n_train + n_val))
    return forget, val, {**cost, "reached": int(syn.reached.sum()), "images": len(syn),
                         "mean_steps": float(syn.steps_taken.float().mean())}


def run_lipschitz(task, *, model, tokenizer, forget_data, forget_idx=None, val_forget=None, lr: float,
                  n_samples: int = 25, sigma_schedule: Sequence[float] = SIGMA_SCHEDULE, k_start: int | None = None,
                  selective: bool = True, threshold: float = 0.1, max_epochs: int = 30, betas=(0.9, 0.98),
                  eps: float = 1e-6, weight_decay: float = 0.2, batch_size: int = 64,
                  caption_templates: Sequence[str] = ("a photo of a {}.",), data_free: bool = True,
                  method: str = "lipschitz_synthetic", config: dict | None = None, device="cpu"):
    """Forget ``task``'s class from a copy of ``model`` with paper B's procedure; return ``(model, record)``.

    ``forget_data[forget_idx]`` are the forget images (a synthetic set, or real training
    images for the ``lipschitz_real`` reference); ``val_forget = (dataset, indices)`` is what
    the validation scores forgetting on (held-out synthetic images for a data-free run:
    no real forget image is seen, not even to select). The record has the test metrics
    of :func:`clipunlearn.experiment.evaluate_model`, the validation score of the final
    model, the stop-set accuracy before / after and a per-step validation history.
    """
    from . import experiment
    from .unlearning import make_pair_loader

    experiment._release()
    unlearned = copy.deepcopy(model)
    loader = make_pair_loader(forget_data, tokenizer=tokenizer, templates=caption_templates, indices=forget_idx,
                              batch_size=batch_size, shuffle=True, seed=task.seed, device=device)
    k_schedule = paper_k_schedule(unlearned, **({} if k_start is None else dict(k_image=k_start, k_text=k_start)))
    validate = lambda m: experiment.validate_model(m, task, tokenizer=tokenizer, device=device,
                                                   forget_data=val_forget)
    with metrics.measure_run(device=device) as cost:
        result = forget_lipschitz(unlearned, forget_loader=loader, tokenizer=tokenizer, classnames=task.classnames,
                                  templates=task.templates, stop_dataset=forget_data, stop_indices=forget_idx,
                                  k_schedule=k_schedule, sigma_schedule=sigma_schedule, n_samples=n_samples,
                                  threshold=threshold, max_epochs=max_epochs, lr=lr, betas=betas, eps=eps,
                                  weight_decay=weight_decay, selective=selective, eval_fn=validate, device=device,
                                  seed=task.seed, progress=False)
    val = validate(unlearned)
    test = experiment.evaluate_model(unlearned, task, tokenizer=tokenizer, device=device)
    history = [{"step": h["kept_step"], **{k: h[k] for k in ("val_forget_acc", "val_retain_acc", "score", "stop_acc")
                                           if k in h}} for h in result.curve()]
    record = experiment.summarise_run(
        task, method=method,
        config={"lr": lr, "n_samples": n_samples, "sigma_schedule": list(sigma_schedule), "k_start": k_start,
                "selective": selective, "threshold": threshold, "max_epochs": max_epochs, "betas": list(betas),
                "eps": eps, "weight_decay": weight_decay, "batch_size": batch_size, "data_free": data_free,
                "forget_images": len(forget_idx) if forget_idx is not None else len(forget_data), **(config or {})},
        test_metrics=test, cost=cost, val=val, history=history)
    record["metrics"].update(stop_acc=result.final_acc, stop_acc_before=result.initial_acc, steps=result.steps,
                             accepted_steps=result.accepted_steps, epochs=len(result.epochs),
                             stopped_early=None, failed=False)
    return unlearned, record


def run_synthetic_benchmark(tasks: dict, *, model, tokenizer, generation: dict, forgetting: dict, grid: dict,
                            n_train: int = 64, n_val: int = 32, n_real: int | None = 64, store,
                            device="cpu") -> dict:
    """Paper B on every target of ``tasks`` (``{target: [task per seed]}``); return the synthetic sets by (target, seed).

    Per target: the original model (``original``), then ``lipschitz_synthetic`` (synthetic
    forget images only; its grid is scored on held-out *synthetic* images and real
    retain validation images, with the oracle score on real forget validation images
    recorded beside it, never used) and ``lipschitz_real`` (the same procedure on
    ``n_real`` real training images of the class, selected on real validation images),
    each through :func:`clipunlearn.experiment.run_selected`. ``forgetting``: keyword
    arguments of :func:`run_lipschitz`.
    """
    from . import experiment

    sets = {}
    for target, seeded in tasks.items():
        first = seeded[0]
        if store.find(method="original", task=first.kind, forget_class=target) is None:
            store.add(experiment.summarise_run(first, method="original", config={"seed": None},
                                               test_metrics=experiment.evaluate_model(model, first,
                                                                                      tokenizer=tokenizer,
                                                                                      device=device)))
        for task in seeded:
            sets[(target, task.seed)] = generate_task_synthetic(model, task, tokenizer=tokenizer, n_train=n_train,
                                                                n_val=n_val, generation=generation, seed=task.seed,
                                                                device=device)

        def synthetic_fn(task, **candidate):
            forget, val, cost = sets[(task.target, task.seed)]
            return run_lipschitz(task, model=model, tokenizer=tokenizer, forget_data=forget, val_forget=(val, None),
                                 data_free=True, method="lipschitz_synthetic",
                                 config={"synthetic": {k: v for k, v in cost.items()}}, device=device,
                                 **{**forgetting, **candidate})

        def real_fn(task, **candidate):
            idx = task.forget_train[torch.randperm(len(task.forget_train), generator=torch.Generator().manual_seed(
                task.seed))[:n_real]].sort().values if n_real else task.forget_train
            return run_lipschitz(task, model=model, tokenizer=tokenizer, forget_data=task.train, forget_idx=idx,
                                 val_forget=None, data_free=False, method="lipschitz_real", device=device,
                                 **{**forgetting, **candidate})

        oracle = lambda m, task: experiment.validate_model(m, task, tokenizer=tokenizer, device=device)
        experiment.run_selected("lipschitz_synthetic", seeded, run_fn=synthetic_fn, grid=grid, store=store,
                                oracle_fn=oracle)
        experiment.run_selected("lipschitz_real", seeded, run_fn=real_fn, grid=grid, store=store)
    return sets


def run_synthetic_ablations(task, synthetic_set, *, model, tokenizer, forgetting: dict, ablations: dict, store,
                            device="cpu") -> list[dict]:
    """One factor at a time around the selected setting, on one task with its synthetic set; return the records.

    ``ablations``: ``{"n_samples": [...], "sigma": [...], "k": [...], "layers": ["all"]}``. The
    learning rate is the one ``lipschitz_synthetic`` selected on this task. Records have
    task ``ablation``, ``config.ablation`` (the factor) and ``config.value``; the main run
    is added once per factor as the reference row (``config.reference`` true).
    """
    main = store.find(method="lipschitz_synthetic", task=task.kind, forget_class=task.target, seed=task.seed)
    if main is None:
        raise ValueError("run run_synthetic_benchmark on this task first (it selects the learning rate)")
    forget, val, _ = synthetic_set
    lr = main["config"]["selected"]["lr"]
    reference = {"n_samples": forgetting.get("n_samples", 25), "sigma": "schedule",
                 "k": forgetting.get("k_start") or "paper", "layers": "top-k"}
    out = []
    for factor, values in ablations.items():
        ref = dict(main, task="ablation", config={**main["config"], "ablation": factor, "value": reference[factor],
                                                  "reference": True})
        out.append(ref)
        for value in values:
            done = store.find(method="lipschitz_synthetic", task="ablation", forget_class=task.target,
                              seed=task.seed, ablation=factor, value=value)
            if done is None:
                override = {"n_samples": {"n_samples": value},
                            "sigma": {"sigma_schedule": (value,) * len(SIGMA_SCHEDULE)},
                            "k": {"k_start": value}, "layers": {"selective": False}}[factor]
                _, done = run_lipschitz(task, model=model, tokenizer=tokenizer, forget_data=forget,
                                        val_forget=(val, None), device=device,
                                        config={"ablation": factor, "value": value, "reference": False},
                                        **{**forgetting, "lr": lr, **override})
                done["task"] = "ablation"
                store.add(done)
            out.append(done)
    store.add(*[r for r in out if r["config"].get("reference")])
    return out
