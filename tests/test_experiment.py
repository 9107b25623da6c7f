"""The shared experiment harness: tasks, the one evaluation, the selection protocol, result stores."""

import math

import pytest
import torch

from clipunlearn import data, experiment
from clipunlearn.results import load_records


def tiny_world(n_per_class=12, seed=0):
    """A Fashion-MNIST-like StyledImages set: 10 classes x 3 styles of random 32 px images."""
    g = torch.Generator().manual_seed(seed)
    n = n_per_class * len(data.FASHION_MNIST_CLASSES)
    raw = torch.randint(0, 256, (n, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % len(data.FASHION_MNIST_CLASSES)
    styles = len(data.STYLES)
    return data.StyledImages(raw.repeat(styles, 1, 1), labels.repeat(styles),
                             torch.arange(styles).repeat_interleave(n), torch.arange(n).repeat(styles),
                             classnames=data.FASHION_MNIST_CLASSES, stylenames=data.STYLES)


@pytest.fixture
def world():
    return tiny_world(seed=0), tiny_world(n_per_class=6, seed=1)


def classes_of(ds, idx):
    return set(ds.targets[idx].tolist())


def styles_of(ds, idx):
    return set(ds.styles[idx].tolist())


def test_class_task_splits(world):
    train, test = world
    task = experiment.build_task(train, test, kind="forget-class", target="sneaker", seed=0, retain_per_class=5,
                                 eval_per_class=4, val_per_class=2)
    sneaker = data.FASHION_MNIST_CLASSES.index("sneaker")
    assert classes_of(train, task.forget_train) == {sneaker} and styles_of(train, task.forget_train) == {0}
    assert sneaker not in classes_of(train, task.retain_train)
    assert not set(task.forget_train.tolist()) & set(task.forget_val.tolist())
    assert not set(task.retain_train.tolist()) & set(task.retain_val.tolist())
    assert torch.bincount(train.targets[task.retain_train]).max() <= 5
    ev = task.eval_sets
    assert classes_of(test, ev["forget"]) == {sneaker} and styles_of(test, ev["forget"]) == {0}
    assert sneaker not in classes_of(test, ev["retain"]) and styles_of(test, ev["other"]) == {1, 2}
    assert classes_of(test, ev["other_forget"]) == {sneaker}
    # test subsets do not depend on the seed; the training split does
    other = experiment.build_task(train, test, kind="forget-class", target="sneaker", seed=1, retain_per_class=5,
                                  eval_per_class=4, val_per_class=2)
    assert all(torch.equal(ev[k], other.eval_sets[k]) for k in ev)
    assert not torch.equal(task.forget_val, other.forget_val)


def test_subgroup_tasks(world):
    train, test = world
    task = experiment.build_task(train, test, kind="forget-subgroup", target="sandal", seed=0)
    names = data.FASHION_MNIST_CLASSES
    siblings = {names.index("sneaker"), names.index("ankle boot")}
    assert classes_of(test, task.eval_sets["sibling"]) == siblings
    assert not classes_of(test, task.eval_sets["retain"]) & (siblings | {names.index("sandal")})
    assert classes_of(train, task.val_sibling) == siblings
    assert siblings <= classes_of(train, task.retain_train)  # siblings are trained on as retain pairs
    style = experiment.build_task(train, test, kind="forget-style-subgroup", target="sketch:sneaker", seed=0)
    assert styles_of(train, style.forget_train) == {1} and styles_of(test, style.eval_sets["forget"]) == {1}
    assert styles_of(test, style.eval_sets["sibling"]) == {0, 2}
    assert classes_of(test, style.eval_sets["sibling"]) == {names.index("sneaker")}


def test_task_errors_are_clear(world):
    train, test = world
    with pytest.raises(ValueError, match="valid: t-shirt"):
        experiment.build_task(train, test, target="sneakers")
    with pytest.raises(ValueError, match="valid: photo, sketch, negative"):
        experiment.build_task(train, test, kind="forget-style-subgroup", target="oil:sneaker")
    with pytest.raises(ValueError, match="no sibling"):
        experiment.build_task(train, test, kind="forget-subgroup", target="trouser")
    with pytest.raises(ValueError, match="unknown task kind"):
        experiment.build_task(train, test, kind="forget-everything", target="bag")


def test_evaluate_model_and_validation(world, tiny_resnet_clip):
    train, test = world
    model, tokenizer = tiny_resnet_clip
    task = experiment.build_task(train, test, target="bag", seed=0, n_seen=10)
    out = experiment.evaluate_model(model, task, tokenizer=tokenizer)
    for key in ("forget_acc", "retain_acc", "other_acc", "other_forget_acc", "mia"):
        assert 0.0 <= out[key] <= 1.0
    assert math.isclose(sum(out["forget_confusion"].values()), 1.0, abs_tol=1e-6)
    assert set(out["per_class_acc"]) == set(data.FASHION_MNIST_CLASSES)
    # members are forget-class training images the model saw (image_ids < n_seen)
    assert (train.image_ids[task.member_idx] < 10).all()
    val = experiment.validate_model(model, task, tokenizer=tokenizer)
    assert val["score"] == pytest.approx(val["val_retain_acc"] - val["val_forget_acc"])


def test_style_subgroup_reports_accuracy_per_kept_style(world, tiny_resnet_clip):
    train, test = world
    model, tokenizer = tiny_resnet_clip
    task = experiment.build_task(train, test, kind="forget-style-subgroup", target="sketch:sneaker", seed=0)
    out = experiment.evaluate_model(model, task, tokenizer=tokenizer)
    # the siblings are the photo and negative sneakers; the other classes are seen in sketch and negative
    assert {k for k in out if "@" in k} == {"sibling_acc@photo", "sibling_acc@negative", "other_acc@sketch",
                                            "other_acc@negative"}
    for name in ("sibling", "other"):
        idx = task.eval_sets[name]
        counts = {s: int((test.styles[idx] == data.STYLES.index(s)).sum()) for s in data.STYLES}
        weighted = sum(out.get(f"{name}_acc@{s}", 0.0) * n for s, n in counts.items()) / len(idx)
        assert weighted == pytest.approx(out[f"{name}_acc"])  # the per-style parts add up to the whole
    class_task = experiment.build_task(train, test, target="bag", seed=0)
    assert not any("@" in k for k in experiment.evaluate_model(model, class_task, tokenizer=tokenizer))


def test_selection_score_prefers_forgetting_and_keeping():
    good = {"val_forget_acc": 0.0, "val_retain_acc": 0.9}
    keeps_all = {"val_forget_acc": 0.9, "val_retain_acc": 0.9}
    destroys = {"val_forget_acc": 0.0, "val_retain_acc": 0.2}
    assert experiment.selection_score(good) > experiment.selection_score(keeps_all)
    assert experiment.selection_score(good) > experiment.selection_score(destroys)


def fake_run(scores, failed=()):
    def run_fn(lr):
        m = {"score": scores[lr], "val_forget_acc": 0.0, "val_retain_acc": scores[lr], "failed": lr in failed}
        return object(), {"method": "x", "task": "t", "config": {"lr": lr}, "metrics": m}
    return run_fn


def test_run_grid_keeps_the_best_valid_candidate():
    _, best, rows = experiment.run_grid(fake_run({1: 0.2, 2: 0.9, 3: 0.5}), grid={"lr": [1, 2, 3]})
    assert best["config"]["selected"] == {"lr": 2} and best["config"]["grid"] == {"lr": [1, 2, 3]}
    assert [r["selected"] for r in rows] == [False, True, False]
    _, best, _ = experiment.run_grid(fake_run({1: 0.2, 2: 0.9}, failed={2}), grid={"lr": [1, 2]})
    assert best["config"]["selected"] == {"lr": 1}  # a failed run never wins


def test_run_method_records_and_direction(world, tiny_resnet_clip):
    train, test = world
    model, tokenizer = tiny_resnet_clip
    task = experiment.build_task(train, test, target="bag", seed=0, eval_per_class=4)
    before = experiment.validate_model(model, task, tokenizer=tokenizer)
    unlearned, rec = experiment.run_method("cliperase", task, model=model, tokenizer=tokenizer, lr=1e-3, steps=4,
                                           batch_size=8, eval_every=2)
    assert rec["method"] == "cliperase" and rec["task"] == "forget-class"
    assert rec["config"]["forget_class"] == "bag" and rec["config"]["seed"] == 0 and rec["config"]["lr"] == 1e-3
    assert [h["step"] for h in rec["history"]] == [2, 4]
    assert rec["metrics"]["steps"] == 4 and rec["metrics"]["failed"] is False
    assert rec["metrics"]["peak_mem_mb"] >= 0 and rec["metrics"]["seconds"] > 0
    # the model passed in is untouched; the returned copy was trained
    assert experiment.validate_model(model, task, tokenizer=tokenizer) == before
    changed = any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                         unlearned.state_dict().values()))
    assert changed


