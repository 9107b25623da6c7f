"""The papers' datasets from folders and split files: labelled image tensors and files, image folders,
PACS, CoOp-style split files, caption datasets for retrieval, and their class names and prompts.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

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
    return seed * 1_000_003 + zlib.crc32(key.encode())

def load_pacs(root, *, domains: Sequence[str] = PACS_DOMAINS, split: str = "all",
              test_fraction: float = PACS_TEST_FRACTION, seed: int = 0, transform=None) -> LabeledImages:
    """Load PACS (``root/<domain>/<class>/*.jpg``); ``styles`` index the domains.

    PACS has no official split: ``split="test"`` takes ``round(test_fraction * n)`` images
    of every (domain, class) group at random (seeded by ``seed``, the domain and the class,
    so a group's split does not depend on which other domains are loaded), ``"train"`` the
    rest and ``"all"`` every image.
    """
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
    or ``jpg/``). Class names come from every split of the file, in label order, with
    underscores as spaces (``crocodile_head`` -> ``crocodile head``), as CoOp's and paper B's
    authors' classifiers prompt them.
    """
    split_file = Path(split_file).expanduser()
    if not split_file.is_file():
        raise FileNotFoundError(f"split file {split_file} does not exist (a CoOp-style JSON, e.g. "
                                "split_zhou_OxfordFlowers.json)")
    splits = json.loads(split_file.read_text())
    if split not in splits:
        raise ValueError(f"unknown split {split!r} in {split_file.name}; valid: {', '.join(splits)}")
    names: dict[int, str] = {}
    for items in splits.values():
        for _, label, raw_name in items:
            classname = raw_name.replace("_", " ")
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
    (LongTensor ``[M]``, the image index of each caption), ``source_ids`` (the
    dataset's own image ids or file names) and ``split`` (the split loaded, where known).
    Retrieval with the texts as their own set::

        image_features, image_ids = metrics.encode_images(model, ds, device=device)
        text_features = metrics.encode_texts(model, tokenizer, ds.captions, device=device)
        metrics.retrieval_recall(image_features, text_features, groups=image_ids,
                                 text_groups=ds.caption_image_ids)
    """

    def __init__(self, paths, captions: Sequence[Sequence[str]], *, transform=None, source_ids=None,
                 split: str | None = None):
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
        self.split = split

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, index: int):
        """Return image ``index`` (transformed when the dataset has a transform)."""
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
                         source_ids=[im["filename"] for im in chosen], split=split)

def load_coco_captions(root, annotation_file, *, transform=None) -> CaptionImages:
    """Load COCO captions: images in ``root``, captions from ``annotation_file`` (``captions_val2017.json``).

    The same images, order (sorted image ids) and captions (annotation order) as
    ``torchvision.datasets.CocoCaptions``, read without pycocotools; ``source_ids`` are
    the COCO image ids.
    """
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
