"""Tables from results records, and README tables rendered from ``results/``.

Records follow ``docs/RESULTS.md``. Aggregation (shared with :mod:`clipunlearn.plots`):

* over seeds: mean and standard deviation (``ddof=1``; no spread with one seed),
  written ``"0.123 ± 0.045"``;
* over forget classes: one row per class (``classes="each"``) and an
  ``"all classes"`` row, the mean of the per-class means; its spread is the
  standard deviation over seeds of the class-averaged value.

README blocks between ``<!-- results: STEM TASK [key=value ...] -->`` and
``<!-- /results -->`` are replaced by the table of ``results/<profile>/STEM.json``;
keys: ``metrics=a,b,c``, ``by=method,variant``, ``classes=all|each``,
``profile=mini|paper``. ``python -m clipunlearn report --readme README.md [--check]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from . import registry
from .comparison import compare_dirs, format_comparison
from .paths import REPO_ROOT, check_profile
from .results import make_record
from .scores import round_score, unlearning_score

METRIC_LABELS = {
    "forget_acc": "Df acc", "retain_acc": "Dr acc", "other_acc": "other acc", "other_forget_acc": "other Df acc",
    "sibling_acc": "sibling acc", "mia": "MIA AUC", "seconds": "seconds", "peak_mem_mb": "peak MB",
    "steps": "steps", "best_step": "best step", "val_forget_acc": "val Df acc", "val_retain_acc": "val Dr acc",
    "score": "score", "acc": "acc", "acc_photo": "photo acc", "acc_sketch": "sketch acc",
    "acc_negative": "negative acc", "coarse_acc": "coarse acc", "style_acc": "style acc",
    "train_seconds": "train seconds", "gap_retrain": "gap to retrain", "js_retrain": "JS to retrain",
    "mia_advantage": "MIA advantage", "mia_se": "MIA SE", "mia_efficacy": "MIA-efficacy",
    "unlearning_score": "unlearning score", "score_retention_uncapped": "retention (uncapped)",
    "score_forgetting": "forgetting", "score_retention": "retention", "syn_stats_distance": "stats distance",
    "other_stats_distance": "other stats distance", "syn_probe_acc": "probe says class",
    "quantise_weights/fp32/forget_acc": "Df (fp32)", "quantise_weights/int8/forget_acc": "Df (int8)",
    "relearn_retain/100/forget_acc": "Df, 100 benign steps", "gap/relearn_retain/100/forget_acc": "gap, benign",
    "relearn_forget/n20/30/forget_acc": "Df, 20 photos x 30 steps", "probe_features/forget_acc": "probe Df",
    "gap/probe_features/forget_acc": "gap, probe",
}
ALL_CLASSES = "all classes"
DEFAULT_METRICS = {
    "forget-class": ("forget_acc", "retain_acc", "other_acc", "mia", "seconds"),
    "forget-subgroup": ("forget_acc", "sibling_acc", "retain_acc", "other_acc", "mia", "seconds"),
    "forget-style-subgroup": ("forget_acc", "sibling_acc", "retain_acc", "other_acc", "mia", "seconds"),
    "selection": ("val_forget_acc", "val_retain_acc", "score"),
}
DEFAULT_BY = {
    "ablation": ("method", "variant"), "forget-ratio": ("method", "forget_ratio"), "selection": ("method", "lr"),
}
MARKER = re.compile(r"<!-- results: (?P<args>[^>]*?) -->\n(?P<body>.*?)<!-- /results -->", re.DOTALL)


# --------------------------------------------------------------------------- #
# Reading records
# --------------------------------------------------------------------------- #
def method_label(method: str) -> str:
    """Return the display name of ``method`` (``"neggrad_plus"`` -> ``"NegGrad+"``)."""
    return registry.method_label(method)


def metric_label(metric: str) -> str:
    """Return the short table header of ``metric`` (``"forget_acc"`` -> ``"Df acc"``; a per-style metric
    ``"sibling_acc@photo"`` -> the label of ``sibling_acc`` with ``(photo)``)."""
    if metric not in METRIC_LABELS and "@" in metric:
        base, style = metric.split("@", 1)
        return f"{METRIC_LABELS.get(base, base)} ({style})"
    return METRIC_LABELS.get(metric, metric)


def order_methods(present: Iterable[str], methods: Sequence[str] | None = None) -> list[str]:
    """Return the methods of ``present`` in display order: ``original`` first, then ``methods`` if given
    (others dropped), else the registry order, then unknown names as they came."""
    present = list(dict.fromkeys(present))
    if methods is not None:
        wanted = ["original", *methods]
        return [m for m in dict.fromkeys(wanted) if m in present]
    known = list(registry.method_labels())  # the untouched model, the methods in registration order, variants
    return [m for m in known if m in present] + [m for m in present if m not in known]


def get_forget_class(record: dict) -> str:
    """Return the record's forget class (``config.forget_class``; older records: ``forget`` or
    ``forget_classes`` joined by ``+``), or ``""`` when it has none."""
    config = record.get("config", {})
    for key in ("forget_class", "forget"):
        if isinstance(config.get(key), str):
            return config[key]
    value = config.get("forget_class", config.get("forget_classes"))
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value))
    return "" if value is None else str(value)


def get_value(record: dict, key: str):
    """Return ``record[key]`` for ``method``/``task``, else ``config[key]``, else ``metrics[key]``, else None."""
    if key in ("method", "task"):
        return record.get(key)
    if key == "forget_class":
        return get_forget_class(record)
    for part in ("config", "metrics"):
        if key in record.get(part, {}):
            return record[part][key]
    return None


def style_metrics(records: Iterable[dict]) -> list[str]:
    """Return the per-style metrics (``<set>_acc@<style>``, stage prefixes dropped) the records hold, siblings first."""
    names = {k.split("/", 1)[-1] for r in records for k in r.get("metrics", {}) if "@" in k}
    return sorted(names, key=lambda k: (not k.startswith("sibling"), k))


def get_metric(record: dict, metric: str) -> float | None:
    """Return ``metrics[metric]`` as a finite float, or None when absent, null, non-numeric or not finite."""
    value = record.get("metrics", {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def select_records(records: Iterable[dict], *, task: str | None = None, method: str | None = None,
                   forget_class: str | None = None, skip_failed: bool = True) -> list[dict]:
    """Return the records of ``task`` / ``method`` / ``forget_class`` (None: any); failed runs left out."""
    return [r for r in records
            if (task is None or r.get("task") == task) and (method is None or r.get("method") == method)
            and (forget_class is None or get_forget_class(r) == forget_class)
            and not (skip_failed and r.get("metrics", {}).get("failed"))]


def check_task(records: list[dict], task: str) -> list[dict]:
    """Return the records of ``task``; none is an error that lists the tasks present."""
    chosen = [r for r in records if r.get("task") == task]
    if not chosen:
        tasks = sorted({str(r.get("task")) for r in records})
        raise ValueError(f"no records of task {task!r}; tasks present: {', '.join(tasks) or 'none'}")
    return chosen


def _hashable(value):
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return value


# --------------------------------------------------------------------------- #
# Aggregation
# --------------------------------------------------------------------------- #
def _std(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def class_means(records: Iterable[dict], metric: str) -> dict[str, float]:
    """Return ``{forget_class: mean over seeds}`` of ``metric`` (records without it are skipped)."""
    values: dict[str, list[float]] = {}
    for r in records:
        v = get_metric(r, metric)
        if v is not None:
            values.setdefault(get_forget_class(r), []).append(v)
    return {c: sum(vs) / len(vs) for c, vs in values.items()}


def mean_std(records: Iterable[dict], metric: str) -> tuple[float | None, float | None, int]:
    """Return ``(mean, std, n)`` of ``metric`` over records (see the module docstring).

    The mean is the mean of the per-class means; ``std`` is the standard deviation
    (ddof=1) over seeds of the class-averaged value, None with fewer than two seeds;
    ``n`` counts the records that have the metric. ``(None, None, 0)`` when none has it.
    """
    records = [r for r in records if get_metric(r, metric) is not None]
    if not records:
        return None, None, 0
    means = class_means(records, metric)
    by_seed: dict = {}
    for r in records:
        by_seed.setdefault(_hashable(r.get("config", {}).get("seed")), []).append(get_metric(r, metric))
    seed_means = [sum(vs) / len(vs) for vs in by_seed.values()]
    return sum(means.values()) / len(means), _std(seed_means), len(records)


def decimals_for(metric: str) -> int:
    """Decimals shown for ``metric``: 3 for accuracies, AUCs and scores, 1 for seconds, MB and steps."""
    return 1 if metric in ("seconds", "peak_mem_mb", "steps", "best_step") or metric.endswith("_seconds") else 3


def format_mean_std(mean: float | None, std: float | None, *, decimals: int = 3) -> str:
    """Return ``"0.123 ± 0.045"`` (``"0.123"`` without a spread, ``""`` without a mean)."""
    if mean is None:
        return ""
    text = f"{mean:.{decimals}f}"
    return text if std is None else f"{text} ± {std:.{decimals}f}"


def _group_key(record: dict, by: Sequence[str]) -> tuple:
    return tuple(_hashable(get_value(record, key)) for key in by)


def _sort_groups(keys: list[tuple], by: Sequence[str]) -> list[tuple]:
    keys = list(dict.fromkeys(keys))
    if "method" not in by:
        return keys
    i = list(by).index("method")
    order = order_methods([k[i] for k in keys])
    return sorted(keys, key=lambda k: order.index(k[i]))  # stable: other keys keep their first-seen order


def summarise(records: list[dict], *, task: str, metrics: Sequence[str] | None = None,
              by: Sequence[str] = ("method",), classes: str = "all", numeric: bool = False,
              skip_failed: bool = True):
    """Return a pandas DataFrame of ``task``'s records: one row per group of ``by`` (and forget class).

    ``classes="all"`` gives one row per group (the mean over forget classes);
    ``"each"`` adds a ``forget_class`` level with one row per class and, when there
    are several, an ``"all classes"`` row. Cells are ``"mean ± std"`` strings; with
    ``numeric=True`` the columns are ``metric`` (mean) and ``metric_std`` floats.
    A ``runs`` column counts the records aggregated (and ``failed`` the failed runs
    left out, when there are any). Metrics that no record has are dropped, and so are
    records that lack a ``by`` key other than ``method`` (e.g. no ``config.variant``).
    """
    if classes not in ("all", "each"):
        raise ValueError(f"classes must be 'all' or 'each', not {classes!r}")
    by = list(by)
    all_records = [r for r in check_task(records, task) if all(get_value(r, k) is not None for k in by)]
    if not all_records:
        raise ValueError(f"no {task} record has every key of by={tuple(by)}")
    chosen = select_records(all_records, skip_failed=skip_failed)
    metrics = list(metrics or DEFAULT_METRICS.get(task, ("forget_acc", "retain_acc")))
    metrics = [m for m in metrics if any(get_metric(r, m) is not None for r in chosen)]
    index_names = by + (["forget_class"] if classes == "each" else [])
    rows, index = [], []
    for key in _sort_groups([_group_key(r, by) for r in all_records], by):
        group = [r for r in chosen if _group_key(r, by) == key]
        failed = sum(1 for r in all_records if _group_key(r, by) == key and r.get("metrics", {}).get("failed"))
        parts = []
        if classes == "each":
            names = list(dict.fromkeys(get_forget_class(r) for r in group))
            parts = [((*key, c), [r for r in group if get_forget_class(r) == c]) for c in names]
            if len(names) > 1:
                parts.append(((*key, ALL_CLASSES), group))
        else:
            parts = [(key, group)]
        for idx, part in parts:
            row = {}
            for m in metrics:
                mean, std, _ = mean_std(part, m)
                if numeric:
                    row[m], row[f"{m}_std"] = (math.nan if mean is None else mean), (math.nan if std is None else std)
                else:
                    row[m] = format_mean_std(mean, std, decimals=decimals_for(m))
            row["runs"] = len(part)
            if failed:
                row["failed"] = failed
            rows.append(row)
            index.append(idx)
    frame = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=index_names) if len(index_names) > 1
                         else pd.Index([i[0] for i in index], name=index_names[0]))
    if "failed" in frame:
        frame["failed"] = frame["failed"].fillna(0).astype(int)
    return frame


def oracle_table(records: list[dict], *, method: str, task: str = "selection"):
    """Return, per forget class and grid-search seed, the candidate the criterion chose and the oracle's choice.

    The oracle ranks the same candidates by ``metrics.oracle_score`` (a score that peeks at
    data the method may not use, e.g. real forget images for a data-free method); it is a
    reference only. Columns: the chosen and the oracle's values of the grid, and the test
    ``forget_acc`` / ``retain_acc`` of both candidates.
    """
    rows = []
    chosen_records = [r for r in records if r["task"] == task and r["method"] == method]
    keys = sorted({(get_forget_class(r), r["config"].get("seed")) for r in chosen_records}, key=str)
    for cls, seed in keys:
        group = [r for r in chosen_records if (get_forget_class(r), r["config"].get("seed")) == (cls, seed)]
        picked = next((r for r in group if r["config"].get("selected")), None)
        scored = [r for r in group if r["metrics"].get("oracle_score") is not None]
        if picked is None or not scored:
            continue
        oracle = max(scored, key=lambda r: round_score(r["metrics"]["oracle_score"]))  # ties: the first candidate
        rows.append({"forget_class": cls, "seed": seed, "lr (criterion)": picked["config"].get("lr"),
                     "lr (oracle)": oracle["config"].get("lr"),
                     "forget_acc (criterion)": picked["metrics"].get("forget_acc"),
                     "forget_acc (oracle)": oracle["metrics"].get("forget_acc"),
                     "retain_acc (criterion)": picked["metrics"].get("retain_acc"),
                     "retain_acc (oracle)": oracle["metrics"].get("retain_acc")})
    if not rows:
        raise ValueError(f"no {task} records of {method!r} with an oracle_score")
    return pd.DataFrame(rows).set_index(["forget_class", "seed"])


# --------------------------------------------------------------------------- #
# Markdown
# --------------------------------------------------------------------------- #
def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        value = f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(frame, *, index: bool = True, labels: bool = True) -> str:
    """Return ``frame`` as a GitHub markdown table (index columns left-aligned, values right-aligned).

    With ``labels``, method names and metric headers use their display names.
    """
    index_names = [n or "" for n in frame.index.names] if index else []
    rows = []
    for idx, values in zip(frame.index, frame.itertuples(index=False)):
        idx = idx if isinstance(idx, tuple) else (idx,)
        if labels:
            idx = tuple(method_label(v) if name == "method" else v for name, v in zip(index_names, idx))
        rows.append([_cell(v) for v in (idx if index else ())] + [_cell(v) for v in values])
    header = index_names + [metric_label(c) if labels else str(c) for c in frame.columns]
    align = [":---"] * len(index_names) + ["---:"] * len(frame.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- #
# README rendering
# --------------------------------------------------------------------------- #
def parse_marker(args: str) -> dict:
    """Parse ``"STEM TASK key=value ..."`` of a results marker into a dict."""
    words = args.split()
    if len(words) < 2 or any("=" in w for w in words[:2]):
        raise ValueError(f"results marker {args!r} needs 'NOTEBOOK_STEM TASK [key=value ...]'")
    spec = {"stem": words[0], "task": words[1], "profile": "mini", "metrics": None, "by": None, "classes": "all"}
    for word in words[2:]:
        key, sep, value = word.partition("=")
        if not sep or key not in ("metrics", "by", "classes", "profile"):
            raise ValueError(f"results marker {args!r}: unknown option {word!r}; "
                             f"valid: metrics=a,b by=a,b classes=all|each profile=mini|paper")
        spec[key] = tuple(value.split(",")) if key in ("metrics", "by") else value
    check_profile(spec["profile"])
    return spec


#: Config keys whose value, when not the default, makes a run a variant of its method in the README's tables:
#: ``{key: default}`` (a ``lipschitz_synthetic`` run on BatchNorm-prior images is ``lipschitz_synthetic_bn``).
VARIANT_KEYS = {"synthetic_prior": "none"}


def label_variants(records: Iterable[dict]) -> list[dict]:
    """Return ``records`` with each run of a non-default :data:`VARIANT_KEYS` value renamed ``<method>_<value>``
    (a copy), so that a table never averages two kinds of run under one method name."""
    out = []
    for r in records:
        config = r.get("config", {})
        for key, default in VARIANT_KEYS.items():
            value = config.get(key)
            if value is not None and value != default and not r["method"].endswith(f"_{value}"):
                r = {**r, "method": f"{r['method']}_{value}"}  # once: labelling twice changes nothing
        out.append(r)
    return out


def render_table(spec: dict, *, results_dir) -> str:
    """Return the markdown of one results block (its table and a source line, or why there is none)."""
    path = Path(results_dir) / spec["profile"] / f"{spec['stem']}.json"
    source = f"`results/{spec['profile']}/{spec['stem']}.json`"
    if not path.exists():
        return f"_No results yet: run `./run_all.sh --profile {spec['profile']} --only {spec['stem']}`._"
    records = label_variants(json.loads(path.read_text())["records"])
    by = spec["by"] or DEFAULT_BY.get(spec["task"], ("method",))
    if not any(r.get("task") == spec["task"] and all(get_value(r, k) is not None for k in by) for r in records):
        keys = ", ".join(f"`{k}`" for k in by)
        return f"_No `{spec['task']}` records with {keys} in {source}._"
    frame = summarise(records, task=spec["task"], metrics=spec["metrics"], by=by, classes=spec["classes"])
    seeds = sorted({str(r["config"].get("seed")) for r in records
                    if r.get("task") == spec["task"] and r.get("config", {}).get("seed") is not None})
    spread = f"mean ± std over seeds {', '.join(seeds)}" if len(seeds) > 1 else f"seed {seeds[0]}" if seeds else ""
    note = f"From {source}, task `{spec['task']}`" + (f"; {spread}" if spread else "") + "."
    return f"{to_markdown(frame)}\n\n{note}"


def render_readme(readme_text: str, *, results_dir=None) -> str:
    """Return ``readme_text`` with every results block re-rendered from ``results_dir`` (default
    ``<repo>/results``); text outside the blocks is kept. Rendering twice changes nothing."""
    results_dir = Path(results_dir) if results_dir is not None else REPO_ROOT / "results"

    def replace(match):
        spec = parse_marker(match["args"])
        return f"<!-- results: {match['args']} -->\n{render_table(spec, results_dir=results_dir)}\n<!-- /results -->"

    return MARKER.sub(replace, readme_text)


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None) -> int:
    """``python -m clipunlearn report --readme README.md [--check]``: render the README's results tables.

    ``--compare DIR``: check a run's records against the committed ones (``comparison``).
    """
    parser = argparse.ArgumentParser(prog="python -m clipunlearn report", description=main.__doc__)
    parser.add_argument("--readme", default=str(REPO_ROOT / "README.md"), help="markdown file with results blocks")
    parser.add_argument("--results-dir", default=str(REPO_ROOT / "results"),
                        help="folder holding <profile>/<notebook>.json (default: the repository's results/)")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if the file is not up to date with the results")
    parser.add_argument("--compare", metavar="DIR", default=None,
                        help="instead: compare every metric of every record of DIR (a run's results folder, e.g. "
                             "a fresh clone's results/mini) with the committed ones to 3 decimals; exit 1 if any differ")
    parser.add_argument("--against", metavar="DIR", default=str(REPO_ROOT / "results" / "mini"),
                        help="the committed records --compare checks against (default results/mini)")
    args = parser.parse_args(argv)
    if args.compare:
        try:
            result = compare_dirs(args.against, args.compare)
        except ValueError as err:
            print(err, file=sys.stderr)
            return 2
        print(format_comparison(result))
        return 1 if any(r["differences"] for r in result.values()) else 0
    path = Path(args.readme)
    if not path.exists():
        print(f"no file {path}; pass --readme PATH", file=sys.stderr)
        return 2
    text = path.read_text()
    try:
        rendered = render_readme(text, results_dir=args.results_dir)
    except ValueError as err:
        print(f"{path}: {err}", file=sys.stderr)
        return 2
    blocks = len(MARKER.findall(text))
    if rendered == text:
        print(f"{path}: {blocks} results block(s) up to date")
        return 0
    if args.check:
        print(f"{path}: results tables are out of date; run python -m clipunlearn report --readme {path}",
              file=sys.stderr)
        return 1
    _write_text_atomic(path, rendered)
    print(f"{path}: {blocks} results block(s) rendered")
    return 0


# --------------------------------------------------------------------------- #
# Paper A's three stages as records
# --------------------------------------------------------------------------- #
#: Three-stage records keep the test metrics after the first two stages as ``after_<stage>/<metric>``.
STAGE_LABELS = {"forget": "after forgetting", "remind": "after reminding", "restore": "after restoring"}


def stage_records(records: Sequence[dict], *, task: str, method: str = "three_stage") -> list[dict]:
    """Return ``method``'s runs on ``task`` stage by stage, as records whose ``method`` is the stage.

    The untouched model (``original``), then one record per run and stage: "after
    forgetting" and "after reminding" from the ``after_<stage>/<metric>`` test metrics,
    "after restoring" = the run's own metrics; each gets ``unlearning_score`` against the
    original. For ``report.summarise`` and ``plots.plot_method_bars`` (derived, not saved).
    """
    chosen = [r for r in records if r.get("task") == task]
    originals = [r for r in chosen if r["method"] == "original"]
    runs = [r for r in chosen if r["method"] == method and not r["metrics"].get("failed")]
    if not runs:
        raise ValueError(f"no {method!r} records of task {task!r}; tasks present: "
                         + ", ".join(sorted({str(r.get('task')) for r in records})))
    by_target = {r["config"].get("forget_class"): r["metrics"] for r in originals}
    out = [dict(r) for r in originals]
    for stage, label in STAGE_LABELS.items():
        for r in runs:
            if stage == "restore":
                m = {k: v for k, v in r["metrics"].items() if "/" not in k}
            else:
                prefix = f"after_{stage}/"
                m = {k[len(prefix):]: v for k, v in r["metrics"].items() if k.startswith(prefix)}
                if not m:
                    continue
            original = by_target.get(r["config"].get("forget_class"))
            if original is not None:
                m["unlearning_score"] = unlearning_score(m, original)
            out.append(make_record(method=label, task=task, config={**r["config"], "stage": stage}, metrics=m))
    return out
