"""The one method registry: a method registered once appears in the harness, the benchmark, the explorer and the report."""

from __future__ import annotations

import pytest
import torch

from clipunlearn import experiment, explorer, registry, report
from clipunlearn.harness import ResultStore

from .test_experiment import tiny_world

TOY = "toy_ascent"


@pytest.fixture
def toy_method(monkeypatch):
    """Register a toy loss method (gradient ascent on the forget pairs' CLIP loss) and its grid, then remove them."""
    calls = []

    @registry.register_method(TOY, label="Toy ascent", needs_class_texts=True)
    def toy_loss(model, original, forget_batch, retain_batch, *, class_texts=None, scale: float = 1.0):
        calls.append(class_texts)
        image = model.encode_image(forget_batch["images"], normalize=True)
        text = model.encode_text(forget_batch["texts"], normalize=True)
        loss = scale * (image * text).sum(-1).mean()  # lower similarity: forget the pairs
        return loss, {"toy": float(loss.detach())}

    real_settings = explorer.mini_settings

    def settings_with_grid():  # the method's one settings entry (configs/mini.json: grids)
        s = real_settings()
        s["grids"][TOY] = {"lr": [1e-4, 1e-3, 1e-2]}
        return s

    monkeypatch.setattr(explorer, "mini_settings", settings_with_grid)
    yield calls
    registry.unregister(TOY)


def test_registry_keeps_the_report_order_labels_and_needs():
    assert list(registry.method_labels()) == [
        "original", "retrain", "ft", "ga", "ga_pairs", "graddiff", "neggrad_plus", "random_labels", "cliperase",
        "cliperase_paper", "lipschitz", "lipschitz_synthetic", "lipschitz_real", "nullspace", "three_stage",
        "lipschitz_synthetic_bn", "three_stage-no_fisher"]
    assert [m for m in registry.METHODS if registry.METHODS[m].needs_class_texts] == [
        "ga", "graddiff", "neggrad_plus", "random_labels"]
    assert registry.method_names(kind="procedure") == ["lipschitz_synthetic", "lipschitz_real", "nullspace",
                                                       "three_stage"]
    assert registry.METHODS["lipschitz_synthetic"].data_free and not registry.METHODS["three_stage"].data_free
    assert explorer.available_methods() == ["ft", "ga", "graddiff", "neggrad_plus", "random_labels", "cliperase",
                                            "lipschitz_synthetic", "three_stage"]
    assert registry.get_loss("ga").loss_name == "ga"


def test_registry_refuses_duplicates_and_lists_valid_names():
    with pytest.raises(ValueError, match="already registered"):
        registry.register_method("ga")(lambda *a: None)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_procedure("original", label="x")
    with pytest.raises(ValueError, match=r"unknown unlearning method 'magic'; valid: ft, ga, ga_pairs, graddiff"):
        registry.get_method("magic")
    with pytest.raises(ValueError, match="is a registered method"):
        registry.register_label("ga", "x")


def test_a_toy_method_appears_in_harness_benchmark_explorer_and_report(toy_method, tiny_clip, tmp_path):
    model, tokenizer = tiny_clip
    train, test = tiny_world(seed=0), tiny_world(n_per_class=6, seed=1)
    task = experiment.build_task(train, test, kind="forget-class", target="sneaker", seed=0, retain_per_class=4,
                                 eval_per_class=3, val_per_class=2)
    # 1. the harness runs it through the one loop, with the class prompts it asked for
    before = model.visual.proj.detach().clone()
    unlearned, record = experiment.run_method(TOY, task, model=model, tokenizer=tokenizer, lr=1e-3, steps=2,
                                              batch_size=4, loss_kwargs={"scale": 2.0})
    assert record["method"] == TOY and record["config"]["scale"] == 2.0 and record["config"]["steps"] == 2
    assert toy_method and all(c is not None and c.shape[0] == len(task.classnames) for c in toy_method)
    assert not torch.equal(unlearned.visual.proj, before) and torch.equal(model.visual.proj, before)
    # 2. the benchmark selects it like any method
    store = ResultStore(tmp_path / "records.json")
    records = experiment.run_forget_benchmark([TOY], {"sneaker": [task]}, model=model, tokenizer=tokenizer,
                                              grid={"lr": [1e-4, 1e-3]}, steps=1, batch_size=4, store=store,
                                              progress=False)
    methods = [r["method"] for r in records]
    assert methods[0] == "original" and set(methods[1:]) == {TOY}
    main = [r for r in records[1:] if r["task"] == "forget-class"]
    grid_rows = [r for r in records[1:] if r["task"] == "selection"]
    assert len(main) == 1 and main[0]["config"]["selected"]["lr"] in (1e-4, 1e-3) and len(grid_rows) == 2
    # 3. the explorer offers it, with the middle of its grid as the starting learning rate
    assert TOY in explorer.available_methods() and explorer.default_lr(TOY) == 1e-3
    explorer.check_config(explorer.ExplorerConfig(method=TOY, lr=1e-3))
    # 4. the report labels it and lists it after the methods registered before it
    assert report.method_label(TOY) == "Toy ascent"
    assert report.order_methods([TOY, "ft", "original", "unknown"]) == ["original", "ft", TOY, "unknown"]
