"""Figures shared by the notebooks; each takes plain tensors or records, never a model.

The record-based functions (``plot_method_bars`` ... ``plot_tradeoff``) take a list
of result records (``docs/RESULTS.md``) and return a matplotlib Figure: bars carry
their value, the untouched model is grey or a dashed line, error bars are the
standard deviation over seeds (aggregation as in :mod:`clipunlearn.report`), and a
metric that the records lack is left out. ``FIGURES`` maps a notebook stem to the
function that draws all its figures from its records, so
``python -m clipunlearn figures`` redraws ``figures/<profile>/`` from
``results/<profile>/`` without a model.
"""

from __future__ import annotations

import re
import sys
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .configs import load_paper_config
from .paths import REPO_ROOT, check_profile, get_run_name
from .registry import method_labels
from .results import load_records
from .report import (STAGE_LABELS, check_task, class_means, get_forget_class, get_metric, get_value, mean_std,
                     method_label, metric_label, order_methods, select_records, stage_records, style_metrics)

ORIGINAL_COLOUR = "#9a9a9a"
ORACLE_LABEL = "oracle (peeks at real forget images)"


class NoDataError(ValueError):
    """The records hold nothing that a figure could show."""


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #
def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def method_colour(method: str):
    """Return the colour of ``method``, the same in every figure (grey for ``original``)."""
    import seaborn as sns

    if method == "original":
        return ORIGINAL_COLOUR
    palette = sns.color_palette("tab10", 10)
    known = [m for m in method_labels() if m != "original"]
    i = known.index(method) if method in known else zlib.crc32(method.encode())
    return palette[i % 10]


def _is_accuracy(metric: str) -> bool:
    return metric.endswith("acc") or metric in ("mia", "score")


def _format(value: float, metric: str) -> str:
    return f"{value:.2f}" if _is_accuracy(metric) else f"{value:.3g}"


def _stats(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation (ddof=1; NaN, drawn as no error bar, for one value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def _spread(std: float | None) -> float:
    return float("nan") if std is None else std


def _tops(means, stds) -> list[float]:
    return [m + (0.0 if np.isnan(s) else s) for m, s in zip(means, stds)]


def _annotate_bars(ax, xs, tops, values, metric: str, *, fontsize: float = 7, rotation: float = 0):
    """Write each bar's value just above it (``tops``: bar plus error bar), so a zero bar is visible."""
    for x, top, value in zip(xs, tops, values):
        ax.annotate(_format(value, metric), xy=(x, top), xytext=(0, 2), textcoords="offset points", ha="center",
                    va="bottom", fontsize=fontsize, rotation=rotation)


def _set_value_axis(ax, metric: str, tops: Sequence[float]):
    top = max([0.0, *tops])
    if _is_accuracy(metric):
        ax.set_ylim(0, max(1.0, top) * 1.18)
    else:
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), top * 1.2 if top > 0 else 1.0)
    ax.grid(axis="y", alpha=0.3)


def _seeds_note(records: list[dict]) -> str:
    seeds = {str(r.get("config", {}).get("seed")) for r in records if r.get("config", {}).get("seed") is not None}
    classes = {get_forget_class(r) for r in records}
    what = "mean over forget classes" if len(classes) > 1 else "mean"
    return f"{what}, error bars: std over {len(seeds)} seeds" if len(seeds) > 1 else f"{what}, one seed"


def _chosen(records: list[dict], task: str | None, **select) -> list[dict]:
    if task is not None:
        check_task(records, task)
    chosen = select_records(records, task=task, **select)
    if not chosen:
        raise NoDataError(f"no usable records of task {task!r} with {select}")
    return chosen


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower() or "all"


