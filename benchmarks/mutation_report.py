"""The report of ``benchmarks/mutation.py``: ``mutation.md`` from the saved mutmut state of each module.

Reads what ``mutation_targets.py`` stages and saves; imports nothing from ``mutation.py``. Survivors
get their ``mutmut show`` diff; the "reason / killed by" column of the previous report is kept for
every survivor that is still the same mutant.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from mutation_targets import (
    KILL_TESTS,
    LIB,
    PACKAGE,
    STAGE,
    Target,
    decode_status,
    find_mutmut_exe,
    format_now,
    iter_functions,
    load_meta,
    load_runs,
    make_child_env,
    select_tests,
)

# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #
STATUS_COLUMNS = ["killed", "survived", "timeout", "suspicious", "skipped", "segfault", "no tests", "not checked"]


def show_mutant_diff(work: Path, name: str) -> str:
    """The diff ``mutmut show <name>`` prints (its own function, called in-process: one start-up less per mutant)."""
    module = name.partition("__mutmut_")[0].rpartition(".")[0]      # clipunlearn.losses
    path = Path("src", *module.split(".")).with_suffix(".py")
    try:
        # imported here: mutmut is an optional extra (".[mutation]"); the command line is the fallback
        from mutmut.mutation.diff_apply import get_diff_for_mutant
        old = os.getcwd()
        os.chdir(work)
        try:
            return get_diff_for_mutant(name, path=path).strip()
        finally:
            os.chdir(old)
    except Exception:   # fall back on the command line
        out = subprocess.run([find_mutmut_exe(), "show", name], cwd=work, env=make_child_env(),
                             capture_output=True, text=True)
        lines = out.stdout.splitlines()
        if lines and lines[0].startswith("# "):
            lines = lines[1:]
        return "\n".join(lines).strip() or (out.stderr.strip()[-500:] or "(mutmut show printed nothing)")


def summarize_change(diff: str) -> str:
    """One line for the table: the removed and the added lines of the diff."""
    minus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    plus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]

    def shorten(parts):
        s = " ⏎ ".join(parts)
        return s if len(s) <= 110 else s[:107] + "..."
    return f"`{shorten(minus)}` → `{shorten(plus)}`".replace("|", "\\|")


def parse_function_name(name: str) -> str:
    """``clipunlearn.m.xǁCǁf__mutmut_3`` -> ``C.f``; ``clipunlearn.m.x_f__mutmut_3`` -> ``f``."""
    mangled = name.rpartition(".")[2].partition("__mutmut_")[0]
    if mangled.startswith("xǁ"):
        cls, _, fn = mangled[2:].partition("ǁ")
        return f"{cls}.{fn}"
    return mangled[2:]


def find_source_lines(target: Target) -> dict[str, int]:
    tree = ast.parse((LIB / target.file).read_text())
    return {q: fn.lineno for q, fn in iter_functions(tree)}


def _split_row(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def read_previous(path: Path) -> dict[str, dict[str, tuple[str, str]]]:
    """From the previous report: ``{module: {mutant: (change, reason)}}`` of its survivor and killed-later rows."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    if not path.exists():
        return out
    module = None
    for line in path.read_text().splitlines():
        m = re.match(r"^## `(\w+)`", line)
        if m:
            module = m.group(1)
            continue
        if module and line.startswith("| `") and PACKAGE in line:
            cells = _split_row(line)
            if len(cells) >= 4:
                name = cells[0].strip("`")
                out.setdefault(module, {})[name] = (cells[2], cells[-1])
    return out


def find_killing_tests(work: Path, name: str, tests: list[str], *, killer_deadline: float | None) -> list[str]:
    """Run the tests of ``name``'s function against it; return those that fail (the kill tests first).

    ``killer_deadline``: time.time() after which no more killing tests are named (each costs a pytest
    run); None: no limit.
    """
    if killer_deadline is not None and time.time() > killer_deadline:
        return []
    stats = json.loads((work / "mutants" / "mutmut-stats.json").read_text())
    mangled = name.partition("__mutmut_")[0]
    ids = sorted(stats["tests_by_mangled_function_name"].get(mangled, [])) or tests
    kills = [i for i in ids if Path(i.split("::")[0]).match(KILL_TESTS)]
    for group in ([kills, ids] if kills else [ids]):
        found = _run_failing_tests(work, name, group)
        if found:
            return found
    return []


def _run_failing_tests(work: Path, name: str, ids: list[str]) -> list[str]:
    env = make_child_env()
    env["MUTANT_UNDER_TEST"] = name
    env["PYTHONPATH"] = str(work / "mutants" / "src")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", "--tb=no",
                          "-o", "addopts=", *ids], cwd=work / "mutants", env=env, capture_output=True, text=True)
    return sorted({ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("FAILED ")})


