"""Data: the Fashion-MNIST mini world and the folder loaders on real images."""

import json
from urllib.error import URLError

import pytest
import torch

from clipunlearn import data


@pytest.fixture(scope="module")
def fmnist_test():
    try:
        return data.load_fashion_mnist("test", styles=data.STYLES)
    except FileNotFoundError as err:
        pytest.skip(str(err))


def test_fashion_mnist_shapes_and_styles(fmnist_test):
    n = 10_000
    assert len(fmnist_test) == 3 * n
    assert fmnist_test.images.shape == (3 * n, 32, 32) and fmnist_test.images.dtype == torch.uint8
    assert fmnist_test.styles.bincount().tolist() == [n, n, n]
    # the same source image appears once per style with the same label
    assert torch.equal(fmnist_test.targets[:n], fmnist_test.targets[n:2 * n])
    assert torch.equal(fmnist_test.image_ids[:n], fmnist_test.image_ids[2 * n:])
    assert fmnist_test.targets.bincount().tolist() == [3 * 1000] * 10


def test_negative_style_inverts_photo(fmnist_test):
    n = 10_000
    assert torch.equal(fmnist_test.images[2 * n:], 255 - fmnist_test.images[:n])


def test_items_are_normalised_three_channel(fmnist_test):
    x, y = fmnist_test[0]
    assert x.shape == (3, 32, 32) and -1.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x[0], x[1])  # grey replicated
    xb, yb = fmnist_test.get_batch([0, 1])
    assert torch.equal(xb[0], x) and yb[0] == y


def test_hierarchy_covers_every_class_once():
    fines = [f for group in data.FASHION_MNIST_HIERARCHY.values() for f in group]
    assert sorted(fines) == sorted(data.FASHION_MNIST_CLASSES)
    assert data.coarse_of("sneaker") == "shoe" and data.coarse_of("coat") == "top"


def test_sketch_style_is_deterministic_edges():
    img = torch.zeros(1, 8, 8, dtype=torch.uint8)
    img[:, :, 4:] = 255  # a vertical step edge
    sketch = data.apply_style(img, "sketch")
    assert torch.equal(sketch, data.apply_style(img, "sketch"))
    assert sketch[0, 4, 0] == 255 and sketch[0, 4, 3] == 0  # flat region white, edge dark


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="valid: photo, sketch, negative"):
        data.apply_style(torch.zeros(1, 2, 2, dtype=torch.uint8), "oil")
    with pytest.raises(ValueError, match="sneaker"):
        data.check_classnames(["sneakers"], data.FASHION_MNIST_CLASSES)
    assert data.check_classnames(["sneaker", "bag"], data.FASHION_MNIST_CLASSES) == [7, 8]
    with pytest.raises(ValueError, match="fashion-mnist"):
        data.load_dataset("mnist")


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data.fashion_mnist, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.read_fashion_mnist("test", data_dir=tmp_path)


def test_select_and_split_indices(fmnist_test):
    idx = data.select_indices(fmnist_test, classes=[7], styles=[0])
    assert len(idx) == 1000 and (fmnist_test.targets[idx] == 7).all() and (fmnist_test.styles[idx] == 0).all()
    rest = data.select_indices(fmnist_test, exclude_classes=[7], styles=[0], limit_per_class=20, seed=1)
    assert len(rest) == 9 * 20 and not (fmnist_test.targets[rest] == 7).any()
    a, b = data.split_indices(idx, [0.8, 0.2], seed=0)
    assert len(a) == 800 and len(b) == 200 and not set(a.tolist()) & set(b.tolist())
    assert torch.equal(data.split_indices(idx, [0.8, 0.2], seed=0)[0], a)


def test_make_loader_batches(fmnist_test):
    loader = data.make_loader(fmnist_test, indices=torch.arange(10), batch_size=4)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert batches[0][0].shape == (4, 3, 32, 32)


def test_cifar10_folder_on_real_images(shared_data_dir):
    ds = data.load_dataset("folder", root=shared_data_dir / "cifar10-test-2k")
    assert ds.classnames == list(data.CIFAR10_CLASSES)
    assert len(ds) == 2000 and ds.targets.bincount().tolist() == [200] * 10
    image, label = ds[0]
    assert image.size == (32, 32) and label == 0


def test_cifar10_registry_reads_imagefolder_export(shared_data_dir, tmp_path):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "test").symlink_to(shared_data_dir / "cifar10-test-2k")
    ds = data.load_dataset("cifar10", split="test", data_dir=tmp_path)
    assert len(ds) == 2000 and ds.classnames[0] == "airplane"


