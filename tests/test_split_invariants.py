"""Split invariants of every forgetting task, on every task kind and every task builder.

What a task's index sets must satisfy, computed here from the datasets' own labels, styles
and source ids (never from the library's selection helpers) and checked on:

* every kind of :data:`experiment.TASK_KINDS` (forget a class or several, a subgroup with
  its siblings, a class in one style), property-based (``hypothesis``) over seeds, fractions,
  caps and class / style choices, on three small synthetic worlds shaped like the real ones:
  Fashion-MNIST (``StyledImages``, labels shuffled, three styles, a held-out tail of source
  images the mini model never saw), an ImageFolder / CoOp-like dataset (``LabeledImages``,
  class-contiguous order, no styles) and a PACS-like one (``LabeledImages`` with four domains);
* the builders of both profiles on fake files: the mini world (``data.load_mini_world`` over
  fake ``*-ubyte.gz`` files, as notebooks 10 and 40 call ``build_task``; paper A's and
  paper B's loaders on ``fashion-mnist``; the explorer's ``_build_task``) and the paper
  profile (``paper_a.load_paper_a_tasks`` and ``paper_b.load_paper_b_tasks`` over
  ImageFolder exports, the images cached by ``image_cache.CachedImages``).

The invariants: forget, retain, validation and sibling sets pairwise disjoint, each holding
only the right classes and styles (nothing of the forget target outside the forget sets);
train / validation split at the given fraction; test subsets drawn from the test split only,
exactly the images they should hold, the same for every seed; MIA members only forget-target
training images the original model saw, as many as ``members_limit`` allows, non-members
forget-target test images it never saw (checked end to end through ``evaluate_model`` with a
model that has memorised its training set); calibration images a per-class capped subset of
the validation images, never training pairs nor test images.

Three invariants were strict xfails until the library was fixed: MIA members never include
the unlearner's forget validation images, a style subgroup never validates on other renderings of
its training images, and the forget validation cap is per class.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import weakref
from collections import Counter
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipunlearn import data, experiment, metrics, models
from clipunlearn.papers import paper_a
from clipunlearn.papers import paper_b

PROPERTY = settings(max_examples=20, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
FMNIST = data.FASHION_MNIST_CLASSES
CIFAR_HIERARCHY = {"vehicle": ("airplane", "automobile", "ship", "truck"), "pet": ("cat", "dog"),
                   "wild": ("bird", "deer", "frog", "horse")}
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
PACS_HIERARCHY = {"animal": ("dog", "elephant", "giraffe", "horse"), "object": ("guitar", "house"),
                  "person": ("person",)}
SETS = ("forget_train", "forget_val", "retain_train", "retain_val", "val_sibling", "val_other")


# --------------------------------------------------------------------------- #
# synthetic worlds shaped like the real ones
# --------------------------------------------------------------------------- #
def shuffled_labels(n: int, n_classes: int, g: torch.Generator) -> torch.Tensor:
    """``n`` labels in random order, every class at least ``n // n_classes`` times (Fashion-MNIST's order)."""
    return (torch.arange(n) % n_classes)[torch.randperm(n, generator=g)]


def fmnist_like(n: int, seed: int) -> data.StyledImages:
    """What ``data.load_fashion_mnist(styles=STYLES)`` returns, on ``n`` random 32 px source images."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n, 32, 32), generator=g, dtype=torch.uint8)
    labels = shuffled_labels(n, len(FMNIST), g)
    k = len(data.STYLES)
    return data.StyledImages(torch.cat([data.apply_style(raw, s) for s in data.STYLES]), labels.repeat(k),
                             torch.arange(k).repeat_interleave(n), torch.arange(n).repeat(k),
                             classnames=FMNIST, stylenames=data.STYLES)


def in_memory(labels, classnames, *, seed: int, styles=None, stylenames=()) -> data.LabeledImages:
    """A ``LabeledImages`` over unique random tensors (what ``load_image_folder`` / ``load_pacs`` give)."""
    g = torch.Generator().manual_seed(seed)
    base = [(torch.randn(3, 2, 2, generator=g), int(y)) for y in labels]
    return data.LabeledImages(base, labels, classnames, styles=styles, stylenames=stylenames)


def folder_like(per_class: tuple, seed: int) -> data.LabeledImages:
    """An ImageFolder / CoOp split: CIFAR-10 names, images in class order, uneven class sizes, no styles."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    return in_memory(labels, data.CIFAR10_CLASSES, seed=seed)


def pacs_like(per_group: int, seed: int) -> data.LabeledImages:
    """PACS loaded whole or split (``data.load_pacs``): domain-major, class-ordered within a domain."""
    n_dom, n_cls = len(data.PACS_DOMAINS), len(PACS_CLASSES)
    styles = torch.arange(n_dom).repeat_interleave(n_cls * per_group)
    labels = torch.arange(n_cls).repeat_interleave(per_group).repeat(n_dom)
    return in_memory(labels, PACS_CLASSES, seed=seed, styles=styles, stylenames=data.PACS_DOMAINS)


