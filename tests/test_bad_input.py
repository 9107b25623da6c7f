"""Bad input gets a clear error that says what to do, and nothing is lost.

Settings out of range, a diverging run, a truncated results file and a truncated checkpoint.
"""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch

from clipunlearn import checkpoints, harness, models, unlearning
from clipunlearn.harness import ResultStore
from clipunlearn.results import ResultsFileError, load_records, make_record, save_records

from .test_experiment import tiny_world
from .test_mutation_kills_unlearning import Toy, ones, toy_loss  # noqa: F401  (toy_loss: a fixture)


@pytest.fixture
def task():
    train, test = tiny_world(seed=0), tiny_world(n_per_class=6, seed=1)
    return harness.build_task(train, test, kind="forget-class", target="bag", seed=0, eval_per_class=4)


# --------------------------------------------------------------------------- #
# settings out of range
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=-3), "steps must be a whole number >= 1, got -3"),
    (dict(steps=0), "steps must be a whole number >= 1, got 0"),
    (dict(steps=2.5), "steps must be a whole number >= 1, got 2.5"),
    (dict(lr=0.0), "lr must be a positive finite number, got 0.0"),
    (dict(lr=float("nan")), "lr must be a positive finite number, got nan"),
    (dict(lr=-1e-4), "lr must be a positive finite number, got -0.0001"),
    (dict(batch_size=0), "batch_size must be a whole number >= 1, got 0"),
    (dict(eval_every=-1), "eval_every must be a whole number >= 1, got -1"),
])
def test_run_method_refuses_settings_out_of_range_before_any_work(tiny_clip, task, kwargs, message):
    settings = dict(lr=1e-4, steps=2, batch_size=4) | kwargs
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        harness.run_method("ga", task, model=tiny_clip.model, tokenizer=tiny_clip.tokenizer, **settings)


def test_every_problem_is_named_at_once():
    with pytest.raises(ValueError, match=r"^lr must be .*, got inf; epochs must be a whole number >= 1, got 0; "
                                         r"max_steps must be a whole number >= 0, got True$"):
        unlearning.check_run_settings(lr=float("inf"), epochs=0, max_steps=True)
    unlearning.check_run_settings(lr=1, epochs=1, max_steps=0, steps=1, batch_size=1, eval_every=1)  # the bounds
    with pytest.raises(ValueError, match="^max_steps must be a whole number >= 0, got -1$"):
        unlearning.check_run_settings(max_steps=-1)


def test_unlearn_refuses_a_bad_lr(toy_loss):
    with pytest.raises(ValueError, match="^lr must be a positive finite number, got -1.0$"):
        unlearning.unlearn(Toy(), method="toy", forget_loader=ones(3), lr=-1.0, progress=False)


# --------------------------------------------------------------------------- #
# a diverging run
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("method", ["ga", "cliperase"])
def test_a_diverging_run_is_recorded_as_failed_and_keeps_finite_weights(tiny_clip, task, method):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model, record = harness.run_method(method, task, model=tiny_clip.model, tokenizer=tiny_clip.tokenizer,
                                           lr=1e6, steps=6)
    m = record["metrics"]
    assert m["failed"] is True and m["stopped_early"].startswith("non-finite")
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the last good state, never a diverged one
    assert 0.0 <= m["forget_acc"] <= 1.0 and 0.0 <= m["mia"] <= 1.0  # the test metrics of that state
    json.dumps(record)  # the record is written like any other


def test_non_finite_weights_at_an_evaluation_stop_the_run(toy_loss):
    model = Toy()
    calls = []
    # the 4th step's gradient is NaN while its loss is finite: the weights are NaN at step 4, an evaluation point
    model.w.register_hook(lambda g: g * float("nan") if len(toy_loss.calls) >= 4 else g)

    def eval_fn(m):
        calls.append(m.w.detach().tolist())
        return {"score": float(len(calls))}

    with pytest.warns(UserWarning, match="^toy: non-finite weights at step 4; restoring the last good state$"):
        result = unlearning.unlearn(model, method="toy", forget_loader=ones(8), lr=0.1, eval_fn=eval_fn, eval_every=2,
                                    select_fn=lambda e: e["score"], progress=False)
    assert result.failed and result.stopped_early == "non-finite weights at step 4"
    assert torch.isfinite(model.w).all() and result.best_step == 2 and len(calls) == 1  # never evaluated at step 4
    assert model.w.detach().tolist() == calls[0]  # the state evaluated at step 2


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "both"])
def test_the_weight_check_finds_one_non_finite_value_among_many(bad):
    net = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.Linear(200, 3))
    assert unlearning._finite_weights(net)
    with torch.no_grad():
        if bad == "both":  # +inf and -inf in one tensor: their sum is NaN, still caught
            net[0].weight[5, 7], net[0].weight[100, 2] = float("inf"), -float("inf")
        else:
            net[1].bias[2] = bad
    assert not unlearning._finite_weights(net)
    half = torch.nn.Linear(4, 4).half()
    with torch.no_grad():
        half.weight.fill_(6e4)  # fp16 values whose fp16 sum would overflow: summed in fp32, still finite
    assert unlearning._finite_weights(half)
    assert unlearning._finite_weights(torch.nn.ReLU())  # no parameters: nothing diverged


