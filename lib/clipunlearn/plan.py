"""What a profile's run will do and how long it should take: ``python -m clipunlearn plan``.

For each notebook of the paper profile, :func:`plan_profile` counts the runs of its matrix (methods x grid values x
targets x seeds, the selection seed's grid included), the steps of each run and the images it encodes, from the
same settings functions the notebooks call (``paper_c_settings``, ``paper_b_settings``, ``paper_a_settings``) and
the datasets' published sizes (:data:`DATASET_SIZES`). :func:`estimate_plan` multiplies each row by the seconds of
one step on this machine's device (``calibration.calibrate_steps``: one step of each kind timed with random
weights). What the counts leave out is said in each row's note: grid extensions (one more run per step out of a
grid), early stops (fewer steps: the estimate is an upper bound for those rows), restarts of the synthetic ascent.
The mini profile's plan is the wall time each notebook took in its last complete run (``runs/mini/logs``).
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from .calibration import calibrate_steps
from .environment import resolve_device
from .harness import EVALUATIONS
from .methods.three_stage import ThreeStageSettings
from .papers import paper_a, paper_b, paper_c
from .paths import PROFILES, REPO_ROOT, check_profile

__all__ = ["DATASET_SIZES", "PAPER_NOTEBOOKS", "Workload", "estimate_plan", "format_plan", "main", "measured_times",
           "plan_paper_a", "plan_paper_b", "plan_paper_c", "plan_profile", "task_sizes"]

#: ``name: (training images, test images, classes)``: the published sizes (CoOp's splits for the fine-grained
#: sets paper B uses; ImageNet's validation set as its test set; ObjectNet's 113 classes shared with ImageNet).
DATASET_SIZES = {
    "cifar10": (50_000, 10_000, 10), "cifar100": (50_000, 10_000, 100), "imagenet": (1_281_167, 50_000, 1000),
    "stanford-dogs": (12_000, 8_580, 120), "stanford-cars": (6_509, 8_041, 196), "caltech101": (4_128, 2_465, 100),
    "flowers102": (4_093, 2_463, 102), "food101": (75_750, 25_250, 101), "stl10": (5_000, 8_000, 10),
    "objectnet": (0, 18_574, 113), "fashion-mnist": (60_000, 10_000, 10)}
#: The notebooks the paper profile runs work in (40, 45 and 50 compare and explore the mini profile only).
PAPER_NOTEBOOKS = ("00_setup_and_baseline", "10_cliperase", "20_synthetic_lipschitz", "30_subgroup_forgetting")
#: Images per evaluation batch.
EVAL_BATCH = 128


@dataclass(frozen=True)
class Workload:
    """``runs`` runs of ``steps`` steps each of kind ``step`` (a registered loss, ``lipschitz``, ``synthetic`` or
    ``eval``) at ``batch`` images, on ``model``; ``seconds`` once estimated."""

    notebook: str
    section: str
    model: str
    step: str
    runs: int
    steps: int
    batch: int
    note: str = ""
    seconds: float | None = None

    @property
    def images(self) -> int:
        """Images through the model: every step's batch (a two-batch loss counts its batch once)."""
        return self.runs * self.steps * self.batch


def _sizes(name: str) -> tuple[int, int, int]:
    if name not in DATASET_SIZES:
        raise ValueError(f"no published size for dataset {name!r}; known: {', '.join(DATASET_SIZES)} "
                         "(add it to plan.DATASET_SIZES)")
    return DATASET_SIZES[name]


def _eval(notebook: str, section: str, model: str, *, runs: int, images: int, note: str = "") -> Workload:
    return Workload(notebook, section, model, "eval", runs, math.ceil(images / EVAL_BATCH), EVAL_BATCH, note)


def task_sizes(dataset: str, task: dict | None = None, *, forget_classes: int = 1) -> dict[str, int]:
    """Return the images of one task of ``harness.build_task`` on ``dataset`` with the caps of ``task`` (its
    ``retain_per_class``, ``val_per_class``, ``eval_per_class``; None: every image): ``retain_train`` (the retain
    pairs), ``forget_train``, ``val`` (forget and retain validation images), ``test`` (forget and retain test
    images) and ``train_eval`` (the training pairs scored when ``task["train_eval"]``)."""
    task = dict(task or {})
    train, test, classes = _sizes(dataset)
    per_train, per_test = math.floor(train / classes * 0.9), test // classes

    def cap(n, key, default=None):
        limit = task.get(key, default)
        return n if limit is None else min(n, limit)
    return {"retain_train": (classes - forget_classes) * cap(per_train, "retain_per_class"),
            "forget_train": forget_classes * per_train,
            "val": classes * cap(math.floor(train / classes * 0.1), "val_per_class", 100),
            "test": classes * cap(per_test, "eval_per_class"),
            "train_eval": classes * cap(per_train, "eval_per_class") if task.get("train_eval") else 0}


