"""Paper C as the paper states it: its GA and its retention targets as registered losses,
Df / Dr on the training pairs beside the test images, the epochs' two readings and the paper-protocol row.

FORMULA tests compute the expected value by loops (``tests/formula_helpers.py``); DIRECTION tests take one small
SGD step on the tiny open_clip model and check the loss moves the way its name says.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from clipunlearn import harness, losses, metrics
from clipunlearn.harness import ResultStore
from clipunlearn.losses import get_loss
from clipunlearn.papers import paper_c
from clipunlearn.registry import get_method

from .formula_helpers import TOL, batch, cross_entropy, feature_model, logits_of, transpose
from .test_experiment import tiny_world
from .test_formulas_losses import naive_cm_parts, naive_fm, naive_rm, sgd_step, similarity, tiny_batches

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")


@pytest.fixture
def toy():
    """``(model, original, forget batch, retain batch)`` of the toy feature model; the retain labels repeat."""
    return feature_model(1, scale=3.0), feature_model(2, scale=2.0), batch(3, [0, 0, 0]), batch(4, [1, 2, 1, 3])


def naive_diagonal_clip(model, b) -> float:
    """The standard CLIP loss by loops: each image's own caption is its target, and each caption's own image."""
    logit_rows = logits_of(model, b)
    i2t = sum(cross_entropy(row, i) for i, row in enumerate(logit_rows)) / len(logit_rows)
    t2i = sum(cross_entropy(row, j) for j, row in enumerate(transpose(logit_rows))) / len(logit_rows)
    return (i2t + t2i) / 2


# --------------------------------------------------------------------------- #
# Formulas
# --------------------------------------------------------------------------- #
def test_formula_ga_pairs_is_minus_the_diagonal_clip_loss_of_the_forget_pairs(toy):
    model, original, forget, retain = toy
    expected = naive_diagonal_clip(model, forget)
    loss, logs = get_loss("ga_pairs")(model, original, forget, retain)
    assert float(loss) == pytest.approx(-expected, abs=TOL)  # the sign: an ascent
    assert logs["forget_loss"] == pytest.approx(expected, abs=TOL)
    # diagonal, not label-aware targets: the forget pairs are one class, so label-aware targets are uniform
    assert abs(expected - naive_rm(model, forget)) > 1e-3
    # the retain batch is not used
    assert float(get_loss("ga_pairs")(model, original, forget, None)[0]) == pytest.approx(-expected, abs=TOL)


def test_formula_diagonal_retention_module_is_the_standard_clip_loss(toy):
    model, _, _, retain = toy
    diagonal = naive_diagonal_clip(model, retain)
    assert abs(diagonal - naive_rm(model, retain)) > 1e-3  # the retain labels repeat: the two targets differ
    assert float(losses.retention_loss(model, retain, targets="diagonal")) == pytest.approx(diagonal, abs=TOL)
    assert float(losses.retention_loss(model, retain)) == pytest.approx(naive_rm(model, retain), abs=TOL)
    with pytest.raises(ValueError, match="unknown contrastive targets 'nope'; valid: label, diagonal"):
        losses.batch_positives(retain["labels"], targets="nope")


@pytest.mark.parametrize("lambdas", [(1.0, 3.0, 3.0), (1.0, 0.0, 0.0), (0.0, 3.0, 0.0), (0.0, 0.0, 3.0),
                                     (2.0, 0.5, 1.5)])
def test_formula_cliperase_paper_weighs_the_diagonal_rm_fm_and_cm(toy, lambdas):
    model, original, forget, retain = toy
    l1, l2, l3 = lambdas
    rm, fm, cm = naive_diagonal_clip(model, retain), naive_fm(model, forget), sum(naive_cm_parts(model, original,
                                                                                                  retain))
    loss, logs = get_loss("cliperase_paper")(model, original, forget, retain, lambda1=l1, lambda2=l2, lambda3=l3)
    assert float(loss) == pytest.approx(l1 * rm + l2 * fm + l3 * cm, abs=TOL)
    if l1:
        assert logs["rm"] == pytest.approx(rm, abs=TOL)
    # the same as CLIPErase with diagonal targets, and unlike its label-aware default when RM counts
    same = get_loss("cliperase")(model, original, forget, retain, lambda1=l1, lambda2=l2, lambda3=l3,
                                 targets="diagonal")[0]
    assert float(same) == pytest.approx(float(loss), abs=TOL)
    label = float(get_loss("cliperase")(model, original, forget, retain, lambda1=l1, lambda2=l2, lambda3=l3)[0])
    assert (abs(label - float(loss)) > 1e-3) == bool(l1)


def test_formula_cliperase_paper_default_lambdas_are_the_papers_1_3_3(toy):
    model, original, forget, retain = toy
    expected = naive_diagonal_clip(model, retain) + 3 * naive_fm(model, forget) + 3 * sum(
        naive_cm_parts(model, original, retain))
    assert float(get_loss("cliperase_paper")(model, original, forget, retain)[0]) == pytest.approx(expected, abs=TOL)


def test_the_paper_forms_are_registered_rows_without_class_prompts():
    assert get_method("ga_pairs").label == "GA (forget pairs' CLIP loss)"
    assert get_method("cliperase_paper").label == "CLIPErase (paper protocol)"
    assert not get_method("ga_pairs").needs_class_texts and not get_method("cliperase_paper").explorable


# --------------------------------------------------------------------------- #
# Directions
# --------------------------------------------------------------------------- #
def test_direction_ga_pairs_step_raises_the_forget_pairs_clip_loss(tiny_clip, tiny_tokenizer, tiny_batch):
    model = tiny_clip.model
    original = copy.deepcopy(model)
    forget, retain, _ = tiny_batches(tiny_tokenizer, tiny_batch)

    def forget_clip():
        img, txt = losses.encode_pairs(model, forget)
        return float(losses.contrastive_loss(img, txt, model.logit_scale.exp()))

    before = forget_clip()
    lowered = sgd_step(model, lambda: get_loss("ga_pairs")(model, original, forget, retain)[0], lr=1e-3)
    with torch.no_grad():
        assert float(get_loss("ga_pairs")(model, original, forget, retain)[0]) < lowered - 1e-7
        assert forget_clip() > before + 1e-7


def test_direction_cliperase_paper_step_lowers_its_loss_and_the_forget_similarity(tiny_clip, tiny_tokenizer,
                                                                                  tiny_batch):
    model = tiny_clip.model
    original = copy.deepcopy(model)
    forget, retain, _ = tiny_batches(tiny_tokenizer, tiny_batch)
    sim_before = similarity(model, forget)
    before = sgd_step(model, lambda: get_loss("cliperase_paper")(model, original, forget, retain)[0], lr=1e-3)
    with torch.no_grad():
        assert float(get_loss("cliperase_paper")(model, original, forget, retain)[0]) < before - 1e-7
    assert similarity(model, forget) < sim_before - 1e-7


# --------------------------------------------------------------------------- #
# Df / Dr on the training pairs
# --------------------------------------------------------------------------- #
def test_train_eval_scores_the_training_pairs_beside_the_test_images(tiny_clip):
    model, tokenizer = tiny_clip
    train, test = tiny_world(seed=0), tiny_world(n_per_class=6, seed=1)
    kwargs = dict(kind="forget-class", target="sneaker", seed=0, retain_per_class=4, eval_per_class=3,
                  val_per_class=2)
    plain = harness.build_task(train, test, **kwargs)
    task = harness.build_task(train, test, train_eval=True, **kwargs)
    assert plain.train_eval_sets == {} and torch.equal(task.retain_train, plain.retain_train)
    sets = task.train_eval_sets
    assert set(sets) == {"forget", "retain"}
    assert set(sets["forget"].tolist()) <= set(task.forget_train.tolist()) and len(sets["forget"]) == 3
    assert set(sets["retain"].tolist()) <= set(task.retain_train.tolist())
    assert len(sets["retain"]) == 3 * (len(train.classnames) - 1)  # eval_per_class of each retain class
    out = harness.evaluate_model(model, task, tokenizer=tokenizer)
    clf = metrics.build_classifier(model, tokenizer, task.classnames, task.templates)
    for name in ("forget", "retain"):
        expected = metrics.accuracy(model, clf, train, indices=sets[name])
        assert out[f"{name}_train_acc"] == pytest.approx(expected, abs=1e-9)
    assert "forget_train_acc" not in harness.evaluate_model(model, plain, tokenizer=tokenizer)  # mini: as before


# --------------------------------------------------------------------------- #
# Settings: the epochs' two readings, the paper-protocol row
# --------------------------------------------------------------------------- #
def test_settings_epochs_over_train_eval_and_paper_protocol():
    assert paper_c.paper_c_settings("paper", epochs_over="forget")["epochs_over"] == "forget"
    assert paper_c.paper_c_settings("paper", paper_protocol=False)["paper_protocol"] is None
    with pytest.raises(ValueError, match="unknown EPOCHS_OVER 'test'; valid: retain, forget"):
        paper_c.paper_c_settings("paper", epochs_over="test")
    with pytest.raises(ValueError, match="EPOCHS_OVER is for the paper profile only"):
        paper_c.paper_c_settings("mini", epochs_over="retain")
    mini = paper_c.paper_c_settings("mini")
    assert "paper_protocol" not in mini and "train_eval" not in mini["task"]  # the mini profile as it was
    assert paper_c.paper_c_settings("mini", train_eval=True)["task"]["train_eval"] is True
    assert paper_c.paper_c_settings("mini", quick=True, train_eval=True)["task"] == dict(
        train_eval=True, retain_per_class=50, eval_per_class=50)
    quick = paper_c.paper_c_settings("paper", quick=True)
    assert quick["task"]["train_eval"] is True and quick["paper_protocol"]["grid"] == {"lr": [1e-6]}


def _paper_world(monkeypatch, model_and_tokenizer, **settings_kwargs):
    train, test = tiny_world(seed=0), tiny_world(n_per_class=6, seed=1)
    model, tokenizer = model_and_tokenizer
    monkeypatch.setattr(paper_c.data, "load_dataset", lambda name, split, **kw: train if split == "train" else test)
    monkeypatch.setattr(paper_c, "CachedImages", lambda ds, **kw: ds)
    monkeypatch.setattr(paper_c.models, "load_clip", lambda m, p, device="cpu": (model, None, tokenizer))
    settings = paper_c.paper_c_settings("paper", forget_classes="coat", seeds="3", **settings_kwargs)
    settings.update(batch_size=4, epochs=2)
    return settings, paper_c.load_paper_c_tasks(settings)


@pytest.mark.parametrize("epochs_over", ["retain", "forget"])
def test_paper_steps_are_epochs_over_the_set_the_reading_names(monkeypatch, epochs_over):
    settings, world = _paper_world(monkeypatch, ("model", "tok"), epochs_over=epochs_over)
    task = world.tasks["coat"][0]
    images = len(task.retain_train if epochs_over == "retain" else task.forget_train)
    assert world.epoch_steps == math.ceil(images / 4) and world.steps == 2 * world.epoch_steps
    assert len(task.retain_train) > 4 * len(task.forget_train)  # the two readings differ


def test_paper_protocol_row_runs_at_the_papers_lr_without_a_grid_validating_once_per_epoch(
        monkeypatch, tiny_clip, tmp_path):
    settings, world = _paper_world(monkeypatch, tiny_clip, quick=True)
    assert world.steps == 10 and world.epoch_steps <= 10
    store = ResultStore(tmp_path / "records.json")
    records = paper_c.run_paper_protocol(world, settings, store=store)
    rows = [r for r in records if r["method"] == "cliperase_paper" and r["task"] == "forget-class"]
    assert [r["config"]["seed"] for r in rows] == [3]  # the reported seed only: no selection seed is searched
    config = rows[0]["config"]
    assert config["lr"] == 1e-6 and config["grid"] == {"lr": [1e-6]} and config["batch_size"] == 4
    assert config["eval_every"] == world.epoch_steps and config["steps"] == world.steps
    metrics_ = rows[0]["metrics"]
    assert all(0.0 <= metrics_[k] <= 1.0 for k in ("forget_acc", "retain_acc", "forget_train_acc",
                                                   "retain_train_acc"))
    table = paper_c.beside_paper(store.records)
    assert list(table.index) == ["original", "CLIPErase (paper protocol)"]
    assert table.loc["original", "paper Dr"] == 0.7285 and table.loc["CLIPErase (paper protocol)", "paper Dr"] == 0.9099
    assert table[["Df test", "Dr test", "Df train", "Dr train"]].notna().all().all()
    assert paper_c.run_paper_protocol(world, dict(settings, paper_protocol=None), store=store) == []
