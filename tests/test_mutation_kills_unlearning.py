"""The unlearning loop: checks written for the mutants that survived the other tests (benchmarks/mutation.md).

They pin what ``unlearning.unlearn`` promises around the loss: the AdamW steps and their settings, the
step count, the batches each step draws, the evaluation and checkpoint cadence, selection and its ties,
the non-finite-loss stop, resume (the tracker's state, the settings check and its messages), the
progress bar, and the pair loader's epochs. The runs use a two-weight toy model and fake losses that
record what they were called with, so every expected value is worked out by hand or by a naive
AdamW loop in Python floats; each test runs in milliseconds.
"""

from __future__ import annotations

import hashlib
import math
import struct

import pytest
import torch

from clipunlearn import losses, unlearning
from clipunlearn.unlearning import PairLoader, UnlearnResult, make_pair_loader, unlearn

from .formula_helpers import ListDataset


# --------------------------------------------------------------------------- #
# A toy model, batches and a recording loss
# --------------------------------------------------------------------------- #
class Toy(torch.nn.Module):
    """Two weights ``w`` and a bias ``b`` (the toy losses never touch ``b`` unless asked)."""

    def __init__(self, w=(0.0, 0.0), b=0.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w))
        self.b = torch.nn.Parameter(torch.tensor(b))


def gbatch(i, g):
    """Batch number ``i`` whose loss is ``sum(g * w)`` (gradient ``g``)."""
    return {"id": i, "g": torch.tensor(g)}


class Recorder:
    """A loss ``sum(g * w)`` of the forget batch (the retain batch without one) that records each call.

    ``nan_at``: the calls (0-based) whose loss is NaN. Every step logs ``{"w0": w[0]}``.
    """

    def __init__(self, nan_at=()):
        self.calls, self.nan_at = [], set(nan_at)

    def __call__(self, model, original, forget_batch, retain_batch, **kwargs):
        self.calls.append({"forget": forget_batch, "retain": retain_batch, "kwargs": kwargs, "original": original,
                           "training": model.training, "rand": torch.rand(())})
        batch = forget_batch if forget_batch is not None else retain_batch
        loss = (model.w * batch["g"]).sum()
        if len(self.calls) - 1 in self.nan_at:
            loss = loss * float("nan")
        return loss, {"w0": model.w[0].item()}

    def ids(self, key="forget"):
        return [None if c[key] is None else c[key]["id"] for c in self.calls]


@pytest.fixture
def toy_loss(monkeypatch):
    """Register a ``Recorder`` as method ``"toy"`` (for this test only) and return it."""
    rec = Recorder()
    monkeypatch.setitem(losses.LOSSES, "toy", rec)
    return rec


def ones(n):
    """``n`` forget batches with gradient (1, -1): each AdamW step of lr 1 moves w by (-1, +1) exactly."""
    return [gbatch(i, [1.0, -1.0]) for i in range(n)]


def w_of(model):
    return model.w.detach().tolist()