N_TRAIN, HELD_OUT = 240, 40  # the fake Fashion-MNIST train split and its never-seen tail (60 000 and 5 000)
WORLDS = {
    "fmnist": (fmnist_like(N_TRAIN, 0), fmnist_like(80, 1), None),
    "folder": (folder_like((14, 9, 12, 20, 11, 8, 13, 10, 16, 12), 2), folder_like((5,) * 10, 3), CIFAR_HIERARCHY),
    "pacs": (pacs_like(6, 4), pacs_like(3, 5), PACS_HIERARCHY),
}


# --------------------------------------------------------------------------- #
# reading datasets directly
# --------------------------------------------------------------------------- #
_FINGERPRINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def fingerprints(ds) -> list[bytes]:
    """The content of every image of ``ds`` (pixels, tensor values or file bytes), to compare across datasets."""
    if ds not in _FINGERPRINTS:
        if getattr(ds, "paths", None):
            out = [hashlib.sha1(p.read_bytes()).digest() for p in ds.paths]
        elif hasattr(ds, "images"):
            out = [hashlib.sha1(x.numpy().tobytes()).digest() for x in ds.images]
        else:
            out = [hashlib.sha1(ds.base[i][0].numpy().tobytes()).digest() for i in range(len(ds))]
        _FINGERPRINTS[ds] = out
    return _FINGERPRINTS[ds]


def styled(ds) -> bool:
    return getattr(ds, "styles", None) is not None


def image_rows(ds) -> list[tuple[int, int, int | None]]:
    """``(index, class, style or None)`` of every image, from the dataset's own attributes."""
    targets = torch.as_tensor(ds.targets).tolist()
    styles = torch.as_tensor(ds.styles).tolist() if styled(ds) else [None] * len(targets)
    return list(zip(range(len(targets)), targets, styles))


def where(ds, keep) -> set[int]:
    """Indices of the images whose ``(class, style)`` satisfy ``keep``."""
    return {i for i, c, s in image_rows(ds) if keep(c, s)}


def as_set(idx) -> set[int]:
    """The indices of ``idx`` as a set; fails when one is repeated."""
    values = torch.as_tensor(idx).tolist()
    assert len(values) == len(set(values)), "an index appears twice"
    return set(values)


def per_class(ds, idx) -> Counter:
    return Counter(torch.as_tensor(ds.targets)[torch.as_tensor(sorted(idx), dtype=torch.long)].tolist())


def per_style(ds, idx) -> Counter:
    return Counter(torch.as_tensor(ds.styles)[torch.as_tensor(sorted(idx), dtype=torch.long)].tolist())


def target_spec(task, hierarchy):
    """``(forget classes, sibling classes, forget style, main style)`` read from the target string itself."""
    names = list(task.train.classnames)
    target, style = task.target, None
    if task.kind == "forget-style-subgroup":
        style, target = (s.strip() for s in target.split(":"))
    forget = {names.index(n.strip()) for n in target.split(",")}
    siblings = set()
    if task.kind == "forget-subgroup":
        group = next(g for g in (hierarchy or data.FASHION_MNIST_HIERARCHY).values() if target in g)
        siblings = {names.index(c) for c in group if c != target}
    main = 0 if styled(task.train) else None  # style 0: Fashion-MNIST's photo (the training and retain style)
    return forget, siblings, (task.train.stylenames.index(style) if style else main), main


def pools(task, hierarchy):
    """Every set a task may draw from, per dataset: ``{name: indices}`` (train) and ``{eval set: indices}`` (test)."""
    forget, siblings, fs, main = target_spec(task, hierarchy)
    kind = task.kind

    def is_(style, s):
        return style is None or s == style

    def sets(ds):
        out = {"forget": where(ds, lambda c, s: c in forget and is_(fs, s)),
               "retain": where(ds, lambda c, s: c not in forget | siblings and is_(main, s)),
               "sibling": set()}
        if kind == "forget-subgroup":
            out["sibling"] = where(ds, lambda c, s: c in siblings and is_(main, s))
        elif kind == "forget-style-subgroup":
            out["sibling"] = where(ds, lambda c, s: c in forget and s != fs)
            # paper A's retain set "similar to D_f": the other classes in the forget style; validation of the
            # other classes in the non-photo styles
            out["style_other"] = where(ds, lambda c, s: c not in forget and s == fs)
            out["other_val"] = where(ds, lambda c, s: c not in forget and s != main)
        if styled(ds):
            out["other"] = where(ds, lambda c, s: c not in forget | siblings and s != main)
            if kind == "forget-class":
                out["other_forget"] = where(ds, lambda c, s: c in forget and s != main)
        return out

    train, test = sets(task.train), sets(task.test)
    expected_evals = {"forget", "retain"} | ({"sibling"} if kind != "forget-class" else set()) | (
        {"other"} | ({"other_forget"} if kind == "forget-class" else set()) if styled(task.test) else set())
    return train, {k: v for k, v in test.items() if k in expected_evals}


