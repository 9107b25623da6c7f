"""Paper A on the shared harness (notebook 30): its settings per profile (``paper_a.json`` for the paper
profile, ``configs/mini.json`` for mini), its model, data and subgroup tasks, the targets the project
checks, the subgroup benchmark and ablation drivers, and the paper's table beside ours.
"""

from __future__ import annotations

from typing import Callable, Sequence

import pandas as pd
from tqdm.auto import tqdm

from .. import data, harness, models
from ..configs import load_paper_config, mini_settings, parse_seeds, split_names
from ..harness import Reference, Selection, Task, run_method, run_selected, validate_model
from ..losses import LOSSES
from ..methods.lipschitz import generate_task_synthetic, run_lipschitz
from ..methods.three_stage import THREE_STAGE_ABLATIONS, THREE_STAGE_PAPER_ABLATIONS, run_three_stage
from ..paths import check_profile
from ..report import format_mean_std, mean_std, summarise
from ..results import make_record
from ..scores import score_components, unlearning_score

__all__ = ["PAPER_A_BASELINES", "MINI_STYLE_ABLATIONS", "OTHER_STYLE_KEYS", "PAPER_A_COLUMNS", "PAPER_A_TRANSFER",
           "PAPER_A_METHODS", "parse_subgroups", "paper_a_settings", "load_paper_a_tasks", "paper_a_targets",
           "other_all_styles", "with_other_all", "style_seed_table", "stage_effects",
           "run_subgroup_benchmark", "run_three_stage_ablation", "paper_a_table"]


# --------------------------------------------------------------------------- #
# Paper A's settings and tasks per profile (notebook 30)
# --------------------------------------------------------------------------- #
#: The baselines beside three-stage and paper B's Lipschitz forgetting (``lipschitz_synthetic``).
PAPER_A_BASELINES = ("ft", "ga", "cliperase")

#: The mini profile's ablations, run on both subgroup tasks: paper A's table with one "without relative Fisher"
#: row (every candidate layer; the random-layer variant stays in the library), to keep the notebook's time.
MINI_STYLE_ABLATIONS = ("three_stage-no_fisher_all", "three_stage-no_align", "three_stage-no_distill",
                        "three_stage-no_soup", "three_stage-no_lora")

#: A style subgroup's other-class accuracy over every style: the photos (``retain_acc``) and each other style.
OTHER_STYLE_KEYS = ("retain_acc", "other_acc@sketch", "other_acc@negative")

def parse_subgroups(text: str) -> dict[str, list[str]]:
    """Parse ``"TARGET:CLASS+CLASS+...;..."`` (notebook 30's ``SUBGROUPS``) into ``{target: classes of its group}``.

    Each group lists its target and at least one sibling class (the classes to keep).
    """
    groups = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        target, colon, classes = (s.strip() for s in part.partition(":"))
        names = [c.strip() for c in classes.split("+")]
        if not colon or not target or not all(names):
            raise ValueError(f"subgroup {part!r}: write TARGET:CLASS+CLASS+... (e.g. "
                             "'automobile:automobile+truck+airplane'), several joined by ';'")
        if target not in names or len(set(names)) < 2:
            raise ValueError(f"subgroup {part!r}: its group must list the target {target!r} and at least one sibling "
                             f"class to keep (e.g. '{target}:{target}+OTHER')")
        groups[target] = names
    if not groups:
        raise ValueError(f"no subgroup in {text!r}: write TARGET:CLASS+CLASS+..., several joined by ';'")
    return groups

