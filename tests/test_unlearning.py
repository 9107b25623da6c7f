"""The shared unlearning loop, the pair loader and the registry of losses."""

import math

import pytest
import torch

from clipunlearn import losses
from clipunlearn.unlearning import make_pair_loader, unlearn


class ToySet(torch.utils.data.Dataset):
    """Random images of 3 classes with an in-memory ``get_batch``."""

    def __init__(self, n=24, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 32, 32, generator=g)
        self.targets = torch.arange(n) % 3
        self.classnames = ["cat", "dog", "bird"]

    def __len__(self):
        return len(self.targets)

    def get_batch(self, idx):
        idx = torch.as_tensor(idx)
        return self.images[idx], self.targets[idx]

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i])


def loaders(tokenizer, seed=0):
    ds = ToySet()
    forget = make_pair_loader(ds, tokenizer=tokenizer, templates=["a {}.", "a photo of a {}."],
                              indices=(ds.targets == 0).nonzero().flatten(), batch_size=4, seed=seed)
    retain = make_pair_loader(ds, tokenizer=tokenizer, templates=["a {}."],
                              indices=(ds.targets != 0).nonzero().flatten(), batch_size=4, seed=seed)
    return forget, retain


def class_prompts(tokenizer):
    return tokenizer(["a cat.", "a dog.", "a bird."])


def test_pair_loader_captions_match_labels(tiny_tokenizer):
    forget, retain = loaders(tiny_tokenizer)
    batches = list(retain.batches(0))
    assert len(batches) == len(retain) == 4
    b = batches[0]
    assert b["images"].shape == (4, 3, 32, 32) and b["texts"].shape == (4, 16)
    expected = tiny_tokenizer([f"a {['cat', 'dog', 'bird'][int(y)]}." for y in b["labels"]])
    assert torch.equal(b["texts"], expected)
    # same seed and epoch -> same batches; next epoch -> another order
    again = list(retain.batches(0))
    assert all(torch.equal(x["labels"], y["labels"]) for x, y in zip(batches, again))
    assert any(not torch.equal(x["labels"], y["labels"]) for x, y in zip(batches, retain.batches(1)))
    with pytest.raises(ValueError, match="no samples"):
        make_pair_loader(ToySet(), tokenizer=tiny_tokenizer, templates=["{}"], indices=[])


def test_registry_names_and_errors():
    assert {"ft", "ga", "graddiff", "neggrad_plus", "random_labels", "cliperase"} <= set(losses.LOSSES)
    with pytest.raises(ValueError, match="valid: .*cliperase"):
        losses.get_loss("erase")


