"""Notebook 20's settings, generation and task loading (paper_b.paper_b_settings / paper_b_generation /
load_paper_b_tasks)."""

import copy
import json

import pytest
import torch

from clipunlearn import configs, data
from clipunlearn.methods import lipschitz
from clipunlearn.papers import paper_b


def settings(profile="mini", **kwargs):
    return paper_b.paper_b_settings(profile, **kwargs)


# --------------------------------------------------------------------------- #
# paper_b_settings
# --------------------------------------------------------------------------- #
def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown profile 'full'; valid profiles: mini, paper"):
        settings("full")


def test_mini_settings_come_from_the_shared_mini_settings():
    mini, shared = settings("mini"), configs.mini_settings()
    assert mini["generation"] == shared["lipschitz"]["generation"]
    assert mini["forgetting"] == shared["lipschitz"]["forgetting"]
    assert mini["grid"] == shared["grids"]["lipschitz_synthetic"]
    assert (mini["n_train"], mini["n_val"]) == (shared["lipschitz"]["n_train"], shared["lipschitz"]["n_val"])
    assert mini["backbones"] == {"mini": None} and mini["others"] == {} and mini["seeds"] == [0, 1, 2]
    assert mini["forget"] == {"fashion-mnist": ["sneaker", "shirt", "trouser"]}


def test_paper_settings_are_read_from_paper_b_json(monkeypatch):
    cfg = configs.load_paper_config("paper_b")
    paper = settings("paper")
    assert paper["forget"] == cfg["forget_classes"] and paper["backbones"] == cfg["backbones"]
    assert paper["generation"]["steps"] == cfg["generation"]["steps"]
    assert paper["generation"]["stop_logit_scale"] == cfg["generation"]["logit_scale"]
    assert paper["forgetting"]["betas"] == tuple(cfg["forgetting"]["betas"])
    assert paper["forgetting"]["caption_templates"] == (cfg["loss_caption"],)
    assert paper["n_train"] == cfg["generation"]["n_per_class"] and cfg["forgetting"]["lr"] in paper["grid"]["lr"]
    assert {k: paper["forgetting"][k] for k in lipschitz.AUTHORS_OPTIONS} == lipschitz.AUTHORS_OPTIONS
    assert paper["others"]["stanford-dogs"] == ["stanford-cars", "caltech101", "flowers102"]

    # an edited config flows through: the values are read, not copied into the code
    def edited(name):
        out = configs.load_paper_config(name)
        out["generation"]["steps"], out["forgetting"]["n_samples"] = 1234, 7
        out["forget_classes"] = {"stanford-dogs": ["beagle"]}
        return out

    monkeypatch.setattr(paper_b, "load_paper_config", edited)
    changed = settings("paper")
    assert changed["generation"]["steps"] == 1234 and changed["forgetting"]["n_samples"] == 7
    assert changed["forget"] == {"stanford-dogs": ["beagle"]} and changed["others"] == {"stanford-dogs": []}


@pytest.mark.parametrize("profile", ["mini", "paper"])
def test_quick_shrinks_every_size(profile):
    full, quick = settings(profile), settings(profile, quick=True)
    assert quick["seeds"] == full["seeds"][:1]
    first = next(iter(full["forget"]))
    assert quick["forget"] == {first: full["forget"][first][:1]}
    assert quick["generation"]["steps"] == min(200, full["generation"]["steps"]) < full["generation"]["steps"]
    assert quick["forgetting"]["max_epochs"] < full["forgetting"]["max_epochs"]
    assert quick["forgetting"]["n_samples"] < full["forgetting"]["n_samples"]
    assert quick["grid"]["lr"] == full["grid"]["lr"][1:2]
    assert quick["n_train"] < full["n_train"] and quick["n_val"] < full["n_val"]
    assert quick["task"] == ({"retain_per_class": 5, "eval_per_class": 5, "val_per_class": 5} if profile == "paper"
                             else {"retain_per_class": 50, "eval_per_class": 50})  # paper: bounded in memory too
    assert quick["ablations"] == {"n_samples": [3], "layers": ["all"]}
    if profile == "paper":
        assert quick["generation"]["max_attempts"] < full["generation"]["max_attempts"]