def _paper_a_profile(profile: str) -> dict:
    """The full-size settings of ``profile``: mini from ``configs.mini_settings()``, paper from the paper configs."""
    if profile == "mini":
        mini = mini_settings()  # the method settings shared with notebooks 20 and 40
        return dict(
            model="mini", pretrained=None,
            targets={"sandal": "forget-subgroup", "sketch:sneaker": "forget-style-subgroup"},
            task=dict(retain_per_class=300, eval_per_class=150, val_per_class=50),
            baselines=list(PAPER_A_BASELINES), steps=30, batch_size=32, grid={"lr": list(harness.MINI_LR_GRID)},
            three_stage={**mini["three_stage"], "examples": 6}, three_stage_grid=mini["grids"]["three_stage"],
            lipschitz=mini["lipschitz"], lipschitz_grid=mini["grids"]["lipschitz_synthetic"],
            ablations=list(MINI_STYLE_ABLATIONS), style_ablations=list(MINI_STYLE_ABLATIONS),
            dataset="fashion-mnist", transfer=[], hierarchy=None,  # the Fashion-MNIST hierarchy
        )
    paper, paper_b = load_paper_config("paper_a"), load_paper_config("paper_b")
    gen, forget = paper_b["generation"], paper_b["forgetting"]  # LIP: paper B's method as paper B runs it
    [(model, pretrained)] = list(paper["backbones"].items())[:1]  # RN50 (RN101: model=)
    return dict(
        model=model, pretrained=pretrained,
        targets={t: "forget-subgroup" for t in paper["subgroup_tasks"]},
        task=dict(retain_per_class=5, eval_per_class=None),
        transfer=list(paper["datasets"]["transfer"]),  # CIFAR-10, Food-101, STL-10, ObjectNet (from a folder)
        baselines=list(PAPER_A_BASELINES), steps=100, batch_size=32, grid={"lr": [1e-6, 1e-5, 1e-4]},
        three_stage=dict(batch_size=32, calib_per_class=10, examples=6, settings=dict(n_layers=2, rank=4)),
        three_stage_grid={"lr": [1e-4, 3e-4, 1e-3]},
        lipschitz=dict(
            generation=dict(image_size=gen["image_size"], steps=gen["steps"], step_size=gen["step_size"],
                            jitter=gen["jitter"], blur_every=gen["blur_every"], blur_sigma=gen["blur_sigma"],
                            norm_weight=gen["norm_weight"], thresholds=0.6, threshold_decay=gen["threshold_decay"],
                            min_threshold=gen["min_threshold"], patience=300, logit_scale="model", grayscale=False,
                            batch_size=64),
            forgetting=dict(n_samples=forget["n_samples"], threshold=forget["stop_accuracy"],
                            max_epochs=forget["max_epochs"], betas=tuple(forget["betas"]), eps=forget["eps"],
                            weight_decay=forget["weight_decay"], batch_size=forget["batch_size"]),
            n_train=gen["n_per_class"], n_val=32),
        lipschitz_grid={"lr": [2e-5, forget["lr"], 1e-4]},
        ablations=list(THREE_STAGE_PAPER_ABLATIONS), style_ablations=[],
        dataset=paper["datasets"]["forget"],
        hierarchy={t["group"]: t["classes"] for t in paper["subgroup_tasks"].values()},
    )

