"""Figures from result records: axes, bars, value labels, and keys that the records lack."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402

from clipunlearn import plots  # noqa: E402

from .fake_records import (CLASSES, FORGET, METHODS, ablation_records, all_records,  # noqa: E402
                           forget_class_records, forget_ratio_records, selection_records, setup_record)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def bars(ax) -> list:
    """The bar rectangles of ``ax`` (not the shaded spans or legend patches)."""
    return [b for c in ax.containers if isinstance(c, BarContainer) for b in c]


def bar_heights(ax) -> list[float]:
    return [round(b.get_height(), 6) for b in bars(ax)]


def test_method_bars_one_panel_per_metric_original_first_each_bar_labelled():
    fig = plots.plot_method_bars(forget_class_records())
    assert len(fig.axes) == 3
    for ax in fig.axes:
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["original", "GA", "CLIPErase"]  # original first, then the registry order
        assert len(bars(ax)) == 3 and len(ax.texts) == 3
    forget = fig.axes[0]
    # mean over the two classes: original (0.9 + 0.92) / 2, cliperase (0.005 + 0.025) / 2
    assert bar_heights(forget) == [0.91, 0.315, 0.015]
    assert [t.get_text() for t in forget.texts] == [f"{b.get_height():.2f}" for b in bars(forget)]
    # the original is also a dashed reference line at its mean
    dashed = [line for line in forget.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_ydata()[0] == pytest.approx(0.91)


def test_method_bars_zero_bar_still_has_its_value():
    records = [r for r in forget_class_records() if r["method"] != "ga"]
    for r in records:
        if r["method"] == "cliperase":
            r["metrics"]["forget_acc"] = 0.0
    ax = plots.plot_method_bars(records, metrics=("forget_acc",)).axes[0]
    assert bar_heights(ax)[-1] == 0.0 and ax.texts[-1].get_text() == "0.00"


def test_method_bars_skip_a_metric_no_record_has():
    fig = plots.plot_method_bars(forget_class_records(other_acc=False))
    assert len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["Df acc", "Dr acc"]


def test_method_bars_skip_a_method_that_lacks_the_metric():
    records = forget_class_records()
    for r in records:
        if r["method"] == "original":
            r["metrics"].pop("other_acc")
    ax = plots.plot_method_bars(records).axes[2]
    assert len(bars(ax)) == 2 and len(ax.texts) == 2


def test_method_bars_methods_filter_and_unknown_task():
    ax = plots.plot_method_bars(forget_class_records(), methods=["cliperase"]).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["original", "CLIPErase"]
    with pytest.raises(ValueError, match="tasks present: forget-class"):
        plots.plot_method_bars(forget_class_records(), task="forget-subgroup")


def test_method_bars_error_bars_are_std_over_seeds():
    ax = plots.plot_method_bars(forget_class_records(), metrics=("forget_acc",)).axes[0]
    errors = [c for c in ax.containers if not isinstance(c, BarContainer)][0]
    segments = [seg for seg in errors.lines[2][0].get_segments() if len(seg)]
    spans = [seg[1][1] - seg[0][1] for seg in segments]
    # seeds 0 and 1 differ by 0.01 -> std 0.00707 each side; the original (one run) has no error bar
    assert spans == [pytest.approx(2 * 0.01 / 2 ** 0.5, abs=1e-5)] * 2


def test_per_class_one_panel_per_method_before_and_after():
    fig = plots.plot_per_class(forget_class_records(), forget_class="sneaker")
    assert len(fig.axes) == len(METHODS)
    ax = fig.axes[0]  # GA, the first method after the original
    assert len(bars(ax)) == 2 * len(CLASSES) and len(ax.texts) == 2 * len(CLASSES)
    sneaker = [t for t in fig.axes[-1].get_xticklabels() if t.get_text() == "sneaker"][0]
    assert sneaker.get_color() == "crimson"


def test_per_class_without_the_key_is_no_data():
    with pytest.raises(plots.NoDataError):
        plots.plot_per_class(forget_class_records(per_class=False), forget_class="sneaker")


def test_forget_confusion_rows_are_methods_original_first():
    fig = plots.plot_forget_confusion(forget_class_records(), forget_class="bag")
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["original", "GA", "CLIPErase"]
    assert len(ax.texts) == 3 * len(CLASSES)
    # ga keeps 0.32 / 0.33 of the bag images on bag (seeds 0, 1): mean 0.325
    row = [t.get_text() for t in ax.texts][len(CLASSES):2 * len(CLASSES)]
    assert row[CLASSES.index("bag")] == f"{0.325:.2f}"


def test_forgetting_curves_panels_and_marker_only_short_runs():
    fig = plots.plot_forgetting_curves(forget_class_records(history_points=6))
    assert len(fig.axes) == len(METHODS) * len(FORGET)
    curves = [line for line in fig.axes[0].get_lines() if line.get_label() in ("val Df acc", "val Dr acc")]
    assert len(curves) == 2 and all(line.get_linestyle() == "-" for line in curves)
    assert len(fig.axes[0].collections) >= 2  # the +-std bands

    fig = plots.plot_forgetting_curves(forget_class_records(history_points=3), min_points=4)
    ax = fig.axes[0]
    assert not [line for line in ax.get_lines() if line.get_label() in ("val Df acc", "val Dr acc")]
    markers = [c for c in ax.containers if c.get_label() in ("val Df acc", "val Dr acc")]
    assert len(markers) == 2 and all(c.lines[0].get_linestyle() == "None" for c in markers)


def test_forgetting_curves_one_class_wraps_methods_and_skips_missing_history():
    records = [r for r in forget_class_records() if r["config"]["forget_class"] == "sneaker"]
    assert len(plots.plot_forgetting_curves(records).axes) == len(METHODS)
    with pytest.raises(plots.NoDataError):
        plots.plot_forgetting_curves(forget_class_records(history_points=0))


def test_ablation_with_and_without_paper_values():
    records = forget_class_records() + ablation_records()
    fig = plots.plot_ablation(records)
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["FM", "FM+RM"]
    assert len(bars(fig.axes[0])) == 2 and len(fig.axes[0].texts) == 2

    paper = {"FM": {"forget_acc": 0.1857, "retain_acc": 0.6412}, "FM+RM": {"forget_acc": 0.094, "retain_acc": 0.7314},
             "FM+RM+CM": {"forget_acc": 0.0, "retain_acc": 0.908}}
    fig = plots.plot_ablation(records, paper=paper)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["FM", "FM+RM", "FM+RM+CM"]
    assert len(bars(ax)) == 2 + 3 and len(ax.texts) == 5
    hatched = [b for b in bars(ax) if b.get_hatch()]
    assert [round(b.get_height(), 4) for b in hatched] == [0.1857, 0.094, 0.0]
    labels = ax.get_legend_handles_labels()[1]
    assert "paper (CIFAR-100, ViT)" in labels and "ours (mini)" in labels


def test_forget_ratio_grouped_bars():
    fig = plots.plot_forget_ratio(forget_ratio_records())
    assert len(fig.axes) == 2
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10%", "20%", "30%"]
    assert len(bars(ax)) == 3 * len(METHODS) and len(ax.texts) == 3 * len(METHODS)


def test_selection_log_x_selected_and_oracle_labelled():
    fig = plots.plot_selection(selection_records())
    assert len(fig.axes) == len(METHODS)
    ga, cliperase = fig.axes
    assert ga.get_xscale() == "log"
    labels = cliperase.get_legend_handles_labels()[1]
    assert plots.ORACLE_LABEL in labels and "selected" in labels
    assert plots.ORACLE_LABEL not in ga.get_legend_handles_labels()[1]


def test_selection_oracle_score_beside_the_validation_score():
    records = [r for r in selection_records() if not r["config"]["oracle"]]
    for r in records:
        r["metrics"]["oracle_score"] = 0.9
    fig = plots.plot_selection(records)
    for ax in fig.axes:
        assert plots.ORACLE_LABEL in ax.get_legend_handles_labels()[1]
        oracle = [c for c in ax.containers if c.get_label() == plots.ORACLE_LABEL][0]
        assert list(oracle.lines[0].get_ydata()) == [0.9, 0.9, 0.9]
        assert oracle.lines[0].get_linestyle() == "--"


def test_tradeoff_one_labelled_point_per_method():
    ax = plots.plot_tradeoff(forget_class_records()).axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["CLIPErase", "GA", "original"]


def test_setup_figures_from_the_record_and_without_optional_keys():
    record = setup_record()
    figures = plots.figures_setup_and_baseline([record])
    assert set(figures) == {"00_training_loss.png", "00_training_accuracy.png", "00_confusion.png",
                            "00_embedding_map.png"}
    del record["embedding_map"], record["history"]
    assert set(plots.figures_setup_and_baseline([record])) == {"00_confusion.png"}


def test_registry_draws_what_the_records_support():
    figures = plots.FIGURES["10_cliperase"](all_records())
    expected = {"10_main.png", "10_forgetting_curves.png", "10_tradeoff.png", "10_ablation.png",
                "10_forget_ratio.png", "10_selection.png"}
    expected |= {f"10_{kind}_{c}.png" for kind in ("per_class", "forget_confusion") for c in FORGET}
    assert set(figures) == expected
    lean = forget_class_records(per_class=False, confusion=False, history_points=0)
    assert set(plots.FIGURES["20_synthetic_lipschitz"](lean)) == {"20_main.png", "20_tradeoff.png"}


def test_stages_by_style_one_bar_group_per_stage_and_style():
    from clipunlearn.results import make_record

    def run(seed, **m):
        return make_record(method="three_stage", task="forget-style-subgroup",
                           config={"forget_class": "sketch:sneaker", "seed": seed}, metrics=m)

    styled = {"forget_acc": 0.0, "sibling_acc": 0.5, "sibling_acc@photo": 0.9, "sibling_acc@negative": 0.1,
              "retain_acc": 0.8, "other_acc@sketch": 0.3}
    after = {f"after_{s}/{k}": v for s in ("forget", "remind") for k, v in styled.items()}
    records = [make_record(method="original", task="forget-style-subgroup", config={"forget_class": "sketch:sneaker"},
                           metrics={"forget_acc": 1.0, "sibling_acc": 0.9, "sibling_acc@photo": 0.9,
                                    "sibling_acc@negative": 0.9, "retain_acc": 0.9, "other_acc@sketch": 0.9}),
               run(0, **styled, **after), run(1, **styled, **after)]
    fig = plots.plot_stages_by_style(records)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    # the forgotten subgroup first, then the kept styles of its class, then the other classes by style
    assert [t.split("\n")[0] for t in titles][:5] == ["Df acc", "sibling acc (negative)", "sibling acc (photo)",
                                                      "other acc (sketch)", "Dr acc"]
    with pytest.raises(plots.NoDataError):
        plots.plot_stages_by_style([r for r in records if r["method"] == "original"] +
                                   [run(0, forget_acc=0.0, sibling_acc=0.5)])


def test_three_stage_examples_one_row_per_model_and_stage():
    from clipunlearn.results import make_record

    class Images:
        classnames = ["sandal", "sneaker"]

        def __getitem__(self, i):
            return torch.full((3, 8, 8), float(i)), i % 2

    shown = {"indices": [0, 1], "labels": [0, 1], "original": [0, 1], "forget": [1, 1], "remind": [1, 1],
             "restore": [1, 0]}
    record = make_record(method="three_stage", task="forget-subgroup", config={"forget_class": "sandal", "seed": 0},
                         metrics={})
    record["three_stage"] = {"examples": shown}
    fig = plots.plot_three_stage_examples(record, dataset=Images())
    rows = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert rows == ["original", "after forgetting", "after reminding", "after restoring"]
    assert [ax.get_title() for ax in fig.axes[-2:]] == ["sneaker", "sandal"]  # after restoring: swapped
    with pytest.raises(plots.NoDataError):
        plots.plot_three_stage_examples({**record, "three_stage": {}}, dataset=Images())
