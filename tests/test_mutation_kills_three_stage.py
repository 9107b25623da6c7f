"""Pins of paper A's three-stage driver in ``clipunlearn.three_stage`` that the other tests left open.

``three_stage_unlearn`` is driven with recording fakes of the Fisher scoring, the forgetting, the
alignment, the reminding and the restoring stage (and a scripted ``time.perf_counter``), and every
keyword it passes on, every ``config`` entry (its defaults: the values the docstrings document as
chosen on the mini model / the project's choices), every ``seconds`` entry, every cache hit and miss
and the reseeding before the reminding stage is compared with a value written out here.
``align_images`` runs for real on a hand-made linear alignment loss (so its step, its pixel bound,
its learning rate and ``loss_before`` are exact numbers); ``restore_stage``, ``content_key``,
``batchnorm_layers`` and the error messages are checked on hand-made inputs (benchmarks/mutation.md
lists them as survivors before).
"""

from __future__ import annotations

import copy
import hashlib
import re
import types
from unittest.mock import ANY

import pytest
import torch

from clipunlearn import layers
from clipunlearn.methods import three_stage, three_stage_stages
from clipunlearn.models import copy_frozen

IMAGE_SIZE = 32
TEXT_LAYERS = ["transformer.resblocks.0.attn", "transformer.resblocks.0.mlp.c_fc", "transformer.resblocks.0.mlp.c_proj",
               "transformer.resblocks.1.attn", "transformer.resblocks.1.mlp.c_fc", "transformer.resblocks.1.mlp.c_proj"]
TEXT_TENSORS = [f"transformer.resblocks.{i}.{t}" for i in (0, 1)
                for t in ("attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
                          "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")]
#: what the fake Fisher scoring returns: the top two of all candidates are the first two, of the text ones 1st and 3rd
SCORES = {"transformer.resblocks.1.mlp.c_proj": 3.0, "visual.attnpool.c_proj": 2.0, "transformer.resblocks.0.mlp.c_fc": 1.0}
VIT_SKIP = "the image tower has no BatchNorm running statistics (ViT): not aligned"


def batches(tokenizer, *, n_batches: int, seed: int, label: int = 0) -> list[dict]:
    """``n_batches`` batches of 2 random images captioned with ``label`` (a list of batches works as a loader)."""
    g = torch.Generator().manual_seed(seed)
    texts = tokenizer([f"a photo of a {('t-shirt', 'trouser')[label]}."] * 2)
    return [{"images": torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g).clamp(-1.5, 1.5), "texts": texts,
             "labels": torch.full((2,), label)} for _ in range(n_batches)]


