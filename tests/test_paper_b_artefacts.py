"""Paper B's authors' artefacts (papers.authors_artefacts, paper_b.load_authors_artefacts): tiny files written
here in the authors' exact formats, read back; the paper path uses them (run_synthetic_benchmark)."""

import math
import os
import pickle
import types

import numpy as np
import pytest
import torch

from clipunlearn.methods import lipschitz
from clipunlearn.papers import authors_artefacts, paper_b

IMNET_MEAN, IMNET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def authors_pickle(obj) -> bytes:
    """``obj`` pickled as the authors' numpy-1 ``results_zs_all_*.pkl`` is: protocol 4, ``numpy.core.multiarray``."""
    data = pickle.dumps(obj, protocol=4)
    old, new = b"\x8c\x16numpy._core.multiarray", b"\x8c\x15numpy.core.multiarray"
    n = data.count(old)
    data = data.replace(old, new)
    assert data[2:3] == b"\x95"  # one FRAME: shorten its length by what the rename removed
    return data[:3] + (int.from_bytes(data[3:11], "little") - n).to_bytes(8, "little") + data[11:]


def zero_shot_entry(cls_acc, no_cls, full):
    return {"cls_acc_test": np.float64(cls_acc), "no_cls_acc": np.float64(no_cls), "acc_train": np.float64(0.4),
            "full_acc": full}


ZERO_SHOT = {"StanfordDogs": {"Chihuahua": zero_shot_entry(0.3, 0.52, 0.5168),
                              "toy poodle": zero_shot_entry(0.57, 0.51, 0.5168)},
             "StanfordCars": {"2000 AM General Hummer SUV": zero_shot_entry(0.66, 0.55, 0.5576)},
             "Caltech101": {"face": zero_shot_entry(0.62, 0.87, 0.8572),
                            "crocodile_head": zero_shot_entry(0.25, 0.86, 0.8572)},
             "OxfordFlowers": {"pink primrose": zero_shot_entry(0.41, 0.66, 0.6606)}}


@pytest.fixture
def authors_dir(tmp_path):
    """A checkout of the authors' repository after ``datagen.sh RN``: one class's set and the RN50 zero-shot pickle."""
    folder = tmp_path / "authors" / "generated_RN50" / "StanfordDogs"
    folder.mkdir(parents=True)
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(images.detach(), folder / "toy poodle.pt")  # clip_forget_imagegen.generate_images
    (tmp_path / "authors" / "generated").mkdir()
    (tmp_path / "authors" / "generated" / "results_zs_all_RN50.pkl").write_bytes(authors_pickle(ZERO_SHOT))
    return tmp_path / "authors"


def test_zero_shot_pickle_in_the_authors_format(authors_dir):
    path = authors_dir / "generated" / "results_zs_all_RN50.pkl"
    assert b"numpy.core.multiarray" in path.read_bytes()  # the names numpy 1 wrote, as in their file
    loaded = authors_artefacts.load_authors_zero_shot(path)
    assert list(loaded) == list(ZERO_SHOT) and list(loaded["Caltech101"]) == ["face", "crocodile_head"]
    entry = loaded["StanfordDogs"]["toy poodle"]
    assert entry == {"cls_acc_test": 0.57, "no_cls_acc": 0.51, "acc_train": 0.4, "full_acc": 0.5168}
    assert all(type(v) is float for v in entry.values())
    # numpy 2's own names load too
    path.write_bytes(pickle.dumps(ZERO_SHOT, protocol=4))
    assert authors_artefacts.load_authors_zero_shot(path)["StanfordDogs"]["toy poodle"] == entry


class Payload:
    def __reduce__(self):
        return os.system, ("echo should-never-run",)


def test_a_pickle_naming_any_other_global_is_refused_with_the_file_name(tmp_path, capfd):
    path = tmp_path / "results_zs_all_RN50.pkl"
    path.write_bytes(pickle.dumps({"StanfordDogs": {"x": Payload()}}, protocol=4))
    with pytest.raises(ValueError, match=r"results_zs_all_RN50.pkl is not an authors' zero-shot pickle that is safe "
                                         r"to read: global (posix|nt|os)\.system is not allowed"):
        authors_artefacts.load_authors_zero_shot(path)
    assert "should-never-run" not in capfd.readouterr().out
    path.write_bytes(pickle.dumps([1, 2], protocol=4))
    with pytest.raises(ValueError, match="expected .Dataset: .class"):
        authors_artefacts.load_authors_zero_shot(path)
    with pytest.raises(FileNotFoundError, match="ships with the authors' repository"):
        authors_artefacts.load_authors_zero_shot(tmp_path / "absent.pkl")


