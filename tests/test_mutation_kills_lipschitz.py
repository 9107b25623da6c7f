"""Pins of ``clipunlearn.lipschitz`` written for the survivors of its mutation run (benchmarks/mutation.md).

The forgetting loop is driven with recording fakes: the stop-set accuracy is a script, the shared loop
(``unlearning.unlearn``) and the authors' epoch (``lipschitz._own_epoch``) are replaced by fakes bound
to the real signatures that record every argument, move the weights and, for the authors' Adam, take
real optimiser steps. Each test then checks the schedule, rollback, stop rule, step numbering and what
was passed where against values worked out by hand. The helpers (``stop_accuracy``,
``evaluate_class_forgetting``, ``lipschitz_loss``, ``_lipschitz_fn``, ``_check_options``,
``compute_avg_gain``, ``_freeze_batch_norm``) are checked against recording fakes of the metrics and
losses they call, or hand computations.
"""

from __future__ import annotations

import copy
import inspect
import time
import types

import pytest
import torch

from clipunlearn import layers, losses, metrics, unlearning
from clipunlearn.methods import lipschitz, lipschitz_authors
from clipunlearn.papers import paper_b

TEMPLATES = ["a photo of a {}."]
NAMES = ["cat", "dog", "car"]
TEXT_PREFIXES = ("transformer.", "token_embedding", "positional_embedding", "ln_final", "text_projection")


#: the real functions the fakes replace (taken before any test patches them)
REAL = dict(select_top_k=layers.select_top_k, make_optimizer=lipschitz._make_optimizer, own_epoch=lipschitz._own_epoch,
            unlearn=unlearning.unlearn, stop_accuracy=lipschitz.stop_accuracy, score=layers.score_layers)


def expected_candidates(model) -> list[str]:
    """Every trainable tensor of the two towers, written out without ``layers.encoder_of``."""
    return [n for n, p in model.named_parameters()
            if p.requires_grad and (n.startswith("visual.") or n.startswith(TEXT_PREFIXES))]


class Harness:
    """Fakes of everything ``forget_lipschitz`` calls around an epoch, recording their arguments."""

    def __init__(self, monkeypatch, model, accs, *, plans=(), unlearn_plans=()):
        self.model = model
        self.script = iter(accs)
        self.stop_calls = []      # (model, kwargs) of every stop-set check
        self.loss_fns = []        # (n_samples, sigma, options, torch.initial_seed()) per epoch
        self.score_calls = []     # kwargs of layers.score_layers
        self.topk_calls = []      # kwargs of layers.select_top_k
        self.topk_out = []        # what it returned
        self.unlearn_calls = []   # kwargs of unlearning.unlearn
        self.own_calls = []       # kwargs of _own_epoch
        self.opt_calls = []       # (kind, params, kwargs) of _make_optimizer
        self.optimizers = []
        self.opt_states = []      # optimiser state after each authors' epoch
        self.eval_models = []
        self.to_calls = []
        self.plans = list(plans)  # authors' epochs: (steps, why at the end)
        self.unlearn_plans = list(unlearn_plans)  # shared loop: (steps, failed)
        real_select, real_make = REAL["select_top_k"], REAL["make_optimizer"]
        self.own_sig, self.unlearn_sig = inspect.signature(REAL["own_epoch"]), inspect.signature(REAL["unlearn"])
        self.stop_sig, self.score_sig = inspect.signature(REAL["stop_accuracy"]), inspect.signature(REAL["score"])

        def fake_stop(m, **kwargs):
            bound = self.stop_sig.bind(m, **kwargs)  # what the real one would get, defaults included
            bound.apply_defaults()
            self.stop_calls.append((m, {k: v for k, v in bound.arguments.items() if k != "model"}))
            return next(self.script)

        def fake_fn(n_samples, sigma, **options):
            def loss_fn(m, batch):  # never called: the epochs are fakes
                raise AssertionError("the fake epochs do not compute losses")
            loss_fn.info = (n_samples, sigma, options, torch.initial_seed())
            self.loss_fns.append(loss_fn.info)
            return loss_fn

        def fake_score(m, batches, **kwargs):
            bound = self.score_sig.bind(m, batches, **kwargs)
            bound.apply_defaults()
            self.score_calls.append(dict(bound.arguments))
            names = [n for n, _ in m.named_parameters()]
            return {n: float(len(names) - i) for i, n in enumerate(names)}  # first tensors score highest

        def spy_select(scores, **kwargs):
            self.topk_calls.append(kwargs)
            self.topk_out.append(real_select(scores, **kwargs))
            return self.topk_out[-1]

        def spy_make(kind, params, **kwargs):
            opt = real_make(kind, params, **kwargs)
            self.opt_calls.append((kind, list(params), kwargs))
            self.optimizers.append(opt)
            return opt

        def fake_unlearn(m, **kwargs):
            bound = self.unlearn_sig.bind(m, **kwargs)
            bound.apply_defaults()
            kwargs = dict(bound.arguments)
            self.unlearn_calls.append(kwargs)
            steps, failed = self.unlearn_plans[len(self.unlearn_calls) - 1]
            name = kwargs["trainable"][0]
            for step in range(1, steps + 1):
                with torch.no_grad():
                    dict(m.named_parameters())[name].add_(1.0)
                ev = kwargs["eval_fn"](m) if step % kwargs["eval_every"] == 0 else None
                if kwargs["stop_fn"](m, step, ev):
                    break
            return types.SimpleNamespace(failed=failed, stopped_early="non-finite loss at step 1" if failed else None)

        def fake_own(m, **kwargs):
            self.own_sig.bind(m, **kwargs)
            self.own_calls.append(kwargs)
            steps, why = self.plans[len(self.own_calls) - 1]
            chosen = sorted(kwargs["candidates"])[:2]
            params = dict(m.named_parameters())
            opt = kwargs["optimizer"]
            for _ in range(steps):
                for n in chosen:
                    params[n].grad = torch.ones_like(params[n])
                opt.step()
                opt.zero_grad(set_to_none=True)
                if kwargs["on_step"](m):
                    self.opt_states.append(copy.deepcopy(opt.state_dict()))
                    return chosen, "stop at step ?"
            self.opt_states.append(copy.deepcopy(opt.state_dict()))
            return chosen, why

        monkeypatch.setattr(lipschitz, "stop_accuracy", fake_stop)
        monkeypatch.setattr(lipschitz, "_lipschitz_fn", fake_fn)
        monkeypatch.setattr(layers, "score_layers", fake_score)
        monkeypatch.setattr(layers, "select_top_k", spy_select)
        monkeypatch.setattr(lipschitz, "_make_optimizer", spy_make)
        monkeypatch.setattr(lipschitz, "unlearn", fake_unlearn)
        monkeypatch.setattr(lipschitz, "_own_epoch", fake_own)
        real_to = model.to
        monkeypatch.setattr(model, "to", lambda *a, **k: self.to_calls.append((a, k)) or real_to(*a, **k))

    def eval_fn(self, m):
        self.eval_models.append(m)
        return {"extra": len(self.eval_models)}


