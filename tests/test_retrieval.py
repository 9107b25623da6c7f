"""Retrieval unlearning on captions (paper C's Flickr30K runs): the caption loader and its errors, the project's
forget / retain pairs, recall@k against a naive loop, the caption pair loader and the Df / Dr evaluation."""

import json

import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms

from clipunlearn import data, harness, metrics
from clipunlearn.unlearning import make_caption_pair_loader

CAPTIONS = {  # filename: (split, captions); images 0 and 3 mention a dog in one caption only
    "0.png": ("train", ["A man walks.", "A man walks his Dogs."]),
    "1.png": ("train", ["A red bus.", "A bus on a road."]),
    "2.png": ("train", ["A hotdog stand.", "Food for sale."]),
    "3.png": ("test", ["The dog's ball.", "A ball."]),
    "4.png": ("test", ["A cat.", "A cat sleeps."]),
}


def _flickr(tmp_path, captions=CAPTIONS):
    """A Flickr30K folder in Karpathy's layout: ``flickr30k-images/`` and ``dataset_flickr30k.json``."""
    from PIL import Image

    root = tmp_path / "flickr30k"
    (root / "flickr30k-images").mkdir(parents=True)
    images = []
    for i, (name, (split, raws)) in enumerate(captions.items()):
        Image.new("RGB", (8, 8), color=(40 * i % 256, 80, 120)).save(root / "flickr30k-images" / name)
        images.append({"filename": name, "imgid": i, "split": split,
                       "sentences": [{"raw": raw, "imgid": i} for raw in raws]})
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return root


# --------------------------------------------------------------------------- #
# The loader and its errors
# --------------------------------------------------------------------------- #
def test_load_caption_dataset_reads_karpathy_splits(tmp_path):
    root = _flickr(tmp_path)
    train = data.load_caption_dataset("flickr30k", split="train", root=root, transform=transforms.ToTensor())
    assert train.split == "train" and len(train) == 3 and train.source_ids == ["0.png", "1.png", "2.png"]
    assert train.captions[:3] == ["A man walks.", "A man walks his Dogs.", "A red bus."]
    assert train.caption_image_ids.tolist() == [0, 0, 1, 1, 2, 2]
    images, ids = train.get_batch([2, 0])
    assert images.shape == (2, 3, 8, 8) and ids.tolist() == [2, 0]
    test = data.load_caption_dataset("flickr30k", split="test", data_dir=tmp_path)  # <data_dir>/flickr30k
    assert test.split == "test" and test.source_ids == ["3.png", "4.png"]
    assert len(data.load_dataset("flickr30k", root=root, split="all")) == 5  # the registry goes through it


def test_load_caption_dataset_errors_say_where_to_get_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        data.load_caption_dataset("flickr30k", root=tmp_path / "nowhere")
    text = str(err.value)
    for piece in ("nowhere", "dataset_flickr30k.json", data.KARPATHY_SPLITS_URL, "flickr30k-images/<filename>",
                  "DenotationGraph", "Pass root="):
        assert piece in text, piece
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="Karpathy split file .*dataset_flickr30k.json does not exist"):
        data.load_caption_dataset("flickr30k", root=tmp_path / "empty")
    root = _flickr(tmp_path)
    (root / "flickr30k-images" / "0.png").unlink()
    with pytest.raises(FileNotFoundError, match="(?s)0.png not found.*DenotationGraph"):
        data.load_caption_dataset("flickr30k", split="train", root=root)
    with pytest.raises(ValueError, match="unknown caption dataset 'flickr8k'; valid: flickr30k, coco"):
        data.load_caption_dataset("flickr8k", root=root)
    with pytest.raises(ValueError, match="valid: test, train, all"):
        data.load_caption_dataset("flickr30k", split="val", root=root)


# --------------------------------------------------------------------------- #
# The project's forget / retain pairs
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("caption, concept, hit", [
    ("A man walks his Dogs.", "dog", True), ("The dog's ball.", "dog", True), ("A DOG.", "dog", True),
    ("A hotdog stand.", "dog", False), ("He dogged them.", "dog", False), ("A dog.", "dogs", False),
    ("Two teddy  bears.", "teddy bear", True), ("A teddy and a bear.", "teddy bear", False),
    ("Three buses.", "bus", True)])
def test_mentions_concept_is_whole_words_any_case_with_a_plural(caption, concept, hit):
    assert data.mentions_concept(caption, concept) is hit


