"""The selection protocol as the drivers use it: the selection seed, the retrained reference beside every run,
the validation budget, the score's parts, per-class changes and the forget-ratio sweep."""

from __future__ import annotations

import math

import pytest
import torch

from clipunlearn import benchmark, experiment, harness, metrics, scores

from .test_experiment import tiny_world
from .test_mutation_kills_experiment import selected_runner


@pytest.fixture
def world():
    return tiny_world(seed=0), tiny_world(n_per_class=6, seed=1)


def seeded(world, seeds, target="bag", kind="forget-class"):
    train, test = world
    return [experiment.build_task(train, test, kind=kind, target=target, seed=s, eval_per_class=4) for s in seeds]


# --------------------------------------------------------------------------- #
# the protocol object
# --------------------------------------------------------------------------- #
def test_the_protocol_searches_on_a_seed_that_is_never_reported():
    sel = harness.PROTOCOL
    assert sel.seed == harness.SELECTION_SEED and isinstance(sel.extend, harness.GridExtension)
    assert sel.with_seeds([0, 1, 2]) == [harness.SELECTION_SEED, 0, 1, 2]
    with pytest.raises(ValueError, match=f"seed {sel.seed} is the selection seed.*got \\[0, {sel.seed}\\]"):
        sel.with_seeds([0, sel.seed])


def test_the_selection_task_is_found_by_seed_and_left_out_of_the_reported_ones(world):
    tasks = seeded(world, [0, harness.SELECTION_SEED, 1])
    sel = harness.Selection(seed=harness.SELECTION_SEED)
    assert harness.find_selection_task(tasks, sel) is tasks[1]
    assert harness.reported_tasks(tasks, sel) == [tasks[0], tasks[2]]
    assert harness.reported_tasks(tasks, None) == tasks and harness.find_selection_task(tasks, None) is None
    assert harness.is_search(tasks[1], sel) and not harness.is_search(tasks[0], sel)
    assert not harness.is_search(tasks[1], None)
    with pytest.raises(ValueError, match="no task of the selection seed 5 among seeds \\[0, 100, 1\\]"):
        harness.find_selection_task(tasks, harness.Selection(seed=5))


def test_run_selected_with_the_protocol_reports_only_the_other_seeds_and_finishes_each(world):
    tasks, calls, finished = seeded(world, harness.PROTOCOL.with_seeds([0, 1])), [], []
    sel = harness.Selection(seed=harness.SELECTION_SEED, extend=None)
    out = experiment.run_selected("x", tasks, run_fn=selected_runner(calls), grid={"lr": [1, 2]}, selection=sel,
                                  finish_fn=lambda model, rec, task: finished.append((model, task.seed)))
    assert calls == [(100, 1), (100, 2), (0, 2), (1, 2)]
    assert [r["config"]["seed"] for r in out if r["task"] != "selection"] == [0, 1]
    assert all(r["config"]["selected_on_seed"] == 100 for r in out if r["task"] != "selection")
    assert finished == [(("model", 0, 2), 0), (("model", 1, 2), 1)]  # reported runs only, with their models


def test_a_records_task_and_match_keep_a_variants_search_apart_on_resume(tmp_path, world):
    tasks, calls = seeded(world, harness.PROTOCOL.with_seeds([0])), []
    sel = harness.Selection(extend=None)
    store = experiment.ResultStore(tmp_path / "r.json")

    def runner(variant):
        inner = selected_runner(calls)

        def run_fn(task, lr):
            model, rec = inner(task, lr)
            rec["task"] = "ablation"
            rec["config"]["variant"] = variant
            return model, rec
        return run_fn

    for variant in ("A", "B"):
        experiment.run_selected("x", tasks, run_fn=runner(variant), grid={"lr": [1, 2]}, store=store, selection=sel,
                                record_task="ablation", match={"variant": variant})
    assert len(calls) == 6
    calls.clear()
    for variant in ("A", "B"):  # everything stored: nothing reruns, and A's records are not B's
        out = experiment.run_selected("x", tasks, run_fn=runner(variant), grid={"lr": [1, 2]}, store=store,
                                      selection=sel, record_task="ablation", match={"variant": variant})
        assert {r["config"]["variant"] for r in out} == {variant}
    assert calls == []
    runs = [r for r in store.records if r["task"] == "selection"]
    assert sorted((r["config"]["variant"], r["config"]["run_task"]) for r in runs) == [
        ("A", "ablation")] * 2 + [("B", "ablation")] * 2