def report_module(target: Target, previous: dict[str, tuple[str, str]], stage_info: dict, *,
                  killer_deadline: float | None) -> tuple[list[str], dict]:
    work = STAGE / target.name
    meta = load_meta(work, target)
    runs = load_runs(work)["runs"] if work.exists() else []
    info = stage_info.get(target.file, {})
    lines = [f"## `{target.name}`", ""]
    row = {"module": target.name, "runs": runs}
    tests = runs[-1]["tests"] if runs else select_tests(target)
    lines.append(f"`lib/{PACKAGE}/{target.file}`; tests: " + ", ".join(f"`{t}`" for t in tests) + ".")
    if target.note:
        lines.append(f"Scope: {target.note}.")
    if info.get("out_of_scope"):
        reasons = {}
        for q in info["out_of_scope"]:
            why = next((r for p, r in target.exclude.items() if fnmatch.fnmatchcase(q, p)), "not a task or selection function")
            reasons.setdefault(why, []).append(q)
        lines.append("Not mutated: " + "; ".join(f"{', '.join(f'`{q}`' for q in qs)} ({why})"
                                                   for why, qs in reasons.items()) + ".")
    desugared = [q for q in info.get("desugared", []) if target.in_scope(q)]
    if desugared:
        lines.append("Decorators written out so that mutmut mutates these functions: "
                     + ", ".join(f"`{q}`" for q in desugared) + ".")
    lines.append("")
    if meta is None:
        err = next((r["error"] for r in reversed(runs) if r.get("error")), None)
        lines += [f"**Not run.** {err or 'No mutmut state for this module yet.'}", ""]
        row["status"] = "not run"
        return lines, row

    codes = meta["exit_code_by_key"]
    counts = {c: 0 for c in STATUS_COLUMNS}
    for v in codes.values():
        s = decode_status(v)
        counts[s if s in counts else "suspicious"] += 1
    counts["total"] = len(codes)
    row.update(counts)
    ran = [r for r in runs if not str(r.get("error") or "").startswith("not run")]  # a skipped module keeps its state
    last = ran[-1] if ran else {}
    complete = counts["not checked"] == 0 and bool(last.get("completed"))
    row["status"] = "complete" if complete else "partial"
    lines += ["| mutants | killed | survived | timeout | suspicious / skipped | no tests | not checked |",
              "|---:|---:|---:|---:|---:|---:|---:|",
              f"| {counts['total']} | {counts['killed']} | {counts['survived']} | {counts['timeout']} | "
              f"{counts['suspicious'] + counts['skipped'] + counts['segfault']} | {counts['no tests']} | "
              f"{counts['not checked']} |", ""]
    if not complete:
        why = last.get("error") or "stopped before every mutant was tested"
        lines += [f"**Partial run:** {why}.", ""]

    linenos = find_source_lines(target)
    surv = sorted(k for k, v in codes.items() if decode_status(v) == "survived")
    row["equivalent"] = 0
    if surv:
        lines += ["Survivors:", "", "| mutant | function | change | reason / killed by |", "|---|---|---|---|"]
        diffs = {}
        for name in surv:
            diffs[name] = show_mutant_diff(work, name)
            change = summarize_change(diffs[name])
            fn = parse_function_name(name)
            old = previous.get(name)
            reason = old[1] if old and old[0] == change else ""
            if reason.lower().startswith("equivalent"):
                row["equivalent"] += 1
            where = f"`{fn}` (line {linenos[fn]})" if fn in linenos else f"`{fn}`"
            lines.append(f"| `{name}` | {where} | {change} | {reason} |")
        lines += ["", "<details><summary>diffs of the survivors (<code>mutmut show</code>)</summary>", ""]
        for name in surv:
            lines += [f"`{name}`", "", "```diff", diffs[name], "```", ""]
        lines += ["</details>", ""]

    killed_later = []
    for name, (change, reason) in sorted(previous.items()):
        if name not in codes or decode_status(codes[name]) != "killed":
            continue
        if summarize_change(show_mutant_diff(work, name)) != change:
            continue   # the function changed: the name now stands for another mutant
        if not reason.startswith("killed by"):
            found = find_killing_tests(work, name, tests, killer_deadline=killer_deadline)
            reason = ("killed by " + ", ".join(f"`{t}`" for t in found)) if found else (reason or "killed")
        killed_later.append(f"| `{name}` | `{parse_function_name(name)}` | {change} | {reason} |")
    if killed_later:
        lines += ["Survivors of an earlier report, now killed:", "",
                  "| mutant | function | change | reason / killed by |", "|---|---|---|---|", *killed_later, ""]

    no_tests = sorted({parse_function_name(k) for k, v in codes.items() if decode_status(v) == "no tests"})
    if no_tests:
        lines += ["Functions no selected test calls (their mutants count as \"no tests\", not killed): "
                  + ", ".join(f"`{f}`" for f in no_tests) + ".", ""]
    odd = sorted(k for k, v in codes.items() if decode_status(v) in ("timeout", "suspicious", "skipped", "segfault"))
    if odd:
        lines += ["Timed out / suspicious: " + ", ".join(f"`{k}` ({decode_status(codes[k])})" for k in odd) + ".", ""]
    return lines, row


