"""Paper A's three stages: each moves its loss the right way, and the whole pipeline runs on tiny CLIPs."""

import dataclasses
import math
import re

import pytest
import torch

from clipunlearn import configs, souping
from clipunlearn.methods import three_stage, three_stage_stages
from clipunlearn.models import copy_frozen

IMAGE_SIZE = 32
CLASSNAMES = ("t-shirt", "trouser")


def pair_batches(tokenizer, *, label: int, n: int = 8, batch_size: int = 4, seed: int = 0) -> list[dict]:
    """Random images captioned with class ``label`` (a list of batches works as a loader)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g).clamp(-1.5, 1.5)
    texts = tokenizer([f"a photo of a {CLASSNAMES[label]}."] * n)
    labels = torch.full((n,), label)
    return [{"images": images[i:i + batch_size], "texts": texts[i:i + batch_size], "labels": labels[i:i + batch_size]}
            for i in range(0, n, batch_size)]


def mixed_batch(tokenizer, seed: int = 0) -> dict:
    """One retain batch with both classes (so the contrastive loss has negatives)."""
    a, b = pair_batches(tokenizer, label=0, seed=seed)[0], pair_batches(tokenizer, label=1, seed=seed + 1)[0]
    return {k: torch.cat([a[k], b[k]]) for k in a}


def similarity(model, batch) -> float:
    with torch.no_grad():
        return float(three_stage_stages.pair_similarities(model, batch).mean())


@pytest.fixture(params=["vit", "resnet"])
def clip_model(request, tiny_clip, tiny_resnet_clip):
    return (tiny_clip if request.param == "vit" else tiny_resnet_clip).model


@pytest.mark.parametrize("use_lora", [True, False])
def test_forget_stage_step_lowers_forget_similarity(clip_model, tiny_tokenizer, use_lora):
    forget = pair_batches(tiny_tokenizer, label=0, n=4)
    layers = three_stage.candidate_layers(clip_model)[-3:]
    before = similarity(clip_model, forget[0])
    flags = {n: p.requires_grad for n, p in clip_model.named_parameters()}
    report = three_stage.forget_stage(clip_model, forget_loader=forget, layers=layers, margin=-2.0, lr=1e-2,
                                      max_steps=1, use_lora=use_lora, rank=2)
    assert report["steps"] == 1 and report["stopped"] == "max_steps"
    assert similarity(clip_model, forget[0]) < before - 1e-4
    assert {n: p.requires_grad for n, p in clip_model.named_parameters()} == flags  # plain again, flags kept
    assert not clip_model.training


def test_forget_stage_stops_at_the_margin_and_tunes_only_its_layers(tiny_resnet_clip, tiny_tokenizer):
    model = tiny_resnet_clip.model
    forget = pair_batches(tiny_tokenizer, label=0, n=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = three_stage.forget_stage(model, forget_loader=forget, layers=["visual.attnpool.c_proj"],
                                      margin=similarity(model, forget[0]) + 1.0, max_steps=10)
    assert report["steps"] == 0 and report["stopped"] == "margin"  # already below: no update
    report = three_stage.forget_stage(model, forget_loader=forget, layers=["visual.attnpool.c_proj"], margin=-2.0,
                                      lr=1e-2, max_steps=3, use_lora=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"visual.attnpool.c_proj.weight", "visual.attnpool.c_proj.bias"}
    assert report["similarity_after"] < report["similarity_before"]


def test_alignment_lowers_the_batchnorm_statistics_gap(tiny_resnet_clip, tiny_tokenizer):
    model = tiny_resnet_clip.model
    images = pair_batches(tiny_tokenizer, label=1, n=8, batch_size=8)[0]["images"]
    stats = {n: b.clone() for n, b in model.named_buffers()}
    eps = 8 / 255
    aligned, logs = three_stage.align_images(model, images, eps=eps, steps=5, lr=2 / 255)
    assert logs["loss_after"] < logs["loss_before"]
    with torch.no_grad():
        assert float(three_stage_stages.alignment_loss(model, aligned)) == pytest.approx(logs["loss_after"], rel=1e-5)
    assert float((aligned - images).abs().max()) <= eps / 0.26 + 1e-6  # pixel bound / smallest CLIP std
    assert all(torch.equal(b, stats[n]) for n, b in model.named_buffers())  # running statistics untouched


@pytest.mark.parametrize("per_sample", [False, True])
def test_alignment_loss_stops_after_the_last_batchnorm_with_the_full_pass_value_and_gradient(tiny_resnet_clip,
                                                                                             per_sample):
    model = tiny_resnet_clip.model
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3), requires_grad=True)
    bns = [m for _, m in three_stage_stages.batchnorm_layers(model)]
    calls = []
    handle = model.visual.attnpool.register_forward_hook(lambda *a: calls.append(1))
    try:
        loss = three_stage_stages.alignment_loss(model, images, per_sample=per_sample)
    finally:
        handle.remove()
    assert calls == []  # the attention pool after the last BatchNorm never ran
    (grad,) = torch.autograd.grad(loss, [images])
    dims = (2, 3) if per_sample else (0, 2, 3)
    terms = []  # the full pass, each BatchNorm's term made in its hook as the loss makes it

    def hook(bn, inputs):
        x = inputs[0]
        gap = (x.mean(dims) - bn.running_mean).abs() + \
            ((x.var(dims, unbiased=False) + bn.eps).sqrt() - (bn.running_var + bn.eps).sqrt()).abs()
        terms.append(gap.sum(-1).mean() if per_sample else gap.sum())

    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    try:
        model.encode_image(images)
    finally:
        for h in handles:
            h.remove()
    full = torch.stack(terms).sum()
    assert len(terms) == len(bns) and torch.equal(loss.detach(), full.detach())
    assert torch.equal(grad, torch.autograd.grad(full, [images])[0])


def test_alignment_needs_batchnorm(tiny_clip, tiny_tokenizer):
    images = pair_batches(tiny_tokenizer, label=1, n=4)[0]["images"]
    assert three_stage.batchnorm_layers(tiny_clip.model) == []
    with pytest.raises(ValueError, match="no BatchNorm"):
        three_stage.align_images(tiny_clip.model, images)


@pytest.mark.parametrize("use_lora", [True, False])
def test_remind_step_lowers_contrastive_plus_distillation(clip_model, tiny_tokenizer, use_lora):
    original = copy_frozen(clip_model)
    batch = mixed_batch(tiny_tokenizer)
    layers = three_stage.candidate_layers(clip_model)[-3:]
    # start from a model that differs from the original, so distillation has something to teach
    three_stage.forget_stage(clip_model, forget_loader=[batch], layers=layers, margin=-2.0, lr=1e-2, max_steps=2,
                             use_lora=False)
    with torch.no_grad():
        before, parts = three_stage_stages.remind_loss(clip_model, original, batch, kd_weight=1.0, kd_temperature=2.0)
    assert parts["kd"] > 0
    report = three_stage.remind_stage(clip_model, original=original, retain_loader=[batch], layers=layers, lr=1e-3,
                                      steps=1, kd_weight=1.0, kd_temperature=2.0, ema_decay=0.0, use_lora=use_lora,
                                      rank=2)
    with torch.no_grad():
        after, _ = three_stage_stages.remind_loss(clip_model, original, batch, kd_weight=1.0, kd_temperature=2.0)
    assert report["steps"] == 1 and report["loss_before"] == pytest.approx(float(before), rel=1e-5)
    assert after < before


def test_remind_keeps_the_ema_of_the_weights(tiny_resnet_clip, tiny_tokenizer):
    model = tiny_resnet_clip.model
    original, batch, layers = copy_frozen(model), mixed_batch(tiny_tokenizer), ["visual.attnpool.c_proj"]
    start = model.visual.attnpool.c_proj.weight.detach().clone()
    last = copy_frozen(model)
    kwargs = dict(original=original, retain_loader=[batch], layers=layers, lr=1e-2, steps=1, use_lora=False)
    three_stage.remind_stage(last, ema_decay=0.0, **kwargs)
    three_stage.remind_stage(model, ema_decay=0.75, **kwargs)
    expected = 0.75 * start + 0.25 * last.visual.attnpool.c_proj.weight
    torch.testing.assert_close(model.visual.attnpool.c_proj.weight.detach(), expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="ema_decay"):
        three_stage.remind_stage(model, ema_decay=1.0, **kwargs)


def test_distillation_loss_is_zero_for_the_teacher_and_positive_otherwise():
    logits = torch.randn(4, 4)
    assert float(three_stage_stages.distillation_loss(logits, logits, temperature=2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(three_stage_stages.distillation_loss(logits, torch.randn(4, 4), temperature=2.0)) > 0


def test_select_alpha_criterion():
    trials = [{"alpha": 0.0, "forget_acc": 0.9, "retain_acc": 0.90},
              {"alpha": 0.5, "forget_acc": 0.04, "retain_acc": 0.85},
              {"alpha": 0.7, "forget_acc": 0.02, "retain_acc": 0.85},
              {"alpha": 1.0, "forget_acc": 0.00, "retain_acc": 0.70}]
    # largest retained accuracy with forget <= max_forget; ties -> lower forget accuracy
    assert souping.select_alpha(trials, max_forget=0.05) == 0.7
    assert souping.select_alpha(trials, max_forget=0.01) == 1.0
    assert souping.select_alpha(trials, max_forget=1.0) == 0.0
    # nothing forgets enough: the lowest forget accuracy
    assert souping.select_alpha(trials[:3], max_forget=0.01) == 0.7
    both = [{**t, "sibling_acc": s} for t, s in zip(trials, (0.9, 0.5, 0.9, 0.9))]
    assert souping.select_alpha(both, retain_key=("sibling_acc", "retain_acc"), max_forget=0.05) == 0.7
    with pytest.raises(ValueError, match="lack the keys"):
        souping.select_alpha([{"alpha": 0.5}], max_forget=0.05)
    with pytest.raises(ValueError, match="no trials"):
        souping.select_alpha([], max_forget=0.05)


def test_restore_stage_loads_the_chosen_soup(tiny_resnet_clip):
    model = tiny_resnet_clip.model
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    theta_1 = {k: v + 1.0 if v.is_floating_point() else v.clone() for k, v in theta_0.items()}
    w = "visual.attnpool.c_proj.weight"
    # calibration: forget accuracy falls with alpha, retained accuracy too
    calib = lambda m: {"forget_acc": float(1.0 - (m.state_dict()[w] - theta_0[w]).mean()),
                       "retain_acc": float(1.0 - 0.5 * (m.state_dict()[w] - theta_0[w]).mean())}
    out = three_stage.restore_stage(model, original_state=theta_0, unlearned_state=theta_1, calib_fn=calib,
                                    alphas=(0.0, 0.5, 0.96, 1.0), max_forget=0.05)
    assert [t["alpha"] for t in out["alpha_curve"]] == [0.0, 0.5, 0.96, 1.0]
    assert out["alpha"] == 0.96 and out["metrics"]["alpha"] == 0.96
    torch.testing.assert_close(model.state_dict()[w], theta_0[w] + 0.96)


def calib_fn(model):
    """Stand-in calibration: a score that depends on every weight, so souping has a curve."""
    with torch.no_grad():
        return {"forget_acc": 0.0, "retain_acc": float(sum(p.abs().mean() for p in model.parameters()))}


def test_three_stage_unlearn_smoke_on_a_resnet(tiny_resnet_clip, tiny_tokenizer):
    model = tiny_resnet_clip.model
    forget = pair_batches(tiny_tokenizer, label=0)
    retain = [mixed_batch(tiny_tokenizer, seed=s) for s in (1, 2)]
    stats = {n: b.clone() for n, b in model.named_buffers()}
    keys = list(model.state_dict())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    result = three_stage.three_stage_unlearn(
        model, forget_loader=forget, retain_loader=retain, calib_fn=calib_fn, n_layers=3, forget_steps=3,
        forget_lr=1e-2, margin=-2.0, remind_steps=2, align_steps=2, alphas=(0.0, 0.5, 1.0), rank=2, seed=0)
    assert not model.training and list(model.state_dict()) == keys
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(torch.equal(b, stats[n]) for n, b in model.named_buffers())  # BatchNorm statistics never updated
    ranking = list(result.layer_scores)
    assert result.layers == ranking[:3] and len(ranking) == len(three_stage.candidate_layers(model))
    assert result.forget["steps"] == 3 and result.forget["similarity_after"] < result.forget["similarity_before"]
    assert result.alignment["batches"] == 2 and result.alignment["loss_after"] < result.alignment["loss_before"]
    assert result.remind["steps"] == 2 and len(result.remind["history"]) == 2
    assert [t["alpha"] for t in result.alpha_curve] == [0.0, 0.5, 1.0]
    assert result.alpha == souping.select_alpha(result.alpha_curve, max_forget=result.config["max_forget"])
    assert result.metrics == next(t for t in result.alpha_curve if t["alpha"] == result.alpha)
    assert set(result.seconds) == {"fisher", "forget", "align", "remind", "restore", "report", "total"}
    assert result.config["n_layers"] == 3 and result.to_dict()["layers"] == result.layers


def test_three_stage_unlearn_on_a_vit_skips_alignment(tiny_clip, tiny_tokenizer):
    model = tiny_clip.model
    result = three_stage.three_stage_unlearn(
        model, forget_loader=pair_batches(tiny_tokenizer, label=0), retain_loader=[mixed_batch(tiny_tokenizer)],
        calib_fn=calib_fn, n_layers=2, forget_steps=2, remind_steps=1, alphas=(0.5, 1.0), rank=2)
    assert "BatchNorm" in result.alignment["skipped"] and result.seconds["align"] == 0.0
    assert result.remind["steps"] == 1 and result.alpha in (0.5, 1.0)


@pytest.mark.parametrize("switches", [dict(layer_choice="all"), dict(layer_choice="random"),
                                      dict(use_lora=False), dict(align=False, distill=False),
                                      dict(soup=False)])
def test_three_stage_ablation_switches(tiny_resnet_clip, tiny_tokenizer, switches):
    model = tiny_resnet_clip.model
    result = three_stage.three_stage_unlearn(
        model, forget_loader=pair_batches(tiny_tokenizer, label=0), retain_loader=[mixed_batch(tiny_tokenizer)],
        calib_fn=calib_fn, n_layers=2, forget_steps=1, remind_steps=1, align_steps=1, alphas=(0.5, 1.0), rank=2,
        **switches)
    candidates = three_stage.candidate_layers(model)
    if switches.get("layer_choice") == "all":
        assert result.layers == candidates and result.layer_scores == {}
    elif switches.get("layer_choice") == "random":
        assert len(result.layers) == 2 and set(result.layers) <= set(candidates) and result.layer_scores == {}
    if switches.get("align") is False:
        assert result.alignment == {"skipped": "align=False"}
        assert all(h["kd"] == 0.0 for h in result.remind["history"])
    if switches.get("soup") is False:
        assert result.alpha == 1.0 and result.alpha_curve == [] and result.metrics["alpha"] == 1.0
    assert math.isfinite(result.remind["loss_after"])


def test_three_stage_unlearn_rejects_bad_settings(tiny_resnet_clip, tiny_tokenizer):
    kwargs = dict(forget_loader=pair_batches(tiny_tokenizer, label=0), retain_loader=[mixed_batch(tiny_tokenizer)])
    with pytest.raises(ValueError, match="calib_fn"):
        three_stage.three_stage_unlearn(tiny_resnet_clip.model, calib_fn=None, **kwargs)
    with pytest.raises(ValueError, match="valid: fisher, all, random"):
        three_stage.three_stage_unlearn(tiny_resnet_clip.model, calib_fn=calib_fn, layer_choice="best", **kwargs)
    with pytest.raises(ValueError, match="valid: image, text"):
        three_stage.candidate_layers(tiny_resnet_clip.model, encoders=("audio",))


# --------------------------------------------------------------------------- #
# On the shared harness (experiment.run_three_stage and friends)
# --------------------------------------------------------------------------- #
def subgroup_task(seed: int = 0, kind: str = "forget-subgroup", target: str = "sandal"):
    from clipunlearn import experiment

    from .test_experiment import tiny_world

    return experiment.build_task(tiny_world(seed=0), tiny_world(n_per_class=6, seed=1), kind=kind, target=target,
                                 seed=seed, retain_per_class=4, eval_per_class=3)


SMALL = dict(n_layers=2, rank=2, forget_steps=3, remind_steps=2, align_steps=1, alphas=(0.0, 0.5, 1.0))


def test_run_three_stage_returns_a_full_record(tiny_resnet_clip):
    from clipunlearn import experiment

    model, tokenizer = tiny_resnet_clip
    task = subgroup_task()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unlearned, rec = experiment.run_three_stage(task, model=model, tokenizer=tokenizer, lr=1e-2, batch_size=8,
                                                settings=dict(SMALL, margin=-2.0), calib_per_class=2, examples=2)
    assert rec["method"] == "three_stage" and rec["task"] == "forget-subgroup"
    assert rec["config"]["lr"] == 1e-2 and rec["config"]["forget_class"] == "sandal" and rec["config"]["soup"]
    m = rec["metrics"]
    for key in ("forget_acc", "sibling_acc", "retain_acc", "other_acc", "mia", "val_forget_acc", "val_retain_acc",
                "score", "seconds", "peak_mem_mb", "alpha", "forget_steps"):
        assert key in m, key
    assert isinstance(m["per_class_acc"], dict) and isinstance(m["forget_confusion"], dict)
    for stage in ("forget", "remind"):  # every scalar test metric after the first two stages
        assert {f"after_{stage}/{k}" for k in ("forget_acc", "sibling_acc", "retain_acc", "other_acc", "mia")} <= set(m)
    info = rec["three_stage"]
    assert [name for name, _ in info["layer_scores"]][:2] == info["layers"]  # the top two by relative Fisher
    scores = [s for _, s in info["layer_scores"]]
    assert scores == sorted(scores, reverse=True)
    assert info["forget"]["steps"] == 3 and len(info["forget"]["similarity"]) == 4  # before each step, and after
    assert [row["alpha"] for row in info["alpha_curve"]] == [0.0, 0.5, 1.0] and info["alpha"] == m["alpha"]
    assert {"forget_acc", "sibling_acc", "retain_acc"} <= set(info["alpha_curve"][0])
    assert {"fisher", "forget", "align", "remind", "restore", "total"} <= set(info["seconds"])
    shown = info["examples"]
    assert len(shown["indices"]) == len(shown["labels"]) == len(shown["restore"]) == 4  # 2 sandals + 2 siblings
    assert set(shown) >= {"original", "forget", "remind", "restore"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model passed in is untouched
    assert any(not torch.equal(before[k], v) for k, v in unlearned.state_dict().items())
    # the stages, as records (original first, then one per stage)
    original = experiment.summarise_run(task, method="original", config={"seed": None},
                                        test_metrics=experiment.evaluate_model(model, task, tokenizer=tokenizer))
    staged = experiment.stage_records([original, rec], task="forget-subgroup")
    assert [r["method"] for r in staged] == ["original", "after forgetting", "after reminding", "after restoring"]
    assert staged[-1]["metrics"]["forget_acc"] == m["forget_acc"]
    assert staged[1]["metrics"]["forget_acc"] == m["after_forget/forget_acc"]
    assert "unlearning_score" in staged[1]["metrics"]


def test_three_stage_cache_gives_the_same_model(tiny_resnet_clip):
    from clipunlearn import experiment

    model, tokenizer = tiny_resnet_clip
    task = subgroup_task()
    kwargs = dict(model=model, tokenizer=tokenizer, lr=1e-2, batch_size=8, settings=SMALL, calib_per_class=2,
                  stage_metrics=False)
    fresh, rec = experiment.run_three_stage(task, **kwargs)
    cache = {}
    first, _ = experiment.run_three_stage(task, cache=cache, **kwargs)
    assert {key[0] for key in cache} == {"fisher", "forget", "align", "remind", "teacher"}
    n = len(cache)
    again, rec_again = experiment.run_three_stage(task, cache=cache, **kwargs)
    assert len(cache) == n and set(rec_again["three_stage"]["reused"]) == {"fisher", "forget", "remind"}
    for sd in (first.state_dict(), again.state_dict()):
        assert all(torch.equal(v, sd[k]) for k, v in fresh.state_dict().items())
    assert rec_again["three_stage"]["layer_scores"] == rec["three_stage"]["layer_scores"]
    # reused work is counted at its original time
    assert rec_again["metrics"]["seconds"] >= rec_again["three_stage"]["seconds"]["reused"] > 0
    assert not any(k.startswith("after_") for k in rec["metrics"])  # stage_metrics=False
    # an ablation that only switches souping off reuses both training stages, exactly
    no_soup = dict(kwargs, settings=dict(SMALL, soup=False))
    alone, _ = experiment.run_three_stage(task, **no_soup)
    shared, rec_shared = experiment.run_three_stage(task, cache=cache, **no_soup)
    assert set(rec_shared["three_stage"]["reused"]) == {"fisher", "forget", "remind"}
    assert all(torch.equal(v, shared.state_dict()[k]) for k, v in alone.state_dict().items())


def test_subgroup_benchmark_and_ablation_records(tmp_path, tiny_resnet_clip):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipunlearn import experiment, plots
    from clipunlearn.results import load_records

    model, tokenizer = tiny_resnet_clip
    tasks = {"sandal": [subgroup_task(seed=s) for s in (0, 1)]}
    store = experiment.ResultStore(tmp_path / "r.json", match={"profile": "mini"})
    three = dict(batch_size=8, calib_per_class=1, settings=dict(SMALL, forget_steps=1, remind_steps=1,
                                                                 alphas=(0.5, 1.0)))
    records = experiment.run_subgroup_benchmark(
        tasks, model=model, tokenizer=tokenizer, methods=["three_stage", "ga"],
        grids={"three_stage": {"lr": [1e-3, 1e-2]}, "ga": {"lr": [1e-4]}}, steps=1, batch_size=8,
        three_stage=three, store=store, progress=False)
    results = [r for r in records if r["task"] == "forget-subgroup"]
    assert [(r["method"], r["config"]["seed"]) for r in results] == [
        ("original", None), ("three_stage", 0), ("three_stage", 1), ("ga", 0), ("ga", 1)]
    assert all("unlearning_score" in r["metrics"] for r in results)
    chosen = results[1]["config"]["selected"]["lr"]
    assert results[2]["config"]["lr"] == chosen and results[2]["config"]["selected_on_seed"] == 0
    picked = [r["config"]["selected"] for r in records if r["task"] == "selection" and r["method"] == "three_stage"]
    assert sorted(picked) == [False, True]
    ablation = experiment.run_three_stage_ablation(
        tasks["sandal"], model=model, tokenizer=tokenizer, store=store,
        variants={"three_stage-no_soup": {"soup": False}}, progress=False, **three)
    assert [(r["method"], r["config"]["variant"]) for r in ablation] == [
        ("original", "none"), ("three_stage", "full"), ("three_stage", "full"),
        ("three_stage-no_soup", "no_soup"), ("three_stage-no_soup", "no_soup")]
    no_soup = ablation[-1]
    assert no_soup["task"] == "ablation" and no_soup["config"]["lr"] == chosen and no_soup["metrics"]["alpha"] == 1.0
    saved = load_records(tmp_path / "r.json")
    figures = plots.FIGURES["30_subgroup_forgetting"](saved)
    for name in ("30_main_forget_subgroup.png", "30_ablation.png", "30_layer_ranking_forget_subgroup.png",
                 "30_alpha_curve_forget_subgroup.png", "30_stages_forget_subgroup.png", "30_selection.png"):
        assert name in figures, sorted(figures)
    for fig in figures.values():
        plt.close(fig)
    with pytest.raises(ValueError, match="valid: three_stage, lipschitz_synthetic"):
        experiment.run_subgroup_benchmark(tasks, model=model, tokenizer=tokenizer, methods=["erase"], grids={},
                                          store=store)


def test_three_stage_settings_build_from_defaults_dicts_and_changes():
    S = three_stage.ThreeStageSettings
    assert S.build() == S()
    built = S.build({"n_layers": 3, "remind_steps": 10}, remind_steps=60)
    assert (built.n_layers, built.remind_steps, built.rank) == (3, 60, 4)  # changes win; the rest are defaults
    assert S.build(built, soup=False) == S(n_layers=3, remind_steps=60, soup=False)
    mini = configs.mini_settings()["three_stage"]["settings"]
    from_mini = S.build(mini)  # mini.json's keys are fields
    assert all(getattr(from_mini, k) == v for k, v in mini.items())
    valid = ", ".join(f.name for f in dataclasses.fields(S))
    with pytest.raises(ValueError, match="^" + re.escape(f"unknown three-stage settings ['lr', 'steps']; valid: {valid}")):
        S.build({"steps": 3}, lr=1e-3)


def test_three_stage_unlearn_refuses_an_unknown_setting(tiny_resnet_clip):
    with pytest.raises(ValueError, match=r"unknown three-stage settings \['n_layer'\]"):
        three_stage.three_stage_unlearn(tiny_resnet_clip.model, forget_loader=[], retain_loader=[], n_layer=2)