def _grid(n: int, *, max_cols: int = 4, cell=(3.6, 3.0)):
    plt = _pyplot()
    cols = min(max_cols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cell[0] * cols, cell[1] * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.remove()
    return fig, list(axes.flat[:n])


# --------------------------------------------------------------------------- #
# Figures from records
# --------------------------------------------------------------------------- #
def plot_method_bars(records: list[dict], *, task: str = "forget-class",
                     metrics: Sequence[str] = ("forget_acc", "retain_acc", "other_acc"),
                     methods: Sequence[str] | None = None, title: str = ""):
    """Grouped bars per method (original first), one panel per metric: mean over forget classes with
    the standard deviation over seeds, and one dot per forget class (mean over seeds) when there are
    several classes. The original model is a grey bar and a dashed line."""
    chosen = _chosen(records, task)
    metrics = [m for m in metrics if any(get_metric(r, m) is not None for r in chosen)]
    if not metrics:
        raise NoDataError(f"the {task} records have none of the metrics; pass metrics= with names they hold")
    order = order_methods([r["method"] for r in chosen], methods)
    if not order:
        raise NoDataError(f"none of the methods {list(methods or [])} in the {task} records")
    plt = _pyplot()
    width = max(3.2, 0.55 * len(order) + 1.0)
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        xs, means, stds, dots_label = [], [], [], "per forget class"
        for i, method in enumerate(order):
            group = [r for r in chosen if r["method"] == method]
            mean, std, _ = mean_std(group, metric)
            if mean is None:
                continue  # this method lacks the metric: no bar
            xs.append(i), means.append(mean), stds.append(_spread(std))
            per_class = class_means(group, metric)
            if len(per_class) > 1:
                ax.scatter(i + np.linspace(-0.18, 0.18, len(per_class)), list(per_class.values()), s=12,
                           color="black", zorder=3, label=dots_label)
                dots_label = None
        ax.bar(xs, means, yerr=stds, capsize=3, color=[method_colour(order[i]) for i in xs], edgecolor="black",
               linewidth=0.5, error_kw={"elinewidth": 0.8})
        tops = _tops(means, stds)
        _annotate_bars(ax, xs, tops, means, metric)
        original, _, _ = mean_std([r for r in chosen if r["method"] == "original"], metric)
        if original is not None:
            ax.axhline(original, color=ORIGINAL_COLOUR, linestyle="--", linewidth=1, label="original", zorder=0)
        ax.set_xticks(range(len(order)), [method_label(m) for m in order], rotation=30, ha="right")
        ax.set_title(metric_label(metric), fontsize=10)
        _set_value_axis(ax, metric, tops)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        axes[0, 0].legend(handles, labels, fontsize=7, loc="upper right")
    fig.suptitle(title or f"{task}: {_seeds_note(chosen)}", fontsize=10)
    fig.tight_layout()
    return fig


def _nested_stats(records: list[dict], key: str, names: Sequence[str]) -> tuple[list, list]:
    """Mean and std over records of ``metrics[key][name]`` for each name (NaN where no record has it)."""
    means, stds = [], []
    for name in names:
        values = [r["metrics"][key][name] for r in records
                  if isinstance(r["metrics"].get(key), dict) and r["metrics"][key].get(name) is not None]
        mean, std = _stats(values) if values else (float("nan"), float("nan"))
        means.append(mean), stds.append(std)
    return means, stds


def _highlight_ticks(ax, names: Sequence[str], forget: Sequence[str]):
    for name, label in zip(names, ax.get_xticklabels()):
        if name in forget:
            label.set_color("crimson")
            label.set_fontweight("bold")


def plot_per_class(records: list[dict], *, forget_class: str, methods: Sequence[str] | None = None,
                   task: str = "forget-class"):
    """Per-class test accuracy before (original, grey) and after each method, one panel per method,
    the forget class shaded and its label in red; from ``metrics.per_class_acc``."""
    chosen = _chosen(records, task, forget_class=forget_class)
    chosen = [r for r in chosen if isinstance(r["metrics"].get("per_class_acc"), dict)]
    if not chosen:
        raise NoDataError(f"no {task} record for {forget_class!r} has metrics.per_class_acc")
    order = order_methods([r["method"] for r in chosen], methods)
    after = [m for m in order if m != "original"] or order
    names = list(dict.fromkeys(c for r in chosen for c in r["metrics"]["per_class_acc"]))
    forget = forget_class.split("+")
    before = [r for r in chosen if r["method"] == "original"]
    plt = _pyplot()
    fig, axes = plt.subplots(len(after), 1, figsize=(max(6.0, 0.75 * len(names) + 1.5), 2.6 * len(after)),
                             squeeze=False, sharex=True)
    xs = np.arange(len(names))
    for ax, method in zip(axes[:, 0], after):
        runs = [r for r in chosen if r["method"] == method]
        series = [(method, runs)] if method == "original" or not before else [("original", before), (method, runs)]
        width = 0.8 / len(series)
        for j, (name, group) in enumerate(series):
            means, stds = _nested_stats(group, "per_class_acc", names)
            keep = [i for i, m in enumerate(means) if not np.isnan(m)]
            offset = (j - (len(series) - 1) / 2) * width
            label = "before (original)" if name == "original" and method != "original" else method_label(name)
            ax.bar(xs[keep] + offset, [means[i] for i in keep], width=width, yerr=[stds[i] for i in keep],
                   capsize=2, color=method_colour(name), edgecolor="black", linewidth=0.4, label=label,
                   error_kw={"elinewidth": 0.7})
            _annotate_bars(ax, xs[keep] + offset, _tops([means[i] for i in keep], [stds[i] for i in keep]),
                           [means[i] for i in keep], "acc", fontsize=6, rotation=90)
        for i, name in enumerate(names):
            if name in forget:
                ax.axvspan(i - 0.5, i + 0.5, color="crimson", alpha=0.08, zorder=0)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{method_label(method)}: per-class accuracy, forget {forget_class!r} shaded", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
        ax.set_ylim(0, 1.3)  # room for the rotated values above 1.0
        ax.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xticks(xs, names, rotation=30, ha="right")
    _highlight_ticks(axes[-1, 0], names, forget)
    fig.tight_layout()
    return fig


def plot_forget_confusion(records: list[dict], *, forget_class: str, methods: Sequence[str] | None = None,
                          task: str = "forget-class"):
    """Heat map of where the forget class's test images go: one row per method (original first),
    columns the predicted class, mean over seeds; from ``metrics.forget_confusion``."""
    import seaborn as sns

    chosen = _chosen(records, task, forget_class=forget_class)
    chosen = [r for r in chosen if isinstance(r["metrics"].get("forget_confusion"), dict)]
    if not chosen:
        raise NoDataError(f"no {task} record for {forget_class!r} has metrics.forget_confusion")
    order = order_methods([r["method"] for r in chosen], methods)
    names = list(dict.fromkeys(c for r in chosen for c in r["metrics"]["forget_confusion"]))
    matrix = np.array([_nested_stats([r for r in chosen if r["method"] == m], "forget_confusion", names)[0]
                       for m in order])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(0.62 * len(names) + 2.2, 0.42 * len(order) + 1.6))
    sns.heatmap(matrix, annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=ax,
                xticklabels=names, yticklabels=[method_label(m) for m in order], annot_kws={"fontsize": 7},
                linewidths=0.4, linecolor="white")
    forget = forget_class.split("+")
    for i, name in enumerate(names):
        if name in forget:
            ax.add_patch(plt.Rectangle((i, 0), 1, len(order), fill=False, edgecolor="crimson", linewidth=1.5))
    _highlight_ticks(ax, names, forget)
    ax.set_xticklabels(ax.get_xticklabels(), rotation=30, ha="right")
    ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    ax.set_xlabel("predicted class")
    ax.set_title(f"where test images of {forget_class!r} go (fraction per row)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_forgetting_curves(records: list[dict], *, task: str = "forget-class",
                           keys: Sequence[str] = ("val_forget_acc", "val_retain_acc"), min_points: int = 4,
                           methods: Sequence[str] | None = None):
    """Validation curves from each record's ``history`` (``{"step", key...}`` entries): one panel per
    method (and forget class, when there are several), mean over seeds with a +-std band; a run with
    fewer than ``min_points`` evaluations is drawn as markers only. Dotted lines: the selected steps."""
    runs = [r for r in _chosen(records, task) if r.get("history")]
    keys = [k for k in keys if any(h.get(k) is not None and "step" in h for r in runs for h in r["history"])]
    if not runs or not keys:
        raise NoDataError(f"no {task} record has a history with 'step' and one of the keys")
    order = order_methods([r["method"] for r in runs], methods)
    classes = list(dict.fromkeys(get_forget_class(r) for r in runs))
    if len(classes) == 1:
        fig, axes = _grid(len(order))
        panels = [(classes[0], m) for m in order]
    else:
        plt = _pyplot()
        fig, grid = plt.subplots(len(classes), len(order), figsize=(3.6 * len(order), 3.0 * len(classes)),
                                 squeeze=False, sharey=True)
        axes, panels = list(grid.flat), [(c, m) for c in classes for m in order]
    for ax, (cls, method) in zip(axes, panels):
        group = [r for r in runs if r["method"] == method and get_forget_class(r) == cls]
        for k, key in enumerate(keys):
            series = [{h["step"]: h[key] for h in r["history"] if "step" in h and h.get(key) is not None}
                      for r in group]
            series = [s for s in series if s]
            if not series:
                continue
            steps = sorted({step for s in series for step in s})
            stats = [_stats([s[step] for s in series if step in s]) for step in steps]
            means, stds = np.array([m for m, _ in stats]), np.array([s for _, s in stats])
            colour = f"C{k}"
            if max(len(s) for s in series) >= min_points:
                ax.plot(steps, means, color=colour, label=metric_label(key))
                if len(series) > 1:
                    ax.fill_between(steps, means - stds, means + stds, color=colour, alpha=0.2, linewidth=0)
            else:  # too few evaluations to draw a curve through
                ax.errorbar(steps, means, yerr=stds, fmt="o", color=colour, capsize=2, label=metric_label(key))
            reference = [get_metric(r, key) for r in select_records(records, task=task, method="original",
                                                                     forget_class=cls)]
            reference = [v for v in reference if v is not None]
            if reference and method != "original":
                ax.axhline(np.mean(reference), color=colour, linestyle="--", linewidth=0.8, alpha=0.7)
        for step in sorted({r["metrics"].get("best_step") for r in group} - {None}):
            ax.axvline(step, color="black", linestyle=":", linewidth=0.8)
        where = f" / {cls}" if len(classes) > 1 else ""
        ax.set_title(f"{method_label(method)}{where} ({len(group)} run{'s' * (len(group) != 1)})", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7)
    fig.suptitle("validation curves (dashed: original, dotted: selected step)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_ablation(records: list[dict], *, task: str = "ablation", variants_key: str = "variant",
                  paper: dict | None = None, metrics: Sequence[str] = ("forget_acc", "retain_acc"),
                  paper_label: str = "paper (CIFAR-100, ViT)"):
    """Our forget / retain accuracy per variant (mean +- std over seeds), and, with
    ``paper = {variant: {metric: fraction}}``, the paper's values as hatched bars beside ours."""
    chosen = [r for r in _chosen(records, task) if get_value(r, variants_key) is not None]
    if not chosen:
        raise NoDataError(f"no {task} record has config.{variants_key}")
    paper = paper or {}
    metrics = [m for m in metrics if any(get_metric(r, m) is not None for r in chosen)]
    if not metrics:
        raise NoDataError(f"the {task} records have none of the metrics")
    variants = list(dict.fromkeys([*paper, *(str(get_value(r, variants_key)) for r in chosen)]))  # paper's order
    profile = chosen[0].get("config", {}).get("profile", "mini")
    originals = [r for r in select_records(records, method="original")
                 if r.get("task") in (task, "forget-class")
                 and get_forget_class(r) in {get_forget_class(c) for c in chosen}]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(3.4, 1.1 * len(variants) + 1.2) * len(metrics), 3.6),
                             squeeze=False)
    width = 0.38 if paper else 0.6
    for ax, metric in zip(axes[0], metrics):
        tops = []
        ours = [(i, *mean_std([r for r in chosen if str(get_value(r, variants_key)) == v], metric)[:2])
                for i, v in enumerate(variants)]
        ours = [(i, m, _spread(s)) for i, m, s in ours if m is not None]
        xs = [i - width / 2 if paper else i for i, _, _ in ours]
        ax.bar(xs, [m for _, m, _ in ours], width=width, yerr=[s for _, _, s in ours], capsize=3, color="C0",
               edgecolor="black", linewidth=0.5, label=f"ours ({profile})")
        tops += _tops([m for _, m, _ in ours], [s for _, _, s in ours])
        _annotate_bars(ax, xs, tops, [m for _, m, _ in ours], metric)
        theirs = [(i, paper[v][metric]) for i, v in enumerate(variants)
                  if isinstance(paper.get(v), dict) and paper[v].get(metric) is not None]
        if theirs:
            xs = [i + width / 2 for i, _ in theirs]
            ax.bar(xs, [v for _, v in theirs], width=width, facecolor="white", edgecolor="C1", hatch="///",
                   linewidth=1.0, label=paper_label)
            _annotate_bars(ax, xs, [v for _, v in theirs], [v for _, v in theirs], metric)
            tops += [v for _, v in theirs]
        mean, _, _ = mean_std(originals, metric)
        if mean is not None:
            ax.axhline(mean, color=ORIGINAL_COLOUR, linestyle="--", linewidth=1, label=f"original ({profile})",
                       zorder=0)
        ax.set_xticks(range(len(variants)), variants)
        ax.set_title(metric_label(metric), fontsize=10)
        _set_value_axis(ax, metric, tops)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_forget_ratio(records: list[dict], *, task: str = "forget-ratio",
                      metrics: Sequence[str] = ("forget_acc", "retain_acc"), methods: Sequence[str] | None = None):
    """Grouped bars: one group per forget ratio (``config.forget_ratio``), one bar per method."""
    chosen = [r for r in _chosen(records, task) if isinstance(get_value(r, "forget_ratio"), (int, float))]
    if not chosen:
        raise NoDataError(f"no {task} record has config.forget_ratio")
    metrics = [m for m in metrics if any(get_metric(r, m) is not None for r in chosen)]
    if not metrics:
        raise NoDataError(f"the {task} records have none of the metrics")
    ratios = sorted({float(get_value(r, "forget_ratio")) for r in chosen})
    order = order_methods([r["method"] for r in chosen], methods)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.0, (0.35 * len(order) + 0.5) * len(ratios) + 1.5)
                                                        * len(metrics), 3.6), squeeze=False)
    width = 0.8 / len(order)
    for ax, metric in zip(axes[0], metrics):
        tops = []
        for j, method in enumerate(order):
            bars = []
            for i, ratio in enumerate(ratios):
                group = [r for r in chosen if r["method"] == method and float(get_value(r, "forget_ratio")) == ratio]
                mean, std, _ = mean_std(group, metric)
                if mean is not None:
                    bars.append((i + (j - (len(order) - 1) / 2) * width, mean, _spread(std)))
            if not bars:
                continue
            xs, means, stds = zip(*bars)
            ax.bar(xs, means, width=width, yerr=stds, capsize=2, color=method_colour(method), edgecolor="black",
                   linewidth=0.4, label=method_label(method), error_kw={"elinewidth": 0.7})
            bar_tops = _tops(means, stds)
            _annotate_bars(ax, xs, bar_tops, means, metric, fontsize=6, rotation=90 if len(order) > 3 else 0)
            tops += bar_tops
        ax.set_xticks(range(len(ratios)), [f"{r:.0%}" for r in ratios])
        ax.set_xlabel("share of classes forgotten")
        ax.set_title(metric_label(metric), fontsize=10)
        _set_value_axis(ax, metric, tops)
        if _is_accuracy(metric):
            ax.set_ylim(0, 1.3)
    axes[0, 0].legend(fontsize=7, ncol=min(4, len(order)), loc="upper left")
    fig.tight_layout()
    return fig