# --------------------------------------------------------------------------- #
# run_method: the validation budget, the step edge, the temperature
# --------------------------------------------------------------------------- #
def test_run_method_validates_ten_times_and_times_validation_apart(tiny_clip, world):
    task = seeded(world, [0])[0]
    _, rec = harness.run_method("ga", task, model=tiny_clip.model, tokenizer=tiny_clip.tokenizer, lr=1e-4, steps=20)
    m = rec["metrics"]
    assert rec["config"]["eval_every"] == 2 and m["val_passes"] == len(rec["history"]) == 10
    assert [h["step"] for h in rec["history"]] == list(range(2, 21, 2))
    assert 0 < m["val_seconds"] < m["seconds"] and m["method_seconds"] == pytest.approx(m["seconds"] - m["val_seconds"])
    steps = [h["step"] for h in rec["history"]]
    expected = "first" if m["best_step"] == steps[0] else "last" if m["best_step"] == steps[-1] else "interior"
    assert m["best_step_edge"] == expected
    assert rec["config"]["logit_scale"] == "clamped"
    _, skipped = harness.run_method("ga", task, model=tiny_clip.model, tokenizer=tiny_clip.tokenizer, lr=1e-4,
                                    steps=4, evaluate=False)
    assert "forget_acc" not in skipped["metrics"] and skipped["metrics"]["val_passes"] == 4


# --------------------------------------------------------------------------- #
# the retrained reference
# --------------------------------------------------------------------------- #
def test_compare_to_reference_is_the_average_gap_and_the_js_of_the_outputs(tiny_clip, tiny_resnet_clip, world):
    task = seeded(world, [0])[0]
    ref_metrics = harness.evaluate_model(tiny_resnet_clip.model, task, tokenizer=tiny_clip.tokenizer)
    ref = harness.Reference(model=tiny_resnet_clip.model, record={"metrics": ref_metrics})
    run = harness.evaluate_model(tiny_clip.model, task, tokenizer=tiny_clip.tokenizer)
    got = harness.compare_to_reference(tiny_clip.model, task, run, ref, tokenizer=tiny_clip.tokenizer)
    keys = [k for k in scores.GAP_METRICS if k in run and k in ref_metrics]
    assert keys == ["forget_acc", "retain_acc", "other_acc", "other_forget_acc"]
    assert got["gap_retrain"] == pytest.approx(sum(abs(run[k] - ref_metrics[k]) for k in keys) / len(keys))
    # the JS divergence, row by row, from the two models' softmax outputs on the forget test images
    idx = task.eval_sets["forget"]

    def probs(m):
        clf = metrics.build_classifier(m, tiny_clip.tokenizer, task.classnames, task.templates)
        return metrics.predict_logits(m, clf, task.test, indices=idx)[0].softmax(1).double()

    p, q = probs(tiny_clip.model), probs(tiny_resnet_clip.model)
    js = []
    for a, b in zip(p, q):
        mid = (a + b) / 2
        js.append(0.5 * sum(float(x * math.log2(x / y)) for x, y in zip(a, mid) if x > 0)
                  + 0.5 * sum(float(x * math.log2(x / y)) for x, y in zip(b, mid) if x > 0))
    assert got["js_retrain"] == pytest.approx(sum(js) / len(js), abs=1e-6)
    assert len(ref.probs) == 1  # the reference's outputs are computed once per task
    same = harness.compare_to_reference(tiny_resnet_clip.model, task, ref_metrics, ref, tokenizer=tiny_clip.tokenizer)
    assert same == {"gap_retrain": 0.0, "js_retrain": pytest.approx(0.0, abs=1e-9)}


