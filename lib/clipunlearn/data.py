"""Datasets: the offline Fashion-MNIST "mini world" and the papers' datasets.

Every classification dataset here is a ``torch.utils.data.Dataset`` returning
``(image, label)`` with ``targets`` (LongTensor) and ``classnames`` attributes;
style-aware datasets (Fashion-MNIST, PACS) also carry ``styles`` and ``stylenames``.
Caption datasets (COCO captions, Flickr30K) return ``(image, [captions])`` for
retrieval (:class:`CaptionImages`). ``load_dataset(name, ...)`` loads any registered
one (``DATASETS``); ``root=`` points at where the files are.

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
from urllib.error import URLError

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


def read_fashion_mnist(split: str = "train", *, data_dir=None, root=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return raw Fashion-MNIST ``(images uint8 [N, 28, 28], labels int64 [N])``.

    ``root``: a folder holding the four ``*-ubyte.gz`` files (else searched under
    ``data_dir`` and Debian's copy).
    """
    if split not in _FMNIST_FILES:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(_FMNIST_FILES)}")
    if root is not None:
        folder = Path(root).expanduser()
        missing = [f for files in _FMNIST_FILES.values() for f in files if not (folder / f).exists()]
        if missing:
            raise FileNotFoundError(_MISSING_FMNIST.format(where=folder) + f"\n(missing in root: {', '.join(missing)})")
    else:
        base = get_data_dir(data_dir)
        folder = _find_fashion_mnist(base)
        if folder is None:
            raise FileNotFoundError(_MISSING_FMNIST.format(where=f"{base}/fashion-mnist, {DEBIAN_FASHION_MNIST}"))
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


def load_fashion_mnist(split: str = "test", *, styles: Sequence[str] = ("photo",), data_dir=None, root=None,
                       image_size: int = MINI_IMAGE_SIZE) -> StyledImages:
    """Load Fashion-MNIST ``split`` rendered in ``styles`` (concatenated, style-major).

    Images are zero-padded from 28 to ``image_size`` pixels before styling; ``root``
    is a folder holding the ``*-ubyte.gz`` files (see :func:`read_fashion_mnist`).
    """
    for s in styles:
        if s not in STYLES:
            raise ValueError(f"unknown style {s!r}; valid: {', '.join(STYLES)}")
    raw, labels = read_fashion_mnist(split, data_dir=data_dir, root=root)
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


def load_mini_world(*, data_dir=None, root=None) -> tuple[StyledImages, StyledImages]:
    """Return the mini world's ``(train, test)``: Fashion-MNIST in every style of :data:`STYLES`."""
    return tuple(load_fashion_mnist(split, styles=STYLES, data_dir=data_dir, root=root) for split in ("train", "test"))


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


