"""Paper B: the batched Lipschitz loss and the iterative forgetting procedure (schedule, rollback)."""

import copy

import pytest
import torch

from clipunlearn import layers, losses, synthetic
from clipunlearn.methods import lipschitz

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


@pytest.fixture(params=["vit", "resnet"])
def clip_pair(request, tiny_clip, tiny_resnet_clip):
    return tiny_clip if request.param == "vit" else tiny_resnet_clip


def manual_loss(model, images, texts, noise, lo, hi):
    """The formula of PAPERS.md written out with explicit loops over images and samples."""
    terms = []
    f_txt, f_img = model.encode_text(texts), model.encode_image(images)
    for i in range(images.shape[0]):
        for s in range(noise.shape[1]):
            x2 = torch.maximum(torch.minimum(images[i] + noise[i, s], hi[0]), lo[0])
            with torch.no_grad():
                f2 = model.encode_image(x2.unsqueeze(0))[0]
            num = (f_txt[i] - f2).norm() + (f_img[i] - f2).norm()
            terms.append(num / (2 * (images[i] - x2).norm()))
    return torch.stack(terms).mean()


# --------------------------------------------------------------------------- #
# The loss
# --------------------------------------------------------------------------- #
def test_batched_equals_looped_and_formula(clip_pair, tiny_batch):
    model = clip_pair.model
    images, texts = tiny_batch["images"].clamp(-1, 1), tiny_batch["texts"]
    noise = 0.5 * torch.randn(4, 5, *images.shape[1:])
    bounds = synthetic.pixel_bounds(MEAN, STD)
    batched, logs = losses.lipschitz_penalty(model, images, texts, noise=noise, bounds=bounds)
    looped, _ = losses.lipschitz_penalty(model, images, texts, noise=noise, bounds=bounds, batched=False)
    chunked, _ = losses.lipschitz_penalty(model, images, texts, noise=noise, bounds=bounds, chunk_size=3)
    expected = manual_loss(model, images, texts, noise, *bounds)
    assert batched.item() == pytest.approx(looped.item(), rel=1e-5)
    assert batched.item() == pytest.approx(chunked.item(), rel=1e-5)
    assert batched.item() == pytest.approx(expected.item(), rel=1e-5)
    assert logs["lipschitz"] == pytest.approx(batched.item()) and logs["in_norm"] > 0
    # same gradients as the formula, i.e. f_img(x') carries none
    params = [p for p in model.parameters() if p.requires_grad]
    g_batched = torch.autograd.grad(batched, params, allow_unused=True)
    g_manual = torch.autograd.grad(expected, params, allow_unused=True)
    for a, b in zip(g_batched, g_manual):
        assert (a is None) == (b is None)
        if a is not None:
            # loose: the batched and per-image forward passes round differently, and the tiny random
            # ResNet maps x and x' to nearly equal features, so ||f(x) - f(x')|| amplifies rounding
            assert (a - b).norm() <= 1e-2 * b.norm() + 1e-9


def test_noisy_images_are_clamped_to_the_valid_range(tiny_clip, tiny_batch):
    model = tiny_clip.model
    images = tiny_batch["images"].clamp(-1, 1)
    noise = 50.0 * torch.randn(4, 3, *images.shape[1:])
    bounds = synthetic.pixel_bounds(MEAN, STD)
    _, logs = losses.lipschitz_penalty(model, images, tiny_batch["texts"], noise=noise, bounds=bounds)
    clamped = torch.maximum(torch.minimum(images.unsqueeze(1) + noise, bounds[1].unsqueeze(1)), bounds[0].unsqueeze(1))
    expected = (images.unsqueeze(1) - clamped).flatten(2).norm(dim=2).mean()
    assert logs["in_norm"] == pytest.approx(expected.item(), rel=1e-5)
    _, unclamped = losses.lipschitz_penalty(model, images, tiny_batch["texts"], noise=noise, bounds=None)
    assert unclamped["in_norm"] > logs["in_norm"]


