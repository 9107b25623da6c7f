"""Metrics: zero-shot accuracy, retrieval, membership inference, time and memory."""

import math
import mmap

import pytest
import torch

from clipunlearn import data, image_cache, metrics

from .test_experiment import tiny_world


class ToyImages(torch.utils.data.Dataset):
    """Images whose pixels encode their class, for a model that reads the class back."""

    def __init__(self, labels):
        self.targets = torch.as_tensor(labels)
        self.classnames = ["a", "b", "c"]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.full((3, 4, 4), float(self.targets[i])), int(self.targets[i])


class OneHotModel(torch.nn.Module):
    """encode_image -> one-hot of the class stored in the pixels (wrong for class 2); temperature 10."""

    def __init__(self):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_image(self, x, normalize=True):
        cls = x[:, 0, 0, 0].long()
        cls = torch.where(cls == 2, torch.zeros_like(cls), cls)
        return torch.nn.functional.one_hot(cls, 3).float()


def test_accuracy_per_class_and_confusion():
    ds = ToyImages([0, 0, 1, 2, 2, 2])
    model, classifier = OneHotModel(), torch.eye(3)
    assert metrics.accuracy(model, classifier, ds) == pytest.approx(3 / 6)
    assert metrics.accuracy(model, classifier, ds, indices=[0, 1, 2]) == 1.0
    assert math.isnan(metrics.accuracy(model, classifier, ds, indices=[]))
    assert metrics.per_class_accuracy(model, classifier, ds) == {"a": 1.0, "b": 1.0, "c": 0.0}
    logits, targets = metrics.predict_logits(model, classifier, ds)
    cm = metrics.confusion_matrix(logits, targets)
    assert torch.equal(cm, torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 0]]))


def test_classifier_and_encoders_on_tiny_clip(tiny_clip):
    model, tokenizer = tiny_clip.model, tiny_clip.tokenizer
    classifier = metrics.build_classifier(model, tokenizer, ["cat", "dog"], ["a photo of a {}.", "a {}."])
    assert classifier.shape == (32, 2)
    assert torch.allclose(classifier.norm(dim=0), torch.ones(2), atol=1e-5)
    texts = metrics.encode_texts(model, tokenizer, ["a cat", "a dog", "a bird"], batch_size=2)
    assert texts.shape == (3, 32) and torch.allclose(texts.norm(dim=1), torch.ones(3), atol=1e-5)


