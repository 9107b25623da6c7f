"""Figures from result records: bars per method, per class, confusion, curves, ablations, forget ratio, selection, trade-off and the benchmark heatmap."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..report import (class_means, get_forget_class, get_metric, get_value, mean_std, method_label, metric_label,
                      order_methods, select_records)
from .common import (ORACLE_LABEL, ORIGINAL_COLOUR, NoDataError, _annotate_bars, _chosen, _grid, _is_accuracy, _pyplot,
                     _seeds_note, _set_value_axis, _spread, _stats, _tops, method_colour)


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
    import seaborn as sns  # lazy: seaborn (and pyplot) load with the first figure

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
    from matplotlib.ticker import NullFormatter  # lazy, as pyplot

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


def plot_benchmark_heatmap(records: list[dict], *, tasks: Sequence[str], methods: Sequence[str] | None = None,
                           metric: str = "unlearning_score"):
    """Methods x tasks heat map of ``metric`` (mean over seeds, annotated "mean\n± sd"); the original is left out."""
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
    import seaborn as sns  # lazy: seaborn (and pyplot) load with the first figure

    fig, ax = plt.subplots(figsize=(1.9 * len(tasks) + 2.2, 0.5 * len(order) + 1.4))
    sns.heatmap(values, annot=np.array(labels, dtype=object), fmt="", cmap="viridis", vmin=0, vmax=1, ax=ax,
                xticklabels=list(tasks), yticklabels=[method_label(m) for m in order], annot_kws={"fontsize": 7},
                cbar_kws={"label": metric_label(metric)})
    ax.set_title(f"{metric_label(metric)} (1 = forgets the target, keeps everything else)", fontsize=9)
    fig.tight_layout()
    return fig


