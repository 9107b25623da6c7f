"""Per-tensor layer scores (mean |grad|, relative Fisher) and top-k masks on ViT and ResNet CLIPs."""

import pytest
import torch
import torch.nn.functional as F

from clipunlearn import layers


@pytest.fixture(params=["vit", "resnet"])
def clip_model(request, tiny_clip, tiny_resnet_clip):
    return (tiny_clip if request.param == "vit" else tiny_resnet_clip).model


def similarity_loss(model, batch):
    img = model.encode_image(batch["images"])
    txt = model.encode_text(batch["texts"])
    return (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1).mean()


def test_split_by_encoder_covers_open_clip_names(clip_model):
    names = [n for n, _ in clip_model.named_parameters()]
    groups = layers.split_by_encoder(names)
    assert sorted(sum(groups.values(), [])) == sorted(names)
    assert all(n.startswith("visual.") for n in groups["image"]) and groups["image"]
    assert {"token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection"} <= set(
        groups["text"])
    assert any(n.startswith("transformer.") for n in groups["text"])
    assert groups["other"] == ["logit_scale"]


def test_score_layers_is_mean_abs_gradient(clip_model, tiny_batch):
    scores = layers.score_layers(clip_model, [tiny_batch], loss_fn=similarity_loss)
    assert all(p.grad is None for p in clip_model.parameters())  # .grad left untouched
    similarity_loss(clip_model, tiny_batch).backward()
    expected = layers.scores_from_grads(clip_model)
    assert set(scores) == {n for n, v in expected.items()}
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, rel=1e-5, abs=1e-12)
    assert "logit_scale" not in scores  # the similarity does not use it: no gradient, no score


def test_score_layers_averages_gradients_over_batches(tiny_clip, tiny_batch):
    model = tiny_clip.model
    other = {**tiny_batch, "images": torch.randn_like(tiny_batch["images"])}
    two = layers.score_layers(model, [tiny_batch, other], loss_fn=lambda m, b: (similarity_loss(m, b), {}))
    (0.5 * (similarity_loss(model, tiny_batch) + similarity_loss(model, other))).backward()
    for name, value in layers.scores_from_grads(model).items():
        assert two[name] == pytest.approx(value, rel=1e-5, abs=1e-12)
    with pytest.raises(ValueError, match="no batches"):
        layers.score_layers(model, [], loss_fn=similarity_loss)


def test_select_top_k_per_encoder():
    scores = {"visual.a": 3.0, "visual.b": 1.0, "visual.c": 2.0, "transformer.x": 0.5, "token_embedding.weight": 9.0,
              "ln_final.weight": 0.1, "logit_scale": 100.0}
    assert layers.select_top_k(scores, k_image=2, k_text=1) == ["visual.a", "visual.c", "token_embedding.weight"]
    assert layers.select_top_k(scores, k_image=1, k_text=2, exclude=[r"^token_embedding\."]) == [
        "visual.a", "transformer.x", "ln_final.weight"]
    assert layers.select_top_k(scores, k_image=10, k_text=0) == ["visual.a", "visual.c", "visual.b"]
    with pytest.raises(ValueError, match=">= 0"):
        layers.select_top_k(scores, k_image=-1, k_text=1)


def test_paper_b_frozen_patterns(tiny_clip, tiny_resnet_clip):
    vit_rules, rn_rules = layers.paper_b_frozen(tiny_clip.model), layers.paper_b_frozen(tiny_resnet_clip.model)
    scores = {n: 1.0 for n, _ in tiny_resnet_clip.model.named_parameters()}
    chosen = layers.select_top_k(scores, k_image=1000, k_text=1000, exclude=rn_rules)
    image = [n for n in chosen if n.startswith("visual.")]
    # the original updates only the attention pool of a ResNet (its convs and BatchNorms stay frozen)
    assert image and all(n.startswith("visual.attnpool.") for n in image)
    assert "visual.attnpool.positional_embedding" not in image
    assert all(n.startswith("transformer.") for n in chosen if not n.startswith("visual."))
    vit_scores = {n: 1.0 for n, _ in tiny_clip.model.named_parameters()}
    vit_image = [n for n in layers.select_top_k(vit_scores, k_image=1000, k_text=0, exclude=vit_rules)]
    assert len(vit_image) == sum(n.startswith("visual.") for n in vit_scores)  # a ViT tower is fully eligible


def test_only_top_k_tensors_change_after_an_update(clip_model, tiny_batch):
    scores = layers.score_layers(clip_model, [tiny_batch], loss_fn=similarity_loss)
    chosen = layers.select_top_k(scores, k_image=2, k_text=3)
    assert len(chosen) == 5
    before = {n: p.detach().clone() for n, p in clip_model.named_parameters()}
    optimizer = torch.optim.AdamW(clip_model.parameters(), lr=1e-2, weight_decay=0.2)
    similarity_loss(clip_model, tiny_batch).backward()
    assert layers.mask_gradients(clip_model, chosen) == 5
    optimizer.step()
    changed = {n for n, p in clip_model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == set(chosen)


def test_relative_fisher_equals_ratio_of_fisher(clip_model, tiny_batch):
    retain = {**tiny_batch, "images": torch.randn_like(tiny_batch["images"])}
    rel = layers.relative_fisher_scores(clip_model, [tiny_batch], [retain])
    forget_f = layers.fisher_scores(clip_model, [tiny_batch])
    retain_f = layers.fisher_scores(clip_model, [retain])
    assert set(rel) == set(forget_f)
    for name in rel:
        assert rel[name] == pytest.approx(forget_f[name] / (retain_f[name] + 1e-20), rel=1e-5)
    same = layers.relative_fisher_scores(clip_model, [tiny_batch], [tiny_batch])
    # tensors with ~0 gradient (e.g. attention key biases) are skipped: their ratio is rounding noise
    assert all(v == pytest.approx(1.0, rel=1e-5) for n, v in same.items() if forget_f[n] > 1e-12)


class ToyClip(torch.nn.Module):
    """Image tower with one tensor per input channel: ``visual.red`` sees channel 0, ``visual.green`` channel 1."""

    def __init__(self):
        super().__init__()
        self.visual = torch.nn.Module()
        self.visual.red = torch.nn.Parameter(torch.randn(16, 8))
        self.visual.green = torch.nn.Parameter(torch.randn(16, 8))
        self.token_embedding = torch.nn.Embedding(100, 8)

    def encode_image(self, x):
        return x[:, 0].flatten(1) @ self.visual.red + x[:, 1].flatten(1) @ self.visual.green

    def encode_text(self, texts):
        return self.token_embedding(texts).mean(1)


def test_relative_fisher_ranks_the_tensor_that_serves_the_forget_set():
    model = ToyClip()
    texts = torch.randint(0, 100, (6, 5))
    forget = torch.zeros(6, 3, 4, 4)
    forget[:, 0] = torch.randn(6, 4, 4)  # forget images live in channel 0
    retain = torch.zeros(6, 3, 4, 4)
    retain[:, 1] = torch.randn(6, 4, 4)  # retain images in channel 1
    batches = lambda x: [{"images": x[:3], "texts": texts[:3]}, {"images": x[3:], "texts": texts[3:]}]
    rel = layers.relative_fisher_scores(model, batches(forget), batches(retain))
    assert rel["visual.red"] > 1e6 and rel["visual.green"] == 0.0
    assert layers.select_top_k(rel, k_image=1, k_text=0) == ["visual.red"]
