"""Pins of paper B's run-level functions in ``clipunlearn.lipschitz`` that no other test called.

``run_lipschitz`` (the record of one run), ``generate_task_synthetic`` (the synthetic forget and
validation sets), ``_own_epoch`` (one epoch of the authors' loop) and ``_make_optimizer`` are each
driven with recording fakes of what they call, and every argument, ordering and record field is
compared with a value written out here (benchmarks/mutation.md lists them as "no tests" before).
"""

from __future__ import annotations

import types
import warnings

import pytest
import torch

from clipunlearn import experiment, harness, layers, metrics, models, synthetic
from clipunlearn.methods import lipschitz, lipschitz_authors

NAMES = ["cat", "dog", "car"]


def fake_task(seed=3):
    return types.SimpleNamespace(kind="forget-class", target="cat", seed=seed, classnames=NAMES,
                                 templates=("a {}.",), forget_classes=[0])


class Recorder:
    """Callable that records its keyword arguments and returns ``value(call_number, *args, **kwargs)``."""

    def __init__(self, value):
        self.calls, self.value = [], value

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.value(len(self.calls), *args, **kwargs)


# --------------------------------------------------------------------------- #
# run_lipschitz
# --------------------------------------------------------------------------- #
def patch_run(monkeypatch, *, history):
    """Fake the loader, the forgetting, validation and test evaluation; return the recorders."""
    loader = Recorder(lambda n, *a, **k: "LOADER")
    released = Recorder(lambda n: None)
    autocast_seen = []

    def validate(n, m, task, **kwargs):
        autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return {"val_forget_acc": 0.1 * n, "val_retain_acc": 0.9, "score": 0.5 + n}

    def evaluate(n, m, task, **kwargs):
        autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return {"forget_acc": 0.2, "retain_acc": 0.8, "other_acc/x": 0.4}

    def forget(n, model, **kwargs):
        with torch.no_grad():
            model.text_projection.add_(1.0)
        kwargs["eval_fn"](model)
        return lipschitz.LipschitzResult(history=history, epochs=[{}, {}], initial_acc=0.9, final_acc=0.05, steps=4,
                                         accepted_steps=3, failed=False)

    rec = types.SimpleNamespace(loader=loader, released=released, validate=Recorder(validate),
                                evaluate=Recorder(evaluate), forget=Recorder(forget), autocast=autocast_seen)
    monkeypatch.setattr(lipschitz, "make_pair_loader", rec.loader)
    monkeypatch.setattr(lipschitz, "release_memory", rec.released)
    monkeypatch.setattr(harness, "validate_model", rec.validate)
    monkeypatch.setattr(harness, "evaluate_model", rec.evaluate)
    monkeypatch.setattr(lipschitz, "forget_lipschitz", rec.forget)
    return rec


HISTORY = [{"step": 1, "accepted": True, "val_forget_acc": 0.5, "val_retain_acc": 0.9, "score": 0.7, "stop_acc": 0.6,
            "sigma": 0.1},
           {"step": 2, "accepted": False, "val_forget_acc": 0.4, "score": 0.6, "stop_acc": 0.7},
           {"step": 3, "accepted": True, "val_retain_acc": 0.8, "stop_acc": 0.3}]