# --------------------------------------------------------------------------- #
# Naive AdamW (decoupled weight decay, bias-corrected moments), Python floats
# --------------------------------------------------------------------------- #
def naive_adamw(w, grads, *, lr, betas, eps, weight_decay):
    """Weights after one AdamW step per gradient in ``grads`` (each a list like ``w``); all the iterates."""
    b1, b2 = betas
    w, m, v, out = list(w), [0.0] * len(w), [0.0] * len(w), []
    for t, g in enumerate(grads, start=1):
        for i, gi in enumerate(g):
            w[i] -= lr * weight_decay * w[i]
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            m_hat, v_hat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
            w[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
        out.append(list(w))
    return out


# --------------------------------------------------------------------------- #
# UnlearnResult
# --------------------------------------------------------------------------- #
def test_unlearn_result_summary_and_evals_report_the_run():
    result = UnlearnResult(history=[{"step": 1, "loss": 0.5}, {"step": 1, "eval": {"acc": 0.25}},
                                    {"step": 2, "loss": 0.0}, {"step": 2, "eval": {"acc": 0.75, "score": 1.0}}],
                           steps=2, best_step=1, seconds=1.5, stopped_early="stop_fn at step 2", failed=True)
    assert result.summary() == {"steps": 2, "best_step": 1, "seconds": 1.5, "stopped_early": "stop_fn at step 2",
                                "failed": True}
    assert result.evals == [{"step": 1, "acc": 0.25}, {"step": 2, "acc": 0.75, "score": 1.0}]
    assert UnlearnResult().summary() == {"steps": 0, "best_step": None, "seconds": 0.0, "stopped_early": None,
                                         "failed": False}
    assert UnlearnResult().evals == []


# --------------------------------------------------------------------------- #
# The optimiser and its settings
# --------------------------------------------------------------------------- #
def test_unlearn_takes_adamw_steps_with_the_given_hyperparameters(toy_loss):
    grads = [[0.5, -2.0], [1.0, 0.25], [-0.75, 1.5]]
    model = Toy(w=(1.0, -0.5), b=2.0)
    settings = dict(lr=0.1, betas=(0.5, 0.75), eps=0.2, weight_decay=0.3)
    result = unlearn(model, method="toy", forget_loader=[gbatch(i, g) for i, g in enumerate(grads)], progress=False,
                     **settings)
    expected = naive_adamw([1.0, -0.5], grads, **settings)
    assert w_of(model) == pytest.approx(expected[-1], abs=1e-6)
    # the losses are those of the weights before each step; b gets no gradient, so AdamW leaves it alone
    before = [[1.0, -0.5]] + expected[:-1]
    assert [h["loss"] for h in result.history] == pytest.approx(
        [sum(g * w for g, w in zip(gs, ws)) for gs, ws in zip(grads, before)], abs=1e-6)
    assert model.b.item() == 2.0


def test_unlearn_default_optimiser_settings(toy_loss, monkeypatch):
    made = []
    real = unlearning.make_adamw

    def spy(params, **kwargs):
        made.append((list(params), kwargs))
        return real(params, **kwargs)

    monkeypatch.setattr(unlearning, "make_adamw", spy)
    model = Toy()
    result = unlearn(model, method="toy", forget_loader=ones(3), progress=False)
    [(params, kwargs)] = made
    assert kwargs == {"lr": 1e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    assert params[0] is model.w and params[1] is model.b and len(params) == 2
    assert result.steps == 3  # epochs=1: one pass over the forget loader
    expected = naive_adamw([0.0, 0.0], [[1.0, -1.0]] * 3, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    assert w_of(model) == pytest.approx(expected[-1], abs=1e-9)


def test_unlearn_drops_the_gradient_of_a_weight_the_loss_stops_using(monkeypatch):
    # step 1 uses w[0] only, the next steps b only: w[0]'s gradient is None again from step 2 on
    # (zero_grad(set_to_none=True)), so AdamW leaves it where step 1 put it (no momentum drift)
    def loss(model, original, fb, rb):
        return (model.w[0] if fb["id"] == 0 else model.b) * 1.0, {}

    monkeypatch.setitem(losses.LOSSES, "switch", loss)
    model = Toy()
    unlearn(model, method="switch", forget_loader=[{"id": 0}, {"id": 1}, {"id": 2}], lr=1.0, progress=False)
    assert w_of(model) == pytest.approx([-1.0, 0.0], abs=1e-6) and model.w[1].item() == 0.0
    assert model.b.item() == pytest.approx(-2.0, abs=1e-6)


def test_unlearn_steps_epochs_over_the_forget_loader_and_cycles_the_retain_loader(toy_loss):
    forget = ones(3)
    retain = [gbatch(10 + i, [0.0, 0.0]) for i in range(2)]
    result = unlearn(Toy(), method="toy", forget_loader=forget, retain_loader=retain, epochs=2, lr=1.0,
                     progress=False)
    assert result.steps == 6
    assert toy_loss.ids("forget") == [0, 1, 2, 0, 1, 2]
    assert toy_loss.ids("retain") == [10, 11, 10, 11, 10, 11]
    assert all(c["forget"] is forget[i % 3] for i, c in enumerate(toy_loss.calls))  # the loader's own batches


def test_unlearn_with_only_a_retain_loader_steps_over_it(toy_loss):
    retain = ones(2)
    model = Toy()
    result = unlearn(model, method="toy", retain_loader=retain, epochs=2, lr=1.0, progress=False)
    assert result.steps == 4 and toy_loss.ids("forget") == [None] * 4 and toy_loss.ids("retain") == [0, 1, 0, 1]
    assert w_of(model) == [-4.0, 4.0]


def test_unlearn_without_any_loader_says_what_it_needs(toy_loss):
    with pytest.raises(ValueError) as err:
        unlearn(Toy(), method="toy", progress=False)
    assert str(err.value) == "unlearn needs a forget_loader or a retain_loader"
    assert toy_loss.calls == []


def test_unlearn_passes_batches_through_untouched_without_a_device(monkeypatch):
    # a loader may yield anything (here tuples); with device=None the loss gets the very objects
    seen = []

    def loss(model, original, fb, rb):
        seen.append((fb, rb))
        return (model.w * fb[1]).sum(), {}

    monkeypatch.setitem(losses.LOSSES, "tuples", loss)
    forget = [("f0", torch.tensor([1.0, 0.0])), ("f1", torch.tensor([0.0, 1.0]))]
    retain = [("r0", torch.tensor([2.0, 2.0]))]
    unlearn(Toy(), method="tuples", forget_loader=forget, retain_loader=retain, lr=1.0, progress=False)
    assert [(f is forget[i], r is retain[0]) for i, (f, r) in enumerate(seen)] == [(True, True), (True, True)]


def test_unlearn_moves_the_tensors_of_each_batch_to_the_device(monkeypatch):
    # the meta device shows the move on a CPU-only machine; the loss itself uses only the weights
    seen = []

    def loss(model, original, fb, rb):
        seen.append({k: (v.device.type if isinstance(v, torch.Tensor) else v) for b in (fb, rb) for k, v in b.items()})
        return model.w.sum(), {}

    monkeypatch.setitem(losses.LOSSES, "meta", loss)
    forget = [{"images": torch.ones(2), "name": "f"}]
    retain = [{"labels": torch.zeros(2), "tag": 7}]
    unlearn(Toy(), method="meta", forget_loader=forget, retain_loader=retain, device="meta", lr=1.0, progress=False)
    assert seen == [{"images": "meta", "name": "f", "labels": "meta", "tag": 7}]
    assert forget[0]["images"].device.type == "cpu"  # the loader's batch is not changed


def test_unlearn_keeps_the_model_in_eval_mode_and_gives_the_loss_a_frozen_original(toy_loss):
    model = Toy(w=(1.0, 2.0))
    model.train()
    unlearn(model, method="toy", forget_loader=ones(2), lr=1.0, loss_kwargs={"alpha": 0.5}, progress=False)
    assert [c["training"] for c in toy_loss.calls] == [False, False] and not model.training
    first, second = toy_loss.calls
    original = first["original"]
    assert original is second["original"] and original is not model
    assert original.w.tolist() == [1.0, 2.0] and not original.w.requires_grad and not original.training
    assert first["kwargs"] == {"alpha": 0.5}
    given = Toy(w=(5.0, 5.0))
    unlearn(model, method="toy", forget_loader=ones(1), original=given, lr=1.0, progress=False)
    assert toy_loss.calls[-1]["original"] is given and given.w.tolist() == [5.0, 5.0]


def test_unlearn_trains_the_parameters_a_callable_picks(monkeypatch):
    asked = []

    def only_b(name, param):
        asked.append((name, tuple(param.shape)))
        return name == "b" and param.ndim == 0

    model = Toy(w=(1.0, 1.0), b=0.0)

    def loss(model, original, fb, rb):
        return (model.w * fb["g"]).sum() + model.b, {}

    monkeypatch.setitem(losses.LOSSES, "toy_b", loss)
    unlearn(model, method="toy_b", forget_loader=ones(2), trainable=only_b, lr=1.0, progress=False)
    assert asked == [("w", (2,)), ("b", ())]
    assert w_of(model) == [1.0, 1.0] and model.b.item() == pytest.approx(-2.0, abs=1e-6)


def test_unlearn_trainable_errors_name_the_problem(toy_loss):
    with pytest.raises(ValueError) as err:
        unlearn(Toy(), method="toy", forget_loader=ones(1), trainable=lambda n, p: False, progress=False)
    assert str(err.value) == "no trainable parameters selected"
    with pytest.raises(ValueError) as err:
        unlearn(Toy(), method="toy", forget_loader=ones(1), trainable=["w", "z1", "z2", "z3", "z4", "z5", "z6"],
                progress=False)
    assert str(err.value) == "unknown parameter names in trainable: ['z1', 'z2', 'z3', 'z4', 'z5']"


def test_unlearn_seeds_torch_per_step_from_seed_and_step(toy_loss):
    unlearn(Toy(), method="toy", forget_loader=ones(3), seed=2, lr=1.0, progress=False)
    unlearn(Toy(), method="toy", forget_loader=ones(2), lr=1.0, progress=False)  # default seed 0
    expected = [torch.rand((), generator=torch.Generator().manual_seed(seed * 1_000_003 + s))
                for seed, s in [(2, 0), (2, 1), (2, 2), (0, 0), (0, 1)]]
    assert [c["rand"].item() for c in toy_loss.calls] == [e.item() for e in expected]


def test_unlearn_runs_the_loss_under_autocast_of_the_batch_device(toy_loss, monkeypatch):
    from clipunlearn import metrics

    used = []
    real = metrics.autocast

    def spy(device, precision="fp32"):
        used.append((str(device), precision))
        return real(device, precision)

    monkeypatch.setattr(unlearning, "autocast", spy)
    unlearn(Toy(), method="toy", forget_loader=ones(2), lr=1.0, progress=False)
    assert used == [("cpu", "fp32")] * 3  # no device: the model's; the first call checks the precision
    used.clear()
    toy_loss.calls.clear()

    def weights_only(model, original, fb, rb):  # the batches are on the meta device: use the weights only
        return model.w.sum(), {}

    monkeypatch.setitem(losses.LOSSES, "toy", weights_only)
    unlearn(Toy(), method="toy", forget_loader=ones(2), device="meta", precision="fp32", lr=1.0, progress=False)
    assert used == [("meta", "fp32")] * 3


def test_unlearn_rejects_an_unknown_precision_before_any_work(toy_loss, tmp_path):
    unlearn(Toy(), method="toy", forget_loader=ones(1), checkpoint_dir=tmp_path, progress=False)
    ev = Evals()
    with pytest.raises(ValueError, match="unknown precision 'fp8'; valid: fp32, bf16, fp16, auto"):
        unlearn(Toy(), method="toy", forget_loader=ones(2), precision="fp8", eval_fn=ev, eval_at_start=True,
                checkpoint_dir=tmp_path, resume="restart", progress=False)
    assert ev.n == 0 and len(toy_loss.calls) == 1 and (tmp_path / "state.pt").exists()


def test_unlearn_logs_step_loss_and_the_loss_logs(toy_loss):
    result = unlearn(Toy(), method="toy", forget_loader=ones(3), lr=1.0, progress=False)
    # w = (-k, k) before step k+1; loss = w0 - w1 = -2k
    assert [sorted(h) for h in result.history] == [["loss", "step", "w0"]] * 3
    assert [h["step"] for h in result.history] == [1, 2, 3]
    assert [h["loss"] for h in result.history] == pytest.approx([0.0, -2.0, -4.0], abs=1e-6)
    assert [h["w0"] for h in result.history] == pytest.approx([0.0, -1.0, -2.0], abs=1e-6)
    assert result.steps == 3 and result.best_step is None and result.stopped_early is None and not result.failed


# --------------------------------------------------------------------------- #
# Evaluation cadence, selection, stop_fn, the non-finite stop
# --------------------------------------------------------------------------- #
class Evals:
    """An ``eval_fn`` returning ``{"n": its call count}`` plus ``scores[n - 1]`` as ``"score"`` when given."""

    def __init__(self, scores=None):
        self.scores, self.n = scores, 0

    def __call__(self, model):
        self.n += 1
        return {"n": self.n} if self.scores is None else {"n": self.n, "score": self.scores[self.n - 1]}


def steps_and_evals(result):
    """The history as ``("loss", step)`` / ``("eval", step, n)`` entries."""
    return [("eval", h["step"], h["eval"].get("n")) if "eval" in h else ("loss", h["step"]) for h in result.history]


def test_unlearn_evaluates_every_eval_every_steps_and_once_at_the_end(toy_loss):
    ev = Evals()
    result = unlearn(Toy(), method="toy", forget_loader=ones(5), eval_fn=ev, eval_every=2, lr=1.0, progress=False)
    assert steps_and_evals(result) == [("loss", 1), ("loss", 2), ("eval", 2, 1), ("loss", 3), ("loss", 4),
                                       ("eval", 4, 2), ("loss", 5), ("eval", 5, 3)]
    assert result.evals == [{"step": 2, "n": 1}, {"step": 4, "n": 2}, {"step": 5, "n": 3}]
    # the last step is evaluated once, by the final evaluation
    ev = Evals()
    result = unlearn(Toy(), method="toy", forget_loader=ones(4), eval_fn=ev, eval_every=2, lr=1.0, progress=False)
    assert [(e["step"], e["n"]) for e in result.evals] == [(2, 1), (4, 2)] and ev.n == 2
    # no eval_every: only the end; eval_at_start adds step 0
    ev = Evals()
    result = unlearn(Toy(), method="toy", forget_loader=ones(3), eval_fn=ev, eval_at_start=True, lr=1.0,
                     progress=False)
    assert steps_and_evals(result) == [("eval", 0, 1), ("loss", 1), ("loss", 2), ("loss", 3), ("eval", 3, 2)]


def test_unlearn_does_not_evaluate_a_step_twice_when_stop_fn_stops_after_an_evaluation(toy_loss):
    ev = Evals()
    result = unlearn(Toy(), method="toy", forget_loader=ones(6), eval_fn=ev, eval_every=2, lr=1.0,
                     stop_fn=lambda m, step, e: step == 4, progress=False)
    assert steps_and_evals(result) == [("loss", 1), ("loss", 2), ("eval", 2, 1), ("loss", 3), ("loss", 4),
                                       ("eval", 4, 2)]
    assert ev.n == 2 and result.steps == 4 and result.stopped_early == "stop_fn at step 4" and not result.failed
    # stopped after a step that was not evaluated: the end evaluates it
    ev = Evals()
    result = unlearn(Toy(), method="toy", forget_loader=ones(6), eval_fn=ev, eval_every=2, lr=1.0,
                     stop_fn=lambda m, step, e: step == 3, progress=False)
    assert steps_and_evals(result)[-2:] == [("loss", 3), ("eval", 3, 2)] and result.stopped_early == "stop_fn at step 3"


def test_unlearn_without_steps_evaluates_step_zero_once(toy_loss):
    for at_start in (False, True):
        ev = Evals()
        model = Toy(w=(1.0, 2.0))
        result = unlearn(model, method="toy", forget_loader=ones(2), max_steps=0, eval_fn=ev, eval_at_start=at_start,
                         lr=1.0, progress=False)
        assert result.history == [{"step": 0, "eval": {"n": 1}}] and ev.n == 1
        assert result.steps == 0 and toy_loss.calls == [] and w_of(model) == [1.0, 2.0]


def test_unlearn_passes_stop_fn_the_model_the_step_and_the_last_evaluation(toy_loss):
    seen = []
    model = Toy()

    def stop_fn(m, step, last):
        seen.append((m is model, step, dict(last)))
        return False

    result = unlearn(model, method="toy", forget_loader=ones(4), eval_fn=Evals(), eval_every=2, stop_fn=stop_fn,
                     lr=1.0, progress=False)
    assert seen == [(True, 1, {}), (True, 2, {"n": 1}), (True, 3, {"n": 1}), (True, 4, {"n": 1})]
    assert result.stopped_early is None and result.steps == 4


def test_unlearn_keeps_the_best_step_by_validation_score_earlier_on_ties(toy_loss):
    # step 0 (eval_at_start) scores highest but is never selected; steps 1 and 2 tie after rounding
    # to metrics.SCORE_DECIMALS (0.50004 -> 0.5): the earlier one wins, and its weights come back
    ev = Evals(scores=[9.0, 0.5, 0.50004, 0.2])
    model = Toy()
    result = unlearn(model, method="toy", forget_loader=ones(3), eval_fn=ev, eval_every=1, eval_at_start=True,
                     select_fn=lambda e: e["score"], lr=1.0, progress=False)
    assert [e["step"] for e in result.evals] == [0, 1, 2, 3]
    assert result.best_step == 1 and w_of(model) == pytest.approx([-1.0, 1.0], abs=1e-6)
    # a strictly better later score wins
    ev = Evals(scores=[0.5, 0.5001, 0.2])
    model = Toy()
    result = unlearn(model, method="toy", forget_loader=ones(3), eval_fn=ev, eval_every=1,
                     select_fn=lambda e: e["score"], lr=1.0, progress=False)
    assert result.best_step == 2 and w_of(model) == pytest.approx([-2.0, 2.0], abs=1e-6)


def test_unlearn_without_select_fn_keeps_the_last_weights(toy_loss):
    model = Toy()
    result = unlearn(model, method="toy", forget_loader=ones(3), eval_fn=Evals(scores=[5.0, 1.0, 0.0]), eval_every=1,
                     lr=1.0, progress=False)
    assert result.best_step is None and len(result.evals) == 3
    assert w_of(model) == pytest.approx([-3.0, 3.0], abs=1e-6)


def test_unlearn_stops_on_a_non_finite_loss_and_restores_the_last_evaluated_state(monkeypatch):
    # no eval_fn: the eval_every steps still log an (empty) evaluation and mark the state as good
    rec = Recorder(nan_at={4})
    monkeypatch.setitem(losses.LOSSES, "toy", rec)
    model = Toy()
    with pytest.warns(UserWarning) as warned:
        result = unlearn(model, method="toy", forget_loader=ones(6), eval_every=2, lr=1.0, progress=False)
    assert [str(w.message) for w in warned] == ["toy: non-finite loss at step 4; restoring the last good state"]
    assert result.evals == [{"step": 2}, {"step": 4}]
    assert result.steps == 4 and result.failed and result.stopped_early == "non-finite loss at step 4"
    assert len(rec.calls) == 5 and w_of(model) == pytest.approx([-4.0, 4.0], abs=1e-6)


def test_unlearn_after_a_non_finite_loss_skips_the_final_evaluation_and_restores_the_best(monkeypatch):
    rec = Recorder(nan_at={3})
    monkeypatch.setitem(losses.LOSSES, "toy", rec)
    ev = Evals(scores=[1.0, 3.0, 2.0, 99.0])
    model = Toy()
    with pytest.warns(UserWarning, match="non-finite loss at step 3"):
        result = unlearn(model, method="toy", forget_loader=ones(5), eval_fn=ev, eval_every=1,
                         select_fn=lambda e: e["score"], lr=1.0, progress=False)
    assert ev.n == 3 and [e["step"] for e in result.evals] == [1, 2, 3]
    assert result.failed and result.best_step == 2 and w_of(model) == pytest.approx([-2.0, 2.0], abs=1e-6)


def test_unlearn_reports_its_wall_time_from_perf_counter(toy_loss, monkeypatch):
    clock = iter([10.0, 12.5])
    monkeypatch.setattr(unlearning, "time", type("FakeTime", (), {"perf_counter": staticmethod(lambda: next(clock))}))
    result = unlearn(Toy(), method="toy", forget_loader=ones(2), lr=1.0, progress=False)
    assert result.seconds == 2.5


# --------------------------------------------------------------------------- #
# Checkpoints and resume
# --------------------------------------------------------------------------- #
class Interrupted(Exception):
    """Stands for a crash or a killed kernel in the middle of a run."""


def run(ckpt_dir, *, steps=5, interrupt_at=None, seen=None, eval_every=2, scores=None, **kwargs):
    """A toy run with a checkpoint every step; ``interrupt_at``: crash right after that step's checkpoint.

    ``seen`` collects ``(step, last_eval)`` of every ``stop_fn`` call. Scores are read off the weights
    (``w[1]`` = the step count), so an interrupted and resumed run scores like an uninterrupted one.
    """
    model = Toy()

    def stop_fn(m, step, last):
        if seen is not None:
            seen.append((step, dict(last)))
        if step == interrupt_at:
            raise Interrupted
        return False

    def eval_fn(m):
        at = round(m.w[1].item())
        return {"at": at} if scores is None else {"at": at, "score": scores[at]}

    select_fn = None if scores is None else (lambda e: e["score"])
    result = unlearn(model, method="toy", forget_loader=ones(steps), eval_fn=eval_fn, eval_every=eval_every,
                     select_fn=select_fn, stop_fn=stop_fn, checkpoint_dir=ckpt_dir, checkpoint_every=1, lr=1.0,
                     **{"progress": False, **kwargs})
    return model, result


def test_resume_keeps_the_best_step_and_what_stop_fn_sees(toy_loss, tmp_path):
    scores = {2: 0.9, 4: 0.5, 5: 0.7}
    full_seen = []
    full, full_result = run(None, scores=scores, seen=full_seen)
    assert full_result.best_step == 2 and w_of(full) == pytest.approx([-2.0, 2.0], abs=1e-6)
    with pytest.raises(Interrupted):
        run(tmp_path, scores=scores, interrupt_at=2)
    seen = []
    resumed, result = run(tmp_path, scores=scores, seen=seen)
    assert result.best_step == 2 and w_of(resumed) == w_of(full)
    assert result.history == full_result.history and result.steps == 5
    assert seen == full_seen[2:] and seen[0] == (3, {"at": 2, "score": 0.9})  # the last evaluation before the crash


def test_resume_before_any_evaluation_gives_stop_fn_an_empty_evaluation(toy_loss, tmp_path):
    full_seen = []
    run(None, eval_every=3, seen=full_seen)
    with pytest.raises(Interrupted):
        run(tmp_path, eval_every=3, interrupt_at=1)
    seen = []
    run(tmp_path, eval_every=3, seen=seen)
    assert seen == full_seen[1:] and seen[0] == (2, {})


def test_resume_then_a_non_finite_loss_restores_the_resumed_state(toy_loss, tmp_path, monkeypatch):
    with pytest.raises(Interrupted):
        run(tmp_path, eval_every=None, interrupt_at=2)
    rec = Recorder(nan_at={0})
    monkeypatch.setitem(losses.LOSSES, "toy", rec)
    with pytest.warns(UserWarning, match="non-finite loss at step 2"):
        model, result = run(tmp_path, eval_every=None)
    assert result.failed and result.steps == 2 and result.stopped_early == "non-finite loss at step 2"
    assert w_of(model) == pytest.approx([-2.0, 2.0], abs=1e-6)


def test_resume_of_a_run_that_stop_fn_ended_returns_it_as_it_ended(toy_loss, tmp_path):
    model = Toy()
    first = unlearn(model, method="toy", forget_loader=ones(5), stop_fn=lambda m, step, e: step == 2,
                    checkpoint_dir=tmp_path, lr=1.0, progress=False)
    assert first.steps == 2 and first.stopped_early == "stop_fn at step 2"
    calls = len(toy_loss.calls)
    again_model = Toy()
    again = unlearn(again_model, method="toy", forget_loader=ones(5), checkpoint_dir=tmp_path, lr=1.0, progress=False)
    assert len(toy_loss.calls) == calls  # no training
    assert again.steps == 2 and again.stopped_early == "stop_fn at step 2" and not again.failed
    assert again.history == first.history and w_of(again_model) == w_of(model)


def test_checkpoint_file_holds_the_run_state_and_settings(toy_loss, tmp_path):
    model = Toy()
    unlearn(model, method="toy", forget_loader=ones(3), lr=0.5, weight_decay=0.25, betas=(0.5, 0.75), eps=0.125,
            loss_kwargs={"alpha": 2}, epochs=2, max_steps=3, seed=4, trainable=["w"], eval_fn=Evals(scores=[1, 2]),
            eval_every=2, select_fn=lambda e: e["score"], checkpoint_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert sorted(state) == ["best_score", "best_state", "best_step", "failed", "finished", "history", "model",
                             "optimizer", "settings", "step", "stopped_early"]
    assert state["settings"] == {"method": "toy", "lr": 0.5, "weight_decay": 0.25, "betas": [0.5, 0.75], "eps": 0.125,
                                 "loss_kwargs": "{'alpha': 2}", "epochs": 2, "max_steps": 3, "seed": 4,
                                 "trainable": ["w"]}
    assert state["step"] == 3 and state["finished"] is True and state["failed"] is False
    assert state["stopped_early"] is None and state["best_step"] == 3 and state["best_score"] == 2.0
    assert torch.equal(state["best_state"]["w"], model.w.detach())
    assert [h["step"] for h in state["history"]] == [1, 2, 2, 3, 3]
    group = state["optimizer"]["param_groups"][0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (0.5, (0.5, 0.75), 0.125, 0.25)


def test_checkpoint_settings_record_a_precision_other_than_fp32(toy_loss, tmp_path):
    unlearn(Toy(), method="toy", forget_loader=ones(1), precision="bf16", checkpoint_dir=tmp_path / "bf16",
            progress=False)
    assert torch.load(tmp_path / "bf16" / "state.pt", weights_only=True)["settings"]["precision"] == "bf16"
    unlearn(Toy(), method="toy", forget_loader=ones(1), checkpoint_dir=tmp_path / "fp32", progress=False)
    assert "precision" not in torch.load(tmp_path / "fp32" / "state.pt", weights_only=True)["settings"]
    with pytest.raises(ValueError, match=r"other settings \(precision: 'fp32' in the checkpoint, 'bf16' now\)"):
        unlearn(Toy(), method="toy", forget_loader=ones(1), precision="bf16", checkpoint_dir=tmp_path / "fp32",
                progress=False)


def test_checkpoint_saves_every_checkpoint_every_steps_and_at_the_end(toy_loss, tmp_path, monkeypatch):
    saved = []
    real = unlearning.save_checkpoint

    def spy(state, path):
        saved.append((state["step"], state["finished"]))
        return real(state, path)

    monkeypatch.setattr(unlearning, "save_checkpoint", spy)
    unlearn(Toy(), method="toy", forget_loader=ones(5), checkpoint_dir=tmp_path / "a", checkpoint_every=2, lr=1.0,
            progress=False)
    assert saved == [(2, False), (4, False), (5, True)]
    saved.clear()
    unlearn(Toy(), method="toy", forget_loader=ones(1), max_steps=100, checkpoint_dir=tmp_path / "b", lr=1.0,
            progress=False)
    assert saved == [(50, False), (100, False), (100, True)]  # default: every 50 steps
    saved.clear()
    unlearn(Toy(), method="toy", forget_loader=ones(2), checkpoint_every=1, lr=1.0, progress=False)
    assert saved == []  # no checkpoint_dir: nothing written


def test_restart_without_a_checkpoint_starts_afresh(toy_loss, tmp_path):
    result = unlearn(Toy(), method="toy", forget_loader=ones(2), checkpoint_dir=tmp_path, resume="restart", lr=1.0,
                     progress=False)
    assert result.steps == 2 and (tmp_path / "state.pt").exists()


def fresh_hint(tmp_path):
    return f"delete {tmp_path} (or pass resume='restart') to start afresh"


def test_resume_refuses_a_checkpoint_without_settings(toy_loss, tmp_path):
    path = tmp_path / "state.pt"
    unlearning.save_checkpoint({"step": 1, "finished": False}, path)
    with pytest.raises(ValueError) as err:
        unlearn(Toy(), method="toy", forget_loader=ones(2), checkpoint_dir=tmp_path, progress=False)
    assert str(err.value) == (f"checkpoint {path} records no run settings (an older version wrote it); "
                              f"{fresh_hint(tmp_path)}")


def test_resume_names_every_setting_that_differs(toy_loss, tmp_path):
    with pytest.raises(Interrupted):
        run(tmp_path, interrupt_at=1)
    with pytest.raises(ValueError) as err:
        run(tmp_path, seed=3, weight_decay=0.5)
    assert str(err.value) == (f"checkpoint {tmp_path / 'state.pt'} was written by a run with other settings "
                              f"(weight_decay: 0.0 in the checkpoint, 0.5 now; seed: 0 in the checkpoint, 3 now); "
                              f"{fresh_hint(tmp_path)}")


def test_resume_message_shortens_long_settings_to_80_characters(toy_loss, tmp_path):
    def desc(n):  # the checkpoint's text of loss_kwargs={"note": "x" * n}
        return "{'note': '" + "x" * n + "'}"

    assert len(repr(desc(66))) == 80 and len(repr(desc(67))) == 81
    with pytest.raises(Interrupted):
        run(tmp_path, interrupt_at=1, loss_kwargs={"note": "x" * 66})
    with pytest.raises(ValueError) as err:
        run(tmp_path, loss_kwargs={"note": "x" * 67})
    shown = repr(desc(67))[:77] + "..."
    assert f"(loss_kwargs: {repr(desc(66))} in the checkpoint, {shown} now)" in str(err.value)
    assert len(shown) == 80


def test_resume_refuses_a_failed_run(tmp_path, monkeypatch):
    monkeypatch.setitem(losses.LOSSES, "toy", Recorder(nan_at={1}))
    with pytest.warns(UserWarning):
        run(tmp_path)
    with pytest.raises(ValueError) as err:
        run(tmp_path)
    assert str(err.value) == (f"checkpoint {tmp_path / 'state.pt'} is of a failed run (non-finite loss at step 1); "
                              f"its state is not a result to continue from; {fresh_hint(tmp_path)}")


# --------------------------------------------------------------------------- #
# The progress bar
# --------------------------------------------------------------------------- #
class FakeBar:
    """Stands for ``tqdm.auto.tqdm`` (``unlearning.tqdm``): records how it was made and used."""

    made = []

    def __init__(self, **kwargs):
        self.kwargs, self.updates, self.postfixes, self.closed = kwargs, 0, [], False
        FakeBar.made.append(self)

    def update(self, n=1):
        self.updates += n

    def set_postfix(self, **kwargs):
        self.postfixes.append(kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.closed = True


def test_progress_bar_counts_the_steps_of_the_method(toy_loss, tmp_path, monkeypatch):
    monkeypatch.setattr(FakeBar, "made", [])
    monkeypatch.setattr(unlearning, "tqdm", FakeBar)
    with pytest.raises(Interrupted):
        run(tmp_path, eval_every=None, interrupt_at=2)
    run(tmp_path, eval_every=None, progress=True)
    unlearn(Toy(), method="toy", forget_loader=ones(3), lr=1.0)  # progress shown by default
    first, resumed, default = FakeBar.made
    assert default.kwargs == {"total": 3, "initial": 0, "desc": "toy", "disable": False, "leave": False}
    assert first.kwargs == {"total": 5, "initial": 0, "desc": "toy", "disable": True, "leave": False}
    assert resumed.kwargs == {"total": 5, "initial": 2, "desc": "toy", "disable": False, "leave": False}
    assert (first.updates, resumed.updates) == (2, 3) and first.closed and resumed.closed
    # w = (-k, k) before step k+1: loss -2k
    assert resumed.postfixes == [{"loss": "-4.000"}, {"loss": "-6.000"}, {"loss": "-8.000"}]


# --------------------------------------------------------------------------- #
# The text of loss_kwargs in the settings (unlearning._describe)
# --------------------------------------------------------------------------- #
class Addressed:
    """An object whose repr carries a memory address in capitals."""

    def __repr__(self):
        return "<Addressed at 0x7FfA09>"


def sha12(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:12]


def test_describe_writes_tensors_as_shape_dtype_and_content_hash():
    t = torch.tensor([[1.0, 2.0], [3.0, -4.5]])
    expected = f"tensor(shape=[2, 2], dtype=torch.float32, sha1={sha12(struct.pack('<4f', 1.0, 2.0, 3.0, -4.5))})"
    assert unlearning._describe(t) == expected
    assert unlearning._describe(t.t().t()) == expected and unlearning._describe(t.requires_grad_()) == expected
    # the bytes of the values, not of the memory: a transposed view hashes its values in order
    assert unlearning._describe(torch.tensor([[1.0, 3.0], [2.0, -4.5]]).t()) == expected
    ints = torch.tensor([1, 258], dtype=torch.int16)
    assert unlearning._describe(ints) == f"tensor(shape=[2], dtype=torch.int16, sha1={sha12(struct.pack('<2h', 1, 258))})"
    assert unlearning._describe(torch.zeros(0, 3)) == "tensor(shape=[0, 3], dtype=torch.float32, sha1=empty)"


def test_describe_writes_containers_in_a_stable_order_without_addresses():
    assert unlearning._describe(torch.Generator().manual_seed(7)) == "Generator(initial_seed=7)"
    # dicts by the text of their keys (any key types), values described in turn
    assert unlearning._describe({"b": 1, "a": [2, (3.5, "x")], 10: None, 2: True}) == \
        "{10: None, 2: True, 'a': [2, [3.5, 'x']], 'b': 1}"
    assert unlearning._describe([torch.zeros(0), {"k": torch.zeros(0)}]) == \
        "[tensor(shape=[0], dtype=torch.float32, sha1=empty), {'k': tensor(shape=[0], dtype=torch.float32, sha1=empty)}]"
    assert unlearning._describe(Addressed()) == "<Addressed>"
    assert unlearning._describe(len) == "<built-in function len>"
    assert unlearning._describe({"f": math.sqrt, "o": object()}) == "{'f': <built-in function sqrt>, 'o': <object object>}"
    assert unlearning._describe("at 0x12") == "'at 0x12'"  # no address: as repr


# --------------------------------------------------------------------------- #
# The pair loader
# --------------------------------------------------------------------------- #
class FakeTokenizer:
    """Tokenises text number ``i`` of a call as ``[i, len(text)]`` and records the texts."""

    def __init__(self):
        self.texts = []

    def __call__(self, texts):
        self.texts.append(list(texts))
        return torch.tensor([[i, len(t)] for i, t in enumerate(texts)])


def numbered(n, classes=2):
    """``n`` images whose single pixel is their index; labels ``i % classes``."""
    return ListDataset(torch.arange(n, dtype=torch.float32).view(n, 1), torch.arange(n) % classes,
                       ["cat", "dog", "emu"][:classes])


class ItemOnly:
    """The same samples without ``get_batch``: read item by item."""

    def __init__(self, ds):
        self.ds, self.classnames = ds, ds.classnames

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


def flat(batches, key):
    return [x for b in batches for x in b[key].tolist()]


def test_pair_loader_captions_each_image_with_a_template_of_its_class():
    tok = FakeTokenizer()
    loader = make_pair_loader(numbered(5), tokenizer=tok, templates=["a {}", lambda c: c.upper()], batch_size=2,
                              shuffle=False)
    assert tok.texts == [["a cat", "CAT", "a dog", "DOG"]]  # class-major, one tokenizer call
    batches = list(loader.batches(0))
    assert len(loader) == 3 and [len(b["labels"]) for b in batches] == [2, 2, 1]
    assert flat(batches, "images") == [[0.0], [1.0], [2.0], [3.0], [4.0]] and flat(batches, "labels") == [0, 1, 0, 1, 0]
    texts = flat(batches, "texts")   # [text number, length]: text number = 2 * label + template
    assert [t[0] // 2 for t in texts] == [0, 1, 0, 1, 0]
    assert all(t[1] == len(tok.texts[0][t[0]]) for t in texts)


def test_pair_loader_order_and_templates_come_from_seed_and_epoch():
    # the stream every committed record was drawn from: randperm, then template ids, of one generator
    ds = numbered(7, classes=3)
    idx = [6, 1, 2, 4, 5, 3]
    loader = make_pair_loader(ds, tokenizer=FakeTokenizer(), templates=["{}", "a {}"], indices=idx, batch_size=4,
                              seed=3)
    for epoch in (0, 1):
        g = torch.Generator().manual_seed(3 * 100_003 + epoch)
        order = [idx[i] for i in torch.randperm(6, generator=g).tolist()]
        templates = torch.randint(2, (6,), generator=g).tolist()
        batches = list(loader.batches(epoch))
        assert [len(b["labels"]) for b in batches] == [4, 2]
        assert flat(batches, "images") == [[float(i)] for i in order]
        assert [t[0] for t in flat(batches, "texts")] == [2 * (i % 3) + k for i, k in zip(order, templates)]


def test_pair_loader_iterates_epoch_after_epoch():
    loader = make_pair_loader(numbered(6), tokenizer=FakeTokenizer(), templates=["{}", "a {}"], batch_size=4, seed=1)
    assert loader.epoch == 0
    for epoch in (0, 1, 2):
        got = list(iter(loader))
        assert loader.epoch == epoch + 1
        want = list(loader.batches(epoch))
        assert [flat(got, "images"), flat(got, "texts")] == [flat(want, "images"), flat(want, "texts")]
    assert flat(list(loader.batches(0)), "images") != flat(list(loader.batches(1)), "images")


def test_pair_loader_drop_last_drops_the_short_batch():
    loader = make_pair_loader(numbered(5), tokenizer=FakeTokenizer(), templates=["{}"], batch_size=2, shuffle=False,
                              drop_last=True)
    batches = list(loader.batches(0))
    assert len(loader) == 2 and flat(batches, "labels") == [0, 1, 0, 1]


@pytest.mark.parametrize("make", [make_pair_loader, PairLoader], ids=["make_pair_loader", "PairLoader"])
def test_pair_loader_defaults_shuffle_64_per_batch_with_seed_0(make):
    ds = numbered(130)
    loader = make(ds, tokenizer=FakeTokenizer(), templates=["{}"])
    batches = list(loader.batches(0))
    assert len(loader) == 3 and [len(b["labels"]) for b in batches] == [64, 64, 2]
    g = torch.Generator().manual_seed(0)
    assert flat(batches, "images") == [[float(i)] for i in torch.randperm(130, generator=g).tolist()]
    assert all(b[k].device.type == "cpu" for b in batches for k in b)


def test_make_pair_loader_passes_every_setting_on():
    ds = numbered(9)
    kwargs = dict(indices=[8, 7, 6, 5, 4, 3, 2], batch_size=3, shuffle=False, seed=5, drop_last=True, device="meta")
    loader = make_pair_loader(ds, tokenizer=FakeTokenizer(), templates=["{}", "a {}"], **kwargs)
    batches = list(loader.batches(0))
    assert len(batches) == 2 and all(b[k].device.type == "meta" for b in batches for k in b)
    cpu = make_pair_loader(ds, tokenizer=FakeTokenizer(), templates=["{}", "a {}"], **{**kwargs, "device": "cpu"})
    cpu_batches = list(cpu.batches(0))
    assert flat(cpu_batches, "images") == [[8.0], [7.0], [6.0], [5.0], [4.0], [3.0]]
    g = torch.Generator().manual_seed(5 * 100_003)
    templates = torch.randint(2, (7,), generator=g).tolist()
    assert [t[0] for t in flat(cpu_batches, "texts")] == [2 * (i % 2) + k for i, k in zip([8, 7, 6, 5, 4, 3], templates)]


def test_pair_loader_reads_a_dataset_without_get_batch_item_by_item():
    ds = numbered(5)
    kwargs = dict(templates=["{}", "a {}"], indices=[4, 0, 3, 1], batch_size=3, seed=2)
    by_batch = list(make_pair_loader(ds, tokenizer=FakeTokenizer(), **kwargs).batches(1))
    by_item = list(make_pair_loader(ItemOnly(ds), tokenizer=FakeTokenizer(), **kwargs).batches(1))
    for key in ("images", "texts", "labels"):
        assert flat(by_item, key) == flat(by_batch, key)
    assert by_item[0]["labels"].dtype == torch.long


def test_pair_loader_without_samples_says_what_to_check():
    with pytest.raises(ValueError) as err:
        make_pair_loader(numbered(3), tokenizer=FakeTokenizer(), templates=["{}"], indices=[])
    assert str(err.value) == "PairLoader got no samples: check the class names / indices of the split"


class Recording(ListDataset):
    """A ``ListDataset`` whose ``get_batch`` records the index tensors it gets."""

    def __init__(self, *args):
        super().__init__(*args)
        self.asked = []

    def get_batch(self, idx):
        self.asked.append(idx)
        return super().get_batch(idx)


def test_pair_loader_slices_in_memory_datasets_with_long_indices():
    ds = Recording(torch.arange(4, dtype=torch.float32).view(4, 1), [0, 1, 0, 1], ["cat", "dog"])
    loader = make_pair_loader(ds, tokenizer=FakeTokenizer(), templates=["{}"], indices=[3.0, 1.0, 2.0], batch_size=2,
                              shuffle=False)
    batches = list(loader.batches(0))
    assert [a.tolist() for a in ds.asked] == [[3, 1], [2]] and all(a.dtype == torch.long for a in ds.asked)
    assert flat(batches, "images") == [[3.0], [1.0], [2.0]]


def test_cycle_starts_at_the_first_batch_and_runs_epoch_after_epoch():
    # three_stage draws its batches with _cycle(loader): from the first batch of epoch 0
    from itertools import islice

    assert list(islice(unlearning._cycle(["a", "b", "c"]), 7)) == ["a", "b", "c", "a", "b", "c", "a"]
    assert list(islice(unlearning._cycle(["a", "b", "c"], start_step=4), 3)) == ["b", "c", "a"]
    loader = make_pair_loader(numbered(4), tokenizer=FakeTokenizer(), templates=["{}"], batch_size=2, seed=1)
    got = [b["images"].flatten().tolist() for b in islice(unlearning._cycle(loader), 4)]
    want = [b["images"].flatten().tolist() for e in (0, 1) for b in loader.batches(e)]
    assert got == want and loader.epoch == 0


def test_pair_loader_iter_is_the_next_epoch_and_evals_list_the_evaluations(tiny_tokenizer):
    ds = ListDataset(torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1), [0, 1, 0, 1, 0, 1], ["a", "b"])
    loader = PairLoader(ds, tokenizer=tiny_tokenizer, templates=["{}"], batch_size=3, seed=4)
    first = [b["labels"].tolist() for b in iter(loader)]
    assert loader.epoch == 1
    assert first == [b["labels"].tolist() for b in loader.batches(0)]
    second = [b["labels"].tolist() for b in loader]
    assert loader.epoch == 2 and second == [b["labels"].tolist() for b in loader.batches(1)]
    result = UnlearnResult(history=[{"step": 1, "loss": 0.5}, {"step": 2, "eval": {"score": 0.3}},
                                    {"step": 4, "eval": {"score": 0.1, "x": 2}}])
    assert result.evals == [{"step": 2, "score": 0.3}, {"step": 4, "score": 0.1, "x": 2}]