def run(h, **kwargs):
    args = dict(forget_loader=["b0"], tokenizer="tok", classnames=NAMES, templates=TEMPLATES, stop_dataset="syn",
                progress=False)
    args.update(kwargs)
    t0 = time.perf_counter()
    result = lipschitz.forget_lipschitz(h.model, **args)
    return result, time.perf_counter() - t0


# --------------------------------------------------------------------------- #
# forget_lipschitz, the project's loop (unlearning.unlearn)
# --------------------------------------------------------------------------- #
def test_project_loop_schedule_rollback_stop_and_history(tiny_clip, monkeypatch):
    model = tiny_clip.model
    model.visual.conv1.weight.requires_grad_(False)  # frozen by the caller: never a candidate, still frozen after
    dev = torch.device("cpu")
    # before 0.8; epoch 0 ends at 0.82 (not below 0.8: rolled back); epoch 1 ends at 0.5 (kept);
    # epoch 2 stops at 0.1 == threshold after two of its three steps (kept, reached)
    accs = [0.8, 0.9, 0.85, 0.82, 0.7, 0.6, 0.5, 0.3, 0.1]
    h = Harness(monkeypatch, model, accs, unlearn_plans=[(3, False), (3, False), (3, False)])
    before = copy.deepcopy(model.state_dict())
    exclude = [r"^visual\.class_embedding$"]
    result, elapsed = run(h, k_schedule=[(2, 2), (3, 4), (5, 6)], sigma_schedule=(0.1, 0.3, 0.5), n_samples=3,
                          threshold=0.1, max_epochs=10, lr=0.123, betas=(0.8, 0.7), eps=1e-3, weight_decay=0.45,
                          exclude=exclude, eval_fn=h.eval_fn, eval_every=3, device=dev, seed=7,
                          stop_indices=[0, 2])
    assert not h.own_calls and not h.opt_calls
    assert len(h.unlearn_calls) == 3
    assert [e["accepted"] for e in result.epochs] == [False, True, True]
    assert [(e["epoch"], e["stage"], e["sigma"], e["k_image"], e["k_text"]) for e in result.epochs] == [
        (0, 0, 0.1, 2, 2), (1, 1, 0.3, 3, 4), (2, 1, 0.3, 3, 4)]
    assert [e["stop_acc"] for e in result.epochs] == [0.82, 0.5, 0.1]
    assert [e["steps"] for e in result.epochs] == [3, 3, 2]
    assert result.initial_acc == 0.8 and result.final_acc == 0.1 and result.reached is True
    assert result.threshold == 0.1 and result.failed is False
    assert result.steps == 8 and result.accepted_steps == 5
    assert [h_["step"] for h_ in result.history] == list(range(1, 9))
    assert [h_["accepted"] for h_ in result.history] == [False] * 3 + [True] * 5
    assert [h_["stop_acc"] for h_ in result.history] == accs[1:]
    assert [(h_["epoch"], h_["stage"], h_["sigma"], h_["k_image"], h_["k_text"]) for h_ in result.history] == (
        [(0, 0, 0.1, 2, 2)] * 3 + [(1, 1, 0.3, 3, 4)] * 3 + [(2, 1, 0.3, 3, 4)] * 2)
    # eval_fn every third row of an epoch, on the model itself
    assert [h_.get("extra") for h_ in result.history] == [None, None, 1, None, None, 2, None, None]
    assert h.eval_models == [model, model]
    # what the shared loop got
    for epoch, call in enumerate(h.unlearn_calls):
        sigma = (0.1, 0.3, 0.3)[epoch]
        assert call["method"] == "lipschitz" and call["forget_loader"] == ["b0"] and call["epochs"] == 1
        assert call["lr"] == 0.123 and call["weight_decay"] == 0.45 and call["betas"] == (0.8, 0.7)
        assert call["eps"] == 1e-3 and call["loss_kwargs"] == {"n_samples": 3, "sigma": sigma}
        assert call["eval_every"] == 1 and call["device"] is dev and call["seed"] == 7 + epoch
        assert call["progress"] is False
    stop_fn = h.unlearn_calls[0]["stop_fn"]
    assert stop_fn(model, 1, None) is False
    assert stop_fn(model, 1, {"stop_acc": 0.1}) is True and stop_fn(model, 1, {"stop_acc": 0.11}) is False
    # the top-k choice per epoch: scored with this epoch's loss on the forget loader, the caller's exclude
    assert [c["k_image"] for c in h.topk_calls] == [2, 3, 3] and [c["k_text"] for c in h.topk_calls] == [2, 4, 4]
    assert all(c["exclude"] == exclude for c in h.topk_calls)
    assert [(c["model"], c["batches"], c["device"]) for c in h.score_calls] == [(model, ["b0"], dev)] * 3
    assert all(c["device"] is dev for c in h.score_calls)
    assert [c["loss_fn"].info for c in h.score_calls] == h.loss_fns
    assert [(n, s, o) for n, s, o, _ in h.loss_fns] == [(3, 0.1, {}), (3, 0.3, {}), (3, 0.3, {})]
    assert [seed for *_, seed in h.loss_fns] == [7, 8, 9]  # torch seeded with seed + epoch before the epoch
    assert [len(e["trainable"]) for e in result.epochs] == [4, 7, 7]
    for e, call in zip(result.epochs, h.unlearn_calls):
        assert call["trainable"] == e["trainable"]
    # stop-set checks: the model, the caller's stop set and options
    assert len(h.stop_calls) == 9 and all(m is model for m, _ in h.stop_calls)
    assert all(kw == dict(tokenizer="tok", classnames=NAMES, templates=TEMPLATES, dataset="syn", indices=[0, 2],
                          device=dev, precision="fp32") for _, kw in h.stop_calls)
    assert h.to_calls == [((dev,), {})]
    # timings: each epoch's within the run's, the run's within the call
    assert 0.0 <= sum(e["seconds"] for e in result.epochs) <= result.seconds <= elapsed
    # weights: epoch 0 undone, epochs 1 and 2 kept (+3 and +2 on their first tensor)
    state = model.state_dict()
    first = result.epochs[1]["trainable"][0]
    kept = before[first].clone()
    for _ in range(5):
        kept += 1.0
    assert torch.equal(state[first], kept)
    assert all(torch.equal(state[n], before[n]) for n in state if n != first)
    assert model.visual.conv1.weight.requires_grad is False and not model.training


