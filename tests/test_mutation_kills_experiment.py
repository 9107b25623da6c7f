"""Tasks and selection: checks written for the mutants that survived the other tests (benchmarks/mutation.md).

Expected values are worked out by hand in each test; ``validate_model`` is checked with a fake
accuracy that tells every (dataset, index set) apart, so the test sees which images it scores.
"""

import re

import pytest
import torch

from clipunlearn import data, experiment, metrics

from .test_experiment import tiny_world


@pytest.fixture
def world():
    return tiny_world(seed=0), tiny_world(n_per_class=6, seed=1)


def fake_accuracies(monkeypatch, table):
    """Replace metrics.accuracy (and the classifier) by a lookup ``{(dataset id, indices): value}``."""
    def accuracy(model, clf, dataset, *, indices=None, device="cpu", **kwargs):
        assert isinstance(model, torch.nn.Linear) and clf == "classifier"  # the model under validation
        key = (id(dataset), None if indices is None else tuple(torch.as_tensor(indices).tolist()))
        return table.get(key, 0.999)

    monkeypatch.setattr(metrics, "accuracy", accuracy)
    monkeypatch.setattr(metrics, "build_classifier", lambda *a, **k: "classifier")


def test_validate_model_scores_the_validation_sets_and_averages_the_siblings(monkeypatch, world):
    train, test = world
    task = experiment.build_task(train, test, kind="forget-subgroup", target="sandal", seed=0)
    ids = lambda idx: tuple(idx.tolist())
    fake_accuracies(monkeypatch, {(id(task.train), ids(task.forget_val)): 0.1,
                                  (id(task.train), ids(task.retain_val)): 0.8,
                                  (id(task.train), ids(task.val_sibling)): 0.4})
    out = experiment.validate_model(torch.nn.Linear(1, 1), task, tokenizer=None)
    # retain side of a subgroup task: (retain + sibling) / 2 = (0.8 + 0.4) / 2 = 0.6; score 0.6 - 0.1
    assert out == {"val_forget_acc": 0.1, "val_sibling_acc": 0.4, "val_retain_acc": pytest.approx(0.6),
                   "score": pytest.approx(0.5)}


def test_validate_model_on_given_forget_data_and_without_siblings(monkeypatch, world):
    train, test = world
    task = experiment.build_task(train, test, kind="forget-class", target="bag", seed=0)
    other = object()
    fake_accuracies(monkeypatch, {(id(other), (3, 4)): 0.25, (id(task.train), tuple(task.retain_val.tolist())): 0.75,
                                  (id(task.train), tuple(task.forget_val.tolist())): 0.5})
    out = experiment.validate_model(torch.nn.Linear(1, 1), task, tokenizer=None, forget_data=(other, [3, 4]))
    assert out == {"val_forget_acc": 0.25, "val_retain_acc": 0.75, "score": 0.5}
    assert experiment.validate_model(torch.nn.Linear(1, 1), task, tokenizer=None)["val_forget_acc"] == 0.5


def run(metrics_by_lr):
    def run_fn(lr):
        return ("model", lr), {"method": "x", "task": "t", "config": {"lr": lr}, "metrics": dict(metrics_by_lr[lr])}
    return run_fn


def test_run_grid_ties_after_rounding_go_to_the_first_candidate():
    # 0.5 and 0.50004 are equal at 4 decimals: the first (smaller lr) wins; so does an exact tie
    _, best, _ = experiment.run_grid(run({1: {"score": 0.5}, 2: {"score": 0.50004}}), grid={"lr": [1, 2]})
    assert best["config"]["selected"] == {"lr": 1}
    _, best, _ = experiment.run_grid(run({1: {"score": 0.7}, 2: {"score": 0.7}}), grid={"lr": [1, 2]})
    assert best["config"]["selected"] == {"lr": 1}


