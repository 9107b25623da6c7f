"""The unlearning loop's compiled step (``unlearn(compile=...)``): the eager run's weights, the mode in the settings."""

from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch
from torch._dynamo.utils import counters

from clipunlearn import harness, losses, registry
from clipunlearn.checkpoints import load_checkpoint
from clipunlearn.unlearning import COMPILE_MODES, compile_loss, unlearn

from .test_experiment import tiny_world
from .test_unlearning import loaders

VALID = r"valid: '', 'inductor', 'cudagraphs', 'aot_eager'"
#: The settings keys an eager run writes, as before compiling existed.
EAGER_SETTINGS = {"method", "lr", "weight_decay", "betas", "eps", "loss_kwargs", "epochs", "max_steps", "seed",
                  "trainable"}


def run(model, tokenizer, method="ft", **kwargs):
    """A copy of ``model`` unlearned for 3 steps of the toy world; return it and the result."""
    unlearned = copy.deepcopy(model)
    forget, retain = loaders(tokenizer)
    settings = dict(method=method, forget_loader=forget, retain_loader=retain, max_steps=3, lr=1e-3, progress=False)
    return unlearned, unlearn(unlearned, **settings | kwargs)


def largest_difference(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


@pytest.mark.parametrize("method", ["ft", "cliperase"])
def test_aot_eager_gives_the_eager_weights(tiny_resnet_clip, method):
    model, tokenizer = tiny_resnet_clip
    eager, eager_run = run(model, tokenizer, method)
    torch._dynamo.reset()  # no graphs of an earlier test (a copy of a model reuses them)
    graphs = counters["stats"]["unique_graphs"]
    compiled, compiled_run = run(model, tokenizer, method, compile="aot_eager")  # embedding rows on, as by default
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo did compile graphs
    assert largest_difference(eager, compiled) < 1e-5
    assert largest_difference(compiled, model) > 1e-4  # and the run trained
    assert [h["loss"] for h in compiled_run.history] == pytest.approx([h["loss"] for h in eager_run.history],
                                                                      abs=1e-5)
    assert compiled_run.history[0].keys() == eager_run.history[0].keys()  # the loss's logs too


def test_the_default_is_eager_and_changes_nothing(tiny_resnet_clip):
    model, tokenizer = tiny_resnet_clip
    default, default_run = run(model, tokenizer, "cliperase")
    graphs = counters["stats"]["unique_graphs"]
    eager, eager_run = run(model, tokenizer, "cliperase", compile="")
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled
    assert largest_difference(default, eager) == 0 and default_run.history == eager_run.history
    assert COMPILE_MODES[0] == ""


def settings_of(path) -> dict:
    return load_checkpoint(path / "state.pt", restore="")["settings"]


def test_the_settings_hold_compile_only_when_set_and_resume_compares_it(tiny_resnet_clip, tmp_path):
    model, tokenizer = tiny_resnet_clip
    for mode in ("", "aot_eager"):  # max_steps=0: the settings are written, nothing is compiled
        run(model, tokenizer, checkpoint_dir=tmp_path / (mode or "eager"), max_steps=0, compile=mode)
    assert set(settings_of(tmp_path / "eager")) == EAGER_SETTINGS
    assert settings_of(tmp_path / "aot_eager") == {**settings_of(tmp_path / "eager"), "compile": "aot_eager"}
    run(model, tokenizer, checkpoint_dir=tmp_path / "eager", max_steps=0)  # an eager checkpoint resumes as before
    with pytest.raises(ValueError, match="compile: 'aot_eager' in the checkpoint, '' now"):
        run(model, tokenizer, checkpoint_dir=tmp_path / "aot_eager", max_steps=0)
    with pytest.raises(ValueError, match="compile: '' in the checkpoint, 'aot_eager' now"):
        run(model, tokenizer, checkpoint_dir=tmp_path / "eager", max_steps=0, compile="aot_eager")


@pytest.mark.parametrize("mode, message", [
    ("max-autotune", "^unknown compile mode 'max-autotune'; " + VALID + "$"),
    ("cudagraphs", "^compile='cudagraphs' needs a CUDA device, not cpu; use 'inductor' there \\(" + VALID + "\\)$"),
])
def test_a_bad_mode_is_refused_before_any_work(tiny_resnet_clip, tmp_path, mode, message):
    model, tokenizer = tiny_resnet_clip
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match=message):
        unlearn(model, method="ft", forget_loader=loaders(tokenizer)[0], max_steps=2, compile=mode,
                checkpoint_dir=tmp_path, progress=False)
    assert largest_difference(before, model) == 0 and not (tmp_path / "state.pt").exists()
    with pytest.raises(ValueError, match=message):  # run_method checks before it copies the model
        harness.run_method("ft", None, model=None, tokenizer=None, lr=1e-3, steps=2, compile=mode)


