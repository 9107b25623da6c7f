"""The archive of reported runs' models (harness/archive.py): what a file keeps, that it gives back the very model,
and that the attack benchmark reads it instead of rebuilding the run."""

from __future__ import annotations

import copy

import pytest
import torch

from clipunlearn import checkpoints, harness
from clipunlearn.harness import archive as arch
from clipunlearn.papers import attacks_bench
from clipunlearn.results import make_record

from .test_attacks import settings, task  # noqa: F401  (the tiny task fixture)


def base_state():
    return {"emb": torch.zeros(10, 3), "w": torch.ones(4, 2), "b": torch.zeros(2), "n": torch.tensor(3)}


def test_a_delta_keeps_only_changed_tensors_and_of_a_matrix_only_the_changed_rows():
    base = base_state()
    state = {k: v.clone() for k, v in base.items()}
    state["emb"][[2, 7]] = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, -1.0]])  # 2 of 10 rows: rows kept
    state["w"][[0, 3], 1] = 5.0  # 2 of 4 rows, not fewer than half: the whole tensor
    state["b"][1] = float("nan")  # a NaN differs from everything, itself included
    delta = checkpoints.diff_state(state, base)
    assert set(delta["full"]) == {"w", "b"} and set(delta["rows"]) == {"emb"}
    idx, rows = delta["rows"]["emb"]
    assert idx.tolist() == [2, 7] and rows.tolist() == [[1.0, 2.0, 3.0], [0.0, 0.0, -1.0]]
    state["w"][3, 1] = 1.0  # now 1 of 4 rows changed: kept as a row
    assert checkpoints.diff_state(state, base)["rows"]["w"][0].tolist() == [0]
    back = checkpoints.apply_state_delta(base, checkpoints.diff_state(state, base))
    assert all(torch.equal(back[k], state[k]) or (torch.isnan(state[k]).any() and torch.equal(
        torch.nan_to_num(back[k]), torch.nan_to_num(state[k]))) for k in state)
    assert torch.equal(base["emb"], torch.zeros(10, 3))  # the base is not changed
    with pytest.raises(ValueError, match="not the base's"):
        checkpoints.diff_state({**state, "extra": torch.ones(1)}, base)


def test_the_key_is_the_run_and_not_its_selection_bookkeeping():
    rec = make_record(method="ga", task="forget-class", config={"forget_class": "sneaker", "seed": 1, "lr": 1e-4,
                                                                 "steps": 30}, metrics={})
    same = copy.deepcopy(rec)
    same["config"].update(grid={"lr": [1e-4]}, selected={"lr": 1e-4}, selected_on_seed=100)
    assert arch.archive_key(rec) == arch.archive_key(same)
    for field, value in [("lr", 3e-4), ("seed", 2), ("forget_class", "shirt"), ("synthetic_prior", "bn")]:
        other = copy.deepcopy(rec)
        other["config"][field] = value
        assert arch.archive_key(other) != arch.archive_key(rec), field
    assert arch.archive_key({**rec, "method": "ft"}) != arch.archive_key(rec)
    assert arch.archive_key({**rec, "task": "forget-subgroup"}).startswith("ga-forget-subgroup-")


def test_a_saved_run_comes_back_bit_for_bit_and_only_for_its_own_metrics(tmp_path, tiny_clip):
    base = tiny_clip.model
    store = arch.ModelArchive(base, root=tmp_path)
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        next(tuned.parameters()).add_(0.5)
        tuned.logit_scale.fill_(1.0)
    rec = make_record(method="ga", task="forget-class", config={"forget_class": "bag", "seed": 0, "lr": 1e-3},
                      metrics={"forget_acc": 0.25, "retain_acc": 0.75})
    assert store.load(rec) is None  # nothing kept yet
    path = store.save(tuned, rec)
    assert path.parent.name == store.fingerprint == checkpoints.fingerprint_state(base.state_dict())
    back = store.load(rec)
    assert back is not base and not back.training
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), tuned.state_dict().values()))
    assert not torch.equal(back.logit_scale, base.logit_scale)  # the base is untouched
    moved = copy.deepcopy(rec)
    moved["metrics"]["forget_acc"] = 0.5  # another run with the same identity: not this file's model
    assert store.load(moved) is None
    assert arch.ModelArchive(tuned, root=tmp_path).load(rec) is None  # another starting model: another folder
    assert store.save(tuned, make_record(method="ga", task="forget-class", config={}, metrics={})) is None
    path.write_bytes(path.read_bytes()[:100])  # truncated: warned about, deleted, treated as missing
    with pytest.warns(UserWarning, match=r"truncated or corrupted.*rebuilt instead"):
        assert store.load(rec) is None
    assert not path.exists()


def test_the_reference_hook_keeps_each_measured_run_and_the_attacks_read_it(task, tiny_tokenizer, tiny_clip,  # noqa: F811
                                                                             tmp_path):
    base = tiny_clip.model
    store = arch.ModelArchive(base, root=tmp_path)
    ref = harness.Reference(model=base, record={"metrics": {"forget_acc": 0.0, "retain_acc": 1.0}}, archive=store)
    model, rec = harness.run_method("ga", task, model=base, tokenizer=tiny_tokenizer, lr=1e-3, steps=4, batch_size=8)
    harness.reference_fn({"sandal": ref}, tokenizer=tiny_tokenizer)(model, rec, task)
    assert "gap_retrain" in rec["metrics"] and store.path_for(rec).is_file()
    kept = store.load(rec)
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), model.state_dict().values()))

    def never(*args, **kwargs):
        raise AssertionError("a kept run is not rebuilt")

    fast = settings(tiny_tokenizer)
    fields = {k: v for k, v in vars(fast).items() if k not in ("tokenizer", "device", "seed")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attacks_bench, "regenerate_model", never)
        out = attacks_bench.run_attack_benchmark([rec], {"sandal": [task]}, methods=["ga"], model=base,
                                                 tokenizer=tiny_tokenizer, references={"sandal": ref},
                                                 store=harness.ResultStore(tmp_path / "a.json"), settings=fields,
                                                 attacks=["probe_features"], archive=store)
    ga = next(r for r in out if r["method"] == "ga")
    assert ga["config"]["model_source"] == "archive" and ga["metrics"]["regenerated_matches"]
    store.path_for(rec).unlink()  # not kept: rebuilt from the record, and the same numbers come out
    again = attacks_bench.run_attack_benchmark([rec], {"sandal": [task]}, methods=["ga"], model=base,
                                               tokenizer=tiny_tokenizer, references={"sandal": ref},
                                               store=harness.ResultStore(tmp_path / "b.json"), settings=fields,
                                               attacks=["probe_features"], archive=store)
    rebuilt = next(r for r in again if r["method"] == "ga")
    assert rebuilt["config"]["model_source"] == "rebuilt"
    untimed = [{k: v for k, v in r["metrics"].items() if k != "seconds"} for r in (rebuilt, ga)]
    assert untimed[0] == untimed[1] and rebuilt["metrics"]["seconds"] > 0
