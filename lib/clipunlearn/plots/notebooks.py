"""The figures of each notebook from its records (``FIGURES``), and ``python -m clipunlearn figures``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from ..configs import load_paper_config
from ..paths import REPO_ROOT, check_profile, get_run_name
from ..report import get_forget_class, get_metric
from ..results import load_records
from ..synthetic_prior import split_priors
from .attacks import figures_attacks
from .common import NoDataError, _slug, save_figures
from .paper_a import (SUBGROUP_TASKS, plot_alpha_curve, plot_layer_ranking, plot_stages, plot_stages_by_style,
                      plot_three_stage_ablation, reported_three_stage_ablation)
from .records import (plot_ablation, plot_benchmark_heatmap, plot_forget_confusion, plot_forget_ratio,
                      plot_forgetting_curves, plot_method_bars, plot_per_class, plot_selection, plot_tradeoff)
from .tensors import plot_confusion, plot_curves, plot_embedding_map


# --------------------------------------------------------------------------- #
# The figures of each notebook, from its records
# --------------------------------------------------------------------------- #
def figures_setup_and_baseline(records: list[dict]) -> dict:
    """Notebook 00's number figures from its ``zeroshot`` record: training loss and accuracy
    (``history``), confusion matrix (``confusion``) and embedding map (``embedding_map``);
    a figure whose key the record lacks is left out. The data overview needs the images: not here."""
    record = next((r for r in records if r.get("task") == "zeroshot"), None)
    if record is None:
        return {}
    figures = {}
    history = record.get("history") or []
    if any("loss" in h for h in history):
        figures["00_training_loss.png"] = plot_curves([h for h in history if "loss" in h], x="step", ys=["loss"],
                                                      title="mini CLIP training loss", ylabel="contrastive loss")
    if any("val_acc" in h for h in history):
        figures["00_training_accuracy.png"] = plot_curves(
            [h for h in history if "val_acc" in h], x="epoch", ys=["val_acc"],
            title="zero-shot accuracy on held-out images", ylabel="accuracy")
    confusion = record.get("confusion")
    if confusion:
        dataset = record.get("config", {}).get("dataset", "")
        figures["00_confusion.png"] = plot_confusion(confusion["matrix"], confusion["classnames"],
                                                     title=f"zero-shot confusion ({dataset}, photo)")
    embedding = record.get("embedding_map")
    if embedding:
        figures["00_embedding_map.png"] = plot_embedding_map(embedding["points"], embedding["labels"],
                                                             kinds=embedding["kinds"],
                                                             title="t-SNE of image and prompt embeddings")
    return figures


FORGET_TASKS = {
    "forget-class": ("forget_acc", "retain_acc", "other_acc"),
    "forget-subgroup": ("forget_acc", "sibling_acc", "retain_acc", "other_acc"),
    "forget-style-subgroup": ("forget_acc", "sibling_acc", "retain_acc", "other_acc"),
}


def figures_unlearning(records: list[dict], *, prefix: str, paper_ablation: dict | None = None) -> dict:
    """Every record figure an unlearning notebook's records support, named ``<prefix>_<figure>.png``:
    ``main`` (method bars), ``per_class_<class>``, ``forget_confusion_<class>``, ``forgetting_curves``,
    ``tradeoff`` (per forget task; tasks other than forget-class add ``_<task>``), ``ablation``,
    ``forget_ratio`` and ``selection``. A figure with nothing to show is left out."""
    figures = {}

    def add(name, fn, *args, **kwargs):
        try:
            figures[f"{prefix}_{name}.png"] = fn(*args, **kwargs)
        except NoDataError:
            pass

    tasks = {r.get("task") for r in records}
    for task, metrics in FORGET_TASKS.items():
        if task not in tasks:
            continue
        tag = "" if task == "forget-class" else f"_{_slug(task)}"
        add(f"main{tag}", plot_method_bars, records, task=task, metrics=metrics)
        for cls in dict.fromkeys(get_forget_class(r) for r in records if r.get("task") == task):
            add(f"per_class{tag}_{_slug(cls)}", plot_per_class, records, forget_class=cls, task=task)
            add(f"forget_confusion{tag}_{_slug(cls)}", plot_forget_confusion, records, forget_class=cls, task=task)
        add(f"forgetting_curves{tag}", plot_forgetting_curves, records, task=task)
        add(f"tradeoff{tag}", plot_tradeoff, records, task=task)
    if "ablation" in tasks:
        add("ablation", plot_ablation, records, paper=paper_ablation)
    if "forget-ratio" in tasks:
        add("forget_ratio", plot_forget_ratio, records)
    if "selection" in tasks:
        add("selection", plot_selection, records)
    return figures


def reported_ablation(paper: str) -> dict | None:
    """The module ablation a paper reports, ``{variant: {"forget_acc", "retain_acc"}}`` as fractions, from
    ``clipunlearn.configs`` (``reported["ablation"]``); None when the library has no such table."""
    reported = load_paper_config(paper).get("reported", {})
    table = reported.get("ablation")
    return table if isinstance(table, dict) else None


def figures_cliperase(records: list[dict]) -> dict:
    """Notebook 10's figures; the ablation shows paper C's reported values beside ours when known."""
    return figures_unlearning(records, prefix="10", paper_ablation=reported_ablation("paper_c"))


def figures_synthetic_lipschitz(records: list[dict]) -> dict:
    """Notebook 20's record figures (the synthetic image grids need the images: drawn in the notebook); the
    BatchNorm-prior runs of ``lipschitz_synthetic`` appear as their own method (``synthetic_prior.split_priors``)."""
    return figures_unlearning(split_priors(records), prefix="20")


def figures_subgroup_forgetting(records: list[dict]) -> dict:
    """Notebook 30's record figures: the shared ones (method bars, per class, confusion, curves, tradeoff,
    selection), the ablation with paper A's Scores beside ours, and per subgroup task the Fisher layer
    ranking, the souping alpha curve and the stage-by-stage bars."""
    figures = figures_unlearning([r for r in records if not str(r.get("task")).startswith("ablation")], prefix="30")
    tasks = {r.get("task") for r in records}
    for task in sorted(t for t in tasks if str(t).startswith("ablation")):  # "ablation" (paper A's), "ablation-<tag>"
        try:
            figures[f"30_{_slug(task)}.png"] = plot_three_stage_ablation(
                records, task=task, paper=reported_three_stage_ablation() if task == "ablation" else None)
        except NoDataError:
            pass
    for task in SUBGROUP_TASKS:
        if task not in tasks:
            continue
        tag = _slug(task)
        for name, fn in (("layer_ranking", plot_layer_ranking), ("alpha_curve", plot_alpha_curve),
                         ("stages", plot_stages), ("stages_by_style", plot_stages_by_style)):
            try:
                figures[f"30_{name}_{tag}.png"] = fn(records, task=task)
            except NoDataError:
                pass
    return figures


def figures_benchmark(records: list[dict]) -> dict:
    """The cross-paper benchmark's figures: the heat map of unlearning scores and a trade-off plot per task."""
    records = split_priors(records)
    tasks = [t for t in ("forget-class", "forget-subgroup", "forget-style-subgroup")
             if any(r["task"] == t for r in records)]
    out = {}
    if any(get_metric(r, "unlearning_score") is not None for r in records):
        out["40_heatmap.png"] = plot_benchmark_heatmap(records, tasks=tasks)
    for task in tasks:
        out[f"40_tradeoff_{task}.png"] = plot_tradeoff(records, task=task)
    return out


