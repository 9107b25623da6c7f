"""A ResNet tower's trunk features kept across evaluations are the features ``encode_image`` computes, bit for bit."""

import copy

import torch

from clipunlearn import metrics
from clipunlearn.trunk_features import TrunkFeatures


class Images(torch.utils.data.Dataset):
    """Random 32 x 32 images of two classes with an in-memory ``get_batch``."""

    def __init__(self, n=20, seed=0):
        self.images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        self.targets = torch.arange(n) % 2

    def __len__(self):
        return len(self.targets)

    def get_batch(self, idx):
        return self.images[idx], self.targets[idx]


def direct(model, data, idx, *, normalize=True):
    with torch.no_grad():
        return model.encode_image(data.images[idx], normalize=normalize)


def test_a_hit_runs_only_the_attention_pool_and_gives_the_same_features(tiny_resnet_clip):
    model, data, cache = tiny_resnet_clip.model, Images(), TrunkFeatures()
    idx = torch.tensor([3, 1, 4, 15, 9])
    for normalize in (True, False):
        first = cache.encode_image(model, data.images[idx], dataset=data, indices=idx, normalize=normalize)
        assert torch.equal(first, direct(model, data, idx, normalize=normalize))
    stem_calls = []
    handle = model.visual.layer1.register_forward_hook(lambda *a: stem_calls.append(1))
    try:
        again = cache.encode_image(model, data.images[idx], dataset=data, indices=idx)
    finally:
        handle.remove()
    assert stem_calls == [] and torch.equal(again, direct(model, data, idx)) and cache.hits == 2


def test_a_changed_trunk_misses_and_a_changed_attention_pool_still_hits(tiny_resnet_clip):
    model, data, cache = tiny_resnet_clip.model, Images(), TrunkFeatures()
    idx = torch.arange(8)
    cache.encode_image(model, data.images[idx], dataset=data, indices=idx)
    with torch.no_grad():
        model.visual.attnpool.c_proj.weight.mul_(1.5)  # after the trunk: the trunk output still holds
    assert torch.equal(cache.encode_image(model, data.images[idx], dataset=data, indices=idx),
                       direct(model, data, idx)) and cache.hits == 1
    with torch.no_grad():
        model.visual.layer2[0].conv1.weight.add_(1e-3)  # in the trunk: a new state
    assert torch.equal(cache.encode_image(model, data.images[idx], dataset=data, indices=idx),
                       direct(model, data, idx)) and (cache.hits, cache.misses) == (1, 2)
    model.visual.bn1.running_mean.add_(0.1)  # a buffer is part of the trunk too
    cache.encode_image(model, data.images[idx], dataset=data, indices=idx)
    assert cache.misses == 3 and len(cache.entries) == 3


def test_other_datasets_indices_towers_and_modes_are_not_confused(tiny_resnet_clip, tiny_clip):
    model, data, cache = tiny_resnet_clip.model, Images(), TrunkFeatures(states=2)
    idx = torch.arange(6)
    cache.encode_image(model, data.images[idx], dataset=data, indices=idx)
    other = Images(seed=1)
    assert torch.equal(cache.encode_image(model, other.images[idx], dataset=other, indices=idx),
                       direct(model, other, idx))
    shifted = idx + 1
    assert torch.equal(cache.encode_image(model, data.images[shifted], dataset=data, indices=shifted),
                       direct(model, data, shifted))
    assert cache.hits == 0 and cache.misses == 3
    assert not cache.applies(tiny_clip.model)  # a ViT tower: encoded as before
    model.visual.train()
    assert not cache.applies(model)  # BatchNorm in training mode uses the batch's statistics
    model.visual.eval()
    for k in range(3):  # three trunk states, two kept: the oldest is dropped
        m = copy.deepcopy(model)
        with torch.no_grad():
            m.visual.conv1.weight.add_(k + 1)
        cache.encode_image(m, data.images[idx], dataset=data, indices=idx)
    assert len(cache.entries) == 2


def test_the_byte_bound_keeps_nothing_past_it(tiny_resnet_clip):
    model, data = tiny_resnet_clip.model, Images()
    cache = TrunkFeatures(max_bytes=1)
    idx = torch.arange(4)
    for _ in range(2):
        assert torch.equal(cache.encode_image(model, data.images[idx], dataset=data, indices=idx),
                           direct(model, data, idx))
    assert cache.hits == 0 and all(e["bytes"] == 0 for e in cache.entries)


