"""One run of a registered loss through the one loop, and the drivers that repeat it.

:func:`run_method` runs one registered loss through ``unlearning.unlearn`` on a fresh
copy of the model, measures it and returns a result record; :func:`run_forget_benchmark`,
:func:`run_ablation` and :func:`run_forget_ratio` repeat it over targets, variants and
forget ratios with the one selection protocol (:mod:`~clipunlearn.harness.select`).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .. import metrics
from ..clip import autocast, copy_frozen, release_memory, resolve_precision
from ..registry import get_method
from ..results import make_record
from ..scores import selection_score, unlearning_score
from ..unlearning import check_compile, check_run_settings, make_pair_loader, unlearn
from .evaluate import evaluate_model, validate_model
from .reference import Reference, compare_to_reference, reference_fn
from .executor import map_selections
from .select import EVALUATIONS, Selection, is_search, reported_tasks, run_selected, summarise_run
from .task import Task, build_task, class_prompts, pick_classes

__all__ = ["MINI_LR_GRID", "RUN_FACTORIES", "make_ablation_run", "make_benchmark_run", "make_ratio_run",
           "record_original", "run_ablation", "run_forget_benchmark", "run_forget_ratio", "run_method"]

#: The learning-rate grid every loss-based method starts from in the mini profile (half a decade apart; the
#: protocol extends it at an end, ``select.GridExtension``).
MINI_LR_GRID = (3.16e-5, 1e-4, 3.16e-4)
#: The record task of each run factory's runs (:data:`RUN_FACTORIES`; the benchmark's: the task's own kind).
FACTORY_TASKS = {"ablation": "ablation", "ratio": "forget-ratio"}


def run_method(method: str, task: Task, *, model, tokenizer, lr: float, steps: int, batch_size: int = 32,
               eval_every: int | None = None, loss_kwargs: dict | None = None, trainable=None,
               device="cpu", precision: str = "fp32", progress: bool = False, evaluate: bool = True,
               config: dict | None = None, logit_scale: str = "clamped", compile: str = ""):
    """Unlearn a fresh copy of ``model`` on ``task`` with registered loss ``method``; return ``(model, record)``.

    The copy is trained for ``steps`` steps of ``batch_size`` forget and retain pairs
    (``unlearning.unlearn``), evaluated on the validation split every ``eval_every``
    steps (default ``steps // EVALUATIONS``: ten passes, the same for every method); the best
    evaluated step by :func:`selection_score` is kept. The record holds the test metrics
    (:func:`evaluate_model`, skipped with ``evaluate=False``), the validation numbers at the kept
    step, the wall time (``seconds``; ``val_seconds`` of it spent on ``val_passes`` validation passes,
    ``method_seconds`` the rest) and the rise of peak memory of the run, the validation history and
    where the kept step sits (``best_step_edge``: ``first``, ``last`` or ``interior`` of the evaluated
    steps). A run stopped by a non-finite loss is recorded with ``metrics.failed = True``.
    ``precision="bf16"``: the loss under bf16 autocast (a GPU's speed-up; ``unlearning.unlearn``), kept
    in the config; ``logit_scale`` (``unlearning.LOGIT_SCALE_MODES``): the temperature clamped at
    open_clip's 100 (the default, as open_clip trains), frozen or trained freely, kept in the config.
    ``compile`` (``unlearning.COMPILE_MODES``): the step's loss compiled (``unlearning.unlearn``), kept in the config
    when not ``""``. The config also keeps the torch threads the run had (``threads``): its sums' order, which a
    rebuild of the run must repeat (notebook 45).
    """
    check_run_settings(lr=lr, steps=steps, batch_size=batch_size, eval_every=eval_every)
    precision = resolve_precision(precision, device)  # "auto": what this device runs well, recorded as such
    check_compile(compile, device)
    release_memory()
    kwargs = dict(loss_kwargs or {})
    if get_method(method).needs_class_texts:  # the forget term classifies over every class prompt
        kwargs.setdefault("class_texts", class_prompts(task, tokenizer=tokenizer).to(device))

    def pairs(idx, shift):
        return make_pair_loader(task.train, tokenizer=tokenizer, templates=task.templates, indices=idx,
                                batch_size=batch_size, seed=task.seed * 7 + shift, device=device)

    eval_every = eval_every or max(1, steps // EVALUATIONS)
    val_cost = {"val_passes": 0, "val_seconds": 0.0}

    def validate(m):
        start = time.perf_counter()
        out = validate_model(m, task, tokenizer=tokenizer, device=device)
        val_cost["val_passes"] += 1
        val_cost["val_seconds"] += time.perf_counter() - start
        return out

    unlearned = copy.deepcopy(model)
    original = copy_frozen(model)
    with metrics.measure_run(device=device) as cost:
        run = unlearn(unlearned, method=method, forget_loader=pairs(task.forget_train, 0),
                      retain_loader=pairs(task.retain_train, 1), original=original, epochs=math.ceil(
                          steps / max(1, len(pairs(task.forget_train, 0)))) or 1, max_steps=steps, lr=lr,
                      loss_kwargs=kwargs, trainable=trainable,
                      eval_fn=validate,
                      eval_every=eval_every, select_fn=selection_score, device=device, precision=precision,
                      seed=task.seed, progress=progress, logit_scale=logit_scale, compile=compile)
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
                **({"precision": precision} if precision != "fp32" else {}), "logit_scale": logit_scale,
                **({"compile": compile} if compile else {}), "threads": torch.get_num_threads(),
                **(config or {})},
        test_metrics=test, cost=cost, val=val,
        history=[{"step": e["step"], **{k: e[k] for k in ("val_forget_acc", "val_retain_acc", "score") if k in e}}
                 for e in evals])
    evaluated = [e["step"] for e in evals]
    edge = None if run.best_step not in evaluated else ("first" if run.best_step == evaluated[0] else "last"
                                                         if run.best_step == evaluated[-1] else "interior")
    record["metrics"].update(steps=run.steps, best_step=run.best_step, best_step_edge=edge, stopped_early=stopped,
                             failed=failed, **val_cost,
                             method_seconds=max(0.0, (record["metrics"].get("seconds") or 0.0)
                                                - val_cost["val_seconds"]))
    return unlearned, record


def record_original(tasks: dict[str, Sequence[Task]], *, model, tokenizer, store=None, extra_metrics=None,
                    validate: bool = False, score: bool = False, precision: str = "fp32", device="cpu",
                    selection: Selection | None = None,
                    references: dict[str, Reference] | None = None) -> dict[str, dict]:
    """Return ``{target: record}`` of the untouched model (method ``original``, ``config.seed`` None) on the
    first reported seed's task of each target of ``tasks`` (``{target: [task per seed]}``; ``selection``
    names the seed that is not reported); a record in ``store`` is reused, a new one is added to it.

    ``extra_metrics(model, task)`` adds test metrics; ``validate`` adds the validation metrics and
    ``score`` the ``unlearning_score`` of the model against itself (paper A's records); ``precision``
    evaluates under autocast (``"bf16"``: paper B's runs on a GPU). ``references`` (``{target:
    Reference}``): the retrained model's record is stored beside it (method ``retrain``), and both get
    their distance to it (:func:`compare_to_reference`). The one place the original record is made.
    """
    out = {}
    for target, seeded in tasks.items():
        first = reported_tasks(seeded, selection)[0]
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
            if references and target in references:
                rec["metrics"].update(compare_to_reference(model, first, rec["metrics"], references[target],
                                                           tokenizer=tokenizer, device=device))
            if store is not None:
                store.add(rec)
        ref = (references or {}).get(target)
        if ref is not None and store is not None and store.find(method=ref.record["method"], task=first.kind,
                                                                forget_class=target) is None:
            retrained = copy.deepcopy(ref.record)
            if extra_metrics is not None:
                retrained["metrics"].update(extra_metrics(ref.model, first))
            if score:
                retrained["metrics"]["unlearning_score"] = unlearning_score(retrained["metrics"], rec["metrics"])
            retrained["metrics"].update(compare_to_reference(ref.model, first, retrained["metrics"], ref,
                                                             tokenizer=tokenizer, device=device))
            store.add(retrained)
        out[target] = rec
    return out


def run_forget_benchmark(methods: Sequence[str], tasks: dict[str, Sequence[Task]], *, model, tokenizer,
                         grid: dict[str, Sequence], steps: int, batch_size: int = 32, eval_every: int | None = None,
                         store=None, device="cpu", precision: str = "fp32", compile: str = "", progress: bool = True,
                         selection: Selection | None = None,
                         references: dict[str, Reference] | None = None, executor=None,
                         world: dict | None = None) -> list[dict]:
    """Run every registered loss in ``methods`` on every target of ``tasks`` (``{target: [task per seed]}``).

    Records the untouched model once per target (method ``original``, ``config.seed`` None; beside it the
    retrained model of ``references``), then each method through :func:`run_selected` with the protocol
    ``selection`` (``select.PROTOCOL``: the grid on the selection seed, extended at its ends; None: on the
    first seed, reported too); every reported run gets its distance to the retrained model. Returns every
    record; with ``store`` they are saved as they come and finished runs are skipped on resume. ``precision`` /
    ``compile``: how each run computes its loss (:func:`run_method`). ``executor`` /
    ``world`` (the JSON description a worker loads the model, data and references from: ``clipunlearn.cluster``):
    where the runs execute (:func:`run_selected`); the records are the same.
    """
    records = list(record_original(tasks, model=model, tokenizer=tokenizer, store=store, device=device,
                                   selection=selection, references=references).values())
    finish = reference_fn(references, tokenizer=tokenizer, device=device)
    jobs = [(m, t) for t in tasks for m in methods]

    def select(job):
        method, target = job
        settings = dict(method=method, steps=steps, batch_size=batch_size, eval_every=eval_every, precision=precision,
                        compile=compile)
        run_fn = make_benchmark_run(**settings, model=model, tokenizer=tokenizer, device=device, selection=selection)
        return run_selected(method, tasks[target], run_fn=run_fn, grid=grid, store=store, selection=selection,
                            finish_fn=finish, executor=executor, remote=_remote(world, "benchmark", settings))
    for found in map_selections(executor, tqdm(jobs, desc="methods x targets", disable=not progress), select):
        records += found
    return records


def _remote(world: dict | None, factory: str, settings: dict) -> dict | None:
    """The spec template of a driver's runs: the world a worker loads and the factory that rebuilds ``run_fn``."""
    return None if world is None else {"world": world, "factory": factory, "settings": settings}


def make_benchmark_run(*, method: str, model, tokenizer, steps: int, batch_size: int = 32,
                       eval_every: int | None = None, device="cpu", precision: str = "fp32", compile: str = "",
                       selection: Selection | None = None):
    """Return ``run_fn(task, **candidate)`` of :func:`run_forget_benchmark`: ``method`` through :func:`run_method`
    (the selection seed's runs are not tested)."""
    def run_fn(task, **candidate):
        return run_method(method, task, model=model, tokenizer=tokenizer, steps=steps, batch_size=batch_size,
                          eval_every=eval_every, device=device, precision=precision, compile=compile,
                          evaluate=not is_search(task, selection), **candidate)
    return run_fn


def run_ablation(method: str, tasks: Sequence[Task], *, variants: dict[str, dict], model, tokenizer, steps: int,
                 batch_size: int = 32, store, device="cpu", precision: str = "fp32", compile: str = "",
                 full_variant: str = "full",
                 none_variant: str = "none", grid: dict[str, Sequence] | None = None,
                 selection: Selection | None = None, executor=None, world: dict | None = None) -> list[dict]:
    """Rerun ``method`` on ``tasks`` (one target, every seed) with each variant's loss kwargs; return the records.

    With ``grid``, every variant's learning rate is selected like the full method's (:func:`run_selected`
    with ``selection``; its search kept as ``selection`` records of run task ``ablation``); without, every
    variant uses the learning rate ``method`` selected on this target (its stored result of the first seed).
    Also adds, as ``ablation`` records, the original model (``none_variant``) and the main runs
    (``full_variant``), so the ablation table is complete from the file alone. ``executor`` / ``world``: as
    :func:`run_forget_benchmark` (with ``grid`` only: without one there is no selection seed).
    """
    reported = reported_tasks(tasks, selection)
    first = reported[0]
    main = store.find(method=method, task=first.kind, forget_class=first.target, seed=first.seed)
    original = store.find(method="original", task=first.kind, forget_class=first.target)
    if main is None or original is None:
        raise ValueError(f"run the {first.kind} benchmark of {method!r} on {first.target!r} first (it selects the lr)")
    out = [make_record(method=method, task="ablation", config={**original["config"], "variant": none_variant},
                       metrics=original["metrics"])]
    for task in reported:
        rec = store.find(method=method, task=first.kind, forget_class=task.target, seed=task.seed)
        if rec is not None:
            out.append(make_record(method=method, task="ablation", config={**rec["config"], "variant": full_variant},
                                   metrics=rec["metrics"], history=rec.get("history", [])))
    def select(item):
        variant, kwargs = item
        settings = dict(method=method, variant=variant, loss_kwargs=dict(kwargs), steps=steps, batch_size=batch_size,
                        precision=precision, compile=compile)
        run_fn = make_ablation_run(**settings, model=model, tokenizer=tokenizer, device=device, selection=selection)
        return [r for r in run_selected(method, tasks if grid else reported, run_fn=run_fn,
                                        grid=grid or {"lr": [main["config"]["selected"]["lr"]]}, store=store,
                                        selection=selection if grid else None, record_task="ablation",
                                        match={"variant": variant}, executor=executor if grid else None,
                                        remote=_remote(world, "ablation", settings)) if r["task"] == "ablation"]
    for found in map_selections(executor if grid else None, list(variants.items()), select):
        out += found
    store.add(*out[:1], *[r for r in out[1:] if r["config"].get("variant") == full_variant])
    return out


def make_ablation_run(*, method: str, variant: str, loss_kwargs: dict, model, tokenizer, steps: int,
                      batch_size: int = 32, device="cpu", precision: str = "fp32", compile: str = "",
                      selection: Selection | None = None):
    """Return ``run_fn(task, **candidate)`` of one :func:`run_ablation` variant (records of task ``ablation``, no
    model kept)."""
    def run_fn(task, **candidate):
        _, done = run_method(method, task, model=model, tokenizer=tokenizer, steps=steps, batch_size=batch_size,
                             loss_kwargs=loss_kwargs, device=device, precision=precision, compile=compile,
                             config={"variant": variant}, evaluate=not is_search(task, selection), **candidate)
        done["task"] = FACTORY_TASKS["ablation"]
        return None, done
    return run_fn


def run_forget_ratio(methods: Sequence[str], *, ratios: Sequence[float], train, test, model, tokenizer, templates,
                     seeds: Sequence[int], steps: int, grid: dict[str, Sequence], batch_size: int = 32,
                     n_seen: int | None = None, store, device="cpu", precision: str = "fp32", compile: str = "",
                     task_kwargs: dict | None = None, selection: Selection | None = None,
                     steps_per_class: bool = True, progress: bool = False, executor=None,
                     world: dict | None = None) -> list[dict]:
    """Forget ``round(ratio * C)`` classes at once, for each ratio, method and seed; return the result records.

    The classes are drawn per seed (:func:`pick_classes`, the first ones of the seed's order); each run
    takes ``steps`` per forgotten class (the same passes over every forget image, classes of equal size;
    ``steps_per_class=False``: ``steps`` whatever the number of classes, for steps that count epochs over the
    retain set, which does not grow with them);
    every method's learning rate is selected per ratio (:func:`run_selected` with ``selection`` on its own
    draw of classes). Records have task ``forget-ratio``, ``config.forget_ratio`` and
    ``config.forget_classes``. ``executor`` / ``world``: as :func:`run_forget_benchmark` (a worker builds the
    task of a draw of classes from the world's data: ``Task.target`` names them).
    """
    out = []
    n_classes = len(train.classnames)
    seeds = list(seeds) if selection is None else selection.with_seeds(list(seeds))
    jobs = [(r, m) for r in ratios for m in methods]

    def select(job):
        ratio, method = job
        k = max(1, round(ratio * n_classes))
        tasks = [build_task(train, test, kind="forget-class", target=",".join(pick_classes(train.classnames,
                                                                                           seed=s)[:k]),
                            seed=s, templates=templates, n_seen=n_seen, **(task_kwargs or {})) for s in seeds]

        settings = dict(method=method, ratio=ratio, steps=steps * k if steps_per_class else steps,
                        batch_size=batch_size, precision=precision, compile=compile)
        run_fn = make_ratio_run(**settings, model=model, tokenizer=tokenizer, device=device, selection=selection)
        found = [r for r in run_selected(method, tasks, run_fn=run_fn, grid=grid, store=store, selection=selection,
                                         record_task="forget-ratio", match={"forget_ratio": ratio},
                                         executor=executor, remote=_remote(world, "ratio", settings))
                 if r["task"] == "forget-ratio"]
        release_memory()
        return found
    for found in map_selections(executor, tqdm(jobs, desc="ratios x methods", disable=not progress), select):
        out += found
    return out


def make_ratio_run(*, method: str, ratio: float, model, tokenizer, steps: int, batch_size: int = 32, device="cpu",
                   precision: str = "fp32", compile: str = "", selection: Selection | None = None):
    """Return ``run_fn(task, **candidate)`` of one :func:`run_forget_ratio` ratio: ``steps`` steps in all (records of
    task ``forget-ratio``)."""
    def run_fn(task, **candidate):
        model_, rec = run_method(method, task, model=model, tokenizer=tokenizer, steps=steps, batch_size=batch_size,
                                 device=device, precision=precision, compile=compile,
                                 config={"forget_ratio": ratio, "forget_classes": task.target.split(",")},
                                 evaluate=not is_search(task, selection), **candidate)
        rec["task"] = FACTORY_TASKS["ratio"]
        return model_, rec
    return run_fn


#: How a worker rebuilds a driver's ``run_fn`` from a run's spec (``harness.executor``): ``{"factory": name,
#: "settings": {...}}`` plus the world's model, tokenizer, device and selection.
RUN_FACTORIES = {"benchmark": make_benchmark_run, "ablation": make_ablation_run, "ratio": make_ratio_run}