def test_pacs_domains_as_styles(shared_data_dir):
    ds = data.load_dataset("pacs", root=shared_data_dir / "pacs-mini", domains=("photo", "sketch"))
    assert ds.classnames == ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
    assert ds.stylenames == ["photo", "sketch"] and ds.styles.bincount().tolist() == [175, 175]
    idx = data.select_indices(ds, classes=[0], styles=[1])
    assert len(idx) == 25 and ds[int(idx[0])][1] == 0


def test_folder_names_cleaned():
    assert data._folder_name_to_class("n02086079-Pekinese") == "Pekinese"
    assert data._folder_name_to_class("toy_poodle") == "toy poodle"
    assert len(data.FLOWERS102_CLASSES) == 102


# --------------------------------------------------------------------------- #
# Loader friction: root=, offline errors, transforms, styles, splits, captions
# --------------------------------------------------------------------------- #
def _write_images(folder, names, *, size=8):
    """Write small distinct RGB PNGs ``folder/<name>`` and return their paths."""
    from PIL import Image

    paths = []
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), color=(30 * i % 256, 60, 90)).save(path)
        paths.append(path)
    return paths


def _to_tensor():
    from torchvision import transforms

    return transforms.ToTensor()


def test_registered_dataset_reads_root(shared_data_dir, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "test").symlink_to(shared_data_dir / "cifar10-test-2k")
    ds = data.load_dataset("cifar10", split="test", root=tmp_path / "mine", data_dir=tmp_path / "elsewhere")
    assert len(ds) == 2000 and ds.classnames == list(data.CIFAR10_CLASSES)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):  # root is used, not ignored
        data.load_dataset("cifar100", split="test", root=tmp_path / "empty")


def test_fashion_mnist_reads_root(tmp_path, monkeypatch):
    files = [f for pair in data._FMNIST_FILES.values() for f in pair]
    if not all((data.DEBIAN_FASHION_MNIST / f).exists() for f in files):
        pytest.skip("Debian's Fashion-MNIST is not installed")
    for f in files:
        (tmp_path / f).symlink_to(data.DEBIAN_FASHION_MNIST / f)
    monkeypatch.setattr(data.fashion_mnist, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    ds = data.load_dataset("fashion-mnist", split="test", root=tmp_path, data_dir=tmp_path / "none")
    assert len(ds) == 10_000
    with pytest.raises(FileNotFoundError, match="missing in root"):
        data.load_dataset("fashion-mnist", root=tmp_path / "none")


@pytest.mark.parametrize("error", [URLError("no network"), OSError("network is unreachable")])
def test_offline_download_says_where_to_place_files(tmp_path, monkeypatch, error):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise error

    monkeypatch.setattr(tvd, "CIFAR10", offline)
    with pytest.raises(FileNotFoundError, match="place an ImageFolder export at") as info:
        data.load_dataset("cifar10", split="test", data_dir=tmp_path, download=True)
    assert str(tmp_path / "cifar10" / "test") in str(info.value) and info.value.__cause__ is error


def test_missing_transform_fails_when_batching_with_a_clear_error(shared_data_dir):
    from clipunlearn import metrics

    root = shared_data_dir / "cifar10-test-2k"
    raw = data.load_dataset("folder", root=root)
    with pytest.raises(TypeError, match="transform=preprocess"):
        next(iter(data.make_loader(raw, indices=range(4), batch_size=4)))
    with pytest.raises(TypeError, match="transform=preprocess"):
        next(metrics.iterate_batches(raw, indices=range(4), batch_size=4))
    images, labels = next(iter(data.make_loader(data.load_dataset("folder", root=root, transform=_to_tensor()),
                                                indices=range(4), batch_size=4)))
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 0, 0, 0]


def test_select_indices_styles_on_a_dataset_without_styles(shared_data_dir):
    ds = data.load_dataset("folder", root=shared_data_dir / "cifar10-test-2k")
    with pytest.raises(ValueError, match="has no styles"):
        data.select_indices(ds, classes=[0], styles=[0])
    assert len(data.select_indices(ds, classes=[0])) == 200


def test_pacs_split_is_seeded_per_domain_and_class(shared_data_dir):
    root = shared_data_dir / "pacs-mini"
    full = data.load_dataset("pacs", root=root)  # PACS has no official split: the default is "all"
    test = data.load_dataset("pacs", root=root, split="test")
    train = data.load_dataset("pacs", root=root, split="train")
    assert len(full) == 4 * 175 and len(test) == 4 * 7 * 5 and len(train) == 4 * 7 * 20
    for part, n in ((test, 5), (train, 20)):  # 20% of the 25 images of every (domain, class) group
        assert (part.styles * 7 + part.targets).bincount(minlength=28).tolist() == [n] * 28
    # train and test partition the images, and the split is reproducible
    assert not set(test.paths) & set(train.paths) and set(test.paths) | set(train.paths) == set(full.paths)
    assert data.load_dataset("pacs", root=root, split="test").paths == test.paths
    # a group's split does not depend on the other domains loaded; another seed gives another split
    photo = data.load_dataset("pacs", root=root, split="test", domains=("photo",))
    assert set(photo.paths) == {p for p in test.paths if p.parent.parent.name == "photo"}
    assert set(data.load_dataset("pacs", root=root, split="test", seed=1).paths) != set(test.paths)
    _, label = test[0]
    assert label == int(test.targets[0]) and test.paths[0].parent.name == test.classnames[label]
    with pytest.raises(ValueError, match="valid: train, test, all"):
        data.load_dataset("pacs", root=root, split="val")


