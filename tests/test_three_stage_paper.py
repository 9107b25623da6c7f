"""Paper A's task and stages as the paper states them: the style subgroup's retain set, the per-sample forgetting
criterion, per-sample alignment until converged, distillation on its own batches, souping's fallback flag and
notebook 30's per-seed and per-stage tables."""

import pytest
import torch

from clipunlearn import data, experiment, metrics
from clipunlearn.methods import three_stage, three_stage_stages
from clipunlearn.models import copy_frozen
from clipunlearn.papers import paper_a
from clipunlearn.results import make_record

from .test_experiment import tiny_world


@pytest.fixture
def style_task():
    train, test = tiny_world(n_per_class=24, seed=0), tiny_world(n_per_class=6, seed=1)
    return experiment.build_task(train, test, kind="forget-style-subgroup", target="sketch:sneaker", seed=0,
                                 retain_per_class=6, eval_per_class=4, val_per_class=2)


def counts(ds, idx, attr):
    """``{value: count}`` of ``ds.<attr>`` over ``idx``, counted one image at a time."""
    out = {}
    for i in idx.tolist():
        v = int(getattr(ds, attr)[i])
        out[v] = out.get(v, 0) + 1
    return out


# --------------------------------------------------------------------------- #
# The style subgroup's retain set
# --------------------------------------------------------------------------- #
def test_style_retain_set_is_siblings_and_the_forget_style_in_balance(style_task):
    task, train = style_task, style_task.train
    sneaker, sketch = data.FASHION_MNIST_CLASSES.index("sneaker"), data.STYLES.index("sketch")
    parts = task.retain_parts
    assert set(parts) == {"sibling", "style", "photo"}
    # siblings: the class in each kept style, retain_per_class of each
    assert counts(train, parts["sibling"], "targets") == {sneaker: 12}
    assert counts(train, parts["sibling"], "styles") == {0: 6, 2: 6}
    # the forget style in the other classes: as many as the siblings (rounded up per class), evenly spread
    style_classes = counts(train, parts["style"], "targets")
    assert counts(train, parts["style"], "styles") == {sketch: len(parts["style"])}
    assert sneaker not in style_classes and len(style_classes) == 9 and set(style_classes.values()) == {2}
    assert 12 <= len(parts["style"]) < 12 + 9
    # photos of the other classes, the union is the retain set, and no forget image among them
    assert counts(train, parts["photo"], "styles") == {0: len(parts["photo"])}
    assert sneaker not in counts(train, parts["photo"], "targets")
    assert sorted(task.retain_train.tolist()) == sorted(torch.cat(list(parts.values())).tolist())
    assert not set(task.retain_train.tolist()) & set(task.forget_train.tolist())
    assert task.forget_templates == ("a sketch of a {}.",)


def test_style_task_validates_on_the_other_classes_in_every_other_style(style_task):
    task, train = style_task, style_task.train
    sneaker = data.FASHION_MNIST_CLASSES.index("sneaker")
    assert counts(train, task.val_other, "styles") == {1: 18, 2: 18}  # val_per_class of 9 classes, per style
    assert sneaker not in counts(train, task.val_other, "targets")
    assert not set(task.val_other.tolist()) & set(task.retain_train.tolist())
    assert set(experiment.calibration_split(task, per_class=1)) == {"forget", "retain", "sibling", "other"}


def test_other_task_kinds_have_no_style_parts():
    train, test = tiny_world(n_per_class=24, seed=0), tiny_world(n_per_class=6, seed=1)
    for kind, target in (("forget-subgroup", "sandal"), ("forget-class", "sneaker")):
        task = experiment.build_task(train, test, kind=kind, target=target, seed=0, retain_per_class=6,
                                     eval_per_class=4, val_per_class=2)
        assert task.retain_parts == {} and task.val_other is None and task.forget_templates == ()
        assert set(experiment.calibration_split(task, per_class=1)) <= {"forget", "retain", "sibling"}


