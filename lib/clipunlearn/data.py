"""Datasets: the offline Fashion-MNIST "mini world" and the papers' datasets.

Every dataset here is a ``torch.utils.data.Dataset`` returning ``(image, label)``
with ``targets`` (LongTensor) and ``classnames`` attributes; style-aware datasets
(Fashion-MNIST, PACS) also carry ``styles`` and ``stylenames``.

Fashion-MNIST is read from Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``), from ``<data_dir>/fashion-mnist`` or,
where online, from torchvision's download. ``python -m clipunlearn data --fetch``
gets it.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .paths import get_data_dir

# --------------------------------------------------------------------------- #
# Fashion-MNIST: classes, hierarchy, styles, prompts
# --------------------------------------------------------------------------- #
FASHION_MNIST_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
#: Coarse class -> fine classes. Subgroup experiments forget one fine class of a
#: coarse group (e.g. "sneaker" of "shoe") and keep its siblings.
FASHION_MNIST_HIERARCHY = {
    "top": ("t-shirt", "pullover", "coat", "shirt"),
    "pants": ("trouser",),
    "dress": ("dress",),
    "shoe": ("sandal", "sneaker", "ankle boot"),
    "bag": ("bag",),
}
FASHION_MNIST_COARSE = tuple(FASHION_MNIST_HIERARCHY)
#: Deterministic style variants of every image ("domains" in the papers' sense).
STYLES = ("photo", "sketch", "negative")
#: How a caption names each style.
STYLE_WORDS = {"photo": "photo", "sketch": "sketch", "negative": "negative photo"}
#: Zero-shot templates: one per style, ensembled so the classifier is style-agnostic.
FASHION_MNIST_TEMPLATES = tuple(f"a {STYLE_WORDS[s]} of a {{}}." for s in STYLES)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_MISSING_FMNIST = (
    "Fashion-MNIST not found (looked in {where}). Get it with one of:\n"
    "  sudo apt-get install dataset-fashion-mnist      # Debian/Ubuntu, offline mirror\n"
    "  python -m clipunlearn data --fetch              # torchvision download (needs internet)\n"
    "or put the four *-ubyte.gz files in <data_dir>/fashion-mnist/."
)

#: Pixel normalisation of the mini model (grey images replicated to 3 channels).
MINI_MEAN = (0.5, 0.5, 0.5)
MINI_STD = (0.5, 0.5, 0.5)
MINI_IMAGE_SIZE = 32


def coarse_of(fine: str) -> str:
    """Return the coarse group of a Fashion-MNIST class name."""
    for coarse, fines in FASHION_MNIST_HIERARCHY.items():
        if fine in fines:
            return coarse
    raise ValueError(f"unknown Fashion-MNIST class {fine!r}; valid: {', '.join(FASHION_MNIST_CLASSES)}")


def check_classnames(names: Sequence[str], classnames: Sequence[str]) -> list[int]:
    """Return the indices of ``names`` in ``classnames``; a clear error lists the valid ones."""
    unknown = [n for n in names if n not in classnames]
    if unknown:
        raise ValueError(f"unknown class name(s) {unknown}; valid: {', '.join(classnames)}")
    return [list(classnames).index(n) for n in names]


def _find_fashion_mnist(data_dir: Path) -> Path | None:
    for folder in (data_dir / "fashion-mnist", data_dir / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST):
        if all((folder / f).exists() for files in _FMNIST_FILES.values() for f in files):
            return folder
    return None


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_fashion_mnist(split: str = "train", *, data_dir=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return raw Fashion-MNIST ``(images uint8 [N, 28, 28], labels int64 [N])``."""
    if split not in _FMNIST_FILES:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(_FMNIST_FILES)}")
    root = get_data_dir(data_dir)
    folder = _find_fashion_mnist(root)
    if folder is None:
        raise FileNotFoundError(_MISSING_FMNIST.format(where=f"{root}/fashion-mnist, {DEBIAN_FASHION_MNIST}"))
    image_file, label_file = _FMNIST_FILES[split]
    images = torch.from_numpy(_read_idx(folder / image_file).copy())
    labels = torch.from_numpy(_read_idx(folder / label_file).astype(np.int64))
    return images, labels


def fetch_fashion_mnist(*, data_dir=None) -> Path:
    """Make Fashion-MNIST available under ``<data_dir>/fashion-mnist`` and return that folder.

    Uses Debian's copy when installed, else torchvision's download (needs internet).
    """
    root = get_data_dir(data_dir)
    found = _find_fashion_mnist(root)
    if found is not None:
        return found
    target = root / "fashion-mnist"
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as err:  # offline, blocked mirror, ...
        raise FileNotFoundError(_MISSING_FMNIST.format(where=root) + f"\n(download failed: {err})") from err
    target.mkdir(parents=True, exist_ok=True)
    for files in _FMNIST_FILES.values():
        for name in files:
            shutil.copy(root / "FashionMNIST" / "raw" / name, target / name)
    return target