def seen_forget_pool(task, hierarchy, n_seen):
    """The forget-target training images the original model trained on (``image_ids < n_seen`` where known)."""
    pool = pools(task, hierarchy)[0]["forget"]
    if n_seen is not None and hasattr(task.train, "image_ids"):
        ids = task.train.image_ids.tolist()
        pool = {i for i in pool if ids[i] < n_seen}
    return pool


def within(n: int, x: float, tolerance: float = 0.5) -> bool:
    """``n`` is ``x`` rounded (or, with a larger ``tolerance``, about ``x``)."""
    return abs(n - x) <= tolerance + 1e-9


# --------------------------------------------------------------------------- #
# the invariants of one task
# --------------------------------------------------------------------------- #
def check_task(task, *, hierarchy=None, val_fraction=0.1, retain_per_class=300, val_per_class=100,
               eval_per_class=300, members_limit=300, n_seen=None, forget_limit=None, seed=None):
    """Assert every split invariant of ``task`` (built with these arguments of ``build_task``)."""
    train, test = task.train, task.test
    forget, siblings, fs, main = target_spec(task, hierarchy)
    assert sorted(task.forget_classes) == sorted(forget)
    tr, ev = pools(task, hierarchy)
    got = {k: as_set(getattr(task, k)) if getattr(task, k) is not None else None for k in SETS}

    # training pairs and validation images: the right classes and styles ...
    assert got["forget_train"] <= tr["forget"] and got["forget_val"] <= tr["forget"]
    style_other = tr.get("style_other", set())
    # siblings are kept: trained on as retain pairs (a style subgroup's also the other classes in its style)
    assert got["retain_train"] <= tr["retain"] | tr["sibling"] | style_other
    if task.kind == "forget-style-subgroup":
        assert got["val_other"] <= tr["other_val"]
        parts = {k: as_set(v) for k, v in task.retain_parts.items()}
        assert set().union(*parts.values()) == got["retain_train"]
        assert parts["sibling"] <= tr["sibling"] and parts["style"] <= style_other
        assert parts["photo"] <= tr["retain"]
        n_classes = len(per_class(train, parts["style"]))
        if n_classes:  # as many as the siblings, spread over the classes (each capped at the even share)
            assert max(per_class(train, parts["style"]).values()) <= -(-len(parts["sibling"]) // n_classes)
    else:
        assert task.val_other is None and task.retain_parts == {}
    assert got["retain_val"] <= tr["retain"]
    if task.kind == "forget-class":
        assert task.val_sibling is None
    else:
        assert got["val_sibling"] <= tr["sibling"]
    # ... pairwise disjoint (forget / retain, train / validation)
    parts = [(k, v) for k, v in got.items() if v is not None]
    for (a, x), (b, y) in itertools.combinations(parts, 2):
        assert not x & y, f"{a} and {b} share images {sorted(x & y)[:5]}"
    # ... every kept class (and kept style of the class) is trained or validated on
    for c in per_class(train, tr["retain"]):
        assert c in per_class(train, got["retain_train"] | got["retain_val"]), f"retain class {c} missing"
    if task.kind == "forget-subgroup":
        for c in per_class(train, tr["sibling"]):
            assert c in per_class(train, (got["retain_train"] & tr["sibling"]) | got["val_sibling"])
    if task.kind == "forget-style-subgroup":
        for s in per_style(train, tr["sibling"]):
            assert s in per_style(train, (got["retain_train"] & tr["sibling"]) | got["val_sibling"])
    # ... split at the validation fraction (the training parts are not capped here), caps respected
    if forget_limit is None:
        assert within(len(got["forget_train"]), (1 - val_fraction) * len(tr["forget"]))
    else:
        assert len(got["forget_train"]) <= forget_limit
    assert len(got["forget_val"]) <= val_per_class * len(forget)
    if retain_per_class is None:
        assert within(len(got["retain_train"] & tr["retain"]), (1 - val_fraction) * len(tr["retain"]))
        # a style subgroup's siblings span several styles: one rounding per style, should a fix split them by source
        styles_tolerance = len(train.stylenames) if task.kind == "forget-style-subgroup" else 0.5
        assert within(len(got["retain_train"] & tr["sibling"]), (1 - val_fraction) * len(tr["sibling"]),
                      styles_tolerance)
    elif task.kind == "forget-style-subgroup":  # siblings: the cap in each kept style
        assert max(per_class(train, got["retain_train"] & tr["retain"]).values(), default=0) <= retain_per_class
        assert max(per_style(train, got["retain_train"] & tr["sibling"]).values(), default=0) <= retain_per_class
    else:
        assert max(per_class(train, got["retain_train"]).values(), default=0) <= retain_per_class
    assert max(per_class(train, got["retain_val"]).values(), default=0) <= val_per_class
    if task.kind == "forget-subgroup":
        assert max(per_class(train, got["val_sibling"]).values(), default=0) <= val_per_class
    if task.kind == "forget-style-subgroup":
        assert max(per_style(train, got["val_sibling"]).values(), default=0) <= val_per_class
    if retain_per_class is None and forget_limit is None and val_per_class >= len(train):  # nothing capped
        assert got["forget_train"] | got["forget_val"] == tr["forget"]
        kept = got["retain_train"] | got["retain_val"] | (got["val_sibling"] or set())
        assert kept & (tr["retain"] | tr["sibling"]) == tr["retain"] | tr["sibling"]
        assert kept - (tr["retain"] | tr["sibling"]) <= style_other

    # test subsets: exactly the expected ones, from the test split, the right images, disjoint
    assert task.test is not task.train and set(task.eval_sets) == set(ev)
    evals = {k: as_set(v) for k, v in task.eval_sets.items()}
    for name, idx in evals.items():
        assert idx <= ev[name], f"test subset {name} holds images it should not"
        want = per_class(test, ev[name])
        counts = {c: min(n, eval_per_class) for c, n in want.items()} if eval_per_class is not None else dict(want)
        assert dict(per_class(test, idx)) == counts, f"test subset {name}: wrong count per class"
    for (a, x), (b, y) in itertools.combinations(evals.items(), 2):
        assert not x & y, f"test subsets {a} and {b} share images"
    train_split = set(fingerprints(train))
    test_prints = fingerprints(test)
    assert not {test_prints[i] for idx in evals.values() for i in idx} & train_split, "a test image is a training image"

    # MIA members: forget-target training images the original model saw, never a validation image, as many as
    # members_limit allows (drawn from every forget training image, also those forget_limit leaves out)
    members = as_set(task.member_idx)
    seen = seen_forget_pool(task, hierarchy, n_seen)
    assert members <= seen, "a member is not a forget-target training image the original model saw"
    assert not members & got["forget_val"], "a member is a forget validation image"
    assert min(members_limit, len(seen & got["forget_train"])) <= len(members) <= min(members_limit,
                                                                                     len(seen - got["forget_val"]))
    return task


def build(world: str, *, kind, target, **kwargs):
    """``(build_task on WORLDS[world], its hierarchy)``."""
    train, test, hierarchy = WORLDS[world]
    templates = data.FASHION_MNIST_TEMPLATES if train.classnames == list(FMNIST) else ("a photo of a {}.",)
    task = experiment.build_task(train, test, kind=kind, target=target, templates=templates, hierarchy=hierarchy,
                                 **kwargs)
    return task, hierarchy


# --------------------------------------------------------------------------- #
# property-based: every kind, world, seed, fraction, cap and target
# --------------------------------------------------------------------------- #
def kind_worlds():
    return [(w, k) for w in WORLDS for k in experiment.TASK_KINDS
            if k != "forget-style-subgroup" or styled(WORLDS[w][0])]


@st.composite
def tasks(draw):
    """``(world, kind, target, build_task keyword arguments)``."""
    world, kind = draw(st.sampled_from(kind_worlds()))
    train, _, hierarchy = WORLDS[world]
    names = list(train.classnames)
    if kind == "forget-class":
        target = ",".join(draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)))
    elif kind == "forget-subgroup":
        groups = (hierarchy or data.FASHION_MNIST_HIERARCHY).values()
        target = draw(st.sampled_from([c for g in groups if len(g) > 1 for c in g]))
    else:
        target = f"{draw(st.sampled_from(train.stylenames))}:{draw(st.sampled_from(names))}"
    kwargs = dict(
        seed=draw(st.integers(0, 2 ** 16)),
        val_fraction=draw(st.sampled_from([0.1, 0.2, 0.25, 1 / 3, 0.5])),
        retain_per_class=draw(st.one_of(st.none(), st.integers(1, 8))),
        val_per_class=draw(st.one_of(st.integers(1, 6), st.just(10 ** 6))),
        eval_per_class=draw(st.one_of(st.none(), st.integers(1, 6))),
        members_limit=draw(st.integers(1, 40)),
        n_seen=draw(st.one_of(st.none(), st.integers(0, N_TRAIN))),
        forget_limit=draw(st.one_of(st.none(), st.integers(1, 10))),
    )
    return world, kind, target, kwargs


