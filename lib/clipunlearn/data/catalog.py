"""The dataset registry: every dataset by name (class names, prompts, loader), ``load_dataset`` and
``python -m clipunlearn data``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.error import URLError

import torchvision.datasets as tvd
from open_clip import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

from ..paths import get_data_dir
from .captions import load_caption_dataset
from .fashion_mnist import FASHION_MNIST_TEMPLATES, fetch_fashion_mnist, load_fashion_mnist
from .folders import (CIFAR10_CLASSES, CIFAR_TEMPLATES, FLOWER_TEMPLATES, FLOWERS102_CLASSES, FOOD_TEMPLATES,
                      PACS_DOMAINS, PACS_TEST_FRACTION, PHOTO_TEMPLATES, STL10_TEMPLATES, LabeledImages,
                      load_coco_captions, load_image_folder, load_pacs, load_split_file)


# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its prompts, default split and how to load it."""

    name: str
    templates: tuple[str, ...]  # empty: see get_templates
    load: Callable = field(repr=False)
    help: str = ""
    default_split: str = "test"

def _torchvision(name: str, root: Path, split: str, transform, download: bool):
    train = split == "train"
    if name == "cifar10":
        ds = tvd.CIFAR10(str(root), train=train, transform=transform, download=download)
        return LabeledImages(ds, ds.targets, CIFAR10_CLASSES)
    if name == "cifar100":
        ds = tvd.CIFAR100(str(root), train=train, transform=transform, download=download)
        return LabeledImages(ds, ds.targets, [c.replace("_", " ") for c in ds.classes])
    if name == "flowers102":
        ds = tvd.Flowers102(str(root), split=split, transform=transform, download=download)
        return LabeledImages(ds, ds._labels, FLOWERS102_CLASSES)
    if name == "caltech101":  # no official split: the whole set
        ds = tvd.Caltech101(str(root), target_type="category", transform=transform, download=download)
        return LabeledImages(ds, ds.y, [c.replace("_", " ").lower() for c in ds.categories])
    if name == "stanford-cars":  # torchvision can no longer download it: place the files by hand
        ds = tvd.StanfordCars(str(root), split=split, transform=transform, download=False)
        return LabeledImages(ds, [t for _, t in ds._samples], ds.classes)
    if name == "food101":
        ds = tvd.Food101(str(root), split=split, transform=transform, download=download)
        return LabeledImages(ds, ds._labels, [c.replace("_", " ") for c in ds.classes])
    if name == "stl10":
        ds = tvd.STL10(str(root), split=split, transform=transform, download=download)
        return LabeledImages(ds, ds.labels, ds.classes)
    raise ValueError(name)

def _load_registered(name: str):
    def load(*, split: str = "test", transform=None, data_dir=None, root=None, download: bool = False, **kwargs):
        # root (or <data_dir>/<name>) may hold an ImageFolder export <split>/<class>/<image>;
        # otherwise torchvision's own layout under root (or data_dir)
        base = Path(root).expanduser() if root is not None else get_data_dir(data_dir)
        export = (base if root is not None else base / name) / split
        if export.is_dir():
            return load_image_folder(export, transform=transform)
        try:
            return _torchvision(name, base, split, transform, download)
        except (RuntimeError, OSError, URLError) as err:  # missing files; offline download (URLError)
            raise FileNotFoundError(
                f"{name} ({split}) not found under {base}: pass download=True where online, place torchvision's "
                f"files under {base}, or place an ImageFolder export at {export}/<class>/<image>. ({err})") from err
    return load

def _load_folder_dataset(name: str, *, subdir: Callable[[str], str], classnames=None):
    def load(*, split: str = "test", transform=None, data_dir=None, root=None, **kwargs):
        folder = Path(root) if root is not None else get_data_dir(data_dir) / name / subdir(split)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{name} not found at {folder}: download it yourself (no automatic download) and pass "
                f"root=<folder with one sub-folder per class> or data_dir=<folder containing {name}/>.")
        names = classnames() if callable(classnames) else classnames
        return load_image_folder(folder, transform=transform, classnames=names)
    return load

