"""The shipped mini CLIP, selection that float noise cannot decide, and the check of a fresh run's records."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from clipunlearn import checkpoints, comparison, data, experiment, metrics, models, paths, souping
from clipunlearn.results import load_records
from clipunlearn.unlearning import _Tracker, UnlearnResult

#: The sha256 of the shipped weights, pinned here too: a changed file must come with new results.
SHIPPED_SHA256 = "edffd04a6cdf41043162272275ed172fcba9c425b19df95c8768aa743b4649c2"


# --------------------------------------------------------------------------- #
# the shipped model
# --------------------------------------------------------------------------- #
def test_shipped_file_matches_its_record_and_the_pinned_hash():
    weights, info = checkpoints.verify_shipped("mini")
    assert info["sha256"] == SHIPPED_SHA256 == checkpoints.sha256_file(weights)
    assert info["bytes"] == weights.stat().st_size
    assert info["config"]["seed"] == models.MINI_TRAINING["seed"] and info["version"] == models.MINI_VERSION
    assert info["machine"]["torch_threads"] == 2 and info["history"][-1]["val_acc"] > 0.8


def test_get_mini_clip_loads_the_shipped_weights_by_default(monkeypatch):
    monkeypatch.delenv(paths.MINI_SEED_ENV, raising=False)
    model, _, _, info = models.get_mini_clip("mini")
    assert info["source"] == "shipped" and info["sha256"] == SHIPPED_SHA256
    state = checkpoints.load_checkpoint(checkpoints.shipped_paths("mini")[0])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    loaded, _, _ = models.load_clip("mini")  # the notebooks' entry point
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_shipped_zero_shot_accuracy_equals_the_committed_notebook_00_record(repo_root, monkeypatch):
    if data._find_fashion_mnist(paths.get_data_dir()) is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    monkeypatch.delenv(paths.MINI_SEED_ENV, raising=False)
    model, _, tokenizer, _ = models.get_mini_clip("mini")
    test = data.load_fashion_mnist("test", styles=("photo",))
    classifier = metrics.build_classifier(model, tokenizer, test.classnames, data.get_templates("fashion-mnist"))
    acc = metrics.accuracy(model, classifier, test)
    record = load_records(repo_root / "results" / "mini" / "00_setup_and_baseline.json", method="original")[0]
    assert round(acc, 3) == round(record["metrics"]["acc"], 3)


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """The shipped files copied to ``tmp_path``, which then stands in for ``model_weights/``."""
    folder = tmp_path / "lib" / "clipunlearn" / "model_weights"
    folder.mkdir(parents=True)
    for path in checkpoints.shipped_paths("mini"):
        shutil.copy(path, folder / path.name)
    monkeypatch.setattr(checkpoints, "WEIGHTS_DIR", folder)
    return folder


@pytest.mark.parametrize("damage", ["truncated", "altered", "missing"])
def test_a_damaged_shipped_file_is_refused_with_how_to_restore_it(shipped_copy, damage):
    path = shipped_copy / "mini.pt"
    blob = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "altered":
        path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    else:
        path.unlink()
    with pytest.raises(checkpoints.CheckpointError) as err:
        models.get_mini_clip("mini")
    text = str(err.value)
    assert str(path) in text and SHIPPED_SHA256 in text and damage in text
    assert "git checkout -- lib/clipunlearn/model_weights/mini.pt" in text and "--train-mini" in text


def test_a_corrupted_training_record_is_named(shipped_copy):
    (shipped_copy / "mini.json").write_text("{not json")
    with pytest.raises(checkpoints.CheckpointError, match="mini.json is corrupted"):
        checkpoints.verify_shipped("mini")


def test_models_cli_verifies_the_shipped_file(shipped_copy, capsys):
    assert models.main(["--verify"]) == 0 and SHIPPED_SHA256 in capsys.readouterr().out
    (shipped_copy / "mini.pt").write_bytes(b"0")
    assert models.main(["--verify"]) == 1 and "truncated" in capsys.readouterr().err


def test_a_retrained_model_is_chosen_by_seed_and_writes_elsewhere(tmp_path, monkeypatch):
    calls = []

    def fake_train(name, **settings):
        calls.append(settings["seed"])
        return models.create_mini_model(name, seed=settings["seed"])[0].eval(), {"history": [], "train_seconds": 1.0}

    monkeypatch.setattr(models, "train_mini_clip", fake_train)
    monkeypatch.setattr(models, "evaluate_mini_clip", lambda *a, **k: {"acc": 0.1})
    monkeypatch.setenv(paths.MINI_SEED_ENV, "3")
    _, _, _, info = models.get_mini_clip("mini", cache_dir=tmp_path)
    assert calls == [3] and info["source"] == "trained"
    assert paths.get_results_path("mini", "10_x").parent.name == "mini-seed3"
    assert paths.get_results_path("mini", "10_x", quick=True).parent.name == "quick-mini-seed3"
    assert paths.get_results_path("paper", "10_x").parent.name == "paper"
    models.get_mini_clip("mini", cache_dir=tmp_path)  # cached: no second training
    assert calls == [3]
    for bad in ("x", "-1"):
        monkeypatch.setenv(paths.MINI_SEED_ENV, bad)
        with pytest.raises(ValueError, match="CLIPUNLEARN_MINI_SEED"):
            paths.get_mini_seed()
    monkeypatch.setenv(paths.MINI_SEED_ENV, "shipped")
    assert paths.get_mini_seed() is None and paths.get_results_path("mini", "x").parent.name == "mini"


# --------------------------------------------------------------------------- #
# selection: rounded scores and stated tie rules
# --------------------------------------------------------------------------- #
def test_selection_score_is_rounded_so_float_noise_ties():
    # the two scores that once decided GA's learning rate on sneaker
    a = experiment.selection_score({"val_retain_acc": 0.85222224, "val_forget_acc": 0.0})
    b = experiment.selection_score({"val_retain_acc": 0.85222220, "val_forget_acc": 0.0})
    assert a == b == 0.8522 and metrics.SCORE_DECIMALS == 4
    # a difference at the stated precision still counts, in the right direction
    assert experiment.selection_score({"val_retain_acc": 0.9, "val_forget_acc": 0.1001}) < \
        experiment.selection_score({"val_retain_acc": 0.9, "val_forget_acc": 0.1})
    assert experiment.selection_score({"val_retain_acc": 0.5, "val_forget_acc": 0.75}) == -0.25


def _fake_run(scores):
    def run_fn(lr):
        m = {"score": scores[lr], "val_forget_acc": 0.0, "val_retain_acc": scores[lr], "failed": False}
        return object(), {"method": "x", "task": "t", "config": {"lr": lr}, "metrics": m}
    return run_fn


def test_grid_ties_within_noise_go_to_the_first_candidate():
    _, best, _ = experiment.run_grid(_fake_run({1e-5: 0.85222220, 1e-4: 0.85222224}), grid={"lr": [1e-5, 1e-4]})
    assert best["config"]["selected"] == {"lr": 1e-5}
    _, best, _ = experiment.run_grid(_fake_run({1e-5: 0.8520, 1e-4: 0.8522}), grid={"lr": [1e-5, 1e-4]})
    assert best["config"]["selected"] == {"lr": 1e-4}  # a real difference wins


def test_tracker_ties_within_noise_go_to_the_earlier_step():
    scores = iter([0.5, 0.50000003, 0.49])
    tracker = _Tracker(torch.nn.Linear(1, 1), eval_fn=lambda m: {"s": next(scores)}, select_fn=lambda e: e["s"],
                       result=UnlearnResult())
    for step in (6, 12, 18):
        tracker.evaluate(step)
    assert tracker.result.best_step == 6


def test_select_alpha_ties_within_noise_go_by_the_stated_rule():
    trials = [{"alpha": 0.4, "forget_acc": 0.02, "retain_acc": 0.90000001},
              {"alpha": 0.6, "forget_acc": 0.02, "retain_acc": 0.9}]
    assert souping.select_alpha(trials) == 0.6  # equal after rounding: the larger alpha
    trials[0]["retain_acc"] = 0.9002
    assert souping.select_alpha(trials) == 0.4


# --------------------------------------------------------------------------- #
# report --compare
# --------------------------------------------------------------------------- #
def _rec(**metrics_):
    return {"method": "ga", "task": "forget-class", "config": {"seed": 0, "lr": 1e-4}, "metrics": metrics_}


def test_compare_records_to_three_decimals_without_wall_times():
    same = comparison.compare_records([_rec(forget_acc=0.1234, seconds=1.0)], [_rec(forget_acc=0.12341, seconds=9.0)])
    assert same["differences"] == [] and same["values"] == 1
    diff = comparison.compare_records([_rec(forget_acc=0.1234, per_class={"a": 0.5})],
                                      [_rec(forget_acc=0.1244, per_class={"a": 0.5})])
    assert [d["metric"] for d in diff["differences"]] == ["forget_acc"]
    nested = comparison.compare_records([_rec(per_class={"a": 0.5})], [_rec(per_class={"a": 0.6})])
    assert [d["metric"] for d in nested["differences"]] == ["per_class.a"]
    other_lr = dict(_rec(forget_acc=0.1), config={"seed": 0, "lr": 1e-3})
    moved = comparison.compare_records([_rec(forget_acc=0.1)], [other_lr])  # another selection: another record
    assert {d["actual"] for d in moved["differences"]} == {"missing", "extra"}
    assert comparison.is_volatile("after_forget/seconds") and comparison.is_volatile("train_seconds")
    assert not comparison.is_volatile("forget_acc")
    assert comparison.compare_records([_rec(x=math.nan)], [_rec(x=math.nan)])["differences"] == []


def test_compare_records_pairs_despite_wall_times_nested_in_config_and_metrics():
    # Data-free records keep the synthesis cost in their config; a fresh run measures other seconds.
    def timed(sec, acc):
        return dict(_rec(forget_acc=acc, after={"seconds": sec, "acc": 0.5}),
                    config={"seed": 0, "synthetic": {"seconds": sec, "peak_mem_mb": sec, "images": 96}})

    same = comparison.compare_records([timed(1.0, 0.25)], [timed(7.0, 0.25)])
    assert same["differences"] == [] and same["values"] == 2  # forget_acc, after.acc
    other = dict(timed(1.0, 0.25), config={"seed": 0, "synthetic": {"seconds": 1.0, "images": 95}})
    assert {d["actual"] for d in comparison.compare_records([timed(1.0, 0.25)], [other])["differences"]} \
        == {"missing", "extra"}


def test_report_compare_cli(tmp_path, capsys):
    from clipunlearn import report

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    (tmp_path / "a" / "10_x.json").write_text(json.dumps({"records": [_rec(forget_acc=0.5)]}))
    (tmp_path / "a" / "robustness.json").write_text(json.dumps({"models": []}))  # not records: skipped
    (tmp_path / "b" / "10_x.json").write_text(json.dumps({"records": [_rec(forget_acc=0.5)]}))
    assert report.main(["--compare", str(tmp_path / "b"), "--against", str(tmp_path / "a")]) == 0
    assert "OK: all 1 compared values equal to 3 decimals" in capsys.readouterr().out
    (tmp_path / "b" / "10_x.json").write_text(json.dumps({"records": [_rec(forget_acc=0.6)]}))
    assert report.main(["--compare", str(tmp_path / "b"), "--against", str(tmp_path / "a")]) == 1
    assert "expected 0.5, got 0.6" in capsys.readouterr().out
