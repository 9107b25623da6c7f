"""Losses: checks written for the mutants that survived the other tests (benchmarks/mutation.md).

Expected values come from the naive loops of ``formula_helpers`` or are worked out by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from clipunlearn import losses, registry

from .formula_helpers import TOL, batch, cross_entropy, feature_model, features, logits_of, norm, rows, soft_target_ce, unit


class Counting(torch.nn.Module):
    """Wraps a model and counts its ``encode_image`` / ``encode_text`` calls."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = {"image": 0, "text": 0}

    @property
    def logit_scale(self):
        return self.model.logit_scale

    def encode_image(self, images, normalize=False):
        self.calls["image"] += 1
        return self.model.encode_image(images, normalize=normalize)

    def encode_text(self, texts, normalize=False):
        self.calls["text"] += 1
        return self.model.encode_text(texts, normalize=normalize)


def test_get_loss_of_an_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        losses.get_loss("nope")
    assert str(err.value) == ("unknown unlearning method 'nope'; valid: cliperase, cliperase_paper, ft, ga, ga_pairs, "
                              "graddiff, lipschitz, neggrad_plus, random_labels")


def test_register_loss_registers_the_function_under_its_name():
    def my_loss(*args, **kwargs):
        return None

    try:
        assert losses.register_loss("mutation-test-loss")(my_loss) is my_loss
        assert losses.LOSSES["mutation-test-loss"] is my_loss and my_loss.loss_name == "mutation-test-loss"
        with pytest.raises(ValueError, match="already registered"):
            losses.register_loss("mutation-test-loss")(my_loss)
    finally:
        registry.unregister("mutation-test-loss")


def test_forget_term_without_other_classes_says_what_to_pass():
    model = feature_model(0)
    with pytest.raises(ValueError) as err:
        losses.zero_shot_forget_ce(model, batch(1, [0, 0]))
    assert str(err.value) == ("the forget term needs other classes to move away from: pass class_texts (tokenised "
                              "class prompts [C, ctx], loss_kwargs={'class_texts': ...}) or a retain batch "
                              "(retain_loader=...)")


