"""Paper C (CLIPErase) on the shared harness (notebook 10): its settings per profile and its model, data
and class tasks, and its Flickr30K retrieval runs (:func:`run_retrieval`). CLIPErase itself is a registered
loss (``losses.py``); the benchmark, module ablation and forget-ratio sweep are the harness's drivers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pandas as pd
import torch

from .. import data, harness, models
from ..configs import load_paper_config, mini_settings, parse_seeds, split_names
from ..image_cache import QUICK_CACHE_BYTES, CachedImages, MemoryBudget, default_cache_bytes
from ..paths import check_profile
from ..registry import method_label
from ..report import summarise

__all__ = ["PAPER_C_METHODS", "PAPER_C_PAPER_METHODS", "PAPER_C_ABLATIONS", "PAPER_C_RATIO_METHODS", "EPOCH_READINGS",
           "RETRIEVAL_METRICS", "PaperCWorld", "paper_c_settings", "load_paper_c_tasks", "run_paper_protocol",
           "beside_paper", "retrieval_settings", "run_retrieval", "retrieval_table"]

#: The methods of notebook 10's main table, in its order: the baselines, then CLIPErase.
PAPER_C_METHODS = ("ft", "ga", "graddiff", "neggrad_plus", "random_labels", "cliperase")
#: The paper profile's main table: the same, with the papers' GA (ascent on the forget pairs' CLIP loss,
#: ``losses.ga_pairs_loss``) beside the project's GA.
PAPER_C_PAPER_METHODS = ("ft", "ga", "ga_pairs", "graddiff", "neggrad_plus", "random_labels", "cliperase")
#: What the paper profile's "epochs" pass over: the retain set (the reading the paper's Dr supports, its
#: default) or the forget set.
EPOCH_READINGS = ("retain", "forget")

#: The methods of the forget-ratio sweep.
PAPER_C_RATIO_METHODS = ("ga", "cliperase")

#: The module ablation (paper C's Table 4): the forgetting module alone, then with the retention module; the
#: full method (all three modules) is the main run. ``lambda1`` retention, ``lambda2`` forgetting,
#: ``lambda3`` consistency (``losses.cliperase_loss``).
PAPER_C_ABLATIONS = {"FM": dict(lambda1=0.0, lambda2=3.0, lambda3=0.0),
                     "FM+RM": dict(lambda1=1.0, lambda2=3.0, lambda3=0.0)}


def _paper_c_profile(profile: str) -> dict:
    """The full-size settings of ``profile``: mini from ``configs/mini.json``, paper from ``paper_c.json``."""
    if profile == "mini":
        return dict(model="mini", pretrained=None, dataset="fashion-mnist", forget=["sneaker", "shirt", "trouser"],
                    ratios=[0.1, 0.2, 0.3],
                    task=dict(retain_per_class=300, eval_per_class=300), batch_size=32, steps=30,
                    grid=mini_settings()["grids"]["cliperase"])
    paper = load_paper_config("paper_c")
    hyper = paper["hyperparameters"]
    return dict(model="ViT-B-32", pretrained="openai", dataset="cifar100", forget=list(paper["forget_classes"]),
                ratios=list(paper["forget_ratios"]),
                task=dict(retain_per_class=None, eval_per_class=None, train_eval=True), batch_size=hyper["batch_size"],
                epochs=hyper["epochs"], epochs_over=hyper["epochs_over"],
                grid={"lr": [1e-7, hyper["lr"]["cifar100"], 1e-5]},
                paper_protocol=dict(method=paper["paper_protocol"]["method"], grid={"lr": [hyper["lr"]["cifar100"]]}))


def retrieval_settings(profile: str, *, quick: bool = False, concept: str = "") -> dict | None:
    """Return the retrieval runs' settings of ``profile`` (None for mini: its captions are class names).

    Keys: ``dataset`` (a caption dataset, Karpathy's splits), ``concept`` (its forget pairs,
    ``data.split_by_concept``; empty ``concept``: the project's), ``method``, ``lr`` (the paper's for
    Flickr30K), ``batch_size``, ``epochs`` over the forget pairs (``steps``: None, they follow),
    ``eval_retain_images``, ``max_forget_train`` / ``max_retain_train`` (None: every training image) and
    ``evaluations`` (validation passes). ``quick``: 4 steps, 2 passes, small samples (the smoke test).
    """
    if check_profile(profile) == "mini":
        return None
    paper = load_paper_config("paper_c")
    hyper, own = paper["hyperparameters"], paper["retrieval"]
    out = dict(dataset=own["dataset"], concept=concept.strip() or own["concept"], method="cliperase",
               lr=hyper["lr"][own["dataset"]], batch_size=hyper["batch_size"], epochs=hyper["epochs"], steps=None,
               eval_retain_images=own["eval_retain_images"], max_forget_train=None, max_retain_train=None,
               evaluations=harness.EVALUATIONS)
    if quick:
        out.update(steps=4, evaluations=2, eval_retain_images=64, max_forget_train=64, max_retain_train=256)
    return out


def paper_c_settings(profile: str, *, quick: bool = False, seeds="0,1,2", forget_classes: str = "",
                     model: str = "", pretrained: str = "", dataset: str = "", epochs_over: str = "",
                     train_eval: bool = False, paper_protocol: bool = True, retrieval_concept: str = "") -> dict:
    """Return notebook 10's settings of paper C for ``profile`` (``"mini"`` or ``"paper"``), parameters applied.

    Keys: ``model`` / ``pretrained`` (``models.load_clip``), ``dataset``, ``forget`` (the classes forgotten
    one at a time), ``ratios`` (the forget-ratio sweep; its classes are drawn per seed), ``ratio_methods``,
    ``task`` (sizes for ``harness.build_task``), ``batch_size``, ``ratio_steps_per_class`` (the forget-ratio
    runs take their steps per forgotten class, unless the epochs pass over the retain set),
    ``steps`` (mini) or ``epochs`` (paper: steps follow from the forget set's size), ``grid``, ``methods``,
    ``ablations``, ``seeds`` (reported), ``selection`` (``harness.PROTOCOL``: the grids are searched on its
    seed, never reported, and extended at their ends) and ``retrieval`` (:func:`retrieval_settings`, concept
    ``retrieval_concept``). The string arguments are the notebook's parameters: ``seeds`` and
    ``forget_classes`` comma-separated (empty: the profile's); ``model`` / ``pretrained`` (refused by mini)
    replace the backbone; ``dataset`` (paper profile) replaces CIFAR-100. ``quick``: one class, one seed,
    the grid's middle value alone, 10 steps and small sets (the CI smoke test).

    Paper C's own reading, paper profile: ``epochs_over`` (:data:`EPOCH_READINGS`; empty: the
    config's ``retain``, the reading its Dr supports) says what the epochs pass over; the tasks also score the
    training pairs (``task["train_eval"]``: ``forget_train_acc`` / ``retain_train_acc`` beside the test
    accuracies; ``train_eval=True`` adds them in the mini profile); ``paper_protocol`` (True: the paper's own
    protocol as a row, :func:`run_paper_protocol`: ``{"method", "grid"}``; False: None); the main table adds
    the papers' GA (:data:`PAPER_C_PAPER_METHODS`). The mini profile refuses ``epochs_over`` (it runs a fixed
    number of steps) and has no paper-protocol row.
    """
    check_profile(profile)
    settings = _paper_c_profile(profile)
    [(settings["model"], settings["pretrained"])] = models.override_backbones(
        {settings["model"]: settings["pretrained"]}, profile=profile, model=model, pretrained=pretrained).items()
    if profile == "paper" and dataset:
        data.get_dataset_spec(dataset)  # an unknown name lists the registered ones
        settings["dataset"] = dataset
    seed_list = parse_seeds(seeds)
    settings["forget"] = split_names(forget_classes) or settings["forget"]
    if profile == "mini":
        if epochs_over:
            raise ValueError("EPOCHS_OVER is for the paper profile only (the mini profile runs a fixed number of "
                             "steps)")
        settings["task"]["train_eval"] = bool(train_eval) or None  # None: left out, the mini tasks as before
        settings["task"] = {k: v for k, v in settings["task"].items() if v is not None}
    else:
        if epochs_over and epochs_over not in EPOCH_READINGS:
            raise ValueError(f"unknown EPOCHS_OVER {epochs_over!r}; valid: {', '.join(EPOCH_READINGS)}")
        settings["epochs_over"] = epochs_over or settings["epochs_over"]
        settings["paper_protocol"] = settings["paper_protocol"] if paper_protocol else None
    if quick:  # CI: one class, one seed, one grid value, few steps, small sets
        seed_list, settings["forget"] = seed_list[:1], settings["forget"][:1]
        settings.update(steps=10, grid={"lr": settings["grid"]["lr"][1:2]},
                        task=dict(settings["task"], retain_per_class=50, eval_per_class=50))
        if profile == "paper":  # bounded in memory too: about 4000 decoded images, 2.4 GB at 224 px in fp32
            settings["task"].update(retain_per_class=10, eval_per_class=10, val_per_class=5)
            settings["cache_bytes"] = QUICK_CACHE_BYTES
    methods = PAPER_C_METHODS if profile == "mini" else PAPER_C_PAPER_METHODS
    settings.update(seeds=seed_list, methods=list(methods), ablations=dict(PAPER_C_ABLATIONS),
                    ratio_methods=list(PAPER_C_RATIO_METHODS),
                    ratio_steps_per_class=settings.get("epochs_over") != "retain",
                    selection=harness.protocol_for(seed_list, quick=quick),
                    retrieval=retrieval_settings(profile, quick=quick, concept=retrieval_concept))
    return settings


class PaperCWorld(NamedTuple):
    """What notebook 10 runs on: the model, its data, one class task per seed for each forget class."""

    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    train: object
    test: object
    tasks: dict  # {forget class: [harness.Task per seed]}
    templates: tuple
    n_seen: int | None
    steps: int  # unlearning steps per run (per forgotten class in the forget-ratio sweep)
    epoch_steps: int | None = None  # steps of one epoch (at most ``steps``): the paper protocol validates per epoch


def load_paper_c_tasks(settings: dict, *, device="cpu", data_dir=None, workers: int = 8) -> PaperCWorld:
    """Load the model, data and class tasks of ``settings`` (:func:`paper_c_settings`); return a :class:`PaperCWorld`.

    Fashion-MNIST is the mini world (every style, the mini model's ``n_seen``); another registered dataset is
    decoded once through the model's ``preprocess`` by ``workers`` processes and served from memory
    (``image_cache.CachedImages``: fp16 in GPU memory on a GPU, at most half of the device's memory). Paper runs take
    ``epochs * ceil(images / batch_size)`` steps, the images of the set ``settings["epochs_over"]`` names
    (``retain`` or ``forget``; default ``forget``) in the first class's selection task; ``epoch_steps`` is one
    such epoch (at most the run's steps). ``data_dir``: empty for ``$CLIPUNLEARN_DATA`` or the cache.
    Each class has a task for the selection seed first (``settings["selection"]``), then one per reported seed.
    """
    data_dir = data_dir or None
    seeds, forget = settings["seeds"], settings["forget"]
    base, preprocess, tokenizer = models.load_clip(settings["model"], settings["pretrained"], device=device)
    if settings["dataset"] == "fashion-mnist":
        train, test = data.load_mini_world(data_dir=data_dir)
        templates, n_seen = data.FASHION_MNIST_TEMPLATES, models.MINI_SEEN_IMAGES
    else:  # the two splits share one budget: the quick one, or half of the device's memory
        budget = MemoryBudget(settings.get("cache_bytes") or default_cache_bytes(device))
        train, test = (CachedImages(data.load_dataset(settings["dataset"], split=s, transform=preprocess,
                                                      data_dir=data_dir, download=True),
                                    device=device, num_workers=workers, budget=budget)
                       for s in ("train", "test"))
        prompts = load_paper_config("paper_c")["prompts"]
        templates, n_seen = (prompts.get(settings["dataset"], "a photo of a {}."),), None
    seeds = settings["selection"].with_seeds(seeds) if settings.get("selection") else seeds
    tasks = {name: [harness.build_task(train, test, kind="forget-class", target=name, seed=s, templates=templates,
                                       n_seen=n_seen, **settings["task"]) for s in seeds] for name in forget}
    first = tasks[forget[0]][0]
    epoch_set = first.retain_train if settings.get("epochs_over") == "retain" else first.forget_train
    epoch_steps = math.ceil(len(epoch_set) / settings["batch_size"])
    steps = settings.get("steps") or settings["epochs"] * epoch_steps
    return PaperCWorld(base, preprocess, tokenizer, train, test, tasks, templates, n_seen, steps,
                       min(epoch_steps, steps))


#: The columns of the retrieval table: R@1/5/10 image to text and text to image on Df and Dr.
RETRIEVAL_METRICS = tuple(f"{side}_{d}_r{k}" for side in ("forget", "retain") for d in ("i2t", "t2i")
                          for k in harness.RETRIEVAL_KS)


def _find_retrieval(store, *, method: str, concept: str, **config) -> dict | None:
    """The stored retrieval record of ``method`` on ``concept`` (None: none, or no store)."""
    if store is None:
        return None
    return store.find(method=method, task=harness.RETRIEVAL_TASK, forget_class=concept, **config)


def run_retrieval(settings: dict, *, model, preprocess, tokenizer, device="cpu", data_dir=None, store=None,
                  precision: str = "fp32", progress: bool = False) -> list[dict]:
    """Paper C's Flickr30K retrieval runs (notebook 10, section 5); return their records (task ``retrieval``).

    Loads the train / val / test splits of ``settings["retrieval"]["dataset"]`` (``data.load_caption_dataset``,
    ``data_dir``: empty for ``$CLIPUNLEARN_DATA`` or the cache) through ``preprocess``; forget = the pairs of
    the images whose captions mention the concept, retain = the others (``data.split_by_concept``, the
    project's choice); records the untouched ``model`` (method ``original``, ``config.seed`` None), then
    unlearns a copy per seed of ``settings["seeds"]`` with CLIPErase through the one loop (Adam, the paper's
    lr and batch size, ``epochs`` passes over the forget pairs; the best of ``evaluations`` validation passes
    kept) and tests it: ``{forget,retain}_{i2t,t2i}_r{1,5,10}`` and their means ``{forget,retain}_r{k}``.
    With ``store`` (``harness.ResultStore``) records are saved as they come and found again on resume.
    """
    r = settings.get("retrieval")
    if r is None:
        raise ValueError("retrieval runs are in the paper profile only (the mini world's captions are its class "
                         "names): use paper_c_settings('paper', ...)")
    train, val, test = (data.load_caption_dataset(r["dataset"], split=split, transform=preprocess,
                                                  data_dir=data_dir or None) for split in ("train", "val", "test"))
    tasks = harness.build_retrieval_tasks(
        train, val, test, concept=r["concept"], tokenizer=tokenizer, seeds=settings["seeds"],
        max_forget_train=r["max_forget_train"], max_retain_train=r["max_retain_train"],
        eval_retain_images=r["eval_retain_images"], device=device)
    pairs = tasks[0].sizes()["forget_train_pairs"]
    steps = r["steps"] or r["epochs"] * math.ceil(pairs / r["batch_size"])
    common = {"dataset": r["dataset"], "splits": "karpathy", "eval_split": "test", "model": settings["model"],
              "pretrained": settings["pretrained"], "eval_retain_images": r["eval_retain_images"]}
    records = []
    original = _find_retrieval(store, method="original", concept=r["concept"])
    if original is None:
        task = tasks[0]
        val_r10 = {f"val_{k}": v for k, v in harness.evaluate_retrieval(model, task.val, device=device).items()
                   if k.endswith("_r10")}
        original = harness.summarise_retrieval(
            task, method="original", config={**common, "seed": None, **task.sizes()}, val=val_r10,
            test_metrics=harness.evaluate_retrieval(model, task.test, device=device))
        if store is not None:
            store.add(original)
    records.append(original)
    for task in tasks:
        record = _find_retrieval(store, method=r["method"], concept=r["concept"], seed=task.seed)
        if record is None:
            _, record = harness.run_retrieval_method(
                r["method"], task, model=model, tokenizer=tokenizer, lr=r["lr"], steps=steps,
                batch_size=r["batch_size"], evaluations=r["evaluations"], device=device, precision=precision,
                config={**common, "epochs": None if r["steps"] else r["epochs"], **task.sizes()}, progress=progress)
            if store is not None:
                store.add(record)
        records.append(record)
    return records


def retrieval_table(records: list[dict]) -> pd.DataFrame:
    """The retrieval records as a table (mean ± sd over seeds) with the paper's reported R@10 beside them.

    The paper reports one R@10 per set (Flickr30K, CLIPErase: Df 10.55, Dr 50.35 %); ours are the mean of the
    two directions (``forget_r10`` / ``retain_r10``) beside each direction's R@1/5/10.
    """
    table = summarise(records, task=harness.RETRIEVAL_TASK, metrics=["forget_r10", "retain_r10",
                                                                     *RETRIEVAL_METRICS])
    reported = load_paper_config("paper_c")["reported"]["flickr30k"]["cliperase"]
    paper = pd.DataFrame([{"forget_r10": f"{reported['forget_r10']:.4f}",
                           "retain_r10": f"{reported['retain_r10']:.4f}"}], index=["cliperase (paper)"])
    return pd.concat([table, paper.rename_axis(table.index.name)])


def run_paper_protocol(world: PaperCWorld, settings: dict, *, store, device="cpu", precision: str = "fp32",
                       compile: str = "", progress: bool = False) -> list[dict]:
    """Run paper C's own protocol as its own row (``settings["paper_protocol"]``; None: nothing) and return its
    records: method ``cliperase_paper`` (the standard CLIP loss as the retention module) at the paper's one
    learning rate, no grid and no selection seed (the reported seeds only), validated once per epoch
    (``world.epoch_steps``; the best validated step kept), the same steps, batch size and evaluation as the
    grid-selected runs beside it."""
    protocol = settings.get("paper_protocol")
    if not protocol:
        return []
    tasks = {name: harness.reported_tasks(seeded, settings.get("selection")) for name, seeded in world.tasks.items()}
    return harness.run_forget_benchmark([protocol["method"]], tasks, model=world.model, tokenizer=world.tokenizer,
                                        grid=protocol["grid"], steps=world.steps, batch_size=settings["batch_size"],
                                        eval_every=world.epoch_steps, store=store, device=device,
                                        precision=precision, compile=compile, progress=progress, selection=None)


#: The columns of :func:`beside_paper`: Df / Dr on the test images, on the training pairs, and the paper's.
BESIDE_COLUMNS = {"Df test": "forget_acc", "Dr test": "retain_acc", "Df train": "forget_train_acc",
                  "Dr train": "retain_train_acc"}


def beside_paper(records, *, methods=("original", "cliperase", "cliperase_paper", "ga", "ga_pairs", "graddiff"),
                 dataset: str = "cifar100") -> pd.DataFrame:
    """Return the main table's Df / Dr beside the paper's (``configs/paper_c.json``, ``reported``), one row per
    method of ``methods`` present in ``records`` (task ``forget-class``; mean over forget classes and seeds):
    on the test images and on the training pairs (NaN where not measured), and the paper's numbers (its
    "none" ablation row for ``original``; NaN where it reports none). The backbone's original row beside
    the paper's original says whether the backbone starts where the paper's did."""
    reported = load_paper_config("paper_c")["reported"]
    paper = {**reported.get(dataset, {}), "original": reported["ablation"]["none"]}
    paper["cliperase_paper"] = paper.get("cliperase", {})
    paper["ga_pairs"] = paper.get("ga", {})
    rows = {}
    for method in methods:
        found = [r["metrics"] for r in records if r["method"] == method and r["task"] == "forget-class"]
        if not found:
            continue
        row = {col: _mean([m.get(key) for m in found]) for col, key in BESIDE_COLUMNS.items()}
        ours = paper.get(method, {})
        row.update({"paper Df": _number(ours.get("forget_acc")), "paper Dr": _number(ours.get("retain_acc"))})
        rows[method_label(method)] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def _mean(values) -> float:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")
