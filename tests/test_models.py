"""Models: open_clip loading, the mini CLIP's training pieces and its cache."""

import copy
import gc
import json
import math
import weakref

import pytest
import torch

from clipunlearn import clip, data, models
from clipunlearn.paths import get_data_dir


def test_caption_vocabulary_masks_true_descriptions():
    captions, mask = models.build_caption_vocabulary()
    assert len(captions) == len(set(captions))
    s, c = data.STYLES.index("sketch"), data.FASHION_MNIST_CLASSES.index("sneaker")
    described = {captions[k] for k in mask[s, c].nonzero().flatten().tolist()}
    assert described == {"a sketch of a sneaker.", "a sketch of the sneaker.", "a sketch of a shoe.",
                         "a sketch of the shoe."}
    # "dress" is its own coarse class: its captions are not duplicated
    assert mask[0, data.FASHION_MNIST_CLASSES.index("dress")].sum() == 2


def test_label_aware_loss_hand_computed():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # captions 0 and 2 both describe image 0
    positives = torch.tensor([[True, False, True], [False, True, False]])
    loss = models.label_aware_clip_loss(img, txt, positives, torch.tensor(2.0))
    lse = math.log(2 * math.exp(2) + 1)  # image 0's row: [2, 0, 2]
    i2t = (-(2 - lse) + -(2 - math.log(2 + math.exp(2)))) / 2  # image 1's row: [0, 2, 0]
    col = math.log(math.exp(2) + 1)  # each caption's column has one 2 and one 0
    t2i = 3 * (-(2 - col)) / 3
    assert loss.item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)


def test_load_clip_errors_say_what_to_do():
    with pytest.raises(ValueError, match="unknown model 'ViT-Q-99'.*mini"):
        models.load_clip("ViT-Q-99")
    with pytest.raises(ValueError, match="neither a local file nor a pretrained tag.*openai"):
        models.load_clip("RN50", "not-a-tag")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load_clip("mini", "/nonexistent/model.pt")


def test_open_clip_architecture_loads_local_checkpoint(tmp_path):
    """The paper path: an open_clip architecture plus a local checkpoint file (no download)."""
    import open_clip

    reference = open_clip.create_model("RN50")
    path = models.save_checkpoint(reference.state_dict(), tmp_path / "rn50.pt")
    model, preprocess, tokenizer = models.load_clip("RN50", str(path))
    assert not model.training and tokenizer(["a photo"]).shape == (1, 77)
    key = "visual.conv1.weight"
    assert torch.equal(model.state_dict()[key], reference.state_dict()[key])
    assert models.get_normalization(model) == (tuple(open_clip.OPENAI_DATASET_MEAN), tuple(open_clip.OPENAI_DATASET_STD))


@pytest.mark.parametrize("name", ["mini", "mini-vit"])
def test_mini_models_forward_and_checkpoint_round_trip(name, tmp_path):
    model, preprocess, tokenizer = models.create_mini_model(name)
    assert models.get_normalization(model) == (data.MINI_MEAN, data.MINI_STD)
    feats = model.encode_image(torch.randn(2, 3, 32, 32), normalize=True)
    assert feats.shape == (2, 128) and tokenizer(["a sketch of a bag."]).shape == (1, 16)
    path = models.save_checkpoint(model.state_dict(), tmp_path / "m.pt")
    loaded, _, _ = models.load_clip(name, str(path))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_copy_frozen_has_no_grads():
    model, _, _ = models.create_mini_model("mini")
    frozen = models.copy_frozen(model)
    assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
    assert all(p.requires_grad for p in model.parameters())