def test_reference_uses_their_keys_and_their_first_class_full_accuracy():
    others = {"stanford-cars": "StanfordCars", "caltech101": "Caltech101", "flowers102": "OxfordFlowers"}
    ref = authors_artefacts.build_authors_reference(ZERO_SHOT, dataset="StanfordDogs", classname="toy poodle",
                                                    others=others)
    assert ref == {"forget_acc": 0.57, "retain_acc": 0.51, "other_acc/stanford-cars": 0.5576,
                   "other_acc/caltech101": 0.8572, "other_acc/flowers102": 0.6606}
    # the pickle keeps CoOp's underscores; our class names have spaces
    ref = authors_artefacts.build_authors_reference(ZERO_SHOT, dataset="Caltech101", classname="crocodile head",
                                                    others={})
    assert ref == {"forget_acc": 0.25, "retain_acc": 0.86}
    assert authors_artefacts.build_authors_reference(ZERO_SHOT, dataset="StanfordDogs", classname="Pekinese",
                                                     others={}) is None
    assert authors_artefacts.build_authors_reference(ZERO_SHOT, dataset="StanfordDogs", classname="toy poodle",
                                                     others={"pacs": "pacs"}) is None


def test_synthetic_set_in_the_authors_format_is_mapped_as_their_forget_dataset(authors_dir):
    path = authors_dir / "generated_RN50" / "StanfordDogs" / "toy poodle.pt"
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    syn = authors_artefacts.load_authors_synthetic(path, target=1, classnames=["Chihuahua", "toy poodle"], mean=mean,
                                                   std=std, image_size=32)
    raw = torch.load(path, weights_only=True).numpy().astype(np.float64)
    for i in range(len(raw)):  # their deprocess (x * std + mean, min-max over the image), then CLIP's Normalize
        y = raw[i] * IMNET_STD[:, None, None] + IMNET_MEAN[:, None, None]
        y = (y - y.min()) / (y.max() - y.min())
        expected = (y - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
        assert np.allclose(syn.images[i].numpy(), expected, atol=1e-5)
    assert len(syn) == 5 and syn.targets.tolist() == [1] * 5 and syn.classnames == ["Chihuahua", "toy poodle"]
    assert bool(syn.reached.all()) and syn.steps_taken.tolist() == [-1] * 5 and math.isnan(float(syn.probs[0]))
    with pytest.raises(ValueError, match=r"toy poodle.pt holds \(32, 32\) images but the model takes 224 px"):
        authors_artefacts.load_authors_synthetic(path, target=1, classnames=["a", "b"], mean=mean, std=std,
                                                 image_size=224)
    torch.save({"images": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"expected one tensor \[N, 3, H, W\] .* got dict"):
        authors_artefacts.load_authors_synthetic(path, target=0, classnames=["a"], mean=mean, std=std)
    with pytest.raises(FileNotFoundError, match="run the authors' datagen.sh"):
        authors_artefacts.load_authors_synthetic(authors_dir / "absent.pt", target=0, classnames=["a"], mean=mean,
                                                 std=std)


def fake_tasks(classes, classnames):
    return {c: [types.SimpleNamespace(classnames=list(classnames), target=c, seed=s) for s in (0, 1)] for c in classes}


def test_load_authors_artefacts_for_a_backbone_and_dataset(authors_dir, tiny_resnet_clip):
    model = tiny_resnet_clip.model
    tasks = fake_tasks(["toy poodle", "Pekinese"], ["Pekinese", "toy poodle", "Chihuahua"])
    out = paper_b.load_authors_artefacts(authors_dir, backbone="RN50", dataset="stanford-dogs", tasks=tasks,
                                         others=["stanford-cars"], model=model)
    assert list(out["sets"]) == ["toy poodle"] and out["sets"]["toy poodle"].targets.tolist() == [1] * 5
    assert out["files"]["toy poodle"].endswith("generated_RN50/StanfordDogs/toy poodle.pt")
    assert out["references"] == {"toy poodle": {"forget_acc": 0.57, "retain_acc": 0.51,
                                                "other_acc/stanford-cars": 0.5576}}  # no Pekinese in the pickle
    empty = {"sets": {}, "files": {}, "references": {}}
    assert paper_b.load_authors_artefacts("", backbone="RN50", dataset="stanford-dogs", tasks=tasks,
                                          model=model) == empty  # default: not used
    assert paper_b.load_authors_artefacts(authors_dir, backbone="tiny-rn", dataset="stanford-dogs", tasks=tasks,
                                          model=model) == empty  # a backbone the authors did not run
    with pytest.raises(FileNotFoundError, match="clone https://github.com/akres001/Zero-Shot-Class-Unlearning"):
        paper_b.load_authors_artefacts(authors_dir / "nope", backbone="RN50", dataset="stanford-dogs", tasks=tasks,
                                       model=model)


def test_the_paper_path_forgets_their_set_and_compares_with_their_numbers(monkeypatch, capsys):
    """run_synthetic_benchmark with the authors' artefacts: their set is the forget set (ours held out), their
    stored accuracies the avg_gain reference (divided by 5), printed beside ours; without them, ours."""
    ours = {"forget_acc": 0.55, "retain_acc": 0.5, "other_acc/stanford-cars": 0.56}
    theirs = {"forget_acc": 0.57, "retain_acc": 0.51, "other_acc/stanford-cars": 0.5576}
    calls = {"generate": [], "run": []}
    monkeypatch.setattr(paper_b.harness, "record_original", lambda tasks, **kw: {t: {"metrics": ours} for t in tasks})
    monkeypatch.setattr(paper_b.harness, "reference_fn", lambda *a, **kw: None)

    def fake_generate(model, task, *, n_train, n_val, **kw):
        calls["generate"].append((n_train, n_val))
        return f"ours-forget-{task.seed}", f"ours-val-{task.seed}", {"reached": n_train + n_val}

    def fake_run(task, **kw):
        calls["run"].append(kw)
        return None, {}

    def fake_selected(name, seeded, *, run_fn, **kw):
        for task in seeded:
            run_fn(task, lr=5e-5)

    monkeypatch.setattr(paper_b, "generate_task_synthetic", fake_generate)
    monkeypatch.setattr(paper_b, "run_lipschitz", fake_run)
    monkeypatch.setattr(paper_b.harness, "run_selected", fake_selected)
    tasks = {"toy poodle": [types.SimpleNamespace(target="toy poodle", seed=0, forget_train=torch.arange(4),
                                                  train="REAL-TRAIN")]}
    authors = {"sets": {"toy poodle": "THEIR-SET"}, "files": {"toy poodle": "/a/t.pt"},
               "references": {"toy poodle": theirs}}
    sets = paper_b.run_synthetic_benchmark(tasks, model=None, tokenizer=None, generation={}, forgetting={}, grid={},
                                           n_train=64, n_val=32, n_real=None, store=None, avg_gain=True,
                                           authors=authors)
    assert calls["generate"] == [(0, 32)]  # only the held-out images are generated here
    assert sets[("toy poodle", 0)] == ("THEIR-SET", "ours-val-0", {"reached": 32, "authors_forget_set": "/a/t.pt"})
    synthetic, real = calls["run"]
    assert synthetic["forget_data"] == "THEIR-SET" and synthetic["val_forget"] == ("ours-val-0", None)
    for kw in (synthetic, real):
        assert kw["reference"] == theirs and kw["gain_divisor"] == lipschitz.AUTHORS_GAIN_DIVISOR == 5
        assert kw["config"]["avg_gain_reference"] == "authors"
    printed = capsys.readouterr().out
    assert "toy poodle: original zero-shot accuracy, ours and the authors'" in printed
    assert "forget_acc" in printed and "ours 0.5500  authors 0.5700  difference -0.0200" in printed
    # without the authors' artefacts: our own sets and our original model as the reference
    calls["generate"].clear(), calls["run"].clear()
    paper_b.run_synthetic_benchmark(tasks, model=None, tokenizer=None, generation={}, forgetting={}, grid={},
                                    n_train=64, n_val=32, n_real=None, store=None, avg_gain=True)
    assert calls["generate"] == [(64, 32)] and calls["run"][0]["forget_data"] == "ours-forget-0"
    assert calls["run"][0]["reference"] == ours and calls["run"][0]["config"]["avg_gain_reference"] == "original"
    assert "authors" not in capsys.readouterr().out
