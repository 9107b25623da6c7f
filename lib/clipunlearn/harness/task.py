"""Forgetting tasks: what to forget, what to keep, and the images each split holds.

:func:`build_task` turns a target ("sneaker", "sandal", "sketch:sneaker") into a
:class:`Task`: training pairs (forget / retain), a validation split of them for
selection, fixed test subsets (``forget``, ``retain``, ``other``, ``other_forget``,
``sibling``) and the MIA members. Test subsets do not depend on the seed (the same
images for every method, seed and notebook); the seed changes the training /
validation split, the batch order and every random draw of a method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .. import data

__all__ = ["EVAL_SETS", "TASK_KINDS", "Task", "build_task", "calibration_split", "class_prompts", "pick_classes",
           "pick_examples"]

TASK_KINDS = ("forget-class", "forget-subgroup", "forget-style-subgroup")
#: Test subsets a task may define, in reporting order.
EVAL_SETS = ("forget", "sibling", "retain", "other", "other_forget")


@dataclass
class Task:
    """One forgetting task on one seed.

    Index tensors point into ``train`` (training pairs, validation, MIA members) or
    ``test`` (``eval_sets``). ``forget_classes`` are label indices into
    ``classnames``; ``val_sibling`` / ``eval_sets["sibling"]`` exist for subgroup tasks.
    """

    kind: str
    target: str
    seed: int
    train: object = field(repr=False)
    test: object = field(repr=False)
    classnames: list
    templates: tuple
    forget_classes: list
    forget_train: torch.Tensor = field(repr=False)
    retain_train: torch.Tensor = field(repr=False)
    forget_val: torch.Tensor = field(repr=False)
    retain_val: torch.Tensor = field(repr=False)
    eval_sets: dict = field(repr=False)
    member_idx: torch.Tensor = field(repr=False)
    val_sibling: torch.Tensor | None = field(default=None, repr=False)
    #: other datasets evaluated with their own prompts: ``{name: {"dataset", "classnames", "templates"}}``
    #: (paper B's "other domains"); reported as ``other_acc/<name>`` and their mean ``other_acc``.
    extra_sets: dict = field(default_factory=dict, repr=False)
    #: training images scored like the test subsets, ``{"forget", "retain"}`` indices into ``train`` (empty: none);
    #: reported as ``forget_train_acc`` / ``retain_train_acc`` (paper C's Df / Dr may be measured on them).
    train_eval_sets: dict = field(default_factory=dict, repr=False)
    #: a style subgroup's retain pairs by role, indices into ``train`` (empty for other kinds): ``sibling`` (the
    #: class in its other styles), ``style`` (the other classes in the forget style, as many as the siblings)
    #: and ``photo`` (the other classes' photos); ``retain_train`` is their union.
    retain_parts: dict = field(default_factory=dict, repr=False)
    #: the caption template(s) of the forget pairs (empty: ``templates``); a style subgroup's names the subgroup.
    forget_templates: tuple = ()
    #: validation images of the other classes in the other styles (a style subgroup's; None for other kinds).
    val_other: torch.Tensor | None = field(default=None, repr=False)

    @property
    def forget_name(self) -> str:
        """The target as records store it (``config.forget_class``)."""
        return self.target

    def sizes(self) -> dict[str, int]:
        """Return the number of images in every split (for a quick look in notebooks)."""
        out = {k: len(getattr(self, k)) for k in ("forget_train", "retain_train", "forget_val", "retain_val",
                                                  "member_idx")}
        if self.val_sibling is not None:
            out["val_sibling"] = len(self.val_sibling)
        if self.val_other is not None:
            out["val_other"] = len(self.val_other)
        out.update({f"retain_{k}": len(v) for k, v in self.retain_parts.items()})
        out.update({f"test_{k}": len(v) for k, v in self.eval_sets.items()})
        return out


def _parse_target(kind: str, target: str, classnames: Sequence[str], stylenames: Sequence[str] | None,
                  hierarchy: dict[str, Sequence[str]] | None = None):
    """Return ``(forget_classes, forget_style or None, sibling_classes)`` of a task target.

    Siblings of a subgroup are the other classes of its group in ``hierarchy``
    (``{group: [class names]}``; default: ``data.FASHION_MNIST_HIERARCHY``).
    """
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; valid: {', '.join(TASK_KINDS)}")
    style = None
    if kind == "forget-style-subgroup":
        if ":" not in target:
            raise ValueError(f"a style subgroup is 'style:class' (e.g. 'sketch:sneaker'), got {target!r}")
        style, target = (s.strip() for s in target.split(":", 1))
        if not stylenames or style not in stylenames:
            raise ValueError(f"unknown style {style!r}; valid: {', '.join(stylenames or [])}")
    names = [t.strip() for t in target.split(",") if t.strip()]
    classes = data.check_classnames(names, classnames)
    siblings: list[int] = []
    if kind == "forget-subgroup":
        if len(classes) != 1:
            raise ValueError("a subgroup task forgets one fine class; give one name")
        hierarchy = data.FASHION_MNIST_HIERARCHY if hierarchy is None else hierarchy
        groups = [g for g, members in hierarchy.items() if names[0] in members]
        if not groups:
            raise ValueError(f"{names[0]!r} is in no group of the hierarchy; groups: {', '.join(hierarchy)}")
        group = groups[0]
        siblings = data.check_classnames([c for c in hierarchy[group] if c != names[0]], classnames)
        if not siblings:
            raise ValueError(f"{names[0]!r} has no sibling classes in its group {group!r}; pick one of "
                             + ", ".join(c for g in hierarchy.values() if len(g) > 1 for c in g))
    return classes, style, siblings


def _pick(dataset, *, classes=None, exclude=(), styles=None, limit=None, seed=0) -> torch.Tensor:
    has_styles = getattr(dataset, "styles", None) is not None
    return data.select_indices(dataset, classes=classes, exclude_classes=exclude,
                               styles=styles if has_styles else None, limit_per_class=limit, seed=seed)


def build_task(train, test, *, kind: str = "forget-class", target: str, seed: int = 0,
               templates: Sequence = data.FASHION_MNIST_TEMPLATES, retain_per_class: int | None = 300,
               forget_limit: int | None = None, val_fraction: float = 0.1, val_per_class: int = 100,
               eval_per_class: int | None = 300, members_limit: int = 300, n_seen: int | None = None,
               hierarchy: dict[str, Sequence[str]] | None = None, train_eval: bool = False) -> Task:
    """Return the :class:`Task` forgetting ``target`` (class names comma-separated, or ``style:class``).

    ``kind``: ``forget-class`` (whole classes; siblings none), ``forget-subgroup`` (one
    fine class of a coarse group; its siblings must stay) or ``forget-style-subgroup``
    (one class in one style, e.g. ``sketch:sneaker``; the class in other styles must
    stay). Datasets with ``styles`` (Fashion-MNIST) use style 0 ("photo") for the
    forget / retain / sibling test sets and the other styles for ``other`` and
    ``other_forget``; training pairs are photos except the style subgroup's.
    Training images are split ``1 - val_fraction`` / ``val_fraction`` per seed;
    ``retain_per_class`` caps the retain pairs per class (None: all); ``eval_per_class``
    caps every test subset per class with a fixed draw (seed 0, the same for every
    seed and notebook). MIA members: up to ``members_limit`` forget training images
    the model saw in training (``image_ids < n_seen`` when given). ``hierarchy``
    (``{group: [class names]}``, default the Fashion-MNIST one) names a subgroup's siblings. ``train_eval``:
    also score the forget and retain *training* pairs (``Task.train_eval_sets``, each capped per class by
    ``eval_per_class`` with a fixed draw): what the method trained on, beside the unseen test images.
    """
    stylenames = getattr(train, "stylenames", None) if getattr(train, "styles", None) is not None else None
    classes, style, siblings = _parse_target(kind, target, train.classnames, stylenames, hierarchy)
    styled = stylenames is not None
    photo = [0] if styled else None
    other_styles = list(range(1, len(stylenames))) if styled else None
    forget_style = [stylenames.index(style)] if style is not None else photo
    g = torch.Generator().manual_seed(seed)

    def split(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        train_part, val_part = data.split_indices(idx, [1 - val_fraction, val_fraction], seed=seed)
        return train_part, val_part

    # forget pairs and their validation split
    forget_all = _pick(train, classes=classes, styles=forget_style)
    forget_train, forget_val = split(forget_all)
    forget_pool = forget_train  # every forget training image (the MIA's members come from here, never validation)
    if forget_limit is not None:
        forget_train = forget_train[torch.randperm(len(forget_train), generator=g)[:forget_limit]].sort().values
    forget_val = _cap_per_class(train, forget_val, val_per_class, seed)

    # retain pairs: other classes (photo; a subgroup's siblings are split on their own below, so that no
    # sibling validation image is also a training pair); for a style subgroup also the class in its other styles
    retain_all = _pick(train, exclude=classes + siblings, styles=photo)
    retain_train, retain_val = split(retain_all)
    if retain_per_class is not None:
        retain_train = _cap_per_class(train, retain_train, retain_per_class, seed)
    retain_val = _cap_per_class(train, retain_val, val_per_class, seed)
    val_sibling = val_other = None
    parts, forget_templates = {}, ()
    if kind == "forget-subgroup":
        sib_all = _pick(train, classes=siblings, styles=photo)
        sib_train, val_sibling = split(sib_all)
        # siblings are part of the retain set (they must be kept), capped like the others
        retain_train = torch.cat([retain_train, _cap_per_class(train, sib_train, retain_per_class, seed)])
        val_sibling = _cap_per_class(train, val_sibling, val_per_class, seed)
    elif kind == "forget-style-subgroup":
        keep_styles = [s for s in range(len(stylenames)) if s not in forget_style]
        sib_all = _pick(train, classes=classes, styles=keep_styles)
        sib_train, val_sibling = _split_like(train, sib_all, forget_pool, forget_val, split)
        sib_styles = torch.as_tensor(train.styles)[val_sibling]  # val_per_class of each kept style
        val_sibling = torch.cat([val_sibling[sib_styles == s][:val_per_class] for s in keep_styles])
        parts, val_other = _style_retain(train, classes, forget_style, sib_train, retain_train, retain_val,
                                         keep_styles=keep_styles, per_class=retain_per_class,
                                         val_per_class=val_per_class, seed=seed, split=split)
        retain_train = torch.cat(list(parts.values()))
        forget_templates = _style_templates(templates, style)
    retain_train = retain_train.sort().values

    # fixed test subsets (seed 0 for every seed)
    evals = {"forget": _pick(test, classes=classes, styles=forget_style, limit=eval_per_class)}
    if kind == "forget-subgroup":
        evals["sibling"] = _pick(test, classes=siblings, styles=photo, limit=eval_per_class)
        evals["retain"] = _pick(test, exclude=classes + siblings, styles=photo, limit=eval_per_class)
    elif kind == "forget-style-subgroup":
        evals["sibling"] = _pick(test, classes=classes, styles=keep_styles, limit=eval_per_class)
        evals["retain"] = _pick(test, exclude=classes, styles=photo, limit=eval_per_class)
    else:
        evals["retain"] = _pick(test, exclude=classes, styles=photo, limit=eval_per_class)
    if styled:
        evals["other"] = _pick(test, exclude=classes + siblings, styles=other_styles, limit=eval_per_class)
        if kind == "forget-class":
            evals["other_forget"] = _pick(test, classes=classes, styles=other_styles, limit=eval_per_class)

    # MIA members: forget training images the original model was trained on, none of them a validation image
    members = forget_pool
    if n_seen is not None and hasattr(train, "image_ids"):
        members = members[train.image_ids[members] < n_seen]
    members = members[torch.randperm(len(members), generator=torch.Generator().manual_seed(0))[:members_limit]]
    train_evals = {"forget": _cap_per_class(train, forget_train, eval_per_class, 0),
                   "retain": _cap_per_class(train, retain_train, eval_per_class, 0)} if train_eval else {}
    return Task(kind=kind, target=target, seed=seed, train=train, test=test, classnames=list(train.classnames),
                templates=tuple(templates), forget_classes=classes, forget_train=forget_train,
                retain_train=retain_train, forget_val=forget_val, retain_val=retain_val, eval_sets=evals,
                member_idx=members.sort().values, val_sibling=val_sibling, train_eval_sets=train_evals,
                retain_parts=parts, forget_templates=forget_templates, val_other=val_other)


def _style_retain(train, classes, forget_style, sib_train, photo_train, photo_val, *, keep_styles, per_class,
                  val_per_class, seed, split) -> tuple[dict, torch.Tensor]:
    """Return a style subgroup's retain parts ``{"sibling", "style", "photo"}`` and its ``val_other`` images.

    Paper A's retain set is "similar to D_f": the class in its other styles (``per_class`` of each kept style)
    and the other classes in the forget style, as many in all as the siblings, spread evenly over the classes.
    The other classes' photos (``photo_train``) stay a part of their own. ``val_other``: other classes in the
    non-photo styles, split from the training pool like the rest, ``val_per_class`` per class and style.
    """
    styles = torch.as_tensor(train.styles)
    non_photo = list(range(1, len(train.stylenames)))
    sibling = torch.cat([_cap_per_class(train, sib_train[styles[sib_train] == s], per_class, seed)
                         for s in keep_styles])
    pool_train, pool_val = _split_like(train, _pick(train, exclude=classes, styles=non_photo), photo_train, photo_val,
                                       split)  # no rendering of a photo validation image among the training pairs
    in_style = pool_train[torch.isin(styles[pool_train], torch.as_tensor(forget_style))]
    n_classes = len(torch.as_tensor(train.targets)[in_style].unique())
    style_part = _cap_per_class(train, in_style, -(-len(sibling) // max(n_classes, 1)), seed)
    val_other = torch.cat([_cap_per_class(train, pool_val[styles[pool_val] == s], val_per_class, seed)
                           for s in non_photo])
    return {"sibling": sibling.sort().values, "style": style_part, "photo": photo_train}, val_other.sort().values


def _style_templates(templates: Sequence, style: str) -> tuple:
    """Return the one template naming ``style`` (``"a sketch of a {}."``), else all ``templates``."""
    word = data.STYLE_WORDS.get(style, style)
    named = [t for t in templates if isinstance(t, str) and f" {word} of" in t]
    return tuple(named[:1]) or tuple(templates)


def _split_like(dataset, idx: torch.Tensor, train_part: torch.Tensor, val_part: torch.Tensor, split):
    """Split ``idx`` (other renderings of the same source images) as ``train_part`` / ``val_part`` were split.

    A rendering whose source image (``image_ids``) is a validation image goes to validation, one whose source is
    a training image to training; renderings of other source images are split by ``split``. So no validation
    image has a rendering among the training pairs. A dataset without ``image_ids`` (every image its own
    source) is split by ``split`` alone.
    """
    if getattr(dataset, "image_ids", None) is None:
        return split(idx)
    ids = torch.as_tensor(dataset.image_ids)
    to_val = torch.isin(ids[idx], ids[val_part])
    to_train = torch.isin(ids[idx], ids[train_part]) & ~to_val
    rest_train, rest_val = split(idx[~(to_val | to_train)]) if bool((~(to_val | to_train)).any()) else \
        (idx[:0], idx[:0])
    return (torch.cat([idx[to_train], rest_train]).sort().values,
            torch.cat([idx[to_val], rest_val]).sort().values)


def _cap_per_class(dataset, idx: torch.Tensor, limit: int | None, seed: int) -> torch.Tensor:
    if limit is None or len(idx) == 0:
        return idx
    targets = torch.as_tensor(dataset.targets)[idx]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(idx), generator=g)
    idx, targets = idx[perm], targets[perm]
    return torch.cat([idx[targets == c][:limit] for c in targets.unique()]).sort().values


def class_prompts(task: Task, *, tokenizer, template: str | None = None) -> torch.Tensor:
    """Return tokenised prompts, one per class (``[C, ctx]``; first template), for the forget terms of the losses."""
    template = template or task.templates[0]
    return tokenizer([template.format(c) for c in task.classnames])


def pick_classes(classnames: Sequence[str], *, seed: int = 0) -> list[str]:
    """Return every class name in a seeded random order (the forget-ratio sweep takes a prefix)."""
    order = torch.randperm(len(classnames), generator=torch.Generator().manual_seed(seed))
    return [classnames[i] for i in order.tolist()]


def calibration_split(task: Task, *, per_class: int = 30, seed: int | None = None) -> dict[str, torch.Tensor]:
    """Return paper A's calibration images, ``{"forget", "sibling", "retain"}`` indices into ``task.train``.

    Carved from the task's *validation* images (``forget_val``, ``val_sibling``,
    ``retain_val``; never test images): at most ``per_class`` per class, a seeded draw
    (default: the task's seed). They are a subset of what :func:`validate_model`
    scores: both are validation images, used only to choose (alpha here, the grid there).
    """
    seed = task.seed if seed is None else seed
    parts = {"forget": task.forget_val, "retain": task.retain_val}
    if task.val_sibling is not None and len(task.val_sibling):
        parts["sibling"] = task.val_sibling
    if task.val_other is not None and len(task.val_other):
        parts["other"] = task.val_other
    return {k: _cap_per_class(task.train, v, per_class, seed) for k, v in parts.items()}


def pick_examples(task: Task, *, per_set: int = 4, sets: Sequence[str] = ("forget", "sibling")) -> torch.Tensor:
    """Return test indices of a few images of the forget and sibling subsets (for before / after pictures).

    Siblings are spread over their classes; the draw is fixed (the first images of each class).
    """
    out = []
    for name in sets:
        idx = task.eval_sets.get(name)
        if idx is None or not len(idx):
            continue
        targets = torch.as_tensor(task.test.targets)[idx]
        classes = targets.unique().tolist()
        take = -(-per_set // len(classes))
        out += [idx[targets == c][:take] for c in classes]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)
