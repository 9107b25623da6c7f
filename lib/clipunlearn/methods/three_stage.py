"""Paper A's three-stage subgroup unlearning: forget, remind, restore.

*Targeted Forgetting of Image Subgroups in CLIP Models* (arXiv 2506.03117, CVPR 2025)
has no public code; this module follows its description (``docs/PAPERS.md``) and names
every detail it had to choose as the "project's choice", always as a keyword argument.

1. **Forgetting** (:func:`forget_stage`): rank the layers by relative Fisher information
   of the image-text similarity (``layers.relative_fisher_scores``), adapt only the top
   ``n_layers`` (LoRA, ``lora.add_lora``, or full fine-tuning) and lower the cosine
   similarity of the forget pairs to their class text until it falls below ``margin``.
2. **Reminding**: (a) *alignment* (:func:`align_images`): small bounded input
   perturbations make the retain images' feature statistics at every BatchNorm match its
   running statistics; (b) (:func:`remind_stage`) label-aware CLIP contrastive
   fine-tuning on the (aligned) retain pairs plus distillation from the original model,
   keeping an exponential moving average (EMA) of the weights.
3. **Restoring** (:func:`restore_stage`): souping ``alpha * theta_unlearned +
   (1 - alpha) * theta_original``, alpha chosen on a calibration set
   (``souping.select_alpha``).

:func:`three_stage_unlearn` runs all three with the paper's ablation switches (the stages themselves
are in :mod:`.three_stage_stages`); :func:`run_three_stage` is one run on the shared harness. The
model stays in eval mode throughout: BatchNorm running statistics are never updated.

Notebook 30's settings per profile, tasks and drivers: :mod:`clipunlearn.papers.paper_a`.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Sequence

import torch

from .. import layers as layer_scores
from .. import metrics
from ..clip import copy_frozen, to_device
from ..configs import mini_settings
from ..harness import Task, calibration_fn, evaluate_model, pick_examples, summarise_run, validate_model
from ..registry import register_label, register_procedure
from ..unlearning import _cycle, make_pair_loader
from .three_stage_stages import (_layer_tensors, _read_tensor, align_images, batchnorm_layers, candidate_layers,
                                 choose_layers, content_key, forget_stage, mean_curve, remind_stage, restore_stage)


#: Paper A's ablations: method name -> switches of ``three_stage.three_stage_unlearn`` (variant = name after "-").
THREE_STAGE_ABLATIONS = {
    "three_stage-no_fisher_all": {"layer_choice": "all"},
    "three_stage-no_fisher_random": {"layer_choice": "random"},
    "three_stage-no_align": {"align": False},
    "three_stage-no_distill": {"distill": False},
    "three_stage-no_soup": {"soup": False},
    "three_stage-no_lora": {"use_lora": False},
    "three_stage-text_only": {"encoders": ("text",)},
    "three_stage-long_remind": {"remind_steps": 60},
}

#: Paper A's ablation table (relative Fisher, alignment, distillation, souping, LoRA); the other variants of
#: :data:`THREE_STAGE_ABLATIONS` change a project's choice: the text tower's layers only (both towers by
#: default), and 60 reminding steps (30 by default).
THREE_STAGE_PAPER_ABLATIONS = ("three_stage-no_fisher_all", "three_stage-no_fisher_random", "three_stage-no_align",
                               "three_stage-no_distill", "three_stage-no_soup", "three_stage-no_lora")

__all__ = [
    "THREE_STAGE_ABLATIONS", "THREE_STAGE_PAPER_ABLATIONS", "ThreeStageResult", "ThreeStageSettings",
    "three_stage_unlearn", "content_key",
    "loader_key", "run_three_stage", "explore_three_stage",
    # the stages (clipunlearn.methods.three_stage_stages), re-exported: the procedure is read here
    "candidate_layers", "choose_layers", "forget_stage", "batchnorm_layers", "align_images", "remind_stage",
    "restore_stage",
]

# --------------------------------------------------------------------------- #
# The whole method
# --------------------------------------------------------------------------- #
@dataclass
class ThreeStageResult:
    """What :func:`three_stage_unlearn` did, stage by stage (``to_dict`` for JSON records)."""

    layer_scores: dict = field(default_factory=dict)  # layer -> relative Fisher, high to low ({} unless "fisher")
    layers: list = field(default_factory=list)  # the layers tuned in both training stages
    forget: dict = field(default_factory=dict)  # forget_stage's report
    alignment: dict = field(default_factory=dict)  # {"loss_before", "loss_after", "batches"} or {"skipped": why}
    remind: dict = field(default_factory=dict)  # remind_stage's report ({"skipped": ...} with remind_steps=0)
    alpha_curve: list = field(default_factory=list)  # [{"alpha", **calib_fn(model)}]
    alpha: float = 1.0  # weight of the unlearned model in the final soup
    fallback: bool = False  # no alpha forgot enough on the calibration set: the one forgetting most was kept
    metrics: dict = field(default_factory=dict)  # calib_fn of the final model (empty without calib_fn)
    stages: dict = field(default_factory=dict)  # stage_fn after each stage: {"forget", "remind", "restore"}
    reused: list = field(default_factory=list)  # what came from the cache: "fisher", "forget", "align", "remind"
    seconds: dict = field(default_factory=dict)  # per stage: fisher, forget, align, remind, restore, total
    config: dict = field(default_factory=dict)  # the hyper-parameters of the run

    def to_dict(self) -> dict:
        return asdict(self)

@dataclass(frozen=True)
class ThreeStageSettings:
    """The hyper-parameters and ablation switches of :func:`three_stage_unlearn` (its docstring says what each
    does); the defaults are the project's choices on the mini model. Build one with :meth:`build`."""

    n_layers: int = 2
    layer_choice: str = "fisher"  # fisher, all or random
    encoders: Sequence[str] = ("image", "text")
    fisher_batches: int = 2
    align: bool = True
    distill: bool = True
    use_lora: bool = True
    soup: bool = True
    alphas: Sequence[float] = tuple(i / 10 for i in range(11))
    max_forget: float = 0.05
    forget_key: str = "forget_acc"
    retain_key: str | Sequence[str] = "retain_acc"
    rank: int = 4
    lora_alpha: float | None = None
    forget_lr: float = 1e-3
    forget_steps: int = 100
    margin: float = 0.0
    forget_criterion: str = "per_sample"
    retain_weight: float = 0.0
    align_eps: float = 8 / 255
    align_steps: int = 3
    align_lr: float = 2 / 255
    align_per_sample: bool = True
    align_tol: float = 0.0
    align_patience: int = 3
    remind_lr: float = 3e-3
    remind_steps: int = 30
    kd_weight: float = 1.0
    kd_temperature: float = 1.0
    ema_decay: float = 0.9
    seed: int = 0

    @classmethod
    def build(cls, settings: ThreeStageSettings | dict | None = None, **changes) -> ThreeStageSettings:
        """Return ``settings`` (a :class:`ThreeStageSettings`, a dict of its fields such as
        ``configs/mini.json``'s ``three_stage.settings``, or None for the defaults) with ``changes``;
        an unknown name is refused with the list of valid ones."""
        base = asdict(settings) if isinstance(settings, ThreeStageSettings) else dict(settings or {})
        given = {**base, **changes}
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(given) - set(valid))
        if unknown:
            raise ValueError(f"unknown three-stage settings {unknown}; valid: {', '.join(valid)}")
        return cls(**given)