def test_get_mini_clip_trains_once_then_loads(tmp_path, monkeypatch):
    if data._find_fashion_mnist(get_data_dir()) is None:
        pytest.skip("Fashion-MNIST not installed")
    calls = []
    real_train = models.train_mini_clip

    def tiny_train(name, **kw):
        calls.append(kw)
        return real_train(name, **{**kw, "epochs": 1, "max_train_images": 512, "val_images": 200})

    monkeypatch.setattr(models, "train_mini_clip", tiny_train)
    monkeypatch.setattr(models, "evaluate_mini_clip", lambda *a, **k: {"acc": 0.0})
    model, _, _, info = models.get_mini_clip(cache_dir=tmp_path, progress=False, batch_size=256)
    assert len(calls) == 1 and info["history"][-1]["epoch"] == 1 and info["train_seconds"] > 0
    folder = next((tmp_path / "models").iterdir())
    assert folder.name.startswith(f"mini-v{models.MINI_VERSION}-")
    assert json.loads((folder / "info.json").read_text())["eval"]
    again, _, _, info2 = models.get_mini_clip(cache_dir=tmp_path, progress=False, batch_size=256)
    assert len(calls) == 1 and info2["train_seconds"] == pytest.approx(info["train_seconds"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    # another recipe is another cache entry
    models.get_mini_clip(cache_dir=tmp_path, progress=False, batch_size=128)
    assert len(calls) == 2 and len(list((tmp_path / "models").iterdir())) == 2


@pytest.mark.parametrize("name", ["RN50", "ViT-B-32"])
def test_open_clip_architecture_random_init(name):
    """``pretrained=None`` builds the architecture without weights (works offline)."""
    model, preprocess, tokenizer = models.load_clip(name)
    assert not model.training and model.visual.image_size in (224, (224, 224))
    with torch.no_grad():
        feats = model.encode_image(torch.randn(1, 3, 224, 224), normalize=True)
        text = model.encode_text(tokenizer(["a photo of a dog."]), normalize=True)
    assert feats.shape == text.shape == (1, model.text_projection.shape[1])


def test_load_clip_download_failure_says_how_to_pass_a_local_file(monkeypatch):
    import open_clip

    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai'")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    with pytest.raises(RuntimeError, match=r"could not download the RN50/openai.*load_clip\('RN50', '/path/to/"):
        models.load_clip("RN50", "openai")


def test_make_adamw_is_fused_on_cpu_and_matches_plain_adamw():
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    b = copy.deepcopy(a)
    fused = models.make_adamw(a.parameters(), lr=0.1, weight_decay=0.1)
    plain = torch.optim.AdamW(b.parameters(), lr=0.1, weight_decay=0.1)
    assert fused.defaults["fused"] is True
    x = torch.randn(8, 4)
    for model, opt in ((a, fused), (b, plain)):
        for _ in range(3):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    groups = models.make_adamw([{"params": [a.weight], "weight_decay": 0.0}, {"params": [a.bias]}], lr=0.1)
    assert groups.defaults["fused"] is True and len(groups.param_groups) == 2


def test_parse_pretrained_overrides():
    assert models.parse_pretrained("", backbones=["RN50"]) == {}
    assert models.parse_pretrained("/ckpt/a.pt", backbones=["ViT-B-32"]) == {"ViT-B-32": "/ckpt/a.pt"}
    assert models.parse_pretrained("C:/ckpt/a.pt", backbones=["ViT-B-32"]) == {"ViT-B-32": "C:/ckpt/a.pt"}
    assert models.parse_pretrained("RN50:/c/rn.pt, ViT-B-16=openai", backbones=["RN50", "ViT-B-16"]) == {
        "RN50": "/c/rn.pt", "ViT-B-16": "openai"}
    with pytest.raises(ValueError, match="say which backbone.*RN50, ViT-B-16"):
        models.parse_pretrained("/c/rn.pt", backbones=["RN50", "ViT-B-16"])
    with pytest.raises(ValueError, match="say which backbone.*RN50, ViT-B-16"):
        models.parse_pretrained("RN101:openai", backbones=["RN50", "ViT-B-16"])
    with pytest.raises(ValueError, match="give a pretrained tag"):
        models.parse_pretrained("RN50:", backbones=["RN50", "ViT-B-16"])


def test_train_step_updates_the_model_and_clamps_the_logit_scale():
    model, _, tokenizer = models.create_mini_model("mini")
    captions, compatible = models.build_caption_vocabulary()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # exp(10) > 100: the step must clamp it to log(100)
    optimizer = models.make_adamw(model.parameters(), lr=1e-3)
    before = model.visual.attnpool.c_proj.weight.clone()
    labels, styles = torch.tensor([0, 7]), torch.tensor([0, 2])
    loss = models.train_step(model, optimizer, torch.randn(2, 3, 32, 32), tokenizer(captions),
                             compatible[styles, labels])
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert not torch.equal(before, model.visual.attnpool.c_proj.weight)
    assert model.logit_scale.item() == pytest.approx(math.log(100))


def test_override_backbones_applies_notebook_parameters():
    paper = {"ViT-B-32": "openai"}
    assert models.override_backbones(paper, profile="paper") == paper
    assert models.override_backbones(paper, profile="paper", model="ViT-B-16") == {"ViT-B-16": "openai"}
    assert models.override_backbones(paper, profile="paper", model="RN50", pretrained="/c/rn.pt") == {
        "RN50": "/c/rn.pt"}
    two = {"RN50": "openai", "ViT-B-16": "openai"}
    assert models.override_backbones(two, profile="paper", pretrained="RN50:/c/rn.pt") == {
        "RN50": "/c/rn.pt", "ViT-B-16": "openai"}
    with pytest.raises(ValueError, match="MODEL replaces the only backbone"):
        models.override_backbones(two, profile="paper", model="RN101")
    assert models.override_backbones({"mini": None}, profile="mini") == {"mini": None}
    with pytest.raises(ValueError, match="^PRETRAINED is for the paper profile only"):
        models.override_backbones({"mini": None}, profile="mini", pretrained="/c/rn.pt")
    with pytest.raises(ValueError, match="^MODEL and PRETRAINED are for the paper profile only"):
        models.override_backbones({"mini": None}, profile="mini", model="RN50", pretrained="openai")


def test_is_resnet_is_one_helper(tiny_clip, tiny_resnet_clip):
    from clipunlearn import layers
    from clipunlearn.methods import lipschitz

    assert models.is_resnet(tiny_resnet_clip.model) and not models.is_resnet(tiny_clip.model)
    assert lipschitz.is_resnet is models.is_resnet
    resnet_rules = set(layers.paper_b_frozen(tiny_resnet_clip.model)) - set(layers.paper_b_frozen(tiny_clip.model))
    assert resnet_rules == set(layers.PAPER_B_RESNET_FROZEN)


def test_use_channels_last_keeps_the_numbers_and_leaves_a_vit_alone():
    model, _, _ = models.create_mini_model("mini")
    model.eval()
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model.encode_image(images, normalize=True)
        fast = models.use_channels_last(copy.deepcopy(model))
        after = fast.encode_image(images, normalize=True)
    assert fast.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not fast.visual.conv1.weight.is_contiguous()  # the layout did change
    assert torch.allclose(before, after, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fast.state_dict().values()))
    vit, _, _ = models.create_mini_model("mini-vit")
    strides = [p.stride() for p in vit.parameters()]
    assert [p.stride() for p in models.use_channels_last(vit).parameters()] == strides


def test_shipped_mini_clip_comes_in_channels_last_layout(monkeypatch):
    monkeypatch.delenv("CLIPUNLEARN_MINI_SEED", raising=False)
    model, _, _, info = models.get_mini_clip()
    assert info["source"] == "shipped"
    assert model.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_release_memory_freezes_once_and_still_collects_new_cycles():
    clip.release_memory()
    frozen = gc.get_freeze_count()
    assert frozen > 0

    class Node:
        pass

    node = Node()
    node.me = node  # a reference cycle made after the freeze: only the collector frees it
    alive = weakref.ref(node)
    del node
    clip.release_memory()
    assert alive() is None
    assert gc.get_freeze_count() == frozen  # frozen on the first call only


def test_mini_clip_cached_says_whether_get_mini_clip_would_load_or_train(tmp_path):
    folder = tmp_path / "models" / models._mini_key("mini", {**models.MINI_TRAINING, "seed": 5})
    assert not models.mini_clip_cached("mini", seed=5, cache_dir=tmp_path)
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"weights")
    assert not models.mini_clip_cached("mini", seed=5, cache_dir=tmp_path)  # no training record: trained again
    (folder / "info.json").write_text("{}")
    assert models.mini_clip_cached("mini", seed=5, cache_dir=tmp_path)
    assert not models.mini_clip_cached("mini", seed=6, cache_dir=tmp_path)
