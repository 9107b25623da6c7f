"""Mutation testing of the formula modules with mutmut 3; writes ``benchmarks/mutation.md``.

Not part of CI (minutes to hours on 2 cores). Run it after changing a formula, a split or a
selection rule, or the tests that pin them::

    pip install -c constraints.txt -e ".[mutation]"
    python benchmarks/mutation.py                          # every module (resumes where it stopped)
    python benchmarks/mutation.py --modules losses,souping --max-children 2
    python benchmarks/mutation.py --report-only            # rewrite mutation.md from the saved state

How it runs. mutmut 3 imports the mutated code from ``mutants/``, ``mutants/src`` or
``mutants/source`` only, and names each mutant after its file's path with ``src.`` stripped,
so a ``lib/`` source root gives keys (``lib.clipunlearn....``) that never match what the tests
call (``clipunlearn....``). It also leaves every decorated function alone (the registered
losses, the ``@torch.no_grad()`` metrics). So the script runs mutmut in ``.mutation/<module>/``
(git-ignored), where

- ``src/`` points to ``.mutation/src/``: a copy of ``lib/`` (``lib/`` itself is never touched) in
  which each decorator is written out as an assignment after its function
  (``f = register_loss("ft")(f)``, the same object) and the functions out of this script's
  scope are marked ``# pragma: no mutate block``;
- ``tests/`` points to the repository's ``tests/``; ``pyproject.toml`` is the repository's with
  the ``[tool.mutmut]`` section completed for the module (``only_mutate`` its file; its test
  files as pytest's ``python_files`` patterns, so that a new test file does not make mutmut
  discard its results).

mutmut copies both into ``.mutation/<module>/mutants/`` and puts ``mutants/src`` first on
``sys.path``, so the tests import the mutated copy; its forced-fail check (every mutated
function raises) stops the run if they import anything else. State stays in ``mutants/``:
a run that stopped resumes, and only functions that changed are tested again. When the
selected tests changed since the last complete run, the survivors are tested again, and the
report names the tests that now kill the survivors the previous report listed.

The report keeps the "reason / killed by" column of every survivor that is still the same
mutant (same name and change): fill it in by hand, the next run keeps it. A reason starting
with "equivalent" removes the mutant from the score's denominator.

The code: this file runs mutmut; ``mutation_targets.py`` holds the modules in scope, the staging
of ``lib/`` and the saved state of a module's folder; ``mutation_report.py`` writes the report.
Both are imported from ``benchmarks/`` (first on ``sys.path`` when this file runs as a script).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from mutation_report import format_secs, write_report
from mutation_targets import (
    KILL_TESTS,
    PACKAGE,
    REPORT,
    ROOT,
    STAGE,
    TARGETS,
    TESTS,
    Target,
    decode_status,
    find_mutmut_exe,
    format_now,
    load_meta,
    load_runs,
    make_child_env,
    save_runs,
    select_tests,
    sync_stage,
)

#: the id of this command's runs (the report's "this command" column of mutmut time)
INVOCATION = f"{os.getpid()}-{time.time():.0f}"


# --------------------------------------------------------------------------- #
# One module's mutmut folder and run
# --------------------------------------------------------------------------- #
def format_toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(format_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def replace_toml_table(text: str, table: str, body: dict) -> str:
    """Return ``text`` with the ``[table]`` section (up to the next header) replaced by ``body``."""
    lines = text.splitlines(keepends=True)
    header = re.compile(r"^\s*\[")
    start = next((i for i, ln in enumerate(lines) if ln.strip() == f"[{table}]"), None)
    new = [f"[{table}]\n"] + [f"{k} = {format_toml_value(v)}\n" for k, v in body.items()] + ["\n"]
    if start is None:
        return text.rstrip("\n") + "\n\n" + "".join(new)
    stop = next((i for i in range(start + 1, len(lines)) if header.match(lines[i])), len(lines))
    return "".join(lines[:start] + new + lines[stop:])


def hash_tests(files: list[str]) -> str:
    """Hash of the selected test files and the shared test helpers (conftest, helpers)."""
    h = hashlib.sha256()
    helpers = [p for p in sorted(TESTS.glob("*.py")) if not p.name.startswith("test_")]
    for path in [ROOT / f for f in files] + helpers:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def build_mutmut_config(target: Target, tests: list[str]) -> dict:
    """The repository's ``[tool.mutmut]`` with this module's file and tests filled in."""
    base = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("mutmut", {})
    cfg = dict(base)
    cfg["source_paths"] = ["src"]
    cfg["only_mutate"] = [f"src/{PACKAGE}/{target.file}"]
    # the selection as file-name patterns, not a file list: a new test file (e.g. a new
    # test_mutation_kills_*.py) then leaves mutmut's config, and so its results, as they were
    # (mutmut collects the new tests' coverage; the survivors are tested again below)
    cfg["pytest_add_cli_args_test_selection"] = ["tests"]
    args = list(cfg.get("pytest_add_cli_args", []))
    args += ["-o", "python_files=" + " ".join(target.tests + [KILL_TESTS])]
    if _has_hypothesis() and not any(a.startswith("--hypothesis-seed") for a in args):
        args.append("--hypothesis-seed=0")   # the same examples for every mutant
    cfg["pytest_add_cli_args"] = args
    return cfg


def _has_hypothesis() -> bool:
    return importlib.util.find_spec("hypothesis") is not None


def prepare_module_dir(target: Target) -> tuple[Path, list[str]]:
    work = STAGE / target.name
    work.mkdir(parents=True, exist_ok=True)
    for name, dest in (("src", Path("..") / "src"), ("tests", Path("..") / ".." / "tests")):
        link = work / name
        if not link.is_symlink():
            if link.exists():
                shutil.rmtree(link)
            link.symlink_to(dest, target_is_directory=True)
    tests = select_tests(target)
    text = replace_toml_table((ROOT / "pyproject.toml").read_text(), "tool.mutmut", build_mutmut_config(target, tests))
    pyproject = work / "pyproject.toml"
    if not pyproject.exists() or pyproject.read_text() != text:
        pyproject.write_text(text)
    return work, tests


def run_mutmut(work: Path, args: list[str], *, deadline: float | None, log) -> tuple[int | None, float, bool]:
    """Run ``mutmut <args>`` in ``work``; return (exit code, seconds, stopped at the deadline)."""
    cmd = [find_mutmut_exe(), *args]
    log.write(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}\n")
    log.flush()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=work, env=make_child_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_restore_sigint)
    stopped = False
    try:
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            try:
                proc.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                stopped = True
                _stop_mutmut(proc)
                break
    except KeyboardInterrupt:
        _stop_mutmut(proc)
        raise
    return proc.returncode, time.monotonic() - t0, stopped


def _restore_sigint() -> None:
    """In the child: take Ctrl-C even when this script runs in the background (where SIGINT is ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop_mutmut(proc: subprocess.Popen) -> None:
    """Ctrl-C for mutmut (it saves what finished), then end its process group if it lingers."""
    try:
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    except ProcessLookupError:
        pass


def list_survivors(meta: dict | None, statuses: tuple[str, ...] = ("survived",)) -> list[str]:
    """The mutants whose last result is one of ``statuses``."""
    if not meta:
        return []
    return sorted(k for k, v in meta["exit_code_by_key"].items() if v is not None and decode_status(v) in statuses)


def run_module(target: Target, *, max_children: int, deadline: float | None, retest: bool,
               force_retest: bool = False) -> dict:
    """Run (or resume) mutmut on one module; return this invocation's run entry.

    When the selected tests changed since the last complete run (or ``force_retest``), the
    survivors and the "no tests" mutants are tested again: mutmut keeps a mutant's last
    result, and collects which tests call which function only for tests it has not seen.
    """
    work, tests = prepare_module_dir(target)
    fingerprint = hash_tests(tests)
    runs = load_runs(work)
    entry = {"date": format_now(), "seconds": 0.0, "max_children": max_children, "tests": tests,
             "tests_fingerprint": fingerprint, "completed": False, "error": None}
    with open(work / "mutmut.log", "a") as log:
        log.write(f"\n===== {entry['date']} =====\n")
        previous = list_survivors(load_meta(work, target), ("survived", "no tests"))
        code, secs, stopped = run_mutmut(work, ["run", "--max-children", str(max_children)], deadline=deadline,
                                         log=log)
        entry["seconds"] += secs
        if code == 0 and not stopped:
            # survivors judged with older tests: test them again with the current ones
            last_fp = next((r.get("tests_fingerprint") for r in reversed(runs["runs"]) if r.get("completed")), None)
            again = [s for s in list_survivors(load_meta(work, target), ("survived", "no tests")) if s in previous]
            if again and (force_retest or (retest and last_fp is not None and last_fp != fingerprint)):
                log.write(f"testing {len(again)} survivors and untested mutants again\n")
                code, secs, stopped = run_mutmut(work, ["run", "--max-children", str(max_children), *again],
                                                 deadline=deadline, log=log)
                entry["seconds"] += secs
    entry["completed"] = code == 0 and not stopped
    if stopped:
        entry["error"] = "stopped at the deadline (run the script again to resume)"
    elif code != 0:
        entry["error"] = f"mutmut exited with {code}: " + _find_log_reason(work / "mutmut.log")
    runs["runs"].append(entry)
    save_runs(work, runs)
    return entry


def _find_log_reason(log: Path) -> str:
    """The most telling line of the last mutmut run in its log."""
    text = log.read_text(errors="replace").rsplit("\n$ ", 1)[-1]
    for needle in ("FAILED: Unable to force test failures", "Failed to run clean test", "failed to collect stats",
                   "Stopping early", "Failed to collect list of tests", "Traceback", "Error"):
        for line in text.splitlines():
            if needle in line:
                return line.strip()[:300]
    tail = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return tail[-1][:300] if tail else "no output"


def parse_stop_at(value: str | None) -> float | None:
    """``HH:MM`` (UTC, today or tomorrow) or a number of seconds from now -> a time.time() deadline."""
    if not value:
        return None
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return time.time() + float(value)
    h, m = (int(x) for x in value.split(":"))
    now = dt.datetime.now(dt.timezone.utc)
    when = now.replace(hour=h, minute=m, second=0, microsecond=0)
    if when <= now:
        when += dt.timedelta(days=1)
    return when.timestamp()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", default=",".join(TARGETS),
                    help=f"comma-separated modules (default: all): {', '.join(TARGETS)}")
    ap.add_argument("--max-children", type=int, default=max(1, (os.cpu_count() or 2)),
                    help="parallel mutant workers (default: the CPU count)")
    ap.add_argument("--stop-at", help="stop mutating at HH:MM UTC, or after this many seconds; "
                                      "what finished is reported, the rest resumes on the next run")
    ap.add_argument("--fresh", action="store_true", help="delete the saved mutmut state of these modules first")
    ap.add_argument("--retest", action="store_true",
                    help="test the survivors and the untested mutants again even if the tests did not change")
    ap.add_argument("--no-retest", action="store_true",
                    help="do not test the survivors again when their tests changed")
    ap.add_argument("--tests", help="comma-separated test files replacing the modules' selection (a quick check; "
                                    "a changed selection makes mutmut test the module's mutants again)")
    ap.add_argument("--killer-seconds", type=float,
                    help="time for naming the tests that kill former survivors, counted from when the naming "
                         "starts (0: name none; default: unlimited, or 240 s with --stop-at)")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the report from the saved state")
    ap.add_argument("--out", type=Path, default=REPORT, help="report path (default: benchmarks/mutation.md)")
    args = ap.parse_args(argv)

    targets = TARGETS
    if args.tests:
        tests = [Path(t).name for t in args.tests.split(",") if t.strip()]
        targets = {name: dataclasses.replace(t, tests=list(tests)) for name, t in TARGETS.items()}
    names = [m.strip() for m in args.modules.split(",") if m.strip()]
    unknown = [m for m in names if m not in TARGETS]
    if unknown:
        ap.error(f"unknown modules {unknown}; valid: {', '.join(TARGETS)}")
    command = "python benchmarks/mutation.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    command = command.strip()
    deadline = parse_stop_at(args.stop_at)
    t0 = time.monotonic()
    stage_info = sync_stage()
    if not args.report_only:
        for name in names:
            target = targets[name]
            work = STAGE / name
            if args.fresh and (work / "mutants").exists():
                shutil.rmtree(work / "mutants")
                (work / "runs.json").unlink(missing_ok=True)
            if deadline is not None and deadline - time.time() < 60:
                runs = load_runs(work) if work.exists() else {"runs": []}
                work.mkdir(parents=True, exist_ok=True)
                runs["runs"].append({"date": format_now(), "seconds": 0.0, "completed": False,
                                     "tests": select_tests(target), "error": "not run: the --stop-at deadline came first",
                                     "command": command, "invocation": INVOCATION})
                save_runs(work, runs)
                print(f"[{name}] not run (deadline)")
                continue
            print(f"[{name}] mutmut run in {work.relative_to(ROOT)} ...", flush=True)
            entry = run_module(target, max_children=args.max_children, deadline=deadline,
                               retest=not args.no_retest, force_retest=args.retest)
            runs = load_runs(work)
            runs["runs"][-1].update(command=command, invocation=INVOCATION)
            save_runs(work, runs)
            meta = load_meta(work, target)
            n = len(meta["exit_code_by_key"]) if meta else 0
            print(f"[{name}] {format_secs(entry['seconds'])}, {n} mutants, "
                  f"{'complete' if entry['completed'] else entry['error']}", flush=True)
    killer_seconds = args.killer_seconds if args.killer_seconds is not None else (240 if deadline else None)
    killer_deadline = None if killer_seconds is None else time.time() + killer_seconds  # from now, after mutmut
    write_report(args.out, targets=targets, command=command, invocation=INVOCATION, wall=time.monotonic() - t0,
                 stage_info=stage_info, max_children=args.max_children, killer_deadline=killer_deadline)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
