"""The formula index of docs/PAPERS.md names library functions and tests that exist.

Every row of "Formulas and the tests that pin them" must name at least one library
function (``module.name``, resolved in ``clipunlearn``) and at least one test
(``test_file.py::test_name``) defined in ``tests/``: a renamed or deleted test, or a
function moved by a refactor, fails here until the index follows.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Formulas and the tests that pin them"


def formula_rows() -> list[tuple[str, str, str]]:
    """Return ``(id, library cell, tests cell)`` for every row of the index."""
    text = (ROOT / "docs" / "PAPERS.md").read_text()
    assert SECTION in text, f"docs/PAPERS.md lost its section {SECTION!r}"
    rows = []
    for line in text.split(SECTION, 1)[1].splitlines():
        if line.startswith("## "):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and cells[0] not in ("id", "---"):
            rows.append((cells[0], cells[2], cells[3]))
    return rows


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


ROWS = formula_rows()


def test_the_index_covers_every_paper_and_the_baselines():
    ids = [r[0] for r in ROWS]
    assert len(ids) == len(set(ids)), "formula ids must be unique"
    for prefix in ("A-", "B-", "C-", "base-", "metric-"):
        assert any(i.startswith(prefix) for i in ids), prefix
    assert {"A-fisher", "A-align", "A-soup", "B-lipschitz", "B-avg-gain", "C-FM", "C-RM", "C-CM", "C-total",
            "metric-mia", "select"} <= set(ids)


@pytest.mark.parametrize("formula, library, tests", ROWS, ids=[r[0] for r in ROWS])
def test_each_formula_names_existing_functions_and_tests(formula, library, tests):
    functions = re.findall(r"`([\w.]+)\.(\w+)`", library)
    assert functions, f"{formula}: no library function named"
    for module, name in functions:
        assert hasattr(importlib.import_module(f"clipunlearn.{module}"), name), f"{formula}: {module}.{name}"
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", tests)
    assert named, f"{formula}: no test named"
    for file, name in named:
        path = ROOT / "tests" / file
        assert path.exists(), f"{formula}: {file} does not exist"
        assert name in defined_tests(path), f"{formula}: {file} has no {name}"
