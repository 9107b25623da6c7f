"""The cross-paper benchmark helpers: one score per run, collecting records, finding missing runs."""

import math

import pytest

from clipunlearn import benchmark, experiment
from clipunlearn.results import save_records

ORIGINAL = {"forget_acc": 0.9, "retain_acc": 0.8, "other_acc": 0.8}


def test_score_rewards_forgetting_and_keeping():
    ideal = experiment.unlearning_score({"forget_acc": 0.0, "retain_acc": 0.8, "other_acc": 0.8}, ORIGINAL)
    nothing = experiment.unlearning_score(dict(ORIGINAL), ORIGINAL)
    destroyed = experiment.unlearning_score({"forget_acc": 0.0, "retain_acc": 0.1, "other_acc": 0.1}, ORIGINAL)
    half = experiment.unlearning_score({"forget_acc": 0.45, "retain_acc": 0.8, "other_acc": 0.8}, ORIGINAL)
    assert ideal == pytest.approx(1.0) and nothing == 0.0
    assert 0 < destroyed < half < ideal
    # a better retain accuracy than the original does not count above 1
    assert experiment.unlearning_score({"forget_acc": 0.0, "retain_acc": 0.9, "other_acc": 0.9}, ORIGINAL) == 1.0
    assert experiment.unlearning_score({"forget_acc": 0.0}, {"forget_acc": 0.0}) is None


def rec(method, task, target, seed, **metrics):
    return {"method": method, "task": task, "config": {"forget_class": target, "seed": seed, "profile": "mini",
                                                       "quick": False}, "metrics": metrics}


def test_collect_scores_and_missing(tmp_path):
    save_records(tmp_path / "10_x.json", [rec("original", "forget-class", "sneaker", None, **ORIGINAL),
                                          rec("ga", "forget-class", "sneaker", 0, forget_acc=0.0, retain_acc=0.8,
                                              other_acc=0.8),
                                          rec("ga", "forget-class", "bag", 0, forget_acc=0.0, retain_acc=0.8)])
    records = benchmark.collect_records([tmp_path / "10_x.json", tmp_path / "absent.json"],
                                        tasks={"forget-class": ["sneaker"]})
    assert [r["method"] for r in records] == ["original", "ga"] and records[1]["config"]["source"] == "10_x"
    benchmark.add_scores(records)
    assert records[1]["metrics"]["unlearning_score"] == pytest.approx(1.0)
    missing = benchmark.missing_pairs(records, methods=["ga", "ft"], tasks={"forget-class": ["sneaker"]},
                                      seeds=[0, 1])
    assert missing == [("ga", "forget-class", "sneaker"), ("ft", "forget-class", "sneaker")]