def three_stage_unlearn(model, settings: ThreeStageSettings | dict | None = None, *, original=None, forget_loader,
                        retain_loader, distill_loader=None, calib_fn: Callable[[torch.nn.Module], dict] | None = None,
                        stage_fn: Callable[[str, torch.nn.Module], dict] | None = None, cache: dict | None = None,
                        device="cpu", progress: bool = False, **changes) -> ThreeStageResult:
    """Unlearn a subgroup with paper A's three stages, in place; return a :class:`ThreeStageResult`.

    Batches are dicts ``{"images", "texts", "labels"}`` (``unlearning.make_pair_loader``).
    ``original``: the frozen starting model (default: a frozen copy taken first). The hyper-parameters and
    ablation switches are a :class:`ThreeStageSettings` (or a dict of its fields), ``changes`` any of its
    fields given by name (``three_stage_unlearn(model, settings, remind_steps=60, ...)``):

    * layers: ``layer_choice="fisher"`` ranks ``candidate_layers(encoders)`` by relative
      Fisher on ``fisher_batches`` forget and retain batches and keeps the top
      ``n_layers``; ``"all"`` tunes every candidate, ``"random"`` ``n_layers`` at random
      (the "without relative Fisher" ablations).
    * forgetting: :func:`forget_stage` (``forget_lr``, ``forget_steps``, ``margin`` (the threshold delta),
      ``forget_criterion`` (``"per_sample"``: every pair below delta, paper A's; ``"mean"``),
      ``retain_weight``, ``use_lora``, ``rank``, ``lora_alpha``).
    * reminding: :func:`remind_stage` on the same layers for ``remind_steps`` retain
      batches (``remind_lr``, ``kd_weight``, ``kd_temperature``, ``ema_decay``); with
      ``align`` each batch is first aligned by :func:`align_images` on the original
      model (``align_eps``, ``align_steps`` at most, ``align_lr``, ``align_per_sample``: each image's own
      statistics as in the paper's notation, ``align_tol`` / ``align_patience``: stop once converged; the
      report keeps the mean loss curve over batches); ``distill_loader`` (optional) holds the batches
      distillation runs on; an image tower without
      BatchNorm (ViT) skips alignment and says so in ``result.alignment["skipped"]``
      (project's choice). ``distill=False`` sets ``kd_weight=0``.
    * restoring: with ``soup``, :func:`restore_stage` over ``alphas`` with ``calib_fn``
      (keys ``forget_key`` / ``retain_key``, criterion ``souping.select_alpha`` with
      ``max_forget``); without it the final model is the reminded one (alpha 1).
    * ``stage_fn(stage, model) -> dict``, when given, reports on the model after each
      stage (``"forget"``, ``"remind"``, ``"restore"``) into ``result.stages``; it must not
      change the model, and its time is left out of ``result.seconds``.
    * ``cache``: a dict kept across runs that start from the same model (one dict per
      starting model), holding what depends only on that model, the data and the
      settings: the relative Fisher scores of the same scoring batches, the aligned
      images of the same retain batches, and the tuned layers' weights after the
      forgetting and the reminding stage of the same settings (keys are content hashes of
      the loaders, batches and settings, so anything else misses). Reused work is exact
      (the stages are deterministic; reminding reseeds with ``seed + 1``); its original
      time is ``result.seconds["reused"]`` and its stages ``result.reused``.

    The model ends in eval mode with its ``requires_grad`` flags as they were; no
    stage updates BatchNorm running statistics. Default hyper-parameters: chosen on
    held-out training images of the mini model (forget "sandal", keep "sneaker" and
    "ankle boot"; ``remind_lr`` also on "sketch:sneaker", where forgetting through the
    image stem erases every sneaker and reminding must bring the photos back: the LoRA
    ``B`` starts at zero, and at 1e-4 thirty steps hardly move it); a real CLIP may need others.
    """
    s = ThreeStageSettings.build(settings, **changes)
    if s.soup and calib_fn is None:
        raise ValueError("soup=True needs calib_fn(model) -> {forget_key: ..., retain_key: ...} to choose alpha")
    config = {**asdict(s), "encoders": list(s.encoders), "alphas": [float(a) for a in s.alphas]}
    start = time.perf_counter()
    torch.manual_seed(s.seed)
    model.eval()
    original = copy_frozen(model) if original is None else original.eval()
    result = ThreeStageResult(config=config)
    seconds = result.seconds
    seconds["report"] = 0.0

    def report(stage: str) -> None:
        if stage_fn is not None:
            t0 = time.perf_counter()
            result.stages[stage] = stage_fn(stage, model)
            model.eval()
            seconds["report"] += time.perf_counter() - t0

    # stage 1: which layers, then forget
    t = time.perf_counter()
    candidates = candidate_layers(model, encoders=s.encoders)
    if s.layer_choice == "fisher":
        names = _layer_tensors(model, candidates)
        forget_batches = [to_device(b, device) for b in itertools.islice(_cycle(forget_loader), s.fisher_batches)]
        retain_batches = [to_device(b, device) for b in itertools.islice(_cycle(retain_loader), s.fisher_batches)]
        key = ("fisher", content_key(*(b[k] for b in forget_batches + retain_batches for k in ("images", "texts")),
                                     names))
        result.layer_scores = dict(_cached(cache, key, result, "fisher", lambda: layer_scores.relative_fisher_scores(
            model, forget_batches, retain_batches, names=names, per="layer", device=device, progress=progress)))
    result.layers = choose_layers(result.layer_scores or None, candidates, n_layers=s.n_layers,
                                  layer_choice=s.layer_choice, seed=s.seed)
    seconds["fisher"] = time.perf_counter() - t
    t = time.perf_counter()
    tuned = _layer_tensors(model, result.layers)
    forget_cache_key = ("forget", loader_key(forget_loader), loader_key(retain_loader) if s.retain_weight else None,
                        content_key(result.layers, s.margin, s.forget_lr, s.forget_steps, s.use_lora, s.rank,
                                    s.lora_alpha, s.retain_weight, s.seed, s.forget_criterion))

    def run_forget():
        report_ = forget_stage(model, forget_loader=forget_loader, retain_loader=retain_loader, layers=result.layers,
                               margin=s.margin, lr=s.forget_lr, max_steps=s.forget_steps, use_lora=s.use_lora,
                               rank=s.rank, lora_alpha=s.lora_alpha, retain_weight=s.retain_weight,
                               criterion=s.forget_criterion, device=device, progress=progress)
        return report_, {k: _read_tensor(model, k).detach().to("cpu", copy=True) for k in tuned}

    result.forget, weights = _cached(cache, forget_cache_key, result, "forget", run_forget)
    _load_tensors(model, weights)
    seconds["forget"] = time.perf_counter() - t
    report("forget")

    # stage 2: align (lazily, per retain batch) and remind
    torch.manual_seed(s.seed + 1)  # the same draws whether or not the forgetting stage came from the cache
    align_fn, align_logs = None, []
    seconds["align"] = 0.0
    if not s.align:
        alignment = {"skipped": "align=False"}
    elif not batchnorm_layers(original):
        alignment = {"skipped": "the image tower has no BatchNorm running statistics (ViT): not aligned"}
    else:
        alignment = {}

        def align_fn(images):
            t0 = time.perf_counter()
            key = ("align", content_key(images, s.align_eps, s.align_steps, s.align_lr, s.align_per_sample,
                                        s.align_tol, s.align_patience))
            aligned, logs = _cached(cache, key, result, "align", lambda: _on_cpu(align_images(
                original, images, eps=s.align_eps, steps=s.align_steps, lr=s.align_lr, per_sample=s.align_per_sample,
                tol=s.align_tol, patience=s.align_patience, device=device)))
            align_logs.append(logs)
            seconds["align"] += time.perf_counter() - t0
            return aligned.to(device)
    t = time.perf_counter()
    kd = s.kd_weight if s.distill else 0.0
    remind_cache_key = ("remind", forget_cache_key, loader_key(retain_loader),
                        loader_key(distill_loader) if distill_loader is not None else None,
                        content_key(s.remind_lr, s.remind_steps, kd, s.kd_temperature, s.ema_decay, s.use_lora, s.rank,
                                    s.lora_alpha, align_fn is not None, s.align_eps, s.align_steps, s.align_lr, s.seed,
                                    s.align_per_sample, s.align_tol, s.align_patience))

    def run_remind():
        if s.remind_steps > 0:
            report_ = remind_stage(model, original=original, retain_loader=retain_loader, layers=result.layers,
                                   lr=s.remind_lr, steps=s.remind_steps, kd_weight=kd, kd_temperature=s.kd_temperature,
                                   ema_decay=s.ema_decay, use_lora=s.use_lora, rank=s.rank, lora_alpha=s.lora_alpha,
                                   align_fn=align_fn, distill_loader=distill_loader, teacher_cache=cache,
                                   device=device, progress=progress)
            saved = report_.pop("teacher_reused_seconds", 0.0)
            if saved:  # the distillation targets the cache held (counted like a cached stage)
                seconds["reused"] = seconds.get("reused", 0.0) + saved
        else:
            report_ = {"skipped": "remind_steps=0"}
        if align_logs:
            aligned = {"loss_before": sum(a["loss_before"] for a in align_logs) / len(align_logs),
                       "loss_after": sum(a["loss_after"] for a in align_logs) / len(align_logs),
                       "batches": len(align_logs), "curve": mean_curve([a.get("curve", []) for a in align_logs]),
                       "steps": [a.get("steps") for a in align_logs]}
        else:
            aligned = alignment or {"skipped": "no retain batches were reminded (remind_steps=0)"}
        return report_, aligned, {k: _read_tensor(model, k).detach().to("cpu", copy=True) for k in tuned}

    result.remind, result.alignment, weights = _cached(cache, remind_cache_key, result, "remind", run_remind)
    _load_tensors(model, weights)
    seconds["remind"] = time.perf_counter() - t - seconds["align"]
    report("remind")

    # stage 3: restore by souping
    t = time.perf_counter()
    if s.soup:
        unlearned = {k: v.detach().clone() for k, v in model.state_dict().items()}
        restored = restore_stage(model, original_state=original.state_dict(), unlearned_state=unlearned,
                                 calib_fn=calib_fn, alphas=s.alphas, max_forget=s.max_forget, forget_key=s.forget_key,
                                 retain_key=s.retain_key)
        result.alpha, result.alpha_curve, result.metrics = restored["alpha"], restored["alpha_curve"], \
            restored["metrics"]
        result.fallback = bool(restored.get("fallback", False))
    elif calib_fn is not None:
        result.metrics = {"alpha": 1.0, **calib_fn(model)}
    seconds["restore"] = time.perf_counter() - t
    model.eval()
    report("restore")
    seconds["total"] = time.perf_counter() - start - seconds["report"]
    return result

