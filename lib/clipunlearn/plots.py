"""Figures shared by the notebooks; each takes plain tensors or records, never a model.

Figures regenerate from ``results/<profile>/*.json`` without retraining.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def save_figure(fig, path) -> Path:
    """Save ``fig`` as PNG (150 dpi, tight) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def plot_image_grid(images: torch.Tensor, *, row_labels: Sequence[str] = (), col_labels: Sequence[str] = (),
                    titles: Sequence[str] | None = None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                    cell: float = 1.1):
    """Plot normalised images ``[R, C, 3, H, W]`` as a grid; return the figure."""
    import matplotlib.pyplot as plt

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


def plot_confusion(matrix: torch.Tensor, classnames: Sequence[str], *, title: str = ""):
    """Plot a row-normalised confusion matrix as a heatmap; return the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(0.55 * len(classnames) + 2, 0.5 * len(classnames) + 1.5))
    sns.heatmap(matrix.numpy(), annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, cbar=False,
                xticklabels=classnames, yticklabels=classnames, ax=ax, annot_kws={"fontsize": 7})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_curves(history: Sequence[dict], *, x: str, ys: Sequence[str], title: str = "", xlabel: str | None = None,
                ylabel: str = ""):
    """Plot one line per key of ``ys`` against ``x`` from a list of dicts; return the figure."""
    import matplotlib.pyplot as plt

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


def plot_embedding_map(points: torch.Tensor, labels: Sequence[str], *, kinds: Sequence[str], title: str = ""):
    """Scatter 2-D ``points`` coloured by label: images as dots, texts as large crosses; return the figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    names = list(dict.fromkeys(labels))
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
