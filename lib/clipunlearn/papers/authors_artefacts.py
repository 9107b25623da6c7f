"""Paper B's authors' artefacts, read in their own formats: their synthetic forget sets and their stored
zero-shot accuracies of the original models (``docs/PAPERS.md``, "Paper B: the authors' code in detail").

* Synthetic sets: ``gen_data.py`` / ``clip_forget_imagegen.generate_images`` write
  ``generated_{RN50,ViTB16}/<Dataset>/<label>.pt``, ``torch.save`` of one raw ImageNet-normalised
  tensor ``[64, 3, 224, 224]`` per class (the ascent's variable, before their ``deprocess``).
  :func:`load_authors_synthetic` reads it with ``weights_only=True`` and maps it to model space as
  their ``ForgetDataset`` does: ``normalise(minmax_rescale(x * imagenet_std + imagenet_mean))``.
* Zero-shot references: ``generated/results_zs_all_{RN50,ViT16}.pkl``, a pickle of
  ``{Dataset: {class: {"cls_acc_test", "no_cls_acc", "acc_train", "full_acc"}}}`` whose values are
  floats or numpy float64 scalars. :func:`load_authors_zero_shot` unpickles it allowing numpy scalars,
  dtypes and arrays only (:class:`RestrictedUnpickler`); :func:`build_authors_reference` turns one
  class's entry into the ``avg_gain`` reference of :func:`clipunlearn.methods.lipschitz.compute_avg_gain`.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..synthetic import IMAGENET_MEAN, IMAGENET_STD, SyntheticSet, minmax_rescale

try:  # numpy >= 2 pickles name numpy._core; the authors' files (numpy 1) name numpy.core
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1
    from numpy.core import multiarray as _multiarray

#: The only globals a zero-shot pickle may name: numpy scalars, dtypes and arrays.
ALLOWED_GLOBALS = {
    **{(module, name): getattr(_multiarray, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name in ("scalar", "_reconstruct")},
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
}

#: The keys of one class's entry in the authors' zero-shot pickle.
ZERO_SHOT_KEYS = ("cls_acc_test", "no_cls_acc", "acc_train", "full_acc")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds builtins and the numpy objects of :data:`ALLOWED_GLOBALS`, nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (only numpy scalars, dtypes and "
                                         "arrays)")
        return ALLOWED_GLOBALS[(module, name)]


def load_authors_zero_shot(path) -> dict[str, dict[str, dict[str, float]]]:
    """Return the authors' ``results_zs_all_*.pkl`` as ``{Dataset: {class: {key: float}}}``.

    Class names keep the file's spelling (Caltech101's ``crocodile_head``); see
    :func:`build_authors_reference` for look-ups. Any global other than a numpy scalar, dtype or
    array is refused, with an error naming the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: it ships with the authors' repository "
                                "(generated/results_zs_all_RN50.pkl, generated/results_zs_all_ViT16.pkl)")
    try:
        with path.open("rb") as f:
            raw = RestrictedUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise ValueError(f"{path} is not an authors' zero-shot pickle that is safe to read: {err}") from err
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ValueError(f"{path}: expected {{Dataset: {{class: {{{', '.join(ZERO_SHOT_KEYS)}}}}}}}, "
                         f"got {type(raw).__name__}")
    out = {}
    for dataset, classes in raw.items():
        out[str(dataset)] = {}
        for classname, entry in classes.items():
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: entry {dataset}/{classname} is a {type(entry).__name__}, not a dict")
            out[str(dataset)][str(classname)] = {str(k): float(v) for k, v in entry.items() if v is not None}
    return out


def _find_entry(classes: Mapping[str, dict], classname: str) -> dict | None:
    """The entry of ``classname``, underscores and spaces treated alike (the pickle keeps underscores)."""
    wanted = classname.replace("_", " ")
    return next((entry for name, entry in classes.items() if name.replace("_", " ") == wanted), None)