def test_validation_averages_siblings_retain_and_other_styles(style_task, tiny_resnet_clip):
    task = style_task
    model, tok = tiny_resnet_clip.model, tiny_resnet_clip.tokenizer
    out = experiment.validate_model(model, task, tokenizer=tok)
    clf = metrics.build_classifier(model, tok, task.classnames, task.templates)
    parts = [metrics.accuracy(model, clf, task.train, indices=idx) for idx in
             (task.retain_val, task.val_sibling, task.val_other)]
    assert out["val_other_acc"] == pytest.approx(parts[2])
    assert out["val_retain_acc"] == pytest.approx((parts[0] + parts[1] + parts[2]) / 3)


# --------------------------------------------------------------------------- #
# The per-sample forgetting criterion
# --------------------------------------------------------------------------- #
def test_forget_loss_per_sample_is_the_hinge_at_delta():
    sims = torch.tensor([0.3, -0.1, 0.05, 0.0])
    # hand-worked: only 0.3 and 0.05 lie above delta = 0; the sum 0.35 over 4 pairs
    assert float(three_stage_stages.forget_loss(sims, margin=0.0)) == pytest.approx(0.35 / 4)
    # delta = -0.2: every pair lies above it: (0.5 + 0.1 + 0.25 + 0.2) / 4
    assert float(three_stage_stages.forget_loss(sims, margin=-0.2)) == pytest.approx(1.05 / 4)
    assert float(three_stage_stages.forget_loss(sims, margin=0.0, criterion="mean")) == pytest.approx(0.25 / 4)
    with pytest.raises(ValueError, match="valid: per_sample, mean"):
        three_stage_stages.forget_loss(sims, margin=0.0, criterion="max")


def batches(tokenizer, n=8, batch_size=4, seed=0, label=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g).clamp(-1.5, 1.5)
    texts = tokenizer([f"a photo of a {'t-shirt' if label == 0 else 'trouser'}."] * n)
    labels = torch.full((n,), label)
    return [{"images": images[i:i + batch_size], "texts": texts[i:i + batch_size], "labels": labels[i:i + batch_size]}
            for i in range(0, n, batch_size)]


def test_per_sample_criterion_stops_only_when_every_pair_is_below_delta(tiny_resnet_clip, tiny_tokenizer):
    model = tiny_resnet_clip.model
    forget = batches(tiny_tokenizer, n=4)
    with torch.no_grad():
        sims = three_stage_stages.pair_similarities(model, forget[0])
    delta = float((sims.mean() + sims.max()) / 2)  # above the mean, below the largest pair
    kwargs = dict(forget_loader=forget, layers=["visual.attnpool.c_proj"], margin=delta, lr=1e-3, max_steps=1)
    mean = three_stage.forget_stage(copy_frozen(model), criterion="mean", **kwargs)
    per_sample = three_stage.forget_stage(copy_frozen(model), criterion="per_sample", **kwargs)
    assert (mean["steps"], mean["stopped"]) == (0, "margin")
    assert per_sample["steps"] == 1 and per_sample["history"][0]["max_similarity"] == pytest.approx(float(sims.max()))


def test_per_sample_forget_step_lowers_the_pairs_above_delta(tiny_resnet_clip, tiny_tokenizer):
    model = tiny_resnet_clip.model
    forget = batches(tiny_tokenizer, n=4)
    with torch.no_grad():
        before = three_stage_stages.pair_similarities(model, forget[0])
    delta = float(before.min()) - 1.0
    three_stage.forget_stage(model, forget_loader=forget, layers=three_stage.candidate_layers(model)[-3:],
                             margin=delta, lr=1e-2, max_steps=1, criterion="per_sample")
    with torch.no_grad():
        after = three_stage_stages.pair_similarities(model, forget[0])
    assert float(three_stage_stages.forget_loss(after, margin=delta)) < float(
        three_stage_stages.forget_loss(before, margin=delta))