FIGURES: dict[str, Callable[[list[dict]], dict]] = {
    "00_setup_and_baseline": figures_setup_and_baseline,
    "10_cliperase": figures_cliperase,
    "20_synthetic_lipschitz": figures_synthetic_lipschitz,
    "30_subgroup_forgetting": figures_subgroup_forgetting,
    "40_benchmark": figures_benchmark,
    "45_attacks": figures_attacks,
}


def image_figure_name(stem: str, key: str) -> str:
    """The file name of a figure drawn from images rather than records: ``<NN>_<key>.png`` (``NN`` the
    notebook's number, ``key`` made file-safe), e.g. ``("30_subgroup_forgetting", "examples sketch:sneaker")``
    -> ``30_examples_sketch_sneaker.png``."""
    return f"{stem.split('_')[0]}_{_slug(key)}.png"


def save_notebook_figures(stem: str, folder, *, records: list[dict] | None = None,
                          images: dict | None = None) -> list[Path]:
    """Save notebook ``stem``'s figures into ``folder`` and return the paths: those ``FIGURES[stem]`` draws
    from ``records`` and the ``images`` figures (``{key: figure}``, named by :func:`image_figure_name`).

    The one way notebooks save figures, so every file name comes from here."""
    if stem not in FIGURES:
        raise ValueError(f"no figures registered for {stem!r}; notebooks with figures: {', '.join(FIGURES)}")
    drawn = FIGURES[stem](records) if records is not None else {}
    drawn.update({image_figure_name(stem, key): fig for key, fig in (images or {}).items()})
    return save_figures(drawn, folder)