@PROPERTY
@given(tasks())
def test_every_kind_keeps_its_sets_apart_and_holds_the_right_images(case):
    world, kind, target, kwargs = case
    task, hierarchy = build(world, kind=kind, target=target, **kwargs)
    check_task(task, hierarchy=hierarchy, **kwargs)


@PROPERTY
@given(tasks(), st.integers(0, 2 ** 16))
def test_test_subsets_do_not_depend_on_the_seed(case, other_seed):
    """The same test images for every seed (``build_task``'s promise); the members may follow the split."""
    world, kind, target, kwargs = case
    task, _ = build(world, kind=kind, target=target, **kwargs)
    again, _ = build(world, kind=kind, target=target, **{**kwargs, "seed": other_seed})
    assert set(task.eval_sets) == set(again.eval_sets)
    assert all(torch.equal(task.eval_sets[k], again.eval_sets[k]) for k in task.eval_sets)


@PROPERTY
@given(tasks(), st.integers(1, 5), st.one_of(st.none(), st.integers(0, 2 ** 16)))
def test_calibration_images_are_capped_validation_images(case, per_class_cap, seed):
    world, kind, target, kwargs = case
    task, hierarchy = build(world, kind=kind, target=target, **kwargs)
    split = experiment.calibration_split(task, per_class=per_class_cap, seed=seed)
    has_siblings = task.val_sibling is not None and len(task.val_sibling) > 0
    has_other = task.val_other is not None and len(task.val_other) > 0
    assert set(split) == {"forget", "retain"} | ({"sibling"} if has_siblings else set()) | (
        {"other"} if has_other else set())
    source = {"forget": task.forget_val, "retain": task.retain_val, "sibling": task.val_sibling,
              "other": task.val_other}
    train = task.train
    for name, idx in split.items():
        got, val = as_set(idx), as_set(source[name])
        assert got <= val, f"calibration {name} images are not {name} validation images"
        want = {c: min(n, per_class_cap) for c, n in per_class(train, val).items()}
        assert dict(per_class(train, got)) == want  # per class: the cap, or every validation image
    calib = [(k, as_set(v)) for k, v in split.items()]
    for (a, x), (b, y) in itertools.combinations(calib, 2):
        assert not x & y, f"calibration {a} and {b} share images"
    every = set().union(*(v for _, v in calib))
    assert not every & (as_set(task.forget_train) | as_set(task.retain_train)), "a calibration image is a training pair"
    prints = fingerprints(train)
    assert not {prints[i] for i in every} & set(fingerprints(task.test)), "a calibration image is a test image"
    tr, _ = pools(task, hierarchy)
    assert dict(calib)["retain"] <= tr["retain"] and dict(calib)["forget"] <= tr["forget"]


