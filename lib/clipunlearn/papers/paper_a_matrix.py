"""Notebook 30's matrix: paper A's comparison and ablations, each target of it one job (``harness.jobs``).

A target's job runs :func:`paper_a.run_subgroup_benchmark` on that target and, where the notebook ablates it,
:func:`paper_a.run_three_stage_ablation`: its three-stage runs share one ``cache`` (stages reused across the
grid and the ablation variants), so the job is the unit that keeps that reuse. In the mini profile the jobs run
one torch thread each, two at once on a local Ray instance under ``./run_all.sh`` (``cluster.make_matrix_executor``)
or here one after the other with the same thread, so the records do not depend on what ran them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import models
from ..harness import ModelArchive, ResultStore, Task, evaluate_coarse
from ..harness.jobs import run_target_jobs, timed_job
from ..methods import retrain
from . import paper_a

__all__ = ["PAPER_A_FACTORY", "PaperAWorld", "ablation_plan", "coarse_metrics_fn", "load_paper_a_world",
           "paper_a_world_spec", "run_paper_a_matrix", "run_target", "run_target_spec"]

#: The job of one target (``cluster.WORLD_RUNS``).
PAPER_A_FACTORY = "paper_a_target"


@dataclass
class PaperAWorld:
    """Notebook 30's world: its settings, model, data, tasks by target, retrained references (mini) and the
    three-stage cache of this process."""

    profile: str
    settings: dict
    model: torch.nn.Module
    tokenizer: object
    train: object
    test: object
    tasks: dict
    references: dict | None
    device: object = "cpu"
    cache: dict = field(default_factory=dict)


def paper_a_world_spec(profile: str, *, quick: bool, seeds: str, data_dir: str = "", retrain: bool = True,
                       **params) -> dict:
    """Return the JSON world spec of notebook 30 from its parameters (``params``: ``paper_a.paper_a_settings``'s
    string parameters: ``model``, ``pretrained``, ``dataset``, ``subgroups``, ``transfer``)."""
    return {"name": "paper_a", "params": {"profile": profile, "quick": bool(quick), "seeds": str(seeds),
                                          "data_dir": data_dir or "", "retrain_references": bool(retrain), **params}}


def load_paper_a_world(*, profile: str = "mini", quick: bool = False, seeds: str = "0,1,2", data_dir: str = "",
                       retrain_references: bool = True, device="cpu", **params) -> PaperAWorld:
    """Notebook 30's world from its parameters, as the notebook loads it: the settings
    (``paper_a.paper_a_settings``), the model and tasks (``paper_a.load_paper_a_tasks``), and in the mini
    profile the retrained references of both tasks (their runs kept in the archive for notebook 45)."""
    settings = paper_a.paper_a_settings(profile, quick=quick, seeds=seeds, **params)
    base, _, tokenizer, train, test, tasks = paper_a.load_paper_a_tasks(
        model=settings["model"], pretrained=settings["pretrained"], dataset=settings["dataset"],
        targets=settings["targets"], seeds=settings["selection"].with_seeds(settings["seeds"]),
        hierarchy=settings["hierarchy"], transfer=settings["transfer"], **settings["task"], device=device,
        data_dir=data_dir or None)
    settings["lipschitz"]["generation"]["image_size"] = models.get_image_size(base)  # LIP's synthetic images
    references = retrain.load_references(tasks, tokenizer=tokenizer, selection=settings["selection"], device=device,
                                         archive=ModelArchive(base)) \
        if profile == "mini" and retrain_references and not quick else None
    return PaperAWorld(profile, settings, base, tokenizer, train, test, tasks, references, device)


def coarse_metrics_fn(world: PaperAWorld) -> Callable[[object, Task], dict]:
    """Return ``extra_metrics(model, task)``: the coarse-prompt accuracy ("is a sandal still a shoe?") on the
    class-subgroup task of the mini world, nothing elsewhere."""
    def coarse(model, task: Task) -> dict:
        if world.profile != "mini" or task.kind != "forget-subgroup":
            return {}
        return evaluate_coarse(model, task, tokenizer=world.tokenizer, sets=("forget", "sibling"),
                               device=world.device)
    return coarse


def ablation_plan(settings: dict) -> dict[str, tuple[str | None, list]]:
    """Return ``{record task: (target, variants)}``: paper A's table on the first target (``ablation``) and the
    style variants on the first style-subgroup target (``ablation-style``; None: there is none)."""
    targets = settings["targets"]
    style = [t for t, kind in targets.items() if kind == "forget-style-subgroup"]
    return {"ablation": (next(iter(targets)), list(settings["ablations"])),
            "ablation-style": (style[0] if style else None, list(settings["style_ablations"]))}


def run_target(world: PaperAWorld, target: str, store: ResultStore, *, run_ablation: bool = True) -> list[dict]:
    """Run ``target``'s part of notebook 30 into ``store``: the comparison of every method (section 1) and the
    ablations of that target (section 4, with ``run_ablation``); return the store's records."""
    s, extra = world.settings, coarse_metrics_fn(world)
    tasks = {target: world.tasks[target]}
    paper_a.run_subgroup_benchmark(
        tasks, model=world.model, tokenizer=world.tokenizer, methods=s["methods"], grids=s["grids"],
        steps=s["steps"], batch_size=s["batch_size"], three_stage=s["three_stage"], lipschitz=s["lipschitz"],
        extra_metrics=extra, store=store, cache=world.cache, device=world.device, progress=False,
        selection=s["selection"], references=world.references)
    for name, (ablated, variants) in ablation_plan(s).items():
        if run_ablation and ablated == target and variants:
            paper_a.run_three_stage_ablation(
                world.tasks[target], model=world.model, tokenizer=world.tokenizer, store=store, variants=variants,
                record_task=name, selection=s["selection"], extra_metrics=extra, cache=world.cache,
                device=world.device, progress=False, **s["three_stage"])
    return store.records


def run_target_spec(world: PaperAWorld, spec: dict, *, device="cpu") -> dict:
    """Run the job of ``spec`` (``harness.jobs.job_spec``) in ``world``; return its summary record."""
    if spec["target"] not in world.tasks:
        raise ValueError(f"notebook 30's world has no target {spec['target']!r}; its targets: "
                         f"{', '.join(world.tasks)}")
    return timed_job(spec, lambda part: run_target(world, spec["target"], part,
                                                   run_ablation=spec["settings"].get("run_ablation", True)))


def run_paper_a_matrix(store: ResultStore, *, world: dict, loaded: PaperAWorld, executor=None,
                       resume: bool = False, run_ablation: bool = True, threads: int | None = None) -> list[dict]:
    """Run notebook 30's matrix of ``world`` (a :func:`paper_a_world_spec`; ``loaded``: this process's world of
    it) into ``store``: every target's job (:func:`run_target`), here one after the other with ``threads`` torch
    threads (``executor`` None) or on a ``cluster.RayExecutor``; the same records either way, in the order of the
    targets. Returns ``store.records``."""
    return run_target_jobs(store, loaded.tasks, factory=PAPER_A_FACTORY, world=world if executor is not None else None,
                           run_job=lambda spec: run_target_spec(loaded, spec, device=loaded.device),
                           executor=executor, resume=resume, threads=threads, settings={"run_ablation": run_ablation})
