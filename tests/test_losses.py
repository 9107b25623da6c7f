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


def test_ga_is_negative_zero_shot_ce_and_cliperase_combines_modules(tiny_clip):
    model, tok = tiny_clip.model, tiny_clip.tokenizer
    forget, retain = batch_of(tok, [0, 0]), batch_of(tok, [1, 2, 1])
    class_texts = tok(["a photo of a cat.", "a photo of a dog.", "a photo of a bird."])
    ga, logs = losses.get_loss("ga")(model, None, forget, None, class_texts=class_texts)
    img = model.encode_image(forget["images"], normalize=True)
    txt = model.encode_text(class_texts, normalize=True)
    expected = F.cross_entropy(model.logit_scale.exp() * img @ txt.T, forget["labels"])
    assert ga.item() == pytest.approx(-logs["forget_loss"]) and ga.item() == pytest.approx(-expected.item(), rel=1e-5)
    # without class prompts: forget images against the forget + retain captions, label-aware targets
    ga, logs = losses.get_loss("ga")(model, None, forget, retain)
    txt = model.encode_text(torch.cat([forget["texts"], retain["texts"]]), normalize=True)
    log_p = (model.logit_scale.exp() * img @ txt.T).log_softmax(1)
    assert ga.item() == pytest.approx(log_p[:, :2].mean().item(), rel=1e-5)  # mean over the 2 positives
    with pytest.raises(ValueError, match="class_texts"):
        losses.get_loss("ga")(model, None, forget, None)
    original = copy_frozen(model)
    loss, logs = losses.get_loss("cliperase")(model, original, forget, retain, lambda1=1, lambda2=3, lambda3=3)
    assert loss.item() == pytest.approx(logs["rm"] + 3 * logs["fm"] + 3 * logs["cm"], rel=1e-5)
    fm_only, logs = losses.get_loss("cliperase")(model, original, forget, retain, lambda1=0, lambda2=1, lambda3=0)
    assert fm_only.item() == pytest.approx(losses.forgetting_loss(model, forget).item()) and logs["rm"] == 0


def zero_shot_margin(model, batch, class_texts) -> float:
    """Mean over the batch of (logit of the true class - best other logit)."""
    with torch.no_grad():
        img = model.encode_image(batch["images"], normalize=True)
        logits = model.logit_scale.exp() * img @ model.encode_text(class_texts, normalize=True).T
    y = batch["labels"].view(-1, 1)
    other = logits.scatter(1, y, float("-inf")).max(1).values
    return float((logits.gather(1, y).flatten() - other).mean())


@pytest.mark.parametrize("form", ["class_texts", "captions"])
@pytest.mark.parametrize("method, weights", [
    pytest.param("ga", {}, id="ga"), pytest.param("graddiff", {}, id="graddiff"),
    pytest.param("graddiff", {"retain_weight": 0.0}, id="graddiff-forget-term"),
    pytest.param("neggrad_plus", {}, id="neggrad_plus"),
    pytest.param("neggrad_plus", {"beta": 0.0}, id="neggrad_plus-forget-term")])
@pytest.mark.parametrize("arch", ["tiny_clip", "tiny_resnet_clip"])
def test_ascent_step_lowers_forget_class_margin(request, arch, method, weights, form):
    """One Adam step on a one-class forget batch moves its images away from their class.

    With default weights and with the forget term alone; ``form``: over all class
    prompts, or (no prompts) against the forget and retain captions.
    """
    model, tok = request.getfixturevalue(arch)
    forget, retain = batch_of(tok, [0, 0, 0, 0]), batch_of(tok, [1, 2, 1, 2])
    class_texts = tok(["a photo of a cat.", "a photo of a dog.", "a photo of a bird."])
    kwargs = {**weights, **({"class_texts": class_texts} if form == "class_texts" else {})}
    before = zero_shot_margin(model, forget, class_texts)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss, _ = losses.get_loss(method)(model, None, forget, retain, **kwargs)
    loss.backward()
    optimizer.step()
    assert zero_shot_margin(model, forget, class_texts) < before - 0.05


def test_ft_step_lowers_retain_contrastive_loss(tiny_clip):
    model, tok = tiny_clip.model, tiny_clip.tokenizer
    retain = batch_of(tok, [1, 2, 1, 2])
    before = losses.retention_loss(model, retain).item()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss, logs = losses.get_loss("ft")(model, None, None, retain)
    assert logs["retain_loss"] == pytest.approx(before)
    loss.backward()
    optimizer.step()
    assert losses.retention_loss(model, retain).item() < before


def test_forgetting_loss_step_lowers_pair_cosine(tiny_resnet_clip):
    model, tok = tiny_resnet_clip
    forget = batch_of(tok, [0, 0, 0])
    cosine = lambda: (model.encode_image(forget["images"], normalize=True)
                      * model.encode_text(forget["texts"], normalize=True)).sum(-1).mean().item()
    before = cosine()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses.forgetting_loss(model, forget).backward()
    optimizer.step()
    assert cosine() < before


def test_contrastive_loss_skips_captions_of_no_image():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # caption 2 describes no image
    positives = torch.tensor([[True, False, False], [False, True, False]])
    logits = 2.0 * img @ txt.T
    i2t = F.cross_entropy(logits, torch.tensor([0, 1]))
    t2i = F.cross_entropy(logits[:, :2].T, torch.tensor([0, 1]))
    loss = losses.contrastive_loss(img, txt, 2.0, positives=positives)
    assert loss.item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-6)


def test_neggrad_plus_and_graddiff_weights(tiny_clip):
    model, tok = tiny_clip.model, tiny_clip.tokenizer
    forget, retain = batch_of(tok, [0, 0]), batch_of(tok, [1, 2])
    loss, logs = losses.get_loss("neggrad_plus")(model, None, forget, retain, beta=0.75)
    assert loss.item() == pytest.approx(0.75 * logs["retain_loss"] - 0.25 * logs["forget_loss"], rel=1e-5)
    loss, logs = losses.get_loss("graddiff")(model, None, forget, retain)
    assert loss.item() == pytest.approx(logs["retain_loss"] - logs["forget_loss"], rel=1e-5)
    assert logs["retain_loss"] == pytest.approx(losses.retention_loss(model, retain).item(), rel=1e-6)


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
