"""Index helpers shared by every dataset: select by class and style, seeded splits, loaders.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from .folders import CaptionImages, collate_captions


# --------------------------------------------------------------------------- #
# Index helpers and loaders
# --------------------------------------------------------------------------- #
def select_indices(dataset, *, classes: Sequence[int] | None = None, exclude_classes: Sequence[int] = (),
                   styles: Sequence[int] | None = None, limit_per_class: int | None = None,
                   seed: int = 0) -> torch.Tensor:
    """Return the indices of ``dataset`` whose target and style match.

    ``limit_per_class`` keeps a seeded random subset of at most that many per class.
    """
    targets = torch.as_tensor(dataset.targets)
    keep = torch.ones(len(targets), dtype=torch.bool)
    if classes is not None:
        keep &= torch.isin(targets, torch.as_tensor(list(classes), dtype=targets.dtype))
    if exclude_classes:
        keep &= ~torch.isin(targets, torch.as_tensor(list(exclude_classes), dtype=targets.dtype))
    if styles is not None:
        if getattr(dataset, "styles", None) is None:
            raise ValueError(f"styles={list(styles)} given, but this {type(dataset).__name__} has no styles "
                             "(only Fashion-MNIST and PACS have them): leave styles=None")
        keep &= torch.isin(torch.as_tensor(dataset.styles), torch.as_tensor(list(styles)))
    idx = keep.nonzero().flatten()
    if limit_per_class is not None:
        g = torch.Generator().manual_seed(seed)
        idx = idx[torch.randperm(len(idx), generator=g)]
        parts = [idx[targets[idx] == c][:limit_per_class] for c in targets[idx].unique()]
        idx = torch.cat(parts).sort().values if parts else idx
    return idx

def split_indices(indices: torch.Tensor, fractions: Sequence[float], *, seed: int = 0) -> list[torch.Tensor]:
    """Split ``indices`` at random into parts of the given fractions (the last takes the rest)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.as_tensor(indices)[torch.randperm(len(indices), generator=g)]
    bounds = np.cumsum([0] + [round(f * len(perm)) for f in fractions[:-1]] + [len(perm)])
    bounds = np.minimum(bounds, len(perm))
    return [perm[a:b].sort().values for a, b in zip(bounds[:-1], bounds[1:])]

def make_loader(dataset, *, indices=None, batch_size: int = 256, shuffle: bool = False, seed: int = 0,
                num_workers: int = 0, drop_last: bool = False) -> DataLoader:
    """Return a DataLoader over ``dataset`` (or its ``indices`` subset), seeded when shuffling.

    Caption datasets batch as ``(images, [caption lists])`` (:func:`collate_captions`).
    """
    collate_fn = collate_captions if isinstance(dataset, CaptionImages) else None
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, torch.as_tensor(indices).tolist())
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, drop_last=drop_last, collate_fn=collate_fn)