def test_reference_fn_finishes_only_evaluated_runs_of_a_target_it_has(tiny_clip, world):
    task = seeded(world, [0])[0]
    ref = harness.Reference(model=tiny_clip.model, record={"metrics": {"forget_acc": 0.0, "retain_acc": 1.0}})
    assert harness.reference_fn(None, tokenizer=tiny_clip.tokenizer) is None
    finish = harness.reference_fn({"bag": ref}, tokenizer=tiny_clip.tokenizer)
    rec = {"metrics": {"forget_acc": 0.5, "retain_acc": 0.5}}
    finish(tiny_clip.model, rec, task)
    assert rec["metrics"]["gap_retrain"] == pytest.approx(0.5) and "js_retrain" in rec["metrics"]
    for untouched in ({"metrics": {"failed": True}}, {"metrics": {"val_forget_acc": 0.1}}):
        finish(tiny_clip.model, untouched, task)
        assert "gap_retrain" not in untouched["metrics"]
    other = seeded(world, [0], target="coat")[0]
    rec = {"metrics": {"forget_acc": 0.5}}
    finish(tiny_clip.model, rec, other)
    assert "gap_retrain" not in rec["metrics"]


def test_the_benchmark_driver_stores_the_reference_and_the_gap_on_every_reported_run(tiny_clip, tiny_resnet_clip,
                                                                                   world, tmp_path):
    tasks = {"bag": seeded(world, harness.PROTOCOL.with_seeds([0]))}
    ref_metrics = harness.evaluate_model(tiny_resnet_clip.model, tasks["bag"][1], tokenizer=tiny_clip.tokenizer)
    ref = harness.Reference(model=tiny_resnet_clip.model, record=harness.summarise_run(
        tasks["bag"][1], method="retrain", config={"seed": None}, test_metrics=ref_metrics))
    store = experiment.ResultStore(tmp_path / "r.json")
    sel = harness.Selection(extend=None)
    experiment.run_forget_benchmark(["ga"], tasks, model=tiny_clip.model, tokenizer=tiny_clip.tokenizer,
                                    grid={"lr": [1e-4]}, steps=2, store=store, selection=sel,
                                    references={"bag": ref}, progress=False)
    by = {(r["method"], r["task"], r["config"].get("seed")): r for r in store.records}
    assert set(by) == {("original", "forget-class", None), ("retrain", "forget-class", None),
                       ("ga", "selection", 100), ("ga", "forget-class", 0)}
    assert by[("retrain", "forget-class", None)]["metrics"]["gap_retrain"] == 0.0
    assert by[("original", "forget-class", None)]["metrics"]["gap_retrain"] > 0
    ga = by[("ga", "forget-class", 0)]
    assert ga["metrics"]["gap_retrain"] == pytest.approx(scores.gap_to_retrain(ga["metrics"], ref_metrics))
    assert "forget_acc" not in by[("ga", "selection", 100)]["metrics"] or \
        by[("ga", "selection", 100)]["metrics"]["forget_acc"] is None  # the search is not tested


# --------------------------------------------------------------------------- #
# the score's parts, the summary, per-class changes
# --------------------------------------------------------------------------- #
def test_score_components_by_hand():
    original = {"forget_acc": 0.8, "sibling_acc": 0.5, "retain_acc": 0.9, "other_acc": 0.6, "other_forget_acc": 0.4}
    run = {"forget_acc": 0.2, "sibling_acc": 0.6, "retain_acc": 0.45, "other_acc": 0.6, "other_forget_acc": 0.1}
    got = scores.score_components(run, original)
    # F = 1 - 0.2/0.8; ratios 1.2, 0.5, 1.0, 0.25 (capped: 1, 0.5, 1, 0.25)
    assert got == pytest.approx({"score_forgetting": 0.75, "score_retention": 2.75 / 4,
                                 "score_retention_uncapped": 2.95 / 4})
    f, r = 0.75, 2.75 / 4
    assert scores.unlearning_score(run, original) == pytest.approx(2 * f * r / (f + r))
    assert "other_forget_acc" in scores.SCORE_RETAINED
    assert scores.score_components({"retain_acc": 0.5}, original) is None


def test_summary_table_puts_the_retrained_model_second_with_the_gap():
    def rec(method, seed, forget, gap):
        return {"method": method, "task": "forget-class", "config": {"forget_class": "bag", "seed": seed},
                "metrics": {"forget_acc": forget, "retain_acc": 0.9, "unlearning_score": 0.5, "gap_retrain": gap}}
    records = [rec("ga", 0, 0.1, 0.2), rec("ga", 1, 0.3, 0.4), rec("retrain", None, 0.0, 0.0),
               rec("original", None, 0.9, 0.3)]
    table = benchmark.summary_table(records, tasks=["forget-class"], methods=["ga"], numeric=True)
    assert list(table.index) == ["original", "retrain", "ga"]
    assert table.loc["ga", ("forget-class", "gap")] == pytest.approx(0.3)
    assert table.loc["retrain", ("forget-class", "gap")] == 0.0