def test_non_finite_outputs_at_an_evaluation_stop_the_run(toy_loss):
    from clipunlearn.metrics import NonFiniteOutputError

    def eval_fn(m):
        if len(result_steps) == 1:
            raise NonFiniteOutputError("outputs not finite")
        result_steps.append(1)
        return {"score": 1.0}

    result_steps = []
    with pytest.warns(UserWarning, match="^toy: non-finite outputs at step 4; restoring the last good state$"):
        result = unlearning.unlearn(Toy(), method="toy", forget_loader=ones(8), lr=0.1, eval_fn=eval_fn, eval_every=2,
                                    select_fn=lambda e: e["score"], progress=False)
    assert result.failed and result.stopped_early == "non-finite outputs at step 4" and result.best_step == 2


# --------------------------------------------------------------------------- #
# a truncated results file
# --------------------------------------------------------------------------- #
def write_truncated(path):
    save_records(path, [make_record(method="ga", task="forget-class", config={"seed": 0}, metrics={"acc": 0.5})])
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    return path.read_bytes()


def test_a_truncated_results_file_is_named_with_the_way_out(tmp_path):
    path = tmp_path / "10_cliperase.json"
    write_truncated(path)
    with pytest.raises(ResultsFileError, match=re.escape(f"{path} is not a results file (JSONDecodeError")) as err:
        load_records(path)
    assert "git checkout -- 10_cliperase.json" in str(err.value) and "./run_all.sh --only 10_cliperase" in str(err.value)
    (tmp_path / "other.json").write_text('{"records": {"a": 1}}')
    with pytest.raises(ResultsFileError, match="'records' is a dict, not a list"):
        load_records(tmp_path / "other.json")


def test_resuming_from_a_truncated_file_raises_and_leaves_it_alone(tmp_path):
    path = tmp_path / "r.json"
    before = write_truncated(path)
    with pytest.raises(ResultsFileError):
        ResultStore(path, resume=True)
    assert path.read_bytes() == before


def test_a_fresh_run_keeps_an_unreadable_file_aside_and_says_so(tmp_path):
    path = tmp_path / "r.json"
    before = write_truncated(path)
    with pytest.warns(UserWarning, match="kept as .*r.json.unreadable, and this run starts .*r.json afresh"):
        store = ResultStore(path, resume=False)
    assert (tmp_path / "r.json.unreadable").read_bytes() == before and not path.exists()
    store.add(make_record(method="ga", task="forget-class", config={"seed": 0}, metrics={"acc": 0.5}))
    assert len(load_records(path)) == 1


# --------------------------------------------------------------------------- #
# a truncated checkpoint
# --------------------------------------------------------------------------- #
def test_a_truncated_checkpoint_is_named_with_how_to_restore_it(tmp_path):
    path = tmp_path / "state.pt"
    checkpoints.save_checkpoint({"w": torch.ones(100)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(checkpoints.CheckpointError, match="^" + re.escape(f"{path} is truncated or corrupted (")) as err:
        checkpoints.load_checkpoint(path)
    assert str(err.value).endswith("; delete it and make it again")


def test_a_corrupted_cached_mini_model_says_which_folder_to_delete(tmp_path, monkeypatch):
    settings = {**models.MINI_TRAINING, "seed": 5}
    folder = tmp_path / "models" / models._mini_key("mini", settings)
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"not a checkpoint")
    (folder / "info.json").write_text("{}")
    monkeypatch.setattr(models, "train_mini_clip", lambda *a, **k: pytest.fail("retrained without a word"))
    with pytest.raises(checkpoints.CheckpointError,
                       match=re.escape(f"delete the folder {folder} and the model is trained again on next use")):
        models.get_mini_clip(cache_dir=tmp_path, seed=5, progress=False)


def test_a_corrupted_unlearning_checkpoint_says_how_to_start_afresh(toy_loss, tmp_path):
    (tmp_path / "state.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(checkpoints.CheckpointError, match=r"pass resume='restart'\) to start the run afresh$"):
        unlearning.unlearn(Toy(), method="toy", forget_loader=ones(3), lr=0.1, checkpoint_dir=tmp_path,
                           progress=False)