def test_result_store_saves_each_record_and_resumes(tmp_path):
    path = tmp_path / "r.json"
    store = experiment.ResultStore(path, match={"profile": "mini", "quick": True})
    rec = {"method": "ga", "task": "forget-class", "config": {"forget_class": "bag", "seed": 0, "lr": 1e-4},
           "metrics": {"forget_acc": 0.1}}
    store.add(rec)
    assert load_records(path)[0]["config"]["profile"] == "mini"
    again = dict(rec, config={**rec["config"], "lr": 3e-4}, metrics={"forget_acc": 0.0})
    store.add(again)  # same method / task / target / seed: replaces
    assert len(load_records(path)) == 1 and load_records(path)[0]["metrics"]["forget_acc"] == 0.0
    resumed = experiment.ResultStore(path, match={"profile": "mini", "quick": True}, resume=True)
    assert resumed.find(method="ga", task="forget-class", forget_class="bag", seed=0) is not None
    with pytest.warns(UserWarning, match=r"1 of the 1 records .* not resumed; they are kept in .*r\.json\.unmatched"):
        fresh = experiment.ResultStore(path, match={"profile": "mini", "quick": False}, resume=True)
    assert fresh.records == []  # other settings are never resumed ...
    kept = load_records(path.with_name("r.json.unmatched"))  # ... and never lost
    assert [r["metrics"]["forget_acc"] for r in kept] == [0.0] and kept[0]["config"]["quick"] is True
    fresh.add(dict(rec, config={"forget_class": "bag", "seed": 0, "lr": 1e-4}, metrics={"forget_acc": 0.5}))
    assert [r["config"]["quick"] for r in load_records(path)] == [False]