def _load_fashion(*, split="test", transform=None, data_dir=None, root=None, styles=("photo",), **kwargs):
    return load_fashion_mnist(split, styles=styles, data_dir=data_dir, root=root)

def _load_pacs(*, split="all", transform=None, data_dir=None, root=None, domains=PACS_DOMAINS,
               test_fraction: float = PACS_TEST_FRACTION, seed: int = 0, **kwargs):
    folder = Path(root) if root is not None else get_data_dir(data_dir) / "pacs"
    if not folder.is_dir():
        raise FileNotFoundError(f"PACS not found at {folder}: pass root=<folder with art_painting/ cartoon/ "
                                "photo/ sketch/> (download PACS yourself).")
    return load_pacs(folder, domains=domains, split=split, test_fraction=test_fraction, seed=seed,
                     transform=transform)

def _load_flickr30k(*, split="test", transform=None, data_dir=None, root=None, karpathy_file=None, **kwargs):
    return load_caption_dataset("flickr30k", split=split, transform=transform, data_dir=data_dir, root=root,
                                karpathy_file=karpathy_file)

def _load_coco_captions(*, split="val", transform=None, data_dir=None, root=None, annotation_file=None, **kwargs):
    if split not in ("train", "val"):
        raise ValueError(f"unknown COCO captions split {split!r}; valid: train, val (the test captions are not "
                         "public; for the Karpathy 5k test split use load_karpathy_captions with dataset_coco.json)")
    base = get_data_dir(data_dir) / "coco"
    folder = Path(root).expanduser() if root is not None else base / f"{split}2017"
    annotation_file = (Path(annotation_file) if annotation_file is not None
                       else base / "annotations" / f"captions_{split}2017.json")
    return load_coco_captions(folder, annotation_file, transform=transform)

def _imagenet_classnames():
    return IMAGENET_CLASSNAMES

DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec("fashion-mnist", FASHION_MNIST_TEMPLATES, _load_fashion,
                                 "the offline mini world (Debian dataset-fashion-mnist)"),
    "cifar10": DatasetSpec("cifar10", CIFAR_TEMPLATES, _load_registered("cifar10"), "torchvision or ImageFolder"),
    "cifar100": DatasetSpec("cifar100", CIFAR_TEMPLATES, _load_registered("cifar100"), "torchvision or ImageFolder"),
    "flowers102": DatasetSpec("flowers102", FLOWER_TEMPLATES, _load_registered("flowers102"),
                              "torchvision or ImageFolder; split_file= for CoOp splits"),
    "caltech101": DatasetSpec("caltech101", PHOTO_TEMPLATES, _load_registered("caltech101"),
                              "torchvision or ImageFolder; split_file= for CoOp splits"),
    "stanford-cars": DatasetSpec("stanford-cars", PHOTO_TEMPLATES, _load_registered("stanford-cars"),
                                 "torchvision layout, files placed by hand"),
    "food101": DatasetSpec("food101", FOOD_TEMPLATES, _load_registered("food101"), "torchvision or ImageFolder"),
    "stl10": DatasetSpec("stl10", STL10_TEMPLATES, _load_registered("stl10"), "torchvision or ImageFolder"),
    "stanford-dogs": DatasetSpec("stanford-dogs", PHOTO_TEMPLATES,
                                 _load_folder_dataset("stanford-dogs", subdir=lambda split: "Images"),
                                 "ImageFolder of the Images/ tree (every split: pass split_file= for one)"),
    "imagenet": DatasetSpec("imagenet", (), _load_folder_dataset(
        "imagenet", subdir=lambda split: "val" if split == "test" else split, classnames=_imagenet_classnames),
        "ImageFolder <root>/<split>/<wnid>/ with the 1000 classes; open_clip's templates"),
    "objectnet": DatasetSpec("objectnet", (), _load_folder_dataset("objectnet", subdir=lambda split: "images"),
                             "ObjectNet <root>/images/<class>/ (download it yourself; keep the 113 classes that "
                             "overlap ImageNet for CLIP's usual protocol); open_clip's ImageNet templates"),
    "pacs": DatasetSpec("pacs", PHOTO_TEMPLATES, _load_pacs,
                        "PACS <root>/<domain>/<class>/; seeded 80/20 train/test per domain and class, or all",
                        default_split="all"),
    "folder": DatasetSpec("folder", PHOTO_TEMPLATES,
                          lambda *, root=None, transform=None, **kw: load_image_folder(root, transform=transform),
                          "any ImageFolder, pass root="),
    "flickr30k": DatasetSpec("flickr30k", (), _load_flickr30k,
                             "image-caption pairs: <root>/flickr30k-images/ + dataset_flickr30k.json (Karpathy)"),
    "coco-captions": DatasetSpec("coco-captions", (), _load_coco_captions,
                                 "image-caption pairs: <root>/<split>2017/ + annotations/captions_<split>2017.json",
                                 default_split="val"),
}