def plot_selection(records: list[dict], *, task: str = "selection", score: str = "score",
                   methods: Sequence[str] | None = None):
    """Validation ``score`` against the learning rate (log x), one panel per method: mean over forget
    classes and seeds (+- std), the chosen candidates as stars. Oracle numbers (candidates with
    ``config.oracle`` true, or a ``metrics.oracle_<score>`` beside the validation score) are a dashed
    line of hollow squares labelled as peeking at real forget images."""
    from matplotlib.ticker import NullFormatter

    chosen = [r for r in _chosen(records, task)
              if isinstance(get_value(r, "lr"), (int, float)) and get_metric(r, score) is not None]
    if not chosen:
        raise NoDataError(f"no {task} record has config.lr and metrics.{score}")
    order = order_methods([r["method"] for r in chosen], methods)
    criterion = next((r["config"]["criterion"] for r in chosen if r["config"].get("criterion")), score)
    fig, axes = _grid(len(order))
    for ax, method in zip(axes, order):
        runs = [r for r in chosen if r["method"] == method]
        honest = [r for r in runs if not r["config"].get("oracle")]
        series = [(False, honest, score), (True, [r for r in runs if r["config"].get("oracle")], score),
                  (True, [r for r in honest if get_metric(r, f"oracle_{score}") is not None], f"oracle_{score}")]
        lrs_seen = set()
        for oracle, group, key in series:
            if not group:
                continue
            lrs = sorted({float(r["config"]["lr"]) for r in group})
            stats = [_stats([get_metric(r, key) for r in group if float(r["config"]["lr"]) == lr]) for lr in lrs]
            ax.errorbar(lrs, [m for m, _ in stats], yerr=[s for _, s in stats], capsize=2,
                        color="C3" if oracle else method_colour(method), linestyle="--" if oracle else "-",
                        marker="s" if oracle else "o", markerfacecolor="white" if oracle else None,
                        label=ORACLE_LABEL if oracle else "validation")
            picked = [r for r in group if r["config"].get("selected")]
            if picked:
                style = (dict(marker="o", s=170, facecolor="none", edgecolor="C3", linewidth=1.5, zorder=6,
                              label="selected (oracle)") if oracle else
                         dict(marker="*", s=130, color="gold", edgecolor="black", linewidth=0.6, zorder=5,
                              label="selected"))
                ax.scatter([r["config"]["lr"] for r in picked], [get_metric(r, key) for r in picked], **style)
            lrs_seen.update(lrs)
        ax.set_xscale("log")
        ax.set_xticks(sorted(lrs_seen), [f"{lr:.0e}" for lr in sorted(lrs_seen)], fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("learning rate")
        ax.set_title(method_label(method), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel(f"validation {criterion}")
    fig.tight_layout()
    return fig


def plot_tradeoff(records: list[dict], *, task: str | None = "forget-class", methods: Sequence[str] | None = None,
                  x: str = "forget_acc", y: str = "retain_acc"):
    """Forget against retain accuracy: a faint point per run and the mean (+- std over seeds on both
    axes) per method, labelled; the original model as a grey star. ``task=None`` uses every task."""
    chosen = [r for r in _chosen(records, task) if get_metric(r, x) is not None and get_metric(r, y) is not None]
    if not chosen:
        raise NoDataError(f"no {task} record has both {x} and {y}")
    order = order_methods([r["method"] for r in chosen], methods)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    for method in order:
        group = [r for r in chosen if r["method"] == method]
        colour = method_colour(method)
        if len(group) > 1:
            ax.scatter([get_metric(r, x) for r in group], [get_metric(r, y) for r in group], s=12, color=colour,
                       alpha=0.35, linewidths=0)
        (mx, sx, _), (my, sy, _) = mean_std(group, x), mean_std(group, y)
        ax.errorbar(mx, my, xerr=_spread(sx), yerr=_spread(sy), fmt="*" if method == "original" else "o",
                    markersize=11 if method == "original" else 7, color=colour, markeredgecolor="black",
                    capsize=2, label=method_label(method))
        ax.annotate(method_label(method), xy=(mx, my), xytext=(5, 4), textcoords="offset points", fontsize=7)
    ax.set_xlabel(f"{metric_label(x)} (lower is better)")
    ax.set_ylabel(f"{metric_label(y)} (higher is better)")
    ax.set_title("forgetting vs retention (mean, error bars: std over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- #
# Figures from tensors (also used by the registry with stored lists)
# --------------------------------------------------------------------------- #
def plot_benchmark_heatmap(records: list[dict], *, tasks: Sequence[str], methods: Sequence[str] | None = None,
                           metric: str = "unlearning_score"):
    """Methods x tasks heat map of ``metric`` (mean over seeds, annotated "mean\n± sd"); the original is left out."""
    import numpy as np

    present = [r for r in records if r["task"] in tasks and r["method"] != "original"
               and get_metric(r, metric) is not None]
    if not present:
        raise NoDataError(f"no record of the tasks {list(tasks)} has {metric}")
    order = [m for m in order_methods([r["method"] for r in present], methods) if m != "original"]
    values = np.full((len(order), len(tasks)), np.nan)
    labels = [["" for _ in tasks] for _ in order]
    for i, method in enumerate(order):
        for j, task in enumerate(tasks):
            mean, std, n = mean_std([r for r in present if r["method"] == method and r["task"] == task], metric)
            if mean is not None:
                values[i, j] = mean
                labels[i][j] = f"{mean:.2f}" + (f"\n± {std:.2f}" if std is not None and n > 1 else "")
    plt = _pyplot()
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.9 * len(tasks) + 2.2, 0.5 * len(order) + 1.4))
    sns.heatmap(values, annot=np.array(labels, dtype=object), fmt="", cmap="viridis", vmin=0, vmax=1, ax=ax,
                xticklabels=list(tasks), yticklabels=[method_label(m) for m in order], annot_kws={"fontsize": 7},
                cbar_kws={"label": metric_label(metric)})
    ax.set_title(f"{metric_label(metric)} (1 = forgets the target, keeps everything else)", fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path) -> Path:
    """Save ``fig`` as PNG (150 dpi, tight) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def save_figures(figures: dict, folder) -> list[Path]:
    """Save ``{file name: figure}`` into ``folder``, close the figures, and return the paths."""
    plt = _pyplot()
    paths = []
    for name, fig in figures.items():
        paths.append(save_figure(fig, Path(folder) / name))
        plt.close(fig)
    return paths


def plot_image_grid(images: torch.Tensor, *, row_labels: Sequence[str] = (), col_labels: Sequence[str] = (),
                    titles: Sequence[str] | None = None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                    cell: float = 1.1):
    """Plot normalised images ``[R, C, 3, H, W]`` as a grid; return the figure."""
    plt = _pyplot()
    rows, cols = images.shape[:2]
    pixels = images * torch.tensor(std).view(1, 1, 3, 1, 1) + torch.tensor(mean).view(1, 1, 3, 1, 1)
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * rows), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(pixels[r, c].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if titles is not None:
                ax.set_title(titles[r * cols + c], fontsize=7)
            if c == 0 and row_labels:
                ax.set_ylabel(row_labels[r], fontsize=8)
            if r == 0 and col_labels and titles is None:
                ax.set_title(col_labels[c], fontsize=8)
    fig.tight_layout()
    return fig


def plot_confusion(matrix, classnames: Sequence[str], *, title: str = ""):
    """Plot a row-normalised confusion matrix (tensor, array or nested list) as a heatmap; return the figure."""
    import seaborn as sns

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(0.55 * len(classnames) + 2, 0.5 * len(classnames) + 1.5))
    sns.heatmap(np.asarray(matrix, dtype=float), annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, cbar=False,
                xticklabels=classnames, yticklabels=classnames, ax=ax, annot_kws={"fontsize": 7})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_curves(history: Sequence[dict], *, x: str, ys: Sequence[str], title: str = "", xlabel: str | None = None,
                ylabel: str = ""):
    """Plot one line per key of ``ys`` against ``x`` from a list of dicts; return the figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for y in ys:
        points = [(h[x], h[y]) for h in history if h.get(y) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=y)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_embedding_map(points, labels: Sequence[str], *, kinds: Sequence[str], title: str = ""):
    """Scatter 2-D ``points`` (tensor, array or list of pairs) coloured by label: images as dots, texts as
    large crosses; return the figure."""
    import seaborn as sns

    plt = _pyplot()
    points = np.asarray(points, dtype=float)
    names = list(dict.fromkeys([lab for lab, k in zip(labels, kinds) if k == "text"] + list(labels)))  # class order
    colours = dict(zip(names, sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))))
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name in names:
        for kind, marker, size in (("image", "o", 8), ("text", "X", 140)):
            sel = [i for i, (lab, k) in enumerate(zip(labels, kinds)) if lab == name and k == kind]
            if sel:
                ax.scatter(points[sel, 0], points[sel, 1], s=size, marker=marker, color=colours[name], alpha=0.8,
                           edgecolors="black" if kind == "text" else "none", linewidths=0.6,
                           label=name if kind == "image" else None)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title + "\n(dots: images, crosses: class prompts)")
    ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left", markerscale=2)
    fig.tight_layout()
    return fig


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
    """Notebook 20's record figures (the synthetic image grids need the images: drawn in the notebook)."""
    return figures_unlearning(records, prefix="20")


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