def test_project_loop_baseline_one_and_final_accuracy(tiny_clip, monkeypatch):
    model = tiny_clip.model
    # baseline "one": before 0.5; epoch 0 ends at 1.0 (not below 1.0: rolled back), epoch 1 at 0.7 (kept, though
    # above the measured 0.5), epoch 2 at 0.8 (rolled back): schedule of two stages exhausted
    h = Harness(monkeypatch, model, [0.5, 1.0, 0.7, 0.8], unlearn_plans=[(1, False)] * 3)
    result, _ = run(h, k_schedule=[(1, 1), (2, 2)], sigma_schedule=(0.1, 0.3, 0.5), baseline="one", max_epochs=10)
    assert len(h.unlearn_calls) == 3 and not h.own_calls  # baseline does not choose the loop
    assert [e["accepted"] for e in result.epochs] == [False, True, False]
    assert [e["stage"] for e in result.epochs] == [0, 1, 1]
    assert result.initial_acc == 0.5 and result.final_acc == 0.7 and result.accepted_steps == 1
    assert result.reached is False
    # nothing accepted: the final accuracy is the measured one, not the baseline 1.0
    h2 = Harness(monkeypatch, model, [0.5, 1.0], unlearn_plans=[(1, False)])
    result, _ = run(h2, k_schedule=[(1, 1)], sigma_schedule=(0.1,), baseline="one")
    assert result.final_acc == 0.5 and result.accepted_steps == 0 and len(result.epochs) == 1


