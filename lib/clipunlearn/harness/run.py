"""One run of a registered loss through the one loop, and the drivers that repeat it.

:func:`run_method` runs one registered loss through ``unlearning.unlearn`` on a fresh
copy of the model, measures it and returns a result record; :func:`run_forget_benchmark`,
:func:`run_ablation` and :func:`run_forget_ratio` repeat it over targets, variants and
forget ratios with the one selection protocol (:mod:`~clipunlearn.harness.select`).
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

from tqdm.auto import tqdm

from .. import metrics
from ..clip import autocast, copy_frozen, release_memory
from ..registry import get_method
from ..results import make_record
from ..scores import selection_score, unlearning_score
from ..unlearning import check_run_settings, make_pair_loader, unlearn
from .evaluate import evaluate_model, validate_model
from .select import run_selected, summarise_run
from .task import Task, build_task, class_prompts

__all__ = ["MINI_LR_GRID", "record_original", "run_ablation", "run_forget_benchmark", "run_forget_ratio",
           "run_method"]

#: The learning-rate grid of every loss-based method in the mini profile (log-spaced, a decade apart).
MINI_LR_GRID = (1e-5, 1e-4, 1e-3)


def run_method(method: str, task: Task, *, model, tokenizer, lr: float, steps: int, batch_size: int = 32,
               eval_every: int | None = None, loss_kwargs: dict | None = None, trainable=None,
               device="cpu", precision: str = "fp32", progress: bool = False, evaluate: bool = True,
               config: dict | None = None, logit_scale: str = "trainable"):
    """Unlearn a fresh copy of ``model`` on ``task`` with registered loss ``method``; return ``(model, record)``.

    The copy is trained for ``steps`` steps of ``batch_size`` forget and retain pairs
    (``unlearning.unlearn``), evaluated on the validation split every ``eval_every``
    steps (default ``steps // 5``); the best evaluated step by :func:`selection_score`
    is kept. The record holds the test metrics (:func:`evaluate_model`, skipped with
    ``evaluate=False``), the validation numbers at the kept step, the wall time and
    the rise of peak memory of the run, and the validation history. A run stopped by
    a non-finite loss is recorded with ``metrics.failed = True``. ``precision="bf16"``:
    the loss under bf16 autocast (a GPU's speed-up; ``unlearning.unlearn``), kept in the config;
    ``logit_scale`` (``unlearning.LOGIT_SCALE_MODES``): the temperature trained, clamped or frozen, kept in
    the config unless ``"trainable"``.
    """
    check_run_settings(lr=lr, steps=steps, batch_size=batch_size, eval_every=eval_every)
    release_memory()
    kwargs = dict(loss_kwargs or {})
    if get_method(method).needs_class_texts:  # the forget term classifies over every class prompt
        kwargs.setdefault("class_texts", class_prompts(task, tokenizer=tokenizer).to(device))

    def pairs(idx, shift):
        return make_pair_loader(task.train, tokenizer=tokenizer, templates=task.templates, indices=idx,
                                batch_size=batch_size, seed=task.seed * 7 + shift, device=device)

    eval_every = eval_every or max(1, steps // 5)
    unlearned = copy.deepcopy(model)
    original = copy_frozen(model)
    with metrics.measure_run(device=device) as cost:
        run = unlearn(unlearned, method=method, forget_loader=pairs(task.forget_train, 0),
                      retain_loader=pairs(task.retain_train, 1), original=original, epochs=math.ceil(
                          steps / max(1, len(pairs(task.forget_train, 0)))) or 1, max_steps=steps, lr=lr,
                      loss_kwargs=kwargs, trainable=trainable,
                      eval_fn=lambda m: validate_model(m, task, tokenizer=tokenizer, device=device),
                      eval_every=eval_every, select_fn=selection_score, device=device, precision=precision,
                      seed=task.seed, progress=progress, logit_scale=logit_scale)
    del original
    evals = run.evals
    best = next((e for e in evals if e["step"] == run.best_step), evals[-1] if evals else {})
    val = {k: best[k] for k in ("val_forget_acc", "val_retain_acc", "score") if k in best}
    failed = bool(getattr(run, "failed", False) or (run.stopped_early or "").startswith("non-finite"))
    stopped = run.stopped_early
    try:
        test = evaluate_model(unlearned, task, tokenizer=tokenizer, device=device) if evaluate else {}
    except metrics.NonFiniteOutputError as err:  # diverged outputs: recorded as failed, the notebook goes on
        test, failed, stopped = {}, True, f"non-finite outputs: {err}"
    hparams = {k: v for k, v in kwargs.items() if k != "class_texts"}
    record = summarise_run(
        task, method=method,
        config={"lr": lr, "steps": steps, "batch_size": batch_size, "eval_every": eval_every, **hparams,
                **({"precision": precision} if precision != "fp32" else {}),
                **({"logit_scale": logit_scale} if logit_scale != "trainable" else {}), **(config or {})},
        test_metrics=test, cost=cost, val=val,
        history=[{"step": e["step"], **{k: e[k] for k in ("val_forget_acc", "val_retain_acc", "score") if k in e}}
                 for e in evals])
    record["metrics"].update(steps=run.steps, best_step=run.best_step, stopped_early=stopped, failed=failed)
    return unlearned, record


def record_original(tasks: dict[str, Sequence[Task]], *, model, tokenizer, store=None, extra_metrics=None,
                    validate: bool = False, score: bool = False, precision: str = "fp32",
                    device="cpu") -> dict[str, dict]:
    """Return ``{target: record}`` of the untouched model (method ``original``, ``config.seed`` None) on the
    first seed's task of each target of ``tasks`` (``{target: [task per seed]}``); a record in ``store`` is
    reused, a new one is added to it.

    ``extra_metrics(model, task)`` adds test metrics; ``validate`` adds the validation metrics and
    ``score`` the ``unlearning_score`` of the model against itself (paper A's records); ``precision``
    evaluates under autocast (``"bf16"``: paper B's runs on a GPU). The one place the original record is made.
    """
    out = {}
    for target, seeded in tasks.items():
        first = seeded[0]
        rec = store.find(method="original", task=first.kind, forget_class=target) if store is not None else None
        if rec is None:
            with autocast(device, precision):
                test = evaluate_model(model, first, tokenizer=tokenizer, device=device)
            if extra_metrics is not None:
                test.update(extra_metrics(model, first))
            val = validate_model(model, first, tokenizer=tokenizer, device=device) if validate else None
            rec = summarise_run(first, method="original", config={"seed": None}, test_metrics=test, val=val)
            if score:
                rec["metrics"]["unlearning_score"] = unlearning_score(rec["metrics"], rec["metrics"])
            if store is not None:
                store.add(rec)
        out[target] = rec
    return out


def run_forget_benchmark(methods: Sequence[str], tasks: dict[str, Sequence[Task]], *, model, tokenizer,
                         grid: dict[str, Sequence], steps: int, batch_size: int = 32, eval_every: int | None = None,
                         store=None, device="cpu", precision: str = "fp32", progress: bool = True) -> list[dict]:
    """Run every registered loss in ``methods`` on every target of ``tasks`` (``{target: [task per seed]}``).

    Records the untouched model once per target (method ``original``, ``config.seed``
    None), then each method through :func:`run_selected` (grid on the first seed,
    the other seeds with the selected values). Returns every record; with ``store``
    they are saved as they come and finished runs are skipped on resume.
    """
    records = list(record_original(tasks, model=model, tokenizer=tokenizer, store=store, device=device).values())
    jobs = [(m, t) for t in tasks for m in methods]
    for method, target in tqdm(jobs, desc="methods x targets", disable=not progress):
        def run_fn(task, **candidate):
            return run_method(method, task, model=model, tokenizer=tokenizer, steps=steps, batch_size=batch_size,
                              eval_every=eval_every, device=device, precision=precision, **candidate)
        records += run_selected(method, tasks[target], run_fn=run_fn, grid=grid, store=store)
    return records


def run_ablation(method: str, tasks: Sequence[Task], *, variants: dict[str, dict], model, tokenizer, steps: int,
                 batch_size: int = 32, store, device="cpu", precision: str = "fp32", full_variant: str = "full",
                 none_variant: str = "none") -> list[dict]:
    """Rerun ``method`` on ``tasks`` (one target, every seed) with each variant's loss kwargs; return the records.

    Uses the learning rate ``method`` selected on this target (its stored
    ``forget-class`` record of the first seed). Also adds, as ``ablation`` records,
    the original model (``none_variant``) and the main runs (``full_variant``), so
    the ablation table is complete from the file alone.
    """
    first = tasks[0]
    main = store.find(method=method, task=first.kind, forget_class=first.target, seed=first.seed)
    original = store.find(method="original", task=first.kind, forget_class=first.target)
    if main is None or original is None:
        raise ValueError(f"run the {first.kind} benchmark of {method!r} on {first.target!r} first (it selects the lr)")
    lr = main["config"]["selected"]["lr"]
    out = [make_record(method=method, task="ablation", config={**original["config"], "variant": none_variant},
                       metrics=original["metrics"])]
    for task in tasks:
        rec = store.find(method=method, task=first.kind, forget_class=task.target, seed=task.seed)
        if rec is not None:
            out.append(make_record(method=method, task="ablation", config={**rec["config"], "variant": full_variant},
                                   metrics=rec["metrics"], history=rec.get("history", [])))
        for variant, kwargs in variants.items():
            done = store.find(method=method, task="ablation", forget_class=task.target, seed=task.seed,
                              variant=variant)
            if done is None:
                _, done = run_method(method, task, model=model, tokenizer=tokenizer, lr=lr, steps=steps,
                                     batch_size=batch_size, loss_kwargs=kwargs, device=device, precision=precision,
                                     config={"variant": variant})
                done["task"] = "ablation"
                store.add(done)
                release_memory()
            out.append(done)
    store.add(*out[:1], *[r for r in out[1:] if r["config"].get("variant") == full_variant])
    return out


def run_forget_ratio(methods: Sequence[str], *, ratios: Sequence[float], classes: Sequence[str], train, test, model,
                     tokenizer, templates, seed: int = 0, steps: int, batch_size: int = 32, n_seen: int | None = None,
                     store, device="cpu", precision: str = "fp32", task_kwargs: dict | None = None) -> list[dict]:
    """Forget the first ``round(ratio * C)`` of ``classes`` at once, for each ratio and method; return the records.

    Each method runs at the learning rate it selected on ``classes[0]`` (its stored
    ``forget-class`` record of ``seed``). Records have task ``forget-ratio`` and
    ``config.forget_ratio``; the ratio whose first class alone is that main task reuses it.
    """
    out = []
    n_classes = len(train.classnames)
    for ratio in ratios:
        k = max(1, round(ratio * n_classes))
        target = ",".join(classes[:k])
        task = build_task(train, test, kind="forget-class", target=target, seed=seed, templates=templates,
                          n_seen=n_seen, **(task_kwargs or {}))
        for method in methods:
            main = store.find(method=method, task="forget-class", forget_class=classes[0], seed=seed)
            if main is None:
                raise ValueError(f"run the forget-class benchmark of {method!r} on {classes[0]!r} first")
            rec = store.find(method=method, task="forget-ratio", forget_class=target, seed=seed, forget_ratio=ratio)
            if rec is None:
                if k == 1:
                    rec = make_record(method=method, task="forget-ratio", config={**main["config"]},
                                      metrics=main["metrics"])
                else:
                    _, rec = run_method(method, task, model=model, tokenizer=tokenizer,
                                        lr=main["config"]["selected"]["lr"], steps=steps, batch_size=batch_size,
                                        device=device, precision=precision)
                    rec["task"] = "forget-ratio"
                    release_memory()
                rec["config"].update(forget_ratio=ratio, forget_classes=classes[:k])
                store.add(rec)
            out.append(rec)
    return out
