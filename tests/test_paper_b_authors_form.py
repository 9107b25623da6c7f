"""Paper B's paper profile in the authors' form: why a run stopped, the model kept when no epoch is
accepted, which synthetic images are held out, and avg_gain's divisor. The forgetting loop is driven by the
recording fakes of tests/test_mutation_kills_lipschitz.py (a scripted stop-set accuracy)."""

import copy
import types
import warnings

import pytest
import torch

from clipunlearn import synthetic
from clipunlearn.methods import lipschitz

from .test_mutation_kills_lipschitz import AUTHORS, Harness, run


# --------------------------------------------------------------------------- #
# Why forgetting stopped (recorded; was always None)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("accs, plans, kwargs, reason", [
    # epoch 0 reaches 0.05 <= 0.1: the next epoch does not start
    ([0.9, 0.05], [(1, False)], dict(max_epochs=5), "threshold reached"),
    # reached in the very last allowed epoch
    ([0.9, 0.5, 0.05], [(1, False)] * 2, dict(max_epochs=2), "threshold reached"),
    # the one stage's epoch does not lower the accuracy: rolled back, nothing left to try
    ([0.9, 0.95], [(1, False)], dict(max_epochs=5), "schedule exhausted"),
    # every epoch lowers it a little, never to 0.1
    ([0.9, 0.8, 0.7], [(1, False)] * 2, dict(max_epochs=2), "epochs exhausted"),
    # a non-finite loss
    ([0.9, 0.5], [(1, True)], dict(max_epochs=5), "non-finite loss at step 1"),
])
def test_the_stop_reason_of_each_case(tiny_clip, monkeypatch, accs, plans, kwargs, reason):
    h = Harness(monkeypatch, tiny_clip.model, accs, unlearn_plans=plans)
    result, _ = run(h, k_schedule=[(1, 1)], sigma_schedule=(0.1,), **kwargs)
    assert result.stop_reason == reason
    assert (reason in lipschitz.STOP_REASONS) is not reason.startswith("non-finite")


def test_the_record_carries_the_stop_reason(tiny_clip, monkeypatch):
    def fake_forget(model, **kw):
        return lipschitz.LipschitzResult(initial_acc=0.9, final_acc=0.8, stop_reason="schedule exhausted")

    monkeypatch.setattr(lipschitz, "forget_lipschitz", fake_forget)
    monkeypatch.setattr(lipschitz.harness, "validate_model", lambda *a, **k: {})
    monkeypatch.setattr(lipschitz.harness, "evaluate_model", lambda *a, **k: {"forget_acc": 0.5, "retain_acc": 0.5})
    monkeypatch.setattr(lipschitz.harness, "summarise_run", lambda task, **kw: {"metrics": dict(kw["test_metrics"])})
    monkeypatch.setattr(lipschitz, "make_pair_loader", lambda *a, **k: "LOADER")
    task = types.SimpleNamespace(seed=0, classnames=["a", "b"], templates=("{}",))
    _, record = lipschitz.run_lipschitz(task, model=tiny_clip.model, tokenizer=tiny_clip.tokenizer,
                                        forget_data=[0, 1], lr=1e-3)
    assert record["metrics"]["stopped_early"] == "schedule exhausted"


# --------------------------------------------------------------------------- #
# No epoch accepted: the authors keep the last rejected model, the project the original
# --------------------------------------------------------------------------- #
def test_no_accepted_epoch_keeps_the_last_rejected_model_in_the_authors_form(tiny_clip, monkeypatch):
    model = tiny_clip.model
    original = copy.deepcopy(model.state_dict())
    # baseline one (the authors'): both epochs leave the stop accuracy at 1.0 and are rejected
    h = Harness(monkeypatch, model, [0.9, 1.0, 1.0], unlearn_plans=[(1, False)] * 2)
    result, _ = run(h, k_schedule=[(1, 1), (2, 2)], sigma_schedule=(0.1, 0.3), baseline="one", fallback="last")
    assert [e["accepted"] for e in result.epochs] == [False, False] and result.stop_reason == "schedule exhausted"
    name = result.epochs[1]["trainable"][0]  # the fake epoch adds 1 to its first trainable tensor
    changed = {n for n, v in model.state_dict().items() if not torch.equal(v, original[n])}
    assert changed == {name} and torch.equal(model.state_dict()[name], original[name] + 1.0)  # epoch 1's model
    assert result.epochs[1].get("kept") is True and "kept" not in result.epochs[0]
    assert result.final_acc == 1.0 and not result.reached  # that model's stop accuracy, not the original's 0.9
    # the project's fallback: the original model and its accuracy
    model.load_state_dict(original)
    h = Harness(monkeypatch, model, [0.9, 1.0, 1.0], unlearn_plans=[(1, False)] * 2)
    result, _ = run(h, k_schedule=[(1, 1), (2, 2)], sigma_schedule=(0.1, 0.3), baseline="one", fallback="original")
    assert all(torch.equal(v, original[n]) for n, v in model.state_dict().items()) and result.final_acc == 0.9


