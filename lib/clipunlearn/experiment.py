"""Paper A on the shared harness, and the harness's names for code written before ``harness/``.

Paper A's glue (its three-stage runs, subgroup benchmark, ablations, stage records and
paper table) lives here until it moves to ``papers/``; the harness itself is
:mod:`clipunlearn.harness` (tasks, evaluation, selection, runs) and :mod:`clipunlearn.scores`.
Every harness name stays importable from this module.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import metrics, three_stage
from .three_stage import THREE_STAGE_ABLATIONS, THREE_STAGE_PAPER_ABLATIONS  # noqa: F401  (re-exported)
from .clip import copy_frozen
from .harness import *  # noqa: F401,F403  (every harness name, re-exported for code written before harness/)
from .harness import (Task, calibration_fn, evaluate_model, pick_examples, run_method, run_selected, summarise_run,
                      validate_model)
from .harness.task import _cap_per_class  # noqa: F401  (re-exported: tests pin it)
from .methods.lipschitz import generate_task_synthetic, run_lipschitz
from .losses import LOSSES
from .report import STAGE_LABELS, format_mean_std, mean_std, stage_records  # noqa: F401  (stage_* re-exported)
from .configs import mini_settings
from .registry import register_label, register_procedure
from .results import make_record
from .scores import CRITERION, SCORE_RETAINED, selection_score, unlearning_score  # noqa: F401  (re-exported)
from .unlearning import make_pair_loader

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

    Forget / retain pairs: ``unlearning.make_pair_loader`` over ``task.forget_train`` /
    ``task.retain_train`` (siblings included) with ``task.templates``, ``batch_size``.
    ``lr`` is the forgetting stage's learning rate (what the grid searches); ``settings``:
    other keyword arguments of ``three_stage.three_stage_unlearn`` (the ablation switches
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

    def pairs(idx, shift):
        return make_pair_loader(task.train, tokenizer=tokenizer, templates=task.templates, indices=idx,
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
    unlearned = copy.deepcopy(model)
    original = copy_frozen(model)
    with metrics.measure_run(device=device) as cost:
        result = three_stage.three_stage_unlearn(
            unlearned, original=original, forget_loader=pairs(task.forget_train, 0),
            retain_loader=pairs(task.retain_train, 1), calib_fn=calib, forget_key="forget_acc",
            retain_key=("sibling_acc", "retain_acc") if has_siblings else "retain_acc", forget_lr=lr,
            stage_fn=stage_fn, cache=cache, device=device, seed=seed, progress=progress, **settings)
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
        "forget": {"steps": forget["steps"], "stopped": forget["stopped"],
                   "similarity": [h["similarity"] for h in forget["history"]]},
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
    m.update(alpha=info["alpha"], forget_steps=forget["steps"], steps=forget["steps"] + remind.get("steps", 0),
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

def _with_extras(run_fn: Callable[..., tuple], *, original: dict | None,
                 extra_metrics: Callable[[object, Task], dict] | None, skip_extra: bool = False) -> Callable:
    """Wrap ``run_fn(task, **candidate)``: add ``extra_metrics(model, task)`` and ``unlearning_score`` to its record."""
    def wrapped(task, **candidate):
        model, record = run_fn(task, **candidate)
        if extra_metrics is not None and not skip_extra:
            record["metrics"].update(extra_metrics(model, task))
        if original is not None:
            record["metrics"]["unlearning_score"] = unlearning_score(record["metrics"], original["metrics"])
        return model, record
    return wrapped


def record_original(tasks: dict[str, Sequence[Task]], *, model, tokenizer, store=None,
                    extra_metrics: Callable[[object, Task], dict] | None = None, device="cpu") -> dict[str, dict]:
    """Return ``{target: record}`` of the untouched model (method ``original``, ``config.seed`` None) per target."""
    out = {}
    for target, seeded in tasks.items():
        first = seeded[0]
        rec = store.find(method="original", task=first.kind, forget_class=target) if store is not None else None
        if rec is None:
            test = evaluate_model(model, first, tokenizer=tokenizer, device=device)
            if extra_metrics is not None:
                test.update(extra_metrics(model, first))
            rec = summarise_run(first, method="original", config={"seed": None}, test_metrics=test,
                                val=validate_model(model, first, tokenizer=tokenizer, device=device))
            rec["metrics"]["unlearning_score"] = unlearning_score(rec["metrics"], rec["metrics"])
            if store is not None:
                store.add(rec)
        out[target] = rec
    return out


def run_subgroup_benchmark(tasks: dict[str, Sequence[Task]], *, model, tokenizer, methods: Sequence[str],
                           grids: dict[str, dict], steps: int = 30, batch_size: int = 32,
                           three_stage: dict | None = None, lipschitz: dict | None = None,
                           extra_metrics: Callable[[object, Task], dict] | None = None, store,
                           cache: dict | None = None, device="cpu", progress: bool = True) -> list[dict]:
    """Run paper A's comparison on ``tasks`` (``{target: [task per seed]}``); return every record.

    The untouched model first (:func:`record_original`), then each of ``methods`` on every
    target through :func:`run_selected` (``grids[method]`` searched on the first seed by
    :func:`selection_score`, the other seeds rerun the chosen values):

    * ``"three_stage"``: :func:`run_three_stage` (``three_stage``: its keyword arguments,
      e.g. ``settings``, ``batch_size``, ``calib_per_class``, ``examples``);
    * ``"lipschitz_synthetic"``: paper B on synthetic images of the forgotten *class*
      (``lipschitz.generate_task_synthetic`` per target and seed, then
      ``lipschitz.run_lipschitz``), selected data-free on held-out synthetic images, the
      oracle score on real forget validation images recorded beside it (never used);
      ``lipschitz``: ``{"generation", "forgetting", "n_train", "n_val"}``;
    * a registered loss (``"ft"``, ``"ga"``, ``"cliperase"``, ...): :func:`run_method` with
      ``steps`` and ``batch_size``.

    Every record gets ``extra_metrics(model, task)`` and ``unlearning_score`` (against the
    original of its target). With ``store`` records are saved as they come and finished
    runs are skipped on resume; ``cache`` is ``run_three_stage``'s.
    """

    valid = ("three_stage", "lipschitz_synthetic", *LOSSES)
    unknown = [m for m in methods if m not in valid]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid: {', '.join(valid)}")
    missing = [m for m in methods if m not in grids]
    if missing:
        raise ValueError(f"no grid for {missing}: give grids={{method: {{'lr': [...]}}}} for every method")
    originals = record_original(tasks, model=model, tokenizer=tokenizer, store=store, extra_metrics=extra_metrics,
                                device=device)
    records = list(originals.values())
    synthetic: dict = {}
    three_kwargs = dict(three_stage or {})
    lip = dict(lipschitz or {})

    def synthetic_set(task):
        key = (task.kind, task.target, task.seed)
        if key not in synthetic:
            synthetic[key] = generate_task_synthetic(model, task, tokenizer=tokenizer, n_train=lip.get("n_train", 64),
                                                     n_val=lip.get("n_val", 32), generation=lip["generation"],
                                                     seed=task.seed, device=device)
        return synthetic[key]

    jobs = [(m, t) for t in tasks for m in methods]
    for method, target in tqdm(jobs, desc="methods x targets", disable=not progress):
        oracle_fn = None
        if method == "three_stage":
            def run_fn(task, **candidate):
                return run_three_stage(task, model=model, tokenizer=tokenizer, cache=cache, device=device,
                                       extra_metrics=extra_metrics, **{**three_kwargs, **candidate})
        elif method == "lipschitz_synthetic":
            if "generation" not in lip:
                raise ValueError("lipschitz_synthetic needs lipschitz={'generation': {...}, 'forgetting': {...}}")

            def run_fn(task, **candidate):
                forget, val, cost = synthetic_set(task)
                return run_lipschitz(task, model=model, tokenizer=tokenizer, forget_data=forget,
                                     val_forget=(val, None), data_free=True, method="lipschitz_synthetic",
                                     config={"synthetic": dict(cost)}, device=device,
                                     **{**lip.get("forgetting", {}), **candidate})

            oracle_fn = lambda m, task: validate_model(m, task, tokenizer=tokenizer, device=device)  # noqa: E731
        else:
            def run_fn(task, **candidate):
                return run_method(method, task, model=model, tokenizer=tokenizer, steps=steps, batch_size=batch_size,
                                  device=device, **candidate)
        wrapped = _with_extras(run_fn, original=originals[target], extra_metrics=extra_metrics,
                               skip_extra=method == "three_stage")  # run_three_stage adds them per stage
        records += run_selected(method, tasks[target], run_fn=wrapped, grid=grids[method], store=store,
                                oracle_fn=oracle_fn)
    return records


def run_three_stage_ablation(tasks: Sequence[Task], *, model, tokenizer, store,
                             variants: dict[str, dict] | Sequence[str] = THREE_STAGE_PAPER_ABLATIONS,
                             record_task: str = "ablation",
                             extra_metrics: Callable[[object, Task], dict] | None = None,
                             cache: dict | None = None, device="cpu", progress: bool = True,
                             **three_stage_kwargs) -> list[dict]:
    """Rerun three-stage on ``tasks`` (one target, every seed) with each ablation's switches; return the records.

    ``variants``: ``{method name: switches}``, or names of :data:`THREE_STAGE_ABLATIONS`
    (default: paper A's table, :data:`THREE_STAGE_PAPER_ABLATIONS`); the
    forgetting learning rate is the one ``three_stage`` selected on this target (its
    stored record of the first seed), every other setting as in ``three_stage_kwargs``
    (:func:`run_three_stage`'s; ``settings`` is updated with the switches; no stage metrics
    or examples are recorded). Records have
    task ``record_task`` (default ``ablation``; one name per target when several targets are
    ablated in one file) and ``config.variant`` (the name after ``three_stage-``); the original
    model (variant ``none``) and the main runs (``full``) are added as ablation rows, so
    the table is complete from the file alone.
    """

    if not isinstance(variants, dict):
        unknown = [n for n in variants if n not in THREE_STAGE_ABLATIONS]
        if unknown:
            raise ValueError(f"unknown three-stage variants {unknown}; valid: {', '.join(THREE_STAGE_ABLATIONS)}")
        variants = {n: THREE_STAGE_ABLATIONS[n] for n in variants}

    first = tasks[0]
    main = store.find(method="three_stage", task=first.kind, forget_class=first.target, seed=first.seed)
    original = store.find(method="original", task=first.kind, forget_class=first.target)
    if main is None or original is None:
        raise ValueError(f"run run_subgroup_benchmark with 'three_stage' on {first.target!r} ({first.kind}) first: "
                         "it selects the learning rate")
    lr = main["config"]["selected"]["lr"]
    base = dict(three_stage_kwargs.pop("settings", None) or {})
    out = [make_record(method="original", task=record_task, config={**original["config"], "variant": "none"},
                       metrics=original["metrics"])]
    for task in tasks:
        rec = store.find(method="three_stage", task=task.kind, forget_class=task.target, seed=task.seed)
        if rec is not None:
            out.append(make_record(method="three_stage", task=record_task,
                                   config={**rec["config"], "variant": "full"}, metrics=rec["metrics"]))
    store.add(*out)  # the reference rows first, so tables list them first
    jobs = [(task, name) for task in tasks for name in variants]
    for task, name in tqdm(jobs, desc="ablations", disable=not progress):
        variant = name.split("-", 1)[1] if name.startswith("three_stage-") else name
        done = store.find(method=name, task=record_task, forget_class=task.target, seed=task.seed, variant=variant)
        if done is None:
            _, done = run_three_stage(task, model=model, tokenizer=tokenizer, lr=lr, method=name,
                                      settings={**base, **variants[name]}, extra_metrics=extra_metrics, cache=cache,
                                      device=device, config={"variant": variant, "selected_on_seed": first.seed},
                                      **{**three_stage_kwargs, "stage_metrics": False, "examples": 0})
            done["task"] = record_task
            done["metrics"]["unlearning_score"] = unlearning_score(done["metrics"], original["metrics"])
            store.add(done)
        out.append(done)
    return out


#: Paper A's reported quantities -> ours (the settings differ: ImageNet monkeys vs Fashion-MNIST shoes).
PAPER_A_COLUMNS = {"target": "forget_acc", "retain (siblings)": "sibling_acc", "all classes": "retain_acc",
                   "transfer": "other_acc", "score": "unlearning_score"}
#: Paper A's transfer columns that ``transfer`` averages (ObjectNet is not a registered dataset here).
PAPER_A_TRANSFER = ("cifar10", "food101", "stl10", "objectnet")
PAPER_A_METHODS = {"original": "original", "ga": "ga", "lip": "lipschitz_synthetic", "three_stage": "three_stage",
                   "emmn": None}


def paper_a_table(records: Sequence[dict], *, reported: dict, task: str = "forget-subgroup",
                  target: str = "marmoset", backbone: str = "RN50"):
    """Return a DataFrame of paper A's reported numbers (``reported[target][backbone]``) beside ours on ``task``.

    Rows: the paper's methods (EMMN has no counterpart here: ours empty); columns
    ``(quantity, "paper" | "ours")`` per :data:`PAPER_A_COLUMNS`: target -> ``forget_acc``;
    retain, the paper's other subgroups of the group -> ``sibling_acc``; ImageNet-all ->
    ``retain_acc`` (the other classes); transfer, the mean of the paper's CIFAR-10 /
    Food-101 / STL-10 / ObjectNet zero-shot accuracies -> ``other_acc`` (other styles in the
    mini world, the ``transfer`` datasets in the paper profile); Score -> ``unlearning_score`` (our formula,
    the paper's is not public). Ours: mean ± sd over seeds. The settings do not really
    correspond; the table puts the shapes side by side.
    """
    if target not in reported or backbone not in reported[target]:
        raise ValueError(f"no reported numbers for {target!r} / {backbone!r}; targets: "
                         + ", ".join(k for k, v in reported.items() if isinstance(v, dict) and backbone in v))
    rows, index = [], []
    for name, values in reported[target][backbone].items():
        ours_method = PAPER_A_METHODS.get(name, name)
        group = [r for r in records if r.get("task") == task and r["method"] == ours_method
                 and not r["metrics"].get("failed")] if ours_method else []
        transfer = [values[k] for k in PAPER_A_TRANSFER if values.get(k) is not None]
        theirs = {"target": values.get("target"), "retain (siblings)": values.get("retain"),
                  "all classes": values.get("imagenet"), "score": values.get("score"),
                  "transfer": sum(transfer) / len(transfer) if transfer else None}
        row = {}
        for col, metric in PAPER_A_COLUMNS.items():
            row[(col, "paper")] = "" if theirs[col] is None else f"{theirs[col]:.3f}"
            mean, std, _ = mean_std(group, metric)
            row[(col, "ours")] = format_mean_std(mean, std)
        rows.append(row)
        index.append(f"{name} ({ours_method or 'not run'})")
    frame = pd.DataFrame(rows, index=pd.Index(index, name="method (ours)"))
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame
