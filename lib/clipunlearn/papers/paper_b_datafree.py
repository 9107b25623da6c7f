"""Paper B's data-free comparison (notebooks 20 and 40): synthetic images with and without an image prior, and
a training-free baseline, all selected without a real image of the forgotten class.

* :func:`measure_closeness`: how close a synthetic forget set is to real images of its class, measured
  (never used to select) with real images: the distance of their BatchNorm feature statistics
  (``synthetic_prior.feature_statistics_distance``) beside the same distance between two real sets of the
  class (the floor) and from real images of the other classes, the cosine of their mean features, and the
  share a linear probe trained on real image features (:func:`fit_probe`) assigns to the class.
* :func:`run_prior_benchmark`: ``lipschitz_synthetic`` on synthetic sets of another prior
  (``config.synthetic_prior``), selected on held-out synthetic images of that prior.
* :func:`comparison_table`: the comparison of notebook 20, one row per kind of run.
* :func:`run_nullspace_benchmark`: the nullspace projection (``methods.nullspace``), its strength
  ``alpha`` selected by the same data-free criterion (held-out synthetic images of paper B's generation).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from .. import harness, metrics, registry, report
from ..methods.lipschitz import compute_avg_gain, generate_task_synthetic, run_lipschitz
from ..methods.nullspace import run_nullspace
from ..synthetic_prior import PRIOR_VARIANT, SYNTHETIC_PRIORS, feature_statistics_distance, split_priors  # noqa: F401

__all__ = ["NULLSPACE_EXTENSION", "fit_probe", "measure_closeness", "make_closeness_fn", "run_prior_benchmark",
           "run_nullspace_benchmark", "run_datafree_benchmark", "comparison_table", "CLOSENESS_KEYS", "PRIOR_VARIANT",
           "split_priors"]

#: How the nullspace strength's grid grows at an end: quarter-decade steps, at most the full projection (1).
NULLSPACE_EXTENSION = harness.GridExtension(name="alpha", factor=10 ** 0.25, bounds=(1e-2, 1.0))

#: The closeness measures :func:`measure_closeness` adds to a record's metrics.
CLOSENESS_KEYS = ("syn_stats_distance", "real_stats_distance", "other_stats_distance", "syn_feature_cos",
                  "syn_probe_acc", "real_probe_acc")


def fit_probe(features: torch.Tensor, labels: torch.Tensor, *, num_classes: int, steps: int = 300,
              lr: float = 0.1, weight_decay: float = 1e-4, seed: int = 0) -> torch.nn.Linear:
    """Return a linear probe (multinomial logistic regression) fitted on ``features`` ``[N, D]``, full-batch Adam.

    Its initialisation draws from ``seed`` inside a forked generator: the global random state is left as it was,
    so measuring never moves the runs that follow."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = torch.nn.Linear(features.shape[1], num_classes)
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(probe(features), labels).backward()
        opt.step()
    return probe.eval()


def _images(dataset, indices, device) -> torch.Tensor:
    return torch.cat([x for x, _ in metrics.iterate_batches(dataset, indices=indices)]).to(device).float()


def measure_closeness(model, images: torch.Tensor, task, *, probe: torch.nn.Linear, n_real: int = 64,
                      device="cpu") -> dict:
    """Return the closeness of synthetic ``images`` (model space) of ``task``'s class to real images of it.

    Real images (measurement only): ``n_real`` training images of the class (``task.forget_train``), as many
    held-out ones (``task.forget_val``, the floor of the statistics distance) and of the other classes
    (``task.retain_val``). Keys: :data:`CLOSENESS_KEYS` -- ``syn_stats_distance`` /
    ``real_stats_distance`` / ``other_stats_distance`` (BatchNorm feature statistics against the class's
    training images), ``syn_feature_cos`` (cosine of the mean unit image features), ``syn_probe_acc`` /
    ``real_probe_acc`` (share of synthetic / held-out real images the probe assigns to the class).
    """
    model.eval()
    target = task.forget_classes[0]
    real = _images(task.train, task.forget_train[:n_real], device)
    held = _images(task.train, task.forget_val[:n_real], device)
    others = _images(task.train, task.retain_val[torch.randperm(len(task.retain_val), generator=torch.Generator()
                                                                .manual_seed(task.seed))[:n_real]], device)
    images = images[:n_real].to(device)
    with torch.no_grad():
        syn_f = F.normalize(model.encode_image(images).float(), dim=-1).cpu()
        real_f = F.normalize(model.encode_image(real).float(), dim=-1).cpu()
        held_f = F.normalize(model.encode_image(held).float(), dim=-1).cpu()
        syn_hit = (probe(syn_f).argmax(1) == target).float().mean()
        held_hit = (probe(held_f).argmax(1) == target).float().mean()
    return {"syn_stats_distance": feature_statistics_distance(model, images, real),
            "real_stats_distance": feature_statistics_distance(model, held, real),
            "other_stats_distance": feature_statistics_distance(model, others, real),
            "syn_feature_cos": float(F.cosine_similarity(syn_f.mean(0), real_f.mean(0), dim=0)),
            "syn_probe_acc": float(syn_hit), "real_probe_acc": float(held_hit)}