def test_run_grid_ranks_a_run_without_a_score_last_and_reports_each_row():
    runs = {1: {"val_forget_acc": 0.1, "val_retain_acc": 0.9},  # no score: ranks last
            2: {"score": 0.2, "val_forget_acc": 0.3, "val_retain_acc": 0.5, "failed": False}}
    seen = []
    _, best, rows = experiment.run_grid(run(runs), grid={"lr": [1, 2]},
                                        oracle_fn=lambda m: seen.append(m) or {"acc": m[1] / 10})
    assert best["config"]["selected"] == {"lr": 2}
    assert seen == [("model", 1), ("model", 2)]
    assert [(r["lr"], r["score"], r["val_forget_acc"], r["val_retain_acc"], r["failed"], r["oracle"])
            for r in rows] == [(1, float("-inf"), 0.1, 0.9, False, {"acc": 0.1}), (2, 0.2, 0.3, 0.5, False, {"acc": 0.2})]


def test_calibration_split_is_a_seeded_draw_in_the_given_order_when_uncapped(world):
    train, test = world
    task = experiment.build_task(train, test, kind="forget-subgroup", target="sandal", seed=3)
    a = experiment.calibration_split(task, per_class=2)
    b = experiment.calibration_split(task, per_class=2)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same draw twice (the task's seed, 3)
    assert any(not torch.equal(a[k], experiment.calibration_split(task, per_class=2, seed=4)[k]) for k in a)
    assert all(torch.equal(a[k], experiment.calibration_split(task, per_class=2, seed=3)[k]) for k in a)
    uncapped = experiment.calibration_split(task, per_class=None)
    assert torch.equal(uncapped["forget"], task.forget_val) and torch.equal(uncapped["retain"], task.retain_val)


# --------------------------------------------------------------------------- #
# run_selected: the records it writes, the oracle it reports and what it resumes
# --------------------------------------------------------------------------- #
def selected_runner(calls):
    """A run_fn whose metrics are worked out from (seed, lr); lr 2 wins the selection."""
    def run_fn(task, lr):
        calls.append((task.seed, lr))
        m = {"score": {1: 0.1, 2: 0.7}[lr], "val_forget_acc": 0.1 * lr, "val_retain_acc": 0.8, "failed": False,
             "forget_acc": 0.01 * lr + task.seed, "retain_acc": 0.5 + lr / 10, "best_step": 3 * lr}
        return ("model", task.seed, lr), {"method": "x", "task": task.kind,
                                          "config": {"forget_class": task.target, "seed": task.seed, "lr": lr},
                                          "metrics": m}
    return run_fn


def three_seeds(world):
    train, test = world
    return [experiment.build_task(train, test, target="bag", seed=s, eval_per_class=2) for s in (0, 1, 2)]


def test_run_selected_writes_grid_choice_and_origin_into_every_record(world):
    tasks, calls, seen = three_seeds(world), [], []
    oracle = lambda model, task: seen.append((model, task.seed)) or {"acc": model[2] / 4, "gap": -1.0}
    out = experiment.run_selected("x", tasks, run_fn=selected_runner(calls), grid={"lr": [1, 2]}, oracle_fn=oracle)
    results, selection = out[:3], out[3:]
    assert seen == [(("model", 0, 1), 0), (("model", 0, 2), 0)]  # the oracle sees each candidate on the first seed
    assert [r["config"]["seed"] for r in results] == [0, 1, 2]
    assert results[0]["config"]["grid"] == {"lr": [1, 2]} and results[0]["config"]["selected"] == {"lr": 2}
    assert "selected_on_seed" not in results[0]["config"]  # the selection seed's own run
    for r in results[1:]:
        assert r["config"]["grid"] == {"lr": [1, 2]} and r["config"]["selected"] == {"lr": 2}
        assert r["config"]["selected_on_seed"] == 0
    assert [(s["task"], s["config"]["lr"], s["config"]["selected"], s["config"]["run_task"], s["config"]["grid"])
            for s in selection] == [("selection", 1, False, "forget-class", None),
                                    ("selection", 2, True, "forget-class", None)]
    # selection metrics: the grid row, the oracle's values prefixed, and three metrics of the run's record
    assert selection[0]["metrics"] == {"score": 0.1, "val_forget_acc": 0.1, "val_retain_acc": 0.8, "failed": False,
                                       "oracle_acc": 0.25, "oracle_gap": -1.0, "forget_acc": 0.01,
                                       "retain_acc": 0.6, "best_step": 3}
    assert selection[1]["metrics"]["oracle_acc"] == 0.5 and selection[1]["metrics"]["best_step"] == 6
    no_oracle = experiment.run_selected("x", tasks, run_fn=selected_runner([]), grid={"lr": [1, 2]})
    assert not any(k.startswith("oracle_") for s in no_oracle[3:] for k in s["metrics"])


def test_run_selected_resumes_each_missing_piece_with_the_stored_choice(tmp_path, world):
    tasks, calls = three_seeds(world), []
    path = tmp_path / "r.json"
    store = experiment.ResultStore(path, match={"profile": "mini"})
    first = experiment.run_selected("x", tasks, run_fn=selected_runner(calls), grid={"lr": [1, 2]}, store=store)
    assert calls == [(0, 1), (0, 2), (1, 2), (2, 2)]

    def resume(drop):
        resumed = experiment.ResultStore(path, match={"profile": "mini"}, resume=True)
        resumed.records = [r for r in resumed.records if not drop(r)]
        calls.clear()
        return experiment.run_selected("x", tasks, run_fn=selected_runner(calls), grid={"lr": [1, 2]},
                                       store=resumed)

    # seed 1's record lost: only seed 1 runs again, with the stored choice, and keeps its origin
    out = resume(lambda r: r["task"] == "forget-class" and r["config"]["seed"] == 1)
    assert calls == [(1, 2)]
    assert out[1]["config"]["selected_on_seed"] == 0 and out[1]["config"]["grid"] == {"lr": [1, 2]}
    # the selection records lost (the result of seed 0 kept): the grid runs again on seed 0 only
    out = resume(lambda r: r["task"] == "selection")
    assert calls == [(0, 1), (0, 2)]
    # seed 0's result lost (selection records kept): the grid runs again too
    resume(lambda r: r["task"] == "forget-class" and r["config"]["seed"] == 0)
    assert calls == [(0, 1), (0, 2)]
    # everything stored: nothing runs; records of another method, target, seed or run task do not count
    resume(lambda r: False)
    assert calls == []
    other = experiment.ResultStore(path, match={"profile": "mini"}, resume=True)
    for r in other.records:
        r["method"] = "y"
    calls.clear()
    experiment.run_selected("x", tasks, run_fn=selected_runner(calls), grid={"lr": [1, 2]}, store=other)
    assert calls == [(0, 1), (0, 2), (1, 2), (2, 2)]
    for key, value in (("forget_class", "coat"), ("seed", 7), ("run_task", "forget-subgroup")):
        moved = experiment.ResultStore(path, match={"profile": "mini"}, resume=True)
        for r in moved.records:
            if key != "run_task" or r["task"] == "selection":
                r["config"][key] = value
        calls.clear()
        experiment.run_selected("x", tasks, run_fn=selected_runner(calls), grid={"lr": [1, 2]}, store=moved)
        assert calls[:2] == [(0, 1), (0, 2)], key
    assert [r["config"]["seed"] for r in first[:3]] == [0, 1, 2]


# --------------------------------------------------------------------------- #
# build_task: its defaults, its seeded draws and its error messages
# --------------------------------------------------------------------------- #
def big_world(n_per_class, seed=0):
    """Like tiny_world but with 2 px images, so that the default caps (100, 300) bite."""
    g = torch.Generator().manual_seed(seed)
    n = n_per_class * len(data.FASHION_MNIST_CLASSES)
    labels = torch.arange(n) % len(data.FASHION_MNIST_CLASSES)
    raw = torch.randint(0, 256, (n, 2, 2), generator=g, dtype=torch.uint8)
    k = len(data.STYLES)
    return data.StyledImages(raw.repeat(k, 1, 1), labels.repeat(k), torch.arange(k).repeat_interleave(n),
                             torch.arange(n).repeat(k), classnames=data.FASHION_MNIST_CLASSES, stylenames=data.STYLES)


def per_class_counts(ds, idx):
    return torch.bincount(ds.targets[idx], minlength=len(ds.classnames)).tolist()


def test_build_task_default_caps_and_fixed_draws():
    train, test = big_world(1200), big_world(350, seed=1)
    task = experiment.build_task(train, test, target="bag", seed=4)
    bag = data.FASHION_MNIST_CLASSES.index("bag")
    # defaults: val_fraction 0.1 (120 of 1200 photos), val_per_class 100, retain_per_class 300,
    # eval_per_class 300, members_limit 300, forget pairs uncapped (1080)
    assert len(task.forget_val) == 100 and len(task.forget_train) == 1080
    assert per_class_counts(train, task.retain_train) == [0 if c == bag else 300 for c in range(10)]
    assert per_class_counts(train, task.retain_val) == [0 if c == bag else 100 for c in range(10)]
    assert per_class_counts(test, task.eval_sets["forget"])[bag] == 300
    assert len(task.member_idx) == 300
    assert task.templates == tuple(data.FASHION_MNIST_TEMPLATES)
    # test subsets: one draw (select_indices' seed 0) whatever the task's seed
    for s in (0, 4):
        again = experiment.build_task(train, test, target="bag", seed=s)
        assert torch.equal(again.eval_sets["forget"],
                           data.select_indices(test, classes=[bag], styles=[0], limit_per_class=300, seed=0))
        assert torch.equal(again.eval_sets["retain"],
                           data.select_indices(test, exclude_classes=[bag], styles=[0], limit_per_class=300, seed=0))
        # MIA members: a fixed draw (seed 0) of the seed's forget training photos, never a validation photo
        pool = again.forget_train  # uncapped here: every forget training photo
        expected = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:300]].sort().values
        assert torch.equal(again.member_idx, expected)
        assert not set(again.member_idx.tolist()) & set(again.forget_val.tolist())


