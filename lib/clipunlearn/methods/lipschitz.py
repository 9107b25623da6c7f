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

Two forms of the procedure, chosen by keyword (:data:`PROJECT_OPTIONS`, the default,
and :data:`AUTHORS_OPTIONS`, the authors' code, which the paper profile uses):

* ``optimizer``: ``"adamw"`` (project) is the shared loop's AdamW (decoupled weight
  decay) with a fresh state every epoch; ``"adam"`` (authors) is one
  ``torch.optim.Adam(weight_decay=...)`` (coupled L2) kept across epochs, whose state is
  rolled back with the model when an epoch does not lower the stop accuracy.
* ``rescore``: ``"epoch"`` (project) chooses the top-k tensors once per epoch on a
  separate gradient; ``"batch"`` (authors) recomputes the scores every batch on the
  very gradient that is then stepped.
* ``baseline``: ``"measured"`` (project) -- an epoch must beat the stop accuracy
  measured before forgetting; ``"one"`` (authors) -- the rollback baseline starts at 1.0.
* ``loss_scale``: ``"mean"`` (project) averages the Lipschitz terms over images and noise
  samples; ``"sum"`` (authors) sums them and divides by ``2 n`` (``B / 2`` times the mean).
* ``noise_clamp``: ``"pixel"`` (project) clamps ``x + noise`` per channel to the valid
  pixel range; ``"batch"`` (authors) to the scalar minimum / maximum of the batch tensor.
* ``accumulate``: optimiser step every ``accumulate`` batches (authors: up to 5); the
  layer scores are then taken on the accumulated gradient, as in their code.
* ``fallback``: what is kept when no epoch is accepted: ``"original"`` (project) the model the
  run started from; ``"last"`` (authors) the last rejected epoch's model (their
  ``model_last_state_load``). A failed (non-finite) epoch is never kept.

The stop-set classifier is rebuilt from the current text encoder at every check, as
the original does; one optimiser step per batch unless ``accumulate`` says otherwise.
BatchNorm layers stay frozen (running statistics, no affine updates), as in the original.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .. import harness, layers, metrics, models, synthetic_prior
from ..clip import PRECISIONS, RequiresGrad, is_resnet, release_memory, resolve_precision
from ..configs import load_paper_config, mini_settings
from ..losses import LOSSES
from ..registry import register_procedure
from ..unlearning import make_pair_loader, unlearn
from .lipschitz_authors import _CHOICES, _freeze_batch_norm, _make_optimizer, _own_epoch, lipschitz_loss


__all__ = ["paper_sigma_schedule", "PROJECT_OPTIONS", "AUTHORS_OPTIONS", "paper_k_schedule", "LipschitzResult",
           "stop_accuracy", "forget_lipschitz", "lipschitz_loss", "compute_avg_gain", "generate_task_synthetic",
           "run_lipschitz", "explore_lipschitz_synthetic", "is_resnet", "AUTHORS_GAIN_DIVISOR", "STOP_REASONS"]

#: The backbone whose k schedule (``paper_b.json``: ``forgetting.k_start`` / ``k_offsets``) each tower follows.
_K_BACKBONE = {"resnet": "RN50", "vit": "ViT-B-16"}
_SCORES = layers.LayerScoreCache()  # a grid's first epochs (later ones: hashing costs more than rare hits save)

#: The project's form of the procedure (the mini profile; see the module docstring).
PROJECT_OPTIONS = dict(optimizer="adamw", rescore="epoch", baseline="measured", loss_scale="mean",
                       noise_clamp="pixel", accumulate=1, fallback="original")

#: The authors' form (``train_forget.py``, ``clip_forget_losses.py``): the paper profile's default.
AUTHORS_OPTIONS = dict(optimizer="adam", rescore="batch", baseline="one", loss_scale="sum", noise_clamp="batch",
                       accumulate=5, fallback="last")

#: ``compute_avg_gain``'s divisor in the authors' code: 5 whatever the number of other datasets.
AUTHORS_GAIN_DIVISOR = 5

#: Why :func:`forget_lipschitz` stopped (``LipschitzResult.stop_reason``; a failure names the step instead).
STOP_REASONS = ("threshold reached", "schedule exhausted", "epochs exhausted")


