"""The nullspace projection of a class's text embeddings out of the image tower (training-free, data-free)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from clipunlearn import metrics
from clipunlearn.methods import nullspace

TEMPLATES = ["a photo of a {}.", "a sketch of a {}.", "a {} in a picture."]


def test_projection_matches_a_hand_worked_example():
    q = torch.tensor([[0.6], [0.8], [0.0]])  # a unit vector
    p = nullspace.build_projection(q, 0.5)
    expected = torch.tensor([[1 - 0.5 * 0.36, -0.5 * 0.48, 0.0],
                             [-0.5 * 0.48, 1 - 0.5 * 0.64, 0.0],
                             [0.0, 0.0, 1.0]])
    assert torch.allclose(p, expected)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        nullspace.build_projection(q, 1.5)


def test_basis_is_orthonormal_and_spans_every_prompt(tiny_resnet_clip):
    model, tokenizer = tiny_resnet_clip
    basis = nullspace.build_text_basis(model, tokenizer, ["dog"], TEMPLATES)
    assert basis.shape[1] == 3
    assert torch.allclose(basis.T @ basis, torch.eye(3), atol=1e-5)
    emb = F.normalize(metrics.encode_texts(model, tokenizer, [t.format("dog") for t in TEMPLATES]).float(), dim=-1)
    assert torch.allclose(emb.T, basis @ (basis.T @ emb.T), atol=1e-5)  # each embedding lies in the span


@pytest.mark.parametrize("tower", ["resnet", "vit"])
def test_projection_scales_the_class_component_of_every_image_feature(tower, tiny_clip, tiny_resnet_clip):
    model, tokenizer = tiny_resnet_clip if tower == "resnet" else tiny_clip
    images = torch.randn(5, 3, 32, 32)
    basis = nullspace.build_text_basis(model, tokenizer, ["dog"], TEMPLATES)
    with torch.no_grad():
        before = model.encode_image(images)
    for alpha in (0.0, 0.4, 1.0):
        projected = copy.deepcopy(model)
        nullspace.project_image_tower(projected, nullspace.build_projection(basis, alpha))
        with torch.no_grad():
            after = projected.encode_image(images)
        inside, outside = before @ basis, before - (before @ basis) @ basis.T
        assert torch.allclose(after @ basis, (1 - alpha) * inside, atol=1e-4)  # the class's component shrinks
        assert torch.allclose(after - (after @ basis) @ basis.T, outside, atol=1e-4)  # the rest is kept


def test_full_projection_leaves_no_image_matching_a_prompt_of_the_class(tiny_resnet_clip):
    model, tokenizer = tiny_resnet_clip
    basis = nullspace.build_text_basis(model, tokenizer, ["dog"], TEMPLATES)
    projected = copy.deepcopy(model)
    nullspace.project_image_tower(projected, nullspace.build_projection(basis, 1.0))
    weights = F.normalize(metrics.encode_texts(model, tokenizer, [t.format("dog") for t in TEMPLATES]).float(), dim=-1)
    with torch.no_grad():
        feats = projected.encode_image(torch.randn(4, 3, 32, 32))
    assert (feats @ weights.T).abs().max() < 1e-4  # full projection: no image matches any prompt of the class


def test_a_tower_without_a_final_projection_is_refused(tiny_resnet_clip):
    model = tiny_resnet_clip.model
    model.visual.attnpool = None
    with pytest.raises(ValueError, match="valid towers are open_clip's ModifiedResNet"):
        nullspace.find_image_projection(model)