def test_each_call_returns_a_fresh_dict():
    first = settings("mini")
    first["generation"]["steps"] = -1
    first["forget"]["fashion-mnist"].append("bag")
    assert settings("mini")["generation"]["steps"] > 0
    assert settings("mini")["forget"] == {"fashion-mnist": ["sneaker", "shirt", "trouser"]}


def test_overrides():
    assert settings("paper", backbone="RN50")["backbones"] == {"RN50": "openai"}
    assert settings("paper", model="tiny-rn", pretrained="random")["backbones"] == {"tiny-rn": "random"}
    assert settings("mini", seeds=" 3, 4 ")["seeds"] == [3, 4]
    assert settings("paper", precision="bf16")["forgetting"]["precision"] == "bf16"
    one = settings("paper", dataset="stanford-dogs", forget_classes="deer", other_datasets="stanford-cars,pacs")
    assert one["forget"] == {"stanford-dogs": ["deer"]} and one["others"] == {"stanford-dogs": ["stanford-cars", "pacs"]}
    assert settings("mini", forget_classes="bag")["forget"] == {"fashion-mnist": ["bag"]}
    # the paper's classes go to their own datasets; datasets left without a class are not run
    assert settings("paper", forget_classes="minaret,gazania")["forget"] == {"caltech101": ["minaret"],
                                                                            "flowers102": ["gazania"]}


@pytest.mark.parametrize("kwargs, message", [
    (dict(profile="mini", forget_classes="cat"), r"unknown class name\(s\) \['cat'\]; valid: t-shirt, trouser"),
    (dict(profile="paper", forget_classes="cat"), r"unknown forget class\(es\) \['cat'\]; valid: Pekinese"),
    (dict(profile="paper", backbone="RN101"), "unknown backbone 'RN101' for the paper profile; valid: RN50, ViT-B-16"),
    (dict(profile="paper", dataset="imagenet-r"), "unknown dataset 'imagenet-r'; valid: fashion-mnist"),
    (dict(profile="paper", other_datasets="cifar10,nope"), "unknown dataset 'nope'; valid: fashion-mnist"),
    (dict(profile="paper", dataset="cifar10"), "no forget class for cifar10: name them in forget_classes"),
    (dict(profile="mini", model="tiny-rn"), "MODEL is for the paper profile only"),
    (dict(profile="mini", seeds="0,a"), "seeds must be integers"),
    (dict(profile="mini", seeds=" , "), "no seed"),
    (dict(profile="paper", precision="fp16"), "unknown precision 'fp16'; valid: fp32, bf16"),
])
def test_bad_input_says_what_to_do(kwargs, message):
    with pytest.raises(ValueError, match=message):
        settings(**kwargs)


# --------------------------------------------------------------------------- #
# paper_b_generation
# --------------------------------------------------------------------------- #
def test_paper_generation_uses_the_authors_thresholds_and_the_model_size(tiny_resnet_clip):
    model, _ = tiny_resnet_clip
    generation = settings("paper")["generation"]
    gen = paper_b.paper_b_generation(generation, profile="paper", backbone="RN50",
                                       classes=["Pekinese", "tree mallow", "deer"], model=model)
    assert gen["thresholds"] == {"Pekinese": 0.98, "tree mallow": 0.7, "deer": 0.8}  # 0.8: the authors' default
    assert gen["threshold_decay"] == {"Pekinese": 0.0, "tree mallow": 0.0, "deer": generation["threshold_decay"]}
    assert gen["image_size"] == 32 and generation["image_size"] == 224  # the input is not changed
    mini = settings("mini")["generation"]
    same = paper_b.paper_b_generation(mini, profile="mini", backbone="mini", classes=["shirt"], model=model)
    assert same == mini and same is not mini


# --------------------------------------------------------------------------- #
# load_paper_b_tasks
# --------------------------------------------------------------------------- #
@pytest.fixture
def image_folders(tmp_path):
    """``<tmp>/cifar10/{train,test}/{cat,dog,ship}/`` and ``<tmp>/stl10/test/{bird,cat}/``: 4 tiny PNGs each."""
    from PIL import Image

    for name, split, classes in (("cifar10", "train", "cat dog ship"), ("cifar10", "test", "cat dog ship"),
                                 ("stl10", "test", "bird cat")):
        for c in classes.split():
            folder = tmp_path / name / split / c
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), color=(40 * i, 80, 120)).save(folder / f"{i}.png")
    return tmp_path


