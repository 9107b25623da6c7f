"""The notebooks' statements (clipunlearn.findings) and the robustness table across mini models."""

from __future__ import annotations

import copy
import json

import pytest

from clipunlearn import findings, robustness
from clipunlearn.results import load_records


@pytest.fixture(scope="module")
def committed(repo_root):
    folder = repo_root / "results" / "mini"
    return {stem: load_records(folder / f"{stem}.json") for stem in findings.CHECKS}


@pytest.mark.parametrize("stem", list(findings.CHECKS))
def test_every_statement_holds_on_the_committed_records(committed, stem):
    checked = findings.check_notebook(stem, committed[stem])
    assert checked and all(isinstance(f, findings.Finding) for f in checked)
    findings.assert_findings(checked)  # what the notebook asserts
    quick = findings.check_notebook(stem, committed[stem], quick=True)
    assert 0 < len(quick) < len(checked)  # quick mode checks a subset at looser bars


def test_a_broken_record_breaks_its_statement_and_the_assert_names_it(committed):
    records = copy.deepcopy(committed["10_cliperase"])
    for r in records:
        if r["method"] == "cliperase" and r["task"] == "forget-class":
            r["metrics"]["forget_acc"] = 0.5
    checked = findings.check_cliperase(records)
    failing = [f.statement for f in checked if not f.holds]
    assert "CLIPErase forgets the class (forget accuracy <= 0.01)" in failing
    with pytest.raises(AssertionError, match="CLIPErase forgets the class"):
        findings.assert_findings(checked)
    frame = findings.findings_frame(checked)
    assert list(frame.columns) == ["#", "statement", "holds", "values"] and not frame["holds"].all()


def test_benchmark_statements_see_a_changed_ranking(committed):
    records = copy.deepcopy(committed["40_benchmark"])
    for r in records:
        if r["method"] == "ft" and r["task"] == "forget-style-subgroup":
            r["metrics"]["unlearning_score"] = 1.0
    by_key = {f.statement: f.holds for f in findings.check_benchmark(records)}
    assert not by_key["FT scores lowest on the class task (at most 0.7) and on the style subgroup"]
    assert not by_key["on the style subgroup CLIPErase is first (at least 0.97)"]  # FT now is
    assert by_key["CLIPErase scores at least 0.97 on both subgroup tasks"]


@pytest.mark.parametrize("missed, holds", [(0, True), (1, True), (2, False)])
def test_stop_rule_statement_allows_exactly_one_missed_run(committed, missed, holds):
    records = copy.deepcopy(committed["20_synthetic_lipschitz"])
    runs = [r for r in records if r["method"] == "lipschitz_synthetic" and r["task"] == "forget-class"
            and r["config"].get("synthetic_prior", "none") == "none"]  # paper B's images; the prior's runs apart
    for r in runs:
        r["metrics"]["stop_acc"] = 0.1  # the boundary is met
    for r in runs[:missed]:
        r["metrics"]["stop_acc"] = 0.1001
    by_key = {f.statement.split(" (")[0]: f for f in findings.check_synthetic_lipschitz(records)}
    found = by_key["the synthetic forget set is forgotten"]
    assert found.holds is holds and found.values["met"] == f"{len(runs) - missed}/{len(runs)}"


def test_unknown_notebook_lists_the_valid_ones():
    with pytest.raises(ValueError, match="10_cliperase"):
        findings.check_notebook("99_x", [])


def test_committed_robustness_table_is_current_and_no_statement_fails_on_any_model(repo_root, committed):
    """The committed table (``python benchmarks/robustness.py``) holds exactly the statements the notebooks assert
    now, on the shipped model and at least two retrained ones; none fails where its notebook ran, and notebooks
    10-40 ran on every model."""
    table = json.loads((repo_root / "results" / "mini" / "robustness.json").read_text())
    assert table["models"][0] == "shipped" and len(table["models"]) >= 3
    for s in table["statements"]:
        assert s["holds"]["shipped"] is True, (s["notebook"], s["statement"])
        assert False not in s["holds"].values(), (s["notebook"], s["statement"], s["values"])
        if s["notebook"] != "45_attacks":
            assert None not in s["holds"].values(), (s["notebook"], s["statement"])
    now = {(stem, f.statement) for stem in findings.CHECKS for f in findings.check_notebook(stem, committed[stem])}
    assert {(s["notebook"], s["statement"]) for s in table["statements"]} == now
    # the spread of the main metrics is there for every model
    assert table["spread"] and all(set(row["by_model"]) <= set(table["models"]) for row in table["spread"])
    text = robustness.robustness_markdown(table)
    assert text.count("\n|") > len(table["statements"])


def test_evaluate_models_says_not_run_apart_from_not_holding(tmp_path, repo_root):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    records = copy.deepcopy(load_records(repo_root / "results" / "mini" / "10_cliperase.json"))
    for r in records:
        if r["method"] == "cliperase" and r["task"] == "forget-class":
            r["metrics"]["forget_acc"] = 0.5
    (tmp_path / "broken" / "10_cliperase.json").write_text(json.dumps({"records": records}))
    table = robustness.evaluate_models({"shipped": repo_root / "results" / "mini", "empty": tmp_path / "empty",
                                        "broken": tmp_path / "broken"})
    statements = table["statements"]
    assert statements and all(s["holds"]["shipped"] is True for s in statements)
    assert all(s["holds"]["empty"] is None for s in statements)  # no results file: not run
    assert all(s["holds"]["broken"] is None for s in statements if s["notebook"] != "10_cliperase")
    ten = {s["statement"]: s["holds"]["broken"] for s in statements if s["notebook"] == "10_cliperase"}
    assert ten["CLIPErase forgets the class (forget accuracy <= 0.01)"] is False
    row = next(line for line in robustness.robustness_markdown(table).splitlines()
               if "CLIPErase forgets the class (forget" in line)
    assert row.endswith("| yes | not run | **no** |")