def plan_baseline(*, model: str = "ViT-B-32", dataset: str = "cifar10", quick: bool = False) -> list[Workload]:
    """Notebook 00: the zero-shot accuracy of the untouched model on ``dataset``'s test set (quick: 100 images per
    class)."""
    images = task_sizes(dataset, {"eval_per_class": 100 if quick else None})["test"]
    return [_eval("00_setup_and_baseline", "zero-shot accuracy", model, runs=1, images=images)]


def plan_paper_c(settings: dict) -> list[Workload]:
    """Notebook 10 (paper C) from :func:`paper_c.paper_c_settings`."""
    nb, model, bs = "10_cliperase", settings["model"], settings["batch_size"]
    sizes = task_sizes(settings["dataset"], settings["task"])
    epoch_set = sizes["retain_train" if settings.get("epochs_over") == "retain" else "forget_train"]
    steps = settings.get("steps") or settings["epochs"] * math.ceil(epoch_set / bs)
    classes = _sizes(settings["dataset"])[2]
    grid, seeds, forget = len(settings["grid"]["lr"]), len(settings["seeds"]), len(settings["forget"])
    runs = grid + seeds
    val, test_images = sizes["val"], sizes["test"] + sizes["train_eval"]
    ext = "grid extensions not counted (one run more per step out of the grid)"
    out = [Workload(nb, f"main: {m}", model, m, forget * runs, steps, bs, ext) for m in settings["methods"]]
    n_main = len(settings["methods"]) * forget
    out.append(_eval(nb, "main: validation passes", model, runs=n_main * runs * EVALUATIONS, images=val))
    out.append(_eval(nb, "main: test (and training-pair) evaluation", model, runs=n_main * seeds, images=test_images))
    if settings.get("paper_protocol"):
        out.append(Workload(nb, "paper protocol", model, "cliperase", forget * seeds, steps, bs,
                            "one lr, no selection seed"))
        out.append(_eval(nb, "paper protocol: validation per epoch + test", model, runs=forget * seeds,
                         images=val * settings.get("epochs", 1) + test_images))
    for variant in settings["ablations"]:
        out.append(Workload(nb, f"ablation: {variant}", model, "cliperase", runs, steps, bs, ext))
    for ratio in settings["ratios"]:
        k = max(1, round(ratio * classes))
        for m in settings["ratio_methods"]:
            per_class = settings.get("ratio_steps_per_class", True)
            out.append(Workload(nb, f"forget ratio {ratio:g}: {m}", model, m, runs, steps * k if per_class else
                                steps, bs, f"{k} classes{', steps per class' if per_class else ''}; {ext}"))
    if settings.get("retrieval"):
        out.append(Workload(nb, "retrieval (Flickr30K)", model, "cliperase", seeds, 0, bs,
                            "not estimated: its steps follow from how many pairs name the concept"))
    return out


def plan_paper_b(settings: dict) -> list[Workload]:
    """Notebook 20 (paper B) from :func:`paper_b.paper_b_settings`."""
    nb, gen, fg = "20_synthetic_lipschitz", settings["generation"], settings["forgetting"]
    grid, seeds = len(settings["grid"]["lr"]), len(settings["seeds"])
    runs = grid + seeds
    synth_images = settings["n_train"] + settings["n_val"]
    lip_steps = fg["max_epochs"] * math.ceil(settings["n_train"] / fg["batch_size"])
    out = []
    for backbone in settings["backbones"]:
        for dataset, classes in settings["forget"].items():
            n = len(classes)
            test = sum(task_sizes(d, settings["task"])["test"] for d in (dataset, *settings["others"].get(dataset, [])))
            where = f"{backbone} {dataset}"
            gbatch = gen.get("batch_size", 64)
            out.append(Workload(nb, f"{where}: synthetic images", backbone, "synthetic", n * (seeds + 1) * len(
                settings["priors"]), gen["steps"] * math.ceil(synth_images / gbatch), gbatch,
                f"{synth_images} images per class and seed; upper bound: images stop early, but restarts "
                f"(up to {gen.get('max_attempts', 1)} attempts) can add steps"))
            for method in ("lipschitz_synthetic", "lipschitz_real"):
                out.append(Workload(nb, f"{where}: {method}", backbone, "lipschitz", n * runs, lip_steps,
                                    fg["batch_size"], f"upper bound: {fg['max_epochs']} epochs, the stop threshold "
                                    "ends most runs earlier"))
            evals = n * (2 * seeds + 1 + (len(settings["nullspace_grid"]["alpha"]) + seeds
                                          if settings.get("nullspace_grid") else 0))
            out.append(_eval(nb, f"{where}: test (own and other sets)", backbone, runs=evals,
                             images=test))
    first = next(iter(settings["backbones"]))
    n_ablations = sum(len(v) for v in settings["ablations"].values())
    out.append(Workload(nb, "ablations (first backbone, dataset, class)", first, "lipschitz", n_ablations, lip_steps,
                        fg["batch_size"], "upper bound"))
    return out