def test_forget_limit_is_a_sorted_draw_that_depends_on_the_seed_only(world):
    train, test = world
    full = experiment.build_task(train, test, target="bag", seed=2)
    a = experiment.build_task(train, test, target="bag", seed=2, forget_limit=4)
    b = experiment.build_task(train, test, target="bag", seed=2, forget_limit=4)
    others = [experiment.build_task(train, test, target="bag", seed=2 + k, forget_limit=4).forget_train
              for k in (1, 2, 3)]
    assert torch.equal(a.forget_train, b.forget_train) and len(a.forget_train) == 4
    assert set(a.forget_train.tolist()) <= set(full.forget_train.tolist())
    assert torch.equal(a.forget_train, a.forget_train.sort().values)
    expected = full.forget_train[torch.randperm(len(full.forget_train),
                                                generator=torch.Generator().manual_seed(2))[:4]].sort().values
    assert torch.equal(a.forget_train, expected)
    assert any(not torch.equal(o[:4], a.forget_train) for o in others)  # another seed, another draw


@pytest.mark.parametrize("kind, target, message", [
    ("forget-everything", "bag",
     "unknown task kind 'forget-everything'; valid: forget-class, forget-subgroup, forget-style-subgroup"),
    ("forget-style-subgroup", "sneaker", "a style subgroup is 'style:class' (e.g. 'sketch:sneaker'), got 'sneaker'"),
    ("forget-style-subgroup", "oil:sneaker", "unknown style 'oil'; valid: photo, sketch, negative"),
    ("forget-subgroup", "sandal,sneaker", "a subgroup task forgets one fine class; give one name"),
])
def test_build_task_errors_say_what_is_valid(world, kind, target, message):
    train, test = world
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        experiment.build_task(train, test, kind=kind, target=target, seed=0)


