"""Metrics: checks written for the mutants that survived the other tests (benchmarks/mutation.md).

Expected values are worked out by hand in each test.
"""

import math

import pytest
import torch

from clipunlearn import metrics

from .formula_helpers import ListDataset

TEMPLATES = ["a photo of a {}.", "a sketch of a {}."]


def dataset(n=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return ListDataset(torch.rand(n, 3, 32, 32, generator=g).to(dtype), [0, 1] * (n // 2), ["t-shirt", "trouser"])


def test_classifier_cache_hits_only_for_the_same_names_templates_and_text_tower(tiny_clip):
    model, tok = tiny_clip
    names = ["t-shirt", "trouser"]
    assert metrics.build_classifier(model, tok, names, TEMPLATES) is not metrics.build_classifier(model, tok, names,
                                                                                                  TEMPLATES)
    first = metrics.build_classifier(model, tok, names, TEMPLATES, cache=True)
    # equal template strings that are other objects: still a hit
    same = metrics.build_classifier(model, tok, list(names), ["".join(t) for t in TEMPLATES], cache=True)
    assert same is first
    plain = metrics.build_classifier(model, tok, names, TEMPLATES)
    assert torch.allclose(plain, first)
    other = metrics.build_classifier(model, tok, ["trouser", "t-shirt"], TEMPLATES, cache=True)
    assert other is not first and torch.allclose(other, first.flip(1))
    # callable templates are told apart by identity
    calls_a = [lambda c: f"a photo of a {c}."]
    calls_b = [lambda c: f"a sketch of a {c}."]
    a = metrics.build_classifier(model, tok, names, calls_a, cache=True)
    b = metrics.build_classifier(model, tok, names, calls_b, cache=True)
    assert not torch.allclose(a, b)
    assert metrics.build_classifier(model, tok, names, calls_a, cache=True) is a
    # a changed text tower is a miss
    with torch.no_grad():
        model.token_embedding.weight.mul_(1.5)
    changed = metrics.build_classifier(model, tok, names, TEMPLATES, cache=True)
    assert changed is not first and not torch.allclose(changed, first)
    assert torch.allclose(changed, metrics.build_classifier(model, tok, names, TEMPLATES))


def test_empty_index_sets_give_empty_features_and_logits(tiny_clip):
    model, _ = tiny_clip
    feats, labels = metrics.encode_images(model, dataset(), indices=[])
    assert feats.shape == (0, 32) and labels.shape == (0,) and labels.dtype == torch.long
    logits, targets = metrics.predict_logits(model, torch.zeros(32, 5), dataset(), indices=[])
    assert logits.shape == (0, 5) and targets.shape == (0,)


def test_images_that_are_not_float32_are_cast(tiny_clip):
    model, _ = tiny_clip
    f32, _ = metrics.encode_images(model, dataset())
    f64, _ = metrics.encode_images(model, dataset(dtype=torch.float64))
    assert f64.dtype == torch.float32 and torch.allclose(f64, f32, atol=1e-6)


def test_per_class_accuracy_of_a_subset_has_only_its_classes(tiny_clip):
    model, tok = tiny_clip
    ds = dataset()
    clf = metrics.build_classifier(model, tok, ds.classnames, TEMPLATES)
    out = metrics.per_class_accuracy(model, clf, ds, indices=[0, 2])  # both t-shirts
    assert list(out) == ["t-shirt"]


def test_auc_with_one_empty_side_is_nan():
    assert math.isnan(metrics.auc_score(torch.tensor([0.2, 0.4]), torch.tensor([])))
    assert math.isnan(metrics.auc_score(torch.tensor([]), torch.tensor([0.2, 0.4])))


def test_metric_errors_say_what_is_missing():
    with pytest.raises(ValueError) as err:
        metrics.get_logit_scale(object())
    assert str(err.value) == "object has no logit_scale: pass logit_scale=... (e.g. 100.0, CLIP's value)"
    with pytest.raises(ValueError) as err:
        metrics.retrieval_recall(torch.randn(2, 4), torch.randn(3, 4), text_groups=torch.tensor([0, 1, 2]))
    assert str(err.value) == "text_groups needs groups (the group id of every image)"


def test_text_signature_of_a_model_without_a_text_tower_is_empty():
    ptrs, norms = metrics._text_signature(torch.nn.Linear(2, 2))
    assert ptrs == () and norms.shape == (0,)
