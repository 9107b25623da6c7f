"""Data: the Fashion-MNIST mini world and the folder loaders on real images."""

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
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "none")
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