def load(data_dir, **kwargs):
    kwargs = {**dict(backbones={"tiny-rn": "random"}, forget={"cifar10": ["dog"]}, seeds=[0, 1],
                     others={"cifar10": ["stl10"]}, retain_per_class=None, eval_per_class=None,
                     data_dir=data_dir, workers=0), **kwargs}
    return paper_b.load_paper_b_tasks(**kwargs)


def test_tasks_per_backbone_class_and_seed_with_the_other_datasets(image_folders):
    tasks, worlds = load(image_folders, eval_per_class=2)
    assert list(tasks) == list(worlds) == [("tiny-rn", "cifar10")]
    seeded = tasks[("tiny-rn", "cifar10")]["dog"]
    assert [t.seed for t in seeded] == [0, 1] and all(t.target == "dog" and t.kind == "forget-class" for t in seeded)
    task = seeded[0]
    assert task.classnames == ["cat", "dog", "ship"] and task.templates == data.get_templates("cifar10")
    assert set(task.train.targets[task.forget_train].tolist()) == {1}
    assert 1 not in task.train.targets[task.retain_train].tolist()
    other = task.extra_sets["stl10"]
    assert other["classnames"] == ["bird", "cat"] and other["templates"] == data.get_templates("stl10")
    assert len(other["indices"]) == 4  # eval_per_class=2 images of each of the 2 classes
    assert seeded[1].extra_sets["stl10"]["dataset"] is other["dataset"]  # decoded once, shared
    world = worlds[("tiny-rn", "cifar10")]
    assert isinstance(world["model"], torch.nn.Module) and world["tokenizer"](["a dog"]).shape[0] == 1


def test_unknown_class_lists_the_dataset_classes(image_folders):
    with pytest.raises(ValueError, match=r"unknown forget class\(es\) \['horse'\] of cifar10; valid: cat, dog, ship"):
        load(image_folders, forget={"cifar10": ["horse"]})


def test_missing_data_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="place an ImageFolder export"):
        load(tmp_path)


def test_the_schedule_and_noise_come_from_paper_b_json(monkeypatch, tiny_clip, tiny_resnet_clip):
    """paper_b.json is the one source: a changed value there changes the code's schedule and generation."""
    real = paper_b.load_paper_config("paper_b")
    assert lipschitz.paper_sigma_schedule() == (0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)
    assert lipschitz.paper_k_schedule(tiny_resnet_clip.model)[:3] == [(5, 5), (7, 7), (10, 12)]
    assert lipschitz.paper_k_schedule(tiny_clip.model)[:3] == [(25, 25), (27, 27), (30, 30)]
    changed = copy.deepcopy(real)
    changed["forgetting"]["sigma_schedule"] = [0.2, 0.4]
    changed["forgetting"]["k_start"]["ViT-B-16"] = 3
    changed["forgetting"]["k_offsets"]["ViT-B-16"] = {"image": [0, 1], "text": [0, 4]}
    changed["generation"]["init_std"] = 0.5
    monkeypatch.setattr(lipschitz, "load_paper_config", lambda name: copy.deepcopy(changed))
    monkeypatch.setattr(paper_b, "load_paper_config", lambda name: copy.deepcopy(changed))
    assert lipschitz.paper_sigma_schedule() == (0.2, 0.4)
    assert lipschitz.paper_k_schedule(tiny_clip.model) == [(3, 3), (4, 7)]
    assert paper_b._profile_settings("paper", precision="fp32")["generation"]["init_std"] == 0.5


# --------------------------------------------------------------------------- #
# The authors' split files: found in the project's or the authors' folder, a missing one is an error
# --------------------------------------------------------------------------- #
def write_split(folder, name, images: str, entries: dict):
    """A CoOp-style split file ``folder/name`` over tiny PNGs under ``folder/images``; return the file."""
    from PIL import Image

    for items in entries.values():
        for i, (rel, _, _) in enumerate(items):
            path = folder / images / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), color=(40 * i, 80, 120)).save(path)
    (folder / name).write_text(json.dumps(entries))
    return folder / name