# --------------------------------------------------------------------------- #
# Per-sample alignment, run until converged
# --------------------------------------------------------------------------- #
def test_per_sample_alignment_loss_is_the_mean_of_single_image_losses(tiny_resnet_clip, tiny_tokenizer):
    model = tiny_resnet_clip.model
    images = batches(tiny_tokenizer, n=4, batch_size=4)[0]["images"]
    with torch.no_grad():
        per_sample = float(three_stage_stages.alignment_loss(model, images, per_sample=True))
        one_by_one = [float(three_stage_stages.alignment_loss(model, images[i:i + 1])) for i in range(4)]
    assert per_sample == pytest.approx(sum(one_by_one) / 4, rel=1e-5)  # a batch of one: its own statistics
    # two flat images of opposite sign: their pooled means cancel, their own means do not
    flat = torch.cat([torch.full((1, 3, 32, 32), 1.0), torch.full((1, 3, 32, 32), -1.0)])
    with torch.no_grad():
        own = float(three_stage_stages.alignment_loss(model, flat, per_sample=True))
        pooled = float(three_stage_stages.alignment_loss(model, flat))
    assert own != pytest.approx(pooled, rel=1e-4)  # float noise is far smaller


def test_alignment_runs_until_converged_and_reports_its_curve(tiny_resnet_clip, tiny_tokenizer):
    model = tiny_resnet_clip.model
    images = batches(tiny_tokenizer, n=8, batch_size=8)[0]["images"]
    _, fixed = three_stage.align_images(model, images, steps=4, per_sample=True)
    assert fixed["steps"] == 4 and len(fixed["curve"]) == 5 and fixed["curve"][-1] == fixed["loss_after"]
    assert fixed["loss_after"] < fixed["loss_before"]
    _, converged = three_stage.align_images(model, images, steps=200, per_sample=True, tol=0.5, patience=2)
    # a 50% improvement per step is never kept up: it stops after `patience` steps without one, long before 200
    assert converged["steps"] < 200
    curve = converged["curve"]
    best = [min(curve[:i + 1]) for i in range(len(curve))]
    assert all(curve[i] >= 0.5 * best[i - 1] for i in range(len(curve) - 3, len(curve) - 1))


def test_mean_curve_holds_short_curves_at_their_last_value():
    assert three_stage_stages.mean_curve([[4.0, 2.0], [6.0, 4.0, 1.0]]) == [5.0, 3.0, 1.5]
    assert three_stage_stages.mean_curve([]) == []


# --------------------------------------------------------------------------- #
# Distillation on its own batches, souping's fallback
# --------------------------------------------------------------------------- #
def test_remind_step_with_distill_batches_lowers_its_loss(tiny_resnet_clip, tiny_tokenizer):
    model = tiny_resnet_clip.model
    original = copy_frozen(model)
    retain = {k: torch.cat([a[k], b[k]]) for a, b in zip(batches(tiny_tokenizer, n=4, label=0)[:1],
                                                        batches(tiny_tokenizer, n=4, seed=1, label=1)[:1])
              for k in a}
    distill = {k: torch.cat([a[k], b[k]]) for a, b in zip(batches(tiny_tokenizer, n=4, seed=2, label=0)[:1],
                                                         batches(tiny_tokenizer, n=4, seed=3, label=1)[:1])
               for k in a}
    layers = three_stage.candidate_layers(model)[-3:]
    three_stage.forget_stage(model, forget_loader=[retain], layers=layers, margin=-2.0, lr=1e-2, max_steps=2,
                             use_lora=False)
    with torch.no_grad():
        before, parts = three_stage_stages.remind_loss(model, original, retain, distill_batch=distill)
        _, on_retain = three_stage_stages.remind_loss(model, original, retain)
    assert parts["kd"] > 0 and parts["kd"] != pytest.approx(on_retain["kd"])  # distilled on the other batch
    three_stage.remind_stage(model, original=original, retain_loader=[retain], distill_loader=[distill],
                             layers=layers, lr=1e-3, steps=1, ema_decay=0.0, use_lora=False)
    with torch.no_grad():
        after, _ = three_stage_stages.remind_loss(model, original, retain, distill_batch=distill)
    assert after < before