def test_per_class_change_is_each_classs_mean_change_against_the_original():
    def rec(method, seed, acc):
        return {"method": method, "task": "forget-class", "config": {"forget_class": "bag", "seed": seed},
                "metrics": {"per_class_acc": acc}}
    records = [rec("original", None, {"bag": 0.9, "coat": 0.5}), rec("ga", 0, {"bag": 0.1, "coat": 0.7}),
               rec("ga", 1, {"bag": 0.0, "coat": 0.6}),
               {**rec("ga", 2, {"bag": 0.9, "coat": 0.0}), "metrics": {"per_class_acc": {"bag": 0.9}, "failed": True}}]
    table = benchmark.per_class_change(records, task="forget-class", target="bag")
    assert table.loc["original"].tolist() == [0.9, 0.5]
    assert table.loc["ga"].tolist() == pytest.approx([-0.85, 0.15])
    with pytest.raises(ValueError, match="no original record"):
        benchmark.per_class_change(records[1:], task="forget-class", target="bag")


# --------------------------------------------------------------------------- #
# the MIA family in the one evaluation
# --------------------------------------------------------------------------- #
def test_evaluate_model_reports_the_mia_family(tiny_clip, world):
    task = seeded(world, [0])[0]
    m = harness.evaluate_model(tiny_clip.model, task, tokenizer=tiny_clip.tokenizer)
    n_members, n_test = len(task.member_idx), len(task.eval_sets["forget"])
    assert m["mia_advantage"] == pytest.approx(abs(m["mia"] - 0.5))
    assert m["mia_se"] == pytest.approx(scores.auc_standard_error(m["mia"], n_members, n_test))
    clf = metrics.build_classifier(tiny_clip.model, tiny_clip.tokenizer, task.classnames, task.templates)
    fit = task.retain_train[torch.randperm(len(task.retain_train), generator=torch.Generator().manual_seed(0))
                            [:harness.MIA_FIT_IMAGES]]

    def entropy(ds, idx):
        return metrics.prediction_entropy(metrics.predict_logits(tiny_clip.model, clf, ds, indices=idx)[0])

    expected = metrics.mia_efficacy(entropy(task.train, fit), entropy(task.test, task.eval_sets["retain"]),
                                    entropy(task.train, task.member_idx))
    assert m["mia_efficacy"] == expected


# --------------------------------------------------------------------------- #
# the forget-ratio sweep
# --------------------------------------------------------------------------- #
def test_the_forget_ratio_sweep_scales_steps_draws_classes_per_seed_and_selects_per_ratio(monkeypatch, world,
                                                                                        tmp_path):
    train, test = world
    calls = []

    def fake_run_method(method, task, *, lr, steps, config, evaluate, **kw):
        calls.append((method, task.seed, task.target, lr, steps, evaluate))
        m = {"score": -abs(math.log10(lr) + 4) - 0.01 * steps, "val_forget_acc": 0.0, "val_retain_acc": 1.0,
             "failed": False, **({"forget_acc": 0.0, "retain_acc": 1.0} if evaluate else {})}
        return "model", {"method": method, "task": task.kind, "config": {"forget_class": task.target,
                                                                         "seed": task.seed, "lr": lr, **config},
                         "metrics": m}

    monkeypatch.setattr(harness.run, "run_method", fake_run_method)
    store = experiment.ResultStore(tmp_path / "r.json")
    out = experiment.run_forget_ratio(["ga"], ratios=[0.1, 0.2], train=train, test=test, model=None, tokenizer=None,
                                      templates=("a photo of a {}.",), seeds=[0, 1], steps=5, grid={"lr": [1e-4]},
                                      store=store, selection=harness.PROTOCOL, task_kwargs={"eval_per_class": 4})
    assert [(r["config"]["forget_ratio"], r["config"]["seed"]) for r in out] == [(0.1, 0), (0.1, 1), (0.2, 0),
                                                                                   (0.2, 1)]
    for r in out:
        k = round(r["config"]["forget_ratio"] * 10)
        order = experiment.pick_classes(train.classnames, seed=r["config"]["seed"])
        assert r["config"]["forget_classes"] == order[:k] and r["config"]["forget_class"] == ",".join(order[:k])
        assert r["config"]["selected_on_seed"] == harness.SELECTION_SEED and r["task"] == "forget-ratio"
    # steps per forgotten class; the search (seed 100) untested; the grid extended from 1e-4 both ways
    assert {(c[4], c[2].count(",") + 1) for c in calls} == {(5, 1), (10, 2)}
    assert all(not c[5] for c in calls if c[1] == 100) and all(c[5] for c in calls if c[1] != 100)
    assert [c[3] for c in calls if c[1] == 100 and c[4] == 5] == [1e-4, 3.16e-5, 3.16e-4]


