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

    result = unlearn(model, method="ga", forget_loader=forget, epochs=2, lr=1e-2, eval_fn=eval_fn, eval_every=1,
                     select_fn=lambda e: e["score"], progress=False)
    assert result.best_step == 1 and torch.equal(model.text_projection, calls[0])
    stopped = unlearn(model, method="ga", forget_loader=forget, epochs=3, lr=1e-2,
                      stop_fn=lambda m, step, e: step >= 2, progress=False)
    assert stopped.steps == 2 and stopped.stopped_early.startswith("stop_fn")


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
    assert result.steps == 1 and "non-finite" in result.stopped_early
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # last good = start


def test_resume_matches_uninterrupted_run(tiny_clip, tmp_path):
    from tests.conftest import VIT_CFG, build_tiny_clip

    def run(ckpt_dir, max_steps):
        model = build_tiny_clip(VIT_CFG, tiny_clip.tokenizer).model
        forget, retain = loaders(tiny_clip.tokenizer)
        if ckpt_dir is not None and (ckpt_dir / "state.pt").exists():
            pass
        unlearn(model, method="random_labels", forget_loader=forget, retain_loader=retain, epochs=3,
                max_steps=max_steps, lr=1e-3, checkpoint_dir=ckpt_dir, checkpoint_every=1, progress=False)
        return model

    full = run(None, None)
    run(tmp_path, 3)  # interrupted after 3 of 6 steps
    resumed = run(tmp_path, None)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
