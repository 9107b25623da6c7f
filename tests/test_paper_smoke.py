"""The paper-profile smoke test's own logic (scripts/paper_smoke.py); the run itself is step 4 of run_tests.sh."""

import importlib.util
import math

import pytest

from clipunlearn import data, harness, models
from clipunlearn.papers import paper_c


@pytest.fixture(scope="module")
def smoke(repo_root):
    spec = importlib.util.spec_from_file_location("paper_smoke", repo_root / "scripts" / "paper_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parameters_are_the_declared_standard_ones_then_the_notebooks_own(smoke, repo_root, tmp_path):
    chosen = smoke.select_parameters(["PROFILE", "MODEL", "DATA_DIR"], {"PROFILE": "paper", "MODEL": "tiny-vit",
                                                                        "WORKERS": 0, "DATA_DIR": "/d"},
                                     {"MODEL": "tiny-rn", "EXTRA": 1, "skip": ""})
    assert chosen == {"PROFILE": "paper", "MODEL": "tiny-rn", "DATA_DIR": "/d", "EXTRA": 1}
    nb20 = smoke.notebook_parameters(repo_root / "notebooks" / "20_synthetic_lipschitz.ipynb", data_dir=tmp_path)
    assert nb20["PROFILE"] == "paper" and nb20["QUICK"] is True and nb20["PRETRAINED"] == "random"
    assert nb20["MODEL"] == "tiny-rn" and nb20["DATA_DIR"] == str(tmp_path)  # ResNet here, ViT in notebook 10
    nb10 = smoke.notebook_parameters(repo_root / "notebooks" / "10_cliperase.ipynb", data_dir=tmp_path,
                                     extra={"PRECISION": "bf16"})
    assert nb10["MODEL"] == "tiny-vit" and nb10["PRECISION"] == "bf16" and "OTHER_DATASETS" not in nb10
    nb30 = smoke.notebook_parameters(repo_root / "notebooks" / "30_subgroup_forgetting.ipynb", data_dir=tmp_path,
                                     extra={"PRECISION": "bf16"})
    assert "PRECISION" not in nb30  # passed only where the notebook declares it


def test_notebooks_without_a_paper_branch_or_skipped_take_no_part(smoke, tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    cell = nbformat.v4.new_code_cell('PROFILE: str = "mini"\nQUICK: bool = False\nDATA_DIR: str = ""')
    cell.metadata["tags"] = ["parameters"]
    nb.cells.append(cell)
    path = tmp_path / "40_x.ipynb"
    nbformat.write(nb, path)
    assert smoke.notebook_parameters(path, data_dir=tmp_path) is None  # no MODEL / PRETRAINED
    cell.source += '\nMODEL: str = ""\nPRETRAINED: str = ""'
    nbformat.write(nb, path)
    assert smoke.notebook_parameters(path, data_dir=tmp_path)["PROFILE"] == "paper"
    nb.metadata["clipunlearn"] = {"paper_smoke": {"skip": "needs captions"}}
    nbformat.write(nb, path)
    assert smoke.notebook_parameters(path, data_dir=tmp_path) is None


def test_check_records_flags_non_finite_and_out_of_range_metrics(smoke):
    good = {"method": "m", "task": "forget-class", "config": {"forget_class": "cat"},
            "metrics": {"forget_acc": 0.0, "retain_acc": 1.0, "other_acc/pacs": 0.5, "mia": 0.5, "score": -0.3,
                        "seconds": 12.0, "per_class_acc": {"cat": 0.2}, "avg_gain": 0.25, "failed": False}}
    assert smoke.check_records([good]) == []
    assert smoke.check_records([]) == ["no records were written"]
    bad = dict(good, metrics={**good["metrics"], "retain_acc": math.nan, "other_acc/pacs": 1.5,
                              "per_class_acc": {"cat": -0.1}, "avg_gain": math.inf})
    problems = smoke.check_records([bad])
    assert len(problems) == 4 and any("retain_acc = nan" in p for p in problems)
    assert any("per_class_acc/cat" in p for p in problems) and any("avg_gain" in p for p in problems)


def test_prepared_data_is_what_the_loaders_read(smoke, tmp_path):
    from PIL import Image

    shared = tmp_path / "shared"
    for folder in ("cifar10-test-2k/cat", "cifar10-test-2k/dog", "pacs-mini/photo/dog", "pacs-mini/sketch/dog"):
        (shared / folder).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(shared / folder / "0.png")
    dest = smoke.prepare_data(shared, tmp_path / "data")
    smoke.prepare_data(shared, tmp_path / "data")  # again: links are replaced, not an error
    for name in ("cifar100", "flowers102", "stanford-cars", "caltech101", "stanford-dogs"):
        ds = data.load_dataset(name, split="test", data_dir=dest)
        assert ds.classnames == ["cat", "dog"] and len(ds) == 2
    pacs = data.load_dataset("pacs", split="all", data_dir=dest, domains=("photo", "sketch"))
    assert pacs.classnames == ["dog"] and pacs.stylenames == ["photo", "sketch"]
    for split, count in smoke.CAPTION_SPLITS.items():  # the tiny Flickr30K of notebook 10's retrieval section
        captions = data.load_caption_dataset("flickr30k", split=split, data_dir=dest)
        forget, retain = data.split_by_concept(captions, concept="dog")
        assert len(captions) == count and len(forget) == smoke.CAPTION_FORGET and len(retain) == count - len(forget)


def test_recalls_are_checked_as_fractions(smoke):
    assert all(smoke.in_unit_range(k) for k in ("forget_i2t_r10", "retain_r1", "val_forget_r10", "forget_t2i_r5"))
    assert not any(smoke.in_unit_range(k) for k in ("steps", "best_step", "score", "seconds", "peak_mem_mb"))
    bad = {"method": "cliperase", "task": "retrieval", "config": {"forget_class": "dog"},
           "metrics": {"forget_i2t_r10": math.nan, "retain_r10": 1.5, "forget_r1": 0.25}}
    assert len(smoke.check_records([bad])) == 2


def test_notebook_10_must_write_its_retrieval_records(smoke):
    records = [{"method": "original", "task": "forget-class", "config": {}, "metrics": {}}]
    assert smoke.missing_tasks(records, "10_cliperase") == [
        "no 'retrieval' records: the section that writes them did not run"]
    assert smoke.missing_tasks(records + [dict(records[0], task="retrieval")], "10_cliperase") == []
    assert smoke.missing_tasks([], "20_synthetic_lipschitz") == []


def test_retrieval_runs_on_a_tiny_caption_folder(smoke, tmp_path):
    """Notebook 10's retrieval section (paper profile, quick): a tiny random-weight CLIP on a tiny Flickr30K."""
    smoke.write_caption_folder(tmp_path / "flickr30k")
    settings = paper_c.paper_c_settings("paper", quick=True, seeds="0", model="tiny-vit", pretrained="random")
    assert settings["retrieval"]["lr"] == 1e-8 and settings["retrieval"]["concept"] == "dog"
    model, preprocess, tokenizer = models.load_clip("tiny-vit", "random")
    store = harness.ResultStore(tmp_path / "10_cliperase.json")
    records = paper_c.run_retrieval(settings, model=model, preprocess=preprocess, tokenizer=tokenizer,
                                    data_dir=tmp_path, store=store)
    assert [(r["method"], r["config"]["seed"]) for r in records] == [("original", None), ("cliperase", 0)]
    assert smoke.check_records(records) == []
    run = records[1]
    assert run["config"]["lr"] == 1e-8 and run["config"]["batch_size"] == 16 and run["config"]["optimizer"] == "Adam"
    assert run["config"]["forget_train_pairs"] == 2 * smoke.CAPTION_FORGET and run["metrics"]["steps"] == 4
    for r in records:
        recalls = [r["metrics"][f"{side}_{d}_r{k}"] for side in ("forget", "retain") for d in ("i2t", "t2i")
                   for k in (1, 5, 10)]
        assert all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in recalls)
    assert not run["metrics"]["failed"] and store.records == records  # saved as they came
    table = paper_c.retrieval_table(records)
    assert list(table.index) == ["original", "cliperase", "cliperase (paper)"]
    assert paper_c.run_retrieval(settings, model=model, preprocess=preprocess, tokenizer=tokenizer,
                                 data_dir=tmp_path, store=store) == records  # resumed from the store
    with pytest.raises(ValueError, match="paper profile only"):
        paper_c.run_retrieval(paper_c.paper_c_settings("mini"), model=model, preprocess=preprocess,
                              tokenizer=tokenizer, data_dir=tmp_path)


def test_missing_shared_data_skips_with_a_message(smoke, tmp_path, capsys):
    assert smoke.main(["--shared-data", str(tmp_path / "absent")]) == 0
    assert "paper smoke test skipped" in capsys.readouterr().out


def test_the_authors_artefact_loaders_read_files_in_their_formats(smoke, tmp_path):
    assert smoke.check_authors_artefacts(tmp_path) == []
    assert (tmp_path / "generated_RN50" / "StanfordDogs" / "toy poodle.pt").is_file()
    assert (tmp_path / "generated" / "results_zs_all_RN50.pkl").is_file()