def paper_a_settings(profile: str, *, quick: bool = False, seeds="0,1,2", model: str = "", pretrained: str = "",
                     dataset: str = "", subgroups: str = "", transfer: str = "") -> dict:
    """Return notebook 30's settings of paper A for ``profile`` (``"mini"`` or ``"paper"``), parameters applied.

    Keys: ``model`` / ``pretrained`` (``models.load_clip``), ``targets`` (``{target: task kind}``),
    ``task`` (sizes for ``harness.build_task``), ``dataset``, ``transfer`` (zero-shot
    transfer datasets), ``groups`` (``{target: classes of its group}`` from ``subgroups``, else
    None) and ``hierarchy`` (``build_task``'s; None: Fashion-MNIST's), ``baselines``, ``steps``,
    ``batch_size``, the grids ``grid`` (baselines), ``three_stage_grid``, ``lipschitz_grid``
    and ``grids`` (``{method: grid}``) of the ``methods``, ``three_stage`` / ``lipschitz``
    (the method settings), ``ablations`` (paper A's table), ``style_ablations`` (more
    three-stage variants) and ``seeds`` (list of ints). Mini settings come from
    ``configs.mini_settings()``; the paper's from ``paper_a.json`` (backbone, subgroups,
    datasets) and ``paper_b.json`` (LIP). The string arguments are the notebook's
    parameters: ``seeds`` comma-separated; ``model`` / ``pretrained`` (refused by mini)
    replace the backbone; ``dataset``, ``subgroups`` (``TARGET:CLASS+CLASS+...``, several
    joined by ``;``, see :func:`parse_subgroups`) and ``transfer`` (comma-separated) are for
    the paper profile (ignored by mini). ``quick``: the first task, one seed, one grid
    value, few steps, small sets and two ablations (the CI smoke test).
    """
    check_profile(profile)
    settings = _paper_a_profile(profile)
    seed_list = parse_seeds(seeds)
    [(settings["model"], settings["pretrained"])] = models.override_backbones(
        {settings["model"]: settings["pretrained"]}, profile=profile, model=model, pretrained=pretrained).items()
    groups = None
    if profile == "paper":
        if dataset:
            data.get_dataset_spec(dataset)  # an unknown name lists the registered ones
            if dataset != settings["dataset"] and not subgroups:
                raise ValueError(f"the paper's subgroups are {settings['dataset']} classes: name {dataset}'s in "
                                 "subgroups (TARGET:CLASS+CLASS+..., e.g. 'automobile:automobile+truck+airplane')")
            settings["dataset"] = dataset
        if subgroups:
            groups = parse_subgroups(subgroups)
            settings["targets"] = {t: "forget-subgroup" for t in groups}
            settings["hierarchy"] = {f"{t} group": classes for t, classes in groups.items()}
        if transfer:
            settings["transfer"] = split_names(transfer)
            for name in settings["transfer"]:
                data.get_dataset_spec(name)
    settings["groups"] = groups
    if quick:  # CI: the first task, one seed, one grid value, few steps, small sets, two ablations
        seed_list = seed_list[:1]
        settings.update(targets=dict(list(settings["targets"].items())[:1]), steps=10, grid={"lr": [1e-4]},
                        three_stage_grid={"lr": [1e-3]}, lipschitz_grid={"lr": [1e-2]},
                        task=dict(retain_per_class=50, eval_per_class=50, val_per_class=20),
                        ablations=["three_stage-no_fisher_all", "three_stage-no_soup"], style_ablations=[])
        settings["three_stage"]["settings"].update(remind_steps=10, forget_steps=50)
        settings["lipschitz"].update(n_train=16, n_val=8)
        settings["lipschitz"]["forgetting"].update(max_epochs=5, n_samples=10)
        settings["lipschitz"]["generation"].update(steps=min(50, settings["lipschitz"]["generation"]["steps"]),
                                                   patience=10)
    settings["seeds"], settings["selection"] = seed_list, harness.protocol_for(seed_list, quick=quick)
    settings["methods"] = ["three_stage", *settings["baselines"], "lipschitz_synthetic"]
    settings["grids"] = {"three_stage": settings["three_stage_grid"], "lipschitz_synthetic": settings["lipschitz_grid"],
                         **{m: settings["grid"] for m in settings["baselines"]}}
    return settings

def load_paper_a_tasks(*, model: str, pretrained: str | None, dataset: str, targets: dict, seeds: Sequence[int],
                       hierarchy: dict | None = None, transfer: Sequence[str] = (), retain_per_class: int | None = 300,
                       eval_per_class: int | None = 300, val_per_class: int = 100, device="cpu", data_dir=None):
    """Load paper A's model, dataset and subgroup tasks; return ``(model, preprocess, tokenizer, train, test, tasks)``.

    ``tasks`` is ``{target: [harness.Task per seed]}`` (``targets``: ``{target: task kind}``,
    ``hierarchy``: ``{group: [class names]}`` naming each subgroup's siblings; None:
    Fashion-MNIST's). Fashion-MNIST is the mini world (every style, the mini model's
    ``n_seen``); another registered ``dataset`` is loaded with the model's ``preprocess``.
    Every task scores the test sets of the ``transfer`` datasets with their own prompts
    (``Task.extra_sets``). ``data_dir``: empty for ``$CLIPUNLEARN_DATA`` or the cache.
    """
    data_dir = data_dir or None
    base, preprocess, tokenizer = models.load_clip(model, pretrained, device=device)
    if dataset == "fashion-mnist":
        train, test = data.load_mini_world(data_dir=data_dir)
        templates, n_seen = data.FASHION_MNIST_TEMPLATES, models.MINI_SEEN_IMAGES
    else:
        train, test = (data.load_dataset(dataset, split=s, transform=preprocess, data_dir=data_dir)
                       for s in ("train", "test"))
        templates, n_seen = data.get_templates(dataset), None
    extra = {}
    for name in transfer:
        ds = data.load_dataset(name, split="test", transform=preprocess, data_dir=data_dir)
        extra[name] = dict(dataset=ds, classnames=ds.classnames, templates=data.get_templates(name))
    tasks = {target: [harness.build_task(train, test, kind=kind, target=target, seed=s, templates=templates,
                                            n_seen=n_seen, hierarchy=hierarchy, retain_per_class=retain_per_class,
                                            eval_per_class=eval_per_class, val_per_class=val_per_class)
                      for s in seeds]
             for target, kind in targets.items()}
    for seeded in tasks.values():
        for task in seeded:
            task.extra_sets.update(extra)
    return base, preprocess, tokenizer, train, test, tasks