def test_run_selected_searches_on_the_first_seed_only(tmp_path, world):
    train, test = world
    tasks = [experiment.build_task(train, test, target="bag", seed=s, eval_per_class=2) for s in (0, 1, 2)]
    calls = []

    def run_fn(task, lr):
        calls.append((task.seed, lr))
        m = {"score": {1: 0.1, 2: 0.7}[lr], "val_forget_acc": 0.1, "val_retain_acc": 0.8, "failed": False}
        return object(), experiment.summarise_run(task, method="x", config={"lr": lr}, test_metrics=m)

    store = experiment.ResultStore(tmp_path / "r.json", match={"profile": "mini"})
    records = experiment.run_selected("x", tasks, run_fn=run_fn, grid={"lr": [1, 2]}, store=store)
    assert calls == [(0, 1), (0, 2), (1, 2), (2, 2)]
    results = [r for r in records if r["task"] == "forget-class"]
    assert [r["config"]["seed"] for r in results] == [0, 1, 2]
    assert all(r["config"]["selected"] == {"lr": 2} for r in results)
    assert sum(r["config"]["selected"] for r in records if r["task"] == "selection") == 1
    calls.clear()  # resuming repeats nothing
    resumed = experiment.ResultStore(tmp_path / "r.json", match={"profile": "mini"}, resume=True)
    experiment.run_selected("x", tasks, run_fn=run_fn, grid={"lr": [1, 2]}, store=resumed)
    assert calls == []


def test_subgroup_siblings_follow_the_given_hierarchy(world):
    train, test = world
    names = data.FASHION_MNIST_CLASSES
    # the default is the Fashion-MNIST hierarchy, as before
    default = experiment.build_task(train, test, kind="forget-subgroup", target="sandal", seed=0)
    explicit = experiment.build_task(train, test, kind="forget-subgroup", target="sandal", seed=0,
                                     hierarchy=data.FASHION_MNIST_HIERARCHY)
    assert torch.equal(default.eval_sets["sibling"], explicit.eval_sets["sibling"])
    tops = experiment.build_task(train, test, kind="forget-subgroup", target="shirt", seed=0,
                                 hierarchy={"tops": ("t-shirt", "shirt", "pullover"), "rest": ("bag",)})
    assert classes_of(test, tops.eval_sets["sibling"]) == {names.index("t-shirt"), names.index("pullover")}
    assert classes_of(train, tops.val_sibling) == {names.index("t-shirt"), names.index("pullover")}
    with pytest.raises(ValueError, match="in no group of the hierarchy; groups: tops, rest"):
        experiment.build_task(train, test, kind="forget-subgroup", target="coat", seed=0,
                              hierarchy={"tops": ("t-shirt", "shirt"), "rest": ("bag",)})
    with pytest.raises(ValueError, match="unknown class name"):  # a hierarchy naming classes the data lacks
        experiment.build_task(train, test, kind="forget-subgroup", target="shirt", seed=0,
                              hierarchy={"tops": ("shirt", "blouse")})


def test_paper_a_imagenet_groups_make_subgroup_tasks():
    """Paper A's ImageNet groups (paper_a.json) on a dataset without styles: siblings are the other turtles."""
    from clipunlearn.configs import load_paper_config

    spec = load_paper_config("paper_a")["subgroup_tasks"]["box turtle"]
    classnames = list(spec["classes"]) + ["goldfish", "tench"]
    labels = torch.arange(len(classnames)).repeat(10)
    images = [(torch.zeros(3, 8, 8), int(y)) for y in labels]
    train, test = (data.LabeledImages(images, labels, classnames) for _ in range(2))
    task = experiment.build_task(train, test, kind="forget-subgroup", target="box turtle", seed=0,
                                 templates=("a photo of a {}.",), hierarchy={spec["group"]: spec["classes"]})
    turtles = {classnames.index(c) for c in spec["classes"] if c != "box turtle"}
    assert classes_of(test, task.eval_sets["sibling"]) == turtles
    assert classes_of(test, task.eval_sets["retain"]) == {5, 6} and "other" not in task.eval_sets
    assert classes_of(train, task.forget_train) == {classnames.index("box turtle")}


