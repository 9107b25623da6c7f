"""Unlearning losses checked against values computed by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from clipunlearn import losses
from clipunlearn.models import copy_frozen


def batch_of(tokenizer, labels, names=("cat", "dog", "bird")):
    g = torch.Generator().manual_seed(1)
    return {"images": torch.randn(len(labels), 3, 32, 32, generator=g),
            "texts": tokenizer([f"a photo of a {names[y]}." for y in labels]), "labels": torch.tensor(labels)}


def test_contrastive_loss_matches_hand_computed_2x2():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    logits = 10 * img @ txt.T  # [[6, 0], [8, 10]]
    ce = lambda row, k: -(row[k] - math.log(sum(math.exp(v) for v in row)))
    i2t = (ce([6, 0], 0) + ce([8, 10], 1)) / 2
    t2i = (ce([6, 8], 0) + ce([0, 10], 1)) / 2
    assert losses.contrastive_loss(img, txt, 10.0).item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    # label-aware with all-distinct labels is the standard loss
    same = losses.contrastive_loss(img, txt, 10.0, positives=torch.eye(2, dtype=torch.bool))
    assert same.item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    assert torch.allclose(logits, torch.tensor([[6.0, 0.0], [8.0, 10.0]]))


def test_forgetting_loss_is_mean_pair_cosine(tiny_clip):
    model, tok = tiny_clip.model, tiny_clip.tokenizer
    b = batch_of(tok, [0, 1, 2])
    img = F.normalize(model.encode_image(b["images"]), dim=-1)
    txt = F.normalize(model.encode_text(b["texts"]), dim=-1)
    expected = sum(float((img[i] @ txt[i]).detach()) for i in range(3)) / 3
    assert losses.forgetting_loss(model, b).item() == pytest.approx(expected, abs=1e-6)


def test_consistency_loss_zero_for_identical_models_and_positive_otherwise(tiny_clip):
    model, tok = tiny_clip.model, tiny_clip.tokenizer
    b = batch_of(tok, [0, 1, 2, 1])
    original = copy_frozen(model)
    assert losses.consistency_loss(model, original, b).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        model.text_projection.add_(0.5 * torch.randn_like(model.text_projection))
    assert losses.consistency_loss(model, original, b).item() > 1e-4


def test_ga_is_negative_clip_loss_and_cliperase_combines_modules(tiny_clip):
    model, tok = tiny_clip.model, tiny_clip.tokenizer
    forget, retain = batch_of(tok, [0, 0]), batch_of(tok, [1, 2, 1])
    ga, logs = losses.get_loss("ga")(model, None, forget, None)
    assert ga.item() == pytest.approx(-logs["forget_loss"])
    assert ga.item() == pytest.approx(-losses.retention_loss(model, forget).item())
    original = copy_frozen(model)
    loss, logs = losses.get_loss("cliperase")(model, original, forget, retain, lambda1=1, lambda2=3, lambda3=3)
    assert loss.item() == pytest.approx(logs["rm"] + 3 * logs["fm"] + 3 * logs["cm"], rel=1e-5)
    fm_only, logs = losses.get_loss("cliperase")(model, original, forget, retain, lambda1=0, lambda2=1, lambda3=0)
    assert fm_only.item() == pytest.approx(losses.forgetting_loss(model, forget).item()) and logs["rm"] == 0


def test_neggrad_plus_and_graddiff_weights(tiny_clip):
    model, tok = tiny_clip.model, tiny_clip.tokenizer
    forget, retain = batch_of(tok, [0, 0]), batch_of(tok, [1, 2])
    loss, logs = losses.get_loss("neggrad_plus")(model, None, forget, retain, beta=0.75)
    assert loss.item() == pytest.approx(0.75 * logs["retain_loss"] - 0.25 * logs["forget_loss"], rel=1e-5)
    loss, logs = losses.get_loss("graddiff")(model, None, forget, retain)
    assert loss.item() == pytest.approx(logs["retain_loss"] - logs["forget_loss"], rel=1e-5)


def test_register_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        losses.register_loss("ga")(lambda *a: None)


def test_random_labels_targets_are_wrong_classes(tiny_clip, monkeypatch):
    model, tok = tiny_clip.model, tiny_clip.tokenizer
    forget, retain = batch_of(tok, [0, 0, 0]), batch_of(tok, [1, 2])
    class_texts = tok(["a photo of a cat.", "a photo of a dog.", "a photo of a bird."])
    seen = []
    real_ce = F.cross_entropy

    def spy(logits, target, *a, **k):
        seen.append(target.clone())
        return real_ce(logits, target, *a, **k)

    monkeypatch.setattr(losses.F, "cross_entropy", spy)
    for _ in range(5):
        losses.get_loss("random_labels")(model, None, forget, retain, class_texts=class_texts)
    relabel_targets = torch.cat(seen)  # the only cross_entropy call: the retain term is label-aware
    assert relabel_targets.numel() == 15 and (relabel_targets != 0).all()