def plan_paper_a(settings: dict) -> list[Workload]:
    """Notebook 30 (paper A) from :func:`paper_a.paper_a_settings`."""
    nb, model, bs = "30_subgroup_forgetting", settings["model"], settings["batch_size"]
    seeds, targets = len(settings["seeds"]), len(settings["targets"])
    val = task_sizes(settings["dataset"], settings["task"])["val"]
    test = sum(task_sizes(d, settings["task"])["test"] for d in (settings["dataset"], *settings["transfer"]))
    three = ThreeStageSettings(**settings["three_stage"]["settings"])
    out = []
    for method in settings["methods"]:
        runs = targets * (len(settings["grids"][method]["lr"]) + seeds)
        if method == "three_stage":
            out.append(Workload(nb, "three stages: forgetting + reminding", model, "ft", runs,
                                three.forget_steps + three.remind_steps, settings["three_stage"]["batch_size"],
                                "timed as ft steps; alignment, Fisher scores and alpha's calibration not counted"))
        elif method == "lipschitz_synthetic":
            lip = settings["lipschitz"]
            out.append(Workload(nb, "LIP: synthetic images", model, "synthetic", targets * (seeds + 1),
                                lip["generation"]["steps"] * math.ceil((lip["n_train"] + lip["n_val"]) / 64), 64,
                                "upper bound (images stop early)"))
            out.append(Workload(nb, "LIP: forgetting", model, "lipschitz", runs, lip["forgetting"]["max_epochs"]
                                * math.ceil(lip["n_train"] / lip["forgetting"]["batch_size"]),
                                lip["forgetting"]["batch_size"], "upper bound"))
        else:
            out.append(Workload(nb, f"baseline: {method}", model, method, runs, settings["steps"], bs))
            out.append(_eval(nb, f"baseline: {method} validation passes", model, runs=runs * EVALUATIONS, images=val))
    n_ablation = len(settings["ablations"]) * seeds + len(settings.get("style_ablations") or []) * seeds
    out.append(Workload(nb, "ablations (first target)", model, "ft", n_ablation, three.forget_steps
                        + three.remind_steps, settings["three_stage"]["batch_size"], "at the selected lr"))
    reported = targets * seeds * len(settings["methods"]) + n_ablation
    out.append(_eval(nb, "test and transfer evaluation", model, runs=reported, images=test))
    return out


def plan_profile(profile: str = "paper", *, quick: bool = False, seeds: str = "0,1,2",
                 notebooks: Sequence[str] = PAPER_NOTEBOOKS) -> list[Workload]:
    """Return every :class:`Workload` of the paper profile's ``notebooks`` (their default parameters)."""
    if check_profile(profile) != "paper":
        raise ValueError("plan_profile counts the paper profile; the mini profile's plan is measured_times()")
    builders = {
        "00_setup_and_baseline": lambda: plan_baseline(quick=quick),
        "10_cliperase": lambda: plan_paper_c(paper_c.paper_c_settings(profile, quick=quick, seeds=seeds)),
        "20_synthetic_lipschitz": lambda: plan_paper_b(paper_b.paper_b_settings(profile, quick=quick, seeds=seeds)),
        "30_subgroup_forgetting": lambda: plan_paper_a(paper_a.paper_a_settings(profile, quick=quick, seeds=seeds)),
    }
    return [w for nb in notebooks if nb in builders for w in builders[nb]()]