def test_retrieval_recall_exact_and_grouped():
    feats = torch.eye(4)
    perfect = metrics.retrieval_recall(feats, feats, ks=(1, 5))
    assert all(v == 1.0 for v in perfect.values()) and set(perfect) == {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"}
    swapped = metrics.retrieval_recall(feats, feats[[1, 0, 2, 3]], ks=(1, 2))
    assert swapped["i2t_r1"] == 0.5 and swapped["i2t_r2"] == 1.0
    # identical captions of one class: any caption of the right group is a hit
    grouped = metrics.retrieval_recall(feats, feats[[1, 0, 2, 3]], ks=(1,), groups=torch.tensor([0, 0, 1, 2]))
    assert grouped["i2t_r1"] == 1.0


def test_predict_logits_use_the_model_temperature(tiny_clip):
    model, tokenizer = tiny_clip.model, tiny_clip.tokenizer
    with torch.no_grad():
        model.logit_scale.fill_(math.log(15.6))
    classifier = metrics.build_classifier(model, tokenizer, ["cat", "dog"], ["a photo of a {}."])
    images = torch.randn(3, 3, 32, 32)
    data_set = torch.utils.data.TensorDataset(images, torch.tensor([0, 1, 1]))
    logits, targets = metrics.predict_logits(model, classifier, data_set)
    cosine = model.encode_image(images, normalize=True).detach() @ classifier
    assert torch.allclose(logits, 15.6 * cosine, atol=1e-4) and targets.tolist() == [0, 1, 1]
    hundred, _ = metrics.predict_logits(model, classifier, data_set, logit_scale=100.0)
    assert torch.allclose(hundred, 100 * cosine, atol=1e-4)
    # membership inference scores with the model's temperature
    out = metrics.membership_inference(model, classifier, data_set, member_idx=[0], nonmember_idx=[1, 2])
    expected = torch.nn.functional.cross_entropy(15.6 * cosine[:1], torch.tensor([0]))
    assert out["member_loss"] == pytest.approx(expected.item(), rel=1e-4)
    with pytest.raises(ValueError, match="no logit_scale: pass logit_scale"):
        metrics.predict_logits(torch.nn.Identity(), classifier, data_set)


def reference_auc(positive, negative):
    """The Mann-Whitney form used before scikit-learn."""
    pos, neg = positive.double().view(-1, 1), negative.double().view(1, -1)
    return float(((pos > neg).double() + 0.5 * (pos == neg).double()).mean())


def reference_confusion(logits, targets, c):
    counts = torch.bincount(targets * c + logits.argmax(1), minlength=c * c).view(c, c).float()
    return counts / counts.sum(1, keepdim=True).clamp_min(1)


def test_auc_and_confusion_match_the_previous_formulas():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randint(0, 6, (50,), generator=g).float(), torch.randint(0, 5, (40,), generator=g).float()
    assert metrics.auc_score(pos, neg) == pytest.approx(reference_auc(pos, neg), abs=1e-12)  # with many ties
    assert math.isnan(metrics.auc_score(pos, neg[:0]))
    logits, targets = torch.randn(60, 4, generator=g), torch.randint(0, 3, (60,), generator=g)  # class 3 absent
    cm = metrics.confusion_matrix(logits, targets)
    assert cm.dtype == torch.float32 and torch.equal(cm, reference_confusion(logits, targets, 4))
    assert torch.equal(metrics.confusion_matrix(logits, targets, num_classes=5), reference_confusion(logits, targets, 5))


def test_auc_and_membership_inference():
    assert metrics.auc_score(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert metrics.auc_score(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    ds = ToyImages([0, 0, 2, 2])  # members classified right (low loss), non-members wrong
    out = metrics.membership_inference(OneHotModel(), torch.eye(3), ds, member_idx=[0, 1], nonmember_idx=[2, 3])
    assert out["mia"] == 1.0 and out["member_loss"] < out["nonmember_loss"]
    same = metrics.membership_inference(OneHotModel(), torch.eye(3), ds, member_idx=[0], nonmember_idx=[1])
    assert same["mia"] == 0.5


MIB_200 = 200 * 2**20 // 4  # float32 elements in 200 MiB


def resident_block(mib: int = 200) -> mmap.mmap:
    """``mib`` MiB of new resident memory: an anonymous mapping with every page written. Unlike a tensor, it cannot
    come from memory the process's allocator already holds (a pytest-xdist worker that ran other files first may
    hold hundreds of MiB, and then a 200 MiB tensor adds nothing to the resident memory)."""
    block = mmap.mmap(-1, mib * 2**20)
    for offset in range(0, mib * 2**20, mmap.PAGESIZE):
        block[offset] = 1
    return block


def test_measure_run_reports_the_rise_of_memory_in_the_block():
    with metrics.measure_run() as stats:
        block = resident_block()
    assert stats["seconds"] > 0 and stats["peak_mem_mb"] >= 150
    block.close()
    with metrics.measure_run() as transient:  # freed inside the block: the peak still counts
        resident_block().close()
    assert transient["peak_mem_mb"] >= 150
    # an earlier big allocation, freed, does not count against a block that allocates nothing
    earlier = torch.ones(MIB_200)
    earlier += 1
    del earlier
    with metrics.measure_run() as idle:
        sum(range(1000))
    assert 0 <= idle["peak_mem_mb"] < 20 and idle["base_mem_mb"] > 0


def test_iterate_batches_uses_fast_path():
    try:
        ds = data.load_fashion_mnist("test")
    except FileNotFoundError as err:
        pytest.skip(str(err))
    batches = list(metrics.iterate_batches(ds, indices=torch.arange(10), batch_size=4))
    assert [len(y) for _, y in batches] == [4, 4, 2]


def test_retrieval_recall_on_query_subset():
    feats = torch.eye(4)
    texts = feats[[0, 1, 3, 2]]  # pairs 2 and 3 swapped
    assert metrics.retrieval_recall(feats, texts, ks=(1,), queries=[0, 1]) == {"i2t_r1": 1.0, "t2i_r1": 1.0}
    assert metrics.retrieval_recall(feats, texts, ks=(1,), queries=[2, 3]) == {"i2t_r1": 0.0, "t2i_r1": 0.0}


def test_retrieval_recall_against_distinct_captions():
    images = torch.eye(3)[[0, 0, 1, 2]]  # two images of class 0, one of class 1, one of class 2
    texts = torch.eye(3)[[0, 1, 2, 2]]  # 4 captions, two of class 2
    texts[3] = torch.tensor([0.0, 0.9, 0.1])  # a second caption of class 2 that looks like class 1
    out = metrics.retrieval_recall(images, texts, ks=(1, 2), groups=torch.tensor([0, 0, 1, 2]),
                                   text_groups=torch.tensor([0, 1, 2, 2]))
    assert out["i2t_r1"] == 1.0
    assert out["t2i_r1"] == 0.75  # caption 3 retrieves the class-1 image first
    sub = metrics.retrieval_recall(images, texts, ks=(1,), groups=torch.tensor([0, 0, 1, 2]),
                                   text_groups=torch.tensor([0, 1, 2, 2]), queries=[2], text_queries=[3])
    assert sub == {"i2t_r1": 1.0, "t2i_r1": 0.0}
    with pytest.raises(ValueError, match="text_groups"):
        metrics.retrieval_recall(images, texts[:3], ks=(1,))


def test_measure_run_without_the_kernel_peak_counter_samples(monkeypatch):
    monkeypatch.setattr(metrics, "_reset_peak_rss", lambda: False)  # e.g. no /proc/self/clear_refs
    with metrics.measure_run(interval=0.005) as stats:
        block = resident_block()
    assert stats["peak_mem_mb"] >= 150
    block.close()
    with metrics.measure_run() as idle:
        pass
    assert 0 <= idle["peak_mem_mb"] < 20


def test_cached_images_keep_float16_on_a_gpu_and_float32_elsewhere():
    base = tiny_world(n_per_class=1)
    assert image_cache.CachedImages(base).dtype == torch.float32
    assert image_cache.CachedImages(base, device="cuda").dtype == torch.float16  # nothing is allocated until a batch
    assert image_cache.CachedImages(base, device="cuda", dtype=torch.float32).dtype == torch.float32
