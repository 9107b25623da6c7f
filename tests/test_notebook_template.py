"""Every notebook follows one template, and figure file names come from ``plots`` alone.

The template (notebook 30's): a title ``# NN · ...``, the Colab cell (tests/test_colab.py checks its text), the
imports, a cell tagged ``parameters`` whose every line is ``NAME: type = value  # help``, numbered sections,
the saved results and figures, "What this shows" (notebooks with findings) and the environment report last.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
import pytest

from clipunlearn import plots

matplotlib.use("Agg")

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PARAMETER_LINE = re.compile(r"^[A-Z][A-Z0-9_]*: (str|bool|int|float) = \S.*  # \S")
WITHOUT_FINDINGS = {"50_explorer"}  # the interactive explorer states nothing to check


def cells(path: Path) -> list[dict]:
    return [dict(c, source="".join(c["source"])) for c in json.loads(path.read_text())["cells"]]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 6


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_follows_the_template(path):
    c = cells(path)
    number = path.stem[:2]
    assert c[0]["cell_type"] == "markdown" and c[0]["source"].startswith(f"# {number} · ")
    assert c[1]["cell_type"] == "code" and c[1]["source"].startswith("# Colab")
    params = [x for x in c if "parameters" in x.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "one cell tagged 'parameters' (papermill injects after it)"
    lines = [line for line in params[0]["source"].splitlines() if line.strip()]
    bad = [line for line in lines if not PARAMETER_LINE.match(line)]
    assert lines and not bad, f"parameters must read 'NAME: type = value  # help': {bad}"
    assert {"PROFILE", "QUICK"} <= {line.split(":")[0] for line in lines}
    headings = [x["source"].splitlines()[0] for x in c if x["cell_type"] == "markdown" and x["source"]]
    sections = [int(m.group(1)) for h in headings if (m := re.match(r"## (\d+)\. ", h))]
    assert sections and sections == list(range(1, len(sections) + 1)), headings
    if path.stem not in WITHOUT_FINDINGS:
        assert "## What this shows" in headings
    assert c[-2]["source"] == "## Environment" and "describe_environment()" in c[-1]["source"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_save_figures_only_through_save_notebook_figures(path):
    code = "\n".join(x["source"] for x in cells(path) if x["cell_type"] == "code")
    assert not re.search(r"\bsave_figures?\(|\.savefig\(|figures / ", code), \
        "save figures with plots.save_notebook_figures (file names come from plots.FIGURES)"
    if path.stem in plots.FIGURES:
        assert f'save_notebook_figures("{path.stem}", figures, records=' in code


def test_save_notebook_figures_names_record_and_image_figures(tmp_path, monkeypatch):
    made = []

    def figure():
        fig = Figure()
        made.append(fig)
        return fig

    monkeypatch.setitem(plots.FIGURES, "77_toy", lambda records: {f"77_n{len(records)}.png": figure()})
    paths = plots.save_notebook_figures("77_toy", tmp_path, records=[{}, {}],
                                        images={"examples sketch:sneaker": figure()})
    assert [p.name for p in paths] == ["77_n2.png", "77_examples_sketch_sneaker.png"]
    assert all(p.parent == tmp_path and p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    # images only: the records' figures are not drawn
    assert [p.name for p in plots.save_notebook_figures("77_toy", tmp_path, images={"grid": figure()})] == [
        "77_grid.png"]
    with pytest.raises(ValueError, match="^no figures registered for '99_none'; notebooks with figures: 00_setup"):
        plots.save_notebook_figures("99_none", tmp_path, records=[])


def test_image_figure_name():
    assert plots.image_figure_name("30_subgroup_forgetting", "examples sketch:sneaker") == \
        "30_examples_sketch_sneaker.png"
    assert plots.image_figure_name("00_setup_and_baseline", "data_overview") == "00_data_overview.png"