def apply_style(images: torch.Tensor, style: str) -> torch.Tensor:
    """Render uint8 grey images ``[N, H, W]`` in a style ("photo", "sketch", "negative").

    "sketch" is dark Sobel edges on white paper, scaled per image; deterministic.
    """
    if style == "photo":
        return images.clone()
    if style == "negative":
        return 255 - images
    if style == "sketch":
        x = F.pad(images.float().unsqueeze(1) / 255.0, (1, 1, 1, 1), mode="replicate").squeeze(1)
        rows = x[:, :-2] + 2 * x[:, 1:-1] + x[:, 2:]  # vertical smoothing, then horizontal difference
        cols = x[:, :, :-2] + 2 * x[:, :, 1:-1] + x[:, :, 2:]
        gx = rows[:, :, 2:] - rows[:, :, :-2]
        gy = cols[:, 2:] - cols[:, :-2]
        edges = (gx ** 2 + gy ** 2).sqrt()
        edges = edges / edges.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1)
        return (255.0 * (1.0 - edges)).round().to(torch.uint8)
    raise ValueError(f"unknown style {style!r}; valid: {', '.join(STYLES)}")


class StyledImages(Dataset):
    """Small grey images held in memory as uint8, served normalised as ``[3, S, S]``.

    Attributes: ``images`` (uint8 ``[N, S, S]``), ``targets``, ``styles`` (index into
    ``stylenames``), ``image_ids`` (index of the source image, shared across styles),
    ``classnames``, ``stylenames``, ``coarse_targets`` and ``coarse_classnames``.
    """

    def __init__(self, images, targets, styles, image_ids, *, classnames, stylenames,
                 coarse_targets=None, coarse_classnames=(), mean=MINI_MEAN, std=MINI_STD):
        self.images, self.targets, self.styles, self.image_ids = images, targets, styles, image_ids
        self.classnames, self.stylenames = list(classnames), list(stylenames)
        self.coarse_targets, self.coarse_classnames = coarse_targets, list(coarse_classnames)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Return normalised images ``[B, 3, S, S]`` and labels for ``indices`` at once."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx].float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std, self.targets[idx]

    def __getitem__(self, index):
        x, y = self.get_batch([index])
        return x[0], y[0]

    def with_targets(self, targets, classnames) -> "StyledImages":
        """Return a view of the same images labelled by ``targets`` (e.g. coarse classes or styles)."""
        return StyledImages(self.images, targets, self.styles, self.image_ids, classnames=classnames,
                            stylenames=self.stylenames, coarse_targets=self.coarse_targets,
                            coarse_classnames=self.coarse_classnames, mean=tuple(self.mean.flatten().tolist()),
                            std=tuple(self.std.flatten().tolist()))

    def __getitems__(self, indices):  # used by DataLoader for whole-batch fetching
        x, y = self.get_batch(indices)
        return list(zip(x, y))


def load_fashion_mnist(split: str = "test", *, styles: Sequence[str] = ("photo",), data_dir=None,
                       image_size: int = MINI_IMAGE_SIZE) -> StyledImages:
    """Load Fashion-MNIST ``split`` rendered in ``styles`` (concatenated, style-major).

    Images are zero-padded from 28 to ``image_size`` pixels before styling.
    """
    for s in styles:
        if s not in STYLES:
            raise ValueError(f"unknown style {s!r}; valid: {', '.join(STYLES)}")
    raw, labels = read_fashion_mnist(split, data_dir=data_dir)
    pad = (image_size - raw.shape[-1]) // 2
    raw = F.pad(raw, (pad, image_size - raw.shape[-1] - pad) * 2)
    coarse_index = {f: FASHION_MNIST_COARSE.index(coarse_of(f)) for f in FASHION_MNIST_CLASSES}
    coarse = torch.tensor([coarse_index[c] for c in FASHION_MNIST_CLASSES])[labels]
    n = len(labels)
    return StyledImages(
        torch.cat([apply_style(raw, s) for s in styles]),
        labels.repeat(len(styles)),
        torch.arange(len(styles)).repeat_interleave(n),
        torch.arange(n).repeat(len(styles)),
        classnames=FASHION_MNIST_CLASSES,
        stylenames=[STYLES[STYLES.index(s)] for s in styles],
        coarse_targets=coarse.repeat(len(styles)),
        coarse_classnames=FASHION_MNIST_COARSE,
    )


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
    """Return a DataLoader over ``dataset`` (or its ``indices`` subset), seeded when shuffling."""
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, torch.as_tensor(indices).tolist())
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, drop_last=drop_last)