# --------------------------------------------------------------------------- #
# hand-picked cases
# --------------------------------------------------------------------------- #
HAND_PICKED = [("fmnist", "forget-class", "sneaker"), ("fmnist", "forget-class", "shirt,bag,trouser"),
               ("fmnist", "forget-subgroup", "sandal"), ("fmnist", "forget-subgroup", "coat"),
               ("fmnist", "forget-style-subgroup", "sketch:sneaker"),
               ("fmnist", "forget-style-subgroup", "negative:t-shirt"),
               ("folder", "forget-class", "dog"), ("folder", "forget-subgroup", "automobile"),
               ("pacs", "forget-class", "guitar,house"), ("pacs", "forget-style-subgroup", "cartoon:dog")]


@pytest.mark.parametrize("world, kind, target", HAND_PICKED)
@pytest.mark.parametrize("uncapped", [False, True], ids=["capped", "uncapped"])
def test_hand_picked_tasks(world, kind, target, uncapped):
    kwargs = (dict(retain_per_class=None, val_per_class=10 ** 6, eval_per_class=None, members_limit=10 ** 6)
              if uncapped else dict(retain_per_class=3, val_per_class=2, eval_per_class=2, members_limit=5,
                                    forget_limit=3))
    kwargs.update(seed=3, val_fraction=0.25, n_seen=N_TRAIN - HELD_OUT)
    task, hierarchy = build(world, kind=kind, target=target, **kwargs)
    check_task(task, hierarchy=hierarchy, **kwargs)
    if uncapped:  # every set is exactly its pool: nothing dropped, nothing added
        tr, ev = pools(task, hierarchy)
        assert {k: as_set(v) for k, v in task.eval_sets.items()} == ev
        seen = seen_forget_pool(task, hierarchy, kwargs["n_seen"])
        assert seen - as_set(task.forget_val) <= as_set(task.member_idx) <= seen


