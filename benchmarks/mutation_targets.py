"""What ``benchmarks/mutation.py`` mutates and where: the modules, the staged copy of ``lib/``, the saved state.

Shared by ``mutation.py`` (runs mutmut) and ``mutation_report.py`` (writes ``mutation.md``); imports
neither. The staging writes each decorator out as an assignment after its function and marks the
functions out of a module's scope ``# pragma: no mutate block`` (see the docstring of ``mutation.py``).
"""

from __future__ import annotations

import ast
import datetime as dt
import fnmatch
import io
import json
import os
import shutil
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "clipunlearn"
LIB = ROOT / "lib" / PACKAGE
TESTS = ROOT / "tests"
STAGE = ROOT / ".mutation"
STAGE_SRC = STAGE / "src"
REPORT = ROOT / "benchmarks" / "mutation.md"
#: test files every module's selection also gets (the tests written to kill survivors)
KILL_TESTS = "test_mutation_kills_*.py"
#: decorators mutmut 3 handles itself (alone on a function)
MUTMUT_DECORATORS = ("staticmethod", "classmethod")


@dataclass
class Target:
    """One module to mutate: its tests and which of its functions are in scope."""

    name: str
    tests: list[str]
    include: list[str] | None = None          # qualified names (fnmatch) in scope; None: every function
    exclude: dict[str, str] = field(default_factory=dict)  # pattern -> why it is out of scope
    note: str = ""

    @property
    def file(self) -> str:
        """The module's path under the package (``methods.lipschitz`` -> ``methods/lipschitz.py``)."""
        return self.name.replace(".", "/") + ".py"

    def in_scope(self, qualname: str) -> bool:
        if any(fnmatch.fnmatchcase(qualname, p) for p in self.exclude):
            return False
        return self.include is None or any(fnmatch.fnmatchcase(qualname, p) for p in self.include)


FORMULAS = "test_formulas_*.py"
IO = "files, caches or memory measurement, not a formula"
SETTINGS = "profile settings and data loading (checked by tests/test_paper_*_settings.py)"
RUNNERS = "notebook-level orchestration of many runs (records, stores)"

TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("losses", [FORMULAS, "test_losses.py"]),
    Target("metrics", [FORMULAS, "test_metrics.py", "test_paper_b.py"],
           exclude={"_rss_mb": IO, "_reset_peak_rss": IO, "_peak_rss_mb": IO, "measure_run": IO, "CachedImages.*": IO,
                    "autocast": "device autocast context (CPU tests run without it)"}),
    Target("souping", [FORMULAS, "test_souping.py"]),
    Target("lora", [FORMULAS, "test_lora.py"]),
    Target("layers", [FORMULAS, "test_layers.py"]),
    Target("methods.three_stage", [FORMULAS, "test_three_stage.py"],
           exclude={"loader_key": IO, "_cached": IO, "_on_cpu": IO, "_load_tensors": IO, "run_three_stage": RUNNERS,
                    "explore_three_stage": RUNNERS}),
    Target("methods.three_stage_stages", [FORMULAS, "test_three_stage.py"]),
    Target("images", [FORMULAS, "test_synthetic.py"]),
    Target("synthetic", [FORMULAS, "test_synthetic.py", "test_paper_b.py"],
           exclude={"save_synthetic": IO, "load_synthetic": IO}),
    Target("methods.lipschitz", [FORMULAS, "test_lipschitz.py", "test_paper_b.py"]),
    Target("methods.lipschitz_authors", [FORMULAS, "test_lipschitz.py", "test_paper_b.py"]),
    Target("papers.paper_b", [FORMULAS, "test_lipschitz.py", "test_paper_b.py", "test_paper_b_settings.py"],
           include=["evaluate_class_forgetting"],
           note="only paper B's evaluation (the rest: profile settings, data loading and notebook-level "
                "orchestration, checked by tests/test_paper_b_settings.py)"),
    Target("harness.task", [FORMULAS, "test_experiment.py", "test_split*.py", "test_task*.py"],
           exclude={"pick_examples": "examples shown in notebooks, not a split"}),
    Target("harness.select", [FORMULAS, "test_experiment.py"], exclude={"summarise_run": RUNNERS}),
    Target("harness.evaluate", [FORMULAS, "test_experiment.py"], include=["validate_model"],
           note="the validation numbers the selection reads (evaluate_model's metrics are in metrics.py)"),
    Target("scores", [FORMULAS, "test_experiment.py"]),
    Target("unlearning", [FORMULAS, "test_unlearning.py"]),
    Target("embedding_rows", ["test_embedding_rows.py"],
           note="the loop's token-embedding rows: a changed line must change a run against the dense one"),
    Target("trunk_features", ["test_trunk_features.py"],
           note="kept trunk features: a changed line must change a feature or a hit that should miss"),
]}


# --------------------------------------------------------------------------- #
# Staging: lib/ -> .mutation/src/ with decorators written out and out-of-scope fences
# --------------------------------------------------------------------------- #
def iter_functions(tree: ast.Module):
    """Yield ``(qualname, node)`` for top-level functions and methods of top-level classes."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{node.name}.{sub.name}", sub


def _keeps_decorators(fn) -> bool:
    """True where the decorators stay: none, mutmut's own, or a property setter/getter/deleter."""
    decs = fn.decorator_list
    if not decs:
        return True
    if any(isinstance(d, ast.Name) and d.id in MUTMUT_DECORATORS for d in decs):
        return True
    return any(isinstance(d, ast.Attribute) and d.attr in ("setter", "getter", "deleter") for d in decs)