def test_unlearning_score_rewards_forgetting_and_keeping():
    original = {"forget_acc": 0.9, "sibling_acc": 0.8, "retain_acc": 0.8, "other_acc": 0.7}
    ideal = {"forget_acc": 0.0, "sibling_acc": 0.8, "retain_acc": 0.85, "other_acc": 0.7}
    assert experiment.unlearning_score(original, original) == 0.0  # nothing forgotten
    assert experiment.unlearning_score(ideal, original) == pytest.approx(1.0)  # gains above the original cap at 1
    hurts_siblings = dict(ideal, sibling_acc=0.2)
    half = dict(ideal, forget_acc=0.45)
    assert 0 < experiment.unlearning_score(hurts_siblings, original) < 1
    assert experiment.unlearning_score(half, original) == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert experiment.unlearning_score({"forget_acc": 0.1}, original) is None


def coarse_world(n_per_class=6, seed=0):
    """tiny_world with the Fashion-MNIST coarse labels."""
    ds = tiny_world(n_per_class=n_per_class, seed=seed)
    index = {c: data.FASHION_MNIST_COARSE.index(data.coarse_of(c)) for c in data.FASHION_MNIST_CLASSES}
    coarse = torch.tensor([index[c] for c in data.FASHION_MNIST_CLASSES])[ds.targets]
    return data.StyledImages(ds.images, ds.targets, ds.styles, ds.image_ids, classnames=ds.classnames,
                             stylenames=ds.stylenames, coarse_targets=coarse,
                             coarse_classnames=data.FASHION_MNIST_COARSE)


def test_calibration_and_coarse_accuracy(world, tiny_resnet_clip):
    train, test = world
    model, tokenizer = tiny_resnet_clip
    task = experiment.build_task(train, coarse_world(), kind="forget-subgroup", target="sandal", seed=0)
    split = experiment.calibration_split(task, per_class=2)
    # calibration images are validation images (never training pairs, never test images), <= 2 per class
    assert set(split["forget"].tolist()) <= set(task.forget_val.tolist())
    assert set(split["sibling"].tolist()) <= set(task.val_sibling.tolist())
    assert set(split["retain"].tolist()) <= set(task.retain_val.tolist())
    assert not set(torch.cat(list(split.values())).tolist()) & set(task.retain_train.tolist())
    assert torch.bincount(train.targets[split["retain"]]).max() <= 2
    calib = experiment.calibration_fn(task, tokenizer=tokenizer, per_class=2)(model)
    assert set(calib) == {"forget_acc", "sibling_acc", "retain_acc"}
    coarse = experiment.evaluate_coarse(model, task, tokenizer=tokenizer)
    assert set(coarse) == {"coarse_forget_acc", "coarse_sibling_acc"} and all(0 <= v <= 1 for v in coarse.values())
    no_coarse = experiment.build_task(train, test, kind="forget-subgroup", target="sandal", seed=0)
    with pytest.raises(ValueError, match="no coarse labels"):
        experiment.evaluate_coarse(model, no_coarse, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="valid: forget, sibling"):
        experiment.evaluate_coarse(model, task, tokenizer=tokenizer, sets=("members",))


@pytest.mark.parametrize("kind, target", [("forget-subgroup", "sandal"), ("forget-style-subgroup", "sketch:sneaker")])
def test_subgroup_validation_images_are_never_training_pairs(world, kind, target):
    train, test = world
    task = experiment.build_task(train, test, kind=kind, target=target, seed=0, retain_per_class=5)
    trained = set(task.retain_train.tolist()) | set(task.forget_train.tolist())
    assert len(task.retain_train.unique()) == len(task.retain_train)  # no pair twice
    for split in (task.forget_val, task.retain_val, task.val_sibling):
        assert not set(split.tolist()) & trained
    pairs = train.targets[task.retain_train] * len(data.STYLES) + train.styles[task.retain_train]
    assert torch.bincount(pairs).max() <= 5  # siblings capped like the other classes, in each style


def test_style_subgroup_validation_covers_every_kept_style(world):
    train, test = world
    task = experiment.build_task(train, test, kind="forget-style-subgroup", target="sketch:sneaker", seed=0,
                                 val_fraction=0.5, val_per_class=3)
    styles = train.styles[task.val_sibling]
    assert sorted(styles.tolist()) == [0, 0, 0, 2, 2, 2]  # photo and negative sneakers, 3 each