def test_project_loop_failed_epoch_is_undone_and_stops(tiny_clip, monkeypatch):
    model = tiny_clip.model
    h = Harness(monkeypatch, model, [0.9, 0.5, 0.4], unlearn_plans=[(1, False), (1, True), (1, False)])
    result, _ = run(h, k_schedule=[(1, 1)] * 3, sigma_schedule=(0.1, 0.2, 0.3), max_epochs=5)
    after_0 = copy.deepcopy(h.stop_calls[1][0].state_dict())
    assert len(h.unlearn_calls) == 2 and result is not None
    assert result.failed is True and result.epochs[-1]["failure"] == "non-finite loss at step 1"
    assert "failure" not in result.epochs[0] and [e["accepted"] for e in result.epochs] == [True, False]
    assert result.final_acc == 0.5 and result.steps == 2 and result.accepted_steps == 1
    name = result.epochs[0]["trainable"][0]
    assert torch.equal(model.state_dict()[name], after_0[name])
    # a failure in the very first epoch: recorded on that epoch, the weights as before
    before = copy.deepcopy(model.state_dict())
    h2 = Harness(monkeypatch, model, [0.9, 0.5], unlearn_plans=[(1, True)])
    result, _ = run(h2, k_schedule=[(1, 1)] * 3, sigma_schedule=(0.1, 0.2, 0.3), max_epochs=5)
    assert len(result.epochs) == 1 and result.epochs[0]["failure"] == "non-finite loss at step 1"
    assert result.failed is True and result.final_acc == 0.9
    assert all(torch.equal(v, before[n]) for n, v in model.state_dict().items())


def test_defaults_of_forget_lipschitz(tiny_clip, monkeypatch):
    model = tiny_clip.model
    # every epoch lowers the accuracy a little and never reaches 0.1: the run ends after max_epochs
    accs = [1.0] + [0.99 - 0.01 * i for i in range(40)]
    h = Harness(monkeypatch, model, accs, unlearn_plans=[(1, False)] * 40)
    result = lipschitz.forget_lipschitz(model, forget_loader=["b0"], tokenizer="tok", classnames=NAMES,
                                        templates=TEMPLATES, stop_dataset="syn")
    assert len(h.unlearn_calls) == 30 and len(result.epochs) == 30 and not h.own_calls
    call = h.unlearn_calls[0]
    assert call["lr"] == 5e-5 and call["weight_decay"] == 0.2 and call["betas"] == (0.9, 0.98)
    assert call["eps"] == 1e-6 and call["loss_kwargs"] == {"n_samples": 25, "sigma": 0.1}
    assert [c["seed"] for c in h.unlearn_calls[:3]] == [0, 1, 2] and call["progress"] is True
    assert call["device"] == "cpu" and h.stop_calls[0][1]["device"] == "cpu"
    assert (h.topk_calls[0]["k_image"], h.topk_calls[0]["k_text"]) == (25, 25)  # paper_k_schedule of a ViT
    assert h.topk_calls[0]["exclude"] == layers.paper_b_frozen(model)
    assert result.threshold == 0.1


def test_default_k_schedule_follows_the_models_tower(tiny_resnet_clip, monkeypatch):
    model = tiny_resnet_clip.model
    h = Harness(monkeypatch, model, [0.9, 0.95, 0.95, 0.95], unlearn_plans=[(1, False)] * 3)
    result, _ = run(h, sigma_schedule=(0.1, 0.3, 0.5))
    assert [(e["k_image"], e["k_text"]) for e in result.epochs] == [(5, 5), (7, 7), (10, 12)]


def test_selective_false_trains_every_tower_tensor_and_restores_requires_grad(tiny_clip, monkeypatch):
    model = tiny_clip.model
    model.positional_embedding.requires_grad_(False)
    h = Harness(monkeypatch, model, [0.9, 0.5], unlearn_plans=[(1, False)])
    expected = expected_candidates(model)
    result, _ = run(h, k_schedule=[(1, 1)], sigma_schedule=(0.1,), selective=False, max_epochs=1)
    assert result.epochs[0]["trainable"] == expected and h.unlearn_calls[0]["trainable"] == expected
    assert "logit_scale" not in expected and "positional_embedding" not in expected
    assert not h.score_calls
    assert model.positional_embedding.requires_grad is False and model.logit_scale.requires_grad is True


def test_a_single_stage_schedule_runs_and_an_empty_one_is_refused(tiny_clip, monkeypatch):
    model = tiny_clip.model
    h = Harness(monkeypatch, model, [0.9, 0.5, 0.6], unlearn_plans=[(1, False)] * 2)
    result, _ = run(h, k_schedule=[(1, 1)], sigma_schedule=(0.1, 0.2), max_epochs=5)
    assert [e["accepted"] for e in result.epochs] == [True, False] and result.final_acc == 0.5
    with pytest.raises(ValueError, match=r"^empty schedule: give at least one sigma and one \(k_image, k_text\)$"):
        run(h, k_schedule=[], sigma_schedule=(0.1,))
    with pytest.raises(ValueError, match=r"^unknown exclude preset 'bogus'; valid: 'paper' or a list of name"):
        run(h, k_schedule=[(1, 1)], exclude="bogus")