def test_registered_loss_is_seeded_and_uses_only_the_forget_batch(clip_pair, tiny_batch):
    model = clip_pair.model
    assert "lipschitz" in losses.LOSSES
    fn = losses.LOSSES["lipschitz"]
    torch.manual_seed(3)
    a, logs = fn(model, None, tiny_batch, None, n_samples=4, sigma=0.3)
    torch.manual_seed(3)
    b, _ = fn(model, None, tiny_batch, None, n_samples=4, sigma=0.3)
    assert a.item() == b.item() and a.requires_grad and "lipschitz" in logs
    c, _ = fn(model, None, tiny_batch, None, n_samples=4, sigma=0.3, generator=torch.Generator().manual_seed(1))
    d, _ = fn(model, None, tiny_batch, None, n_samples=4, sigma=0.3, generator=torch.Generator().manual_seed(1))
    assert c.item() == d.item()


# --------------------------------------------------------------------------- #
# The procedure
# --------------------------------------------------------------------------- #
def make_forget_data(model, tokenizer, n=8):
    """A small synthetic forget set of class 0 ("cat") and a loader of unlearning batches over it."""
    from clipunlearn import metrics, unlearning

    names = ["cat", "dog", "car", "ship"]
    weights = metrics.build_classifier(model, tokenizer, names, ["a photo of a {}."])
    syn = synthetic.generate_synthetic(model, weights, classes=["cat"], classnames=names, n_per_class=n,
                                       image_size=32, steps=5, step_size=3.0, jitter=2, mean=MEAN, std=STD,
                                       progress=False)
    loader = unlearning.make_pair_loader(syn, tokenizer=tokenizer, templates=["a photo of a {}."], batch_size=n,
                                         shuffle=False, seed=0)
    return names, syn, loader


def test_paper_k_schedule(tiny_clip, tiny_resnet_clip):
    assert lipschitz.paper_k_schedule(tiny_clip.model)[:3] == [(25, 25), (27, 27), (30, 30)]
    rn = lipschitz.paper_k_schedule(tiny_resnet_clip.model)
    assert rn[:3] == [(5, 5), (7, 7), (10, 12)] and len(rn) == len(lipschitz.paper_sigma_schedule())
    assert lipschitz.paper_k_schedule(tiny_clip.model, k_image=2, k_text=3)[1] == (4, 5)


def test_rollback_and_schedule(tiny_clip, monkeypatch):
    model, tokenizer = tiny_clip
    names, syn, loader = make_forget_data(model, tokenizer)
    # scripted stop accuracies: before, after epoch 1 (better), epoch 2 (worse -> rollback), epoch 3 (reached)
    script, states = iter([0.8, 0.5, 0.6, 0.05]), []

    def fake_accuracy(m, **kwargs):
        states.append(copy.deepcopy(m.state_dict()))
        return next(script)

    monkeypatch.setattr(lipschitz, "stop_accuracy", fake_accuracy)
    result = lipschitz.forget_lipschitz(
        model, forget_loader=loader, tokenizer=tokenizer, classnames=names, templates=["a photo of a {}."],
        stop_dataset=syn, k_schedule=[(2, 2), (3, 4), (5, 6)], sigma_schedule=(0.1, 0.3, 0.5), n_samples=3,
        threshold=0.1, lr=1e-2, max_epochs=10, progress=False)
    assert [e["accepted"] for e in result.epochs] == [True, False, True]
    assert [(e["sigma"], e["k_image"], e["k_text"]) for e in result.epochs] == [(0.1, 2, 2), (0.1, 2, 2),
                                                                                (0.3, 3, 4)]
    assert [len(e["trainable"]) for e in result.epochs] == [4, 4, 7]
    assert result.reached and result.final_acc == 0.05 and result.initial_acc == 0.8
    assert result.steps == 3 and result.accepted_steps == 2 and len(result.history) == 3
    assert [h["accepted"] for h in result.history] == [True, False, True]
    assert [h["kept_step"] for h in result.curve()] == [1, 2]
    # epoch 2 changed the weights, then was undone: epoch 3 started from the state after epoch 1
    after_1, after_2, after_3 = states[1], states[2], states[3]
    changed = [n for n in after_1 if not torch.equal(after_1[n], after_2[n])]
    assert changed and set(changed) <= set(result.epochs[1]["trainable"])
    final = model.state_dict()
    assert all(torch.equal(final[n], after_3[n]) for n in final)
    moved_in_3 = {n for n in final if not torch.equal(final[n], after_1[n])}
    assert moved_in_3 and moved_in_3 <= set(result.epochs[2]["trainable"])