class Clock:
    """A scripted ``time.perf_counter``: only the fakes move it."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class Fakes:
    """Recording stand-ins for the stages three_stage_unlearn runs; each moves the clock by a known time."""

    def __init__(self, monkeypatch, clock=None):
        self.clock = clock or Clock()
        self.fisher, self.choose, self.forget, self.remind, self.align, self.restore = [], [], [], [], [], []
        self.draws = []
        real_choose = three_stage.choose_layers
        if clock is not None:
            monkeypatch.setattr(three_stage, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))

        def fisher(model, forget_batches, retain_batches, **kwargs):
            self.fisher.append((forget_batches, retain_batches, kwargs))
            self.clock.advance(3.0)
            return dict(SCORES)

        def choose(scores, candidates, **kwargs):
            self.choose.append((scores, list(candidates), kwargs))
            return real_choose(scores, candidates, **kwargs)

        def forget(model, **kwargs):
            self.forget.append(kwargs)
            self.clock.advance(7.0)
            torch.rand(5)  # the forgetting stage consumes random numbers (LoRA initialisation)
            with torch.no_grad():
                for name in kwargs["layers"]:
                    for p in model.get_submodule(name).parameters():
                        p.add_(1.0)
            return {"steps": 1, "stopped": "max_steps", "similarity_before": 0.5, "similarity_after": 0.1,
                    "history": []}

        def remind(model, **kwargs):
            self.remind.append(kwargs)
            self.draws.append(torch.rand(3))
            self.clock.advance(11.0)
            if kwargs["align_fn"] is not None:
                for batch in kwargs["retain_loader"]:
                    kwargs["align_fn"](batch["images"])
            with torch.no_grad():
                for name in kwargs["layers"]:
                    for p in model.get_submodule(name).parameters():
                        p.add_(10.0)  # in place, as optimizer.step() and the EMA copy do
            return {"steps": kwargs["steps"], "loss_before": 1.0, "loss_after": 0.5, "history": []}

        def align(model, images, **kwargs):
            self.align.append((model, images, kwargs))
            self.clock.advance(2.0)
            return images + 0.5, {"loss_before": 2.0 * len(self.align), "loss_after": 1.0}

        def restore(model, **kwargs):
            self.restore.append(kwargs)
            self.clock.advance(5.0)
            return {"alpha": 0.3, "alpha_curve": [{"alpha": 0.3, "forget_acc": 0.0}],
                    "metrics": {"alpha": 0.3, "forget_acc": 0.0}}

        monkeypatch.setattr(layers, "relative_fisher_scores", fisher)
        monkeypatch.setattr(three_stage, "choose_layers", choose)
        monkeypatch.setattr(three_stage, "forget_stage", forget)
        monkeypatch.setattr(three_stage, "remind_stage", remind)
        monkeypatch.setattr(three_stage, "align_images", align)
        monkeypatch.setattr(three_stage, "restore_stage", restore)


def calib(model):
    return {"forget_acc": 0.0, "retain_acc": 1.0}


# --------------------------------------------------------------------------- #
# three_stage_unlearn: defaults, forwarded settings, timings, seeding, messages
# --------------------------------------------------------------------------- #
def test_defaults_are_the_documented_settings_in_config_and_in_the_stage_calls(tiny_resnet_clip, monkeypatch):
    model, tokenizer = tiny_resnet_clip
    fakes = Fakes(monkeypatch)
    forget, retain = batches(tokenizer, n_batches=2, seed=1), batches(tokenizer, n_batches=2, seed=2, label=1)
    result = three_stage.three_stage_unlearn(model, forget_loader=forget, retain_loader=retain, calib_fn=calib)
    # defaults: two layers by relative Fisher on two batches, LoRA rank 4, paper A's per-sample condition at
    # delta = margin = 0, retain_weight 0 (the project's choice: retention is left to reminding), per-image
    # alignment within an 8/255 pixel bound, the 11-point alpha grid, 5 % forget bar
    assert result.config == {
        "n_layers": 2, "layer_choice": "fisher", "encoders": ["image", "text"], "fisher_batches": 2, "align": True,
        "distill": True, "use_lora": True, "soup": True,
        "alphas": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], "max_forget": 0.05,
        "forget_key": "forget_acc", "retain_key": "retain_acc", "rank": 4, "lora_alpha": None, "forget_lr": 1e-3,
        "forget_steps": 100, "margin": 0.0, "forget_criterion": "per_sample", "retain_weight": 0.0,
        "align_eps": 8 / 255, "align_steps": 3, "align_lr": 2 / 255, "align_per_sample": True, "align_tol": 0.0,
        "align_patience": 3, "remind_lr": 3e-3, "remind_steps": 30, "kd_weight": 1.0, "kd_temperature": 1.0,
        "ema_decay": 0.9, "seed": 0}
    layers_ = ["transformer.resblocks.1.mlp.c_proj", "visual.attnpool.c_proj"]
    assert result.layers == layers_
    assert [len(f) for f, r, _ in fakes.fisher] == [2] and [len(r) for f, r, _ in fakes.fisher] == [2]
    assert fakes.forget == [dict(forget_loader=forget, retain_loader=retain, layers=layers_, margin=0.0, lr=1e-3,
                                 max_steps=100, use_lora=True, rank=4, lora_alpha=None, retain_weight=0.0,
                                 criterion="per_sample", device="cpu", progress=False)]
    assert fakes.remind == [dict(original=ANY, retain_loader=retain, layers=layers_, lr=3e-3, steps=30, kd_weight=1.0,
                                 kd_temperature=1.0, ema_decay=0.9, use_lora=True, rank=4, lora_alpha=None,
                                 align_fn=ANY, distill_loader=None, teacher_cache=None, device="cpu",
                                 progress=False)]
    assert [kw for _, _, kw in fakes.align] == [dict(eps=8 / 255, steps=3, lr=2 / 255, per_sample=True, tol=0.0,
                                                     patience=3, device="cpu")] * 2
    assert [{k: v for k, v in kw.items() if not k.endswith("_state")} for kw in fakes.restore] == [
        dict(calib_fn=calib, alphas=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), max_forget=0.05,
             forget_key="forget_acc", retain_key="retain_acc")]
    assert result.alpha == 0.3 and result.metrics == {"alpha": 0.3, "forget_acc": 0.0}


def test_every_setting_is_passed_on_to_the_stages(tiny_resnet_clip, monkeypatch):
    model, tokenizer = tiny_resnet_clip
    original = copy_frozen(model)
    fakes = Fakes(monkeypatch)
    forget, retain = batches(tokenizer, n_batches=2, seed=1), batches(tokenizer, n_batches=2, seed=2, label=1)
    calib_fn = lambda m: {"f": 0.0, "r": 1.0}  # noqa: E731
    result = three_stage.three_stage_unlearn(
        model, original=original, forget_loader=forget, retain_loader=retain, calib_fn=calib_fn, n_layers=2,
        encoders=("text",), fisher_batches=3, use_lora=False, alphas=(0.25, 1.0), max_forget=0.2, forget_key="f",
        retain_key=("r",), rank=3, lora_alpha=6.0, forget_lr=0.02, forget_steps=5, margin=-0.3, retain_weight=0.5,
        forget_criterion="mean", align_eps=0.03, align_steps=4, align_lr=0.01, align_per_sample=False, align_tol=0.2,
        align_patience=7, distill_loader=retain[:1], remind_lr=0.04, remind_steps=6, kd_weight=0.7,
        kd_temperature=2.0, ema_decay=0.5, device="cpu", seed=5, progress=True)
    [(f_batches, r_batches, fisher_kwargs)] = fakes.fisher
    assert [b["images"] for b in f_batches] == [forget[0]["images"], forget[1]["images"], forget[0]["images"]]
    assert [b["images"] for b in r_batches] == [retain[0]["images"], retain[1]["images"], retain[0]["images"]]
    assert fisher_kwargs == dict(names=TEXT_TENSORS, per="layer", device="cpu", progress=True)
    assert fakes.choose == [(SCORES, TEXT_LAYERS, dict(n_layers=2, layer_choice="fisher", seed=5))]
    layers_ = ["transformer.resblocks.1.mlp.c_proj", "transformer.resblocks.0.mlp.c_fc"]
    assert result.layers == layers_ and result.layer_scores == SCORES
    assert fakes.forget == [dict(forget_loader=forget, retain_loader=retain, layers=layers_, margin=-0.3, lr=0.02,
                                 max_steps=5, use_lora=False, rank=3, lora_alpha=6.0, retain_weight=0.5,
                                 criterion="mean", device="cpu", progress=True)]
    [remind] = fakes.remind
    assert remind["original"] is original and callable(remind["align_fn"])
    assert remind == dict(original=original, retain_loader=retain, layers=layers_, lr=0.04, steps=6, kd_weight=0.7,
                          kd_temperature=2.0, ema_decay=0.5, use_lora=False, rank=3, lora_alpha=6.0,
                          align_fn=remind["align_fn"], distill_loader=retain[:1], teacher_cache=None, device="cpu",
                          progress=True)
    assert [m is original for m, _, _ in fakes.align] == [True, True]  # aligned on the original model
    assert [torch.equal(images, b["images"]) for (_, images, _), b in zip(fakes.align, retain)] == [True, True]
    assert [kw for _, _, kw in fakes.align] == [dict(eps=0.03, steps=4, lr=0.01, per_sample=False, tol=0.2,
                                                     patience=7, device="cpu")] * 2
    assert {k: result.alignment[k] for k in ("loss_before", "loss_after", "batches")} == {
        "loss_before": 3.0, "loss_after": 1.0, "batches": 2}
    [restore] = fakes.restore
    assert {k: v for k, v in restore.items() if not k.endswith("_state")} == dict(
        calib_fn=calib_fn, alphas=(0.25, 1.0), max_forget=0.2, forget_key="f", retain_key=("r",))
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in restore["original_state"].items())


def test_distill_false_passes_kd_weight_zero(tiny_resnet_clip, monkeypatch):
    model, tokenizer = tiny_resnet_clip
    fakes = Fakes(monkeypatch)
    kwargs = dict(forget_loader=batches(tokenizer, n_batches=1, seed=1), retain_loader=batches(tokenizer, n_batches=1,
                  seed=2), soup=False, kd_weight=0.7, remind_steps=2)
    three_stage.three_stage_unlearn(copy.deepcopy(model), distill=False, **kwargs)
    three_stage.three_stage_unlearn(copy.deepcopy(model), distill=True, **kwargs)
    assert [r["kd_weight"] for r in fakes.remind] == [0.0, 0.7]


def test_seconds_are_the_elapsed_times_of_each_stage(tiny_resnet_clip, monkeypatch):
    model, tokenizer = tiny_resnet_clip
    clock = Clock()
    Fakes(monkeypatch, clock)

    def stage_fn(stage, m):
        clock.advance(0.5)
        return {"stage": stage}

    result = three_stage.three_stage_unlearn(
        model, forget_loader=batches(tokenizer, n_batches=2, seed=1),
        retain_loader=batches(tokenizer, n_batches=2, seed=2, label=1), calib_fn=calib, stage_fn=stage_fn)
    # fisher 3, forget 7, three reports of 0.5, reminding 11 plus two aligned batches of 2, restoring 5
    assert result.seconds == {"report": 1.5, "fisher": 3.0, "forget": 7.0, "align": 4.0, "remind": 11.0,
                              "restore": 5.0, "total": 30.0}
    assert result.stages == {s: {"stage": s} for s in ("forget", "remind", "restore")}
    assert result.reused == []


def test_reminding_starts_from_seed_plus_one_whether_or_not_forgetting_was_cached(tiny_resnet_clip, monkeypatch):
    model, tokenizer = tiny_resnet_clip
    fakes = Fakes(monkeypatch)
    cache = {}
    kwargs = dict(forget_loader=batches(tokenizer, n_batches=1, seed=1), retain_loader=batches(tokenizer, n_batches=1,
                  seed=2), soup=False, seed=4, cache=cache)
    three_stage.three_stage_unlearn(copy.deepcopy(model), remind_lr=0.01, **kwargs)
    result = three_stage.three_stage_unlearn(copy.deepcopy(model), remind_lr=0.02, **kwargs)
    assert result.reused == ["fisher", "forget", "align"] and len(fakes.forget) == 1 and len(fakes.remind) == 2
    assert all(r["teacher_cache"] is cache for r in fakes.remind)  # the distillation targets share the run's cache
    torch.manual_seed(5)
    expected = torch.rand(3)
    assert [torch.equal(d, expected) for d in fakes.draws] == [True, True]


def test_a_vit_skips_alignment_with_its_reason(tiny_clip, monkeypatch):
    model, tokenizer = tiny_clip
    fakes = Fakes(monkeypatch)
    result = three_stage.three_stage_unlearn(model, forget_loader=batches(tokenizer, n_batches=1, seed=1),
                                             retain_loader=batches(tokenizer, n_batches=1, seed=2), soup=False)
    assert result.alignment == {"skipped": VIT_SKIP}
    assert fakes.remind[0]["align_fn"] is None and fakes.align == []


def test_soup_without_calib_fn_is_refused_with_its_message(tiny_resnet_clip):
    model, tokenizer = tiny_resnet_clip
    msg = "soup=True needs calib_fn(model) -> {forget_key: ..., retain_key: ...} to choose alpha"
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        three_stage.three_stage_unlearn(model, forget_loader=batches(tokenizer, n_batches=1, seed=1),
                                        retain_loader=batches(tokenizer, n_batches=1, seed=2))


# --------------------------------------------------------------------------- #
# three_stage_unlearn: cache keys (a changed setting misses, the same settings hit)
# --------------------------------------------------------------------------- #
BASE = dict(n_layers=2, margin=-0.3, forget_lr=0.02, forget_steps=3, use_lora=True, rank=3, lora_alpha=6.0,
            retain_weight=0.5, seed=1, remind_lr=0.01, remind_steps=2, kd_weight=0.7, kd_temperature=2.0,
            ema_decay=0.5, align_eps=0.03, align_steps=2, align_lr=0.01, soup=False)


def cached_runs(model, tokenizer, monkeypatch, *, changed: dict, forget=None, retain=None, base=BASE):
    """Run ``base`` twice with one cache (the second must reuse everything), then once with ``changed``."""
    fakes = Fakes(monkeypatch)
    cache = {}
    forget_a, retain_a = batches(tokenizer, n_batches=2, seed=1), batches(tokenizer, n_batches=2, seed=2, label=1)
    run = lambda f, r, **kw: three_stage.three_stage_unlearn(  # noqa: E731
        copy.deepcopy(model), forget_loader=f, retain_loader=r, cache=cache, **{**base, **kw})
    first = run(forget_a, retain_a)
    again = run(forget_a, retain_a)
    assert first.reused == [] and again.reused == ["fisher", "forget", "remind"]
    assert (len(fakes.fisher), len(fakes.forget), len(fakes.remind), len(fakes.align)) == (1, 1, 1, 2)
    changed_run = run(forget or forget_a, retain or retain_a, **changed)
    return fakes, changed_run


@pytest.mark.parametrize("changed", [dict(margin=-0.4), dict(forget_lr=0.03), dict(forget_steps=4),
                                     dict(use_lora=False), dict(rank=2), dict(lora_alpha=8.0), dict(retain_weight=0.6),
                                     dict(seed=2), dict(n_layers=1)],
                         ids=lambda d: next(iter(d)))
def test_a_changed_forget_setting_misses_the_forget_cache(tiny_resnet_clip, monkeypatch, changed):
    model, tokenizer = tiny_resnet_clip
    fakes, result = cached_runs(model, tokenizer, monkeypatch, changed=changed)
    assert len(fakes.forget) == 2 and len(fakes.remind) == 2
    assert result.reused == ["fisher", "align"]


def test_the_forget_cache_key_holds_the_retain_loader_only_when_forgetting_uses_it(tiny_resnet_clip, monkeypatch):
    model, tokenizer = tiny_resnet_clip
    other_retain = batches(tokenizer, n_batches=2, seed=9, label=1)
    fakes, result = cached_runs(model, tokenizer, monkeypatch, changed={}, retain=other_retain)
    assert len(fakes.forget) == 2 and result.reused == []  # retain_weight 0.5: forgetting used the retain set
    fakes, result = cached_runs(model, tokenizer, monkeypatch, changed={}, retain=other_retain,
                                base={**BASE, "retain_weight": 0.0})
    assert len(fakes.forget) == 1 and result.reused == ["forget"]  # retain_weight 0: it never saw them


@pytest.mark.parametrize("changed", [dict(remind_lr=0.02), dict(remind_steps=3), dict(kd_weight=0.8),
                                     dict(kd_temperature=3.0), dict(ema_decay=0.6), dict(distill=False)],
                         ids=lambda d: next(iter(d)))
def test_a_changed_remind_setting_misses_only_the_remind_cache(tiny_resnet_clip, monkeypatch, changed):
    model, tokenizer = tiny_resnet_clip
    fakes, result = cached_runs(model, tokenizer, monkeypatch, changed=changed)
    assert len(fakes.forget) == 1 and len(fakes.remind) == 2
    assert result.reused == ["fisher", "forget", "align"]  # the same retain images, aligned alike: reused
    assert len(fakes.align) == 2


@pytest.mark.parametrize("changed", [dict(align_eps=0.04), dict(align_steps=3), dict(align_lr=0.02)],
                         ids=lambda d: next(iter(d)))
def test_a_changed_align_setting_misses_the_align_cache(tiny_resnet_clip, monkeypatch, changed):
    model, tokenizer = tiny_resnet_clip
    fakes, result = cached_runs(model, tokenizer, monkeypatch, changed=changed)
    assert len(fakes.remind) == 2 and len(fakes.align) == 4
    assert result.reused == ["fisher", "forget"]


@pytest.mark.parametrize("what", ["forget batches", "retain batches", "encoders"])
def test_the_fisher_cache_key_holds_the_scoring_batches_and_the_candidate_tensors(tiny_resnet_clip, monkeypatch, what):
    model, tokenizer = tiny_resnet_clip
    forget = batches(tokenizer, n_batches=2, seed=7) if what == "forget batches" else None
    retain = batches(tokenizer, n_batches=2, seed=8, label=1) if what == "retain batches" else None
    changed = dict(encoders=("text",)) if what == "encoders" else {}
    fakes, result = cached_runs(model, tokenizer, monkeypatch, changed=changed, forget=forget, retain=retain)
    assert len(fakes.fisher) == 2 and "fisher" not in result.reused
    assert fakes.fisher[1][2]["names"] == (TEXT_TENSORS if what == "encoders" else fakes.fisher[0][2]["names"])


def test_the_cached_forget_weights_are_a_snapshot_not_the_live_weights(tiny_resnet_clip, monkeypatch):
    model, tokenizer = tiny_resnet_clip
    Fakes(monkeypatch)
    cache, seen = {}, []
    w = "transformer.resblocks.1.mlp.c_proj.weight"
    start = model.state_dict()[w].clone()
    stage_fn = lambda stage, m: seen.append((stage, m.state_dict()[w].clone())) or {}  # noqa: E731
    kwargs = dict(forget_loader=batches(tokenizer, n_batches=1, seed=1), retain_loader=batches(tokenizer, n_batches=1,
                  seed=2), soup=False, cache=cache, stage_fn=stage_fn)
    three_stage.three_stage_unlearn(copy.deepcopy(model), remind_lr=0.01, **kwargs)
    result = three_stage.three_stage_unlearn(copy.deepcopy(model), remind_lr=0.02, **kwargs)
    assert result.reused == ["fisher", "forget", "align"]
    # after forgetting (fake: +1) both runs hold the same weights; after reminding (fake: +10 in place) +11
    assert [(stage, round(float((v - start).abs().max()), 4)) for stage, v in seen] == [("forget", 1.0), ("remind", 11.0),
                                                                             ("restore", 11.0), ("forget", 1.0),
                                                                             ("remind", 11.0), ("restore", 11.0)]


# --------------------------------------------------------------------------- #
# align_images on a hand-made linear alignment loss
# --------------------------------------------------------------------------- #
STD = (0.26862954, 0.26130258, 0.27577711)  # the tiny models' (OpenAI CLIP's) normalisation


def linear_loss(monkeypatch, weights):
    """Replace alignment_loss by ``sum(weights * images)``; return the list of images it saw."""
    seen = []

    def loss(model, images):
        seen.append(images.detach().clone())
        return (weights * images).sum()

    monkeypatch.setattr(three_stage_stages, "alignment_loss", loss)
    return seen


def signs_and_images(dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    signs = torch.where(torch.rand(2, 3, 4, 4, generator=g) > 0.5, 1.0, -1.0).to(dtype)
    images = (0.2 * torch.randn(2, 3, 4, 4, generator=g)).to(dtype)
    return signs, images


def test_align_images_steps_by_lr_over_std(tiny_resnet_clip, monkeypatch):
    signs, images = signs_and_images()
    linear_loss(monkeypatch, signs)
    aligned, logs = three_stage.align_images(tiny_resnet_clip.model, images, eps=1.0, steps=1, lr=0.1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, -1, 1, 1)
    # one Adam step moves delta by lr against the gradient's sign (pixel units), i.e. by lr / std in model space
    torch.testing.assert_close(aligned, images - 0.1 * signs / std, rtol=0, atol=1e-7)
    assert logs == {"loss_before": float((signs * images).sum()), "loss_after": float((signs * aligned).sum()),
                    "curve": [logs["loss_before"], *logs["curve"][1:-1], logs["loss_after"]],
                    "steps": len(logs["curve"]) - 1}


def test_align_images_clamps_delta_to_eps_in_pixel_units_and_images_to_the_valid_range(tiny_resnet_clip, monkeypatch):
    signs, images = signs_and_images()
    lo, hi = three_stage_stages.lipschitz_bounds(tiny_resnet_clip.model)
    images[0, 0, 0, 0], signs[0, 0, 0, 0] = float(hi[0, 0, 0, 0]) - 0.001, -1.0  # pushed up past the pixel range
    linear_loss(monkeypatch, signs)
    aligned, _ = three_stage.align_images(tiny_resnet_clip.model, images, eps=0.01, steps=2, lr=1.0)
    std = torch.tensor(STD, dtype=torch.float64).view(1, -1, 1, 1)
    expected = torch.maximum(torch.minimum(images + (-0.01 * signs) / std, hi), lo)
    assert aligned.dtype == torch.float64 and torch.equal(aligned, expected)  # exact: float64 std, +-eps
    assert float(aligned[0, 0, 0, 0]) == float(hi[0, 0, 0, 0])


def test_align_images_defaults_are_ten_steps_of_2_over_255_within_8_over_255(tiny_resnet_clip, monkeypatch):
    signs, images = signs_and_images()
    seen = linear_loss(monkeypatch, signs)
    aligned, _ = three_stage.align_images(tiny_resnet_clip.model, images)
    assert len(seen) == 11  # ten steps, then the aligned images once
    std = torch.tensor(STD, dtype=torch.float64).view(1, -1, 1, 1)
    torch.testing.assert_close(aligned, images - (8 / 255) * signs / std, rtol=0, atol=1e-12)


def test_align_images_loss_before_is_the_loss_at_delta_zero(tiny_resnet_clip, monkeypatch):
    signs, images = signs_and_images()
    seen = linear_loss(monkeypatch, signs)
    aligned, logs = three_stage.align_images(tiny_resnet_clip.model, images, eps=0.1, steps=3, lr=0.01)
    assert torch.equal(seen[0], images) and len(seen) == 4
    assert logs == {"loss_before": float((signs * images).sum()), "loss_after": float((signs * aligned).sum()),
                    "curve": [logs["loss_before"], *logs["curve"][1:-1], logs["loss_after"]],
                    "steps": len(logs["curve"]) - 1}
    assert logs["loss_after"] < logs["loss_before"]


def test_align_images_with_no_steps_returns_the_images_and_one_loss(tiny_resnet_clip, monkeypatch):
    signs, images = signs_and_images()
    linear_loss(monkeypatch, signs)
    aligned, logs = three_stage.align_images(tiny_resnet_clip.model, images, steps=0)
    loss = float((signs * images).sum())
    assert torch.equal(aligned, images) and logs == {"loss_before": loss, "loss_after": loss, "curve": [loss],
                                                     "steps": 0}


# --------------------------------------------------------------------------- #
# alignment_loss, batchnorm_layers, content_key, restore_stage
# --------------------------------------------------------------------------- #
def test_alignment_loss_on_a_vit_says_what_to_do(tiny_clip):
    msg = ("the image tower has no BatchNorm layers (a ViT?): alignment needs running statistics; "
           "run three_stage_unlearn with align=False or on a ResNet tower")
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        three_stage_stages.alignment_loss(tiny_clip.model, torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))


def test_batchnorm_layers_finds_frozen_batchnorm(tiny_resnet_clip):
    from open_clip.utils import freeze_batch_norm_2d

    model = tiny_resnet_clip.model
    freeze_batch_norm_2d(model.visual)  # open_clip's locked image tower: torchvision's FrozenBatchNorm2d
    found = three_stage.batchnorm_layers(model)
    assert {type(m).__name__ for _, m in found} == {"FrozenBatchNorm2d"}
    assert [n for n, _ in found] == [
        "bn1", "bn2", "bn3", *(f"layer{i}.0.{b}" for i in (1, 2, 3, 4) for b in ("bn1", "bn2", "bn3", "downsample.1"))]


def test_content_key_tells_apart_every_value_and_every_tensor_bit():
    assert three_stage.content_key(1, "a") == three_stage.content_key(1, "a")
    assert three_stage.content_key(1) != three_stage.content_key(2)
    assert three_stage.content_key(0.001) != three_stage.content_key(0.002)
    t = torch.tensor([1.5, 2.5])
    close = t.clone()
    close[0] += 1e-6  # prints the same as t
    assert repr(close) == repr(t)
    assert three_stage.content_key(t) == three_stage.content_key(t.clone())
    assert three_stage.content_key(close) != three_stage.content_key(t)


def test_content_key_parts_do_not_run_into_each_other():
    """Each part is length-prefixed: settings whose reprs concatenate to the same text get different keys."""
    assert three_stage.content_key(0.5, 11) != three_stage.content_key(0.51, 1)
    assert three_stage.content_key(0.001, 12) != three_stage.content_key(0.0011, 2)
    assert three_stage.content_key("ab", "c") != three_stage.content_key("a", "bc")
    a, b = torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3], dtype=torch.uint8)
    assert three_stage.content_key(a, b) != three_stage.content_key(torch.tensor([1], dtype=torch.uint8),
                                                                     torch.tensor([2, 3], dtype=torch.uint8))
    # hand-worked: SHA-1 over (length, bytes) of each part's repr
    h = hashlib.sha1()
    for piece in (b"0.5", b"11"):
        h.update(len(piece).to_bytes(8, "little") + piece)
    assert three_stage.content_key(0.5, 11) == h.hexdigest()


def soup_calib(model):
    w = float(model.weight.detach())  # the soup weight alpha itself
    return {"forget_acc": 1.0 - w, "retain_acc": 1.0 - 0.5 * w, "f": 1.0 - w, "r": 1.0 - 0.5 * w}


def linear_soup():
    model = torch.nn.Linear(1, 1, bias=False)
    return model, {"weight": torch.zeros(1, 1)}, {"weight": torch.ones(1, 1)}


def test_restore_stage_default_forget_bar_is_five_percent():
    model, theta_0, theta_1 = linear_soup()
    out = three_stage.restore_stage(model, original_state=theta_0, unlearned_state=theta_1, calib_fn=soup_calib,
                                    alphas=(0.0, 0.9, 0.96, 1.0))
    # forget accuracy 1 - alpha: only 0.96 and 1.0 are <= 0.05; 0.96 keeps more
    assert out["alpha"] == 0.96 and float(model.weight.detach()) == pytest.approx(0.96)


def test_restore_stage_passes_its_keys_and_bar_to_select_alpha():
    model, theta_0, theta_1 = linear_soup()
    only_fr = lambda m: {k: v for k, v in soup_calib(m).items() if k in ("f", "r")}  # noqa: E731
    out = three_stage.restore_stage(model, original_state=theta_0, unlearned_state=theta_1, calib_fn=only_fr,
                                    alphas=(0.0, 0.9, 0.96, 1.0), max_forget=0.2, forget_key="f", retain_key="r")
    assert out["alpha"] == 0.9 and [t["alpha"] for t in out["alpha_curve"]] == [0.0, 0.9, 0.96, 1.0]
    assert float(model.weight.detach()) == pytest.approx(0.9)


# --------------------------------------------------------------------------- #
# three_stage_unlearn: the reminding cache key, no reminding, the cached reminded weights
# --------------------------------------------------------------------------- #
def test_switching_alignment_misses_the_remind_cache(tiny_resnet_clip, monkeypatch):
    """The reminded weights depend on whether the retain images were aligned: align on / off must not share them."""
    model, tokenizer = tiny_resnet_clip
    fakes, result = cached_runs(model, tokenizer, monkeypatch, changed=dict(align=False))
    assert len(fakes.forget) == 1 and len(fakes.remind) == 2
    assert fakes.remind[0]["align_fn"] is not None and fakes.remind[1]["align_fn"] is None
    assert result.reused == ["fisher", "forget"]


@pytest.mark.parametrize("remind_steps", [0, 1])
def test_no_reminding_at_zero_steps_says_so_in_both_reports(tiny_resnet_clip, monkeypatch, remind_steps):
    model, tokenizer = tiny_resnet_clip
    fakes = Fakes(monkeypatch)
    result = three_stage.three_stage_unlearn(
        copy.deepcopy(model), forget_loader=batches(tokenizer, n_batches=1, seed=1),
        retain_loader=batches(tokenizer, n_batches=1, seed=2), remind_steps=remind_steps, soup=False)
    if remind_steps == 0:
        assert fakes.remind == [] and fakes.align == []
        assert result.remind == {"skipped": "remind_steps=0"}
        assert result.alignment == {"skipped": "no retain batches were reminded (remind_steps=0)"}
    else:
        assert len(fakes.remind) == 1 and fakes.remind[0]["steps"] == 1
        assert result.remind["steps"] == 1 and result.alignment["batches"] == 1


def test_the_cached_reminded_weights_are_a_snapshot_not_the_live_weights(tiny_resnet_clip, monkeypatch):
    model, tokenizer = tiny_resnet_clip
    Fakes(monkeypatch)
    cache = {}
    unlearned = copy.deepcopy(model)
    three_stage.three_stage_unlearn(unlearned, forget_loader=batches(tokenizer, n_batches=1, seed=1),
                                    retain_loader=batches(tokenizer, n_batches=1, seed=2), soup=False, cache=cache)
    (key,) = [k for k in cache if k[0] == "remind"]
    (_, _, weights), _ = cache[key]
    before = {k: v.clone() for k, v in weights.items()}
    assert before
    with torch.no_grad():
        for p in unlearned.parameters():
            p.add_(100.0)  # the model changes in place after the run (e.g. the next stage, a caller)
    assert all(torch.equal(weights[k], before[k]) for k in weights)