def test_run_lipschitz_forwards_every_setting_and_writes_the_record(tiny_clip, monkeypatch):
    model, tokenizer = tiny_clip
    rec = patch_run(monkeypatch, history=HISTORY)
    before = model.text_projection.detach().clone()
    forget_data, val_forget, idx = list(range(10)), ("VAL", [1, 2]), torch.tensor([4, 5, 6])
    task = fake_task()
    unlearned, record = lipschitz.run_lipschitz(
        task, model=model, tokenizer=tokenizer, forget_data=forget_data, forget_idx=idx, val_forget=val_forget,
        lr=3e-4, n_samples=7, sigma_schedule=(0.2, 0.4), selective=False, threshold=0.15, max_epochs=9,
        betas=(0.8, 0.9), eps=1e-7, weight_decay=0.05, batch_size=16, data_free=False, method="lip_x",
        config={"extra": 1}, progress=True)
    # a trained copy; the input model is untouched
    assert unlearned is not model and torch.equal(model.text_projection, before)
    assert torch.equal(unlearned.text_projection, before + 1.0)
    assert len(rec.released.calls) == 1
    assert rec.loader.calls == [((forget_data,), dict(tokenizer=tokenizer, templates=("a photo of a {}.",), indices=idx,
                                                      batch_size=16, shuffle=True, seed=3, device="cpu"))]
    (args, kw), = rec.forget.calls
    assert args == (unlearned,)
    eval_fn = kw.pop("eval_fn")
    assert callable(eval_fn)
    assert kw == dict(forget_loader="LOADER", tokenizer=tokenizer, classnames=NAMES, templates=("a {}.",),
                      stop_dataset=forget_data, stop_indices=idx, k_schedule=lipschitz.paper_k_schedule(model),
                      sigma_schedule=(0.2, 0.4), n_samples=7, threshold=0.15, max_epochs=9, lr=3e-4, betas=(0.8, 0.9),
                      eps=1e-7, weight_decay=0.05, selective=False, device="cpu", seed=3, progress=True,
                      precision="fp32", **lipschitz.PROJECT_OPTIONS)
    # validation: once inside the forgetting (eval_fn), once on the final model, on the synthetic set
    assert [c[1] for c in rec.validate.calls] == [dict(tokenizer=tokenizer, device="cpu", forget_data=val_forget)] * 2
    assert all(c[0][0] is unlearned for c in rec.validate.calls + rec.evaluate.calls)
    assert all(c[0][1] is task for c in rec.validate.calls + rec.evaluate.calls)
    assert rec.evaluate.calls[0][1] == dict(tokenizer=tokenizer, device="cpu")
    assert rec.autocast == [False, False, False]
    assert record["method"] == "lip_x" and record["task"] == "forget-class"
    assert record["config"] == {
        "task": "forget-class", "forget_class": "cat", "seed": 3, "criterion": experiment.CRITERION,
        "lr": 3e-4, "n_samples": 7, "sigma_schedule": [0.2, 0.4], "k_start": None, "selective": False,
        "threshold": 0.15, "max_epochs": 9, "betas": [0.8, 0.9], "eps": 1e-7, "weight_decay": 0.05, "batch_size": 16,
        "data_free": False, "forget_images": 3, "extra": 1}
    m = record["metrics"]
    # test metrics, then the validation of the final model (the second validate call), then the stop set
    assert {k: m[k] for k in ("forget_acc", "retain_acc", "other_acc/x")} == {"forget_acc": 0.2, "retain_acc": 0.8,
                                                                             "other_acc/x": 0.4}
    assert m["val_forget_acc"] == pytest.approx(0.2) and m["score"] == 2.5 and m["val_retain_acc"] == 0.9
    assert {k: m[k] for k in ("stop_acc", "stop_acc_before", "steps", "accepted_steps", "epochs", "stopped_early",
                              "failed")} == dict(stop_acc=0.05, stop_acc_before=0.9, steps=4, accepted_steps=3,
                                                 epochs=2, stopped_early=None, failed=False)
    assert "seconds" in m and "peak_mem_mb" in m and "avg_gain" not in m
    # the kept trajectory, renumbered, with only the validation keys
    assert record["history"] == [{"step": 1, "val_forget_acc": 0.5, "val_retain_acc": 0.9, "score": 0.7, "stop_acc": 0.6},
                                 {"step": 2, "val_retain_acc": 0.8, "stop_acc": 0.3}]


def test_run_lipschitz_options_precision_caption_k_start_and_avg_gain(tiny_clip, monkeypatch):
    model, tokenizer = tiny_clip
    rec = patch_run(monkeypatch, history=[])
    reference = {"forget_acc": 0.9, "retain_acc": 0.85, "other_acc/x": 0.5}
    data = list(range(5))
    _, record = lipschitz.run_lipschitz(
        fake_task(seed=0), model=model, tokenizer=tokenizer, forget_data=data, lr=1e-3, k_start=7,
        caption_templates=("A picture of {}",), precision="bf16", reference=reference,
        **{**lipschitz.AUTHORS_OPTIONS, "accumulate": 2})
    (_, kw), = rec.forget.calls
    assert kw["k_schedule"] == lipschitz.paper_k_schedule(model, k_image=7, k_text=7) != lipschitz.paper_k_schedule(model)
    assert kw["precision"] == "bf16" and kw["stop_indices"] is None and kw["progress"] is False
    assert {k: kw[k] for k in lipschitz.AUTHORS_OPTIONS} == {**lipschitz.AUTHORS_OPTIONS, "accumulate": 2}
    assert rec.loader.calls[0][1]["templates"] == ("A picture of {}",) and rec.loader.calls[0][1]["seed"] == 0
    assert rec.autocast == [True, True, True]  # every evaluation under bf16 autocast
    changed = {k: v for k, v in {**lipschitz.AUTHORS_OPTIONS, "accumulate": 2}.items()
               if v != lipschitz.PROJECT_OPTIONS[k]}
    cfg = record["config"]
    assert {k: cfg[k] for k in changed} == changed and cfg["precision"] == "bf16"
    assert not set(lipschitz.PROJECT_OPTIONS) - set(changed) & set(cfg)
    assert cfg["caption_templates"] == ["A picture of {}"] and cfg["k_start"] == 7
    assert cfg["forget_images"] == 5 and cfg["data_free"] is True and record["method"] == "lipschitz_synthetic"
    assert record["metrics"]["avg_gain"] == pytest.approx(lipschitz.compute_avg_gain(
        {"forget_acc": 0.2, "retain_acc": 0.8, "other_acc/x": 0.4}, reference))
    # the project's options and fp32 are left out of the config; the default caption too
    rec2 = patch_run(monkeypatch, history=[])
    _, plain = lipschitz.run_lipschitz(fake_task(), model=model, tokenizer=tokenizer, forget_data=data, lr=1e-3)
    assert not ({"precision", "caption_templates"} | set(lipschitz.PROJECT_OPTIONS)) & set(plain["config"])
    assert plain["config"]["sigma_schedule"] == list(lipschitz.paper_sigma_schedule())
    assert {k: plain["config"][k] for k in ("n_samples", "selective", "threshold", "max_epochs", "betas", "eps",
                                            "weight_decay", "batch_size")} == dict(
        n_samples=25, selective=True, threshold=0.1, max_epochs=30, betas=[0.9, 0.98], eps=1e-6, weight_decay=0.2,
        batch_size=64)
    assert rec2.autocast == [False, False, False]


