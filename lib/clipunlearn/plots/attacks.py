"""The attack notebook's table and figure, from its records (``harness.attacks`` metrics, one record per run).

:func:`attack_table`: methods by attacks, each cell the recovered forget accuracy (mean over seeds) and its gap to
the retrained model (mean ± sd); :func:`plot_relearning`: forget accuracy against fine-tuning steps, benign (retain
pairs) and targeted (unseen forget pairs), the retrained model's curve as the reference line.
"""

from __future__ import annotations

import statistics
from typing import Sequence

import pandas as pd

from ..registry import method_label
from .common import _pyplot, method_colour

__all__ = ["ATTACK_COLUMNS", "attack_table", "attack_values", "figures_attacks", "plot_relearning"]

ATTACK_TASK = "attacks"
#: The table's columns: ``{column: forget-accuracy metric}`` (fp32: no attack).
ATTACK_COLUMNS = {"no attack (fp32)": "quantise_weights/fp32/forget_acc",
                  "benign relearning, 100 steps": "relearn_retain/100/forget_acc",
                  "targeted, n=5, 30 steps": "relearn_forget/n5/30/forget_acc",
                  "targeted, n=20, 30 steps": "relearn_forget/n20/30/forget_acc",
                  "linear probe": "probe_features/forget_acc",
                  "bf16": "quantise_weights/bf16/forget_acc",
                  "int8": "quantise_weights/int8/forget_acc"}


def _attack_records(records, task):
    return [r for r in records if r["task"] == ATTACK_TASK and r["config"].get("run_task") == task]


def attack_values(records: Sequence[dict], *, task: str, metric: str) -> dict[str, list[float]]:
    """Return ``{method: [value per seed]}`` of ``metric`` in the attack records of benchmark task ``task``."""
    out: dict[str, list[float]] = {}
    for r in _attack_records(records, task):
        if r["metrics"].get(metric) is not None:
            out.setdefault(r["method"], []).append(float(r["metrics"][metric]))
    return out


def _cell(values, gaps) -> str:
    if not values:
        return ""
    text = f"{statistics.fmean(values):.3f}"
    if gaps:
        sd = statistics.stdev(gaps) if len(gaps) > 1 else 0.0
        text += f" ({statistics.fmean(gaps):+.3f} ± {sd:.3f})"
    return text


def attack_table(records: Sequence[dict], *, task: str, columns: dict[str, str] | None = None,
                 numeric: bool = False) -> pd.DataFrame:
    """Return methods by attacks on benchmark task ``task``: each cell the recovered forget accuracy (mean over
    seeds) and, in brackets, its gap to the retrained model (``gap/<metric>``: mean ± sd over seeds).
    ``numeric``: the mean gaps as numbers instead."""
    columns = columns or ATTACK_COLUMNS
    methods = list(dict.fromkeys(r["method"] for r in _attack_records(records, task)))
    rows = {}
    for method in methods:
        row = {}
        for name, metric in columns.items():
            values = attack_values(records, task=task, metric=metric).get(method, [])
            gaps = attack_values(records, task=task, metric=f"gap/{metric}").get(method, [])
            row[name] = (statistics.fmean(gaps) if gaps else float("nan")) if numeric else _cell(values, gaps)
        rows[method] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _curve(records, task, method, prefix, steps, start_metric):
    points = []
    for step in steps:
        metric = start_metric if step == 0 else f"{prefix}/{step}/forget_acc"
        values = attack_values(records, task=task, metric=metric).get(method, [])
        points.append(statistics.fmean(values) if values else float("nan"))
    return points


def plot_relearning(records: Sequence[dict], *, tasks: Sequence[str] | None = None):
    """Return the relearning curves: one column per task; top: benign relearning (retain pairs), bottom: targeted
    relearning on the largest unseen set; forget accuracy (mean over seeds) against steps, the retrained model
    dashed and black."""
    attack = [r for r in records if r["task"] == ATTACK_TASK]
    tasks = list(tasks or dict.fromkeys(r["config"]["run_task"] for r in attack))
    if not tasks:
        raise ValueError("no attack records (task 'attacks') to plot")
    plt = _pyplot()
    first = attack[0]["config"]
    rows = [("relearn_retain", [0, *first["retain_steps"]], "benign: retain pairs only"),
            ("relearn_forget/n" + str(max(first["forget_sizes"])), [0, *first["forget_steps"]],
             f"targeted: {max(first['forget_sizes'])} unseen forget pairs")]
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.6 * len(tasks), 6), squeeze=False)
    for col, task in enumerate(tasks):
        methods = list(dict.fromkeys(r["method"] for r in _attack_records(records, task)))
        for row, (prefix, steps, title) in enumerate(rows):
            ax = axes[row][col]
            for method in methods:
                ys = _curve(records, task, method, prefix, steps, "quantise_weights/fp32/forget_acc")
                ref = method == "retrain"
                ax.plot(steps, ys, marker="o", ms=3, color=method_colour(method), lw=2.5 if ref else 1.2,
                        ls="--" if ref else "-", label=method_label(method), zorder=3 if ref else 2)
            ax.set_title(f"{task}\n{title}", fontsize=9)
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("fine-tuning steps")
            ax.set_ylabel("forget accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def figures_attacks(records: list[dict]) -> dict:
    """The attack notebook's figures from its records."""
    if not any(r["task"] == ATTACK_TASK for r in records):
        return {}
    return {"45_relearning.png": plot_relearning(records)}
