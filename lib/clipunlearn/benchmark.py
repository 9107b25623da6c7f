"""The cross-paper benchmark: every method on every kind of task, from the notebooks' records.

Notebooks 10 (paper C and the baselines), 20 (paper B) and 30 (paper A) each run
their methods on their own tasks through the shared harness. :func:`collect_records`
gathers the runs that share a task and a target into one list; the benchmark
notebook then runs only the method-task pairs still missing. :func:`add_scores`
puts one number on every run, the :func:`forgetting_score`, so methods can be
compared across tasks in one table or heat map.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

from .results import load_records

__all__ = ["KEPT_METRICS", "forgetting_score", "add_scores", "collect_records", "missing_pairs"]

#: Accuracies a method should keep: the forgotten class's siblings, the other classes, the other styles.
KEPT_METRICS = ("sibling_acc", "retain_acc", "other_acc")


def forgetting_score(metrics: dict, original: dict) -> float:
    """Return one number in [0, 1] for a run: the harmonic mean of forgetting and retention (1 = ideal).

    ``forgetting = clip(1 - forget_acc / original forget_acc, 0, 1)`` (1: nothing of the
    target is recognised any more); ``retention`` = the mean over :data:`KEPT_METRICS`
    present in both of ``min(1, acc / original acc)`` (1: nothing else was lost). The
    harmonic mean is 0 when either is 0, so forgetting by destroying the model and
    keeping everything by forgetting nothing both score 0. (Project's definition: paper
    A reports a "Score" whose formula is not public.)
    """
    f0 = original.get("forget_acc")
    if not f0:
        return math.nan
    forgetting = min(1.0, max(0.0, 1.0 - metrics["forget_acc"] / f0))
    kept = [min(1.0, metrics[k] / original[k]) for k in KEPT_METRICS
            if metrics.get(k) is not None and original.get(k)]
    if not kept:
        return math.nan
    retention = sum(kept) / len(kept)
    return 0.0 if forgetting + retention == 0 else 2 * forgetting * retention / (forgetting + retention)


def _original_of(records: Sequence[dict], record: dict) -> dict | None:
    target = record["config"].get("forget_class")
    return next((r for r in records if r["method"] == "original" and r["task"] == record["task"]
                 and r["config"].get("forget_class") == target), None)


def add_scores(records: Sequence[dict]) -> list[dict]:
    """Set ``metrics.score_vs_original`` (:func:`forgetting_score` against the original on the same task and
    target) on every result record that has its original; return the records."""
    for r in records:
        if r["method"] == "original" or r["task"] == "selection":
            continue
        original = _original_of(records, r)
        if original is not None and r["metrics"].get("forget_acc") is not None:
            r["metrics"]["score_vs_original"] = forgetting_score(r["metrics"], original["metrics"])
    return list(records)


def collect_records(paths: Iterable, *, tasks: dict[str, Sequence[str]], profile: str = "mini",
                    quick: bool = False) -> list[dict]:
    """Return the result records of ``paths`` (results files) on the benchmark's tasks.

    ``tasks``: ``{task kind: [targets]}``; only records of those kinds and targets (and
    their ``original``) with matching ``profile`` / ``quick`` are kept, each tagged with
    ``config.source`` (the file's stem). Missing files are skipped.
    """
    out = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        for r in load_records(path):
            c = r["config"]
            if (r["task"] in tasks and c.get("forget_class") in tasks[r["task"]]
                    and c.get("profile", profile) == profile and bool(c.get("quick", quick)) == quick):
                out.append({**r, "config": {**c, "source": path.stem}})
    return out


def missing_pairs(records: Sequence[dict], *, methods: Sequence[str], tasks: dict[str, Sequence[str]],
                  seeds: Sequence[int]) -> list[tuple[str, str, str]]:
    """Return the ``(method, task kind, target)`` triples that lack a result for one of ``seeds``."""
    have = {(r["method"], r["task"], r["config"].get("forget_class"), r["config"].get("seed")) for r in records}
    return [(m, kind, target) for kind, targets in tasks.items() for target in targets for m in methods
            if any((m, kind, target, s) not in have for s in seeds)]