def test_siblings_and_other_styles_hold_what_they_should():
    """Fashion-MNIST by name: which classes and styles each set of each kind holds."""
    train, test, _ = WORLDS["fmnist"]

    def content(ds, idx):
        return {(FMNIST[y], ds.stylenames[s]) for y, s in zip(ds.targets[idx].tolist(), ds.styles[idx].tolist())}

    shoes = {"sandal", "sneaker", "ankle boot"}
    sub, _ = build("fmnist", kind="forget-subgroup", target="sandal", seed=0)
    assert content(test, sub.eval_sets["sibling"]) == {("sneaker", "photo"), ("ankle boot", "photo")}
    assert content(test, sub.eval_sets["forget"]) == {("sandal", "photo")}
    assert content(test, sub.eval_sets["retain"]) == {(n, "photo") for n in FMNIST if n not in shoes}
    assert content(test, sub.eval_sets["other"]) == {(n, s) for n in FMNIST if n not in shoes
                                                     for s in ("sketch", "negative")}
    assert content(train, sub.val_sibling) == {("sneaker", "photo"), ("ankle boot", "photo")}
    assert content(train, sub.retain_train) == {(n, "photo") for n in FMNIST if n != "sandal"}

    style, _ = build("fmnist", kind="forget-style-subgroup", target="sketch:sneaker", seed=0)
    assert content(test, style.eval_sets["forget"]) == {("sneaker", "sketch")}
    assert content(test, style.eval_sets["sibling"]) == {("sneaker", "photo"), ("sneaker", "negative")}
    assert content(test, style.eval_sets["retain"]) == {(n, "photo") for n in FMNIST if n != "sneaker"}
    assert content(test, style.eval_sets["other"]) == {(n, s) for n in FMNIST if n != "sneaker"
                                                       for s in ("sketch", "negative")}
    assert content(train, style.forget_train) == {("sneaker", "sketch")}
    assert content(train, style.retain_train) == ({(n, "photo") for n in FMNIST if n != "sneaker"}
                                                  | {("sneaker", "photo"), ("sneaker", "negative")}
                                                  | {(n, "sketch") for n in FMNIST if n != "sneaker"})
    assert content(train, style.retain_parts["style"]) == {(n, "sketch") for n in FMNIST if n != "sneaker"}
    assert content(train, style.val_other) == {(n, s) for n in FMNIST if n != "sneaker" for s in ("sketch", "negative")}

    cls, _ = build("fmnist", kind="forget-class", target="sneaker", seed=0)
    assert content(test, cls.eval_sets["other_forget"]) == {("sneaker", "sketch"), ("sneaker", "negative")}
    assert content(test, cls.eval_sets["other"]) == {(n, s) for n in FMNIST if n != "sneaker"
                                                     for s in ("sketch", "negative")}
    assert content(train, cls.retain_train) == {(n, "photo") for n in FMNIST if n != "sneaker"}
    assert content(train, cls.member_idx) == {("sneaker", "photo")}


# --------------------------------------------------------------------------- #
# MIA: members seen by the original model, non-members never, end to end through evaluate_model
# --------------------------------------------------------------------------- #
def memorising_model(monkeypatch, seen: set[bytes], forget_classes) -> list:
    """Patch the zero-shot prediction with a model that memorised exactly the images ``seen`` (by content)
    and, like a good unlearner, still knows every class but the forget target.

    Seen images and images of other classes get a confident, right answer (loss ~0); unseen
    images of the forget target a uniform one (loss log C). A loss-threshold attack on it has
    AUC 1 exactly when every member was seen and every non-member is an unseen image of the
    target. Returns ``(dataset, indices, labels)`` of every prediction.
    """
    calls = []
    forget = torch.as_tensor(list(forget_classes))

    def predict_logits(model, classifier, dataset, *, indices=None, batch_size=512, device="cpu", logit_scale=None):
        idx = torch.as_tensor(indices, dtype=torch.long)
        y = torch.as_tensor(dataset.targets)[idx]
        prints = fingerprints(dataset)
        known = torch.tensor([prints[i] in seen for i in idx.tolist()], dtype=torch.bool) | ~torch.isin(y, forget)
        logits = torch.zeros(len(idx), len(dataset.classnames))
        logits[torch.arange(len(idx)), y] = torch.where(known, 20.0, 0.0)
        calls.append((dataset, idx, y))
        return logits, y

    monkeypatch.setattr(metrics, "build_classifier", lambda *args, **kwargs: None)
    monkeypatch.setattr(metrics, "predict_logits", predict_logits)
    return calls


def original_training_set(train, n_seen) -> set[bytes]:
    """What the original model trained on: the train split (its first ``n_seen`` source images where known)."""
    prints = fingerprints(train)
    if n_seen is None or not hasattr(train, "image_ids"):
        return set(prints)
    return {p for p, i in zip(prints, train.image_ids.tolist()) if i < n_seen}