def test_contrastive_loss_with_positives_of_unequal_counts():
    # image 0 matches texts 0 and 1, image 1 text 1, image 2 text 2: text 1 has two positives
    model, b = feature_model(3), batch(4, [0, 1, 2])
    pos = [[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    img, txt = features(model, b)
    scale = math.exp(model.logit_scale.item())
    logit_rows = [[scale * sum(a * c for a, c in zip(unit(i), unit(t))) for t in txt] for i in img]
    i2t = soft_target_ce(logit_rows, pos)
    t2i = soft_target_ce([list(c) for c in zip(*logit_rows)], [list(c) for c in zip(*pos)])
    got = losses.contrastive_loss(model.encode_image(b["images"], normalize=True),
                                  model.encode_text(b["texts"], normalize=True), model.logit_scale.exp(),
                                  positives=torch.tensor(pos).bool())
    assert got.item() == pytest.approx((i2t + t2i) / 2, abs=TOL)


def test_consistency_loss_uses_the_features_it_is_given():
    model, original, b = feature_model(5), feature_model(6), batch(7, [0, 1, 0])
    counting = Counting(model)
    feats = losses.encode_pairs(model, b)
    with_features = losses.consistency_loss(counting, original, b, features=feats)
    assert counting.calls == {"image": 0, "text": 0}
    assert with_features.item() == pytest.approx(losses.consistency_loss(model, original, b).item(), abs=TOL)


@pytest.mark.parametrize("lambdas, image_calls", [((1.0, 3.0, 3.0), 2), ((0.0, 3.0, 3.0), 2), ((1.0, 3.0, 0.0), 2),
                                                  ((0.0, 3.0, 0.0), 1)])
def test_cliperase_encodes_the_retain_pairs_once_and_only_when_used(lambdas, image_calls):
    model, original = feature_model(8), feature_model(9)
    counting = Counting(model)
    l1, l2, l3 = lambdas
    losses.cliperase_loss(counting, original, batch(10, [0, 0]), batch(11, [1, 2]), lambda1=l1, lambda2=l2,
                          lambda3=l3)
    assert counting.calls["image"] == image_calls  # forget batch once, retain batch once if a module needs it


def test_random_labels_without_class_texts_targets_a_random_retain_caption():
    model, forget, retain = feature_model(12), batch(13, [0, 0, 0]), batch(14, [1, 2, 3, 1])
    torch.manual_seed(5)
    loss, logs = losses.random_labels_loss(model, None, forget, retain)
    torch.manual_seed(5)
    target = torch.randint(4, (3,)).tolist()  # the draw the loss makes: one retain caption per forget image
    img, _ = features(model, forget)
    _, txt = features(model, retain)
    scale = math.exp(model.logit_scale.item())
    logit_rows = [[scale * sum(a * c for a, c in zip(unit(i), unit(t))) for t in txt] for i in img]
    relabel = sum(cross_entropy(r, k) for r, k in zip(logit_rows, target)) / 3
    assert logs["relabel_loss"] == pytest.approx(relabel, abs=TOL)
    # retain term: the label-aware contrastive loss of the retain batch, weight 1 by default
    retain_rows = logits_of(model, retain)
    labels = [1, 2, 3, 1]
    pos = [[1.0 if a == c else 0.0 for c in labels] for a in labels]
    rm = (soft_target_ce(retain_rows, pos) + soft_target_ce([list(c) for c in zip(*retain_rows)], pos)) / 2
    assert logs["retain_loss"] == pytest.approx(rm, abs=TOL)
    assert loss.item() == pytest.approx(relabel + rm, abs=TOL)
    assert set(logs) == {"relabel_loss", "retain_loss"}


def test_lipschitz_loss_defaults_are_paper_bs_25_samples_of_sigma_0_1():
    model, b = feature_model(17, di=12), batch(18, [0, 1], di=12)
    forget = {"images": b["images"].view(2, 3, 2, 2), "texts": b["texts"], "labels": b["labels"]}
    loss, _ = losses.lipschitz_loss(model, None, forget, generator=torch.Generator().manual_seed(3))
    noise = torch.randn((2, 25, 3, 2, 2), generator=torch.Generator().manual_seed(3))  # the same draw
    expected, _ = losses.lipschitz_penalty(model, forget["images"], b["texts"], noise=0.1 * noise,
                                           bounds=losses.lipschitz_bounds(model))
    assert loss.item() == pytest.approx(expected.item(), abs=TOL)


def test_lipschitz_penalty_logs_its_terms():
    model, b = feature_model(15, di=12), batch(16, [0, 1], di=12)
    images = b["images"].view(2, 3, 2, 2)
    noise = 0.1 * torch.randn(2, 3, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    loss, logs = losses.lipschitz_penalty(model, images, b["texts"], noise=noise)
    assert set(logs) == {"lipschitz", "out_txt", "out_img", "in_norm"}
    assert logs["lipschitz"] == pytest.approx(loss.item(), abs=TOL)
    # no bounds: x' = x + noise, so ||x - x'|| = ||noise||
    in_norms = [norm(n) for row in rows(noise.flatten(2)) for n in row]
    assert logs["in_norm"] == pytest.approx(sum(in_norms) / 6, abs=TOL)
    f_img, f_txt = features(model, {"images": images, "texts": b["texts"]})
    noisy = (images.unsqueeze(1) + noise).flatten(0, 1)
    f_noisy, _ = features(model, {"images": noisy, "texts": b["texts"]})
    out_txt = [norm([a - c for a, c in zip(f_txt[i], f_noisy[3 * i + s])]) for i in range(2) for s in range(3)]
    out_img = [norm([a - c for a, c in zip(f_img[i], f_noisy[3 * i + s])]) for i in range(2) for s in range(3)]
    assert logs["out_txt"] == pytest.approx(sum(out_txt) / 6, abs=1e-5)
    assert logs["out_img"] == pytest.approx(sum(out_img) / 6, abs=1e-5)