def test_unknown_precision_is_refused_before_any_check(tiny_clip, monkeypatch):
    h = Harness(monkeypatch, tiny_clip.model, [0.9])
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        run(h, k_schedule=[(1, 1)], sigma_schedule=(0.1,), precision="fp8")
    assert not h.stop_calls


# --------------------------------------------------------------------------- #
# forget_lipschitz, the authors' loop (_own_epoch)
# --------------------------------------------------------------------------- #
AUTHORS = dict(optimizer="adam", rescore="batch", baseline="one", loss_scale="sum", noise_clamp="batch",
               accumulate=3)


def test_authors_loop_arguments_rollback_of_adam_state_and_stop(tiny_clip, monkeypatch):
    model = tiny_clip.model
    # before 0.9 (baseline 1.0); epoch 0: 0.8, 0.7 (kept); epoch 1: 0.75, 0.72 (rolled back with Adam's state);
    # epoch 2: 0.6, 0.3, 0.1 -> stops at the third step, exactly at the threshold (kept, reached)
    accs = [0.9, 0.8, 0.7, 0.75, 0.72, 0.6, 0.3, 0.1]
    h = Harness(monkeypatch, model, accs, plans=[(2, None), (2, None), (5, None)])
    exclude = [r"^visual\.class_embedding$"]
    cands = expected_candidates(model)
    result, _ = run(h, k_schedule=[(2, 3), (4, 5)], sigma_schedule=(0.1, 0.3), n_samples=4, threshold=0.1,
                    max_epochs=10, lr=0.01, betas=(0.8, 0.7), eps=1e-3, weight_decay=0.45, exclude=exclude,
                    seed=5, **AUTHORS)
    assert not h.unlearn_calls and len(h.own_calls) == 3
    # one Adam for the whole run, over every candidate tensor
    assert len(h.opt_calls) == 1
    kind, params, kw = h.opt_calls[0]
    named = dict(model.named_parameters())
    assert kind == "adam" and [id(p) for p in params] == [id(named[n]) for n in cands]
    assert kw == dict(lr=0.01, betas=(0.8, 0.7), eps=1e-3, weight_decay=0.45)
    opt = h.optimizers[0]
    for epoch, call in enumerate(h.own_calls):
        stage = (0, 0, 1)[epoch]
        assert call["optimizer"] is opt and call["forget_loader"] == ["b0"]
        assert call["loss_fn"].info[:3] == (4, (0.1, 0.3)[stage], dict(loss_scale="sum", noise_clamp="batch",
                                                                      precision="fp32"))
        assert call["candidates"] == set(cands) and call["selective"] is True and call["rescore"] == "batch"
        assert call["trainable"] is None
        assert (call["k_image"], call["k_text"]) == ((2, 3), (2, 3), (4, 5))[epoch]
        assert call["exclude"] == exclude and call["accumulate"] == 3 and call["progress"] is False
        assert call["step_offset"] == (0, 2, 4)[epoch] and call["seed"] == 5 + epoch
    assert not h.score_calls
    assert [e["accepted"] for e in result.epochs] == [True, False, True]
    assert [h_["step"] for h_ in result.history] == [1, 2, 3, 4, 5, 6, 7]
    assert [e["trainable"] for e in result.epochs] == [sorted(cands)[:2]] * 3
    assert result.final_acc == 0.1 and result.reached and result.accepted_steps == 5 and result.steps == 7
    assert len(h.stop_calls) == 8 and all(m is model for m, _ in h.stop_calls)  # every check on the model itself
    # Adam's state after the run: epoch 0's state, then epoch 2's three steps (epoch 1 undone): step count 5
    state = opt.state_dict()["state"]
    assert {int(s["step"]) for s in state.values()} == {5}
    # (epoch 2 started from epoch 0's state, not epoch 1's: that would give step 7); the moments are the ones the
    # last epoch left, nothing touched them afterwards
    assert len(h.opt_states) == 3
    ref = h.opt_states[2]["state"]
    for k, s in state.items():
        assert torch.equal(s["exp_avg"], ref[k]["exp_avg"]) and torch.equal(s["exp_avg_sq"], ref[k]["exp_avg_sq"])


def test_authors_loop_with_adamw_makes_a_fresh_optimiser_every_epoch(tiny_clip, monkeypatch):
    model = tiny_clip.model
    h = Harness(monkeypatch, model, [0.9, 0.8, 0.85], plans=[(1, None), (1, None)])
    cands = expected_candidates(model)
    result, _ = run(h, k_schedule=[(1, 1)], sigma_schedule=(0.1,), lr=0.02, betas=(0.5, 0.6), eps=1e-4,
                    weight_decay=0.3, **{**AUTHORS, "optimizer": "adamw"})
    assert [c[0] for c in h.opt_calls] == ["adamw", "adamw"]
    named = dict(model.named_parameters())
    for kind, params, kw in h.opt_calls:
        assert [id(p) for p in params] == [id(named[n]) for n in cands]
        assert kw == dict(lr=0.02, betas=(0.5, 0.6), eps=1e-4, weight_decay=0.3)
    assert [c["optimizer"] for c in h.own_calls] == h.optimizers
    assert [e["accepted"] for e in result.epochs] == [True, False]