@pytest.mark.parametrize("method", ["ft", "ga", "graddiff", "neggrad_plus", "random_labels", "cliperase"])
def test_every_method_runs_and_changes_the_model(tiny_clip, method):
    model, tokenizer = tiny_clip.model, tiny_clip.tokenizer
    forget, retain = loaders(tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = unlearn(model, method=method, forget_loader=forget, retain_loader=retain, epochs=1, lr=1e-3,
                     progress=False)
    assert result.steps == len(forget) == 2 and result.stopped_early is None
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_trainable_mask_updates_only_chosen_and_original_untouched(tiny_clip):
    model, tokenizer = tiny_clip.model, tiny_clip.tokenizer
    forget, retain = loaders(tokenizer)
    from clipunlearn.models import copy_frozen

    original = copy_frozen(model)
    original_state = {k: v.clone() for k, v in original.state_dict().items()}
    before = {k: v.clone() for k, v in model.named_parameters()}
    chosen = ["text_projection", "visual.proj"]
    unlearn(model, method="cliperase", original=original, forget_loader=forget, retain_loader=retain, lr=1e-2,
            trainable=chosen, progress=False)
    changed = {k for k, v in model.named_parameters() if not torch.equal(before[k], v)}
    assert changed == set(chosen)
    assert all(torch.equal(original_state[k], v) for k, v in original.state_dict().items())
    assert all(p.grad is None for p in original.parameters())
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    with pytest.raises(ValueError, match="unknown parameter"):
        unlearn(model, method="ga", forget_loader=forget, trainable=["nope"], progress=False)


def test_select_fn_restores_best_and_stop_fn_stops(tiny_clip):
    model, tokenizer = tiny_clip.model, tiny_clip.tokenizer
    forget, retain = loaders(tokenizer)
    calls = []

    def eval_fn(m):
        calls.append(m.text_projection.detach().clone())
        return {"score": [3.0, 1.0, 2.0, 0.0][len(calls) - 1]}

    ga = {"class_texts": class_prompts(tokenizer)}
    result = unlearn(model, method="ga", forget_loader=forget, epochs=2, lr=1e-2, loss_kwargs=ga, eval_fn=eval_fn,
                     eval_every=1, select_fn=lambda e: e["score"], progress=False)
    assert result.best_step == 1 and torch.equal(model.text_projection, calls[0])
    stopped = unlearn(model, method="ga", forget_loader=forget, epochs=3, lr=1e-2, loss_kwargs=ga,
                      stop_fn=lambda m, step, e: step >= 2, progress=False)
    assert stopped.steps == 2 and stopped.stopped_early.startswith("stop_fn") and not stopped.failed


def test_nan_loss_stops_and_restores(tiny_clip, monkeypatch):
    model, tokenizer = tiny_clip.model, tiny_clip.tokenizer
    forget, _ = loaders(tokenizer)
    calls = {"n": 0}

    def flaky(model, original, fb, rb):
        calls["n"] += 1
        loss = losses.forgetting_loss(model, fb)
        return (loss * float("nan") if calls["n"] == 2 else loss), {}

    monkeypatch.setitem(losses.LOSSES, "flaky", flaky)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="non-finite"):
        result = unlearn(model, method="flaky", forget_loader=forget, epochs=2, lr=1e-2, progress=False)
    assert result.steps == 1 and "non-finite" in result.stopped_early and result.failed
    assert result.summary()["failed"] is True and result.summary()["stopped_early"] == result.stopped_early
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # last good = start


class Interrupted(Exception):
    """Stands for a crash or a killed kernel in the middle of a run."""


def interrupt_at(step):
    def stop_fn(model, at, last_eval):
        if at == step:
            raise Interrupted
        return False
    return stop_fn


def resumable_run(tokenizer, ckpt_dir, *, lr=1e-3, stop_fn=None, resume="auto", max_steps=None, method="random_labels",
                  precision="fp32"):
    from tests.conftest import VIT_CFG, build_tiny_clip

    model = build_tiny_clip(VIT_CFG, tokenizer).model
    forget, retain = loaders(tokenizer)
    result = unlearn(model, method=method, forget_loader=forget, retain_loader=retain, epochs=3, max_steps=max_steps,
                     lr=lr, loss_kwargs={"class_texts": class_prompts(tokenizer)}, checkpoint_dir=ckpt_dir,
                     checkpoint_every=1, stop_fn=stop_fn, seed=0, progress=False, resume=resume, precision=precision)
    return model, result


def same_weights(a, b):
    return all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_resume_matches_uninterrupted_run(tiny_tokenizer, tmp_path):
    full, full_result = resumable_run(tiny_tokenizer, None)
    with pytest.raises(Interrupted):
        resumable_run(tiny_tokenizer, tmp_path, stop_fn=interrupt_at(3))  # killed after 3 of 6 steps
    resumed, result = resumable_run(tiny_tokenizer, tmp_path)
    assert same_weights(full, resumed) and result.steps == full_result.steps == 6
    assert [h["step"] for h in result.history] == list(range(1, 7))
    # a finished run resumes as it ended, without training again
    again, again_result = resumable_run(tiny_tokenizer, tmp_path)
    assert same_weights(full, again) and again_result.steps == 6 and len(again_result.history) == 6


def test_resume_with_other_settings_raises(tiny_tokenizer, tmp_path):
    with pytest.raises(Interrupted):
        resumable_run(tiny_tokenizer, tmp_path, stop_fn=interrupt_at(2))
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.001 in the checkpoint, 0.01 now\).*delete"):
        resumable_run(tiny_tokenizer, tmp_path, lr=1e-2)
    with pytest.raises(ValueError, match="max_steps: None in the checkpoint, 4 now"):
        resumable_run(tiny_tokenizer, tmp_path, max_steps=4)
    with pytest.raises(ValueError, match="valid: auto, restart"):
        resumable_run(tiny_tokenizer, tmp_path, resume="yes")
    # restart: the old checkpoint is dropped and the new settings run from step 0
    fresh, _ = resumable_run(tiny_tokenizer, None, lr=1e-2)
    restarted, result = resumable_run(tiny_tokenizer, tmp_path, lr=1e-2, resume="restart")
    assert result.steps == 6 and same_weights(fresh, restarted)


