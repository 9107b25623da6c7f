"""Notebook 10's settings and task loading (papers.paper_c: paper_c_settings / load_paper_c_tasks)."""

import pytest
import torch

from clipunlearn import configs, data, harness, losses, models
from clipunlearn.papers import paper_c

from .test_experiment import tiny_world


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown profile 'full'; valid profiles: mini, paper"):
        paper_c.paper_c_settings("full")


def test_mini_settings():
    mini = paper_c.paper_c_settings("mini")
    assert mini["grid"] == configs.mini_settings()["grids"]["cliperase"] == {"lr": [3.16e-5, 1e-4, 3.16e-4]}
    assert (mini["model"], mini["pretrained"], mini["dataset"]) == ("mini", None, "fashion-mnist")
    assert mini["forget"] == ["sneaker", "shirt", "trouser"] and mini["seeds"] == [0, 1, 2]
    assert mini["ratios"] == [0.1, 0.2, 0.3] and mini["ratio_methods"] == ["ga", "cliperase"]
    assert mini["selection"] == harness.PROTOCOL and harness.PROTOCOL.seed not in mini["seeds"]
    assert mini["task"] == dict(retain_per_class=300, eval_per_class=300)
    assert (mini["steps"], mini["batch_size"]) == (30, 32) and "epochs" not in mini
    assert mini["methods"] == ["ft", "ga", "graddiff", "neggrad_plus", "random_labels", "cliperase"]
    assert mini["ablations"] == {"FM": dict(lambda1=0.0, lambda2=3.0, lambda3=0.0),
                                 "FM+RM": dict(lambda1=1.0, lambda2=3.0, lambda3=0.0)}
    assert all(m in losses.LOSSES for m in mini["methods"])


def test_parameters_and_quick_mode():
    quick = paper_c.paper_c_settings("mini", quick=True, seeds="4, 5", forget_classes="bag, coat")
    assert quick["seeds"] == [4] and quick["forget"] == ["bag"]
    assert quick["steps"] == 10 and quick["grid"] == {"lr": [1e-4]}
    assert quick["task"] == dict(retain_per_class=50, eval_per_class=50)
    assert paper_c.paper_c_settings("mini", forget_classes="bag, coat")["forget"] == ["bag", "coat"]
    with pytest.raises(ValueError, match="MODEL is for the paper profile only"):
        paper_c.paper_c_settings("mini", model="RN50")
    with pytest.raises(ValueError, match=f"seed {harness.SELECTION_SEED} is the selection seed"):
        paper_c.paper_c_settings("mini", seeds=f"0,{harness.SELECTION_SEED}")


def test_paper_settings_follow_paper_c_json():
    paper, spec = paper_c.paper_c_settings("paper"), configs.load_paper_config("paper_c")
    hyper = spec["hyperparameters"]
    assert (paper["model"], paper["pretrained"], paper["dataset"]) == ("ViT-B-32", "openai", "cifar100")
    assert paper["forget"] == spec["forget_classes"] and paper["ratios"] == spec["forget_ratios"]
    assert paper["batch_size"] == hyper["batch_size"] and paper["epochs"] == hyper["epochs"]
    assert paper["grid"]["lr"][1] == hyper["lr"]["cifar100"] and "steps" not in paper
    assert paper["task"] == dict(retain_per_class=None, eval_per_class=None, train_eval=True)
    assert paper["epochs_over"] == hyper["epochs_over"] == "retain"
    assert paper["paper_protocol"] == {"method": "cliperase_paper", "grid": {"lr": [hyper["lr"]["cifar100"]]}}
    assert paper["methods"] == ["ft", "ga", "ga_pairs", "graddiff", "neggrad_plus", "random_labels", "cliperase"]
    other = paper_c.paper_c_settings("paper", model="RN50", pretrained="random", dataset="cifar10")
    assert (other["model"], other["pretrained"], other["dataset"]) == ("RN50", "random", "cifar10")
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        paper_c.paper_c_settings("paper", dataset="nope")