# --------------------------------------------------------------------------- #
# Paper world: class names, prompts and loaders of the papers' datasets
# --------------------------------------------------------------------------- #
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: CLIP's CIFAR prompt ensemble (Radford et al., 2021).
CIFAR_TEMPLATES = tuple(
    t.replace("{art}", art) for art in ("a", "the") for t in (
        "a photo of {art} {}.", "a blurry photo of {art} {}.", "a black and white photo of {art} {}.",
        "a low contrast photo of {art} {}.", "a high contrast photo of {art} {}.", "a bad photo of {art} {}.",
        "a good photo of {art} {}.", "a photo of {art} small {}.", "a photo of {art} big {}.")
)
#: Oxford Flowers-102 class names in label order (as used by CLIP's zero-shot evaluation).
FLOWERS102_CLASSES = (
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold",
    "tiger lily", "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon", "colt's foot",
    "king protea", "spear thistle", "yellow iris", "globe flower", "purple coneflower", "peruvian lily",
    "balloon flower", "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger",
    "grape hyacinth", "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke",
    "sweet william", "carnation", "garden phlox", "love in the mist", "mexican aster", "alpine sea holly",
    "ruby-lipped cattleya", "cape flower", "great masterwort", "siam tulip", "lenten rose",
    "barbeton daisy", "daffodil", "sword lily", "poinsettia", "bolero deep blue", "wallflower", "marigold",
    "buttercup", "oxeye daisy", "common dandelion", "petunia", "wild pansy", "primula", "sunflower",
    "pelargonium", "bishop of llandaff", "gaura", "geranium", "orange dahlia", "pink and yellow dahlia",
    "cautleya spicata", "japanese anemone", "black-eyed susan", "silverbush", "californian poppy",
    "osteospermum", "spring crocus", "bearded iris", "windflower", "tree poppy", "gazania", "azalea",
    "water lily", "rose", "thorn apple", "morning glory", "passion flower", "lotus", "toad lily",
    "anthurium", "frangipani", "clematis", "hibiscus", "columbine", "desert-rose", "tree mallow",
    "magnolia", "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "air plant", "foxglove",
    "bougainvillea", "camellia", "mallow", "mexican petunia", "bromelia", "blanket flower",
    "trumpet creeper", "blackberry lily",
)
PHOTO_TEMPLATES = ("a photo of a {}.",)  # paper B's prompt
FLOWER_TEMPLATES = ("a photo of a {}, a type of flower.",)


class LabeledImages(Dataset):
    """A dataset view with ``targets`` (LongTensor), ``classnames`` and optional ``styles``.

    Wraps a torchvision dataset (or any dataset returning ``(image, label)``) whose
    labels are known up front, so that subsets can be chosen without decoding images.
    """

    def __init__(self, base, targets, classnames, *, styles=None, stylenames=()):
        self.base = base
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.classnames = list(classnames)
        self.styles = None if styles is None else torch.as_tensor(styles, dtype=torch.long)
        self.stylenames = list(stylenames)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index):
        image, _ = self.base[index]
        return image, int(self.targets[index])


def _folder_name_to_class(name: str) -> str:
    """'n02086079-Pekinese' -> 'Pekinese'; 'toy_poodle' -> 'toy poodle'."""
    if "-" in name and name.split("-", 1)[0][1:].isdigit():
        name = name.split("-", 1)[1]
    return name.replace("_", " ")


def load_image_folder(root, *, transform=None, classnames: Sequence[str] | None = None) -> LabeledImages:
    """Load an ImageFolder tree ``root/<class>/<image>``; class names come from the folder names
    (WordNet ids stripped, underscores to spaces) unless ``classnames`` (in sorted-folder order) is given."""
    from torchvision.datasets import ImageFolder

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; expected <root>/<class>/<image> files")
    base = ImageFolder(str(root), transform=transform)
    names = list(classnames) if classnames is not None else [_folder_name_to_class(c) for c in base.classes]
    if len(names) != len(base.classes):
        raise ValueError(f"{len(names)} class names given for {len(base.classes)} folders in {root}")
    return LabeledImages(base, base.targets, names)