# --------------------------------------------------------------------------- #
# generate_task_synthetic
# --------------------------------------------------------------------------- #
def fake_set(n, reached, probs):
    return synthetic.SyntheticSet(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.zeros(n),
                                  classnames=NAMES, probs=torch.tensor(probs), steps_taken=torch.arange(n) + 1,
                                  reached=torch.tensor(reached), thresholds=torch.zeros(n))


def patch_generation(monkeypatch, made):
    classifier = torch.ones(3, 4, dtype=torch.float64)
    builds = Recorder(lambda n, *a, **k: classifier)
    gens = Recorder(lambda n, *a, **k: made)
    monkeypatch.setattr(metrics, "build_classifier", builds)
    monkeypatch.setattr(synthetic, "generate_synthetic", gens)
    return builds, gens


def test_generate_task_synthetic_restart_holds_out_reached_images_then_fills_by_probability(tiny_clip, monkeypatch):
    model, tokenizer = tiny_clip
    made = fake_set(6, [False, True, False, True, False, False], [0.3, 0.9, 0.7, 0.8, 0.1, 0.5])
    builds, gens = patch_generation(monkeypatch, made)
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
    with pytest.warns(UserWarning, match=r"4 of 6 synthetic images of 'cat' did not reach their threshold"):
        forget, val, cost = lipschitz.generate_task_synthetic(
            model, fake_task(), tokenizer=tokenizer, n_train=3, n_val=2, seed=5, progress=True,
            generation={"restart": True, "logit_scale": "model", "steps": 4})
    # reached (1, 3) are held out (n_val = 2: the last reached ones); the forget set takes the others by
    # probability: 2 (0.7), 5 (0.5), 0 (0.3), then 4 (0.1) is left out
    assert forget.images.flatten().tolist() == [2, 5, 0] and val.images.flatten().tolist() == [1, 3]
    assert builds.calls[0][0] == (model, tokenizer, NAMES, ("a {}.",)) and builds.calls[0][1] == {"device": "cpu"}
    args, kw = gens.calls[0]
    assert args[0] is model and args[1].dtype == torch.float32
    mean, std = models.get_normalization(model)
    assert kw == dict(classes=[0], classnames=NAMES, n_per_class=5, mean=mean, std=std, seed=5, device="cpu",
                      progress=True, restart=True, logit_scale=pytest.approx(float(torch.tensor(2.0).exp())), steps=4)
    assert cost["reached"] == 2 and cost["images"] == 6 and cost["mean_steps"] == pytest.approx(3.5)
    assert "seconds" in cost and "peak_mem_mb" in cost