def test_split_by_concept_is_by_image_disjoint_and_deterministic(tmp_path):
    ds = data.load_caption_dataset("flickr30k", split="all", root=_flickr(tmp_path))
    forget, retain = data.split_by_concept(ds, concept="dog")
    assert forget.tolist() == [0, 3]  # one caption mentioning it is enough; "hotdog" is not a dog
    assert retain.tolist() == [1, 2, 4]
    again = data.split_by_concept(ds, concept="Dog")
    assert torch.equal(again.forget, forget) and torch.equal(again.retain, retain)
    sample = data.split_by_concept(ds, concept="dog", max_forget=1, max_retain=2, seed=3)
    assert len(sample.forget) == 1 and len(sample.retain) == 2 and set(sample.retain.tolist()) <= {1, 2, 4}
    assert sample.retain.tolist() == sorted(sample.retain.tolist())
    assert torch.equal(data.split_by_concept(ds, concept="dog", max_forget=1, max_retain=2, seed=3).retain,
                       sample.retain)
    with pytest.raises(ValueError, match="has no word"):
        data.split_by_concept(ds, concept=" ,")


# --------------------------------------------------------------------------- #
# Recall@k: the formula against a naive loop
# --------------------------------------------------------------------------- #
def _naive_recall(sims, match, k, *, image_rows, text_rows):
    """R@k by hand: sort each query's row, look at the first k columns."""
    i2t = []
    for i in image_rows:
        ranked = sorted(range(sims.shape[1]), key=lambda j: -float(sims[i, j]))
        i2t.append(any(bool(match[i, j]) for j in ranked[:k]))  # ANY of the image's captions in the top k
    t2i = []
    for j in text_rows:
        ranked = sorted(range(sims.shape[0]), key=lambda i: -float(sims[i, j]))
        t2i.append(any(bool(match[i, j]) for i in ranked[:k]))  # the caption's own image in the top k
    return sum(i2t) / len(i2t), sum(t2i) / len(t2i)


def test_recall_from_similarity_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    sims = torch.randperm(6 * 14, generator=g).float().view(6, 14)  # distinct values: no ties
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5])  # the image of each caption
    match = torch.arange(6).view(-1, 1) == groups.view(1, -1)
    for image_rows, text_rows in ((range(6), range(14)), ([1, 4], [0, 5, 13])):
        out = metrics.recall_from_similarity(sims, match, ks=(1, 2, 3, 5, 10, 20), image_rows=list(image_rows),
                                             text_rows=list(text_rows))
        for k in (1, 2, 3, 5, 10, 20):
            i2t, t2i = _naive_recall(sims, match, k, image_rows=image_rows, text_rows=text_rows)
            assert out[f"i2t_r{k}"] == pytest.approx(i2t) and out[f"t2i_r{k}"] == pytest.approx(t2i), k


