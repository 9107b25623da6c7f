"""Caption datasets by name (Flickr30K, COCO) with Karpathy's splits, and the project's forget / retain pairs.

:func:`load_caption_dataset` reads ``<root>/dataset_flickr30k.json`` (Karpathy's split file) and the images
under ``<root>/flickr30k-images/``; a missing piece raises an error that names the file, where to get it and
the layout. :func:`split_by_concept` is the project's forget / retain definition for paper C's retrieval
runs (the paper's own is not public): the images any of whose captions mention a concept word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from ..paths import get_data_dir
from .folders import CaptionImages, load_karpathy_captions

__all__ = ["CAPTION_DATASETS", "KARPATHY_SPLITS_URL", "CaptionSource", "ConceptSplit", "caption_layout",
           "load_caption_dataset", "mentions_concept", "split_by_concept"]

#: Karpathy's split files (``dataset_flickr30k.json``, ``dataset_coco.json``, ``dataset_flickr8k.json``).
KARPATHY_SPLITS_URL = "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip"


@dataclass(frozen=True)
class CaptionSource:
    """A caption dataset's files: its Karpathy split file, its image folder and where to get the images."""

    karpathy_file: str
    images: str  # sub-folder of the images ("": the split file's ``filepath`` entries name it)
    images_from: str


CAPTION_DATASETS = {
    "flickr30k": CaptionSource("dataset_flickr30k.json", "flickr30k-images",
                               "the Flickr30K images (flickr30k-images.tar.gz): request them from the authors at "
                               "https://shannon.cs.illinois.edu/DenotationGraph/"),
    "coco": CaptionSource("dataset_coco.json", "", "the COCO 2014 images (train2014/, val2014/) from "
                                                   "https://cocodataset.org/#download"),
}


def caption_layout(name: str, folder) -> str:
    """The expected files of caption dataset ``name`` under ``folder`` and where to get them (error text)."""
    source = CAPTION_DATASETS[name]
    images = f"{source.images}/<filename>" if source.images else "<filepath>/<filename>"
    return (f"Expected layout:\n  {folder}/\n    {source.karpathy_file}   Karpathy's split file, in "
            f"caption_datasets.zip from {KARPATHY_SPLITS_URL}\n    {images}   {source.images_from}\n"
            f"Pass root=<that folder>, or data_dir=<folder containing {name}/> (default: $CLIPUNLEARN_DATA or "
            "~/.cache/clipunlearn/data).")


def load_caption_dataset(name: str = "flickr30k", *, split: str = "test", transform=None, data_dir=None,
                         root=None, karpathy_file=None) -> CaptionImages:
    """Load split ``split`` of caption dataset ``name`` (Karpathy's splits) as :class:`CaptionImages`.

    ``name``: ``"flickr30k"`` or ``"coco"`` (:data:`CAPTION_DATASETS`). The files are under ``root``, else
    ``<data_dir>/<name>`` (``data_dir``: default ``$CLIPUNLEARN_DATA`` or the cache): Karpathy's split file
    (``dataset_flickr30k.json``: ``{"images": [{"filename", "split", "sentences": [{"raw"}, ...]}, ...]}``)
    and the images (``flickr30k-images/<filename>``; COCO: ``<filepath>/<filename>``). ``split``: ``train``,
    ``val``, ``test`` (Flickr30K: 29000 / 1014 / 1000 images, five captions each), ``restval`` (COCO) or
    ``all``. ``transform``: the model's ``preprocess`` (images stay PIL images without it). The dataset has
    ``captions``, ``caption_image_ids`` (the image of each caption), ``image_ids`` and ``split``.
    """
    if name not in CAPTION_DATASETS:
        raise ValueError(f"unknown caption dataset {name!r}; valid: {', '.join(CAPTION_DATASETS)}")
    source = CAPTION_DATASETS[name]
    folder = Path(root).expanduser() if root is not None else get_data_dir(data_dir) / name
    split_file = Path(karpathy_file).expanduser() if karpathy_file is not None else folder / source.karpathy_file
    if not folder.is_dir():
        raise FileNotFoundError(f"{name} not found: {folder} does not exist. {caption_layout(name, folder)}")
    if not split_file.is_file():
        raise FileNotFoundError(f"{name}: the Karpathy split file {split_file} does not exist. "
                                f"{caption_layout(name, folder)}")
    images = folder / source.images if source.images and (folder / source.images).is_dir() else folder
    try:
        return load_karpathy_captions(images, split_file, split=split, transform=transform)
    except FileNotFoundError as err:  # an image is missing: say where the images come from
        raise FileNotFoundError(f"{name}: {err}. {caption_layout(name, folder)}") from err


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def mentions_concept(caption: str, concept: str) -> bool:
    """Whether ``caption`` mentions ``concept`` (a word or a phrase): whole words, any case, the last word also
    with a plural ``s`` / ``es`` ("dog" matches "Dogs" and "dog's", not "hotdog" or "dogged")."""
    words = _WORD.findall(concept.lower())
    if not words:
        raise ValueError(f"concept {concept!r} has no word: give one, e.g. 'dog'")
    body = r"\s+".join(re.escape(w) for w in words)
    return re.search(rf"(?<![a-z0-9]){body}(?:s|es)?(?![a-z0-9])", caption.lower()) is not None


class ConceptSplit(NamedTuple):
    """Image indices of a caption dataset: ``forget`` (their pairs are forgotten) and ``retain``."""

    forget: torch.Tensor
    retain: torch.Tensor


def _sample(indices: torch.Tensor, limit: int | None, *, seed: int) -> torch.Tensor:
    if limit is None or limit >= len(indices):
        return indices
    g = torch.Generator().manual_seed(seed)
    return indices[torch.randperm(len(indices), generator=g)[:limit]].sort().values


def split_by_concept(dataset: CaptionImages, *, concept: str, max_forget: int | None = None,
                     max_retain: int | None = None, seed: int = 0) -> ConceptSplit:
    """Return the project's forget and retain images of ``dataset`` for ``concept`` (paper C's are not public).

    Forget: every image one of whose captions mentions ``concept`` (:func:`mentions_concept`); its pairs are
    the image with *each* of its captions. Retain: every other image, with each of its captions. An image is
    never on both sides. ``max_forget`` / ``max_retain`` keep a seeded random sample of that many images
    (``seed``; None: all). Indices ascending; the same for the same arguments.
    """
    hits = torch.zeros(len(dataset), dtype=torch.bool)
    for caption, image in zip(dataset.captions, dataset.caption_image_ids.tolist()):
        if not hits[image] and mentions_concept(caption, concept):
            hits[image] = True
    forget, retain = hits.nonzero().flatten(), (~hits).nonzero().flatten()
    return ConceptSplit(_sample(forget, max_forget, seed=seed), _sample(retain, max_retain, seed=seed + 1))