def format_secs(s: float) -> str:
    s = int(round(s))
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def write_report(path: Path, *, targets: dict[str, Target], command: str, invocation: str, wall: float,
                 stage_info: dict, max_children: int, killer_deadline: float | None) -> None:
    """Write the report of ``targets`` to ``path``, keeping the reasons of the report already there.

    ``invocation``: the id of this command's runs (their mutmut time is the "this command" column);
    ``killer_deadline``: see ``find_killing_tests``.
    """
    # imported here: mutmut is an optional extra (".[mutation]"), only its version is read
    import mutmut
    previous = read_previous(path)
    sections, rows = [], []
    for target in targets.values():
        lines, row = report_module(target, previous.get(target.name, {}), stage_info, killer_deadline=killer_deadline)
        sections += lines
        rows.append(row)

    head = [
        "# Mutation testing of the formula modules",
        "",
        "Written by `benchmarks/mutation.py` (see its docstring and `benchmarks/README.md`); not part of CI.",
        "Edit only the \"reason / killed by\" column: the next run keeps it for every survivor that is",
        "still the same mutant. A reason that starts with \"equivalent\" takes the mutant out of the",
        "score's denominator; a real gap gets a test in `tests/test_mutation_kills_*.py`.",
        "",
        f"- date: {format_now()}",
        f"- command: `{command}`",
        f"- wall time of that command: {format_secs(wall)}",
        f"- mutmut {getattr(mutmut, '__version__', '?')}, Python {platform.python_version()}, torch "
        f"{torch.__version__}, {os.cpu_count()} CPUs, `--max-children {max_children}`, one torch thread per worker",
        "- timeout: a mutant may use 16x its tests' measured CPU time (`timeout_multiplier = 8` in `pyproject.toml`;",
        "  timeouts count as killed, as in mutmut's own score); the modules last run before 2026-12-03 10:30 used",
        "  mutmut's default 30x, lipschitz's last run (10:58) 6x, with no timeout (a change of the timeout",
        "  setting retests the timed-out mutants)",
        "- the counts of each module come from its last complete mutmut state; the command above may have run",
        "  only some modules (their `mutmut wall` column says which)",
        "",
        "How: mutmut runs per module in `.mutation/<module>/` on a copy of `lib/` whose decorators are written",
        "out as assignments (mutmut 3 skips decorated functions, e.g. the registered losses), with the",
        "functions out of scope marked `# pragma: no mutate block`; see the docstring of `benchmarks/mutation.py`.",
        "mutmut 3 mutates function bodies only: module-level constants (`metrics.SCORE_DECIMALS`, default",
        "tables) are not mutated. mutmut could run every module, so cosmic-ray (the fallback the issue names)",
        "was not needed.",
        "",
        "The tests import the mutated copy: every module run passes mutmut's forced-fail check (each mutated",
        "function raises; the run stops if the tests still pass), and by hand, with",
        "`PYTHONPATH=src MUTANT_UNDER_TEST=clipunlearn.souping.x_soup_state_dicts__mutmut_20` (`w * sd` -> `w / sd`)",
        "in `.mutation/souping/mutants/`, `tests/test_souping.py` fails there (3 failed) and passes on `lib/`.",
        "(Without `PYTHONPATH=src` a hand-run imports the installed `lib/` and every mutant \"survives\".)",
        "",
        "\"Equivalent on the CPU\": the mutant only changes a `device` argument; the unit tests run on the CPU,",
        "so no test can tell (a run of the tests on a GPU would). Such mutants count as equivalent here.",
        "",
        "Counts are mutmut's: *killed* (a selected test failed), *survived* (all passed), *timeout*",
        "(counted as killed in the score), *suspicious / skipped*, *no tests* (no selected test calls",
        "the function: counted as not killed). Score = (killed + timeout) / (mutants - not checked - equivalent).",
        "",
        "| module | status | mutants | killed | survived | timeout | susp./skipped | no tests | equivalent | score | mutmut wall (this command / all runs) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        runs = row.get("runs") or []
        this = sum(r["seconds"] for r in runs if r.get("command") == command and r.get("invocation") == invocation)
        total = sum(r["seconds"] for r in runs)
        walls = f"{format_secs(this) if this else '-'} / {format_secs(total) if total else '-'}"
        if row["status"] == "not run":
            head.append(f"| `{row['module']}` | not run | | | | | | | | | {walls} |")
            continue
        tested = row["total"] - row["not checked"] - row.get("equivalent", 0)
        score = (row["killed"] + row["timeout"]) / tested if tested > 0 else float("nan")
        head.append(f"| `{row['module']}` | {row['status']} | {row['total']} | {row['killed']} | {row['survived']} | "
                    f"{row['timeout']} | {row['suspicious'] + row['skipped'] + row['segfault']} | "
                    f"{row['no tests']} | {row.get('equivalent', 0)} | {score:.1%} | {walls} |")
    head.append("")
    text = "\n".join(head + sections).rstrip() + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
