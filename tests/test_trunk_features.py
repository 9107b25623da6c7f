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
