"""benchmarks/robustness.py's guard against resuming a results file of the earlier selection protocol."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from clipunlearn import models
from clipunlearn.results import load_records, make_record, save_records

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness.py"


def load_script():
    spec = importlib.util.spec_from_file_location("robustness_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(grid=True, selected=True):
    config = {"forget_class": "sneaker", "seed": 0, **({"grid": {"lr": [1e-4]}} if grid else {}),
              **({"selected_on_seed": 100} if selected else {})}
    return make_record(method="ga", task="forget-class", config=config, metrics={"forget_acc": 0.0})


def test_only_a_file_with_runs_of_the_earlier_protocol_is_set_aside(tmp_path):
    script, said = load_script(), []
    attacks = make_record(method="ga", task="attacks", config={"run_task": "forget-class", "seed": 0}, metrics={})
    cases = {"attacks.json": [attacks], "current.json": [run(), attacks], "earlier.json": [run(selected=False), run()]}
    for name, records in cases.items():
        save_records(tmp_path / name, records)
    assert not script.set_aside_earlier_protocol(tmp_path / "attacks.json", log=said.append)  # nothing to judge
    assert not script.set_aside_earlier_protocol(tmp_path / "current.json", log=said.append)
    assert script.set_aside_earlier_protocol(tmp_path / "earlier.json", log=said.append)
    assert not (tmp_path / "earlier.json").exists() and len(load_records(tmp_path / "earlier.json.pre-protocol")) == 2
    assert (tmp_path / "attacks.json").exists() and (tmp_path / "current.json").exists()
    assert said == ["earlier.json: written under the earlier selection protocol; kept as earlier.json.pre-protocol, "
                    "the notebook starts afresh"]
    assert not script.set_aside_earlier_protocol(tmp_path / "missing.json", log=said.append)


def test_evaluate_only_takes_each_retrained_model_as_recorded_and_trains_none(tmp_path, monkeypatch):
    script, asked = load_script(), []
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"shipped")

    def get_mini_clip(name, *, seed=None, progress=True):
        asked.append(seed)
        return None, None, None, {"config": {"seed": 0 if seed is None else seed}, "path": str(weights),
                                  "train_seconds": 1.0, "eval": {"acc": 0.9}}
    monkeypatch.setattr(models, "get_mini_clip", get_mini_clip)
    monkeypatch.setattr(models, "mini_clip_cached", lambda name, *, seed: seed == 2)
    out = tmp_path / "robustness.json"
    recorded = {"train_seed": 1, "sha256": "the records' model", "train_seconds": 241.3, "zero_shot": {"acc": 0.885}}
    out.write_text(json.dumps({"model_info": {"seed1": recorded}}))
    info = script.collect_model_info([1, 2], evaluate_only=True, out=out)
    assert info["seed1"] == recorded and asked == [None, 2]  # seed 1 as recorded, seed 2 from the cache
    assert info["shipped"]["train_seed"] == 0 and info["seed2"]["train_seed"] == 2
    with pytest.raises(SystemExit, match="seed3: no mini model of training seed 3 here and none recorded"):
        script.collect_model_info([3], evaluate_only=True, out=out)
    asked.clear()
    script.collect_model_info([1], evaluate_only=False, out=out)  # a full run trains (or loads) its own models
    assert asked == [None, 1]
