"""Paper A's figures (notebook 30): layer ranking, alpha curve, stages, style breakdown, examples, ablation."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..configs import load_paper_config
from ..report import (STAGE_LABELS, get_forget_class, get_metric, get_value, mean_std, method_label, metric_label,
                      stage_records, style_metrics)
from .common import NoDataError, _annotate_bars, _chosen, _grid, _pyplot, _seeds_note, _spread, _stats, _tops
from .records import plot_method_bars
from .tensors import plot_prediction_grid

# --------------------------------------------------------------------------- #
# Paper A (notebook 30): subgroup forgetting in three stages
# --------------------------------------------------------------------------- #
SUBGROUP_TASKS = ("forget-subgroup", "forget-style-subgroup")


def _three_stage_runs(records: list[dict], task: str, method: str, key: str) -> list[dict]:
    runs = [r for r in _chosen(records, task, method=method)
            if isinstance(r.get("three_stage"), dict) and r["three_stage"].get(key)]
    if not runs:
        raise NoDataError(f"no {method!r} record of task {task!r} has three_stage.{key}")
    return runs


def plot_layer_ranking(records: list[dict], *, task: str = "forget-subgroup", method: str = "three_stage",
                       top: int = 12):
    """Paper A's relative Fisher score per layer (log scale), the ``top`` layers by mean over seeds, one
    dot per seed; the layers the forgetting stage tuned are red. One panel per forget class; from
    ``three_stage.layer_scores`` / ``three_stage.layers``."""
    runs = _three_stage_runs(records, task, method, "layer_scores")
    classes = list(dict.fromkeys(get_forget_class(r) for r in runs))
    fig, axes = _grid(len(classes), max_cols=2, cell=(5.6, 0.32 * top + 1.4))
    for ax, cls in zip(axes, classes):
        group = [r for r in runs if get_forget_class(r) == cls]
        scores: dict[str, list[float]] = {}
        for r in group:
            for name, value in r["three_stage"]["layer_scores"]:
                scores.setdefault(name, []).append(float(value))
        tuned = {name for r in group for name in r["three_stage"].get("layers", [])}
        ranked = sorted(scores, key=lambda n: -np.mean(scores[n]))[:top][::-1]
        ys = np.arange(len(ranked))
        ax.barh(ys, [np.mean(scores[n]) for n in ranked], color=["crimson" if n in tuned else "C0" for n in ranked],
                edgecolor="black", linewidth=0.4)
        for y, name in zip(ys, ranked):
            ax.scatter(scores[name], [y] * len(scores[name]), s=8, color="black", zorder=3)
        ax.set_yticks(ys, ranked, fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("relative Fisher  E_Df[g^2] / E_Dr[g^2]")
        ax.set_title(f"{cls}: layer ranking (red: tuned; {len(group)} seed{'s' * (len(group) != 1)})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_alpha_curve(records: list[dict], *, task: str = "forget-subgroup", method: str = "three_stage",
                     keys: Sequence[str] = ("forget_acc", "sibling_acc", "retain_acc")):
    """Restoring stage: calibration accuracy against the soup weight alpha (0: original, 1: unlearned
    model), mean +- std over seeds, and the chosen alpha of each seed (dotted lines). One panel per
    forget class; from ``three_stage.alpha_curve`` / ``three_stage.alpha``."""
    runs = _three_stage_runs(records, task, method, "alpha_curve")
    classes = list(dict.fromkeys(get_forget_class(r) for r in runs))
    fig, axes = _grid(len(classes), max_cols=2, cell=(4.6, 3.4))
    for ax, cls in zip(axes, classes):
        group = [r for r in runs if get_forget_class(r) == cls]
        for k, key in enumerate(keys):
            points: dict[float, list[float]] = {}
            for r in group:
                for row in r["three_stage"]["alpha_curve"]:
                    if row.get(key) is not None:
                        points.setdefault(float(row["alpha"]), []).append(float(row[key]))
            if not points:
                continue
            alphas = sorted(points)
            stats = [_stats(points[a]) for a in alphas]
            means, stds = np.array([m for m, _ in stats]), np.array([sd for _, sd in stats])
            ax.plot(alphas, means, marker="o", markersize=3, color=f"C{k}", label=f"calibration {key}")
            if len(group) > 1:
                ax.fill_between(alphas, means - stds, means + stds, color=f"C{k}", alpha=0.2, linewidth=0)
        for i, alpha in enumerate(sorted({float(r["three_stage"]["alpha"]) for r in group})):
            ax.axvline(alpha, color="black", linestyle=":", linewidth=1, label="chosen alpha" if i == 0 else None)
        ax.set_xlabel("alpha (weight of the unlearned model)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{cls}: souping on the calibration images", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_stages(records: list[dict], *, task: str = "forget-subgroup", method: str = "three_stage",
                metrics: Sequence[str] = ("forget_acc", "sibling_acc", "retain_acc", "other_acc")):
    """Test metrics stage by stage (original, after forgetting, after reminding, after restoring), mean
    +- std over seeds; from the ``after_<stage>/<metric>`` metrics of the three-stage records."""
    try:
        staged = stage_records(records, task=task, method=method)
    except ValueError as err:
        raise NoDataError(str(err)) from err
    if not any(r["method"] in list(STAGE_LABELS.values())[:2] for r in staged):
        raise NoDataError(f"the {method!r} records of {task!r} have no after_<stage>/ metrics")
    return plot_method_bars(staged, task=task, metrics=metrics, methods=list(STAGE_LABELS.values()),
                            title=f"{method_label(method)} stage by stage, {task} ({_seeds_note(staged)})")


def plot_stages_by_style(records: list[dict], *, task: str = "forget-style-subgroup", method: str = "three_stage"):
    """:func:`plot_stages` with each style apart: the forgotten subgroup, then the kept styles of its class
    (``sibling_acc@<style>``) and the other classes in the other styles (``other_acc@<style>``)."""
    styled = style_metrics(r for r in records if r.get("task") == task and r["method"] == method)
    if not styled:
        raise NoDataError(f"the {method!r} records of {task!r} have no per-style metrics (<set>_acc@<style>)")
    return plot_stages(records, task=task, method=method, metrics=("forget_acc", *styled, "retain_acc"))


def plot_three_stage_examples(record: dict, *, dataset, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
    """The test images a three-stage record kept as examples (``run_three_stage(examples=...)``, indices into
    ``dataset``) with the class predicted by the original model and after each stage
    (:func:`plot_prediction_grid`)."""
    shown = record.get("three_stage", {}).get("examples")
    if not shown:
        raise NoDataError("the record has no three_stage examples (run_three_stage with examples > 0)")
    images = torch.stack([dataset[i][0] for i in shown["indices"]])
    rows = {"original": shown["original"], **{label: shown[stage] for stage, label in STAGE_LABELS.items()}}
    fig = plot_prediction_grid(images, labels=shown["labels"], predictions=rows, classnames=dataset.classnames,
                               mean=mean, std=std)
    config = record["config"]
    fig.suptitle(f"forget {config.get('forget_class')!r} (seed {config.get('seed')}): predictions before and after "
                 "each stage", fontsize=9, y=1.02)
    return fig


def plot_three_stage_ablation(records: list[dict], *, task: str = "ablation", variants_key: str = "variant",
                              metrics: Sequence[str] = ("forget_acc", "sibling_acc", "retain_acc", "unlearning_score"),
                              paper: dict | None = None, paper_metric: str = "unlearning_score",
                              paper_label: str = "paper A Score (ImageNet, RN50)"):
    """One group of bars per variant (``config.variant``), one bar per metric (mean +- std over seeds),
    and, with ``paper = {variant: {paper_metric: value}}``, the paper's value as a hatched bar beside
    them. Variants in the paper's order, then as they come."""
    chosen = [r for r in _chosen(records, task) if get_value(r, variants_key) is not None]
    if not chosen:
        raise NoDataError(f"no {task} record has config.{variants_key}")
    metrics = [m for m in metrics if any(get_metric(r, m) is not None for r in chosen)]
    if not metrics:
        raise NoDataError(f"the {task} records have none of the metrics")
    paper = paper or {}
    present = list(dict.fromkeys(str(get_value(r, variants_key)) for r in chosen))
    variants = [v for v in paper if v in present] + [v for v in present if v not in paper]
    has_paper = any(isinstance(paper.get(v), dict) and paper[v].get(paper_metric) is not None for v in variants)
    n_bars = len(metrics) + has_paper
    width = 0.8 / n_bars
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.95 * len(variants) + 1.8), 3.8))
    xs = np.arange(len(variants))
    for j, metric in enumerate(metrics):
        stats = [mean_std([r for r in chosen if str(get_value(r, variants_key)) == v], metric)[:2] for v in variants]
        keep = [i for i, (m, _) in enumerate(stats) if m is not None]
        pos = xs[keep] + (j - (n_bars - 1) / 2) * width
        means = [stats[i][0] for i in keep]
        stds = [_spread(stats[i][1]) for i in keep]
        ax.bar(pos, means, width=width, yerr=stds, capsize=2, color=f"C{j}", edgecolor="black", linewidth=0.4,
               label=metric_label(metric), error_kw={"elinewidth": 0.7})
        _annotate_bars(ax, pos, _tops(means, stds), means, metric, fontsize=6, rotation=90)
    if has_paper:
        keep = [i for i, v in enumerate(variants)
                if isinstance(paper.get(v), dict) and paper[v].get(paper_metric) is not None]
        pos = xs[keep] + (n_bars - 1 - (n_bars - 1) / 2) * width
        values = [paper[variants[i]][paper_metric] for i in keep]
        ax.bar(pos, values, width=width, facecolor="white", edgecolor="C3", hatch="///", linewidth=0.8,
               label=paper_label)
        _annotate_bars(ax, pos, values, values, paper_metric, fontsize=6, rotation=90)
    ax.set_xticks(xs, variants, rotation=20, ha="right")
    ax.set_ylim(0, 1.35)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(5, n_bars), loc="upper left")
    targets = ", ".join(dict.fromkeys(str(get_value(r, "forget_class")) for r in chosen
                                      if get_value(r, "forget_class") is not None))
    ax.set_title(f"ablations{f' on {targets}' if targets else ''} ({_seeds_note(chosen)})", fontsize=10)
    fig.tight_layout()
    return fig


def reported_three_stage_ablation() -> dict:
    """Paper A's ablation Scores as ``{variant: {"unlearning_score": value}}`` in our variant names (the
    paper's "without relative Fisher" does not say how layers were picked: shown at both of ours)."""
    scores = load_paper_config("paper_a")["reported"]["ablation_score"]
    names = {"none": None, "full": "full", "no_fisher_all": "without_relative_fisher",
             "no_fisher_random": "without_relative_fisher", "no_align": "without_alignment", "no_distill": None,
             "no_soup": "without_souping", "no_lora": "without_lora"}
    return {ours: ({"unlearning_score": scores[theirs]} if theirs in scores else {}) for ours, theirs in names.items()}