def other_all_styles(metrics: dict) -> float | None:
    """Return a style subgroup's other-class accuracy over every style: the mean of :data:`OTHER_STYLE_KEYS`
    (photos, sketches, negatives of the other classes, each style weighted alike); None when one is missing."""
    values = [metrics.get(k) for k in OTHER_STYLE_KEYS]
    return None if any(v is None for v in values) else sum(values) / len(values)

def with_other_all(records: Sequence[dict]) -> list[dict]:
    """``records`` with ``other_all_acc`` (:func:`other_all_styles`) added to the metrics of the style task's."""
    out = []
    for r in records:
        value = other_all_styles(r["metrics"]) if r.get("task") == "forget-style-subgroup" else None
        out.append(r if value is None else {**r, "metrics": {**r["metrics"], "other_all_acc": value}})
    return out

def style_seed_table(records: Sequence[dict], *, methods: Sequence[str] = ("original", "retrain", "three_stage"),
                     task: str = "forget-style-subgroup") -> pd.DataFrame:
    """Return one row per method and seed (``-``: a reference's one record) on the style task: forget, sibling,
    other-class (every style) accuracy,
    the chosen ``alpha`` and ``restored``: ``"no (alpha 1)"`` where restoring fell back to the unlearned model
    (``", no alpha forgot enough"`` when no alpha met the forget bar on the calibration images), else ``"yes"``."""
    rows = []
    for r in with_other_all([r for r in records if r.get("task") == task and r["method"] in methods]):
        m = r["metrics"]
        alpha = m.get("alpha")
        restored = None if alpha is None else ("yes" if alpha < 1 else "no (alpha 1)" + (
            ", no alpha forgot enough" if m.get("soup_fallback") else ""))
        seed = r["config"].get("seed")
        rows.append({"method": r["method"], "seed": "-" if seed is None else seed, "forget_acc": m.get("forget_acc"),
                     "sibling_acc": m.get("sibling_acc"), "other_all_acc": m.get("other_all_acc"),
                     "alpha": alpha, "restored": restored})
    if not rows:
        raise ValueError(f"no records of task {task!r} for methods {list(methods)}")
    order = {name: i for i, name in enumerate(methods)}
    rows.sort(key=lambda row: (order[row["method"]], -1 if row["seed"] == "-" else row["seed"]))
    return pd.DataFrame(rows).set_index(["method", "seed"])

def stage_effects(records: Sequence[dict], *, task: str, metric: str = "unlearning_score") -> pd.Series:
    """Return, per ablation variant of ``task`` (``config.variant``), how much ``metric`` falls when that part is
    switched off: the full runs' mean minus the variant's mean (over seeds), largest first. The stage whose
    removal costs most matters most. Records without ``metric`` (a profile that does not compute it) give an
    empty series."""
    table = summarise(records, task=task, numeric=True, metrics=[metric], by=("variant",))
    if metric not in table.columns:
        return pd.Series(dtype=float, name=f"{metric} lost")
    frame = table[metric]
    if "full" not in frame.index:
        raise ValueError(f"no 'full' ablation rows in task {task!r}: run run_three_stage_ablation first")
    drops = {v: frame["full"] - value for v, value in frame.items() if v not in ("full", "none")}
    return pd.Series(drops, name=f"{metric} lost").sort_values(ascending=False)


