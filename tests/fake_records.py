"""Small fake result records in the schema of docs/RESULTS.md, for the figure, table and CLI tests.

Two methods (``ga``, ``cliperase``) plus ``original``, two seeds, two forget classes;
values are simple functions of (method, class, seed) so tests can compute the
expected means by hand.
"""

from __future__ import annotations

from clipunlearn.results import make_record

CLASSES = ("t-shirt", "sneaker", "bag")
FORGET = ("sneaker", "bag")
SEEDS = (0, 1)
METHODS = ("cliperase", "ga")  # deliberately not in display order
FORGET_ACC = {"original": 0.9, "ga": 0.3, "cliperase": 0.0}
RETAIN_ACC = {"original": 0.8, "ga": 0.6, "cliperase": 0.78}


def value(base: float, cls: str, seed) -> float:
    """``base`` shifted by +0.02 for "bag" and +0.01 per seed (so seeds differ by 0.01)."""
    return round(base + (0.02 if cls == "bag" else 0.0) + 0.01 * (seed or 0), 6)


def forget_class_records(*, other_acc: bool = True, per_class: bool = True, confusion: bool = True,
                         history_points: int = 6) -> list[dict]:
    """Task forget-class: one original per class (seed None), each method per class and seed."""
    records = []
    for cls in FORGET:
        for method, seeds in (("original", (None,)), *((m, SEEDS) for m in METHODS)):
            for seed in seeds:
                forget, retain = value(FORGET_ACC[method], cls, seed), value(RETAIN_ACC[method], cls, seed)
                metrics = {"forget_acc": forget, "retain_acc": retain, "mia": 0.5}
                if other_acc:
                    metrics["other_acc"] = retain - 0.05
                if method != "original":
                    metrics.update(seconds=2.0 + (seed or 0), steps=30, best_step=20, failed=False,
                                   stopped_early=None)
                if per_class:
                    metrics["per_class_acc"] = {c: forget if c == cls else retain for c in CLASSES}
                if confusion:
                    metrics["forget_confusion"] = {c: (forget if c == cls else (1 - forget) / (len(CLASSES) - 1))
                                                   for c in CLASSES}
                extra = {}
                if method != "original" and history_points:
                    extra["history"] = [{"step": 10 * k, "val_forget_acc": max(0.0, 0.9 - 0.2 * k),
                                         "val_retain_acc": 0.8 - 0.01 * k, "score": -0.1 + 0.2 * k}
                                        for k in range(history_points)]
                records.append(make_record(
                    method=method, task="forget-class",
                    config={"profile": "mini", "quick": False, "model": "mini", "forget_class": cls, "seed": seed,
                            "lr": 1e-4},
                    metrics=metrics, **extra))
    return records


def ablation_records() -> list[dict]:
    """Task ablation: cliperase variants FM and FM+RM, class sneaker, two seeds."""
    return [make_record(method="cliperase", task="ablation",
                        config={"profile": "mini", "forget_class": "sneaker", "seed": seed, "variant": variant},
                        metrics={"forget_acc": value(0.1 * i, "sneaker", seed),
                                 "retain_acc": value(0.5 + 0.2 * i, "sneaker", seed)})
            for i, variant in enumerate(("FM", "FM+RM")) for seed in SEEDS]


def forget_ratio_records() -> list[dict]:
    """Task forget-ratio: ga and cliperase at ratios 0.1, 0.2, 0.3, two seeds."""
    return [make_record(method=method, task="forget-ratio",
                        config={"profile": "mini", "forget_class": "sneaker", "seed": seed, "forget_ratio": ratio},
                        metrics={"forget_acc": value(FORGET_ACC[method] + ratio, "sneaker", seed),
                                 "retain_acc": value(RETAIN_ACC[method] - ratio, "sneaker", seed)})
            for ratio in (0.1, 0.2, 0.3) for method in METHODS for seed in SEEDS]


def selection_records() -> list[dict]:
    """Task selection: a 3-point lr grid per method and seed (middle one selected) and one oracle candidate."""
    records = []
    for method in METHODS:
        for seed in SEEDS:
            for lr in (3e-5, 1e-4, 3e-4):
                records.append(make_record(
                    method=method, task="selection",
                    config={"profile": "mini", "forget_class": "sneaker", "seed": seed, "lr": lr,
                            "selected": lr == 1e-4, "criterion": "retain_minus_forget", "oracle": False},
                    metrics={"val_forget_acc": 0.2, "val_retain_acc": 0.8, "score": 0.6 - abs(lr - 1e-4) * 100}))
    records.append(make_record(
        method="cliperase", task="selection",
        config={"profile": "mini", "forget_class": "sneaker", "seed": 0, "lr": 1e-4, "selected": True,
                "criterion": "retain_minus_forget", "oracle": True},
        metrics={"val_forget_acc": 0.0, "val_retain_acc": 0.8, "score": 0.8}))
    return records


def all_records() -> list[dict]:
    """Every fake task together, as one notebook's results file."""
    return forget_class_records() + ablation_records() + forget_ratio_records() + selection_records()


def setup_record() -> dict:
    """Notebook 00's zeroshot record with the stored figure data."""
    return make_record(
        method="original", task="zeroshot", config={"profile": "mini", "dataset": "fashion-mnist", "seed": 0},
        metrics={"acc": 0.88, "per_class_acc": {c: 0.9 for c in CLASSES}},
        history=[{"step": 1, "epoch": 0.1, "loss": 5.0}, {"step": 25, "epoch": 0.5, "loss": 3.0},
                 {"step": 50, "epoch": 1, "val_acc": 0.7}, {"step": 100, "epoch": 2, "val_acc": 0.8}],
        confusion={"classnames": list(CLASSES), "matrix": [[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.0, 0.1, 0.9]]},
        embedding_map={"points": [[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [0.5, 0.5]],
                       "labels": ["t-shirt", "sneaker", "bag", "sneaker"],
                       "kinds": ["image", "image", "image", "text"]})