def test_a_subgroup_without_siblings_lists_the_classes_that_have_some(world):
    train, test = world
    hierarchy = {"shoes": ("sandal", "sneaker"), "alone": ("bag",), "tops": ("shirt", "t-shirt", "pullover")}
    with pytest.raises(ValueError, match="^" + re.escape("'bag' has no sibling classes in its group 'alone'; pick one "
                                                         "of sandal, sneaker, shirt, t-shirt, pullover") + "$"):
        experiment.build_task(train, test, kind="forget-subgroup", target="bag", seed=0, hierarchy=hierarchy)


def test_task_sizes_counts_every_split(world):
    train, test = world
    task = experiment.build_task(train, test, kind="forget-subgroup", target="sandal", seed=0)
    sizes = task.sizes()
    expected = {k: len(getattr(task, k)) for k in ("forget_train", "retain_train", "forget_val", "retain_val",
                                                   "member_idx", "val_sibling")}
    expected.update({f"test_{k}": len(v) for k, v in task.eval_sets.items()})
    assert sizes == expected and "test_sibling" in sizes and sizes["val_sibling"] > 0
    plain = experiment.build_task(train, test, kind="forget-class", target="sneaker", seed=0).sizes()
    assert "val_sibling" not in plain and plain["forget_train"] > 0