def draw_figures(*, profile: str = "mini", quick: bool = False, only: str | None = None, results_dir=None,
                 figures_dir=None, log=print) -> dict[str, list[Path]]:
    """Redraw the figures of every results file of ``profile`` with a ``FIGURES`` entry; return
    ``{stem: [paths]}``. ``only`` keeps stems equal to it or starting with it; a missing results file
    is reported through ``log`` and skipped."""
    check_profile(profile)
    run = get_run_name(profile, quick=quick)
    results = Path(results_dir or REPO_ROOT / "results") / run
    out = Path(figures_dir or REPO_ROOT / "figures") / run
    stems = [s for s in FIGURES if only is None or s == only or s.startswith(only)]
    if not stems:
        raise ValueError(f"no figures registered for {only!r}; notebooks with figures: {', '.join(FIGURES)}")
    drawn = {}
    for stem in stems:
        path = results / f"{stem}.json"
        if not path.exists():
            log(f"{stem}: no results at {path} (run ./run_all.sh --profile {profile} --only {stem}); skipped")
            continue
        drawn[stem] = save_figures(FIGURES[stem](load_records(path)), out)
        log(f"{stem}: {len(drawn[stem])} figure(s) in {out}: {', '.join(p.name for p in drawn[stem])}")
    for extra in sorted(results.glob("*.json")) if results.exists() else []:
        if extra.stem not in FIGURES and (only is None or extra.stem.startswith(only)):
            log(f"{extra.stem}: no figures registered (plots.FIGURES); skipped")
    return drawn


def main(argv=None) -> int:
    """``python -m clipunlearn figures [--profile mini] [--only STEM]``: redraw figures from results."""
    parser = argparse.ArgumentParser(prog="python -m clipunlearn figures", description=main.__doc__)
    parser.add_argument("--profile", default="mini", help="mini or paper (default mini)")
    parser.add_argument("--quick", action="store_true", help="the quick runs (results/quick-<profile>/)")
    parser.add_argument("--only", default=None, help="notebook stem or its prefix, e.g. 10 or 10_cliperase")
    parser.add_argument("--results-dir", default=None, help="folder holding <profile>/ (default results/)")
    parser.add_argument("--figures-dir", default=None, help="folder to write <profile>/ into (default figures/)")
    args = parser.parse_args(argv)
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib  # lazy: to choose the Agg backend before pyplot loads

        matplotlib.use("Agg")  # files only, no window
    try:
        draw_figures(profile=args.profile, quick=args.quick, only=args.only, results_dir=args.results_dir,
                     figures_dir=args.figures_dir)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    return 0