def test_encode_images_batches_share_the_trunk_cache(tiny_resnet_clip, monkeypatch):
    model, data = tiny_resnet_clip.model, Images(n=30)
    monkeypatch.setattr(metrics, "TRUNKS", TrunkFeatures())
    idx = torch.arange(2, 30, 2)
    first, labels = metrics.encode_images(model, data, indices=idx, batch_size=4)
    again, _ = metrics.encode_images(model, data, indices=idx, batch_size=4)
    assert torch.equal(first, again) and torch.equal(labels, data.targets[idx])
    assert torch.equal(first, torch.cat([direct(model, data, idx[s:s + 4]) for s in range(0, len(idx), 4)]))
    assert (metrics.TRUNKS.hits, metrics.TRUNKS.misses) == (4, 4)


def test_the_byte_bound_counts_every_kept_batch_once(tiny_resnet_clip):
    model, data = tiny_resnet_clip.model, Images()
    idx = [torch.tensor([i, i + 1]) for i in (0, 2, 4)]
    probe = TrunkFeatures()
    probe.encode_image(model, data.images[idx[0]], dataset=data, indices=idx[0])
    size = probe.entries[0]["bytes"]  # one batch of two images
    assert size == 2 * model.visual.layer4[-1].conv3.out_channels * 4  # [2, C, 1, 1] float32
    cache = TrunkFeatures(max_bytes=2 * size)  # room for exactly two batches
    for i in idx:
        cache.encode_image(model, data.images[i], dataset=data, indices=i)
    assert cache.entries[0]["bytes"] == 2 * size and len(cache.entries[0]["features"]) == 2
    for i in idx:
        assert torch.equal(cache.encode_image(model, data.images[i], dataset=data, indices=i), direct(model, data, i))
    assert cache.hits == 2  # the first two were kept, the third was not
    roomy = TrunkFeatures()
    for i in idx:
        roomy.encode_image(model, data.images[i], dataset=data, indices=i)
    entry, key = roomy.entries[0], next(iter(roomy.entries[0]["features"]))
    roomy._keep(entry, key, data, entry["features"][key][1])  # the same batch kept again replaces itself
    assert entry["bytes"] == 3 * size and len(entry["features"]) == 3


def test_the_oldest_trunk_state_is_dropped_and_two_datasets_are_both_kept(tiny_resnet_clip):
    model, data, other = tiny_resnet_clip.model, Images(), Images(seed=1)
    cache = TrunkFeatures(states=2)
    idx = torch.arange(4)
    models_ = []
    for k in range(3):
        m = copy.deepcopy(model)
        with torch.no_grad():
            m.visual.conv1.weight.add_(k)
        models_.append(m)
        cache.encode_image(m, data.images[idx], dataset=data, indices=idx)
    cache.encode_image(models_[2], other.images[idx], dataset=other, indices=idx)
    hits = cache.hits
    cache.encode_image(models_[2], data.images[idx], dataset=data, indices=idx)
    cache.encode_image(models_[2], other.images[idx], dataset=other, indices=idx)
    cache.encode_image(models_[1], data.images[idx], dataset=data, indices=idx)
    assert cache.hits == hits + 3  # the newest two states kept, both datasets of one state
    cache.encode_image(models_[0], data.images[idx], dataset=data, indices=idx)
    assert cache.hits == hits + 3  # the oldest was dropped


def test_autocast_and_other_towers_are_encoded_as_encode_image_does(tiny_resnet_clip, tiny_clip):
    model, data, cache = tiny_resnet_clip.model, Images(), TrunkFeatures()
    idx = torch.arange(6)
    cache.encode_image(model, data.images[idx], dataset=data, indices=idx)  # float32 trunk features kept
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = cache.encode_image(model, data.images[idx], dataset=data, indices=idx)
        expected = direct(model, data, idx)
    assert inside.dtype == expected.dtype and torch.equal(inside, expected) and cache.hits == 0
    with torch.autocast("cpu", dtype=torch.float16):  # autocast in another precision: its own trunk features
        other = cache.encode_image(model, data.images[idx], dataset=data, indices=idx)
        expected = direct(model, data, idx)
    assert other.dtype == expected.dtype and torch.equal(other, expected) and cache.hits == 0
    vit = tiny_clip.model
    for normalize in (True, False):
        assert torch.equal(cache.encode_image(vit, data.images[idx], dataset=data, indices=idx, normalize=normalize),
                           direct(vit, data, idx, normalize=normalize))
    assert not cache.applies(object())  # no image tower at all