def test_pick_classes_is_a_seeded_permutation():
    names = [f"c{i}" for i in range(7)]
    order = torch.randperm(7, generator=torch.Generator().manual_seed(3)).tolist()
    assert experiment.pick_classes(names, seed=3) == [names[i] for i in order]
    assert sorted(experiment.pick_classes(names)) == names
    assert experiment.pick_classes(names) == [names[i] for i in
                                              torch.randperm(7, generator=torch.Generator().manual_seed(0)).tolist()]
    assert experiment.pick_classes(names, seed=3) != experiment.pick_classes(names, seed=0)


def test_run_grid_reports_a_failed_run_as_failed():
    _, _, rows = experiment.run_grid(run({1: {"score": 0.5, "failed": True}, 2: {"score": 0.2}}), grid={"lr": [1, 2]})
    assert [r["failed"] for r in rows] == [True, False]


@pytest.mark.parametrize("part,key,value", [  # the seed and run_task of every record: the resume test above
    ("results", "forget_class", "coat"), ("later_results", "forget_class", "coat"),
    ("selection", "forget_class", "coat"), ("selection", "seed", 7)])
def test_run_selected_treats_a_record_of_another_target_seed_or_run_task_as_missing(tmp_path, world, part, key,
                                                                                    value):
    """A stored record that differs in one key is not this run's: resuming does what it does without that record."""
    tasks, path = three_seeds(world), tmp_path / "r.json"
    experiment.run_selected("x", tasks, run_fn=selected_runner([]), grid={"lr": [1, 2]},
                            store=experiment.ResultStore(path, match={"profile": "mini"}))
    chosen = {"results": lambda r: r["task"] == "forget-class",
              "later_results": lambda r: r["task"] == "forget-class" and r["config"]["seed"] > 0,
              "selection": lambda r: r["task"] == "selection"}[part]

    def resume(change):
        store = experiment.ResultStore(path, match={"profile": "mini"}, resume=True)
        store.records = change(store.records)
        calls = []
        experiment.run_selected("x", tasks, run_fn=selected_runner(calls), grid={"lr": [1, 2]}, store=store)
        return calls

    def moved(records):
        for r in records:
            if chosen(r):
                r["config"][key] = value
        return records

    deleted = resume(lambda records: [r for r in records if not chosen(r)])
    assert deleted and resume(moved) == deleted


def test_build_task_default_seed_is_zero(world):
    train, test = world
    default = experiment.build_task(train, test, target="bag")
    zero = experiment.build_task(train, test, target="bag", seed=0)
    one = experiment.build_task(train, test, target="bag", seed=1)
    assert default.seed == 0 and torch.equal(default.forget_val, zero.forget_val)
    assert torch.equal(default.retain_train, zero.retain_train) and not torch.equal(default.retain_val, one.retain_val)


def test_calibration_split_takes_30_per_class_by_default():
    train, test = big_world(400), big_world(4, seed=1)
    task = experiment.build_task(train, test, kind="forget-subgroup", target="sandal", seed=0, eval_per_class=2)
    split = experiment.calibration_split(task)
    assert per_class_counts(task.train, split["forget"])[data.FASHION_MNIST_CLASSES.index("sandal")] == 30
    assert max(per_class_counts(task.train, split["retain"])) == 30
    assert all(torch.equal(split[k], experiment.calibration_split(task, per_class=30)[k]) for k in split)