def paper_a_targets(records: list[dict]) -> dict[str, bool]:
    """Return the project's targets for three-stage on notebook 30's records, each with whether it holds.

    ``forget-subgroup``: forget accuracy <= 0.05, sibling and retain accuracy within 3 points
    of the original; ``forget-style-subgroup``: forget accuracy <= 0.10, sibling accuracy and the other
    classes' accuracy over every style (``other_all_acc``, :func:`other_all_styles`) within 5 points (means
    over seeds). Tasks without records are left out.
    """
    bars = {"forget-subgroup": (0.05, {"sibling_acc": 0.03, "retain_acc": 0.03}),
            "forget-style-subgroup": (0.10, {"sibling_acc": 0.05, "other_all_acc": 0.05})}
    out = {}
    records = with_other_all(records)
    for task, (forget_bar, keep) in bars.items():
        if not any(r.get("task") == task and r["method"] == "three_stage" for r in records):
            continue
        frame = summarise(records, task=task, numeric=True, metrics=["forget_acc", *keep])
        ours, original = frame.loc["three_stage"], frame.loc["original"]
        out[f"{task}: forget_acc {ours.forget_acc:.3f} <= {forget_bar}"] = bool(ours.forget_acc <= forget_bar)
        for metric, drop in keep.items():
            out[f"{task}: {metric} {ours[metric]:.3f} within {drop * 100:.0f} points of {original[metric]:.3f}"] = \
                bool(original[metric] - ours[metric] <= drop)
    return out


def _with_extras(run_fn: Callable[..., tuple], *, original: dict | None,
                 extra_metrics: Callable[[object, Task], dict] | None, skip_extra: bool = False) -> Callable:
    """Wrap ``run_fn(task, **candidate)``: add ``extra_metrics(model, task)`` and ``unlearning_score`` to its record."""
    def wrapped(task, **candidate):
        model, record = run_fn(task, **candidate)
        if record["metrics"].get("forget_acc") is None:  # not evaluated on the test sets (a search run)
            return model, record
        if extra_metrics is not None and not skip_extra:
            record["metrics"].update(extra_metrics(model, task))
        if original is not None:
            record["metrics"]["unlearning_score"] = unlearning_score(record["metrics"], original["metrics"])
            record["metrics"].update(score_components(record["metrics"], original["metrics"]) or {})
        return model, record
    return wrapped

