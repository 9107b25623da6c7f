"""Datasets: the offline Fashion-MNIST "mini world" and the papers' datasets.

Every classification dataset here is a ``torch.utils.data.Dataset`` returning
``(image, label)`` with ``targets`` (LongTensor) and ``classnames`` attributes;
style-aware datasets (Fashion-MNIST, PACS) also carry ``styles`` and ``stylenames``.
Caption datasets (COCO captions, Flickr30K) return ``(image, [captions])`` for
retrieval (:class:`CaptionImages`); ``load_caption_dataset(name, split=...)`` loads one with
Karpathy's splits and ``split_by_concept`` gives the project's forget / retain images of a concept word.
``load_dataset(name, ...)`` loads any registered one (``DATASETS``); ``root=`` points at where the files are.

Fashion-MNIST is read from Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``), from ``<data_dir>/fashion-mnist`` or,
where online, from torchvision's download. ``python -m clipunlearn data --fetch``
gets it.

The package: :mod:`.indices`, :mod:`.fashion_mnist`, :mod:`.folders`, :mod:`.captions`, :mod:`.catalog`;
every name is importable from ``clipunlearn.data``.
"""

from __future__ import annotations

from .indices import make_loader, select_indices, split_indices
from .fashion_mnist import (DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES, FASHION_MNIST_COARSE, FASHION_MNIST_HIERARCHY,
                            FASHION_MNIST_TEMPLATES, MINI_IMAGE_SIZE, MINI_MEAN, MINI_STD, STYLES, STYLE_WORDS,
                            StyledImages, apply_style, check_classnames, coarse_of, fetch_fashion_mnist,
                            load_fashion_mnist, load_mini_world, read_fashion_mnist)
from .fashion_mnist import _FMNIST_FILES, _find_fashion_mnist  # noqa: F401  (tests pin them)
from .folders import (CIFAR100_CLASSES, CIFAR10_CLASSES, CIFAR_TEMPLATES, CaptionImages, FLOWERS102_CLASSES,
                      FLOWER_TEMPLATES, FOOD_TEMPLATES, ImageFiles, LabeledImages, PACS_DOMAINS, PACS_TEST_FRACTION,
                      PHOTO_TEMPLATES, STL10_TEMPLATES, collate_captions, load_coco_captions, load_image_folder,
                      load_karpathy_captions, load_pacs, load_split_file)
from .folders import _folder_name_to_class  # noqa: F401  (tests pin them)
from .captions import (CAPTION_DATASETS, KARPATHY_SPLITS_URL, CaptionSource, ConceptSplit, caption_layout,
                       load_caption_dataset, mentions_concept, split_by_concept)
from .catalog import DATASETS, DatasetSpec, get_dataset_spec, get_templates, load_dataset, main

__all__ = ["CAPTION_DATASETS", "CIFAR100_CLASSES", "CIFAR10_CLASSES", "CIFAR_TEMPLATES", "CaptionImages",
           "CaptionSource", "ConceptSplit", "DATASETS", "KARPATHY_SPLITS_URL", "caption_layout",
           "load_caption_dataset", "mentions_concept", "split_by_concept",
           "DEBIAN_FASHION_MNIST", "DatasetSpec", "FASHION_MNIST_CLASSES", "FASHION_MNIST_COARSE",
           "FASHION_MNIST_HIERARCHY", "FASHION_MNIST_TEMPLATES", "FLOWERS102_CLASSES", "FLOWER_TEMPLATES",
           "FOOD_TEMPLATES", "ImageFiles", "LabeledImages", "MINI_IMAGE_SIZE", "MINI_MEAN", "MINI_STD", "PACS_DOMAINS",
           "PACS_TEST_FRACTION", "PHOTO_TEMPLATES", "STL10_TEMPLATES", "STYLES", "STYLE_WORDS", "StyledImages",
           "apply_style", "check_classnames", "coarse_of", "collate_captions", "fetch_fashion_mnist",
           "get_dataset_spec", "get_templates", "load_coco_captions", "load_dataset", "load_fashion_mnist",
           "load_image_folder", "load_karpathy_captions", "load_mini_world", "load_pacs", "load_split_file", "main",
           "make_loader", "read_fashion_mnist", "select_indices", "split_indices"]
