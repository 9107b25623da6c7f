"""Paper C (CLIPErase) on the shared harness (notebook 10): its settings per profile and its model, data
and class tasks. CLIPErase itself is a registered loss (``losses.py``); the benchmark, module ablation and
forget-ratio sweep are the harness's drivers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import data, harness, models
from ..configs import load_paper_config, mini_settings, parse_seeds, split_names
from ..metrics import CachedImages
from ..paths import check_profile

__all__ = ["PAPER_C_METHODS", "PAPER_C_ABLATIONS", "PAPER_C_RATIO_METHODS", "PaperCWorld", "paper_c_settings",
           "load_paper_c_tasks"]

#: The methods of notebook 10's main table, in its order: the baselines, then CLIPErase.
PAPER_C_METHODS = ("ft", "ga", "graddiff", "neggrad_plus", "random_labels", "cliperase")

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
                task=dict(retain_per_class=None, eval_per_class=None), batch_size=hyper["batch_size"],
                epochs=hyper["epochs"], grid={"lr": [1e-7, hyper["lr"]["cifar100"], 1e-5]})


def paper_c_settings(profile: str, *, quick: bool = False, seeds="0,1,2", forget_classes: str = "",
                     model: str = "", pretrained: str = "", dataset: str = "") -> dict:
    """Return notebook 10's settings of paper C for ``profile`` (``"mini"`` or ``"paper"``), parameters applied.

    Keys: ``model`` / ``pretrained`` (``models.load_clip``), ``dataset``, ``forget`` (the classes forgotten
    one at a time), ``ratios`` (the forget-ratio sweep; its classes are drawn per seed), ``ratio_methods``,
    ``task`` (sizes for ``harness.build_task``), ``batch_size``,
    ``steps`` (mini) or ``epochs`` (paper: steps follow from the forget set's size), ``grid``, ``methods``,
    ``ablations``, ``seeds`` (reported) and ``selection`` (``harness.PROTOCOL``: the grids are searched on its
    seed, never reported, and extended at their ends). The string arguments are the notebook's parameters: ``seeds`` and
    ``forget_classes`` comma-separated (empty: the profile's); ``model`` / ``pretrained`` (refused by mini)
    replace the backbone; ``dataset`` (paper profile) replaces CIFAR-100. ``quick``: one class, one seed,
    the grid's middle value alone, 10 steps and small sets (the CI smoke test).
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
    if quick:  # CI: one class, one seed, one grid value, few steps, small sets
        seed_list, settings["forget"] = seed_list[:1], settings["forget"][:1]
        settings.update(steps=10, grid={"lr": settings["grid"]["lr"][1:2]},
                        task=dict(retain_per_class=50, eval_per_class=50))
    settings.update(seeds=seed_list, methods=list(PAPER_C_METHODS), ablations=dict(PAPER_C_ABLATIONS),
                    ratio_methods=list(PAPER_C_RATIO_METHODS),
                    selection=harness.protocol_for(seed_list, quick=quick))
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


def load_paper_c_tasks(settings: dict, *, device="cpu", data_dir=None, workers: int = 8) -> PaperCWorld:
    """Load the model, data and class tasks of ``settings`` (:func:`paper_c_settings`); return a :class:`PaperCWorld`.

    Fashion-MNIST is the mini world (every style, the mini model's ``n_seen``); another registered dataset is
    decoded once through the model's ``preprocess`` by ``workers`` processes and served from memory
    (``metrics.CachedImages``: fp16 in GPU memory on a GPU). Paper runs take
    ``epochs * ceil(forget images / batch_size)`` steps. ``data_dir``: empty for ``$CLIPUNLEARN_DATA`` or the cache.
    Each class has a task for the selection seed first (``settings["selection"]``), then one per reported seed.
    """
    data_dir = data_dir or None
    seeds, forget = settings["seeds"], settings["forget"]
    base, preprocess, tokenizer = models.load_clip(settings["model"], settings["pretrained"], device=device)
    if settings["dataset"] == "fashion-mnist":
        train, test = data.load_mini_world(data_dir=data_dir)
        templates, n_seen = data.FASHION_MNIST_TEMPLATES, models.MINI_SEEN_IMAGES
    else:
        train, test = (CachedImages(data.load_dataset(settings["dataset"], split=s, transform=preprocess,
                                                      data_dir=data_dir, download=True),
                                    device=device, num_workers=workers)
                       for s in ("train", "test"))
        prompts = load_paper_config("paper_c")["prompts"]
        templates, n_seen = (prompts.get(settings["dataset"], "a photo of a {}."),), None
    seeds = settings["selection"].with_seeds(seeds) if settings.get("selection") else seeds
    tasks = {name: [harness.build_task(train, test, kind="forget-class", target=name, seed=s, templates=templates,
                                       n_seen=n_seen, **settings["task"]) for s in seeds] for name in forget}
    steps = settings.get("steps") or settings["epochs"] * -(-len(tasks[forget[0]][0].forget_train)
                                                            // settings["batch_size"])
    return PaperCWorld(base, preprocess, tokenizer, train, test, tasks, templates, n_seen, steps)
