"""Fashion-MNIST, the mini profile's world: class names, the coarse hierarchy, styles (photo, sketch,
negative) and their prompts, reading Debian's ``dataset-fashion-mnist`` files, the styled dataset.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.datasets import FashionMNIST

from ..paths import get_data_dir

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

def load_mini_world(*, data_dir=None, root=None) -> tuple[StyledImages, StyledImages]:
    """Return the mini world's ``(train, test)``: Fashion-MNIST in every style of :data:`STYLES`."""
    return tuple(load_fashion_mnist(split, styles=STYLES, data_dir=data_dir, root=root) for split in ("train", "test"))