def loader_key(loader) -> str:
    """Return a content key of what ``loader`` yields (a ``PairLoader``'s indices, seed, batch size and captions;
    every batch of a list of batches; else its first batch)."""
    if all(hasattr(loader, a) for a in ("indices", "seed", "batch_size", "tokens")):
        return content_key(loader.indices, loader.seed, loader.batch_size, getattr(loader, "shuffle", None),
                           getattr(loader, "drop_last", None), loader.tokens)
    batches = list(loader) if isinstance(loader, (list, tuple)) else [next(iter(_cycle(loader)))]
    return content_key(*(b[k] for b in batches for k in sorted(b) if torch.is_tensor(b[k])))

def _cached(cache: dict | None, key, result: ThreeStageResult, stage: str, compute: Callable):
    """Return ``compute()``, or its value stored in ``cache`` under ``key``. The time the stored work took
    (its own reuse included) is added to ``result.seconds["reused"]`` and ``stage`` to ``result.reused``, so a
    run's reported cost can be what it would cost on its own."""
    seconds = result.seconds
    if cache is not None and key in cache:
        value, took = cache[key]
        seconds["reused"] = seconds.get("reused", 0.0) + took
        if stage not in result.reused:
            result.reused.append(stage)
        return value
    t0, reused0 = time.perf_counter(), seconds.get("reused", 0.0)
    value = compute()
    if cache is not None:
        cache[key] = (value, time.perf_counter() - t0 + seconds.get("reused", 0.0) - reused0)
    return value