def estimate_plan(workloads: Sequence[Workload], *, device, precision: str = "fp32", max_batch: int | None = None,
                  log=print) -> list[Workload]:
    """Return ``workloads`` with ``seconds``: runs x steps x the calibrated seconds of one step (rows with no steps
    keep None)."""
    needed = [(w.model, w.step, w.batch) for w in workloads if w.runs and w.steps]
    times = calibrate_steps(needed, device=device, precision=precision, max_batch=max_batch, log=log)
    return [replace(w, seconds=w.runs * w.steps * times[w.model, w.step, w.batch].seconds)
            if w.runs and w.steps else w for w in workloads]


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def format_plan(workloads: Sequence[Workload], *, workers: int = 1) -> str:
    """Return the plan as text: one line per workload, each notebook's total and the whole run's (and its time on
    ``workers`` devices, runs spread evenly: a lower bound)."""
    lines, total, timed = [], 0.0, any(w.seconds is not None for w in workloads)
    for nb in dict.fromkeys(w.notebook for w in workloads):
        rows = [w for w in workloads if w.notebook == nb]
        nb_total = sum(w.seconds or 0.0 for w in rows)
        total += nb_total
        lines.append(f"{nb}: {sum(w.runs for w in rows if w.step != 'eval'):,} runs besides evaluation, "
                     f"{sum(w.images for w in rows):,} images" + (f", expected {_hours(nb_total)}" if timed else ""))
        for w in rows:
            lines.append(f"  {w.section:<48} {w.model:<9} {w.step:<13} runs {w.runs:>6,}  steps {w.steps:>9,}  "
                         f"batch {w.batch:>3}  {_hours(w.seconds):>9}" + (f"  ({w.note})" if w.note else ""))
    if not timed:
        return "\n".join(lines)
    lines.append(f"total: {_hours(total)} on one device" + (f"; about {_hours(total / workers)} on {workers} devices "
                                                             "if the runs spread evenly" if workers > 1 else ""))
    return "\n".join(lines)


def measured_times(profile: str = "mini", *, quick: bool = False) -> dict[str, int]:
    """Return ``{notebook: seconds}`` of the notebooks' last complete run under ``runs/<profile>/logs`` (the wall
    time each printed at its end); notebooks never run are left out."""
    logs = REPO_ROOT / "runs" / (("quick-" if quick else "") + check_profile(profile)) / "logs"
    out = {}
    for log in sorted(logs.glob("*.log")):
        found = re.findall(r"notebook wall time: (\d+) s", log.read_text(errors="replace"))
        if found and (logs / f"{log.stem}.stamp").exists():
            out[log.stem] = int(found[-1])
    return out


def main(argv=None) -> int:
    """``python -m clipunlearn plan``: print the plan of a profile."""
    parser = argparse.ArgumentParser(prog="python -m clipunlearn plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="paper", choices=PROFILES)
    parser.add_argument("--quick", action="store_true", help="the notebooks' quick mode")
    parser.add_argument("--seeds", default="0,1,2", help="reported seeds (the notebooks' SEEDS)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (where the steps are timed)")
    parser.add_argument("--precision", default="fp32", help="precision of the timed steps (fp32, bf16, ...)")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="time at most this batch and scale per image (default: 2 on the CPU, none on a GPU)")
    parser.add_argument("--workers", type=int, default=1, help="devices the runs spread over (the total / N)")
    parser.add_argument("--only", action="append", default=[], help="notebooks whose stem contains this")
    parser.add_argument("--counts-only", action="store_true", help="the runs, steps and images, no timing")
    args = parser.parse_args(argv)
    notebooks = [nb for nb in PAPER_NOTEBOOKS if not args.only or any(o in nb for o in args.only)]
    if args.profile == "mini":
        times = measured_times("mini", quick=args.quick)
        if not times:
            print("no complete mini run under runs/: ./run_all.sh measures one (about an hour on 2 cores)")
            return 0
        stems = [p.stem for p in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))]
        for nb in stems:
            print(f"{nb}: " + (f"{_hours(times[nb])} (measured in the last run)" if nb in times else
                               "not measured (no complete run under runs/)"))
        missing = [nb for nb in stems if nb not in times]
        print(f"total: {_hours(sum(times.values()))} measured" + (f", without {', '.join(missing)}" if missing else "")
              + "; the benchmark's retrained references ship with the package (a retrained mini model trains its "
              "own on first use, about 3 min each)")
        return 0
    workloads = plan_profile("paper", quick=args.quick, seeds=args.seeds, notebooks=notebooks)
    if args.counts_only:
        print(format_plan(workloads))
        return 0
    device = resolve_device(args.device)
    max_batch = args.max_batch if args.max_batch is not None else (2 if device == "cpu" else None)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    print(f"plan of the paper profile{' (quick)' if args.quick else ''}: steps timed on {name} ({device}), "
          f"{args.precision}" + (f", at batch {max_batch} scaled per image" if max_batch else ""))
    workloads = estimate_plan(workloads, device=device, precision=args.precision, max_batch=max_batch)
    print(format_plan(workloads, workers=max(1, args.workers)))
    return 0