def _coop_split(tmp_path):
    """A CoOp-style split file beside an images/ folder: 2 classes, train 3 / val 1 / test 2 images."""
    entries = {"train": [["cat/a.png", 1, "cat"], ["dog/b.png", 0, "dog"], ["dog/c.png", 0, "dog"]],
               "val": [["cat/d.png", 1, "cat"]],
               "test": [["dog/e.png", 0, "dog"], ["cat/f.png", 1, "cat"]]}
    _write_images(tmp_path / "ds" / "images", [rel for items in entries.values() for rel, _, _ in items])
    split_file = tmp_path / "ds" / "split_zhou_Tiny.json"
    split_file.write_text(json.dumps(entries))
    return split_file


def test_coop_split_file(tmp_path):
    split_file = _coop_split(tmp_path)
    train = data.load_dataset("stanford-dogs", split="train", split_file=split_file)  # finds images/ itself
    assert train.classnames == ["dog", "cat"] and train.targets.tolist() == [1, 0, 0]
    assert [p.name for p in train.paths] == ["a.png", "b.png", "c.png"]
    test = data.load_dataset("folder", split="test", split_file=split_file, root=tmp_path / "ds" / "images",
                             transform=_to_tensor())
    images, labels = next(iter(data.make_loader(test, batch_size=8)))
    assert images.shape == (2, 3, 8, 8) and labels.tolist() == [0, 1]
    val = data.load_split_file(split_file, split="val")
    assert len(val) == 1 and val.classnames == ["dog", "cat"]  # names from every split of the file
    with pytest.raises(ValueError, match="valid: train, val, test"):
        data.load_split_file(split_file, split="holdout")
    with pytest.raises(FileNotFoundError, match="pass root="):
        data.load_split_file(split_file, split="train", root=tmp_path)


def test_split_file_class_names_have_spaces_not_underscores(tmp_path):
    """CoOp's split_zhou_Caltech101.json names 18 classes like 'crocodile_head'; the authors prompt 'crocodile head'."""
    entries = {"train": [["crocodile_head/a.png", 0, "crocodile_head"], ["yin_yang/b.png", 1, "yin_yang"]],
               "val": [], "test": [["crocodile_head/c.png", 0, "crocodile_head"], ["minaret/d.png", 2, "minaret"]]}
    _write_images(tmp_path / "caltech-101" / "101_ObjectCategories",
                  [rel for items in entries.values() for rel, _, _ in items])
    split_file = tmp_path / "caltech-101" / "split_zhou_Caltech101.json"
    split_file.write_text(json.dumps(entries))
    test = data.load_split_file(split_file, split="test")
    assert test.classnames == ["crocodile head", "yin yang", "minaret"]
    assert [p.parent.name for p in test.paths] == ["crocodile_head", "minaret"]  # the files keep their folders
    assert data.load_dataset("caltech101", split="train", split_file=split_file).classnames == test.classnames


def _karpathy(tmp_path):
    """A Flickr30K-style folder: 3 images, 2 captions each; images 0 and 2 in "test", 1 in "train"."""
    root = tmp_path / "flickr30k"
    names = ["100.jpg", "200.jpg", "300.jpg"]
    _write_images(root / "flickr30k-images", names)
    images = [{"filename": n, "split": s, "sentences": [{"raw": f"caption {i}a"}, {"raw": f"caption {i}b"}]}
              for i, (n, s) in enumerate(zip(names, ["test", "train", "test"]))]
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return root