def _apply_edits(lines: list[str], edits: list[tuple[int, int, list[str]]]) -> list[str]:
    """Apply ``(start, stop, new_lines)`` replacements of 0-based line ranges, bottom-up."""
    for start, stop, new in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        lines[start:stop] = new
    return lines


def desugar_decorators(source: str) -> tuple[str, list[str]]:
    """Write ``@d1 @d2 def f`` as ``def f`` followed by ``f = d1(d2(f))``; return the new source and the names."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    edits, names = [], []
    for qualname, fn in iter_functions(tree):
        if _keeps_decorators(fn):
            continue
        call = fn.name
        for dec in reversed(fn.decorator_list):
            call = f"{ast.get_source_segment(source, dec)}({call})"
        first = min(d.lineno for d in fn.decorator_list)
        indent = " " * fn.col_offset
        edits.append((fn.end_lineno, fn.end_lineno,
                      [f"{indent}{fn.name} = {call}  # desugared by benchmarks/mutation.py\n"]))
        edits.append((first - 1, fn.lineno - 1, []))
        names.append(qualname)
    return "".join(_apply_edits(lines, edits)), names


def _find_header_colons(source: str) -> dict[tuple[int, int], int]:
    """Map each ``def``'s ``(line, col)`` to the line of the colon that ends its header."""
    out, pending, depth = {}, [], 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.string == "def":
            pending.append(tok.start)
        elif tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif tok.type == tokenize.OP and tok.string == ":" and depth == 0 and pending:
            out[pending.pop()] = tok.start[0]
    return out


def fence_out_of_scope(source: str, target: Target | None) -> tuple[str, list[str]]:
    """Mark the functions out of ``target``'s scope ``# pragma: no mutate block`` (on the header's colon line)."""
    if target is None:
        return source, []
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    colons = _find_header_colons(source)
    names = []
    for qualname, fn in iter_functions(tree):
        if target.in_scope(qualname):
            continue
        col = fn.col_offset + (6 if isinstance(fn, ast.AsyncFunctionDef) else 0)  # "async def": the def token
        i = colons[(fn.lineno, col)] - 1
        body = lines[i].rstrip("\r\n")
        lines[i] = body + "  # pragma: no mutate block\n"   # after any comment already there: one comment
        names.append(qualname)
    return "".join(lines), names


def stage_source(path: Path) -> tuple[str, dict]:
    """Return the staged text of one ``lib/clipunlearn/*.py`` file and what was changed in it."""
    target = TARGETS.get(path.stem) if path.parent == LIB else None
    if target is None:   # copied as it is: never mutated
        return path.read_text(), {"desugared": [], "out_of_scope": []}
    text, desugared = desugar_decorators(path.read_text())
    text, fenced = fence_out_of_scope(text, target)
    compile(text, str(path), "exec")
    return text, {"desugared": desugared, "out_of_scope": fenced}


def sync_stage() -> dict[str, dict]:
    """Mirror ``lib/clipunlearn`` into ``.mutation/src/clipunlearn`` (files rewritten only when they differ)."""
    dst_root = STAGE_SRC / PACKAGE
    wanted, info = set(), {}
    for src in sorted(LIB.rglob("*")):
        rel = src.relative_to(LIB)
        if src.is_dir() or "__pycache__" in rel.parts or src.suffix == ".pyc":
            continue
        dst = dst_root / rel
        wanted.add(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".py":
            text, info[rel.as_posix()] = stage_source(src)
            if not dst.exists() or dst.read_text() != text:
                dst.write_text(text)
        elif not dst.exists() or dst.stat().st_size != src.stat().st_size or dst.stat().st_mtime < src.stat().st_mtime:
            shutil.copy2(src, dst)
    for old in sorted(dst_root.rglob("*"), reverse=True):
        if old.is_file() and old not in wanted:
            old.unlink()
        elif old.is_dir() and not any(old.iterdir()):
            old.rmdir()
    return info


# --------------------------------------------------------------------------- #
# One module's mutmut folder: its tests and saved state (read by the run and the report)
# --------------------------------------------------------------------------- #
def select_tests(target: Target) -> list[str]:
    """The test files of ``target`` (globs resolved in ``tests/``), as paths relative to the repository."""
    files = []
    for pattern in target.tests + [KILL_TESTS]:
        for path in sorted(TESTS.glob(pattern)):
            rel = f"tests/{path.name}"
            if rel not in files:
                files.append(rel)
    return files


def locate_meta(work: Path, target: Target) -> Path:
    return work / "mutants" / "src" / PACKAGE / (target.file + ".meta")


def load_meta(work: Path, target: Target) -> dict | None:
    try:
        return json.loads(locate_meta(work, target).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def load_runs(work: Path) -> dict:
    try:
        return json.loads((work / "runs.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"runs": []}


def save_runs(work: Path, runs: dict) -> None:
    tmp = work / "runs.json.tmp"
    tmp.write_text(json.dumps(runs, indent=1))
    os.replace(tmp, work / "runs.json")


def find_mutmut_exe() -> str:
    exe = Path(sys.executable).with_name("mutmut")
    return str(exe) if exe.exists() else "mutmut"


def make_child_env() -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"   # one thread per mutant worker; forked workers and OpenMP pools do not mix
    env.setdefault("PYTHONHASHSEED", "0")
    env.pop("MUTANT_UNDER_TEST", None)
    return env


def decode_status(code) -> str:
    """mutmut's name for a mutant's exit code ("killed", "survived", ...)."""
    # imported here: mutmut is an optional extra (".[mutation]"); --help works without it
    from mutmut.stats import status_by_exit_code
    return status_by_exit_code[code]


def format_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
