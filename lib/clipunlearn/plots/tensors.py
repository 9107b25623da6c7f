"""Figures from tensors and lists: image grids, confusion matrices, curves, embedding maps, prediction grids."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from .common import _pyplot

# --------------------------------------------------------------------------- #
# Figures from tensors (also used by the registry with stored lists)
# --------------------------------------------------------------------------- #
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
    import seaborn as sns  # lazy: seaborn (and pyplot) load with the first figure

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
    import seaborn as sns  # lazy: seaborn (and pyplot) load with the first figure

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