def plot_prediction_grid(images: torch.Tensor, *, labels: Sequence[int], predictions: dict, classnames: Sequence[str],
                         mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), cell: float = 1.0):
    """Images ``[N, 3, H, W]`` in columns, one row per model in ``predictions`` (``{row label: [class index per
    image]}``, e.g. before and after each stage); each cell is titled with the predicted class, green when
    it is the true class (``labels``), red otherwise; the true class under the last row."""
    plt = _pyplot()
    rows = list(predictions)
    n = len(images)
    pixels = (images * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)).clamp(0, 1)
    fig, axes = plt.subplots(len(rows), n, figsize=(cell * n, (cell + 0.25) * len(rows) + 0.3), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(pixels[j].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            pred = int(predictions[row][j])
            ax.set_title(classnames[pred], fontsize=6, color="green" if pred == int(labels[j]) else "crimson")
            if j == 0:
                ax.set_ylabel(row, fontsize=7)
            if i == len(rows) - 1:
                ax.set_xlabel(f"true: {classnames[int(labels[j])]}", fontsize=6)
    fig.tight_layout()
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
}


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
    import argparse

    parser = argparse.ArgumentParser(prog="python -m clipunlearn figures", description=main.__doc__)
    parser.add_argument("--profile", default="mini", help="mini or paper (default mini)")
    parser.add_argument("--quick", action="store_true", help="the quick runs (results/quick-<profile>/)")
    parser.add_argument("--only", default=None, help="notebook stem or its prefix, e.g. 10 or 10_cliperase")
    parser.add_argument("--results-dir", default=None, help="folder holding <profile>/ (default results/)")
    parser.add_argument("--figures-dir", default=None, help="folder to write <profile>/ into (default figures/)")
    args = parser.parse_args(argv)
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib

        matplotlib.use("Agg")  # files only, no window
    try:
        draw_figures(profile=args.profile, quick=args.quick, only=args.only, results_dir=args.results_dir,
                     figures_dir=args.figures_dir)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    return 0
