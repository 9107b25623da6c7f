"""The training step's compile mode (``unlearning.COMPILE_MODES``, notebook 10's ``COMPILE``) reaches every run of
the harness's drivers: the serial run's ``run_fn`` and a worker's, which rebuilds it from the spec's settings."""

from types import SimpleNamespace

import pytest

from clipunlearn.harness import RUN_FACTORIES
from clipunlearn.harness import run as run_module

TASK = SimpleNamespace(kind="forget-class", target="sneaker", seed=0)


@pytest.fixture
def passed(monkeypatch):
    """The ``compile`` each ``run_method`` call got."""
    seen = []

    def fake_run_method(method, task, **kw):
        seen.append(kw["compile"])
        return None, {"task": task.kind, "config": {}, "metrics": {}}
    monkeypatch.setattr(run_module, "run_method", fake_run_method)
    return seen


def test_every_run_factory_passes_compile_to_its_runs(passed):
    extra = {"benchmark": {}, "ablation": {"variant": "FM", "loss_kwargs": {}}, "ratio": {"ratio": 0.1}}
    assert set(extra) == set(RUN_FACTORIES)
    for name, kw in extra.items():
        RUN_FACTORIES[name](method="ga", steps=2, model=None, tokenizer=None, compile="aot_eager", **kw)(TASK, lr=1e-4)
        RUN_FACTORIES[name](method="ga", steps=2, model=None, tokenizer=None, **kw)(TASK, lr=1e-4)  # the default
    assert passed == ["aot_eager", ""] * 3


def test_every_driver_puts_compile_in_the_settings_a_worker_rebuilds_its_run_from(passed, monkeypatch):
    specs = []

    def fake_run_selected(method, tasks, *, run_fn, remote=None, **kw):
        specs.append(remote["settings"])
        run_fn(TASK, lr=1e-4)
        return []
    monkeypatch.setattr(run_module, "run_selected", fake_run_selected)
    monkeypatch.setattr(run_module, "record_original", lambda *a, **k: {})
    world = {"name": "paper_c", "params": {}}
    run_module.run_forget_benchmark(["ga"], {"sneaker": [TASK]}, model=None, tokenizer=None, grid={"lr": [1e-4]},
                                    steps=2, compile="inductor", world=world, progress=False)
    store = SimpleNamespace(find=lambda **k: {"config": {"selected": {"lr": 1e-4}}, "metrics": {}}, add=lambda *r: None)
    run_module.run_ablation("ga", [TASK], variants={"FM": {}}, model=None, tokenizer=None, steps=2, store=store,
                            grid={"lr": [1e-4]}, compile="inductor", world=world)
    train = SimpleNamespace(classnames=[f"c{i}" for i in range(10)])
    monkeypatch.setattr(run_module, "build_task", lambda *a, **k: TASK)
    run_module.run_forget_ratio(["ga"], ratios=[0.1], train=train, test=None, model=None, tokenizer=None,
                                templates=(), seeds=[0], steps=2, grid={"lr": [1e-4]}, store=None,
                                compile="inductor", world=world)
    assert [s["compile"] for s in specs] == ["inductor"] * 3
    assert passed == ["inductor"] * 3
    for spec_settings, name in zip(specs, ("benchmark", "ablation", "ratio")):  # what a worker calls
        RUN_FACTORIES[name](**spec_settings, model=None, tokenizer=None)(TASK, lr=1e-4)
    assert passed == ["inductor"] * 6
