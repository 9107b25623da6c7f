"""Layer scores (mean |grad| per tensor, per-sample relative Fisher per layer) and top-k masks on ViT and ResNet CLIPs."""

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


def brute_force_fisher(model, batch, *, per="layer"):
    """Fisher by a loop over single samples (batch size 1) with autograd: mean_i sum_l g_i^2 / numel_l."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = layers.group_by_layer([n for n, _ in named], per=per)
    numel = dict((n, p.numel()) for n, p in named)
    totals = {g: 0.0 for g in groups}
    n_samples = len(batch["images"])
    for i in range(n_samples):
        one = {"images": batch["images"][i:i + 1], "texts": batch["texts"][i:i + 1]}
        grads = torch.autograd.grad(layers.similarity_score(model, one), [p for _, p in named], allow_unused=True)
        sq = {n: 0.0 if g is None else float(g.double().pow(2).sum()) for (n, _), g in zip(named, grads)}
        for g, members in groups.items():
            totals[g] += sum(sq[n] for n in members) / sum(numel[n] for n in members)
    return {g: v / n_samples for g, v in totals.items()}


def batch_mean_fisher(model, batch):
    """The old estimate: the squared gradient of the batch-mean similarity (the Fisher only at batch size 1)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(layers.similarity_score(model, batch), [p for _, p in named], allow_unused=True)
    groups = layers.group_by_layer([n for n, _ in named])
    sq = {n: 0.0 if g is None else float(g.double().pow(2).sum()) for (n, _), g in zip(named, grads)}
    return {g: sum(sq[n] for n in m) / sum(p.numel() for n2, p in named if n2 in m) for g, m in groups.items()}


def test_layer_of_groups_parameters_by_owning_module(clip_model):
    assert layers.layer_of("visual.layer3.1.conv2.weight") == "visual.layer3.1.conv2"
    assert layers.layer_of("transformer.resblocks.1.attn.in_proj_weight") == "transformer.resblocks.1.attn"
    assert layers.layer_of("transformer.resblocks.1.attn.out_proj.weight") == "transformer.resblocks.1.attn"
    assert layers.layer_of("visual.attnpool.q_proj.bias") == "visual.attnpool.q_proj"
    for own in ("text_projection", "logit_scale", "visual.proj", "visual.class_embedding", "positional_embedding"):
        assert layers.layer_of(own) == own  # tensors held by the model or a tower are layers of their own
    names = [n for n, _ in clip_model.named_parameters()]
    groups = layers.group_by_layer(names)
    assert sorted(sum(groups.values(), [])) == sorted(names)
    modules = dict(clip_model.named_modules())
    assert all(g in modules or g in names for g in groups)  # every layer is a module or a lone tensor
    assert layers.group_by_layer(names, per="tensor") == {n: [n] for n in names}
    with pytest.raises(ValueError, match="valid: layer, tensor"):
        layers.group_by_layer(names, per="block")


@pytest.mark.parametrize("per", ["layer", "tensor"])
def test_fisher_uses_per_sample_gradients(clip_model, tiny_batch, per):
    fisher = layers.fisher_scores(clip_model, [tiny_batch], per=per)
    expected = brute_force_fisher(clip_model, tiny_batch, per=per)
    assert set(fisher) == set(expected)
    for g, value in expected.items():
        assert fisher[g] == pytest.approx(value, rel=1e-5, abs=1e-12), g
    if per == "layer":
        # squaring the gradient of the batch mean underestimates E[g^2] (Jensen) whenever samples disagree
        mean_sq = batch_mean_fisher(clip_model, tiny_batch)
        assert all(fisher[g] >= mean_sq[g] * (1 - 1e-5) - 1e-15 for g in fisher)
        differs = [g for g in fisher if fisher[g] > 1.02 * mean_sq[g]]
        assert len(differs) == sum(mean_sq[g] > 0 for g in fisher)  # every layer with a gradient differs by > 2%