def test_restore_flags_a_fallback_when_no_alpha_forgets_enough(tiny_resnet_clip):
    model = tiny_resnet_clip.model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    forget_at = {0.0: 0.9, 0.5: 0.3, 1.0: 0.04}
    calib = iter([{"forget_acc": forget_at[a], "retain_acc": 0.8} for a in (0.0, 0.5, 1.0)])
    out = three_stage.restore_stage(model, original_state=state, unlearned_state=state,
                                    calib_fn=lambda m: next(calib), alphas=(0.0, 0.5, 1.0), max_forget=0.05)
    assert out["alpha"] == 1.0 and out["fallback"] is False  # alpha 1 met the bar: chosen, not a fallback
    calib = iter([{"forget_acc": forget_at[a] + 0.1, "retain_acc": 0.8} for a in (0.0, 0.5, 1.0)])
    out = three_stage.restore_stage(model, original_state=state, unlearned_state=state,
                                    calib_fn=lambda m: next(calib), alphas=(0.0, 0.5, 1.0), max_forget=0.05)
    assert out["alpha"] == 1.0 and out["fallback"] is True


# --------------------------------------------------------------------------- #
# Notebook 30's tables
# --------------------------------------------------------------------------- #
def style_record(method, seed, *, forget, sibling, photo, sketch, negative, alpha=None, fallback=None,
                 task="forget-style-subgroup", variant=None, score=None):
    values = {"forget_acc": forget, "sibling_acc": sibling, "retain_acc": photo, "other_acc@sketch": sketch,
               "other_acc@negative": negative, "other_acc": (sketch + negative) / 2}
    if alpha is not None:
        values.update(alpha=alpha, soup_fallback=fallback)
    if score is not None:
        values["unlearning_score"] = score
    config = {"seed": seed, "forget_class": "sneaker", **({"variant": variant} if variant else {})}
    return make_record(method=method, task=task, config=config, metrics=values)


def test_other_all_styles_weights_each_style_alike():
    assert paper_a.other_all_styles({"retain_acc": 0.9, "other_acc@sketch": 0.6, "other_acc@negative": 0.3}) \
        == pytest.approx(0.6)
    assert paper_a.other_all_styles({"retain_acc": 0.9, "other_acc@sketch": 0.6}) is None


def test_style_seed_table_marks_runs_that_kept_alpha_one():
    records = [style_record("original", None, forget=1.0, sibling=0.9, photo=0.9, sketch=0.9, negative=0.9),
               style_record("three_stage", 0, forget=0.0, sibling=0.9, photo=0.9, sketch=0.6, negative=0.3,
                            alpha=0.8, fallback=False),
               style_record("three_stage", 1, forget=0.4, sibling=0.9, photo=0.9, sketch=0.9, negative=0.9,
                            alpha=1.0, fallback=True),
               style_record("three_stage", 2, forget=0.0, sibling=0.9, photo=0.9, sketch=0.9, negative=0.9,
                            alpha=1.0, fallback=False)]
    table = paper_a.style_seed_table(records)
    assert list(table.index) == [("original", "-"), ("three_stage", 0), ("three_stage", 1), ("three_stage", 2)]
    assert table.loc[("three_stage", 0), "other_all_acc"] == pytest.approx(0.6)
    assert table["restored"].tolist()[1:] == ["yes", "no (alpha 1), no alpha forgot enough", "no (alpha 1)"]
    with pytest.raises(ValueError, match="no records"):
        paper_a.style_seed_table(records, task="forget-subgroup")