def test_an_accepted_epoch_is_kept_over_later_rejected_ones(tiny_clip, monkeypatch):
    model = tiny_clip.model
    h = Harness(monkeypatch, model, [0.9, 0.5, 0.6], plans=[(1, None), (1, None)])
    states, fake_stop = [], lipschitz.stop_accuracy

    def snapshot_stop(m, **kwargs):  # the weights at every stop check: initial, after epoch 0, after epoch 1
        states.append(copy.deepcopy(m.state_dict()))
        return fake_stop(m, **kwargs)

    monkeypatch.setattr(lipschitz, "stop_accuracy", snapshot_stop)
    result, _ = run(h, k_schedule=[(1, 1), (2, 2)], sigma_schedule=(0.1, 0.3), max_epochs=2,
                    **{**AUTHORS, "fallback": "last"})
    assert [e["accepted"] for e in result.epochs] == [True, False] and result.final_acc == 0.5
    assert not any(e.get("kept") for e in result.epochs) and len(states) == 3
    assert all(torch.equal(v, states[1][n]) for n, v in model.state_dict().items())  # epoch 0's model
    assert not all(torch.equal(v, states[2][n]) for n, v in model.state_dict().items())


def test_the_paper_profile_uses_the_authors_fallback():
    assert lipschitz.AUTHORS_OPTIONS["fallback"] == "last" and lipschitz.PROJECT_OPTIONS["fallback"] == "original"
    with pytest.raises(ValueError, match=r"^unknown fallback 'best'; valid: original, last$"):
        lipschitz._check_options({**lipschitz.PROJECT_OPTIONS, "fallback": "best"})


# --------------------------------------------------------------------------- #
# The held-out synthetic images come from images that reached their threshold
# --------------------------------------------------------------------------- #
def split_synthetic(tiny_clip, monkeypatch, reached, probs, *, n_train, n_val):
    """generate_task_synthetic over a scripted set; return the ids (image values) of its forget and held-out sets."""
    n = len(reached)

    def fake_generate(model, weights, **kw):
        return synthetic.SyntheticSet(torch.arange(n).float().view(n, 1, 1, 1).expand(n, 3, 2, 2).clone(),
                                      torch.zeros(n, dtype=torch.long), classnames=["a", "b"],
                                      probs=torch.tensor(probs), steps_taken=torch.ones(n, dtype=torch.long),
                                      reached=torch.tensor(reached), thresholds=torch.full((n,), 0.9))

    monkeypatch.setattr(synthetic, "generate_synthetic", fake_generate)
    task = types.SimpleNamespace(classnames=["a", "b"], templates=("a {}.",), forget_classes=[0], target="a")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        forget, val, cost = lipschitz.generate_task_synthetic(tiny_clip.model, task, tokenizer=tiny_clip.tokenizer,
                                                              n_train=n_train, n_val=n_val,
                                                              generation={"restart": True})
    ids = lambda s: s.images[:, 0, 0, 0].long().tolist()  # noqa: E731
    return ids(forget), ids(val), cost


def test_held_out_images_are_reached_ones_not_the_weakest_fill_ins(tiny_clip, monkeypatch):
    reached = [True, False, True, True, False, True]
    probs = [0.9, 0.3, 0.95, 0.92, 0.5, 0.91]
    forget, val, cost = split_synthetic(tiny_clip, monkeypatch, reached, probs, n_train=4, n_val=2)
    assert val == [3, 5] and all(reached[i] for i in val)  # the last reached images, in generation order
    assert forget == [0, 2, 4, 1]  # the earlier reached ones, then the fill-ins, most probable first
    assert cost["reached"] == 4
    # every image reached: the first n_train to forget, the next n_val held out (as before)
    forget, val, _ = split_synthetic(tiny_clip, monkeypatch, [True] * 6, probs, n_train=4, n_val=2)
    assert (forget, val) == ([0, 1, 2, 3], [4, 5])
    # fewer reached than n_val: all of them held out, then the fill-ins the forget set does not take
    forget, val, _ = split_synthetic(tiny_clip, monkeypatch, [False] * 5 + [True], [0.1, 0.5, 0.3, 0.4, 0.2, 0.9],
                                     n_train=3, n_val=2)
    assert val == [5, 4] and forget == [1, 3, 2]
    # only a held-out set (the authors' own set is the forget set): the last reached images
    forget, val, _ = split_synthetic(tiny_clip, monkeypatch, reached, probs, n_train=0, n_val=3)
    assert forget == [] and val == [2, 3, 5]


# --------------------------------------------------------------------------- #
# avg_gain: the authors divide by 5
# --------------------------------------------------------------------------- #
def test_avg_gain_divided_by_five_as_the_authors_whatever_the_number_of_datasets():
    reference = {"forget_acc": 0.8, "retain_acc": 0.6, "other_acc/x": 0.5}
    result = {"forget_acc": 0.2, "retain_acc": 0.45, "other_acc/x": 0.55}
    # terms by hand: 0.2 / 0.8 = 0.25; (0.6 - 0.45) / 0.6 = 0.25; x improved: 0
    assert lipschitz.compute_avg_gain(result, reference, divisor=5) == pytest.approx(0.5 / 5)
    assert lipschitz.compute_avg_gain(result, reference) == pytest.approx(0.5 / 3)  # the default: mean of terms
    assert lipschitz.AUTHORS_GAIN_DIVISOR == 5