def test_authors_loop_failed_epoch_restores_model_and_adam_state(tiny_clip, monkeypatch):
    model = tiny_clip.model
    # epoch 0: one step to 0.5 (kept); epoch 1: a non-finite loss before any check (the accuracy is measured)
    h = Harness(monkeypatch, model, [0.9, 0.5, 0.45], plans=[(1, None), (0, "non-finite loss at step 2")])
    result, _ = run(h, k_schedule=[(1, 1)] * 3, sigma_schedule=(0.1, 0.2, 0.3), max_epochs=5, **AUTHORS)
    assert len(h.own_calls) == 2 and result.failed is True
    assert result.epochs[-1]["failure"] == "non-finite loss at step 2" and result.epochs[-1]["stop_acc"] == 0.45
    assert h.stop_calls[-1][0] is model and result.final_acc == 0.5


def test_authors_stop_reason_that_is_not_a_failure(tiny_clip, monkeypatch):
    model = tiny_clip.model
    h = Harness(monkeypatch, model, [0.9, 0.5, 0.4], plans=[(1, "stop at step 1"), (1, None)])
    result, _ = run(h, k_schedule=[(1, 1)], sigma_schedule=(0.1,), max_epochs=2, **AUTHORS)
    assert result.failed is False and [e["accepted"] for e in result.epochs] == [True, True]


@pytest.mark.parametrize("options, project", [
    (dict(baseline="one"), True),
    (dict(accumulate=2), False),
    (dict(precision="bf16"), False),
    (dict(optimizer="adam"), False),
])
def test_which_loop_runs(tiny_clip, monkeypatch, options, project):
    model = tiny_clip.model
    h = Harness(monkeypatch, model, [0.9, 0.5], plans=[(1, None)], unlearn_plans=[(1, False)])
    run(h, k_schedule=[(1, 1)], sigma_schedule=(0.1,), max_epochs=1, **options)
    assert (len(h.unlearn_calls), len(h.own_calls)) == ((1, 0) if project else (0, 1))
    expected = {} if project else dict(loss_scale="mean", noise_clamp="pixel",
                                        precision=options.get("precision", "fp32"))
    assert h.loss_fns[0][2] == expected
    assert all(kw["precision"] == options.get("precision", "fp32") for _, kw in h.stop_calls)
    if not project:  # rescore="epoch": the authors' epoch gets the tensors chosen on the epoch's scores
        assert h.own_calls[0]["trainable"] == h.topk_out[0] and len(h.topk_out[0]) == 2


# --------------------------------------------------------------------------- #
# The helpers
# --------------------------------------------------------------------------- #
class Recorder:
    """Fakes of metrics.build_classifier / accuracy / membership_inference that record their arguments."""

    def __init__(self, monkeypatch, accs=None):
        self.clf, self.acc, self.mia = [], [], []
        self.accs = accs or {}

        def fake_clf(model, tokenizer, classnames, templates, *, device="cpu", cache=False):
            self.clf.append(dict(model=model, tokenizer=tokenizer, classnames=list(classnames),
                                 templates=list(templates), device=device, cache=cache, training=model.training,
                                 autocast=torch.is_autocast_enabled("cpu")))
            return ("clf", tuple(classnames), tuple(templates))

        def fake_acc(model, classifier, dataset, *, indices=None, batch_size=512, device="cpu"):
            self.acc.append(dict(model=model, classifier=classifier, dataset=dataset, indices=indices,
                                 batch_size=batch_size, device=device, training=model.training,
                                 autocast=torch.is_autocast_enabled("cpu")))
            return self.accs.get((dataset, None if indices is None else tuple(indices)), 0.5)

        def fake_mia(model, classifier, dataset, *, member_idx, nonmember_idx, nonmember_dataset=None,
                     batch_size=512, device="cpu"):
            self.mia.append(dict(model=model, classifier=classifier, dataset=dataset, member_idx=member_idx,
                                 nonmember_idx=nonmember_idx, nonmember_dataset=nonmember_dataset,
                                 batch_size=batch_size, device=device))
            return {"mia": 0.625, "auc_other": 0.0}

        monkeypatch.setattr(metrics, "build_classifier", fake_clf)
        monkeypatch.setattr(metrics, "accuracy", fake_acc)
        monkeypatch.setattr(metrics, "membership_inference", fake_mia)


