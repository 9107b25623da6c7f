"""The benchmark's tasks (notebooks 40 and 45) are the tasks of the notebooks whose runs they reuse (10 and 30).

A run is comparable with another, and can be rebuilt from its record, only on the same task: the same retain pairs,
validation images and test subsets. Each task is built here twice on one world, once through the owner notebook's
loader with its settings and once through ``benchmark_tasks.build_benchmark_tasks``, and every split must agree.
"""

import pytest
import torch

from clipunlearn import models
from clipunlearn.harness import build_task
from clipunlearn.papers import benchmark_tasks, paper_a, paper_c

from .test_experiment import tiny_world

SPLITS = ("forget_train", "forget_val", "retain_train", "retain_val", "member_idx", "val_sibling", "val_other")


@pytest.fixture(scope="module")
def world():
    """Enough images per class (400 train, 400 test, each in three styles) that the owners' caps bite."""
    return tiny_world(n_per_class=400, seed=0), tiny_world(n_per_class=400, seed=1)


def assert_same_task(a, b):
    for name in SPLITS:
        x, y = getattr(a, name, None), getattr(b, name, None)
        assert (x is None) == (y is None), name
        if x is not None:
            assert torch.equal(x, y), name
    assert a.eval_sets.keys() == b.eval_sets.keys()
    for name in a.eval_sets:
        assert torch.equal(a.eval_sets[name], b.eval_sets[name]), name


def owner_tasks(world, monkeypatch, quick):
    """The tasks as notebooks 10 and 30 load them (their loaders, their settings), on ``world``."""
    monkeypatch.setattr(paper_a.data, "load_mini_world", lambda data_dir=None: world)
    monkeypatch.setattr(paper_c.data, "load_mini_world", lambda data_dir=None: world)
    a = paper_a.paper_a_settings("mini", quick=quick)
    a_targets = {t: k for t, k in paper_a.paper_a_settings("mini")["targets"].items()}  # both tasks, even in quick
    *_, tasks = paper_a.load_paper_a_tasks(model="tiny-rn", pretrained="random", dataset="fashion-mnist",
                                           targets=a_targets, seeds=[0, 1], hierarchy=a["hierarchy"], **a["task"])
    c = {**paper_c.paper_c_settings("mini", quick=quick, forget_classes="sneaker"), "model": "tiny-rn",
         "pretrained": "random", "selection": None, "seeds": [0, 1]}
    tasks.update(paper_c.load_paper_c_tasks(c).tasks)
    return tasks


@pytest.mark.parametrize("quick", [False, True])
def test_benchmark_tasks_are_the_owners_tasks(world, monkeypatch, quick):
    owners = owner_tasks(world, monkeypatch, quick)
    built = benchmark_tasks.build_benchmark_tasks(*world, tasks=benchmark_tasks.BENCHMARK_TASKS, seeds=[0, 1],
                                                  n_seen=models.MINI_SEEN_IMAGES, quick=quick)
    assert list(built) == list(benchmark_tasks.BENCHMARK_TASKS)
    for kind, target in benchmark_tasks.BENCHMARK_TASKS.items():
        for ours, theirs in zip(built[kind][target], owners[target], strict=True):
            assert (ours.kind, ours.target, ours.seed) == (theirs.kind, theirs.target, theirs.seed)
            assert_same_task(ours, theirs)


def test_the_check_notices_other_sizes(world, monkeypatch):
    """The notebooks' earlier fixed sizes (300 test and 100 validation images per class) give other subgroup tasks:
    the comparison above would catch a benchmark task built that way."""
    owners = owner_tasks(world, monkeypatch, False)
    old = build_task(*world, kind="forget-style-subgroup", target="sketch:sneaker", seed=0,
                     n_seen=models.MINI_SEEN_IMAGES, retain_per_class=300, eval_per_class=300)
    with pytest.raises(AssertionError):
        assert_same_task(old, owners["sketch:sneaker"][0])


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: forget-class, forget-subgroup, forget-style-subgroup"):
        benchmark_tasks.benchmark_task_sizes("forget-everything")