def test_style_targets_include_the_other_classes_in_every_style():
    original = style_record("original", None, forget=1.0, sibling=0.9, photo=0.9, sketch=0.9, negative=0.9)
    ok = style_record("three_stage", 0, forget=0.05, sibling=0.88, photo=0.9, sketch=0.86, negative=0.85)
    lost = style_record("three_stage", 0, forget=0.05, sibling=0.88, photo=0.9, sketch=0.86, negative=0.79)
    assert all(paper_a.paper_a_targets([original, ok]).values())
    checks = paper_a.paper_a_targets([original, lost])  # other classes: (0.9 + 0.86 + 0.79) / 3 = 0.85, 5 points
    assert [k.split(":")[1].split()[0] for k, v in checks.items() if not v] == ["other_all_acc"]


def test_stage_effects_is_full_minus_variant_largest_first():
    rows = [style_record("three_stage", s, forget=0, sibling=0, photo=0, sketch=0, negative=0, task="ablation-style",
                         variant=v, score=x)
            for v, xs in (("full", (0.9, 0.8)), ("no_align", (0.85, 0.85)), ("no_soup", (0.2, 0.4)))
            for s, x in enumerate(xs)]
    effects = paper_a.stage_effects(rows, task="ablation-style")
    assert list(effects.index) == ["no_soup", "no_align"]
    assert effects["no_soup"] == pytest.approx(0.85 - 0.3) and effects["no_align"] == pytest.approx(0.0)
    assert paper_a.stage_effects(rows, task="ablation-style", metric="no_such_metric").empty  # a profile without it


def test_the_teacher_cache_gives_the_same_reminding_and_skips_the_original_on_a_seen_batch(tiny_resnet_clip,
                                                                                           tiny_tokenizer,
                                                                                           monkeypatch):
    base = tiny_resnet_clip.model
    original = copy_frozen(base)
    def mixed(seed):  # two batches of two classes each
        return [{k: torch.cat([a[k], b[k]]) for k in a} for a, b in zip(
            batches(tiny_tokenizer, n=8, seed=seed, label=0), batches(tiny_tokenizer, n=8, seed=seed + 1, label=1))]

    retain, distill = mixed(0), mixed(2)
    layers = three_stage.candidate_layers(base)[-3:]
    kw = dict(original=original, retain_loader=retain, distill_loader=distill, layers=layers, lr=1e-3, steps=3,
              ema_decay=0.5, use_lora=False)
    plain, cached, again = (copy_frozen(base) for _ in range(3))
    three_stage.remind_stage(plain, **kw)
    cache = {}
    first = three_stage.remind_stage(cached, teacher_cache=cache, **kw)
    assert len(cache) == 2 and all(k[0] == "teacher" for k in cache)  # one per distill batch (3 steps cycle 2)
    took = sum(t for _, t in cache.values())
    assert 0 < first["teacher_reused_seconds"] < took  # the third step reused the first batch's teacher
    teacher_calls = []
    encode = three_stage_stages.encode_pairs
    monkeypatch.setattr(three_stage_stages, "encode_pairs",
                        lambda m, b: teacher_calls.append(m is original) or encode(m, b))
    second = three_stage.remind_stage(again, teacher_cache=cache, **kw)
    assert second["teacher_reused_seconds"] >= took
    assert not any(teacher_calls) and len(teacher_calls) == 6  # the student only: retain and distill batch, 3 steps
    for a, b, c in zip(plain.state_dict().values(), cached.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    other = {**distill[0], "images": distill[0]["images"] + 0.5}  # another batch is another key
    teacher, saved = three_stage_stages.teacher_logits(original, other, cache=cache)
    assert len(cache) == 3 and saved == 0.0
    plain_loss, _ = three_stage_stages.remind_loss(again, original, retain[0], distill_batch=other)
    given_loss, _ = three_stage_stages.remind_loss(again, original, retain[0], distill_batch=other, teacher=teacher)
    assert torch.equal(plain_loss, given_loss)