def _on_cpu(pair: tuple) -> tuple:
    images, logs = pair
    return images.detach().to("cpu", copy=True), logs

@torch.no_grad()
def _load_tensors(model, tensors: dict) -> None:
    for k, v in tensors.items():
        _read_tensor(model, k).copy_(v)


# --------------------------------------------------------------------------- #
# Paper A: forgetting an image subgroup in three stages, on the same harness
# --------------------------------------------------------------------------- #
def _scalars(metrics_: dict) -> dict:
    return {k: v for k, v in metrics_.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

def run_three_stage(task: Task, *, model, tokenizer, lr: float = 1e-3, batch_size: int = 32,
                    settings: dict | None = None, method: str = "three_stage", calib_per_class: int = 30,
                    stage_metrics: bool = True, extra_metrics: Callable[[object, Task], dict] | None = None,
                    examples: int = 0, cache: dict | None = None, device="cpu",
                    seed: int | None = None, progress: bool = False, config: dict | None = None):
    """Run paper A's three stages on a fresh copy of ``model`` for ``task``; return ``(model, record)``.

    Forget / retain pairs: ``unlearning.make_pair_loader`` over ``task.forget_train`` (captions from
    ``task.forget_templates``, else ``task.templates``) / ``task.retain_train`` (siblings included) with
    ``task.templates``, ``batch_size``; a task with ``retain_parts`` (a style subgroup) scores layers and
    reminds on its siblings and forget-style images and distils on its photos. Alpha's calibration adds the
    other classes' other styles when the task has them (``val_other``).
    ``lr`` is the forgetting stage's learning rate (what the grid searches); ``settings``:
    other keyword arguments of ``three_stage_unlearn`` (the ablation switches
    among them). Alpha is chosen on :func:`calibration_fn` (validation images, largest
    mean of sibling and retain accuracy with forget accuracy <= ``max_forget``).

    The record holds the test metrics of :func:`evaluate_model` on the final model (plus
    ``extra_metrics(model, task)``), the validation numbers of :func:`validate_model`
    (``score``: the selection criterion), ``seconds`` (the method's time, reports left
    out) and ``peak_mem_mb`` (``metrics.measure_run``); with ``stage_metrics`` also the test
    metrics after forgetting and after reminding (``after_forget/<metric>``,
    ``after_remind/<metric>``; computed once per stage, never used for a choice). The
    record's ``three_stage`` entry keeps each stage's report: the relative-Fisher ranking
    (``layer_scores``, ``[layer, score]`` high to low), the tuned ``layers``, the forgetting
    stage's similarity curve, alignment and reminding losses, ``alpha_curve`` and
    ``alpha``, per-stage ``seconds`` (``reused``: the stages taken from ``cache``; ``seconds`` counts
    them at their original time), and with ``examples`` the predicted classes of that many
    forget and sibling test images (:func:`pick_examples`) before and after each stage.
    ``cache``: see ``three_stage_unlearn`` (one dict per model).
    """
    settings = dict(settings or {})
    if "forget_lr" in settings:
        raise ValueError("give the forgetting stage's learning rate as lr=, not settings['forget_lr']")
    seed = task.seed if seed is None else seed

    def pairs(idx, shift, templates=task.templates):
        return make_pair_loader(task.train, tokenizer=tokenizer, templates=templates, indices=idx,
                                batch_size=batch_size, seed=task.seed * 7 + shift, device=device)

    def predict(m) -> list[int]:
        clf = metrics.build_classifier(m, tokenizer, task.classnames, task.templates, device=device)
        logits, _ = metrics.predict_logits(m, clf, task.test, indices=example_idx, device=device)
        return logits.argmax(1).tolist()

    example_idx = pick_examples(task, per_set=examples) if examples else None
    shown = None
    if example_idx is not None and len(example_idx):
        shown = {"indices": example_idx.tolist(), "labels": torch.as_tensor(task.test.targets)[example_idx].tolist(),
                 "original": predict(model)}

    def stage_fn(stage: str, m) -> dict:
        out = {}
        if stage_metrics or stage == "restore":
            out.update(evaluate_model(m, task, tokenizer=tokenizer, device=device))
            if extra_metrics is not None:
                out.update(extra_metrics(m, task))
        if shown is not None:
            shown[stage] = predict(m)
        return out

    calib = calibration_fn(task, tokenizer=tokenizer, per_class=calib_per_class, device=device)
    has_siblings = task.val_sibling is not None and len(task.val_sibling) > 0  # as calibration_split
    kept = ("sibling_acc", "retain_acc") if has_siblings else ("retain_acc",)
    if task.val_other is not None and len(task.val_other):
        kept += ("other_acc",)
    parts = task.retain_parts
    if parts:  # a style subgroup: remind on the siblings and the forget style, distil on the other photos
        retain_loader = pairs(torch.cat([parts["sibling"], parts["style"]]).sort().values, 1)
        distill_loader = pairs(parts["photo"], 2)
    else:
        retain_loader, distill_loader = pairs(task.retain_train, 1), None
    unlearned = copy.deepcopy(model)
    original = copy_frozen(model)
    with metrics.measure_run(device=device) as cost:
        result = three_stage_unlearn(
            unlearned, ThreeStageSettings.build(
                settings, forget_key="forget_acc", forget_lr=lr, seed=seed,
                retain_key=kept if len(kept) > 1 else kept[0]),
            original=original, forget_loader=pairs(task.forget_train, 0, task.forget_templates or task.templates),
            retain_loader=retain_loader, distill_loader=distill_loader, calib_fn=calib, stage_fn=stage_fn,
            cache=cache, device=device, progress=progress)
    del original
    # the method's own cost: stage reports left out, work reused from the cache counted at its original time
    cost["seconds"] = max(0.0, cost["seconds"] - result.seconds.get("report", 0.0)) + result.seconds.get("reused", 0.0)
    stages = result.stages
    test = stages["restore"]
    val = validate_model(unlearned, task, tokenizer=tokenizer, device=device)
    info = result.to_dict()
    forget = info["forget"]
    remind = info["remind"]
    report = {
        "layer_scores": [[name, float(s)] for name, s in info["layer_scores"].items()],
        "layers": info["layers"], "alpha": info["alpha"], "alpha_curve": info["alpha_curve"],
        "fallback": info["fallback"],
        "forget": {"steps": forget["steps"], "stopped": forget["stopped"],
                   "similarity": [h["similarity"] for h in forget["history"]],
                   "max_similarity": [h.get("max_similarity") for h in forget["history"]]},
        "alignment": info["alignment"],
        "remind": {k: remind[k] for k in ("steps", "loss_before", "loss_after", "skipped") if k in remind},
        "seconds": info["seconds"], "reused": info["reused"],
    }
    if shown is not None:
        report["examples"] = shown
    hparams = {k: v for k, v in info["config"].items() if k not in ("forget_lr", "seed")}
    record = summarise_run(task, method=method,
                           config={"lr": lr, "batch_size": batch_size, "calib_per_class": calib_per_class, **hparams,
                                   **(config or {})},
                           test_metrics=test, cost=cost, val=val, three_stage=report)
    m = record["metrics"]
    for stage in ("forget", "remind"):
        m.update({f"after_{stage}/{k}": v for k, v in _scalars(stages.get(stage, {})).items()})
    finite = all(math.isfinite(v) for v in (forget["similarity_after"], remind.get("loss_after", 0.0)))
    m.update(alpha=info["alpha"], soup_fallback=info["fallback"], forget_steps=forget["steps"],
             steps=forget["steps"] + remind.get("steps", 0),
             best_step=None, stopped_early=None if finite else "non-finite loss", failed=not finite)
    return unlearned, record

def explore_three_stage(task: Task, *, model, tokenizer, lr: float, steps: int, batch_size: int, seed: int,
                        device="cpu"):
    """Run the three stages for the explorer: the mini settings, ``steps`` forgetting steps at ``lr``."""
    mini = mini_settings()["three_stage"]
    settings = {**mini["settings"], "forget_steps": steps}
    return run_three_stage(task, model=model, tokenizer=tokenizer, lr=lr, batch_size=batch_size, settings=settings,
                           calib_per_class=mini["calib_per_class"], stage_metrics=False, device=device, seed=seed)

register_procedure("three_stage", label="three-stage", explore=explore_three_stage)

register_label("three_stage-no_fisher", "three-stage, no Fisher")