def make_closeness_fn(model, *, per_class: int = 100, device="cpu") -> Callable:
    """Return ``closeness(task, images) -> dict`` (:func:`measure_closeness`), one probe per forget target.

    The probe is fitted on the original ``model``'s unit features of up to ``per_class`` real training
    images of every class of the task (``retain_train`` and ``forget_train``); measurement only.
    """
    probes: dict = {}

    def closeness(task, images: torch.Tensor) -> dict:
        key = (task.kind, task.target)
        if key not in probes:
            idx = torch.cat([task.retain_train, task.forget_train])
            feats, labels = metrics.encode_images(model, task.train, indices=idx, device=device)
            keep = torch.cat([(labels == c).nonzero().flatten()[:per_class] for c in labels.unique()])
            probes[key] = fit_probe(feats[keep], labels[keep], num_classes=len(task.classnames), seed=task.seed)
        return measure_closeness(model, images, task, probe=probes[key], device=device)

    return closeness


def run_prior_benchmark(seeded: Sequence, *, model, tokenizer, generation: dict, prior: str, prior_settings: dict,
                        forgetting: dict, grid: dict, n_train: int, n_val: int, store, selection=None,
                        closeness: Callable | None = None, oracle_fn: Callable | None = None,
                        finish_fn: Callable | None = None, record_task: str | None = None,
                        device="cpu") -> dict:
    """``lipschitz_synthetic`` on ``prior``'s synthetic images of one target (every seed); return its sets.

    Each seed's forget and held-out sets come from ``generate_task_synthetic`` with ``synthetic_prior=prior``;
    the grid is searched on held-out images of that prior (no real forget image). Records hold
    ``config.synthetic_prior`` and, with ``closeness`` (:func:`make_closeness_fn`), its measures.
    """
    if prior not in SYNTHETIC_PRIORS:
        raise ValueError(f"unknown synthetic prior {prior!r}; valid: {', '.join(SYNTHETIC_PRIORS)}")
    gen = {**generation, "synthetic_prior": prior, "prior_settings": prior_settings}
    sets = {t.seed: generate_task_synthetic(model, t, tokenizer=tokenizer, n_train=n_train, n_val=n_val,
                                            generation=gen, seed=t.seed, device=device) for t in seeded}

    def run_fn(task, **candidate):
        forget, val, cost = sets[task.seed]
        unlearned, record = run_lipschitz(task, model=model, tokenizer=tokenizer, forget_data=forget,
                                          val_forget=(val, None), data_free=True, method="lipschitz_synthetic",
                                          config={"synthetic": dict(cost), "synthetic_prior": prior},
                                          device=device, **{**forgetting, **candidate})
        if closeness is not None:
            record["metrics"].update(closeness(task, forget.images))
        if record_task is not None:
            record["task"] = record_task
        return unlearned, record

    harness.run_selected("lipschitz_synthetic", seeded, run_fn=run_fn, grid=grid, store=store, oracle_fn=oracle_fn,
                         selection=selection, finish_fn=finish_fn, match={"synthetic_prior": prior},
                         record_task=record_task)
    return sets