def test_generate_task_synthetic_without_restart_keeps_generation_order(tiny_clip, monkeypatch):
    model, tokenizer = tiny_clip
    made = fake_set(4, [False, True, False, True], [0.3, 0.9, 0.7, 0.8])
    _, gens = patch_generation(monkeypatch, made)
    generation = {"logit_scale": 50.0, "precision": "fp32"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        forget, val, cost = lipschitz.generate_task_synthetic(model, fake_task(), tokenizer=tokenizer, n_train=2,
                                                              n_val=1, generation=generation)
    assert forget.images.flatten().tolist() == [0, 1] and val.images.flatten().tolist() == [2]
    assert gens.calls[0][1]["logit_scale"] == 50.0 and gens.calls[0][1]["seed"] == 0
    assert gens.calls[0][1]["progress"] is False and gens.calls[0][1]["n_per_class"] == 3
    assert generation == {"logit_scale": 50.0, "precision": "fp32"}  # the caller's dict is not changed
    assert cost["reached"] == 2 and cost["images"] == 4
    # every image reached: restart gives no warning
    patch_generation(monkeypatch, fake_set(3, [True, True, True], [0.3, 0.9, 0.7]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        forget, _, _ = lipschitz.generate_task_synthetic(model, fake_task(), tokenizer=tokenizer, n_train=3, n_val=0,
                                                         generation={"restart": True})
    assert forget.images.flatten().tolist() == [0, 1, 2]


def test_generate_task_synthetic_builds_the_classifier_under_its_precision(tiny_clip, monkeypatch):
    model, tokenizer = tiny_clip
    seen = []
    monkeypatch.setattr(metrics, "build_classifier",
                        lambda *a, **k: seen.append((torch.is_autocast_enabled("cpu"), torch.is_grad_enabled()))
                        or torch.ones(3, 4))
    monkeypatch.setattr(synthetic, "generate_synthetic", lambda *a, **k: fake_set(2, [True, True], [0.5, 0.5]))
    lipschitz.generate_task_synthetic(model, fake_task(), tokenizer=tokenizer, n_train=1, n_val=1,
                                      generation={"precision": "bf16"})
    lipschitz.generate_task_synthetic(model, fake_task(), tokenizer=tokenizer, n_train=1, n_val=1, generation={})
    assert seen == [(True, False), (False, False)]


# --------------------------------------------------------------------------- #
# _own_epoch and _make_optimizer
# --------------------------------------------------------------------------- #
class CountingSGD(torch.optim.SGD):
    def __init__(self, params):
        super().__init__(params, lr=0.1)
        self.steps, self.zeroed = 0, 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)

    def zero_grad(self, set_to_none=True):
        self.zeroed += 1
        return super().zero_grad(set_to_none=set_to_none)


def own_epoch(model, **overrides):
    names = ["text_projection", "visual.proj", "ln_final.weight"]
    params = dict(model.named_parameters())
    kw = dict(optimizer=None, forget_loader=[{"b": i} for i in range(5)],
              loss_fn=lambda m, batch: ((m.text_projection.sum() + m.visual.proj.sum()), {}), candidates=names,
              selective=True, rescore="epoch", trainable=["visual.proj"], k_image=1, k_text=1, exclude=(),
              accumulate=1, step_offset=10, seed=2, on_step=lambda m: False, progress=False, desc="x")
    kw.update(overrides)
    kw["optimizer"] = kw["optimizer"] or CountingSGD([params[n] for n in names])
    return kw, lipschitz._own_epoch(model, **kw)


def test_own_epoch_steps_the_epochs_tensors_every_batch_and_reseeds(tiny_clip):
    model = tiny_clip.model
    seeds, modes = [], []

    def loss_fn(m, batch):
        seeds.append(torch.initial_seed())
        modes.append(m.training)
        return m.text_projection.sum() + m.visual.proj.sum(), {}

    text_before, vis_before = model.text_projection.detach().clone(), model.visual.proj.detach().clone()
    kw, (stepped, why) = own_epoch(model, loss_fn=loss_fn)
    assert why is None and stepped == ["visual.proj"]
    assert seeds == [2 * 1_000_003 + 10 + i for i in range(5)] and all(modes)
    assert kw["optimizer"].steps == 5 and kw["optimizer"].zeroed == 6
    # SGD lr 0.1 on d(sum)/dw = 1, five steps: only the epoch's tensor moved
    assert torch.equal(model.text_projection, text_before)
    assert torch.allclose(model.visual.proj, vis_before - 0.5, atol=1e-6)
    # not selective: every candidate
    _, (stepped, _) = own_epoch(tiny_clip.model, selective=False, trainable=[])
    assert stepped == ["text_projection", "visual.proj", "ln_final.weight"]


def test_own_epoch_accumulates_and_steps_on_the_last_batch(tiny_clip):
    def loss_fn(m, batch):
        return m.visual.proj.sum() * (batch["b"] + 1), {}

    model = tiny_clip.model
    grads = []
    opt = CountingSGD([model.visual.proj])
    real_step = opt.step
    opt.step = lambda closure=None: grads.append(model.visual.proj.grad[0, 0].item()) or real_step()
    kw, (_, why) = own_epoch(model, loss_fn=loss_fn, optimizer=opt, accumulate=2)
    # batches 1+2, 3+4, then the last one alone; each loss divided by 2
    assert grads == pytest.approx([(1 + 2) / 2, (3 + 4) / 2, 5 / 2])
    opt2 = CountingSGD([tiny_clip.model.visual.proj])
    own_epoch(tiny_clip.model, optimizer=opt2, accumulate=9)  # more than the batches: one step, at the end
    assert opt2.steps == 1


def test_own_epoch_stops_on_request_and_on_a_non_finite_loss(tiny_clip):
    model = tiny_clip.model
    calls = []
    _, (stepped, why) = own_epoch(model, on_step=lambda m: calls.append(1) or len(calls) == 2)
    assert why == "stop at step 12" and stepped == ["visual.proj"] and len(calls) == 2
    losses = iter([torch.tensor(1.0, requires_grad=True), torch.tensor(float("nan"))])
    kw, (stepped, why) = own_epoch(model, loss_fn=lambda m, b: (next(losses), {}), selective=False)
    assert why == "non-finite loss at step 11" and kw["optimizer"].steps == 1
    assert stepped == ["text_projection", "visual.proj", "ln_final.weight"]
    inf = iter([torch.tensor(float("inf"))])
    _, (stepped, why) = own_epoch(model, loss_fn=lambda m, b: (next(inf), {}), step_offset=0)
    assert why == "non-finite loss at step 0" and stepped == []


def test_own_epoch_rescore_batch_selects_top_k_on_this_batchs_gradient(tiny_clip, monkeypatch):
    model = tiny_clip.model
    picks = []

    def select(scores, *, k_image, k_text, exclude):
        picks.append((sorted(scores), k_image, k_text, exclude))
        return ["text_projection"] if len(picks) % 2 else ["visual.proj"]

    monkeypatch.setattr(layers, "select_top_k", select)
    _, (stepped, _) = own_epoch(model, rescore="batch", k_image=3, k_text=4, exclude=("ln",),
                                forget_loader=[{"b": 0}, {"b": 1}], candidates=["text_projection", "ln_final.weight"])
    # scored: the candidates that have a gradient (visual.proj has one but is no candidate; ln_final has none)
    assert picks == [(["text_projection"], 3, 4, ("ln",))] * 2
    assert stepped == ["text_projection", "visual.proj"]


def test_own_epoch_trains_with_batch_norm_frozen_after_each_step(tiny_resnet_clip):
    model = tiny_resnet_clip.model.eval()
    modes = []

    def on_step(m):
        bns = [x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)]
        modes.append((m.training, any(b.training for b in bns)))
        m.eval()  # an evaluation leaves the model in eval mode: the loop must set train mode again
        return False

    def loss_fn(m, batch):
        bns = [x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)]
        modes.append(("loss", m.training, any(b.training for b in bns)))
        return m.text_projection.sum(), {}

    opt = CountingSGD([model.text_projection])
    own_epoch(model, optimizer=opt, loss_fn=loss_fn, on_step=on_step, forget_loader=[{}, {}],
              candidates=["text_projection"], trainable=["text_projection"])
    assert modes[0] == ("loss", True, False) and modes[2] == ("loss", True, False)


def test_make_optimizer_forms(tiny_clip, monkeypatch):
    p = [tiny_clip.model.text_projection]
    adam = lipschitz._make_optimizer("adam", p, lr=0.01, betas=(0.8, 0.9), eps=1e-5, weight_decay=0.3)
    assert type(adam) is torch.optim.Adam
    assert {k: adam.defaults[k] for k in ("lr", "betas", "eps", "weight_decay", "fused")} == dict(
        lr=0.01, betas=(0.8, 0.9), eps=1e-5, weight_decay=0.3, fused=True)
    meta = [torch.nn.Parameter(torch.zeros(2, device="meta"))]
    assert lipschitz._make_optimizer("adam", meta, lr=0.01, betas=(0.8, 0.9), eps=1e-5,
                                     weight_decay=0.3).defaults["fused"] is None
    made = Recorder(lambda n, *a, **k: "ADAMW")
    monkeypatch.setattr(lipschitz_authors, "make_adamw", made)
    assert lipschitz._make_optimizer("adamw", p, lr=0.02, betas=(0.7, 0.6), eps=1e-4, weight_decay=0.1) == "ADAMW"
    assert made.calls == [((p,), dict(lr=0.02, betas=(0.7, 0.6), eps=1e-4, weight_decay=0.1))]