def test_recall_from_similarity_by_hand():
    # 3 images, 4 captions: image 0 owns captions 0 and 1, image 1 caption 2, image 2 caption 3
    sims = torch.tensor([[0.1, 0.8, 0.9, 0.0],    # image 0: its caption 1 second (rank 1)
                         [0.7, 0.2, 0.3, 0.6],    # image 1: its caption 2 third (rank 2)
                         [0.5, 0.4, 0.2, 0.95]])  # image 2: its caption 3 first
    match = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    out = metrics.recall_from_similarity(sims, match, ks=(1, 2, 3))
    assert (out["i2t_r1"], out["i2t_r2"], out["i2t_r3"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0)
    # captions ranked over images: caption 0 -> images 1, 2, 0 (its own last); caption 1 -> image 0 first;
    # caption 2 -> images 0, 1 (its own second), 2; caption 3 -> image 2 first
    assert (out["t2i_r1"], out["t2i_r2"], out["t2i_r3"]) == (0.5, 0.75, 1.0)
    only = metrics.recall_from_similarity(sims, match, ks=(1,), image_rows=[1], text_rows=[0])
    assert only == {"i2t_r1": 0.0, "t2i_r1": 0.0}


# --------------------------------------------------------------------------- #
# Caption pairs for the loop, and the Df / Dr evaluation
# --------------------------------------------------------------------------- #
def test_caption_pair_loader_pairs_each_caption_with_its_own_image(tmp_path, tiny_tokenizer):
    ds = data.load_caption_dataset("flickr30k", split="all", root=_flickr(tmp_path), transform=transforms.ToTensor())
    loader = make_caption_pair_loader(ds, tokenizer=tiny_tokenizer, images=[0, 3, 4], batch_size=4, seed=1)
    assert len(loader) == 2  # 6 pairs
    epoch = list(loader.batches(0))
    labels = torch.cat([b["labels"] for b in epoch])
    assert sorted(labels.tolist()) == [0, 0, 3, 3, 4, 4]
    expected = {(int(i), tuple(tiny_tokenizer([c])[0].tolist())) for c, i in zip(ds.captions, ds.caption_image_ids)}
    for b in epoch:
        images, _ = ds.get_batch(b["labels"])
        assert torch.equal(b["images"], images)
        assert {(int(i), tuple(t.tolist())) for i, t in zip(b["labels"], b["texts"])} <= expected
    assert [b["labels"].tolist() for b in loader.batches(0)] == [b["labels"].tolist() for b in epoch]
    with pytest.raises(ValueError, match="no pairs"):
        make_caption_pair_loader(ds, tokenizer=tiny_tokenizer, images=[], batch_size=4)


class _FeatureModel(torch.nn.Module):
    """A stand-in CLIP whose "images" and "tokens" are already the features."""

    def encode_image(self, x, normalize=True):
        return F.normalize(x.float(), dim=-1)

    def encode_text(self, x, normalize=True):
        return F.normalize(x.float(), dim=-1)


def test_evaluate_retrieval_ranks_df_and_dr_queries_against_one_pool():
    # 4 pool images (0, 1 forget; 2, 3 retain), one caption each (caption j belongs to image j)
    images = torch.eye(4)
    texts = torch.eye(4)[[0, 2, 1, 3]]  # the captions of images 1 and 2 look more like each other's image
    texts[1, 1] = texts[2, 2] = 0.5  # ... than their own, which comes second
    pool = harness.RetrievalPool(images, texts, torch.tensor([10, 11, 12, 13]), torch.arange(4),
                                 torch.tensor([True, True, False, False]))
    out = harness.evaluate_retrieval(_FeatureModel(), pool, ks=(1, 2))
    assert out["forget_i2t_r1"] == 0.5 and out["forget_t2i_r1"] == 0.5 and out["forget_r1"] == 0.5
    assert out["retain_i2t_r1"] == 0.5 and out["retain_t2i_r1"] == 0.5
    assert out["forget_i2t_r2"] == 1.0 and out["retain_r2"] == 1.0  # the swapped ones come second
    same = metrics.retrieval_recall(images, texts, ks=(1, 2), queries=[0, 1])
    assert {k: out[f"forget_{k}"] for k in same} == same
    assert pool.sizes() == {"forget_images": 2, "retain_images": 2, "forget_captions": 2, "retain_captions": 2}
    bad = harness.RetrievalPool(images * float("nan"), texts, pool.image_ids, pool.caption_groups, pool.is_forget)
    with pytest.raises(metrics.NonFiniteOutputError):
        harness.evaluate_retrieval(_FeatureModel(), bad)


def test_retrieval_tasks_share_pools_and_refuse_a_concept_a_split_lacks(tmp_path, tiny_tokenizer):
    captions = {**CAPTIONS, "5.png": ("val", ["A dog runs.", "A dog."]), "6.png": ("val", ["A cat.", "A cat."])}
    root = _flickr(tmp_path, captions)
    splits = [data.load_caption_dataset("flickr30k", split=s, root=root, transform=transforms.ToTensor())
              for s in ("train", "val", "test")]
    tasks = harness.build_retrieval_tasks(*splits, concept="dog", tokenizer=tiny_tokenizer, seeds=(0, 1))
    assert [t.seed for t in tasks] == [0, 1] and tasks[0].test is tasks[1].test
    assert tasks[0].forget_train.tolist() == [0] and tasks[0].retain_train.tolist() == [1, 2]
    sizes = tasks[0].sizes()
    assert sizes["forget_train_pairs"] == 2 and sizes["test_forget_images"] == 1 and sizes["val_retain_images"] == 1
    assert tasks[0].test.image_ids.tolist() == [0, 1]  # forget first: 3.png is test image 0
    with pytest.raises(ValueError, match="val split: no caption mentions 'bus'"):
        harness.build_retrieval_tasks(*splits, concept="bus", tokenizer=tiny_tokenizer)
