"""``image_cache.CachedImages``: chunks allocated as images arrive and never copied, the same images as the dataset,
a bound in images or bytes that stops before decoding, with what to do."""

import pytest
import torch

from clipunlearn import image_cache


class CountingImages(torch.utils.data.Dataset):
    """Random ``[3, 5, 6]`` images with labels; counts how often each item is decoded."""

    def __init__(self, n: int = 13, *, seed: int = 0):
        self.images = torch.rand(n, 3, 5, 6, generator=torch.Generator().manual_seed(seed))
        self.targets = [i % 3 for i in range(n)]
        self.classnames = ["a", "b", "c"]
        self.reads: list[int] = []

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        self.reads.append(int(i))
        return self.images[i].clone(), self.targets[i]


def read_directly(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of ``indices`` read from ``dataset`` one by one (the reference)."""
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items])


def test_interleaved_batches_with_repeats_match_the_dataset():
    base = CountingImages(n=13)
    reference = CountingImages(n=13)
    cached = image_cache.CachedImages(base, batch_size=4, chunk_images=3)  # batches straddle chunks
    for indices in ([3, 1, 3], [0, 12, 1, 5, 5], [7], [12, 3, 0, 7, 11, 2], list(range(13))[::-1], [4, 4, 4]):
        x, y = cached.get_batch(indices)
        want_x, want_y = read_directly(reference, indices)
        assert x.dtype == torch.float32 and torch.equal(x, want_x) and torch.equal(y, want_y)
    assert sorted(base.reads) == list(range(13))  # every image decoded once
    assert cached.cached == 13


def test_float16_store_returns_float32_rounded_like_a_cast():
    base = CountingImages(n=6)
    cached = image_cache.CachedImages(base, dtype=torch.float16, batch_size=4, chunk_images=4)
    x, _ = cached.get_batch([5, 0, 2])
    assert x.dtype == torch.float32
    assert torch.equal(x, base.images[[5, 0, 2]].half().float())
    assert all(c.dtype == torch.float16 for c in cached._chunks)


def test_memory_grows_with_the_images_held_not_the_dataset():
    cached = image_cache.CachedImages(CountingImages(n=10), batch_size=3, chunk_images=4)
    assert cached.cached == 0 and cached.nbytes == 0
    cached.get_batch([2, 2, 7])
    per_image = 3 * 5 * 6 * 4
    assert cached.cached == 2 and cached.nbytes == 4 * per_image  # one chunk of 4 rows
    cached.prefetch([7, 8, 9])
    assert cached.cached == 4 and cached.nbytes == 4 * per_image
    cached.prefetch([0])
    assert cached.cached == 5 and cached.nbytes == 8 * per_image  # a second chunk, the first untouched
    cached.prefetch()
    assert cached.cached == 10 and len(cached) == 10 and len(cached._chunks) == 3


def test_chunks_are_filled_in_place_never_copied(monkeypatch):
    cached = image_cache.CachedImages(CountingImages(n=11), batch_size=2, chunk_images=3)
    cat = torch.cat
    monkeypatch.setattr(torch, "cat", lambda *a, **kw: pytest.fail("the store grew by concatenation"))
    cached.get_batch([1, 9, 4])
    first, ptr = cached._chunks[0], cached._chunks[0].data_ptr()
    for indices in ([0, 1], [10, 2, 3, 5], None):
        cached.prefetch(indices)
        assert cached._chunks[0] is first and first.data_ptr() == ptr
    monkeypatch.setattr(torch, "cat", cat)
    assert cached.cached == 11 and len(cached._chunks) == 4  # ceil(11 / 3)
    assert torch.equal(cached.get_batch(range(11))[0], cached.base.images)


def test_the_image_bound_raises_before_decoding_with_what_to_do():
    base = CountingImages(n=9)
    cached = image_cache.CachedImages(base, max_images=4, batch_size=2)
    cached.get_batch([0, 1, 1, 2])
    cached.get_batch([2, 8])  # one new: four held, the bound
    reads = len(base.reads)
    with pytest.raises(MemoryError) as caught:
        cached.get_batch([3, 0])
    message = str(caught.value)
    assert "hold 5 images" in message and "max_images=4" in message and f"{3 * 5 * 6 * 4} bytes each" in message
    assert "raise the bound" in message and "fewer images" in message and "quick" in message
    assert cached.cached == 4 and len(base.reads) == reads  # nothing decoded or overwritten
    x, _ = cached.get_batch([8, 0, 2, 1])
    assert torch.equal(x, base.images[[8, 0, 2, 1]])


def test_the_byte_bound_before_any_decode_names_the_bytes_per_image():
    per_image = 3 * 5 * 6 * 2
    cached = image_cache.CachedImages(CountingImages(n=6), max_bytes=2 * per_image, dtype=torch.float16)
    with pytest.raises(MemoryError, match=f"hold 3 images .* at {per_image} bytes each"):
        cached.prefetch([0, 1, 2])
    assert cached.cached == 0 and cached.nbytes == 0
    cached.prefetch([0, 1])  # exactly the bound
    assert cached.cached == 2


def test_default_budget_is_half_the_memory():
    total = image_cache.default_cache_bytes("cpu", fraction=1.0)
    assert total is None or image_cache.default_cache_bytes("cpu") == pytest.approx(total / 2, abs=1)
    with pytest.raises(ValueError, match="chunk_images"):
        image_cache.CachedImages(CountingImages(n=2), chunk_images=0)


def test_caches_share_one_budget_and_stop_before_decoding():
    per_image = 3 * 5 * 6 * 4
    budget = image_cache.MemoryBudget(5 * per_image)
    first, second = CountingImages(n=6), CountingImages(n=6, seed=1)
    a = image_cache.CachedImages(first, budget=budget)
    b = image_cache.CachedImages(second, budget=budget)
    a.get_batch([0, 1, 2])
    b.get_batch([4, 5])  # five images in all: the budget
    assert budget.used == 5 * per_image
    with pytest.raises(MemoryError, match=r"1 more images of 6 .* past the budget .* that the run's caches share"):
        a.get_batch([3])
    assert a.cached == 3 and 3 not in first.reads  # refused before decoding
    assert torch.equal(b.get_batch([5, 4])[0], second.images[[5, 4]])  # what is held still serves
    unlimited = image_cache.MemoryBudget(None)
    image_cache.CachedImages(CountingImages(n=4), budget=unlimited).prefetch()
    assert unlimited.used == 4 * per_image
