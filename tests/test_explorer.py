"""The explorer (notebook 50): runs, caching, tables, figures and the widget UI, on a tiny random CLIP."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

from clipunlearn import configs, data, experiment, explorer
from clipunlearn.methods import three_stage
from clipunlearn.harness import run as harness_run

from .test_experiment import tiny_world

SMALL = dict(batch_size=8, eval_per_class=4, retain_per_class=6, n_examples=3)


@pytest.fixture
def world(tiny_resnet_clip):
    model, tokenizer = tiny_resnet_clip
    return explorer.World(model=model, tokenizer=tokenizer, train=tiny_world(12, 0), test=tiny_world(6, 1),
                          templates=("a photo of a {}.",))


def test_target_choices_per_kind():
    classes, styles = data.FASHION_MNIST_CLASSES, data.STYLES
    assert explorer.target_choices("forget-class", classnames=classes, stylenames=styles) == list(classes)
    subgroup = explorer.target_choices("forget-subgroup", classnames=classes, stylenames=styles)
    assert "sandal" in subgroup and "bag" not in subgroup  # a bag has no sibling class
    style = explorer.target_choices("forget-style-subgroup", classnames=classes, stylenames=styles)
    assert "sketch:sneaker" in style and not any(t.startswith("photo:") for t in style)
    with pytest.raises(ValueError, match="valid: forget-class"):
        explorer.target_choices("forget-everything", classnames=classes)


def test_check_config_lists_valid_values(world):
    with pytest.raises(ValueError, match="valid: ft, ga"):
        explorer.check_config(explorer.ExplorerConfig(method="magic"), world=world)
    with pytest.raises(ValueError, match="valid: .*sandal"):
        explorer.check_config(explorer.ExplorerConfig(kind="forget-subgroup", target="bag"), world=world)
    with pytest.raises(ValueError, match="lr must be a positive"):
        explorer.check_config(explorer.ExplorerConfig(lr=0.0), world=world)


def test_run_explorer_forgets_and_leaves_the_model_alone(world, monkeypatch):
    # the target: the class the random model recognises best, so there is something to forget
    probe = explorer.run_explorer(explorer.ExplorerConfig(method="ft", lr=1e-6, steps=1, **SMALL), world=world)
    per_class = probe.original["metrics"]["per_class_acc"]
    target = max(per_class, key=per_class.get)
    assert per_class[target] > 0

    before = {k: v.clone() for k, v in world.model.state_dict().items()}
    calls = []
    evaluate = harness_run.evaluate_model  # counted where run_method and the explorer call it
    counting = lambda *a, **k: calls.append(1) or evaluate(*a, **k)  # noqa: E731
    monkeypatch.setattr(harness_run, "evaluate_model", counting)
    monkeypatch.setattr(experiment, "evaluate_model", counting)
    config = explorer.ExplorerConfig(kind="forget-class", target=target, method="ga", lr=1e-2, steps=6, **SMALL)
    result = explorer.run_explorer(config, world=world)

    assert result.record["metrics"]["forget_acc"] < result.original["metrics"]["forget_acc"]
    assert all(torch.equal(v, world.model.state_dict()[k]) for k, v in before.items())  # a copy was trained
    assert result.record["config"]["explorer"]["lr"] == 1e-2 and result.record["config"]["forget_class"] == target
    # examples: the forget row shows the target; "before" is the untouched model's prediction
    ex = result.examples
    assert ex["rows"] == ["forget", "retain"] and ex["images"].shape == (2, 3, 3, 32, 32)
    assert set(ex["labels"][0]) == {target} and len(set(ex["labels"][1])) == 3
    assert len(ex["before"][0][0]) == 3 and abs(sum(p for _, p in ex["before"][0][0])) <= 1 + 1e-6

    # the untouched model is evaluated once per task: a second run only evaluates the new model
    calls.clear()
    explorer.run_explorer(config, world=world)
    assert len(calls) == 1


def test_tables_and_figures(world):
    config = explorer.ExplorerConfig(kind="forget-subgroup", target="sandal", method="cliperase", lr=1e-3, steps=5,
                                     **SMALL)
    result = explorer.run_explorer(config, world=world)
    table = explorer.summary_table(result)
    row = table.loc["sibling_acc (sibling acc)"]
    assert row["before"] == pytest.approx(result.original["metrics"]["sibling_acc"], abs=1e-3)
    assert row["change"] == pytest.approx(row["after"] - row["before"], abs=2e-3)
    assert result.examples["rows"] == ["forget", "sibling"]
    examples = explorer.examples_table(result)
    assert len(examples) == 6 and set(examples["row"]) == {"forget", "sibling"}
    figures = explorer.plot_result(result)
    assert {"per_class", "confusion", "curve", "examples"} <= set(figures)
    # per-class bars: the original and the run, one axis
    assert len(figures["per_class"].axes) == 1
    for fig in figures.values():
        plt.close(fig)


def test_three_stage_runs_from_the_registry(world, monkeypatch):
    """The explorer offers the three stages and runs them through their registered ``explore`` (no name patched in)."""
    assert "three_stage" in explorer.available_methods()
    seen = {}
    real = three_stage.run_three_stage

    def recording_run(task, **kwargs):
        seen.update(kwargs)
        return real(task, **kwargs)

    monkeypatch.setattr(three_stage, "run_three_stage", recording_run)
    config = explorer.ExplorerConfig(kind="forget-subgroup", target="sandal", method="three_stage", lr=3e-3, steps=2,
                                     seed=2, **SMALL)
    result = explorer.run_explorer(config, world=world)
    assert seen["lr"] == 3e-3 and seen["settings"]["forget_steps"] == 2 and seen["seed"] == 2
    assert seen["batch_size"] == SMALL["batch_size"] and seen["stage_metrics"] is False
    mini = configs.mini_settings()["three_stage"]
    assert {k: v for k, v in seen["settings"].items() if k != "forget_steps"} == {
        k: v for k, v in mini["settings"].items() if k != "forget_steps"}
    assert result.record["method"] == "three_stage" and result.record["config"]["task"] == "forget-subgroup"


def test_ui_runs_the_configuration_of_its_controls(world):
    ran = []

    def fake_run(config, *, world):
        ran.append(config)
        if config.seed == 13:
            raise ValueError("boom")
        return explorer.ExplorerResult(config=config, original={}, record={"metrics": {}}, examples={}, seconds=0.5)

    shown = []
    ui = explorer.build_explorer_ui(world, initial=explorer.ExplorerConfig(**SMALL), run_fn=fake_run,
                                    show_fn=shown.append)
    c = ui.controls
    c["kind"].value = "forget-style-subgroup"
    assert c["target"].value == "sketch:sneaker" and "negative:bag" in c["target"].options
    c["method"].value = "lipschitz_synthetic"
    assert c["lr"].value == pytest.approx(1e-2)  # the middle of its mini grid
    assert c["lr"].value == pytest.approx(explorer.default_lr("lipschitz_synthetic"))
    c["steps"].value = 9
    c["run"].click()
    assert ran[-1] == explorer.ExplorerConfig(kind="forget-style-subgroup", target="sketch:sneaker",
                                              method="lipschitz_synthetic", lr=ran[-1].lr, steps=9, **SMALL)
    assert shown == ui.results and c["status"].value.startswith("done")
    # an error is reported in the UI, not raised, and the button works again
    c["seed"].value = 13
    c["run"].click()
    assert c["status"].value == "error: boom" and not c["run"].disabled and len(ui.results) == 1