def run_subgroup_benchmark(tasks: dict[str, Sequence[Task]], *, model, tokenizer, methods: Sequence[str],
                           grids: dict[str, dict], steps: int = 30, batch_size: int = 32,
                           three_stage: dict | None = None, lipschitz: dict | None = None,
                           extra_metrics: Callable[[object, Task], dict] | None = None, store,
                           cache: dict | None = None, device="cpu", progress: bool = True,
                           selection: Selection | None = None,
                           references: dict[str, Reference] | None = None) -> list[dict]:
    """Run paper A's comparison on ``tasks`` (``{target: [task per seed]}``); return every record.

    The untouched model first (:func:`harness.record_original`; beside it the retrained model of
    ``references``), then each of ``methods`` on every target through :func:`run_selected` with the
    protocol ``selection`` (``harness.PROTOCOL``: ``grids[method]`` searched on the selection seed by
    :func:`selection_score` and extended at its ends, the reported seeds rerun the chosen values; None: the
    first seed searched and reported); every reported run gets its distance to the retrained model:

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
    originals = harness.record_original(tasks, model=model, tokenizer=tokenizer, store=store,
                                        extra_metrics=extra_metrics, validate=True, score=True,
                                        device=device, selection=selection, references=references)
    finish = harness.reference_fn(references, tokenizer=tokenizer, device=device)
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
                                     config={"synthetic": dict(cost), "generation": lip["generation"]}, device=device,
                                     **{**lip.get("forgetting", {}), **candidate})

            oracle_fn = lambda m, task: validate_model(m, task, tokenizer=tokenizer, device=device)  # noqa: E731
        else:
            def run_fn(task, **candidate):
                return run_method(method, task, model=model, tokenizer=tokenizer, steps=steps, batch_size=batch_size,
                                  device=device, evaluate=not harness.is_search(task, selection), **candidate)
        wrapped = _with_extras(run_fn, original=originals[target], extra_metrics=extra_metrics,
                               skip_extra=method == "three_stage")  # run_three_stage adds them per stage
        records += run_selected(method, tasks[target], run_fn=wrapped, grid=grids[method], store=store,
                                oracle_fn=oracle_fn, selection=selection, finish_fn=finish)
    return records

def run_three_stage_ablation(tasks: Sequence[Task], *, model, tokenizer, store,
                             variants: dict[str, dict] | Sequence[str] = THREE_STAGE_PAPER_ABLATIONS,
                             record_task: str = "ablation",
                             extra_metrics: Callable[[object, Task], dict] | None = None,
                             cache: dict | None = None, device="cpu", progress: bool = True,
                             selection: Selection | None = None, **three_stage_kwargs) -> list[dict]:
    """Rerun three-stage on ``tasks`` (one target, every seed) with each ablation's switches; return the records.

    ``variants``: ``{method name: switches}``, or names of :data:`THREE_STAGE_ABLATIONS`
    (default: paper A's table, :data:`THREE_STAGE_PAPER_ABLATIONS`); the
    forgetting learning rate is the one ``three_stage`` selected on this target (its
    stored record of the first reported seed; ``selection``'s seed is skipped: not searched again, a
    departure from the loss-based ablations, which search every variant, kept for time), every other
    setting as in ``three_stage_kwargs``
    (:func:`run_three_stage`'s; ``settings`` is updated with the switches; no stage metrics
    or examples are recorded). "Without souping" (switches ``{"soup": False}``) is not rerun when the main run
    recorded its metrics after reminding: that model is the soup at alpha 1 (``config.from_main_run``). Records have
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

    tasks = harness.reported_tasks(tasks, selection)
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
        main_run = store.find(method="three_stage", task=task.kind, forget_class=task.target, seed=task.seed)
        if done is None and variants[name] == {"soup": False} and _has_stage(main_run, "after_remind"):
            done = _unsouped(main_run, method=name, record_task=record_task, original=original)
            store.add(done)
        if done is None:
            _, done = run_three_stage(task, model=model, tokenizer=tokenizer, lr=lr, method=name,
                                      settings={**base, **variants[name]}, extra_metrics=extra_metrics, cache=cache,
                                      device=device, config={"variant": variant, "selected_on_seed":
                                                             main["config"].get("selected_on_seed", first.seed)},
                                      **{**three_stage_kwargs, "stage_metrics": False, "examples": 0})
            done["task"] = record_task
            done["metrics"]["unlearning_score"] = unlearning_score(done["metrics"], original["metrics"])
            store.add(done)
        out.append(done)
    return out

def _has_stage(record: dict | None, stage: str) -> bool:
    return record is not None and any(k.startswith(f"{stage}/") for k in record["metrics"])

def _unsouped(main: dict, *, method: str, record_task: str, original: dict) -> dict:
    """The "without souping" row from a main run: its reminded model is the soup at alpha 1, and its test metrics
    after reminding are in the record (``after_remind/<metric>``); no rerun."""
    metrics = {k.split("/", 1)[1]: v for k, v in main["metrics"].items() if k.startswith("after_remind/")}
    metrics.update(alpha=1.0, seconds=main["metrics"].get("seconds"), failed=bool(main["metrics"].get("failed")))
    metrics["unlearning_score"] = unlearning_score(metrics, original["metrics"])
    return make_record(method=method, task=record_task,
                       config={**main["config"], "variant": method.split("-", 1)[1], "soup": False,
                               "from_main_run": "after_remind"}, metrics=metrics)

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
