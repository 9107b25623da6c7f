"""Image-caption batches for the unlearning loop: class captions for a labelled dataset (:class:`PairLoader`) and
an image's own captions for a caption dataset (:class:`CaptionPairLoader`); every order depends only on a seed."""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["CaptionPairLoader", "PairLoader", "make_caption_pair_loader", "make_pair_loader"]


class PairLoader:
    """Iterable of batch dicts ``{"images", "texts", "labels"}`` over a labelled dataset.

    Each image is paired with a caption of its class (``dataset.classnames``) from
    one of ``templates``; the order and the template of every sample depend only on
    ``seed`` and the epoch (each ``iter()`` is the next epoch), so runs repeat
    exactly. In-memory datasets are sliced with ``get_batch`` (no per-item Python).
    """

    def __init__(self, dataset, *, tokenizer, templates: Sequence[str], indices=None, batch_size: int = 64,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False, device="cpu"):
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.seed, self.drop_last, self.device = seed, drop_last, device
        self.indices = (torch.arange(len(dataset)) if indices is None
                        else torch.as_tensor(indices, dtype=torch.long))
        if len(self.indices) == 0:
            raise ValueError("PairLoader got no samples: check the class names / indices of the split")
        templates = list(templates)
        texts = [t.format(c) if isinstance(t, str) else t(c) for c in dataset.classnames for t in templates]
        self.tokens = tokenizer(texts).view(len(dataset.classnames), len(templates), -1)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batches(self, epoch: int):
        """Yield the batches of ``epoch`` (deterministic)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = self.indices[torch.randperm(len(self.indices), generator=g)] if self.shuffle else self.indices
        template_ids = torch.randint(self.tokens.shape[1], (len(order),), generator=g)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            if hasattr(self.dataset, "get_batch"):
                images, labels = self.dataset.get_batch(idx)
            else:
                items = [self.dataset[int(i)] for i in idx]
                images, labels = torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items])
            texts = self.tokens[labels, template_ids[b * self.batch_size:(b + 1) * self.batch_size]]
            yield {"images": images.to(self.device), "texts": texts.to(self.device), "labels": labels.to(self.device)}

    def __iter__(self):
        self.epoch += 1
        return self.batches(self.epoch - 1)


def make_pair_loader(dataset, *, tokenizer, templates, indices=None, batch_size: int = 64, shuffle: bool = True,
                     seed: int = 0, drop_last: bool = False, device="cpu") -> PairLoader:
    """Return a ``PairLoader`` over ``dataset`` (or its ``indices``) with class captions from ``templates``."""
    return PairLoader(dataset, tokenizer=tokenizer, templates=templates, indices=indices, batch_size=batch_size,
                      shuffle=shuffle, seed=seed, drop_last=drop_last, device=device)


class CaptionPairLoader:
    """Iterable of batch dicts ``{"images", "texts", "labels"}`` over the image-caption pairs of ``images``.

    A pair is an image of a caption dataset (``data.CaptionImages``) with one of its own captions: every
    caption of every chosen image is one pair. ``labels`` are the image indices, so two captions of one
    image count as positives in the contrastive losses. Captions are tokenised and images decoded batch by
    batch; the order depends only on ``seed`` and the epoch (each ``iter()`` is the next epoch).
    """

    def __init__(self, dataset, *, tokenizer, images, batch_size: int = 16, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, device="cpu"):
        self.dataset, self.tokenizer, self.batch_size, self.shuffle = dataset, tokenizer, batch_size, shuffle
        self.seed, self.drop_last, self.device = seed, drop_last, device
        chosen = torch.isin(dataset.caption_image_ids, torch.as_tensor(images, dtype=torch.long))
        self.pairs = chosen.nonzero().flatten()  # caption indices
        if len(self.pairs) == 0:
            raise ValueError("CaptionPairLoader got no pairs: the chosen images have no caption in this dataset")
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.pairs)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batches(self, epoch: int):
        """Yield the batches of ``epoch`` (deterministic)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = self.pairs[torch.randperm(len(self.pairs), generator=g)] if self.shuffle else self.pairs
        for b in range(len(self)):
            captions = order[b * self.batch_size:(b + 1) * self.batch_size]
            images, labels = self.dataset.get_batch(self.dataset.caption_image_ids[captions])
            texts = self.tokenizer([self.dataset.captions[i] for i in captions.tolist()])
            yield {"images": images.to(self.device), "texts": texts.to(self.device), "labels": labels.to(self.device)}

    def __iter__(self):
        self.epoch += 1
        return self.batches(self.epoch - 1)


def make_caption_pair_loader(dataset, *, tokenizer, images, batch_size: int = 16, shuffle: bool = True,
                             seed: int = 0, drop_last: bool = False, device="cpu") -> CaptionPairLoader:
    """Return a :class:`CaptionPairLoader` over the pairs (image, each of its captions) of ``images``."""
    return CaptionPairLoader(dataset, tokenizer=tokenizer, images=images, batch_size=batch_size, shuffle=shuffle,
                             seed=seed, drop_last=drop_last, device=device)
