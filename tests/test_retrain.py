"""The retrained gold standard: the mini recipe without the forget images and their captions (methods/retrain.py).

The training loop is driven on a fake Fashion-MNIST whose every image carries its global index in its pixels,
with a recording ``train_step``, so the test sees exactly which images and captions each step got.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from clipunlearn import data, harness, models, plots, registry
from clipunlearn.methods import retrain
from clipunlearn.paths import get_data_dir
from clipunlearn.plots import common as plots_common

from .test_experiment import tiny_world

# the recording train_step never steps the optimiser
pytestmark = pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")


class IndexImages:
    """Fashion-MNIST-shaped: ``n`` source images x 3 styles, style-major; image ``i`` is filled with ``i``."""

    def __init__(self, n: int):
        self.n = n
        self.targets = (torch.arange(n) % 10).repeat(3)
        self.classnames = list(data.FASHION_MNIST_CLASSES)

    def __len__(self):
        return 3 * self.n

    def get_batch(self, idx):
        idx = torch.as_tensor(idx)
        return idx.float()[:, None, None, None].expand(-1, 3, 32, 32).clone(), self.targets[idx]


def drive(monkeypatch, **kwargs):
    """Run ``train_mini_clip`` on :class:`IndexImages`; return ``[(image indices, n captions)]`` per step."""
    steps = []

    def train_step(model, optimizer, images, tokens, positives):
        assert positives.shape == (len(images), len(tokens)) and positives.any(1).all()
        steps.append((images[:, 0, 0, 0].long().tolist(), len(tokens)))
        return torch.tensor(0.0)

    monkeypatch.setattr(models.data, "load_fashion_mnist", lambda split, **kw: IndexImages(300))
    monkeypatch.setattr(models, "train_step", train_step)
    monkeypatch.setattr(models, "_zero_shot_accuracy", lambda *a, **k: 0.0)
    models.train_mini_clip(epochs=2, batch_size=40, val_images=60, warmup_steps=1, seed=3, progress=False, **kwargs)
    return steps


def test_the_recipe_is_the_same_draws_without_the_excluded_images(monkeypatch):
    full = drive(monkeypatch)
    gold = drive(monkeypatch, exclude={"sandal": ["photo"], "bag": ["sketch"]})
    sandal, bag = data.FASHION_MNIST_CLASSES.index("sandal"), data.FASHION_MNIST_CLASSES.index("bag")
    excluded = {i for i in range(900) if (i // 300 == 0 and i % 10 == sandal) or (i // 300 == 1 and i % 10 == bag)}
    assert len(full) == len(gold) == 2 * (240 // 40)  # the same steps
    dropped = 0
    for (seen_full, n_full), (seen_gold, n_gold) in zip(full, gold):
        assert seen_gold == [i for i in seen_full if i not in excluded]  # same images, same order, minus excluded
        assert not set(seen_gold) & excluded
        dropped += len(seen_full) - len(seen_gold)
        assert n_full == len(models.build_caption_vocabulary()[0]) and n_gold == n_full - 4
    assert dropped > 0  # the draws did hit excluded images


def test_captions_that_describe_only_excluded_images_are_left_out():
    captions, compatible = models.build_caption_vocabulary()
    mask = models.excluded_pairs({"sandal": ["photo"]})
    assert mask.sum() == 1 and mask[data.STYLES.index("photo"), data.FASHION_MNIST_CLASSES.index("sandal")]
    kept = (compatible & ~mask[:, :, None]).flatten(0, 1).any(0)
    gone = [c for c, k in zip(captions, kept.tolist()) if not k]
    assert gone == ["a photo of a sandal.", "a photo of the sandal."]  # "a photo of a shoe." stays
    with pytest.raises(ValueError, match="^unknown class 'boot'; valid: t-shirt, "):
        models.excluded_pairs({"boot": ["photo"]})
    with pytest.raises(ValueError, match="^" + re.escape("unknown style 'oil'; valid: photo, sketch, negative") + "$"):
        models.excluded_pairs({"sandal": ["oil"]})


def test_the_exclusion_is_in_the_cache_key_and_the_record(monkeypatch, tmp_path):
    settings = {**models.MINI_TRAINING}
    assert models._mini_key("mini", settings) != models._mini_key("mini", {**settings, "exclude": {"sandal": ["photo"]}})
    seen = []
    monkeypatch.setattr(models.data, "load_fashion_mnist", lambda split, **kw: IndexImages(300))
    monkeypatch.setattr(models, "train_step", lambda m, o, images, tokens, positives: torch.tensor(0.0))
    monkeypatch.setattr(models, "_zero_shot_accuracy", lambda *a, **k: 0.0)
    monkeypatch.setattr(models, "evaluate_mini_clip", lambda *a, **k: seen.append(1) or {"acc": 0.0})
    kwargs = dict(cache_dir=tmp_path, progress=False, epochs=1, batch_size=40, val_images=60, warmup_steps=1,
                  exclude={"sandal": ["photo"]})
    _, _, _, info = models.get_mini_clip(**kwargs)
    assert info["config"]["exclude"] == {"sandal": ["photo"]} and info["source"] == "trained"
    _, _, _, again = models.get_mini_clip(**kwargs)  # cached: trained once
    assert len(seen) == 1 and again["path"] == info["path"]


@pytest.mark.parametrize("kind, target, expected", [
    ("forget-class", "sneaker", {"sneaker": ["photo"]}),
    ("forget-subgroup", "sandal", {"sandal": ["photo"]}),
    ("forget-style-subgroup", "sketch:sneaker", {"sneaker": ["sketch"]}),
])
def test_the_exclusion_is_the_tasks_forget_images(kind, target, expected):
    train, test = tiny_world(seed=0), tiny_world(n_per_class=6, seed=1)
    task = harness.build_task(train, test, kind=kind, target=target, seed=0)
    assert retrain.retrain_exclusion(task) == expected
    # the forget images of the task are exactly the excluded (class, style) images the model saw
    style = expected[task.classnames[task.forget_classes[0]]][0]
    ids = torch.cat([task.forget_train, task.forget_val])
    assert (train.styles[ids] == data.STYLES.index(style)).all()
    assert (train.targets[ids] == task.forget_classes[0]).all()


def test_run_retrain_scores_the_retrained_model_on_the_task(monkeypatch, tiny_clip):
    train, test = tiny_world(seed=0), tiny_world(n_per_class=6, seed=1)
    task = harness.build_task(train, test, kind="forget-subgroup", target="sandal", seed=2, eval_per_class=4)
    calls = []

    def fake_get(**kwargs):
        calls.append(kwargs)
        return tiny_clip.model, None, tiny_clip.tokenizer, {"config": {"seed": 0}, "path": "/cache/model.pt",
                                                            "train_seconds": 12.5}

    monkeypatch.setattr(retrain, "get_mini_clip", fake_get)
    model, record = retrain.run_retrain(task, training={"epochs": 1})
    assert calls == [dict(exclude={"sandal": ["photo"]}, cache_dir=None, device="cpu", progress=False, seed=None,
                          epochs=1)]
    assert model is tiny_clip.model and record["method"] == "retrain" and record["task"] == "forget-subgroup"
    assert record["config"]["exclude"] == {"sandal": ["photo"]} and record["config"]["seed"] is None  # like original
    assert record["config"]["cache_key"] == "cache" and record["metrics"]["train_seconds"] == 12.5
    expected = harness.evaluate_model(tiny_clip.model, task, tokenizer=tiny_clip.tokenizer)
    assert {k: record["metrics"][k] for k in ("forget_acc", "sibling_acc", "retain_acc", "mia")} == {
        k: expected[k] for k in ("forget_acc", "sibling_acc", "retain_acc", "mia")}
    val = harness.validate_model(tiny_clip.model, task, tokenizer=tiny_clip.tokenizer)
    assert record["metrics"]["score"] == val["score"]


def test_a_retrained_mini_world_retrains_its_reference_with_its_own_seed(monkeypatch, tiny_clip):
    train, test = tiny_world(seed=0), tiny_world(n_per_class=6, seed=1)
    task = harness.build_task(train, test, kind="forget-class", target="sneaker", seed=0, eval_per_class=4)
    calls = []
    monkeypatch.setattr(retrain, "get_mini_clip", lambda **kw: calls.append(kw) or (
        tiny_clip.model, None, tiny_clip.tokenizer, {"config": {}, "path": "/x/key/model.pt"}))
    monkeypatch.setenv("CLIPUNLEARN_MINI_SEED", "7")
    retrain.run_retrain(task)
    assert calls[0]["seed"] == 7


def test_load_references_keeps_the_benchmark_targets_and_skips_the_selection_seed(monkeypatch, tiny_clip):
    train, test = tiny_world(seed=0), tiny_world(n_per_class=6, seed=1)
    sel = harness.PROTOCOL
    tasks = {t: [harness.build_task(train, test, kind="forget-class", target=t, seed=s, eval_per_class=4)
                 for s in sel.with_seeds([3, 4])] for t in ("sneaker", "bag")}
    seen = []
    monkeypatch.setattr(retrain, "run_retrain", lambda task, **kw: seen.append(task) or ("model", {"m": task.seed}))
    refs = retrain.load_references(tasks, selection=sel)
    assert list(refs) == ["sneaker"] and [t.seed for t in seen] == [3]  # bag is no benchmark target
    assert refs["sneaker"].model == "model" and refs["sneaker"].record == {"m": 3}
    assert list(retrain.load_references(tasks, selection=sel, targets=None)) == ["sneaker", "bag"]


def test_the_references_have_fixed_colours_and_shift_no_method_colour():
    import seaborn as sns  # pyplot and seaborn load only in the tests that draw

    methods = [m for m in registry.method_labels() if m not in registry.REFERENCES
               and m not in plots_common.APPENDED_METHODS]  # paper C's own forms: coloured after every other
    assert methods[0] == "ft" and "retrain" in registry.method_labels()
    assert plots.method_colour("retrain") == "#222222" and plots.method_colour("original") == plots.ORIGINAL_COLOUR
    palette = sns.color_palette("tab10", 10)
    assert [plots.method_colour(m) for m in methods[:3]] == palette[:3]  # ft, ga, graddiff as before retrain


def test_run_retrain_trains_a_real_tiny_model_once_on_fashion_mnist(tmp_path, monkeypatch):
    """The whole path on real data: a one-epoch recipe on 512 images without sandal photos, cached, then scored."""
    if data._find_fashion_mnist(get_data_dir()) is None:
        pytest.skip("Fashion-MNIST not installed (python -m clipunlearn data --fetch)")
    train, test = data.load_mini_world()
    task = harness.build_task(train, test, kind="forget-subgroup", target="sandal", seed=0, eval_per_class=20,
                              retain_per_class=20, val_per_class=10)
    tiny = dict(epochs=1, max_train_images=512, val_images=200, batch_size=128)
    monkeypatch.setattr(models, "evaluate_mini_clip", lambda *a, **k: {"acc": 0.0})  # its 30 000 test images
    model, record = retrain.run_retrain(task, cache_dir=tmp_path, training=tiny)
    (folder,) = (tmp_path / "models").iterdir()
    info = json.loads((folder / "info.json").read_text())
    assert info["config"]["exclude"] == {"sandal": ["photo"]} and info["captions"] == len(
        models.build_caption_vocabulary()[0]) - 2
    assert record["method"] == "retrain" and 0.0 <= record["metrics"]["forget_acc"] <= 1.0
    again, _ = retrain.run_retrain(task, cache_dir=tmp_path, training=tiny)  # cached: no second training
    assert len(list((tmp_path / "models").iterdir())) == 1
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