def test_run_method_passes_compile_on_and_records_it_only_when_set(tiny_clip, monkeypatch):
    # a loss of the temperature only: compiles in a moment
    def sharpen(model, original, forget_batch, retain_batch):
        return -model.logit_scale * 1.0, {}

    monkeypatch.setitem(registry.METHODS, "sharpen", registry.MethodSpec("sharpen", "sharpen", loss=sharpen))
    monkeypatch.setitem(losses.LOSSES, "sharpen", sharpen)
    seen = []
    monkeypatch.setattr(harness.run, "unlearn", lambda *a, **kw: seen.append(kw["compile"]) or unlearn(*a, **kw))
    train, test = tiny_world(seed=0), tiny_world(n_per_class=6, seed=1)
    task = harness.build_task(train, test, kind="forget-class", target="bag", seed=0, eval_per_class=4)
    records = [harness.run_method("sharpen", task, model=tiny_clip.model, tokenizer=tiny_clip.tokenizer, lr=0.1,
                                  steps=2, evaluate=False, compile=mode)[1] for mode in ("aot_eager", "")]
    assert seen == ["aot_eager", ""]
    assert records[0]["config"]["compile"] == "aot_eager" and "compile" not in records[1]["config"]
    assert records[0]["metrics"]["steps"] == records[1]["metrics"]["steps"] == 2


def test_compile_loss_compiles_the_step_of_any_loss():
    # the step function passes its settings to the loss as keywords, in every mode
    def loss_fn(model, original, forget_batch, retain_batch, *, scale):
        return (model * scale).sum() + forget_batch - retain_batch, {}

    for mode in ("", "aot_eager"):
        loss, logs = compile_loss(loss_fn, mode)(torch.ones(3), None, 2.0, 0.5, {"scale": 4.0})
        assert float(loss) == 3 * 4.0 + 2.0 - 0.5 and logs == {}


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="inductor on a CPU needs a C++ compiler; none found")
@pytest.mark.skipif(not os.environ.get("CLIPUNLEARN_TEST_INDUCTOR"), reason=(
    "inductor's C++ compile of the tiny CLIP's step takes 66 s on a 2-core CPU (6 s from its cache), over this "
    "file's 20 s; aot_eager checks the same tracing. Set CLIPUNLEARN_TEST_INDUCTOR=1 to run it"))
def test_inductor_gives_the_eager_weights(tiny_resnet_clip):
    # inductor sums in other orders: Adam turns the rounding of a zero gradient (the attention's key biases: a softmax
    # ignores a shift shared by all keys) into steps of up to lr, so they are left out, as in test_stacked_runs.py
    model, tokenizer = tiny_resnet_clip
    trained = [n for n, _ in model.named_parameters() if not n.endswith(("in_proj_bias", "k_proj.bias"))]
    eager, _ = run(model, tokenizer, "ft", lr=1e-4, trainable=trained)
    compiled, _ = run(model, tokenizer, "ft", lr=1e-4, trainable=trained, compile="inductor")
    assert largest_difference(eager, compiled) < 1e-5
    assert largest_difference(compiled, model) > 1e-4
