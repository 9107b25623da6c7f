"""Small helpers every figure shares: colours, labels, value axes, saving."""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..registry import REFERENCES, method_labels
from ..report import check_task, get_forget_class, select_records

ORIGINAL_COLOUR = "#9a9a9a"
#: The reference models' fixed colours (the untouched model grey, the retrained gold standard black); the
#: methods' colours follow their registration order without them, so adding a reference recolours nothing.
REFERENCE_COLOURS = {"original": ORIGINAL_COLOUR, "retrain": "#222222"}
#: Methods registered after the committed figures were drawn (paper C's own forms: the paper-protocol CLIPErase and
#: the papers' GA): coloured after every other name, so adding them recolours no method of an existing figure.
APPENDED_METHODS = ("ga_pairs", "cliperase_paper")
ORACLE_LABEL = "oracle (peeks at real forget images)"


class NoDataError(ValueError):
    """The records hold nothing that a figure could show."""


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #
def _pyplot():
    import matplotlib.pyplot as plt  # lazy: matplotlib loads with the first figure (the CLI picks its backend first)

    return plt


def method_colour(method: str):
    """Return the colour of ``method``, the same in every figure (:data:`REFERENCE_COLOURS` for the references)."""
    import seaborn as sns  # lazy: seaborn (and pyplot) load with the first figure

    if method in REFERENCE_COLOURS:
        return REFERENCE_COLOURS[method]
    palette = sns.color_palette("tab10", 10)
    known = [m for m in method_labels() if m not in REFERENCES and m not in APPENDED_METHODS] + list(APPENDED_METHODS)
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