def test_flickr30k_karpathy_captions(tmp_path):
    from clipunlearn import metrics

    ds = data.load_dataset("flickr30k", root=_karpathy(tmp_path), transform=_to_tensor())
    assert len(ds) == 2 and ds.source_ids == ["100.jpg", "300.jpg"]
    assert ds.captions == ["caption 0a", "caption 0b", "caption 2a", "caption 2b"]
    assert ds.image_ids.tolist() == [0, 1] and ds.caption_image_ids.tolist() == [0, 0, 1, 1]
    image, captions = ds[1]
    assert image.shape == (3, 8, 8) and captions == ["caption 2a", "caption 2b"]
    # texts as their own set: a text matches its image, so one-hot features give perfect recall ...
    groups = ds.retrieval_groups()
    img_feats = torch.eye(4)[ds.image_ids]
    txt_feats = torch.eye(4)[ds.caption_image_ids]
    assert metrics.retrieval_recall(img_feats, txt_feats, ks=(1,), **groups) == {"i2t_r1": 1.0, "t2i_r1": 1.0}
    # ... and texts pointing at the wrong image give none
    assert metrics.retrieval_recall(img_feats, txt_feats.flip(0), ks=(1,), **groups) == {"i2t_r1": 0.0,
                                                                                        "t2i_r1": 0.0}
    images, captions = next(iter(data.make_loader(ds, batch_size=2)))
    assert images.shape == (2, 3, 8, 8) and captions[1] == ["caption 2a", "caption 2b"]
    assert len(data.load_dataset("flickr30k", root=tmp_path / "flickr30k", split="all")) == 3
    with pytest.raises(ValueError, match="valid: test, train, all"):
        data.load_dataset("flickr30k", root=tmp_path / "flickr30k", split="val")


def test_caption_images_encode_for_retrieval(tmp_path, tiny_clip):
    from torchvision import transforms

    from clipunlearn import metrics

    ds = data.load_dataset("flickr30k", root=_karpathy(tmp_path), split="all",
                           transform=transforms.Compose([transforms.Resize(32), transforms.ToTensor()]))
    feats, ids = metrics.encode_images(tiny_clip.model, ds, batch_size=2)
    assert feats.shape == (3, 32) and ids.tolist() == [0, 1, 2]
    raw = data.load_dataset("flickr30k", root=tmp_path / "flickr30k", split="all")
    with pytest.raises(TypeError, match="transform=preprocess"):
        metrics.encode_images(tiny_clip.model, raw)


def _coco(tmp_path):
    """A COCO-captions-style annotation file: image ids out of order, captions interleaved."""
    folder = tmp_path / "val2017"
    _write_images(folder, ["000000000042.jpg", "000000000007.jpg", "000000000013.jpg"])
    ann = {"images": [{"id": 42, "file_name": "000000000042.jpg"}, {"id": 7, "file_name": "000000000007.jpg"},
                      {"id": 13, "file_name": "000000000013.jpg"}],
           "annotations": [{"id": 1, "image_id": 13, "caption": "thirteen one"},
                           {"id": 2, "image_id": 7, "caption": "seven one"},
                           {"id": 3, "image_id": 13, "caption": "thirteen two"},
                           {"id": 4, "image_id": 42, "caption": "forty-two one"},
                           {"id": 5, "image_id": 7, "caption": "seven two"}]}
    (tmp_path / "captions_val2017.json").write_text(json.dumps(ann))
    return folder, tmp_path / "captions_val2017.json"


def test_coco_captions(tmp_path):
    folder, annotation_file = _coco(tmp_path)
    ds = data.load_dataset("coco-captions", root=folder, annotation_file=annotation_file)
    assert ds.source_ids == [7, 13, 42]  # torchvision's CocoCaptions order: sorted image ids
    assert ds.captions == ["seven one", "seven two", "thirteen one", "thirteen two", "forty-two one"]
    assert ds.caption_image_ids.tolist() == [0, 0, 1, 1, 2]
    assert ds[2][1] == ["forty-two one"] and ds[2][0].size == (8, 8)
    with pytest.raises(FileNotFoundError, match="pass root="):
        data.load_coco_captions(tmp_path, annotation_file)


def test_coco_captions_match_torchvision(tmp_path):
    pytest.importorskip("pycocotools")
    from torchvision.datasets import CocoCaptions

    folder, annotation_file = _coco(tmp_path)
    ours = data.load_coco_captions(folder, annotation_file)
    theirs = CocoCaptions(str(folder), str(annotation_file))
    assert [theirs[i][1] for i in range(len(theirs))] == [ours[i][1] for i in range(len(ours))]


def test_objectnet_loads_from_its_images_folder_with_imagenet_prompts(tmp_path):
    from PIL import Image

    for name in ("air_freshener", "banana"):
        folder = tmp_path / "objectnet" / "images" / name
        folder.mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(folder / "0.png")
    ds = data.load_dataset("objectnet", data_dir=tmp_path)
    assert ds.classnames == ["air freshener", "banana"] and len(ds) == 2
    assert len(data.get_templates("objectnet")) == 80  # open_clip's ImageNet templates
    with pytest.raises(FileNotFoundError, match="download it yourself"):
        data.load_dataset("objectnet", data_dir=tmp_path / "none")


def test_mini_world_is_both_splits_in_every_style(fmnist_test):
    train, test = data.load_mini_world()
    assert (len(train), len(test)) == (3 * 60_000, 3 * 10_000)
    assert train.stylenames == test.stylenames == list(data.STYLES)
    assert torch.equal(test.targets, fmnist_test.targets) and torch.equal(test.styles, fmnist_test.styles)
