"""The cross-paper benchmark: every method on every kind of task, from the notebooks' records.

Notebooks 10 (paper C and the baselines), 20 (paper B) and 30 (paper A) each run
their methods on their own tasks through the shared harness. :func:`collect_records`
gathers the runs that share a task and a target into one list; the benchmark
notebook then runs only the method-task pairs still missing. :func:`add_scores`
puts one number on every run, the unlearning score, so methods can be
compared across tasks in one table or heat map.
(:func:`clipunlearn.scores.unlearning_score`).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from .results import load_records
from .scores import SCORE_RETAINED, score_components, unlearning_score

__all__ = ["KEPT_METRICS", "add_scores", "collect_records", "missing_pairs", "per_class_change",
           "summary_table"]

#: Accuracies a method should keep: the forgotten class's siblings, the other classes, the other styles.
KEPT_METRICS = SCORE_RETAINED


def _original_of(records: Sequence[dict], record: dict) -> dict | None:
    target = record["config"].get("forget_class")
    return next((r for r in records if r["method"] == "original" and r["task"] == record["task"]
                 and r["config"].get("forget_class") == target), None)


def add_scores(records: Sequence[dict]) -> list[dict]:
    """Set ``metrics.unlearning_score`` (:func:`clipunlearn.scores.unlearning_score` against the original
    on the same task and target) and its parts (:func:`clipunlearn.scores.score_components`) on every result
    record that has its original (the retrained model's included); return the records."""
    for r in records:
        if r["method"] == "original" or r["task"] == "selection":
            continue
        original = _original_of(records, r)
        if original is not None and r["metrics"].get("forget_acc") is not None:
            r["metrics"]["unlearning_score"] = unlearning_score(r["metrics"], original["metrics"])
            r["metrics"].update(score_components(r["metrics"], original["metrics"]) or {})
    return list(records)


def collect_records(paths: Iterable, *, tasks: dict[str, Sequence[str]], profile: str = "mini",
                    quick: bool = False) -> list[dict]:
    """Return the result records of ``paths`` (results files) on the benchmark's tasks.

    ``tasks``: ``{task kind: [targets]}``; only records of those kinds and targets (their
    ``original`` and the ``selection`` records of their grids included) with matching
    ``profile`` / ``quick`` are kept, each tagged with
    ``config.source`` (the file's stem). Missing files are skipped.
    """
    out = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        for r in load_records(path):
            c = r["config"]
            kind = c.get("run_task") if r["task"] == "selection" else r["task"]
            if (kind in tasks and c.get("forget_class") in tasks[kind]
                    and c.get("profile", profile) == profile and bool(c.get("quick", quick)) == quick):
                out.append({**r, "config": {**c, "source": path.stem}})
    return out


def missing_pairs(records: Sequence[dict], *, methods: Sequence[str], tasks: dict[str, Sequence[str]],
                  seeds: Sequence[int]) -> list[tuple[str, str, str]]:
    """Return the ``(method, task kind, target)`` triples that lack a result for one of ``seeds``."""
    have = {(r["method"], r["task"], r["config"].get("forget_class"), r["config"].get("seed")) for r in records}
    return [(m, kind, target) for kind, targets in tasks.items() for target in targets for m in methods
            if any((m, kind, target, s) not in have for s in seeds)]


def summary_table(records: Sequence[dict], *, tasks: Sequence[str], methods: Sequence[str],
                  numeric: bool = False):
    """Return a methods x tasks table of forget accuracy, kept accuracy, score and gap, mean ± sd over seeds.

    Columns ``(task, "forget")`` (forget accuracy), ``(task, "kept")`` (mean of the kept
    accuracies of :data:`KEPT_METRICS` the task has), ``(task, "score")``
    (``metrics.unlearning_score``) and ``(task, "gap")`` (``metrics.gap_retrain``, the distance to the
    retrained model); with ``numeric=True`` floats (means) instead of ``"mean ± sd"`` strings. The
    original model is the first row, the retrained one (where recorded) the second.
    """
    def stats(values):
        values = [v for v in values if v is not None and math.isfinite(v)]
        if not values:
            return None, None
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    rows = {}
    refs = ["original"] + (["retrain"] if any(r["method"] == "retrain" for r in records) else [])
    for method in [*refs, *methods]:
        row = {}
        for task in tasks:
            runs = [r for r in records if r["method"] == method and r["task"] == task
                    and not r["metrics"].get("failed")]
            kept = [statistics.fmean([r["metrics"][k] for k in KEPT_METRICS if r["metrics"].get(k) is not None])
                    for r in runs]
            for col, values in (("forget", [r["metrics"].get("forget_acc") for r in runs]), ("kept", kept),
                                ("score", [r["metrics"].get("unlearning_score") for r in runs]),
                                ("gap", [r["metrics"].get("gap_retrain") for r in runs])):
                mean, sd = stats(values)
                row[(task, col)] = mean if numeric else ("" if mean is None else f"{mean:.3f} ± {sd:.3f}")
        rows[method] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["task", ""])
    return frame



def per_class_change(records: Sequence[dict], *, task: str, target: str) -> pd.DataFrame:
    """Return a methods x classes table: each class's test accuracy change against the original model (mean over
    seeds, failed runs left out), so that a class that gains when a confusable competitor disappears shows.

    From ``metrics.per_class_acc`` of ``task`` records on ``target``; the original model is the reference row
    (its accuracies, not changes, in the row ``original``); the retrained model's row is its change too.
    """
    runs = [r for r in records if r["task"] == task and r["config"].get("forget_class") == target
            and r["metrics"].get("per_class_acc") and not r["metrics"].get("failed")]
    original = next((r["metrics"]["per_class_acc"] for r in runs if r["method"] == "original"), None)
    if original is None:
        raise ValueError(f"no original record with per-class accuracy for {task!r} / {target!r}")
    rows = {"original": dict(original)}
    for method in dict.fromkeys(r["method"] for r in runs if r["method"] != "original"):
        per_seed = [r["metrics"]["per_class_acc"] for r in runs if r["method"] == method]
        rows[method] = {c: statistics.fmean(p[c] - original[c] for p in per_seed if c in p)
                        for c in original if any(c in p for p in per_seed)}
    return pd.DataFrame.from_dict(rows, orient="index")[list(original)]