def test_resume_compares_the_precision_both_ways(tiny_tokenizer, tmp_path):
    # fp32 is left out of the checkpoint's settings: a bf16 checkpoint must not resume as fp32, nor the reverse
    with pytest.raises(Interrupted):
        resumable_run(tiny_tokenizer, tmp_path / "bf16", stop_fn=interrupt_at(2), precision="bf16")
    with pytest.raises(ValueError, match="precision: 'bf16' in the checkpoint, 'fp32' now"):
        resumable_run(tiny_tokenizer, tmp_path / "bf16")
    with pytest.raises(Interrupted):
        resumable_run(tiny_tokenizer, tmp_path / "fp32", stop_fn=interrupt_at(2))
    with pytest.raises(ValueError, match="precision: 'fp32' in the checkpoint, 'bf16' now"):
        resumable_run(tiny_tokenizer, tmp_path / "fp32", precision="bf16")


def test_failed_run_is_not_resumed(tiny_tokenizer, tmp_path, monkeypatch):
    explode = {"at_call": 2, "calls": 0}

    def exploding(model, original, fb, rb, **kwargs):
        explode["calls"] += 1
        loss = losses.forgetting_loss(model, fb)
        return (loss * float("inf") if explode["calls"] == explode["at_call"] else loss), {}

    monkeypatch.setitem(losses.LOSSES, "exploding", exploding)
    with pytest.warns(UserWarning, match="non-finite"):
        _, result = resumable_run(tiny_tokenizer, tmp_path, method="exploding")
    assert result.failed and result.steps == 1
    with pytest.raises(ValueError, match="failed run.*non-finite loss at step 1.*resume='restart'"):
        resumable_run(tiny_tokenizer, tmp_path, method="exploding")
    explode["at_call"] = None
    _, result = resumable_run(tiny_tokenizer, tmp_path, method="exploding", resume="restart")
    assert not result.failed and result.steps == 6


def test_max_steps_wins_over_epochs(tiny_clip, monkeypatch):
    model, tokenizer = tiny_clip.model, tiny_clip.tokenizer
    forget, retain = loaders(tokenizer)  # 2 forget batches per epoch
    seen = []

    def spy(model, original, fb, rb):
        seen.append(fb["labels"].clone())
        return losses.forgetting_loss(model, fb), {}

    monkeypatch.setitem(losses.LOSSES, "spy_steps", spy)
    result = unlearn(model, method="spy_steps", forget_loader=forget, epochs=1, max_steps=5, lr=1e-3, progress=False)
    assert result.steps == len(seen) == 5 and len(forget) == 2
    assert [h["step"] for h in result.history] == [1, 2, 3, 4, 5]


def test_bf16_autocast_runs_the_loss_in_bf16_and_keeps_float32_weights(tiny_clip, monkeypatch):
    model, tokenizer = tiny_clip.model, tiny_clip.tokenizer
    forget, retain = loaders(tokenizer)
    dtypes = []

    def spy(model, original, fb, rb):
        loss = losses.forgetting_loss(model, fb)
        dtypes.append(model.encode_image(fb["images"]).dtype)
        return loss, {}

    monkeypatch.setitem(losses.LOSSES, "spy_amp", spy)
    first = None
    for _ in range(2):  # the same forget batches twice: their similarity falls
        result = unlearn(model, method="spy_amp", forget_loader=forget, epochs=1, lr=1e-2, precision="bf16",
                         progress=False)
        first = result.history[0]["loss"] if first is None else first
    assert set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert result.history[-1]["loss"] < first
    with pytest.raises(ValueError, match="valid: fp32, bf16, fp16, auto"):
        unlearn(model, method="spy_amp", forget_loader=forget, epochs=1, precision="fp8", progress=False)