# --------------------------------------------------------------------------- #
# Paper world: class names, prompts and loaders of the papers' datasets
# --------------------------------------------------------------------------- #
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: CIFAR-100 fine class names in label order (torchvision's names, underscores as spaces).
CIFAR100_CLASSES = tuple(name.replace("_", " ") for name in (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split())
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
#: CLIP's prompts for Food-101 and STL-10 (Radford et al., 2021).
FOOD_TEMPLATES = ("a photo of {}, a type of food.",)
STL10_TEMPLATES = ("a photo of a {}.", "a photo of the {}.")
PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
#: PACS has no official split: ``split="train"`` / ``"test"`` is a seeded split of every
#: (domain, class) group with this fraction in "test"; ``"all"`` is every image.
PACS_TEST_FRACTION = 0.2

_NO_TRANSFORM = (
    "{n} images of this dataset are PIL images, which cannot be batched: it was loaded without a transform. "
    "Pass transform=preprocess (the model's preprocess, from models.load_clip) to data.load_dataset.")


def _check_tensors(images) -> None:
    """Raise a TypeError that says to pass ``transform=`` when ``images`` holds PIL images."""
    from PIL import Image

    if any(isinstance(x, Image.Image) for x in images):
        raise TypeError(_NO_TRANSFORM.format(n=sum(isinstance(x, Image.Image) for x in images)))


class LabeledImages(Dataset):
    """A dataset view with ``targets`` (LongTensor), ``classnames`` and optional ``styles`` / ``paths``.

    Wraps a torchvision dataset (or any dataset returning ``(image, label)``) whose
    labels are known up front, so that subsets can be chosen without decoding images.
    ``paths`` (image files, where known) identify the images of a split.
    Batching (a DataLoader, ``metrics.encode_images``) needs tensors: a dataset loaded
    without ``transform`` fails there with an error that says so.
    """

    def __init__(self, base, targets, classnames, *, styles=None, stylenames=(), paths=None):
        self.base = base
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.classnames = list(classnames)
        self.styles = None if styles is None else torch.as_tensor(styles, dtype=torch.long)
        self.stylenames = list(stylenames)
        self.paths = None if paths is None else [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index):
        image, _ = self.base[index]
        return image, int(self.targets[index])

    def __getitems__(self, indices):  # used by DataLoader (also through Subset) for a batch
        items = [self[i] for i in indices]
        _check_tensors([image for image, _ in items])
        return items

    def subset(self, indices) -> "LabeledImages":
        """Return the view of ``indices`` (targets and styles follow)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return LabeledImages(torch.utils.data.Subset(self.base, idx.tolist()), self.targets[idx], self.classnames,
                             styles=None if self.styles is None else self.styles[idx], stylenames=self.stylenames,
                             paths=None if self.paths is None else [self.paths[i] for i in idx.tolist()])


class ImageFiles(Dataset):
    """Images read from a list of files, with labels: ``(transform(image), label)``."""

    def __init__(self, paths, targets, *, transform=None):
        self.paths, self.targets, self.transform = [Path(p) for p in paths], list(targets), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        from torchvision.datasets.folder import default_loader

        image = default_loader(str(self.paths[index]))
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


def _folder_name_to_class(name: str) -> str:
    """'n02086079-Pekinese' -> 'Pekinese'; 'toy_poodle' -> 'toy poodle'."""
    if "-" in name and name.split("-", 1)[0][1:].isdigit():
        name = name.split("-", 1)[1]
    return name.replace("_", " ")


def load_image_folder(root, *, transform=None, classnames: Sequence[str] | None = None) -> LabeledImages:
    """Load an ImageFolder tree ``root/<class>/<image>``; class names come from the folder names
    (WordNet ids stripped, underscores to spaces) unless ``classnames`` (in sorted-folder order) is given."""
    from torchvision.datasets import ImageFolder

    if root is None:
        raise ValueError("pass root=<folder with one sub-folder of images per class>")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; expected <root>/<class>/<image> files")
    base = ImageFolder(str(root), transform=transform)
    names = list(classnames) if classnames is not None else [_folder_name_to_class(c) for c in base.classes]
    if len(names) != len(base.classes):
        raise ValueError(f"{len(names)} class names given for {len(base.classes)} folders in {root}")
    return LabeledImages(base, base.targets, names, paths=[path for path, _ in base.samples])


def _group_seed(seed: int, key: str) -> int:
    import zlib

    return seed * 1_000_003 + zlib.crc32(key.encode())


def load_pacs(root, *, domains: Sequence[str] = PACS_DOMAINS, split: str = "all",
              test_fraction: float = PACS_TEST_FRACTION, seed: int = 0, transform=None) -> LabeledImages:
    """Load PACS (``root/<domain>/<class>/*.jpg``); ``styles`` index the domains.

    PACS has no official split: ``split="test"`` takes ``round(test_fraction * n)`` images
    of every (domain, class) group at random (seeded by ``seed``, the domain and the class,
    so a group's split does not depend on which other domains are loaded), ``"train"`` the
    rest and ``"all"`` every image.
    """
    from torch.utils.data import ConcatDataset

    if split not in ("train", "test", "all"):
        raise ValueError(f"unknown PACS split {split!r}; valid: train, test, all")
    unknown = [d for d in domains if d not in PACS_DOMAINS]
    if unknown:
        raise ValueError(f"unknown PACS domain(s) {unknown}; valid: {', '.join(PACS_DOMAINS)}")
    parts = [load_image_folder(Path(root) / d, transform=transform) for d in domains]
    if any(p.classnames != parts[0].classnames for p in parts):
        raise ValueError(f"PACS domains under {root} do not share the same classes")
    full = LabeledImages(ConcatDataset(parts), torch.cat([p.targets for p in parts]), parts[0].classnames,
                         styles=torch.cat([torch.full((len(p),), i) for i, p in enumerate(parts)]),
                         stylenames=domains, paths=[path for p in parts for path in p.paths])
    if split == "all":
        return full
    test = []
    for s, domain in enumerate(domains):
        for c, classname in enumerate(full.classnames):
            group = ((full.styles == s) & (full.targets == c)).nonzero().flatten()
            g = torch.Generator().manual_seed(_group_seed(seed, f"{domain}/{classname}"))
            test.append(group[torch.randperm(len(group), generator=g)[:round(test_fraction * len(group))]])
    is_test = torch.zeros(len(full), dtype=torch.bool)
    is_test[torch.cat(test)] = True
    return full.subset((is_test if split == "test" else ~is_test).nonzero().flatten())


# --------------------------------------------------------------------------- #
# CoOp-style split files
# --------------------------------------------------------------------------- #
def _find_image_root(root: Path, relpath: str) -> Path | None:
    """``root`` or its first sub-folder (sorted) under which ``relpath`` exists."""
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if (folder / relpath).exists():
            return folder
    return None


def load_split_file(split_file, *, split: str = "test", root=None, transform=None) -> LabeledImages:
    """Load one split of a CoOp-style split file as a labelled image dataset.

    ``split_file`` is JSON ``{"train": [[relpath, label, classname], ...], "val": ...,
    "test": ...}`` (CoOp's ``split_zhou_*.json``, paper B's ``split_alexey_stanford_dogs.json``).
    Paths are relative to ``root`` (default: the split file's folder or, as in CoOp's
    layouts, the first sub-folder of it holding the images, e.g. ``101_ObjectCategories/``
    or ``jpg/``). Class names come from every split of the file, in label order.
    """
    import json

    split_file = Path(split_file).expanduser()
    if not split_file.is_file():
        raise FileNotFoundError(f"split file {split_file} does not exist (a CoOp-style JSON, e.g. "
                                "split_zhou_OxfordFlowers.json)")
    splits = json.loads(split_file.read_text())
    if split not in splits:
        raise ValueError(f"unknown split {split!r} in {split_file.name}; valid: {', '.join(splits)}")
    names: dict[int, str] = {}
    for items in splits.values():
        for _, label, classname in items:
            if names.setdefault(int(label), classname) != classname:
                raise ValueError(f"{split_file.name}: label {label} is named both {names[int(label)]!r} "
                                 f"and {classname!r}")
    missing = sorted(set(range(max(names) + 1)) - set(names)) if names else []
    if missing:
        raise ValueError(f"{split_file.name}: labels {missing[:10]} have no entry in any split")
    items = splits[split]
    base = Path(root).expanduser() if root is not None else split_file.parent
    if not base.is_dir():
        raise FileNotFoundError(f"image folder {base} does not exist: pass root=<folder the paths of "
                                f"{split_file.name} are relative to>")
    image_root = _find_image_root(base, items[0][0]) if items else base
    if image_root is None:
        raise FileNotFoundError(f"{items[0][0]} (first image of {split_file.name}, {split}) not found under {base} "
                                "or its sub-folders: pass root=<folder the split file's paths are relative to>")
    files = ImageFiles([image_root / relpath for relpath, _, _ in items], [int(label) for _, label, _ in items],
                       transform=transform)
    return LabeledImages(files, files.targets, [names[i] for i in range(len(names))], paths=files.paths)


# --------------------------------------------------------------------------- #
# Caption datasets (image-text retrieval)
# --------------------------------------------------------------------------- #
class CaptionImages(Dataset):
    """Image-caption pairs for retrieval: item ``i`` is ``(image, [captions of image i])``.

    Attributes: ``paths``, ``image_ids`` (LongTensor ``[N]``, the index of each image),
    ``captions`` (every caption, flat, image by image), ``caption_image_ids``
    (LongTensor ``[M]``, the image index of each caption) and ``source_ids`` (the
    dataset's own image ids or file names). Retrieval with the texts as their own set::

        image_features, image_ids = metrics.encode_images(model, ds, device=device)
        text_features = metrics.encode_texts(model, tokenizer, ds.captions, device=device)
        metrics.retrieval_recall(image_features, text_features, groups=image_ids,
                                 text_groups=ds.caption_image_ids)
    """

    def __init__(self, paths, captions: Sequence[Sequence[str]], *, transform=None, source_ids=None):
        if len(paths) != len(captions):
            raise ValueError(f"{len(paths)} images but {len(captions)} caption lists")
        self.paths = [Path(p) for p in paths]
        self.image_captions = [list(c) for c in captions]
        self.transform = transform
        self.image_ids = torch.arange(len(self.paths))
        self.captions = [c for caps in self.image_captions for c in caps]
        self.caption_image_ids = torch.arange(len(self.paths)).repeat_interleave(
            torch.tensor([len(c) for c in self.image_captions], dtype=torch.long))
        self.source_ids = list(source_ids) if source_ids is not None else [p.name for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, index: int):
        """Return image ``index`` (transformed when the dataset has a transform)."""
        from torchvision.datasets.folder import default_loader

        image = default_loader(str(self.paths[index]))
        return self.transform(image) if self.transform is not None else image

    def __getitem__(self, index):
        return self.load_image(index), list(self.image_captions[index])

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Return images ``[B, 3, H, W]`` and their ``image_ids`` (what ``metrics.encode_images`` batches)."""
        idx = torch.as_tensor(indices, dtype=torch.long).flatten().tolist()
        images = [self.load_image(i) for i in idx]
        _check_tensors(images)
        return torch.stack(images), self.image_ids[idx]

    def retrieval_groups(self) -> dict[str, torch.Tensor]:
        """``{"groups", "text_groups"}`` keyword arguments of ``metrics.retrieval_recall``."""
        return {"groups": self.image_ids, "text_groups": self.caption_image_ids}


def collate_captions(batch) -> tuple[torch.Tensor, list[list[str]]]:
    """DataLoader ``collate_fn`` of :class:`CaptionImages`: stacked images and the caption lists."""
    images = [image for image, _ in batch]
    _check_tensors(images)
    return torch.stack(images), [captions for _, captions in batch]


def load_karpathy_captions(root, karpathy_file, *, split: str = "test", transform=None) -> CaptionImages:
    """Load an image-caption set from a Karpathy split file (``dataset_flickr30k.json``, ``dataset_coco.json``).

    The file is ``{"images": [{"filename", "split", "sentences": [{"raw": ...}, ...]}, ...]}``
    (COCO's also has ``"filepath"``); images are ``root/[filepath/]filename``. ``split``:
    "train", "val", "test", "restval" (COCO) or "all".
    """
    import json

    karpathy_file = Path(karpathy_file).expanduser()
    if not karpathy_file.is_file():
        raise FileNotFoundError(f"Karpathy split file {karpathy_file} does not exist (e.g. dataset_flickr30k.json)")
    images = json.loads(karpathy_file.read_text())["images"]
    valid = sorted({im["split"] for im in images}) + ["all"]
    if split not in valid:
        raise ValueError(f"unknown split {split!r} in {karpathy_file.name}; valid: {', '.join(valid)}")
    chosen = [im for im in images if split == "all" or im["split"] == split]
    root = Path(root).expanduser()
    paths = [root / im.get("filepath", "") / im["filename"] for im in chosen]
    if paths and not paths[0].exists():
        raise FileNotFoundError(f"{paths[0]} not found: pass root=<folder holding the images of {karpathy_file.name}>")
    return CaptionImages(paths, [[s["raw"] for s in im["sentences"]] for im in chosen], transform=transform,
                         source_ids=[im["filename"] for im in chosen])


def load_coco_captions(root, annotation_file, *, transform=None) -> CaptionImages:
    """Load COCO captions: images in ``root``, captions from ``annotation_file`` (``captions_val2017.json``).

    The same images, order (sorted image ids) and captions (annotation order) as
    ``torchvision.datasets.CocoCaptions``, read without pycocotools; ``source_ids`` are
    the COCO image ids.
    """
    import json

    annotation_file = Path(annotation_file).expanduser()
    if not annotation_file.is_file():
        raise FileNotFoundError(f"COCO annotation file {annotation_file} does not exist (e.g. "
                                "annotations/captions_val2017.json)")
    coco = json.loads(annotation_file.read_text())
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    captions: dict[int, list[str]] = {i: [] for i in files}
    for ann in coco["annotations"]:
        captions[ann["image_id"]].append(ann["caption"])
    ids = sorted(files)
    root = Path(root).expanduser()
    paths = [root / files[i] for i in ids]
    if paths and not paths[0].exists():
        raise FileNotFoundError(f"{paths[0]} not found: pass root=<folder holding the images of "
                                f"{annotation_file.name}>")
    return CaptionImages(paths, [captions[i] for i in ids], transform=transform, source_ids=ids)


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
    folder = Path(root).expanduser() if root is not None else get_data_dir(data_dir) / "flickr30k"
    karpathy_file = Path(karpathy_file) if karpathy_file is not None else folder / "dataset_flickr30k.json"
    images = folder / "flickr30k-images" if (folder / "flickr30k-images").is_dir() else folder
    return load_karpathy_captions(images, karpathy_file, split=split, transform=transform)


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
    from open_clip import IMAGENET_CLASSNAMES

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

