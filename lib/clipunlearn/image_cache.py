"""Decoded images kept in memory: :class:`CachedImages`, what the paper profile's datasets are served from.

A paper-profile run evaluates the same test images dozens of times (every validation pass, every other-dataset
accuracy); decoding and resizing JPEGs each time would dominate it. The cache decodes an image the first time a
batch asks for it and keeps it, in chunks allocated as they fill (memory grows with the images touched, never with
the dataset's size, and no chunk is ever copied: the peak is the images held plus one batch), up to a bound in
images or bytes (:func:`default_cache_bytes`: half of the device's memory) past which it stops with what to do.
"""

from __future__ import annotations

import math
import os

import torch

from .metrics import iterate_batches

__all__ = ["CHUNK_IMAGES", "QUICK_CACHE_BYTES", "CachedImages", "MemoryBudget", "default_cache_bytes"]

#: Images per chunk of the store.
CHUNK_IMAGES = 1024
#: The most bytes of decoded images a quick paper-profile run holds (full runs: half of the device's memory).
QUICK_CACHE_BYTES = 6 * 2**30


def default_cache_bytes(device, *, fraction: float = 0.5) -> int | None:
    """Return ``fraction`` of ``device``'s memory (a CUDA card's, else this machine's RAM), None when unknown."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(fraction * torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(fraction * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


class MemoryBudget:
    """Bytes that several caches share (a notebook's splits and datasets): :meth:`take` refuses more than
    ``limit`` in all (None: no limit)."""

    def __init__(self, limit: int | None):
        self.limit, self.used = limit, 0

    def take(self, nbytes: int, *, what: str) -> None:
        """Count ``nbytes`` more, or raise a MemoryError that says what to do when they would pass the limit."""
        if self.limit is not None and self.used + nbytes > self.limit:
            raise MemoryError(f"{what} would bring the decoded images held to {(self.used + nbytes) / 2**30:.2f} GiB,"
                              f" past the budget of {self.limit / 2**30:.2f} GiB that the run's caches share: "
                              "evaluate on fewer images (quick mode, smaller per-class caps of the task), or give "
                              "the run a larger budget")
        self.used += nbytes


class CachedImages(torch.utils.data.Dataset):
    """A labelled image dataset whose preprocessed images are decoded once and then served from memory.

    Wraps ``dataset`` (``(image tensor, label)`` items, ``targets``, ``classnames``; ``styles`` / ``stylenames`` /
    ``paths`` are passed through). :meth:`get_batch` decodes the images of a batch not seen before (a DataLoader
    with ``num_workers`` workers and, for a CUDA ``device``, pinned memory), keeps them as ``dtype`` on ``device``
    (default: float16 on a CUDA device, float32 elsewhere) and returns float32 images with CPU labels. Only valid
    while the preprocessing is fixed (evaluation transforms, no random augmentation). Memory: ``3 * H * W``
    values of ``dtype`` per image held (0.3 MB at 224 px in fp16), in chunks of ``chunk_images``; asking for more
    than ``max_images`` images or ``max_bytes`` bytes, or more than a shared ``budget`` (:class:`MemoryBudget`)
    has left, raises a MemoryError that says what to do.
    """

    def __init__(self, dataset, *, dtype=None, device="cpu", num_workers: int = 0, batch_size: int = 256,
                 max_images: int | None = None, max_bytes: int | None = None, chunk_images: int = CHUNK_IMAGES,
                 budget: MemoryBudget | None = None):
        if chunk_images < 1:
            raise ValueError(f"chunk_images must be at least 1, got {chunk_images}")
        self.base, self.device = dataset, torch.device(device)
        self.dtype = dtype if dtype is not None else torch.float16 if self.device.type == "cuda" else torch.float32
        self.num_workers, self.batch_size, self.chunk_images = num_workers, batch_size, chunk_images
        self.max_images, self.max_bytes, self.budget = max_images, max_bytes, budget
        self.targets, self.classnames = torch.as_tensor(dataset.targets, dtype=torch.long), list(dataset.classnames)
        self.styles, self.paths = getattr(dataset, "styles", None), getattr(dataset, "paths", None)
        self.stylenames = list(getattr(dataset, "stylenames", []) or [])
        self._row = torch.full((len(self.targets),), -1, dtype=torch.long)  # row of each index, -1: not held
        self._chunks: list[torch.Tensor] = []  # [chunk_images, 3, H, W] each, allocated as rows fill them
        self._count = 0

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def cached(self) -> int:
        """How many images are held in memory."""
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes of the chunks allocated so far."""
        return sum(c.nbytes for c in self._chunks)

    def _check_bound(self, total: int, first_image: torch.Tensor | None) -> int:
        shape = self._chunks[0].shape[1:] if self._chunks else first_image.shape
        per_image = math.prod(shape) * self.dtype.itemsize
        over_images = self.max_images is not None and total > self.max_images
        over_bytes = self.max_bytes is not None and total * per_image > self.max_bytes
        if over_images or over_bytes:
            raise MemoryError(f"CachedImages asked to hold {total} images ({total * per_image / 2**30:.2f} GiB at "
                              f"{per_image} bytes each, {list(shape)} {self.dtype}); its bound is max_images="
                              f"{self.max_images}, max_bytes={self.max_bytes}: raise the bound, or evaluate on fewer "
                              "images (quick mode, or smaller per-class caps of the task)")
        return per_image

    def prefetch(self, indices=None) -> "CachedImages":
        """Decode and keep the images of ``indices`` (default: all) now; return ``self``."""
        idx = torch.arange(len(self)) if indices is None else torch.as_tensor(indices, dtype=torch.long).flatten()
        missing = idx[self._row[idx] < 0].unique()
        if not len(missing):
            return self
        if self.max_images is not None or self.max_bytes is not None or self.budget is not None:
            first = None if self._chunks else self.base[int(missing[0])][0]  # fail before decoding the batch
            per_image = self._check_bound(self._count + len(missing), first)
            if self.budget is not None:
                self.budget.take(len(missing) * per_image, what=f"{len(missing)} more images of {len(self)}")
        pin = self.device.type == "cuda" and torch.cuda.is_available()
        done = 0
        for x, _ in iterate_batches(self.base, indices=missing, batch_size=self.batch_size,
                                    num_workers=self.num_workers, pin_memory=pin):
            self._store_rows(x)
            self._row[missing[done:done + len(x)]] = torch.arange(self._count - len(x), self._count)
            done += len(x)
        return self

    def _store_rows(self, x: torch.Tensor) -> None:
        """Copy a decoded batch into the next free rows, allocating chunks as needed."""
        written = 0
        while written < len(x):
            chunk, offset = divmod(self._count, self.chunk_images)
            if chunk == len(self._chunks):
                self._chunks.append(torch.empty((self.chunk_images, *x.shape[1:]), dtype=self.dtype,
                                                device=self.device))
            n = min(len(x) - written, self.chunk_images - offset)
            self._chunks[chunk][offset:offset + n].copy_(x[written:written + n], non_blocking=True)
            written, self._count = written + n, self._count + n

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Return float32 images ``[B, 3, H, W]`` (on the cache's device) and CPU labels for ``indices``."""
        idx = torch.as_tensor(indices, dtype=torch.long).flatten()
        rows = self.prefetch(idx)._row[idx]
        if not len(rows):
            return torch.empty(0, device=self.device), self.targets[idx]
        chunk, offset = rows // self.chunk_images, rows % self.chunk_images
        out = torch.empty((len(rows), *self._chunks[0].shape[1:]), dtype=torch.float32, device=self.device)
        for c in chunk.unique().tolist():
            where = (chunk == c).nonzero().flatten()
            out[where.to(self.device)] = self._chunks[c][offset[where].to(self.device)].float()
        return out, self.targets[idx]

    def __getitem__(self, index):
        x, y = self.get_batch([index])
        return x[0], int(y[0])

    def __getitems__(self, indices):  # DataLoader's whole-batch fetching
        x, y = self.get_batch(indices)
        return list(zip(x, y.tolist()))
