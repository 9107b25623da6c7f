"""Do the findings survive another trained model? Statements and main metrics across mini models.

``benchmarks/robustness.py`` runs notebooks 10-40 on mini CLIPs retrained with other
training seeds; this module compares their records with the shipped model's:
:func:`evaluate_models` checks every statement of :mod:`clipunlearn.findings` on each
model's results folder and puts the spread of the main metrics across models next to
their spread across unlearning seeds; :func:`write_robustness` writes the committed table
(``results/mini/robustness.json``) and :func:`robustness_markdown` renders it.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Mapping

from .findings import check_results_dir
from .paths import REPO_ROOT
from .report import mean_std
from .results import load_records, write_json_atomic

#: The metrics whose spread is reported: notebook 10's main table (forget-one-class) ...
SPREAD_METRICS = ("forget_acc", "retain_acc", "other_acc", "other_forget_acc")
#: ... and notebook 40's unlearning score on each task kind.
SPREAD_TASKS = ("forget-class", "forget-subgroup", "forget-style-subgroup")


def _sd(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.stdev(values) if len(values) > 1 else None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(values) if values else None


def metric_spread(folders: Mapping[str, Path]) -> list[dict]:
    """Return, per method and metric, each model's mean, the sd across models and the mean sd across seeds.

    Notebook 10's forget-one-class metrics (every forget class and seed of a model
    pooled, as the README's table) and notebook 40's score per task kind (sd over the
    unlearning seeds of each model).
    """
    rows = []
    per_model = {}
    for name, folder in folders.items():
        path = Path(folder) / "10_cliperase.json"
        per_model[name] = load_records(path, task="forget-class") if path.exists() else []
    methods = sorted({r["method"] for recs in per_model.values() for r in recs})
    for method in methods:
        for metric in SPREAD_METRICS:
            stats = {name: mean_std([r for r in recs if r["method"] == method], metric)
                     for name, recs in per_model.items()}
            means = {n: s[0] for n, s in stats.items()}
            rows.append({"source": "10_cliperase forget-class", "method": method, "metric": metric,
                         "by_model": means, "sd_across_models": _sd(means.values()),
                         "sd_across_seeds": _mean(s[1] for s in stats.values())})
    tables = {}
    for name, folder in folders.items():
        path = Path(folder) / "40_benchmark.json"
        if path.exists():
            recs = load_records(path)
            tables[name] = (recs, sorted({r["method"] for r in recs if r["task"] in SPREAD_TASKS} - {"original"}))
    for task in SPREAD_TASKS:
        methods = sorted({m for _, ms in tables.values() for m in ms})
        for method in methods:
            means, sds = {}, []
            for name, (recs, _) in tables.items():
                values = [r["metrics"].get("unlearning_score") for r in recs
                          if r["method"] == method and r["task"] == task and not r["metrics"].get("failed")]
                values = [v for v in values if v is not None]
                if values:
                    means[name] = statistics.fmean(values)
                    sds.append(_sd(values))
            if means:
                rows.append({"source": f"40_benchmark {task}", "method": method, "metric": "unlearning_score",
                             "by_model": means, "sd_across_models": _sd(means.values()),
                             "sd_across_seeds": _mean(sds)})
    return rows


def evaluate_models(folders: Mapping[str, Path], *, runs: dict | None = None, model_info: dict | None = None) -> dict:
    """Check every statement on every model's records; return the robustness table (JSON-ready).

    ``folders``: ``{model name: results folder}``, the shipped model first. On a model whose folder has no
    results file of a statement's notebook (not run there) the statement's ``holds`` is None ("not run"); a
    statement missing from a notebook that ran counts as not holding.
    ``model_info``: ``{model name: {...}}`` (training seed, sha256, zero-shot accuracy), stored as is.
    """
    checked = {name: check_results_dir(folder) for name, folder in folders.items()}
    names = list(folders)
    statements, seen = [], {}
    for name in names:
        for stem, findings in checked[name].items():
            for f in findings:
                key = (stem, f.key, f.statement)
                if key not in seen:
                    seen[key] = {"notebook": stem, "key": f.key, "statement": f.statement,
                                 "holds": {n: False if stem in checked[n] else None for n in names},
                                 "values": {n: None for n in names}}
                    statements.append(seen[key])
                seen[key]["holds"][name] = f.holds
                seen[key]["values"][name] = f.values
    return {"models": names, "folders": {n: str(Path(f).resolve().relative_to(REPO_ROOT)) if Path(f).resolve()
                                         .is_relative_to(REPO_ROOT) else str(f) for n, f in folders.items()},
            "model_info": model_info or {}, "statements": statements, "spread": metric_spread(folders),
            **({"runs": runs} if runs else {})}


def write_robustness(table: dict, path) -> Path:
    """Write the robustness table atomically (``results/mini/robustness.json``)."""
    return write_json_atomic(path, table)


def _fmt(value) -> str:
    return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


def _holds_cell(holds: bool | None) -> str:
    return "not run" if holds is None else "yes" if holds else "**no**"


def robustness_markdown(table: dict) -> str:
    """Return two markdown tables: statement x model (holds or not), and the spread of the main metrics."""
    names = table["models"]
    info = table.get("model_info") or {}
    lines = []
    if info:
        lines += ["| model | training seed | photo acc | sketch acc | negative acc | sha256 |",
                  "|:---|---:|---:|---:|---:|:---|"]
        for n in names:
            m = info.get(n, {})
            z = m.get("zero_shot", {})
            lines.append(f"| {n} | {m.get('train_seed', '')} | {_fmt(z.get('acc_photo'))} | "
                         f"{_fmt(z.get('acc_sketch'))} | {_fmt(z.get('acc_negative'))} | "
                         f"`{str(m.get('sha256', ''))[:12]}` |")
        lines.append("")
    lines += ["| notebook | # | statement | " + " | ".join(names) + " |",
             "|:---|:---|:---|" + "|".join(":---:" for _ in names) + "|"]
    for s in table["statements"]:
        lines.append(f"| {s['notebook'][:2]} | {s['key']} | {s['statement']} | "
                     + " | ".join(_holds_cell(s["holds"][n]) for n in names) + " |")
    lines += ["", "| source | method | metric | " + " | ".join(names) + " | sd across models | sd across seeds |",
              "|:---|:---|:---|" + "|".join("---:" for _ in names) + "|---:|---:|"]
    for row in table["spread"]:
        lines.append(f"| {row['source']} | {row['method']} | {row['metric']} | "
                     + " | ".join(_fmt(row["by_model"].get(n)) for n in names)
                     + f" | {_fmt(row['sd_across_models'])} | {_fmt(row['sd_across_seeds'])} |")
    return "\n".join(lines) + "\n"