def build_authors_reference(zero_shot: Mapping, *, dataset: str, classname: str,
                            others: Mapping[str, str]) -> dict[str, float] | None:
    """Return the original model's metrics as the authors stored them, in the project's names; None if incomplete.

    ``dataset``: the forget dataset's name in the authors' code (``"Caltech101"``); ``others``:
    ``{project name: authors' name}`` of the other datasets. Returns ``{"forget_acc": cls_acc_test,
    "retain_acc": no_cls_acc, "other_acc/<project name>": full_acc of that dataset}``, which is what
    their ``create_results`` compares with (``cls_Noforget``, ``full_Noforget``, ``full_<Dataset>``).
    """
    entry = _find_entry(zero_shot.get(dataset, {}), classname)
    if entry is None or not {"cls_acc_test", "no_cls_acc"} <= set(entry):
        return None
    reference = {"forget_acc": entry["cls_acc_test"], "retain_acc": entry["no_cls_acc"]}
    for name, authors_name in others.items():
        classes = zero_shot.get(authors_name, {})
        first = next(iter(classes.values()), {})  # their create_results: the first class's full_acc
        if "full_acc" not in first:
            return None
        reference[f"other_acc/{name}"] = first["full_acc"]
    return reference


def load_authors_synthetic(path, *, target: int, classnames: Sequence[str], mean, std,
                           image_size: int | None = None, device="cpu") -> SyntheticSet:
    """Return the authors' synthetic images of one class (``generated_*/<Dataset>/<label>.pt``) as a set.

    ``target``: the class's index in ``classnames``; ``mean`` / ``std``: the model's normalisation.
    Images are mapped to model space as the authors' ``ForgetDataset`` does. Every image counts as
    ``reached`` (they keep only those); ``probs`` and ``thresholds`` are NaN and ``steps_taken`` -1
    (the file does not record them). ``image_size``: the model's, checked against the file; ``device``:
    where the images go.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the authors' datagen.sh (gen_data.py) in their "
                                "repository, or leave the authors' folder unset to generate the images here")
    images = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{path}: expected one tensor [N, 3, H, W] (the authors' gen_data.py format), got {shape}")
    if image_size is not None and tuple(images.shape[-2:]) != (image_size, image_size):
        raise ValueError(f"{path} holds {tuple(images.shape[-2:])} images but the model takes {image_size} px")
    if not 0 <= target < len(classnames):
        raise ValueError(f"target {target} is not an index of the {len(classnames)} class names")
    as4 = lambda v: torch.as_tensor(v, dtype=torch.float32).view(1, -1, 1, 1)  # noqa: E731
    model_space = (minmax_rescale(images.float() * as4(IMAGENET_STD) + as4(IMAGENET_MEAN)) - as4(mean)) / as4(std)
    n = len(images)
    return SyntheticSet(model_space.to(device), torch.full((n,), target, dtype=torch.long), classnames=classnames,
                        probs=torch.full((n,), math.nan), steps_taken=torch.full((n,), -1, dtype=torch.long),
                        reached=torch.ones(n, dtype=torch.bool), thresholds=torch.full((n,), math.nan))


def compare_zero_shot(ours: Mapping[str, float], theirs: Mapping[str, float]) -> list[dict]:
    """Return one row ``{"metric", "ours", "theirs", "difference"}`` per metric of ``theirs`` (a reference)."""
    return [{"metric": key, "ours": ours.get(key, math.nan), "theirs": value,
             "difference": ours.get(key, math.nan) - value} for key, value in theirs.items()]


def format_zero_shot_comparison(rows: Sequence[dict], *, title: str) -> str:
    """Return :func:`compare_zero_shot`'s rows as a short text table under ``title``."""
    lines = [title] + [f"  {r['metric']:<28s} ours {r['ours']:.4f}  authors {r['theirs']:.4f}  "
                       f"difference {r['difference']:+.4f}" for r in rows]
    return "\n".join(lines)