def load_pacs(root, *, domains: Sequence[str] = ("art_painting", "cartoon", "photo", "sketch"),
              transform=None) -> LabeledImages:
    """Load PACS (``root/<domain>/<class>/*.jpg``); ``styles`` index the domains."""
    from torch.utils.data import ConcatDataset

    parts = [load_image_folder(Path(root) / d, transform=transform) for d in domains]
    if any(p.classnames != parts[0].classnames for p in parts):
        raise ValueError(f"PACS domains under {root} do not share the same classes")
    return LabeledImages(ConcatDataset(parts), torch.cat([p.targets for p in parts]), parts[0].classnames,
                         styles=torch.cat([torch.full((len(p),), i) for i, p in enumerate(parts)]),
                         stylenames=domains)


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its prompts and how to load it."""

    name: str
    templates: tuple[str, ...]  # empty: see get_templates
    load: Callable = field(repr=False)
    help: str = ""


def _torchvision(name: str, root: Path, split: str, transform, download: bool):
    import torchvision.datasets as tvd

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
    raise ValueError(name)


def _load_registered(name: str):
    def load(*, split: str = "test", transform=None, data_dir=None, download: bool = False, **kwargs):
        root = get_data_dir(data_dir) / name
        if root.is_dir() and (root / split).is_dir():  # ImageFolder export: <root>/<split>/<class>/...
            return load_image_folder(root / split, transform=transform)
        try:
            return _torchvision(name, get_data_dir(data_dir), split, transform, download)
        except (RuntimeError, FileNotFoundError) as err:
            raise FileNotFoundError(
                f"{name} ({split}) not found under {get_data_dir(data_dir)}: pass download=True where online, "
                f"or place an ImageFolder export at {root}/{split}/<class>/<image>. ({err})") from err
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


def _load_fashion(*, split="test", transform=None, data_dir=None, styles=("photo",), **kwargs):
    return load_fashion_mnist(split, styles=styles, data_dir=data_dir)


def _load_pacs(*, split="test", transform=None, data_dir=None, root=None,
               domains=("art_painting", "cartoon", "photo", "sketch"), **kwargs):
    folder = Path(root) if root is not None else get_data_dir(data_dir) / "pacs"
    if not folder.is_dir():
        raise FileNotFoundError(f"PACS not found at {folder}: pass root=<folder with art_painting/ cartoon/ "
                                "photo/ sketch/> (download PACS yourself).")
    return load_pacs(folder, domains=domains, transform=transform)


def _imagenet_classnames():
    from open_clip import IMAGENET_CLASSNAMES

    return IMAGENET_CLASSNAMES


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec("fashion-mnist", FASHION_MNIST_TEMPLATES, _load_fashion,
                                 "the offline mini world (Debian dataset-fashion-mnist)"),
    "cifar10": DatasetSpec("cifar10", CIFAR_TEMPLATES, _load_registered("cifar10"), "torchvision or ImageFolder"),
    "cifar100": DatasetSpec("cifar100", CIFAR_TEMPLATES, _load_registered("cifar100"), "torchvision or ImageFolder"),
    "flowers102": DatasetSpec("flowers102", FLOWER_TEMPLATES, _load_registered("flowers102"), "torchvision"),
    "caltech101": DatasetSpec("caltech101", PHOTO_TEMPLATES, _load_registered("caltech101"), "torchvision"),
    "stanford-cars": DatasetSpec("stanford-cars", PHOTO_TEMPLATES, _load_registered("stanford-cars"),
                                 "torchvision layout, files placed by hand"),
    "stanford-dogs": DatasetSpec("stanford-dogs", PHOTO_TEMPLATES,
                                 _load_folder_dataset("stanford-dogs", subdir=lambda split: "Images"),
                                 "ImageFolder of the Images/ tree"),
    "imagenet": DatasetSpec("imagenet", (), _load_folder_dataset(
        "imagenet", subdir=lambda split: "val" if split == "test" else split, classnames=_imagenet_classnames),
        "ImageFolder <root>/<split>/<wnid>/ with the 1000 classes; open_clip's templates"),
    "pacs": DatasetSpec("pacs", PHOTO_TEMPLATES, _load_pacs, "PACS <root>/<domain>/<class>/"),
    "folder": DatasetSpec("folder", PHOTO_TEMPLATES,
                          lambda *, root=None, transform=None, **kw: load_image_folder(root, transform=transform),
                          "any ImageFolder, pass root="),
}


def get_dataset_spec(name: str) -> DatasetSpec:
    """Return the registered dataset ``name``; an unknown name lists the valid ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(name: str, *, split: str = "test", transform=None, data_dir=None, download: bool = False,
                 **kwargs):
    """Load registered dataset ``name`` (``split``) with the model's ``transform``.

    Extra keyword arguments go to the loader: ``root`` for folder datasets,
    ``styles`` for Fashion-MNIST, ``domains`` for PACS.
    """
    return get_dataset_spec(name).load(split=split, transform=transform, data_dir=data_dir, download=download,
                                       **kwargs)


def get_templates(name: str) -> tuple:
    """Return the prompt templates (format strings or callables) of registered dataset ``name``."""
    if name == "imagenet":
        from open_clip import OPENAI_IMAGENET_TEMPLATES

        return tuple(OPENAI_IMAGENET_TEMPLATES)
    return get_dataset_spec(name).templates


def main(argv=None) -> int:
    """``python -m clipunlearn data --fetch``: make the default (mini) data available."""
    import argparse

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

