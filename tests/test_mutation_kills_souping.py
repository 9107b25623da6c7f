"""Souping: checks written for the mutants that survived the other tests (benchmarks/mutation.md).

Expected values are worked out by hand in each test.
"""

import pytest
import torch

from clipunlearn import souping


def test_check_same_keys_error_names_the_state_dict_and_the_first_five_differing_keys():
    ref = {k: torch.zeros(1) for k in "abcdefg"}
    other = {"a": torch.zeros(1)}
    # the third state dict (index 2) misses b..g: the symmetric difference, sorted, first five
    with pytest.raises(ValueError) as err:
        souping.check_same_keys(ref, dict(ref), other)
    assert str(err.value) == "state dict 2 has different keys than state dict 0: ['b', 'c', 'd', 'e', 'f']"
    # a key only the other one has is part of the difference too
    with pytest.raises(ValueError) as err:
        souping.check_same_keys({"a": torch.zeros(1)}, {"a": torch.zeros(1), "z": torch.zeros(1)})
    assert str(err.value) == "state dict 1 has different keys than state dict 0: ['z']"


def test_check_same_keys_error_names_the_first_five_keys_of_another_shape():
    ref = {k: torch.zeros(1) for k in "abcdefg"}
    other = {k: torch.zeros(2) if k != "g" else torch.zeros(1) for k in "abcdefg"}  # a..f differ
    with pytest.raises(ValueError) as err:
        souping.check_same_keys(ref, dict(ref), other)
    assert str(err.value) == "state dict 2 has different shapes for ['a', 'b', 'c', 'd', 'e']"


def test_soup_of_nothing_says_so():
    with pytest.raises(ValueError, match="^need at least one state dict to soup$"):
        souping.soup_state_dicts([])


def test_soup_keeps_each_tensor_dtype():
    a = {"w": torch.tensor([1.0], dtype=torch.float64), "h": torch.tensor([1.0], dtype=torch.float16)}
    b = {"w": torch.tensor([2.0], dtype=torch.float64), "h": torch.tensor([4.0], dtype=torch.float16)}
    out = souping.soup_state_dicts([a, b])
    assert out["w"].dtype == torch.float64 and out["w"].item() == 1.5
    assert out["h"].dtype == torch.float16 and out["h"].item() == 2.5


def test_soup_accumulates_half_precision_in_float32():
    # 65504 is float16's largest value: 65504 + 65504 overflows in float16 (inf), not in float32,
    # and 65504 + 65504 - 65504 = 65504 is representable again
    big = {"w": torch.tensor([65504.0], dtype=torch.float16)}
    out = souping.soup_state_dicts([big, dict(big), dict(big)], [1.0, 1.0, -1.0])
    assert out["w"].dtype == torch.float16 and out["w"].item() == 65504.0


def test_select_alpha_without_trials_or_keys_says_so():
    with pytest.raises(ValueError, match="^no trials to choose alpha from: score at least one alpha$"):
        souping.select_alpha([])
    # a trial without the retained key: named in the error, not a KeyError further down
    with pytest.raises(ValueError) as err:
        souping.select_alpha([{"alpha": 0.5, "forget_acc": 0.0}], retain_key=("sibling_acc", "retain_acc"))
    assert str(err.value) == ("trials lack the keys ['retain_acc', 'sibling_acc']; each needs alpha, forget_acc "
                              "and ['sibling_acc', 'retain_acc']")


def test_select_alpha_rounds_the_mean_of_the_retained_keys():
    # sums 1.0 and 1.00008 over two keys: means 0.5 and 0.50004, equal at 4 decimals, so the tie
    # goes to the lower forget accuracy (alpha 0.2); the sums themselves would differ (2.0 vs 2.0002
    # if scaled up instead of averaged) and pick alpha 0.4
    t = [{"alpha": 0.2, "forget_acc": 0.01, "sibling_acc": 0.5, "retain_acc": 0.5},
         {"alpha": 0.4, "forget_acc": 0.02, "sibling_acc": 0.5, "retain_acc": 0.50008}]
    assert souping.select_alpha(t, retain_key=("sibling_acc", "retain_acc")) == 0.2
