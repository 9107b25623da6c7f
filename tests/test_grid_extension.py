"""The selection's grid extension: a choice at an end of the grid runs one more value beyond it.

Runs are fakes whose validation score is a function of the learning rate written out here.
"""

from __future__ import annotations

import math

import pytest

from clipunlearn import harness
from clipunlearn.harness import GridExtension

from .test_mutation_kills_experiment import three_seeds, world  # noqa: F401  (world: a fixture)


def runner(score_of, seen):
    def run_fn(lr):
        seen.append(lr)
        return ("model", lr), {"method": "x", "task": "t", "config": {"lr": lr},
                               "metrics": {"score": score_of(lr), "val_forget_acc": 0.0, "val_retain_acc": 0.5}}
    return run_fn


def peak_at(center):
    return lambda lr: round(1.0 - abs(math.log10(lr) - math.log10(center)), 4)


def test_next_value_rounds_to_three_digits_and_stops_at_the_bounds():
    ext = GridExtension(bounds=(1e-6, 1e-2))
    assert ext.next_value([1e-5, 1e-4, 1e-3], 1e-4) == (None, "interior")
    assert ext.next_value([1e-5, 1e-4, 1e-3], 1e-5) == (3.16e-06, "lower edge")
    assert ext.next_value([1e-5, 1e-4, 1e-3], 1e-3) == (3.16e-03, "upper edge")
    # on the lattice of half decades: 3.16e-3 x 3.1623 would round to 9.99e-3; the next power is 1e-2
    assert ext.next_value([3.16e-3, 1e-4], 3.16e-3) == (1e-2, "upper edge")
    assert ext.next_value([2e-5, 1e-4], 2e-5) == (1e-5, "lower edge")  # 2e-5 is nearest 10 ** -4.5: one below
    assert ext.next_value([1e-6, 1e-5], 1e-6) == (None, "lower bound")  # 3.16e-7 < 1e-6
    assert ext.next_value([1e-2, 1e-3], 1e-2) == (None, "upper bound")  # 3.16e-2 > 1e-2
    assert ext.next_value([1e-3], 1e-3) == (3.16e-04, "lower edge")  # one value: try below first
    assert GridExtension(factor=10.0).next_value([1e-4, 1e-3], 1e-3) == (1e-2, "upper edge")


def test_a_choice_at_the_upper_end_extends_until_interior():
    seen = []
    _, best, rows = harness.run_grid(runner(peak_at(1e-2), seen), grid={"lr": [1e-5, 1e-4, 1e-3]},
                                     extend=GridExtension())
    assert seen == [1e-5, 1e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2]  # 1e-2 is the peak; 3.16e-2 shows it is interior
    assert best["config"]["selected"] == {"lr": 1e-2} and best["config"]["edge"] == {"lr": "interior"}
    assert best["config"]["grid"] == {"lr": [1e-5, 1e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2]}
    assert [r["selected"] for r in rows] == [False, False, False, False, True, False]


def test_a_choice_at_the_lower_end_stops_at_the_bound_and_says_so():
    seen = []
    _, best, _ = harness.run_grid(runner(lambda lr: -lr, seen), grid={"lr": [1e-5, 1e-4]},
                                  extend=GridExtension(bounds=(1e-6, 1.0)))
    assert seen == [1e-5, 1e-4, 3.16e-6, 1e-6]
    assert best["config"]["selected"] == {"lr": 1e-6} and best["config"]["edge"] == {"lr": "lower bound"}


def test_with_an_extension_ties_go_to_the_smaller_value():
    seen = []
    flat_then_down = lambda lr: 0.5 if lr <= 1e-4 else 0.1  # noqa: E731
    _, best, _ = harness.run_grid(runner(flat_then_down, seen), grid={"lr": [1e-4, 1e-3]}, extend=GridExtension(
        bounds=(1e-5, 1.0)))
    # 1e-4 (first) wins the base grid at the lower end; 3.16e-5 ties and is smaller: chosen; then 1e-5 ties too
    assert seen == [1e-4, 1e-3, 3.16e-5, 1e-5]
    assert best["config"]["selected"] == {"lr": 1e-5} and best["config"]["edge"] == {"lr": "lower bound"}


def test_without_an_extension_nothing_changes():
    seen = []
    _, best, _ = harness.run_grid(runner(peak_at(1e-2), seen), grid={"lr": [1e-5, 1e-4, 1e-3]})
    assert seen == [1e-5, 1e-4, 1e-3] and best["config"]["selected"] == {"lr": 1e-3}
    assert "edge" not in best["config"] and best["config"]["grid"] == {"lr": [1e-5, 1e-4, 1e-3]}


def test_an_extension_needs_one_ascending_parameter():
    with pytest.raises(ValueError, match=r"^a grid extension needs a grid over 'lr' alone, got \['lr', 'steps'\]$"):
        harness.run_grid(runner(peak_at(1e-3), []), grid={"lr": [1e-4], "steps": [3]}, extend=GridExtension())
    with pytest.raises(ValueError, match=r"^an extended grid lists its values ascending \(the gentlest first\), "
                                         r"got \[0.001, 0.0001\]$"):
        harness.run_grid(runner(peak_at(1e-3), []), grid={"lr": [1e-3, 1e-4]}, extend=GridExtension())


def test_run_selected_gives_every_seed_the_final_grid_and_the_edge(world):  # noqa: F811
    tasks, seen = three_seeds(world), []

    def run_fn(task, lr):
        seen.append((task.seed, lr))
        return ("model", lr), {"method": "x", "task": task.kind,
                               "config": {"forget_class": task.target, "seed": task.seed, "lr": lr},
                               "metrics": {"score": peak_at(3.16e-3)(lr), "val_forget_acc": 0.0,
                                           "val_retain_acc": 0.5, "failed": False}}

    out = harness.run_selected("x", tasks, run_fn=run_fn, grid={"lr": [1e-4, 1e-3]}, extend=GridExtension())
    assert seen == [(0, 1e-4), (0, 1e-3), (0, 3.16e-3), (0, 1e-2), (1, 3.16e-3), (2, 3.16e-3)]
    for rec in out[:3]:
        assert rec["config"]["grid"] == {"lr": [1e-4, 1e-3, 3.16e-3, 1e-2]}
        assert rec["config"]["selected"] == {"lr": 3.16e-3} and rec["config"]["edge"] == {"lr": "interior"}
    assert [s["config"]["lr"] for s in out[3:]] == [1e-4, 1e-3, 3.16e-3, 1e-2]  # a selection record per value
