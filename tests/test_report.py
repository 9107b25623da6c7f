"""Tables from result records and README blocks rendered from results files."""

import math

import pytest

from clipunlearn import report
from clipunlearn.results import save_records

from .fake_records import ablation_records, all_records, forget_class_records


def test_mean_std_over_seeds_then_classes():
    records = [r for r in forget_class_records() if r["method"] == "ga"]
    mean, std, n = report.mean_std(records, "forget_acc")
    # per class: sneaker (0.30 + 0.31) / 2, bag (0.32 + 0.33) / 2; per seed: 0.31, 0.32
    assert mean == pytest.approx(0.315) and n == 4
    assert std == pytest.approx(math.sqrt(2 * 0.005 ** 2)) and std == pytest.approx(0.01 / math.sqrt(2))
    assert report.mean_std(records, "absent") == (None, None, 0)
    original = [r for r in forget_class_records() if r["method"] == "original"]
    assert report.mean_std(original, "forget_acc")[1] is None  # seed None: one "seed", no spread


def test_summarise_strings_order_and_missing_metric():
    frame = report.summarise(forget_class_records(other_acc=False), task="forget-class",
                             metrics=("forget_acc", "other_acc", "seconds"))
    assert list(frame.index) == ["original", "ga", "cliperase"]
    assert list(frame.columns) == ["forget_acc", "seconds", "runs"]  # other_acc: no record has it
    assert frame.loc["ga", "forget_acc"] == "0.315 ± 0.007"
    assert frame.loc["original", "forget_acc"] == "0.910"  # one run per class, no spread
    assert frame.loc["original", "seconds"] == ""  # the original has no time
    assert frame.loc["ga", "seconds"] == "2.5 ± 0.7"
    assert frame.loc["ga", "runs"] == 4


def test_summarise_each_class_and_numeric():
    frame = report.summarise(forget_class_records(), task="forget-class", metrics=("forget_acc",), classes="each")
    assert frame.index.names == ["method", "forget_class"]
    assert list(frame.loc["ga"].index) == ["sneaker", "bag", report.ALL_CLASSES]
    assert frame.loc[("ga", "bag"), "forget_acc"] == "0.325 ± 0.007"
    numeric = report.summarise(forget_class_records(), task="forget-class", metrics=("forget_acc",), numeric=True)
    assert numeric.loc["cliperase", "forget_acc"] == pytest.approx(0.015)
    assert numeric.loc["cliperase", "forget_acc_std"] == pytest.approx(0.01 / math.sqrt(2))
    assert math.isnan(numeric.loc["original", "forget_acc_std"])


def test_summarise_leaves_failed_runs_out_and_counts_them():
    records = forget_class_records()
    bad = next(r for r in records if r["method"] == "ga")
    bad["metrics"].update(failed=True, forget_acc=123.0)
    frame = report.summarise(records, task="forget-class", metrics=("forget_acc",), numeric=True)
    assert frame.loc["ga", "runs"] == 3 and frame.loc["ga", "failed"] == 1 and frame.loc["original", "failed"] == 0
    assert frame.loc["ga", "forget_acc"] < 1


def test_summarise_by_variant_and_bad_input():
    no_variant = ablation_records()[0]
    del no_variant["config"]["variant"]  # e.g. a parameter sweep: not a row of the variant table
    frame = report.summarise(ablation_records() + [no_variant], task="ablation", metrics=("forget_acc",),
                             by=("method", "variant"))
    assert list(frame.index) == [("cliperase", "FM"), ("cliperase", "FM+RM")]
    assert list(frame["runs"]) == [2, 2]
    with pytest.raises(ValueError, match="no ablation record has every key"):
        report.summarise([no_variant], task="ablation", by=("method", "variant"))
    with pytest.raises(ValueError, match="tasks present: ablation"):
        report.summarise(ablation_records(), task="forget-class")
    with pytest.raises(ValueError, match="'all' or 'each'"):
        report.summarise(ablation_records(), task="ablation", classes="some")


