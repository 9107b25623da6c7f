"""Results: JSON records written atomically."""

import json
import math

import pytest
import torch

from clipunlearn import results


def test_records_round_trip(tmp_path):
    rec = results.make_record(method="original", task="zeroshot", config={"model": "mini"},
                              metrics={"acc": torch.tensor(0.5), "nan": math.nan})
    path = results.save_records(tmp_path / "a" / "r.json", [rec])
    loaded = json.loads(path.read_text())
    assert loaded == {"records": [{"method": "original", "task": "zeroshot", "config": {"model": "mini"},
                                   "metrics": {"acc": 0.5, "nan": None}}]}
    assert results.load_records(path, task="zeroshot")[0]["metrics"]["acc"] == 0.5
    assert results.load_records(path, task="other") == []
    frame = results.records_to_frame(results.load_records(path))
    assert frame.loc[0, "model"] == "mini" and frame.loc[0, "acc"] == 0.5


def test_save_rejects_incomplete_records(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        results.save_records(tmp_path / "r.json", [{"method": "x"}])
    assert not (tmp_path / "r.json").exists()


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "r.json"
    results.write_json_atomic(path, {"records": []})
    with pytest.raises(TypeError):
        results.write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"records": []}
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_missing_results_say_which_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="run_all.sh --only 10_x"):
        results.load_records(tmp_path / "10_x.json")


def test_write_atomic_is_the_one_writer(tmp_path):
    path = tmp_path / "state.pt"
    results.save_torch_atomic({"w": torch.arange(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        results.write_atomic(path, broken)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))  # old file kept
    assert list(tmp_path.iterdir()) == [path]  # temp file removed