def test_stop_accuracy_cached_classifier_indices_device_and_autocast(monkeypatch):
    rec = Recorder(monkeypatch, accs={("D", (1, 2)): 0.25, ("D", None): 0.75})
    model = torch.nn.Linear(2, 2).train()
    dev = torch.device("cpu")
    acc = lipschitz.stop_accuracy(model, tokenizer="tok", classnames=NAMES, templates=TEMPLATES, dataset="D",
                                  indices=[1, 2], device=dev, precision="bf16")
    assert acc == 0.25 and model.training
    assert rec.clf == [dict(model=model, tokenizer="tok", classnames=NAMES, templates=TEMPLATES, device=dev,
                            cache=True, training=False, autocast=True)]
    assert rec.acc == [dict(model=model, classifier=("clf", tuple(NAMES), tuple(TEMPLATES)), dataset="D",
                            indices=[1, 2], batch_size=512, device=dev, training=False, autocast=True)]
    # defaults: the CPU, every image, fp32 (no autocast)
    acc = lipschitz.stop_accuracy(model.eval(), tokenizer="tok", classnames=NAMES, templates=TEMPLATES, dataset="D")
    assert acc == 0.75 and not model.training
    assert (rec.clf[1]["device"], rec.clf[1]["cache"], rec.clf[1]["autocast"]) == ("cpu", True, False)
    assert (rec.acc[1]["indices"], rec.acc[1]["device"], rec.acc[1]["autocast"]) == (None, "cpu", False)


def test_evaluate_class_forgetting_scores_every_set_with_its_own_classifier(monkeypatch):
    accs = {("test", (0, 1)): 0.125, ("test", (2, 3, 4)): 0.875, ("D1", (5,)): 0.25, ("D2", None): 0.5,
            ("D3", None): 0.75}
    rec = Recorder(monkeypatch, accs=accs)
    model = torch.nn.Linear(2, 2).train()
    others = [dict(name="o1", dataset="D1", indices=[5], classnames=["x", "y"], templates=["u {}"]),
              dict(name="o2", dataset="D2"), dict(name="o3", dataset="D3", classnames=["z"])]
    out = paper_b.evaluate_class_forgetting(model, tokenizer="tok", classnames=NAMES, templates=TEMPLATES,
                                              dataset="test", forget_idx=[0, 1], retain_idx=[2, 3, 4],
                                              other_sets=others, member_dataset="train", member_idx=[7, 8],
                                              batch_size=64, device="dev0")
    assert out == {"forget_acc": 0.125, "retain_acc": 0.875, "other_acc": 0.5, "other_acc/o1": 0.25,
                   "other_acc/o2": 0.5, "other_acc/o3": 0.75, "mia": 0.625}
    assert model.training
    main = ("clf", tuple(NAMES), tuple(TEMPLATES))
    assert [(c["model"], c["tokenizer"], c["classnames"], c["templates"], c["device"], c["training"])
            for c in rec.clf] == [(model, "tok", NAMES, TEMPLATES, "dev0", False),
                                  (model, "tok", ["x", "y"], ["u {}"], "dev0", False),
                                  (model, "tok", ["z"], TEMPLATES, "dev0", False)]
    assert [(a["model"], a["classifier"], a["dataset"], a["indices"], a["batch_size"], a["device"])
            for a in rec.acc] == [(model, main, "test", [0, 1], 64, "dev0"), (model, main, "test", [2, 3, 4], 64, "dev0"),
                                  (model, ("clf", ("x", "y"), ("u {}",)), "D1", [5], 64, "dev0"),
                                  (model, main, "D2", None, 64, "dev0"),
                                  (model, ("clf", ("z",), tuple(TEMPLATES)), "D3", None, 64, "dev0")]
    assert rec.mia == [dict(model=model, classifier=main, dataset="train", member_idx=[7, 8], nonmember_idx=[0, 1],
                            nonmember_dataset="test", batch_size=64, device="dev0")]
    # no other set, members from the evaluation set itself; the defaults: batch 512 on the CPU
    out = paper_b.evaluate_class_forgetting(model, tokenizer="tok", classnames=NAMES, templates=TEMPLATES,
                                              dataset="test", forget_idx=[0, 1], retain_idx=[2, 3, 4], member_idx=[9])
    assert out == {"forget_acc": 0.125, "retain_acc": 0.875, "mia": 0.625}
    assert (rec.mia[1]["dataset"], rec.mia[1]["member_idx"], rec.mia[1]["batch_size"], rec.mia[1]["device"]) == (
        "test", [9], 512, "cpu")
    assert rec.acc[-1]["batch_size"] == 512 and rec.clf[-1]["device"] == "cpu"
    out = paper_b.evaluate_class_forgetting(model, tokenizer="tok", classnames=NAMES, templates=TEMPLATES,
                                              dataset="test", forget_idx=[0, 1], retain_idx=[2, 3, 4])
    assert out == {"forget_acc": 0.125, "retain_acc": 0.875} and len(rec.mia) == 2