def test_to_markdown_labels_and_alignment():
    frame = report.summarise(forget_class_records(), task="forget-class", metrics=("forget_acc", "mia"))
    lines = report.to_markdown(frame).splitlines()
    assert lines[0] == "| method | Df acc | MIA AUC | runs |"
    assert lines[1] == "|:---|---:|---:|---:|"
    assert lines[2].startswith("| original | 0.910 |") and lines[3].startswith("| GA | 0.315 ± 0.007 |")
    assert len(lines) == 2 + 3


README = """# Title

Intro text stays.

<!-- results: 10_cliperase forget-class metrics=forget_acc,retain_acc -->
old table
<!-- /results -->

Between.

<!-- results: 10_cliperase ablation -->
<!-- /results -->

<!-- results: 20_synthetic_lipschitz forget-class -->
<!-- /results -->
"""


def test_render_readme_fills_blocks_keeps_text_and_is_idempotent(tmp_path):
    save_records(tmp_path / "mini" / "10_cliperase.json", all_records())
    rendered = report.render_readme(README, results_dir=tmp_path)
    assert "old table" not in rendered
    assert rendered.startswith("# Title\n\nIntro text stays.\n") and "\nBetween.\n" in rendered
    assert "| GA | 0.315 ± 0.007 | 0.615 ± 0.007 | 4 |" in rendered
    assert "| CLIPErase | FM+RM | 0.105 ± 0.007 | 0.705 ± 0.007 | 2 |" in rendered  # ablation: by method, variant
    assert "mean ± std over seeds 0, 1" in rendered
    assert "_No results yet: run `./run_all.sh --profile mini --only 20_synthetic_lipschitz`._" in rendered
    assert report.render_readme(rendered, results_dir=tmp_path) == rendered
    assert rendered.count("<!-- /results -->") == 3


def test_render_readme_profile_option_and_bad_marker(tmp_path):
    save_records(tmp_path / "paper" / "10_cliperase.json", forget_class_records())
    text = ("<!-- results: 10_cliperase forget-class profile=paper metrics=forget_acc classes=each -->\n"
            "<!-- /results -->")
    rendered = report.render_readme(text, results_dir=tmp_path)
    assert "| GA | bag | 0.325 ± 0.007 | 2 |" in rendered and "results/paper/10_cliperase.json" in rendered
    with pytest.raises(ValueError, match="unknown option 'colour=red'"):
        report.render_readme("<!-- results: 10_cliperase forget-class colour=red -->\n<!-- /results -->",
                             results_dir=tmp_path)
    with pytest.raises(ValueError, match="valid profiles: mini, paper"):
        report.render_readme("<!-- results: 10_cliperase forget-class profile=huge -->\n<!-- /results -->",
                             results_dir=tmp_path)


def test_readme_tables_keep_a_methods_variants_apart(tmp_path):
    from clipunlearn.results import make_record

    def run(prior, forget, seed):
        config = {"seed": seed, **({"synthetic_prior": prior} if prior else {})}
        return make_record(method="lipschitz_synthetic", task="forget-class", config=config,
                           metrics={"forget_acc": forget})

    records = [run(None, 0.2, 0), run("none", 0.4, 1), run("bn", 0.9, 0), run("bn", 0.7, 1)]
    assert [r["method"] for r in report.label_variants(records)] == [
        "lipschitz_synthetic", "lipschitz_synthetic", "lipschitz_synthetic_bn", "lipschitz_synthetic_bn"]
    assert records[2]["method"] == "lipschitz_synthetic"  # copies: the caller's records are left as they were
    assert report.label_variants(report.label_variants(records)) == report.label_variants(records)
    save_records(tmp_path / "mini" / "20_x.json", records)
    table = report.render_table(report.parse_marker("20_x forget-class metrics=forget_acc"), results_dir=tmp_path)
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table.splitlines()[2:] if "|" in line}
    assert rows == {"Lipschitz, synthetic": "0.300 ± 0.141", "Lipschitz, synthetic + BN prior": "0.800 ± 0.141"}