def test_schedule_exhausted_leaves_the_model_unchanged(tiny_clip, monkeypatch):
    model, tokenizer = tiny_clip
    names, syn, loader = make_forget_data(model, tokenizer)
    before = copy.deepcopy(model.state_dict())
    monkeypatch.setattr(lipschitz, "stop_accuracy", lambda m, **kwargs: 1.0)  # no epoch ever helps
    result = lipschitz.forget_lipschitz(
        model, forget_loader=loader, tokenizer=tokenizer, classnames=names, templates=["a photo of a {}."],
        stop_dataset=syn, k_schedule=[(2, 2), (3, 3)], sigma_schedule=(0.1, 0.3, 0.5), n_samples=2, lr=1e-2,
        max_epochs=10, progress=False)
    assert len(result.epochs) == 2 and not any(e["accepted"] for e in result.epochs)
    assert not result.reached and result.final_acc == 1.0
    assert all(torch.equal(before[n], v) for n, v in model.state_dict().items())


@pytest.mark.parametrize("selective", [True, False])
def test_forgetting_runs_and_updates_only_selected_tensors(clip_pair, selective):
    model, tokenizer = clip_pair
    names, syn, loader = make_forget_data(model, tokenizer)
    before = copy.deepcopy(model.state_dict())
    history = []
    result = lipschitz.forget_lipschitz(
        model, forget_loader=loader, tokenizer=tokenizer, classnames=names, templates=["a photo of a {}."],
        stop_dataset=syn, k_schedule=[(2, 3)] * 3, sigma_schedule=(0.5, 1.0, 2.0), n_samples=3, threshold=-1.0,
        lr=1e-2, max_epochs=3, selective=selective, eval_fn=lambda m: history.append(1) or {"extra": 1.0},
        progress=False)
    assert len(result.epochs) == 3 and len(result.history) == 3 and len(history) == 3
    assert all(0.0 <= h["stop_acc"] <= 1.0 and h["extra"] == 1.0 for h in result.history)
    trainable = set().union(*[e["trainable"] for e in result.epochs if e["accepted"]])
    changed = {n for n, v in model.state_dict().items() if not torch.equal(before[n], v)}
    assert changed <= trainable
    if selective:
        assert all(len(e["trainable"]) == 5 for e in result.epochs)
        assert not any(n.startswith(("token_embedding", "ln_final")) for e in result.epochs for n in e["trainable"])
    else:
        assert len(result.epochs[0]["trainable"]) > 5
    assert not model.training


def test_a_grid_shares_first_epoch_scores_and_runs_as_without_them(tiny_resnet_clip, monkeypatch):
    model, tokenizer = tiny_resnet_clip
    names, syn, loader = make_forget_data(model, tokenizer)

    def run(lr):
        m = copy.deepcopy(model)
        result = lipschitz.forget_lipschitz(
            m, forget_loader=loader, tokenizer=tokenizer, classnames=names, templates=["a photo of a {}."],
            stop_dataset=syn, k_schedule=[(2, 3)] * 2, sigma_schedule=(0.5, 1.0), n_samples=3, threshold=-1.0,
            lr=lr, max_epochs=2, progress=False, seed=3)
        return m.state_dict(), [e["trainable"] for e in result.epochs], [h["stop_acc"] for h in result.history]

    monkeypatch.setattr(lipschitz, "_SCORES", layers.LayerScoreCache())
    loader.epoch = 0
    run(1e-2)
    loader.epoch = 0
    shared = run(3e-2)  # its first epoch: the same start, batches and noise as the first run's (and a later one
    assert lipschitz._SCORES.hits >= 1  # after a rejected epoch: the same state again)
    monkeypatch.setattr(lipschitz, "_SCORES", layers.LayerScoreCache())
    loader.epoch = 0
    alone = run(3e-2)
    assert lipschitz._SCORES.hits == 0
    assert shared[1:] == alone[1:] and all(torch.equal(shared[0][k], alone[0][k]) for k in alone[0])