def check_mia(task, n_seen):
    """``evaluate_model``'s MIA on a memorising model: members seen and of the target, non-members never seen."""
    task = replace(task, extra_sets={})  # other datasets' accuracies are no part of the MIA
    with pytest.MonkeyPatch.context() as mp:
        calls = memorising_model(mp, original_training_set(task.train, n_seen), task.forget_classes)
        out = experiment.evaluate_model(torch.nn.Identity(), task, tokenizer=None)
    assert out["mia"] == 1.0, "a member the original model never saw, or a non-member it saw or not of the target"
    on_train = [(i, y) for d, i, y in calls if d is task.train]
    members = [(i, y) for i, y in on_train if torch.equal(i, task.member_idx)]
    assert len(members) == 1  # the members, scored on train once
    assert set(members[0][1].tolist()) <= set(task.forget_classes), "a member is not of the forget target"
    fit = [i for i, _ in on_train if not torch.equal(i, task.member_idx)]  # MIA-efficacy's members: retain-train
    assert len(fit) <= 1 and all(set(i.tolist()) <= set(task.retain_train.tolist()) for i in fit)
    nonmembers = [y for d, i, y in calls if d is task.test and torch.equal(i, task.eval_sets["forget"])]
    assert nonmembers and set(nonmembers[0].tolist()) == set(task.forget_classes)  # non-members: its test images


@pytest.mark.parametrize("world, kind, target", HAND_PICKED)
def test_mia_members_were_trained_on_and_nonmembers_never(world, kind, target):
    n_seen = N_TRAIN - HELD_OUT
    task, _ = build(world, kind=kind, target=target, seed=1, n_seen=n_seen, eval_per_class=4, members_limit=30)
    check_mia(task, n_seen)


def test_the_checks_see_a_wrong_member_set():
    """Members replaced by retain images (a planted bug the suite once missed), or by forget images the model
    never saw: each fails a check."""
    n_seen = N_TRAIN - HELD_OUT
    kwargs = dict(n_seen=n_seen, eval_per_class=4, members_limit=5)
    task, _ = build("fmnist", kind="forget-class", target="sneaker", seed=0, **kwargs)
    check_task(task, **kwargs)
    check_mia(task, n_seen)
    retain = replace(task, member_idx=task.retain_train[:5])
    with pytest.raises(AssertionError):
        check_task(retain, **kwargs)
    with pytest.raises(AssertionError, match="forget target"):
        check_mia(retain, n_seen)
    train = task.train
    unseen = [i for i in range(len(train)) if train.image_ids[i] >= n_seen and train.styles[i] == 0
              and int(train.targets[i]) in task.forget_classes][:5]
    assert unseen
    with pytest.raises(AssertionError, match="never saw"):
        check_mia(replace(task, member_idx=torch.tensor(unseen)), n_seen)


@pytest.mark.parametrize("world, kind, target", HAND_PICKED[:1] + HAND_PICKED[4:5] + HAND_PICKED[6:7])
def test_mia_members_are_not_the_unlearners_validation_images(world, kind, target):
    task, _ = build(world, kind=kind, target=target, seed=0, val_fraction=0.25)
    assert not as_set(task.member_idx) & as_set(task.forget_val)


@pytest.mark.parametrize("kind, target", [
    ("forget-class", "sneaker"), ("forget-subgroup", "sandal"),
    ("forget-style-subgroup", "sketch:sneaker"),
])
def test_validation_images_share_no_source_image_with_training_pairs(kind, target):
    task, _ = build("fmnist", kind=kind, target=target, seed=0, val_fraction=0.25)
    ids = task.train.image_ids
    trained = set(ids[torch.cat([task.forget_train, task.retain_train])].tolist())
    for name in ("forget_val", "retain_val", "val_sibling"):
        idx = getattr(task, name)
        if idx is not None:
            assert not set(ids[idx].tolist()) & trained, f"{name} shares source images with training pairs"


def test_forget_validation_is_capped_per_class():
    task, _ = build("folder", kind="forget-class", target="airplane,automobile", seed=0, val_fraction=0.5,
                    val_per_class=3)
    counts = per_class(task.train, as_set(task.forget_val))
    assert counts == {0: 3, 1: 3}


