"""Does a run reproduce the committed records? Every metric of every record, compared to 3 decimals.

``python -m clipunlearn report --compare DIR`` pairs each record of the committed results
folder (``results/mini/`` by default) with the record of ``DIR`` that has the same
method, task and config, and compares every metric (nested ones included) to
:data:`DECIMALS` decimals. Wall times and memory (:func:`is_volatile`) differ between
machines and runs and are left out. A record missing on either side is a difference.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterator

#: Decimals to which metrics must agree: ``|a - b| < 0.5 * 10**-DECIMALS``.
DECIMALS = 3
#: Config keys that name where a record came from, not what ran.
IGNORED_CONFIG = ("source",)


def is_volatile(metric: str) -> bool:
    """Return True for metrics that measure the machine (wall time, memory), not the method."""
    name = metric.rsplit("/", 1)[-1]
    return name in ("seconds", "peak_mem_mb", "base_mem_mb") or name.endswith("_seconds")


def _without_volatile(value):
    """Return ``value`` with every volatile dict entry (:func:`is_volatile`), at any depth, removed."""
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if not is_volatile(str(k))}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


def _key(record: dict) -> tuple:
    config = {k: v for k, v in record["config"].items() if k not in IGNORED_CONFIG}
    return record["method"], record["task"], json.dumps(_without_volatile(config), sort_keys=True)


def _leaves(value, prefix: str) -> Iterator[tuple[str, object]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


def _same(a, b, *, tol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return a == b
    if not (math.isfinite(a) and math.isfinite(b)):
        return (a != a and b != b) or a == b
    return abs(a - b) < tol


def compare_records(expected: list[dict], actual: list[dict], *, decimals: int = DECIMALS) -> dict:
    """Return ``{"records", "values", "differences": [...]}`` comparing two lists of records.

    Records pair by method, task and config (in order among equal ones); each
    difference is ``{"record", "metric", "expected", "actual"}``.
    """
    tol = 0.5 * 10 ** -decimals
    groups = defaultdict(list)
    for r in actual:
        groups[_key(r)].append(r)
    diffs, values = [], 0
    for r in expected:
        key = _key(r)
        label = f"{r['method']} / {r['task']} / " + ", ".join(
            f"{k}={r['config'][k]}" for k in ("forget_class", "seed", "variant", "lr", "forget_ratio", "ablation",
                                               "value") if r["config"].get(k) is not None)
        if not groups[key]:
            diffs.append({"record": label, "metric": "(record)", "expected": "present", "actual": "missing"})
            continue
        other = groups[key].pop(0)
        mine = dict(_leaves(_without_volatile(r["metrics"]), ""))
        theirs = dict(_leaves(_without_volatile(other["metrics"]), ""))
        for name in sorted(set(mine) | set(theirs)):
            values += 1
            if not _same(mine.get(name), theirs.get(name), tol=tol):
                diffs.append({"record": label, "metric": name, "expected": mine.get(name), "actual": theirs.get(name)})
    for key, left in groups.items():
        for r in left:
            diffs.append({"record": f"{r['method']} / {r['task']}", "metric": "(record)", "expected": "absent",
                          "actual": "extra"})
    return {"records": len(expected), "values": values, "differences": diffs}


def compare_dirs(expected_dir, actual_dir, *, decimals: int = DECIMALS) -> dict[str, dict]:
    """Compare every records file of ``expected_dir`` with its namesake in ``actual_dir``; return ``{stem: result}``."""
    out = {}
    for path in sorted(Path(expected_dir).glob("*.json")):
        expected = json.loads(path.read_text())
        if "records" not in expected:  # e.g. robustness.json: a table, not records
            continue
        other = Path(actual_dir) / path.name
        if not other.exists():
            out[path.stem] = {"records": len(expected["records"]), "values": 0, "differences": [
                {"record": "(file)", "metric": str(other), "expected": "present", "actual": "missing"}]}
            continue
        out[path.stem] = compare_records(expected["records"], json.loads(other.read_text())["records"],
                                         decimals=decimals)
    if not out:
        raise ValueError(f"no records files in {expected_dir}")
    return out


def format_comparison(result: dict[str, dict], *, limit: int = 20) -> str:
    """Return a short report: per file the records and values compared and the differences (first ``limit``)."""
    lines = []
    for stem, r in result.items():
        lines.append(f"{stem}: {r['records']} records, {r['values']} values, {len(r['differences'])} differ")
        for d in r["differences"][:limit]:
            lines.append(f"    {d['record']}: {d['metric']} expected {d['expected']!r}, got {d['actual']!r}")
        if len(r["differences"]) > limit:
            lines.append(f"    ... and {len(r['differences']) - limit} more")
    total = sum(len(r["differences"]) for r in result.values())
    values = sum(r["values"] for r in result.values())
    lines.append(f"OK: all {values} compared values equal to {DECIMALS} decimals" if not total else
                 f"DIFFERENT: {total} differences ({values} values compared to {DECIMALS} decimals)")
    lines[-1] += " (wall times and memory left out)"
    return "\n".join(lines)