def test_retrieval_settings_follow_paper_c_json():
    spec = configs.load_paper_config("paper_c")
    hyper, own = spec["hyperparameters"], spec["retrieval"]
    retrieval = paper_c.paper_c_settings("paper")["retrieval"]
    assert retrieval["lr"] == hyper["lr"]["flickr30k"] == 1e-8 and retrieval["batch_size"] == 16
    assert retrieval["epochs"] == hyper["epochs"] and retrieval["steps"] is None
    assert (retrieval["dataset"], retrieval["concept"], retrieval["method"]) == ("flickr30k", own["concept"],
                                                                                 "cliperase")
    assert retrieval["eval_retain_images"] == own["eval_retain_images"] and retrieval["max_forget_train"] is None
    assert retrieval["evaluations"] == harness.EVALUATIONS
    quick = paper_c.paper_c_settings("paper", quick=True, retrieval_concept=" bicycle ")["retrieval"]
    assert quick["concept"] == "bicycle" and quick["steps"] == 4 and quick["lr"] == 1e-8
    assert paper_c.paper_c_settings("mini")["retrieval"] is None  # the mini captions are class names


def test_load_paper_c_tasks_on_the_mini_world(monkeypatch):
    train, test = tiny_world(seed=0), tiny_world(n_per_class=6, seed=1)
    monkeypatch.setattr(paper_c.data, "load_mini_world", lambda data_dir=None: (train, test))
    monkeypatch.setattr(paper_c.models, "load_clip", lambda m, p, device="cpu": ("model", "pre", "tok"))
    settings = paper_c.paper_c_settings("mini", seeds="0,1", forget_classes="bag,coat")
    world = paper_c.load_paper_c_tasks(settings, device="cpu")
    assert (world.model, world.preprocess, world.tokenizer, world.train, world.test) == ("model", "pre", "tok",
                                                                                         train, test)
    assert list(world.tasks) == ["bag", "coat"] and [t.seed for t in world.tasks["bag"]] == [harness.SELECTION_SEED,
                                                                                             0, 1]
    assert all(t.kind == "forget-class" and t.target == "bag" for t in world.tasks["bag"])
    assert world.templates == data.FASHION_MNIST_TEMPLATES and world.n_seen == models.MINI_SEEN_IMAGES
    assert world.steps == 30
    expected = harness.build_task(train, test, kind="forget-class", target="coat", seed=1, n_seen=world.n_seen,
                                  templates=world.templates, retain_per_class=300, eval_per_class=300)
    assert torch.equal(world.tasks["coat"][2].forget_train, expected.forget_train)
    assert torch.equal(world.tasks["coat"][2].retain_train, expected.retain_train)


def test_paper_steps_follow_epochs(monkeypatch):
    train, test = tiny_world(seed=0), tiny_world(n_per_class=6, seed=1)
    monkeypatch.setattr(paper_c.data, "load_dataset", lambda name, split, **kw: train if split == "train" else test)
    monkeypatch.setattr(paper_c, "CachedImages", lambda ds, **kw: ds)
    monkeypatch.setattr(paper_c.models, "load_clip", lambda m, p, device="cpu": ("model", "pre", "tok"))
    settings = paper_c.paper_c_settings("paper", forget_classes="coat", seeds="3")
    settings.update(batch_size=4, epochs=2)
    world = paper_c.load_paper_c_tasks(settings)
    n_retain = len(world.tasks["coat"][1].retain_train)
    assert world.steps == 2 * -(-n_retain // 4)  # epochs x ceil(retain images / batch size): the paper's reading
    settings.update(epochs_over="forget")
    n_forget = len(world.tasks["coat"][1].forget_train)
    assert paper_c.load_paper_c_tasks(settings).steps == 2 * -(-n_forget // 4)  # the other reading
    assert world.templates == ("a photo of a {}.",) and world.n_seen is None