CALTECH = {"train": [[f"{c}/tr{i}.png", k, c] for k, c in enumerate(["crocodile_head", "minaret"]) for i in range(3)],
           "val": [[f"{c}/va.png", k, c] for k, c in enumerate(["crocodile_head", "minaret"])],
           "test": [[f"{c}/te{i}.png", k, c] for k, c in enumerate(["crocodile_head", "minaret"]) for i in range(2)]}


@pytest.mark.parametrize("folder", ["caltech101", "caltech-101"])  # the project's name, the authors'
def test_split_file_is_found_in_the_project_or_the_authors_folder(tmp_path, folder):
    written = write_split(tmp_path / folder, "split_zhou_Caltech101.json", "101_ObjectCategories", CALTECH)
    assert paper_b.find_split_file("caltech101", data_dir=tmp_path) == written
    assert paper_b.find_split_file("caltech101", data_dir=tmp_path, split_fallback=["caltech101"]) is None
    assert paper_b.find_split_file("cifar10", data_dir=tmp_path) is None  # not a dataset with an authors' split


@pytest.mark.parametrize("dataset, file, source", [
    ("caltech101", "split_zhou_Caltech101.json", "CoOp's split_zhou_Caltech101.json"),
    ("flowers102", "split_zhou_OxfordFlowers.json", "CoOp's split_zhou_OxfordFlowers.json"),
    ("stanford-cars", "split_zhou_StanfordCars.json", "CoOp's split_zhou_StanfordCars.json"),
    ("stanford-dogs", "split_alexey_stanford_dogs.json", "akres001/CLIP_fewshot_imo"),
])
def test_a_missing_split_file_is_an_error_that_says_where_to_get_it(tmp_path, dataset, file, source):
    folder = configs.load_paper_config("paper_b")["folders_in_code"][dataset]
    with pytest.raises(FileNotFoundError) as err:
        paper_b.find_split_file(dataset, data_dir=tmp_path)
    message = str(err.value)
    assert file in message and source in message and "split_fallback" in message and "SPLIT_FALLBACK" in message
    assert str(tmp_path / dataset) in message and str(tmp_path / folder) in message


def test_tasks_from_the_authors_folder_and_split_file(tmp_path):
    write_split(tmp_path / "caltech-101", "split_zhou_Caltech101.json", "101_ObjectCategories", CALTECH)
    tasks, _ = load(tmp_path, forget={"caltech101": ["crocodile head"]}, others={}, seeds=[0])
    task = tasks[("tiny-rn", "caltech101")]["crocodile head"][0]
    assert task.classnames == ["crocodile head", "minaret"]  # prompted with a space, as the authors'
    assert len(task.train) == 6 and len(task.test) == 4  # the file's train and test splits, not the whole set
    assert not set(task.train.paths) & set(task.test.paths)  # the MIA's members are never its non-members


def test_a_missing_split_file_stops_the_load_unless_named(image_folders):
    # stanford-dogs has an authors' split file: without it, an error; named in split_fallback, the folder loader
    from PIL import Image

    for c in ("Pekinese", "beagle"):
        (image_folders / "stanford-dogs" / "Images" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), color=(40 * i, 80, 120)).save(image_folders / "stanford-dogs" / "Images" / c /
                                                                    f"{i}.png")
    with pytest.raises(FileNotFoundError, match="split_alexey_stanford_dogs.json not found"):
        load(image_folders, forget={"stanford-dogs": ["Pekinese"]}, others={}, seeds=[0])
    tasks, _ = load(image_folders, forget={"stanford-dogs": ["Pekinese"]}, others={}, seeds=[0],
                    split_fallback="stanford-dogs")
    assert tasks[("tiny-rn", "stanford-dogs")]["Pekinese"][0].classnames == ["Pekinese", "beagle"]
    with pytest.raises(ValueError, match="unknown dataset 'stanford_dogs'; valid: fashion-mnist"):
        load(image_folders, forget={"stanford-dogs": ["Pekinese"]}, seeds=[0], split_fallback=["stanford_dogs"])