def paper_sigma_schedule() -> tuple[float, ...]:
    """Return paper B's noise standard deviations, tried in turn (``paper_b.json``: ``forgetting.sigma_schedule``)."""
    return tuple(float(s) for s in load_paper_config("paper_b")["forgetting"]["sigma_schedule"])

def paper_k_schedule(model, *, k_image: int | None = None, k_text: int | None = None) -> list[tuple[int, int]]:
    """Return paper B's ``[(k_image, k_text), ...]`` per schedule stage for ``model``'s tower.

    Starts at the authors' k for the tower (``paper_b.json``: ``forgetting.k_start``, 5 for
    RN50, 25 for ViT-B-16) unless ``k_image`` / ``k_text`` are given, then grows by their
    increments (``forgetting.k_offsets``; 7 stages, one per sigma).
    """
    forgetting = load_paper_config("paper_b")["forgetting"]
    backbone = _K_BACKBONE["resnet" if is_resnet(model) else "vit"]
    k0_image = forgetting["k_start"][backbone] if k_image is None else k_image
    k0_text = forgetting["k_start"][backbone] if k_text is None else k_text
    offsets = forgetting["k_offsets"][backbone]
    return [(k0_image + di, k0_text + dt) for di, dt in zip(offsets["image"], offsets["text"])]