def run_nullspace_benchmark(seeded: Sequence, *, model, tokenizer, held_out: Callable, grid: dict, store,
                            selection=None, oracle_fn: Callable | None = None, finish_fn: Callable | None = None,
                            reference: dict | None = None, gain_divisor: float | None = None,
                            device="cpu") -> list[dict]:
    """The nullspace projection on one target (every seed), ``alpha`` selected data-free; return the records.

    ``held_out(task) -> SyntheticSet``: the held-out synthetic images the validation scores forgetting
    on. The protocol is ``selection``'s, with the grid extended at its ends in quarter decades up to the
    full projection (:data:`NULLSPACE_EXTENSION`). ``reference``: the original's test metrics; adds the
    authors' ``avg_gain`` (``lipschitz.compute_avg_gain`` with ``gain_divisor``), as paper B's records have.
    """
    if selection is not None and selection.extend is not None:
        selection = dataclasses.replace(selection, extend=NULLSPACE_EXTENSION)

    def run_fn(task, **candidate):
        unlearned, record = run_nullspace(task, model=model, tokenizer=tokenizer, val_forget=(held_out(task), None),
                                          evaluate=not harness.is_search(task, selection), device=device,
                                          **candidate)
        if reference is not None and record["metrics"].get("forget_acc") is not None:
            record["metrics"]["avg_gain"] = compute_avg_gain(record["metrics"], reference, divisor=gain_divisor)
        return unlearned, record

    return harness.run_selected("nullspace", seeded, run_fn=run_fn, grid=grid, store=store, oracle_fn=oracle_fn,
                                selection=selection, finish_fn=finish_fn)


def comparison_table(records: Sequence[dict]):
    """Return the data-free comparison of notebook 20 as a DataFrame, one row per kind of run (mean over classes
    and seeds of the ``forget-class`` results): each synthetic prior's closeness measures (:data:`CLOSENESS_KEYS`),
    real Df / Dr, the selected value and seconds; the nullspace projection; the real-image variant and, for each
    data-free row with a grid search, what an oracle on real forget images would have reached (``forget_acc
    (oracle)``, ``retain_acc (oracle)``: the selection seed's candidates, a reference only)."""
    shown = split_priors(records)
    rows = {}
    for method in ("lipschitz_synthetic", PRIOR_VARIANT, "nullspace", "lipschitz_real"):
        runs = [r for r in shown if r["method"] == method and r["task"] == "forget-class"]
        if not runs:
            continue
        keys = [*CLOSENESS_KEYS, "forget_acc", "retain_acc", "other_acc", "seconds"]
        row = {k: _mean([r["metrics"].get(k) for r in runs]) for k in keys}
        row.update(runs=len(runs), selected=", ".join(sorted({str(v) for r in runs
                                                              for v in r["config"].get("selected", {}).values()})))
        if any(r["task"] == "selection" and r["method"] == method and "oracle_score" in r["metrics"] for r in shown):
            oracle = report.oracle_table(shown, method=method)
            row["forget_acc (oracle)"] = float(oracle["forget_acc (oracle)"].mean())
            row["retain_acc (oracle)"] = float(oracle["retain_acc (oracle)"].mean())
        rows[registry.method_label(method)] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


def run_datafree_benchmark(tasks: dict, *, model, tokenizer, lipschitz: dict, grid: dict, nullspace_grid: dict | None,
                           store, selection=None, references: dict | None = None, device="cpu") -> None:
    """Notebook 40: the BatchNorm-prior ``lipschitz_synthetic`` and the nullspace projection on ``tasks``
    (``{target: [task per seed]}``, one task kind), with the mini settings ``lipschitz`` (``configs.mini_settings``:
    ``generation``, ``forgetting``, ``n_train``, ``n_val``, ``bn_prior``). Runs already in ``store`` are skipped.

    ``nullspace_grid`` None leaves the projection out (a style subgroup: the class's prompts do not name the
    style, so projecting them out forgets the class in every style). The projection selects on paper B's
    held-out synthetic images of the forgotten class, generated here as ``lipschitz_synthetic`` does.
    """
    finish = harness.reference_fn(references, tokenizer=tokenizer, device=device)
    held: dict = {}

    def held_out(task):
        if task.seed not in held:
            held[task.seed] = generate_task_synthetic(model, task, tokenizer=tokenizer, n_train=0,
                                                      n_val=lipschitz["n_val"], generation=lipschitz["generation"],
                                                      seed=task.seed, device=device)[1]
        return held[task.seed]

    for seeded in tasks.values():
        held.clear()
        run_prior_benchmark(seeded, model=model, tokenizer=tokenizer, generation=lipschitz["generation"], prior="bn",
                            prior_settings=lipschitz["bn_prior"], forgetting=lipschitz["forgetting"], grid=grid,
                            n_train=lipschitz["n_train"], n_val=lipschitz["n_val"], store=store, selection=selection,
                            finish_fn=finish, device=device)
        if nullspace_grid:
            run_nullspace_benchmark(seeded, model=model, tokenizer=tokenizer, held_out=held_out, grid=nullspace_grid,
                                    store=store, selection=selection, finish_fn=finish, device=device)