def get_dataset_spec(name: str) -> DatasetSpec:
    """Return the registered dataset ``name``; an unknown name lists the valid ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]

def load_dataset(name: str, *, split: str | None = None, transform=None, data_dir=None, download: bool = False,
                 root=None, split_file=None, **kwargs):
    """Load registered dataset ``name`` (``split``) with the model's ``transform``.

    ``split=None`` is the dataset's default (``DatasetSpec.default_split``: "test";
    PACS "all", COCO captions "val"). ``root`` is where the files are: an ImageFolder
    export ``<root>/<split>/<class>/`` or torchvision's layout for the torchvision
    datasets, the folder itself for folder datasets. ``split_file`` (a CoOp-style JSON)
    selects the images of ``split`` instead, relative to ``root`` (see
    :func:`load_split_file`). Extra keyword arguments go to the loader: ``styles``
    for Fashion-MNIST, ``domains`` / ``test_fraction`` / ``seed`` for PACS,
    ``karpathy_file`` for Flickr30K, ``annotation_file`` for COCO captions.
    Without ``transform`` images stay PIL images, which cannot be batched: pass the
    model's ``preprocess``.
    """
    spec = get_dataset_spec(name)
    split = spec.default_split if split is None else split
    if split_file is not None:
        return load_split_file(split_file, split=split, root=root, transform=transform)
    return spec.load(split=split, transform=transform, data_dir=data_dir, download=download, root=root, **kwargs)

def get_templates(name: str) -> tuple:
    """Return the prompt templates (format strings or callables) of registered dataset ``name``."""
    if name in ("imagenet", "objectnet"):
        return tuple(OPENAI_IMAGENET_TEMPLATES)
    return get_dataset_spec(name).templates

def main(argv=None) -> int:
    """``python -m clipunlearn data --fetch``: make the default (mini) data available."""
    parser = argparse.ArgumentParser(prog="python -m clipunlearn data", description=main.__doc__)
    parser.add_argument("--fetch", action="store_true", help="get Fashion-MNIST (Debian copy or download)")
    parser.add_argument("--data-dir", default=None, help="data folder (default $CLIPUNLEARN_DATA or the cache)")
    parser.add_argument("--list", action="store_true", help="list the registered datasets")
    args = parser.parse_args(argv)
    if args.list or not args.fetch:
        for spec in DATASETS.values():
            print(f"{spec.name:15s} {spec.help}")
    if args.fetch:
        try:
            print(f"Fashion-MNIST: {fetch_fashion_mnist(data_dir=args.data_dir)}")
        except FileNotFoundError as err:
            print(err)
            return 1
    return 0