@dataclass
class LipschitzResult:
    """What :func:`forget_lipschitz` did.

    ``history``: one dict per optimisation step (``step``, ``epoch``, ``stage``, ``sigma``,
    ``k_image``, ``k_text``, ``stop_acc`` and what ``eval_fn`` returned), rolled-back
    steps included (``accepted`` tells); ``epochs``: one dict per epoch (``stop_acc``
    after it, ``accepted``, the ``trainable`` names); ``initial_acc`` / ``final_acc``:
    stop-set accuracy before and after; ``reached``: final accuracy <= threshold; ``stop_reason``:
    one of :data:`STOP_REASONS`, or the failure (``"non-finite loss at step 3"``).
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
    failed: bool = False
    stop_reason: str | None = None

    def curve(self, *, accepted_only: bool = True) -> list[dict]:
        """Return the per-step history along the kept trajectory, renumbered 1..n (rolled-back epochs dropped)."""
        rows = [dict(h) for h in self.history if h["accepted"] or not accepted_only]
        for i, row in enumerate(rows, start=1):
            row["kept_step"] = i
        return rows

def stop_accuracy(model, *, tokenizer, classnames: Sequence[str], templates: Sequence, dataset, indices=None,
                  device="cpu", precision: str = "fp32") -> float:
    """Return zero-shot accuracy on ``dataset[indices]`` with a classifier rebuilt from the current text encoder.

    The classifier is reused while the text encoder has not changed (``metrics.build_classifier(cache=True)``).
    """
    was_training = model.training
    model.eval()
    with torch.no_grad(), metrics.autocast(device, precision):
        classifier = metrics.build_classifier(model, tokenizer, classnames, templates, device=device, cache=True)
        acc = metrics.accuracy(model, classifier, dataset, indices=indices, device=device)
    model.train(was_training)
    return acc

def _lipschitz_fn(n_samples: int, sigma: float, **options) -> Callable:
    if not options:  # the registered loss (the project's form)
        loss = LOSSES["lipschitz"]
        return lambda model, batch: loss(model, None, batch, None, n_samples=n_samples, sigma=sigma)
    return lambda model, batch: lipschitz_loss(model, batch, n_samples=n_samples, sigma=sigma, **options)

def _check_options(options: dict) -> None:
    for name, valid in _CHOICES.items():
        if options[name] not in valid:
            raise ValueError(f"unknown {name} {options[name]!r}; valid: {', '.join(valid)}")
    if int(options["accumulate"]) < 1:
        raise ValueError(f"accumulate must be >= 1, got {options['accumulate']}")

def forget_lipschitz(model, *, forget_loader, tokenizer, classnames: Sequence[str], templates: Sequence,
                     stop_dataset, stop_indices=None, k_schedule: Sequence[tuple[int, int]] | None = None,
                     sigma_schedule: Sequence[float] | None = None, n_samples: int = 25, threshold: float = 0.1,
                     max_epochs: int = 30, lr: float = 5e-5, betas: tuple[float, float] = (0.9, 0.98),
                     eps: float = 1e-6, weight_decay: float = 0.2, selective: bool = True,
                     exclude: Sequence[str] | str = "paper", eval_fn: Callable | None = None,
                     eval_every: int = 1, device="cpu", seed: int = 0, progress: bool = True,
                     optimizer: str = "adamw", rescore: str = "epoch", baseline: str = "measured",
                     loss_scale: str = "mean", noise_clamp: str = "pixel", accumulate: int = 1,
                     fallback: str = "original", precision: str = "fp32") -> LipschitzResult:
    """Forget the class of ``forget_loader``'s images with paper B's procedure; return a :class:`LipschitzResult`.

    ``forget_loader`` yields unlearning batches (``images``, ``texts`` = a caption of the
    class, ``labels``), e.g. ``unlearning.make_pair_loader`` over a synthetic set. The stop
    check is the zero-shot accuracy on ``stop_dataset[stop_indices]`` (the synthetic set)
    with prompts ``templates`` over ``classnames``, after every step; forgetting stops at
    ``<= threshold``. ``k_schedule`` (default :func:`paper_k_schedule`) and
    ``sigma_schedule`` (default :func:`paper_sigma_schedule`) advance together after an epoch that did not lower
    the stop accuracy (that epoch is rolled back). ``selective=False`` updates every tensor of
    both encoders (ablation). ``exclude``: name patterns never updated, ``"paper"`` =
    :func:`layers.paper_b_frozen`. ``eval_fn(model) -> dict`` adds metrics to the
    history every ``eval_every`` steps (curves). Model ends in its best state, in eval mode.

    ``optimizer``, ``rescore``, ``baseline``, ``loss_scale``, ``noise_clamp``,
    ``accumulate`` and ``fallback`` choose the project's or the authors' form of each step (module
    docstring; :data:`PROJECT_OPTIONS` are the defaults, :data:`AUTHORS_OPTIONS` the
    authors'). With the project's options each epoch is one call of the shared loop
    (``unlearning.unlearn``); otherwise the epochs run the authors' loop here.
    ``precision="bf16"`` runs the loss and the stop checks under bf16 autocast.
    """
    options = dict(optimizer=optimizer, rescore=rescore, baseline=baseline, loss_scale=loss_scale,
                   noise_clamp=noise_clamp, accumulate=accumulate, fallback=fallback)
    _check_options(options)
    precision = resolve_precision(precision, device)  # validates the name; "auto": what the device runs well
    if precision not in PRECISIONS:  # the authors' loop has no gradient scaler: fp16 gradients could flush to zero
        raise ValueError(f"paper B's forgetting runs in {' or '.join(PRECISIONS)}, not {precision!r} (on a card "
                         "without fast bf16, e.g. a T4, run it in fp32)")
    project_loop = all(options[k] == PROJECT_OPTIONS[k] for k in options if k not in ("baseline", "fallback")) \
        and precision == "fp32"
    start_time = time.perf_counter()
    model.to(device)
    k_schedule = list(k_schedule) if k_schedule is not None else paper_k_schedule(model)
    sigma_schedule = paper_sigma_schedule() if sigma_schedule is None else sigma_schedule
    stages = min(len(k_schedule), len(sigma_schedule))
    if stages == 0:
        raise ValueError("empty schedule: give at least one sigma and one (k_image, k_text)")
    if isinstance(exclude, str):
        if exclude != "paper":
            raise ValueError(f"unknown exclude preset {exclude!r}; valid: 'paper' or a list of name patterns")
        exclude = layers.paper_b_frozen(model)
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    _freeze_batch_norm(model)
    candidates = [n for n, p in model.named_parameters() if p.requires_grad and layers.encoder_of(n) != "other"]
    params = dict(model.named_parameters())
    loss_options = {} if project_loop else dict(loss_scale=loss_scale, noise_clamp=noise_clamp, precision=precision)
    persistent = None
    if not project_loop and optimizer == "adam":  # one optimiser for the whole run
        persistent = _make_optimizer("adam", [params[n] for n in candidates], lr=lr, betas=betas, eps=eps,
                                     weight_decay=weight_decay)

    def check(m) -> float:
        return stop_accuracy(m, tokenizer=tokenizer, classnames=classnames, templates=templates,
                             dataset=stop_dataset, indices=stop_indices, device=device, precision=precision)

    result = LipschitzResult(threshold=threshold)
    result.initial_acc = check(model)
    best_acc = result.initial_acc if baseline == "measured" else 1.0
    stage, step_offset = 0, 0
    last_rejected = None  # the authors' fallback: the last rejected epoch's state while none is accepted
    result.stop_reason = "epochs exhausted"
    try:
        for epoch in range(max_epochs):
            if best_acc <= threshold:
                result.stop_reason = "threshold reached"
                break
            sigma = float(sigma_schedule[stage])
            k_image, k_text = k_schedule[stage]
            torch.manual_seed(seed + epoch)
            loss_fn = _lipschitz_fn(n_samples, sigma, **loss_options)
            trainable = None
            if selective and rescore == "epoch":
                with RequiresGrad(model, only=layers.drop_excluded(candidates, exclude)):  # none for tensors never
                    scores = _SCORES.score(model, forget_loader, loss_fn=loss_fn, device=device,  # chosen; the
                                           settings=(n_samples, sigma, sorted(loss_options.items()))) \
                        if epoch == 0 else layers.score_layers(model, forget_loader, loss_fn=loss_fn, device=device)
                # first epoch's scores are shared across a grid's runs (same start, batches and noise)
                trainable = layers.select_top_k(scores, k_image=k_image, k_text=k_text, exclude=exclude)
            elif not selective:  # every tensor of both encoders (BatchNorm stays frozen)
                trainable = list(candidates)
            snapshot = copy.deepcopy(model.state_dict())
            opt_snapshot = copy.deepcopy(persistent.state_dict()) if persistent is not None else None
            info = dict(epoch=epoch, stage=stage, sigma=sigma, k_image=k_image, k_text=k_text)
            rows: list[dict] = []

            def eval_step(m, _info=info, _rows=rows):
                out = {"stop_acc": check(m)}
                if eval_fn is not None and (len(_rows) + 1) % eval_every == 0:
                    out.update(eval_fn(m))
                _rows.append({**_info, **out})
                return out

            seconds = time.perf_counter()
            failure = None
            if project_loop:
                run = unlearn(model, method="lipschitz", forget_loader=forget_loader, epochs=1, lr=lr,
                              weight_decay=weight_decay, betas=betas, eps=eps,
                              loss_kwargs={"n_samples": n_samples, "sigma": sigma}, trainable=trainable,
                              eval_fn=eval_step, eval_every=1,
                              stop_fn=lambda m, step, ev: ev is not None and ev.get("stop_acc", 1.0) <= threshold,
                              device=device, seed=seed + epoch, progress=progress)
                if run.failed:
                    failure = run.stopped_early
            else:
                opt = persistent or _make_optimizer(optimizer, [params[n] for n in candidates], lr=lr, betas=betas,
                                                    eps=eps, weight_decay=weight_decay)
                stepped, why = _own_epoch(
                    model, optimizer=opt, forget_loader=forget_loader, loss_fn=loss_fn, candidates=set(candidates),
                    selective=selective, rescore=rescore, trainable=trainable, k_image=k_image, k_text=k_text,
                    exclude=exclude, accumulate=accumulate, step_offset=step_offset, seed=seed + epoch,
                    on_step=lambda m: eval_step(m)["stop_acc"] <= threshold, progress=progress,
                    desc=f"lipschitz epoch {epoch + 1}")
                if why is not None and why.startswith("non-finite"):
                    failure = why
                trainable = stepped
            model.eval()
            _freeze_batch_norm(model)  # the loop may have switched the model back to train mode
            acc = rows[-1]["stop_acc"] if rows else check(model)
            accepted = failure is None and acc < best_acc
            for i, row in enumerate(rows):
                row.update(step=step_offset + i + 1, accepted=accepted)
            result.history.extend(rows)
            step_offset += len(rows)
            result.epochs.append({**info, "stop_acc": acc, "accepted": accepted, "steps": len(rows),
                                  "trainable": list(trainable), "seconds": time.perf_counter() - seconds})
            if failure is not None:  # undo the broken epoch and stop
                model.load_state_dict(snapshot)
                if persistent is not None:
                    persistent.load_state_dict(opt_snapshot)
                result.failed = True
                result.epochs[-1]["failure"] = result.stop_reason = failure
                break
            if accepted:
                best_acc, last_rejected = acc, None
                result.accepted_steps += len(rows)
            else:  # roll back this epoch (model and, for the authors' Adam, its state) and advance the schedule
                if fallback == "last" and not any(e["accepted"] for e in result.epochs):
                    last_rejected = (copy.deepcopy(model.state_dict()), acc, len(result.epochs) - 1)
                model.load_state_dict(snapshot)
                if persistent is not None:
                    persistent.load_state_dict(opt_snapshot)
                stage += 1
                if stage >= stages:
                    result.stop_reason = "schedule exhausted"
                    break
            del snapshot, opt_snapshot
        else:
            if best_acc <= threshold:  # the last epoch reached it
                result.stop_reason = "threshold reached"
        if last_rejected is not None:  # no epoch accepted: the authors keep the last rejected model
            model.load_state_dict(last_rejected[0])
            result.epochs[last_rejected[2]]["kept"] = True
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(requires_grad[n])
        model.eval()
    result.steps = step_offset
    if last_rejected is not None:
        result.final_acc = last_rejected[1]
    else:
        result.final_acc = best_acc if result.accepted_steps or baseline == "measured" else result.initial_acc
    result.reached = result.final_acc <= threshold
    result.seconds = time.perf_counter() - start_time
    return result

# --------------------------------------------------------------------------- #
# Paper B on the shared harness (clipunlearn.experiment)
# --------------------------------------------------------------------------- #
def generate_task_synthetic(model, task, *, tokenizer, n_train: int, n_val: int, generation: dict, seed: int = 0,
                            device="cpu", progress: bool = False):
    """Return ``(forget_set, val_set, cost)``: synthetic images of ``task``'s forget class, no real image used.

    One batched :func:`clipunlearn.synthetic.generate_synthetic` call makes
    ``n_train + n_val`` images (``generation``: its keyword arguments; ``"logit_scale":
    "model"`` takes the model's own; ``"precision"`` goes to the encoder); the first
    ``n_train`` are the forget set, the other ``n_val`` a held-out synthetic validation
    set for the data-free selection. With ``restart`` (the authors' generation) only
    images that reached their threshold are used, as the authors keep; the held-out set
    takes the last ``n_val`` of them (generation order), the forget set the earlier ones. If
    fewer than ``n_train + n_val`` reached it within ``max_attempts``, the forget set is
    filled with the most probable of the others (the held-out set too when fewer than ``n_val``
    reached; a warning says so; ``cost["reached"]`` counts them).
    """
    gen = dict(generation)  # synthetic_prior: "none" (paper B's ascent) or "bn" (synthetic_prior.generate_bn_prior)
    prior, prior_settings = gen.pop("synthetic_prior", "none"), gen.pop("prior_settings", None)
    if gen.get("logit_scale") == "model":
        gen["logit_scale"] = float(model.logit_scale.detach().exp())
    mean, std = models.get_normalization(model)
    with torch.no_grad(), metrics.autocast(device, gen.get("precision", "fp32")):
        classifier = metrics.build_classifier(model, tokenizer, task.classnames, task.templates, device=device)
    with metrics.measure_run(device=device) as cost:
        syn = synthetic_prior.generate_with_prior(
            model, classifier.float(), prior=prior, prior_settings=prior_settings, classes=task.forget_classes,
            classnames=task.classnames, n_per_class=n_train + n_val, mean=mean, std=std, seed=seed, device=device,
            progress=progress, **gen)
    train_idx, val_idx = torch.arange(len(syn))[:n_train], torch.arange(len(syn))[n_train:n_train + n_val]
    if gen.get("restart"):  # held out: the last reached images; fill-ins (most probable first) only where needed
        missing = int((~syn.reached).sum())
        if missing:
            warnings.warn(f"{missing} of {len(syn)} synthetic images of {task.target!r} did not reach their "
                          f"threshold within max_attempts; the sets are filled with the most probable of them")
        reached, rest = syn.reached.nonzero().flatten().cpu(), (~syn.reached).nonzero().flatten().cpu()
        rest = rest[syn.probs[rest].cpu().argsort(descending=True)]
        n_held = min(n_val, len(reached))
        train_idx = torch.cat([reached[:len(reached) - n_held], rest])[:n_train]
        n_fill = max(0, n_train - (len(reached) - n_held))
        val_idx = torch.cat([reached[len(reached) - n_held:], rest[n_fill:n_fill + n_val - n_held]])
    forget, val = syn.subset(train_idx), syn.subset(val_idx)
    return forget, val, {**cost, "reached": int(syn.reached.sum()), "images": len(syn),
                         "mean_steps": float(syn.steps_taken.float().mean())}

def compute_avg_gain(result: dict, reference: dict, *, other_names: Sequence[str] | None = None,
                     divisor: float | None = None) -> float:
    """Return the authors' aggregate score (``compute_avg_gain`` of ``clip_forget_utils.py``); lower is better.

    With ``result`` the metrics after forgetting and ``reference`` those of the original
    model (``forget_acc``, ``retain_acc`` and ``other_acc/<name>`` for every other dataset)::

        (forget / forget_before                                  # forget accuracy kept
         + max(0, (retain_before - retain) / retain_before)      # relative drop, other classes
         + sum_d max(0, (other_d_before - other_d) / other_d_before)) / divisor

    ``divisor``: None (default) is the number of terms, 2 + the number of other datasets;
    the authors divide by 5 whatever that number (:data:`AUTHORS_GAIN_DIVISOR`; the same with
    their three other datasets). 0 is perfect forgetting with nothing else lost. A relative drop
    that is undefined (a reference accuracy of 0) counts 0, as the authors' ``fillna(0)``;
    so does the forget term when the class was never recognised. ``other_names``: the
    other datasets to use (default: every ``other_acc/<name>`` of ``reference``).
    """
    def ratio(now: float, before: float) -> float:
        return 0.0 if not before or before != before else now / before

    def drop(now: float, before: float) -> float:
        return 0.0 if not before or before != before else max(0.0, (before - now) / before)

    names = list(other_names) if other_names is not None else sorted(
        k.split("/", 1)[1] for k in reference if k.startswith("other_acc/"))
    terms = [ratio(result["forget_acc"], reference["forget_acc"]), drop(result["retain_acc"], reference["retain_acc"])]
    terms += [drop(result[f"other_acc/{n}"], reference[f"other_acc/{n}"]) for n in names]
    return float(sum(terms) / (len(terms) if divisor is None else divisor))

def run_lipschitz(task, *, model, tokenizer, forget_data, forget_idx=None, val_forget=None, lr: float,
                  n_samples: int = 25, sigma_schedule: Sequence[float] | None = None, k_start: int | None = None,
                  selective: bool = True, threshold: float = 0.1, max_epochs: int = 30, betas=(0.9, 0.98),
                  eps: float = 1e-6, weight_decay: float = 0.2, batch_size: int = 64,
                  caption_templates: Sequence[str] = ("a photo of a {}.",), data_free: bool = True,
                  method: str = "lipschitz_synthetic", config: dict | None = None, device="cpu",
                  optimizer: str = "adamw", rescore: str = "epoch", baseline: str = "measured",
                  loss_scale: str = "mean", noise_clamp: str = "pixel", accumulate: int = 1,
                  fallback: str = "original", precision: str = "fp32", reference: dict | None = None,
                  gain_divisor: float | None = None, progress: bool = False):
    """Forget ``task``'s class from a copy of ``model`` with paper B's procedure; return ``(model, record)``.

    ``forget_data[forget_idx]`` are the forget images (a synthetic set, or real training
    images for the ``lipschitz_real`` reference); ``val_forget = (dataset, indices)`` is what
    the validation scores forgetting on (held-out synthetic images for a data-free run:
    no real forget image is seen, not even to select). The record has the test metrics
    of :func:`clipunlearn.harness.evaluate_model`, the validation score of the final
    model, the stop-set accuracy before / after and a per-step validation history.
    ``caption_templates``: the caption of the loss (the authors': ``"A picture of {}"``).
    ``optimizer`` ... ``accumulate``: the form of :func:`forget_lipschitz` (project's by
    default, :data:`AUTHORS_OPTIONS` for the authors'); ``precision="bf16"``: bf16
    autocast in the loss and every evaluation. ``reference``: the original model's test
    metrics; adds ``avg_gain`` (:func:`compute_avg_gain` with ``divisor=gain_divisor``) to the record.
    ``metrics.stopped_early``: why forgetting stopped (``LipschitzResult.stop_reason``).
    """
    release_memory()
    unlearned = copy.deepcopy(model)
    loader = make_pair_loader(forget_data, tokenizer=tokenizer, templates=caption_templates, indices=forget_idx,
                              batch_size=batch_size, shuffle=True, seed=task.seed, device=device)
    k_schedule = paper_k_schedule(unlearned, **({} if k_start is None else dict(k_image=k_start, k_text=k_start)))
    sigma_schedule = paper_sigma_schedule() if sigma_schedule is None else sigma_schedule

    def validate(m):
        with metrics.autocast(device, precision):
            return harness.validate_model(m, task, tokenizer=tokenizer, device=device, forget_data=val_forget)

    options = dict(optimizer=optimizer, rescore=rescore, baseline=baseline, loss_scale=loss_scale,
                   noise_clamp=noise_clamp, accumulate=accumulate, fallback=fallback)
    with metrics.measure_run(device=device) as cost:
        result = forget_lipschitz(unlearned, forget_loader=loader, tokenizer=tokenizer, classnames=task.classnames,
                                  templates=task.templates, stop_dataset=forget_data, stop_indices=forget_idx,
                                  k_schedule=k_schedule, sigma_schedule=sigma_schedule, n_samples=n_samples,
                                  threshold=threshold, max_epochs=max_epochs, lr=lr, betas=betas, eps=eps,
                                  weight_decay=weight_decay, selective=selective, eval_fn=validate, device=device,
                                  seed=task.seed, progress=progress, precision=precision, **options)
    val = validate(unlearned)
    with metrics.autocast(device, precision):
        test = harness.evaluate_model(unlearned, task, tokenizer=tokenizer, device=device)
    history = [{"step": h["kept_step"], **{k: h[k] for k in ("val_forget_acc", "val_retain_acc", "score", "stop_acc")
                                           if k in h}} for h in result.curve()]
    changed = {k: v for k, v in {**options, "precision": precision}.items()
               if v != {**PROJECT_OPTIONS, "precision": "fp32"}[k]}
    record = harness.summarise_run(
        task, method=method,
        config={"lr": lr, "n_samples": n_samples, "sigma_schedule": list(sigma_schedule), "k_start": k_start,
                "selective": selective, "threshold": threshold, "max_epochs": max_epochs, "betas": list(betas),
                "eps": eps, "weight_decay": weight_decay, "batch_size": batch_size, "data_free": data_free,
                "forget_images": len(forget_idx) if forget_idx is not None else len(forget_data), **changed,
                **({"caption_templates": list(caption_templates)} if tuple(caption_templates) != (
                    "a photo of a {}.",) else {}), **(config or {})},
        test_metrics=test, cost=cost, val=val, history=history)
    record["metrics"].update(stop_acc=result.final_acc, stop_acc_before=result.initial_acc, steps=result.steps,
                             accepted_steps=result.accepted_steps, epochs=len(result.epochs),
                             stopped_early=result.stop_reason, failed=result.failed)
    if reference is not None:
        record["metrics"]["avg_gain"] = compute_avg_gain(test, reference, divisor=gain_divisor)
    return unlearned, record

#: The explorer's run of ``lipschitz_synthetic``: the mini generation with fewer steps, fewer images and noise samples.
EXPLORER_RUN = dict(generation_steps=200, n_train=32, n_val=16, n_samples=10)

def explore_lipschitz_synthetic(task, *, model, tokenizer, lr: float, steps: int, batch_size: int, seed: int,
                                device="cpu"):
    """Run ``lipschitz_synthetic`` for the explorer: synthetic images (:data:`EXPLORER_RUN`), ``steps`` epochs."""
    generation = {**mini_settings()["lipschitz"]["generation"], "steps": EXPLORER_RUN["generation_steps"]}
    forget, val, cost = generate_task_synthetic(model, task, tokenizer=tokenizer, n_train=EXPLORER_RUN["n_train"],
                                                n_val=EXPLORER_RUN["n_val"], generation=generation, seed=seed,
                                                device=device)
    return run_lipschitz(task, model=model, tokenizer=tokenizer, forget_data=forget, val_forget=(val, None), lr=lr,
                         n_samples=EXPLORER_RUN["n_samples"], max_epochs=steps, batch_size=batch_size,
                         config={"synthetic": cost}, device=device)

register_procedure("lipschitz_synthetic", label="Lipschitz, synthetic", explore=explore_lipschitz_synthetic,
                   data_free=True)

register_procedure("lipschitz_real", label="Lipschitz, real", in_explorer=False)