def test_every_ablation_variant_is_searched_like_the_full_method(monkeypatch, world, tmp_path):
    tasks = seeded(world, harness.PROTOCOL.with_seeds([0, 1]))
    calls = []

    def fake_run_method(method, task, *, lr, loss_kwargs, config, evaluate, **kw):
        calls.append((config["variant"], task.seed, lr, evaluate))
        best = {"FM": 1e-4, "FM+RM": 3.16e-4}[config["variant"]]  # each variant has its own optimum
        m = {"score": -abs(math.log10(lr / best)), "val_forget_acc": 0.0, "val_retain_acc": 1.0, "failed": False,
             **({"forget_acc": 0.0, "retain_acc": 1.0} if evaluate else {})}
        return "model", {"method": method, "task": task.kind, "config": {"forget_class": task.target,
                                                                         "seed": task.seed, "lr": lr, **config},
                         "metrics": m}

    monkeypatch.setattr(harness.run, "run_method", fake_run_method)
    store = experiment.ResultStore(tmp_path / "r.json")
    for seed in (None, 0, 1):  # the original and the full method's results, which the ablation table reuses
        store.add({"method": "original" if seed is None else "cliperase", "task": "forget-class",
                   "config": {"forget_class": "bag", "seed": seed, "selected": {"lr": 1e-4}},
                   "metrics": {"forget_acc": 0.5}})
    variants = {"FM": {"lambda1": 0.0}, "FM+RM": {"lambda1": 1.0}}
    out = experiment.run_ablation("cliperase", tasks, variants=variants, model=None, tokenizer=None, steps=3,
                                  store=store, grid={"lr": [1e-4, 3.16e-4]}, selection=harness.PROTOCOL)
    chosen = {(r["config"]["variant"], r["config"]["seed"]): r["config"].get("selected") for r in out}
    assert chosen[("FM", 0)] == chosen[("FM", 1)] == {"lr": 1e-4}
    assert chosen[("FM+RM", 0)] == chosen[("FM+RM", 1)] == {"lr": 3.16e-4}
    assert {(v, s) for v, s, _, e in calls if not e} == {("FM", 100), ("FM+RM", 100)}  # searched, not tested
    assert [r["config"]["variant"] for r in out][:3] == ["none", "full", "full"]
    # without a grid every variant takes the full method's learning rate
    calls.clear()
    store2 = experiment.ResultStore(tmp_path / "r2.json")
    store2.add(*[r for r in store.records if r["task"] == "forget-class"])
    experiment.run_ablation("cliperase", tasks, variants=variants, model=None, tokenizer=None, steps=3, store=store2,
                            selection=harness.PROTOCOL)
    assert {lr for _, _, lr, _ in calls} == {1e-4} and {s for _, s, _, _ in calls} == {0, 1}


def test_protocol_for_picks_the_quick_protocol_and_refuses_the_selection_seed():
    assert harness.protocol_for([0, 1, 2]) is harness.PROTOCOL
    assert harness.protocol_for([0], quick=True) is harness.QUICK_PROTOCOL and harness.QUICK_PROTOCOL.extend is None
    with pytest.raises(ValueError, match=f"seed {harness.SELECTION_SEED} is the selection seed"):
        harness.protocol_for([harness.SELECTION_SEED], quick=True)