def test_fisher_is_a_mean_over_samples_not_batches(tiny_resnet_clip, tiny_batch):
    model = tiny_resnet_clip.model
    model.train()  # BatchNorm in train mode: the Fisher still runs in eval mode and leaves the mode as it was
    stats = {n: b.clone() for n, b in model.named_buffers()}
    split = [{k: v[:1] for k, v in tiny_batch.items()}, {k: v[1:] for k, v in tiny_batch.items()}]
    whole, parts = layers.fisher_scores(model, [tiny_batch]), layers.fisher_scores(model, split)
    assert model.training
    assert all(torch.equal(b, stats[n]) for n, b in model.named_buffers())  # running statistics untouched
    for g in whole:
        assert parts[g] == pytest.approx(whole[g], rel=1e-5, abs=1e-12)
    subset = layers.fisher_scores(model, [tiny_batch], names=["visual.attnpool.q_proj.weight",
                                                              "visual.attnpool.q_proj.bias"])
    assert subset == pytest.approx({"visual.attnpool.q_proj": whole["visual.attnpool.q_proj"]}, rel=1e-6)
    with pytest.raises(ValueError, match="unknown parameter names"):
        layers.fisher_scores(model, [tiny_batch], names=["visual.nope"])
    with pytest.raises(ValueError, match="no batches"):
        layers.fisher_scores(model, [])


def test_relative_fisher_equals_ratio_of_fisher(clip_model, tiny_batch):
    retain = {**tiny_batch, "images": torch.randn_like(tiny_batch["images"])}
    rel = layers.relative_fisher_scores(clip_model, [tiny_batch], [retain])
    forget_f = layers.fisher_scores(clip_model, [tiny_batch])
    retain_f = layers.fisher_scores(clip_model, [retain])
    assert set(rel) == set(forget_f)
    assert list(rel.values()) == sorted(rel.values(), reverse=True)  # ranked high to low
    for name in rel:
        assert rel[name] == pytest.approx(forget_f[name] / (retain_f[name] + 1e-20), rel=1e-5)
    same = layers.relative_fisher_scores(clip_model, [tiny_batch], [tiny_batch])
    # groups with ~0 gradient (logit_scale) are skipped: their ratio is rounding noise
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


def test_score_cache_hits_only_the_same_model_batches_noise_and_settings(tiny_clip, tiny_batch):
    model = tiny_clip.model
    cache = layers.LayerScoreCache(size=4)

    def noisy_loss(m, batch):  # draws from the global random stream, as paper B's Lipschitz loss does
        return similarity_loss(m, {**batch, "images": batch["images"] + 0.1 * torch.randn_like(batch["images"])})

    def scored(**kw):
        torch.manual_seed(kw.pop("seed", 5))
        out = cache.score(model, [tiny_batch], loss_fn=noisy_loss, settings=kw.pop("settings", ("a",)))
        return out, torch.rand(3)  # where the random stream was left

    first, after_first = scored()
    torch.manual_seed(5)
    fresh = layers.score_layers(model, [tiny_batch], loss_fn=noisy_loss)
    assert first == fresh and torch.equal(after_first, torch.rand(3))
    again, after_again = scored()
    assert cache.hits == 1 and again == first and torch.equal(after_again, after_first)
    scored(seed=6)  # other noise
    scored(settings=("b",))
    with torch.no_grad():
        model.visual.proj.add_(1e-3) if getattr(model.visual, "proj", None) is not None else \
            next(model.visual.parameters()).add_(1e-3)
    changed, _ = scored()  # other weights
    assert cache.hits == 1 and changed != first
    model.transformer.resblocks[0].mlp.c_fc.weight.requires_grad_(False)
    scored()  # another set of tensors requires gradients
    assert cache.hits == 1 and len(cache.entries) == 4  # the oldest entry was dropped
    assert "transformer.resblocks.0.mlp.c_fc.weight" not in scored()[0] and cache.hits == 2