# --------------------------------------------------------------------------- #
# the builders of both profiles, on fake files
# --------------------------------------------------------------------------- #
def write_idx(path, array: torch.Tensor) -> None:
    """Write ``array`` (uint8) in the IDX format of the Fashion-MNIST ``*-ubyte.gz`` files."""
    header = bytes([0, 0, 8, array.dim()]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.numpy().tobytes())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """``fashion-mnist/`` (fake ``*-ubyte.gz``: 240 train and 60 test 28 px images) and ImageFolder exports of
    ``cifar10`` (train / test) and ``stl10`` (test), every image a unique random PNG."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    g = torch.Generator().manual_seed(7)
    folder = root / "fashion-mnist"
    folder.mkdir()
    for split, n in (("train", N_TRAIN), ("t10k", 60)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", torch.randint(0, 256, (n, 28, 28), generator=g,
                                                                          dtype=torch.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", shuffled_labels(n, 10, g).to(torch.uint8))
    rng = np.random.default_rng(0)
    for name, split, classes, n in (("cifar10", "train", "airplane automobile cat dog truck", 8),
                                    ("cifar10", "test", "airplane automobile cat dog truck", 3),
                                    ("stl10", "test", "bird cat", 2)):
        for c in classes.split():
            path = root / name / split / c
            path.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path / f"{i}.png")
    return root


MINI_TASKS = {"forget-class": "sneaker", "forget-subgroup": "sandal", "forget-style-subgroup": "sketch:sneaker"}
SMALL = dict(retain_per_class=4, eval_per_class=3, val_per_class=2)


@pytest.fixture
def mini_seen(monkeypatch):
    """The fake Fashion-MNIST's never-seen tail: ``models.MINI_SEEN_IMAGES`` as for the real 60 000 / 5 000."""
    monkeypatch.setattr(models, "MINI_SEEN_IMAGES", N_TRAIN - HELD_OUT)
    return N_TRAIN - HELD_OUT


def test_mini_world_as_notebooks_10_and_40_build_it(data_dir, mini_seen):
    train, test = data.load_mini_world(data_dir=data_dir)
    assert len(train) == 3 * N_TRAIN and train.stylenames == list(data.STYLES)
    for kind, target in MINI_TASKS.items():
        for seed in (0, 1):
            task = experiment.build_task(train, test, kind=kind, target=target, seed=seed,
                                         n_seen=models.MINI_SEEN_IMAGES, **SMALL)
            check_task(task, n_seen=mini_seen, **SMALL)
            check_mia(task, mini_seen)
    ratio = experiment.build_task(train, test, kind="forget-class", target="sneaker,shirt,bag", seed=0,
                                  n_seen=mini_seen, **SMALL)  # notebook 10's forget-ratio sweep
    check_task(ratio, n_seen=mini_seen, **SMALL)


def test_explorer_builds_the_same_tasks(data_dir, mini_seen):
    from clipunlearn import explorer

    train, test = data.load_mini_world(data_dir=data_dir)
    world = SimpleNamespace(train=train, test=test, templates=data.FASHION_MNIST_TEMPLATES, n_seen=mini_seen)
    for kind, target in MINI_TASKS.items():
        config = explorer.ExplorerConfig(kind=kind, target=target, seed=2, eval_per_class=3, retain_per_class=4)
        check_task(explorer._build_task(config, world), n_seen=mini_seen, retain_per_class=4, eval_per_class=3,
                   val_per_class=3, members_limit=3)


@pytest.mark.parametrize("dataset", ["fashion-mnist", "cifar10"])
def test_paper_a_loader(data_dir, mini_seen, dataset):
    if dataset == "fashion-mnist":  # the mini profile's paper A tasks
        targets = {"sandal": "forget-subgroup", "sketch:sneaker": "forget-style-subgroup"}
        hierarchy, transfer = None, ()
    else:  # the paper profile on an ImageFolder export, a user-named group, a transfer set
        targets = {"automobile": "forget-subgroup"}
        hierarchy, transfer = {"car group": ["automobile", "truck", "airplane"]}, ("stl10",)
    *_, train, test, tasks = paper_a.load_paper_a_tasks(
        model="tiny-rn", pretrained="random", dataset=dataset, targets=targets, seeds=[0, 1], hierarchy=hierarchy,
        transfer=transfer, data_dir=data_dir, **SMALL)
    n_seen = mini_seen if dataset == "fashion-mnist" else None
    for seeded in tasks.values():
        for task in seeded:
            check_task(task, hierarchy=hierarchy, n_seen=n_seen, **SMALL)
            check_mia(task, n_seen)


@pytest.mark.parametrize("dataset, classes", [("fashion-mnist", ["sneaker", "shirt"]), ("cifar10", ["dog", "cat"])])
def test_paper_b_loader(data_dir, mini_seen, dataset, classes):
    small = dict(retain_per_class=4, eval_per_class=3)
    tasks, _ = paper_b.load_paper_b_tasks(backbones={"tiny-rn": "random"}, forget={dataset: classes}, seeds=[0, 1],
                                            others={"cifar10": ["stl10"]}, data_dir=data_dir, workers=0, **small)
    n_seen = mini_seen if dataset == "fashion-mnist" else None
    for seeded in tasks[("tiny-rn", dataset)].values():
        for task in seeded:
            check_task(task, n_seen=n_seen, **small)
            check_mia(task, n_seen)