def test_lipschitz_loss_noise_bounds_scale_and_autocast(tiny_clip, tiny_batch, monkeypatch):
    model = tiny_clip.model
    seen = []

    def spy(m, images, texts, *, noise, bounds=None, **kwargs):
        seen.append(dict(model=m, images=images, texts=texts, noise=noise, bounds=bounds, kwargs=kwargs,
                         autocast=torch.is_autocast_enabled("cpu")))
        return torch.tensor(2.0), {"lipschitz": 2.0}

    monkeypatch.setattr(lipschitz_authors, "lipschitz_penalty", spy)
    images = tiny_batch["images"]
    torch.manual_seed(11)
    loss, logs = lipschitz.lipschitz_loss(model, tiny_batch, n_samples=3, sigma=0.5)  # defaults: mean, pixel, fp32
    torch.manual_seed(11)
    noise = 0.5 * torch.randn(4, 3, 3, 32, 32)
    assert loss.item() == 2.0 and logs == {"lipschitz": 2.0}
    s = seen[0]
    assert s["model"] is model and s["images"] is images and s["texts"] is tiny_batch["texts"]
    assert torch.equal(s["noise"], noise) and not s["autocast"] and s["kwargs"] == {}
    mean = model.visual.preprocess_cfg["mean"]
    std = model.visual.preprocess_cfg["std"]
    lo, hi = s["bounds"]
    assert torch.allclose(lo.flatten(), torch.tensor([(0 - m) / d for m, d in zip(mean, std)]))
    assert torch.allclose(hi.flatten(), torch.tensor([(1 - m) / d for m, d in zip(mean, std)]))
    # the authors' form: the batch's scalar range, the sum (B / 2 times the mean); bf16 autocast
    loss, _ = lipschitz.lipschitz_loss(model, tiny_batch, n_samples=2, sigma=0.1, loss_scale="sum",
                                       noise_clamp="batch", precision="bf16")
    assert loss.item() == 4.0 and seen[1]["autocast"] and seen[1]["noise"].shape == (4, 2, 3, 32, 32)
    lo, hi = seen[1]["bounds"]
    assert lo.item() == images.min().item() and hi.item() == images.max().item()
    with pytest.raises(ValueError, match=r"^unknown loss_scale 'max'; valid: mean, sum$"):
        lipschitz.lipschitz_loss(model, tiny_batch, n_samples=2, sigma=0.1, loss_scale="max")
    with pytest.raises(ValueError, match=r"^unknown noise_clamp 'none'; valid: pixel, batch$"):
        lipschitz.lipschitz_loss(model, tiny_batch, n_samples=2, sigma=0.1, noise_clamp="none")


def test_lipschitz_fn_picks_the_registered_loss_or_the_authors_form(monkeypatch):
    calls = []
    monkeypatch.setitem(losses.LOSSES, "lipschitz", lambda *a, **k: calls.append(("registered", a, k)) or "r")
    monkeypatch.setattr(lipschitz, "lipschitz_loss", lambda *a, **k: calls.append(("authors", a, k)) or "a")
    assert lipschitz._lipschitz_fn(3, 0.5)("M", "B") == "r"
    assert lipschitz._lipschitz_fn(4, 0.7, loss_scale="sum", noise_clamp="batch", precision="bf16")("M", "B") == "a"
    assert calls == [("registered", ("M", None, "B", None), dict(n_samples=3, sigma=0.5)),
                     ("authors", ("M", "B"), dict(n_samples=4, sigma=0.7, loss_scale="sum", noise_clamp="batch",
                                                  precision="bf16"))]


def test_check_options_messages():
    ok = dict(lipschitz.PROJECT_OPTIONS)
    lipschitz._check_options(ok)
    with pytest.raises(ValueError, match=r"^unknown optimizer 'sgd'; valid: adamw, adam$"):
        lipschitz._check_options({**ok, "optimizer": "sgd"})
    with pytest.raises(ValueError, match=r"^accumulate must be >= 1, got 0$"):
        lipschitz._check_options({**ok, "accumulate": 0})


def test_compute_avg_gain_with_a_slash_in_a_dataset_name():
    reference = {"forget_acc": 0.5, "retain_acc": 0.5, "other_acc/imagenet/sketch": 0.5}
    result = {"forget_acc": 0.25, "retain_acc": 0.375, "other_acc/imagenet/sketch": 0.25}
    # (0.25 / 0.5 + (0.5 - 0.375) / 0.5 + (0.5 - 0.25) / 0.5) / 3
    assert lipschitz.compute_avg_gain(result, reference) == pytest.approx((0.5 + 0.25 + 0.5) / 3, abs=1e-12)


def test_freeze_batch_norm_freezes_and_names_every_batch_norm_tensor(tiny_resnet_clip):
    model = tiny_resnet_clip.model.train()
    bn = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    expected = [f"{name}.{p}" for name, m in bn for p in ("weight", "bias")]
    frozen = lipschitz._freeze_batch_norm(model)
    assert bn and frozen == expected
    params = dict(model.named_parameters())
    assert all(not params[n].requires_grad for n in expected)
    assert all(p.requires_grad for n, p in params.items() if n not in expected)
    assert all(not m.training for _, m in bn) and model.visual.conv1.training
