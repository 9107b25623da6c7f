"""Pins of paper A's stage functions in ``clipunlearn.methods.three_stage_stages`` that the other tests left open.

``forget_stage`` and ``remind_stage`` are driven with recording fakes of the layer set-up (``_trainable``),
the optimiser (``make_adamw``: a fake that records ``zero_grad`` and the gradients it is stepped with), the
similarity, the CLIP loss and the reminding loss, so every keyword they pass on, every default (the
signature's values, documented in the docstrings as the project's choices), the stop at the margin on
both sides of the boundary, the step counts, the history entries, the returned report, the device the
batches are moved to (``"meta"``: a device that exists on any machine) and the progress bar (only when
asked) are compared with values written out here. ``remind_loss`` and ``distillation_loss`` are checked
by a hand computation on 2x2 logits; ``choose_layers``, ``candidate_layers``, ``pair_similarities``,
``_trainable``, ``_read_tensor``, ``_layer_tensors``, ``clip.to_device`` and ``clip.RequiresGrad`` on a two-layer toy
model (benchmarks/mutation.md lists their survivors).
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipunlearn.clip import RequiresGrad, to_device
from clipunlearn.methods import three_stage_stages as three_stage
from clipunlearn.lora import lora_parameter_names


class Toy(nn.Module):
    """A CLIP-shaped toy: one bias-free 2x2 linear layer per tower (identity at the start), logit scale 2."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Linear(2, 2, bias=False)
        self.text = nn.Linear(2, 2, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(2.0)))
        with torch.no_grad():
            self.visual.weight.copy_(torch.eye(2))
            self.text.weight.copy_(torch.eye(2))

    def encode_image(self, images, normalize=False):
        f = self.visual(images)
        return F.normalize(f, dim=-1) if normalize else f

    def encode_text(self, texts, normalize=False):
        f = self.text(texts)
        return F.normalize(f, dim=-1) if normalize else f


def toy_batches(n: int, label_sets=((0, 1, 0),)) -> list[dict]:
    """``n`` batches of 3 pairs (2-d "images" and "texts"), a string entry that is not a tensor."""
    out = []
    for i in range(n):
        labels = torch.tensor(label_sets[i % len(label_sets)])
        out.append({"images": torch.full((3, 2), float(i + 1)), "texts": torch.ones(3, 2), "labels": labels,
                    "names": ["a", "b", "c"]})
    return out


def ddiff(w):
    """A term worth 0 whose gradient wrt every element of ``w`` is 1."""
    return w.sum() - w.sum().detach()


class FakeOptimizer:
    """Records ``zero_grad``'s argument and the gradient at each ``step``; a step subtracts 1 from each tensor."""

    def __init__(self, params):
        self.params = list(params)
        self.zero_grads, self.grads = [], []

    def zero_grad(self, set_to_none=True):
        self.zero_grads.append(set_to_none)
        for p in self.params:
            p.grad = None

    def step(self):
        self.grads.append([p.grad.clone() for p in self.params])
        with torch.no_grad():
            for p in self.params:
                p.sub_(1.0)


class Rec:
    """Recording fakes of ``_trainable`` and ``make_adamw`` (the model's ``visual.weight`` is trained)."""

    def __init__(self, monkeypatch):
        self.trainable, self.adamw, self.optimizers = [], [], []

        def trainable(model, layers, **kwargs):
            self.trainable.append((list(layers), kwargs))
            return [model.visual.weight]

        def make_adamw(params, **kwargs):
            params = list(params)
            self.adamw.append((params, kwargs))
            opt = FakeOptimizer(params)
            self.optimizers.append(opt)
            return opt

        monkeypatch.setattr(three_stage, "_trainable", trainable)
        monkeypatch.setattr(three_stage, "make_adamw", make_adamw)


def scripted_similarities(monkeypatch, values):
    """``pair_similarities`` giving the forget batch ``k`` the mean similarity ``values[k]`` (gradient 1/3 per
    element of ``visual.weight``); returns the list of (batch, images' device type) it saw."""
    seen = []

    def sims(model, batch):
        v = values[len(seen)]
        seen.append((batch, batch["images"].device.type))
        w = model.visual.weight
        return torch.tensor([v - 0.125, v, v + 0.125]) + ddiff(w)

    monkeypatch.setattr(three_stage, "pair_similarities", sims)
    return seen


# --------------------------------------------------------------------------- #
# forget_stage
# --------------------------------------------------------------------------- #
def test_forget_stage_defaults_are_the_documented_ones(monkeypatch, capsys):
    model, rec = Toy(), Rec(monkeypatch)
    seen = scripted_similarities(monkeypatch, [0.5] * 60)
    report = three_stage.forget_stage(model, forget_loader=toy_batches(2), layers=["visual"])
    # defaults: margin 0, lr 1e-3, at most 50 steps, LoRA rank 4 (alpha = rank), no weight decay, no bar
    assert rec.trainable == [(["visual"], dict(use_lora=True, rank=4, lora_alpha=None))]
    assert [kw for _, kw in rec.adamw] == [dict(lr=1e-3, weight_decay=0.0)]
    assert report == {"steps": 50, "stopped": "max_steps", "similarity_before": 0.5, "similarity_after": 0.5,
                      "history": [{"step": i, "similarity": 0.5} for i in range(51)]}
    assert len(seen) == 51 and rec.optimizers[0].zero_grads == [True] * 50
    assert capsys.readouterr().err == ""


def test_forget_stage_default_margin_is_zero_and_the_stop_is_strictly_below(monkeypatch):
    model = Toy()
    Rec(monkeypatch)
    scripted_similarities(monkeypatch, [0.0, 0.0, -0.125, 0.5])
    report = three_stage.forget_stage(model, forget_loader=toy_batches(2), layers=["visual"])
    assert report == {"steps": 2, "stopped": "margin", "similarity_before": 0.0, "similarity_after": -0.125,
                      "history": [{"step": 0, "similarity": 0.0}, {"step": 1, "similarity": 0.0},
                                  {"step": 2, "similarity": -0.125}]}


def test_forget_stage_stops_at_the_margin_on_both_sides_of_the_boundary(monkeypatch):
    model = Toy()
    Rec(monkeypatch)
    scripted_similarities(monkeypatch, [0.25, -0.25, -0.375, 0.5])  # exact in float32
    report = three_stage.forget_stage(model, forget_loader=toy_batches(2), layers=["visual"], margin=-0.25,
                                      max_steps=10)
    assert report["stopped"] == "margin" and report["steps"] == 2
    assert [h["similarity"] for h in report["history"]] == [0.25, -0.25, -0.375]
    assert [h["step"] for h in report["history"]] == [0, 1, 2]


def test_forget_stage_passes_every_setting_on_and_moves_batches_to_the_device(monkeypatch):
    model, rec = Toy(), Rec(monkeypatch)
    seen = scripted_similarities(monkeypatch, [0.5, 0.4, 0.3, 0.2])
    report = three_stage.forget_stage(model, forget_loader=toy_batches(2), layers=["visual", "text"], margin=-1.0,
                                      lr=0.02, max_steps=3, use_lora=False, rank=2, lora_alpha=6.0,
                                      weight_decay=0.125, device="meta")
    assert rec.trainable == [(["visual", "text"], dict(use_lora=False, rank=2, lora_alpha=6.0))]
    assert [kw for _, kw in rec.adamw] == [dict(lr=0.02, weight_decay=0.125)]
    assert [d for _, d in seen] == ["meta"] * 4
    assert report["steps"] == 3 and report["stopped"] == "max_steps"
    assert report["similarity_before"] == 0.5 and report["similarity_after"] == pytest.approx(0.2)
    # the loss is the mean similarity: gradient 1 per element (ddiff), three steps
    assert [[g.tolist() for g in gs] for gs in rec.optimizers[0].grads] == [[[[1.0, 1.0], [1.0, 1.0]]]] * 3


def test_forget_stage_adds_the_weighted_retain_loss(monkeypatch):
    model, rec = Toy(), Rec(monkeypatch)
    scripted_similarities(monkeypatch, [0.5, 0.5, 0.5])
    retain = toy_batches(2, label_sets=((0, 1, 0), (1, 1, 0)))
    img, txt, positives = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), object()
    encoded, labels, clip_calls = [], [], []

    def encode_pairs(m, batch):
        encoded.append((m, batch["images"].device.type, float(batch["images"][0, 0]) if
                        batch["images"].device.type != "meta" else None))
        return img, txt

    def pair_positives(lab):
        labels.append(lab)
        return positives

    def contrastive_loss(i, t, scale, *, positives=None):
        clip_calls.append((i, t, float(scale.detach()), positives))
        return torch.tensor(3.0) + 2.0 * ddiff(model.visual.weight)

    monkeypatch.setattr(three_stage, "encode_pairs", encode_pairs)
    monkeypatch.setattr(three_stage, "pair_positives", pair_positives)
    monkeypatch.setattr(three_stage, "contrastive_loss", contrastive_loss)
    report = three_stage.forget_stage(model, forget_loader=toy_batches(1), retain_loader=retain, layers=["visual"],
                                      margin=-1.0, max_steps=2, retain_weight=0.25, device="meta")
    assert [(m is model, d) for m, d, _ in encoded] == [(True, "meta"), (True, "meta")]
    assert [(lab.device.type, tuple(lab.shape)) for lab in labels] == [("meta", (3,)), ("meta", (3,))]
    assert [(i is img, t is txt, s, p is positives) for i, t, s, p in clip_calls] == [(True, True, 2.0, True)] * 2
    assert report["history"] == [{"step": 0, "similarity": 0.5, "retain_loss": 3.0},
                                 {"step": 1, "similarity": 0.5, "retain_loss": 3.0},
                                 {"step": 2, "similarity": 0.5}]
    # d/dw (mean similarity + 0.25 * retain loss) = 1 + 0.25 * 2
    assert [[g.tolist() for g in gs] for gs in rec.optimizers[0].grads] == [[[[1.5, 1.5], [1.5, 1.5]]]] * 2


def test_forget_stage_uses_the_retain_batches_in_order(monkeypatch):
    model = Toy()
    Rec(monkeypatch)
    scripted_similarities(monkeypatch, [0.5] * 4)
    seen = []
    monkeypatch.setattr(three_stage, "encode_pairs", lambda m, b: seen.append(float(b["images"][0, 0])) or (
        torch.zeros(1, 2), torch.zeros(1, 2)))
    monkeypatch.setattr(three_stage, "contrastive_loss", lambda i, t, s, positives=None: torch.tensor(1.0))
    three_stage.forget_stage(model, forget_loader=toy_batches(1), retain_loader=toy_batches(2), layers=["visual"],
                             margin=-1.0, max_steps=3, retain_weight=1.0)
    assert seen == [1.0, 2.0, 1.0]


def test_forget_stage_retain_weight_needs_a_retain_loader_and_zero_ignores_it(monkeypatch):
    model = Toy()
    Rec(monkeypatch)
    with pytest.raises(ValueError, match="^" + re.escape("retain_weight > 0 needs a retain_loader") + "$"):
        three_stage.forget_stage(model, forget_loader=toy_batches(1), layers=["visual"], retain_weight=0.5)
    scripted_similarities(monkeypatch, [0.5, 0.5])
    monkeypatch.setattr(three_stage, "encode_pairs", lambda m, b: pytest.fail("retain batch encoded"))
    report = three_stage.forget_stage(model, forget_loader=toy_batches(1), retain_loader=toy_batches(1),
                                      layers=["visual"], max_steps=1)
    assert report["history"] == [{"step": 0, "similarity": 0.5}, {"step": 1, "similarity": 0.5}]


def test_forget_stage_progress_bar_only_when_asked(monkeypatch, capsys):
    model = Toy()
    Rec(monkeypatch)
    scripted_similarities(monkeypatch, [0.5] * 3)
    three_stage.forget_stage(model, forget_loader=toy_batches(1), layers=["visual"], max_steps=2, progress=True)
    err = capsys.readouterr().err
    # tqdm(total=max_steps, desc="forget", leave=False): drawn at 0/2, erased at the end (no newline)
    assert err.startswith("\rforget:   0%|          | 0/2 [") and err.endswith(" \r") and "\n" not in err


@pytest.mark.parametrize("use_lora", [True, False])
def test_forget_stage_trains_only_its_layers_and_gives_the_model_back_plain(use_lora):
    model = Toy()
    model.text.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    batch = {"images": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "texts": torch.tensor([[1.0, 1.0], [1.0, -0.5]]),
             "labels": torch.tensor([0, 1])}
    report = three_stage.forget_stage(model, forget_loader=[batch], layers=["visual"], margin=-2.0, lr=0.05,
                                      max_steps=2, use_lora=use_lora, rank=2)
    start = (1 / math.sqrt(2) - 0.5 / math.sqrt(1.25)) / 2  # mean cosine of the two pairs
    assert report["steps"] == 2 and report["similarity_before"] == pytest.approx(start)
    assert report["similarity_after"] < start - 0.01
    assert not model.training and not three_stage.has_lora(model) and list(model.state_dict()) == keys
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"visual.weight"}


# --------------------------------------------------------------------------- #
# remind_stage
# --------------------------------------------------------------------------- #
def scripted_remind_loss(monkeypatch):
    """``remind_loss`` giving step ``k`` (1-based) the loss ``k / 4`` (gradient 1 per element of
    ``visual.weight``); returns the list of (model, original, batch, keywords) it saw."""
    calls = []

    def loss(model, original, batch, **kwargs):
        calls.append((model, original, batch, kwargs))
        k = len(calls)
        return torch.tensor(k / 4) + ddiff(model.visual.weight), {"contrastive": k / 8, "kd": k / 16}

    monkeypatch.setattr(three_stage, "remind_loss", loss)
    return calls


def test_remind_stage_defaults_are_the_documented_ones(monkeypatch, capsys):
    model, original, rec = Toy(), Toy(), Rec(monkeypatch)
    calls = scripted_remind_loss(monkeypatch)
    report = three_stage.remind_stage(model, original=original, retain_loader=toy_batches(2), layers=["visual"])
    # defaults: lr 1e-4, 30 steps, kd_weight 1, kd_temperature 1, EMA decay 0.9, LoRA rank 4, no weight decay
    assert rec.trainable == [(["visual"], dict(use_lora=True, rank=4, lora_alpha=None))]
    assert [kw for _, kw in rec.adamw] == [dict(lr=1e-4, weight_decay=0.0)]
    assert [kw for *_, kw in calls] == [dict(kd_weight=1.0, kd_temperature=1.0)] * 30
    assert report == {"steps": 30, "loss_before": 0.25, "loss_after": 7.5,
                      "history": [{"step": k, "loss": k / 4, "contrastive": k / 8, "kd": k / 16}
                                  for k in range(1, 31)]}
    assert rec.optimizers[0].zero_grads == [True] * 30
    # each fake step subtracts 1: W_k = I - k; EMA with decay 0.9 started at I
    shift = 0.0
    for k in range(1, 31):
        shift = 0.9 * shift + 0.1 * k
    torch.testing.assert_close(model.visual.weight.detach(), torch.eye(2) - shift, rtol=0, atol=1e-4)
    assert capsys.readouterr().err == ""


def test_remind_stage_passes_every_setting_on_and_aligns_each_batch(monkeypatch):
    model, original, rec = Toy(), Toy(), Rec(monkeypatch)
    calls = scripted_remind_loss(monkeypatch)
    aligned, seen = torch.full((3, 2), 7.0), []

    def align_fn(images):
        seen.append(images.device.type)
        return aligned

    report = three_stage.remind_stage(model, original=original, retain_loader=toy_batches(2), layers=["visual"],
                                      lr=0.03, steps=2, kd_weight=0.5, kd_temperature=2.0, ema_decay=0.0,
                                      use_lora=False, rank=2, lora_alpha=6.0, weight_decay=0.125, align_fn=align_fn,
                                      device="meta")
    assert rec.trainable == [(["visual"], dict(use_lora=False, rank=2, lora_alpha=6.0))]
    assert [kw for _, kw in rec.adamw] == [dict(lr=0.03, weight_decay=0.125)]
    assert seen == ["meta", "meta"]
    assert [(m is model, o is original, sorted(b), b["images"] is aligned, b["texts"].device.type, kw)
            for m, o, b, kw in calls] == [
        (True, True, ["images", "labels", "names", "texts"], True, "meta", dict(kd_weight=0.5, kd_temperature=2.0))] * 2
    assert [h["step"] for h in report["history"]] == [1, 2] and report["steps"] == 2
    torch.testing.assert_close(model.visual.weight.detach(), torch.eye(2) - 2.0)  # decay 0: the last weights


def test_remind_stage_with_no_steps_reports_nan_and_keeps_the_weights(monkeypatch):
    model, original = Toy(), Toy()
    Rec(monkeypatch)
    scripted_remind_loss(monkeypatch)
    report = three_stage.remind_stage(model, original=original, retain_loader=toy_batches(1), layers=["visual"],
                                      steps=0)
    assert report["steps"] == 0 and report["history"] == []
    assert math.isnan(report["loss_before"]) and math.isnan(report["loss_after"])
    assert torch.equal(model.visual.weight.detach(), torch.eye(2))


def test_remind_stage_progress_bar_only_when_asked(monkeypatch, capsys):
    model, original = Toy(), Toy()
    Rec(monkeypatch)
    scripted_remind_loss(monkeypatch)
    three_stage.remind_stage(model, original=original, retain_loader=toy_batches(1), layers=["visual"], steps=2,
                             progress=True)
    err = capsys.readouterr().err
    assert err.startswith("\rremind:   0%|          | 0/2 [") and err.endswith(" \r") and "\n" not in err


# --------------------------------------------------------------------------- #
# remind_loss and distillation_loss by hand on 2x2 logits
# --------------------------------------------------------------------------- #
STUDENT_IMG, STUDENT_TXT = torch.eye(2), torch.tensor([[0.6, 0.8], [0.8, 0.6]])
TEACHER_IMG, TEACHER_TXT = torch.eye(2), torch.eye(2)


def kl_row(p_logits, q_logits):
    """KL(softmax(p) || softmax(q)) of one row, written out."""
    zp, zq = sum(math.exp(v) for v in p_logits), sum(math.exp(v) for v in q_logits)
    p = [math.exp(v) / zp for v in p_logits]
    q = [math.exp(v) / zq for v in q_logits]
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


# logit scale 2: student logits [[1.2, 1.6], [1.6, 1.2]], teacher [[2, 0], [0, 2]] (rows mirror each other)
CONTRASTIVE = math.log(1 + math.exp(0.4))  # -log softmax of the diagonal, both directions
KD_T1 = kl_row([2.0, 0.0], [1.2, 1.6])
KD_T2 = 4 * kl_row([1.0, 0.0], [0.6, 0.8])


def fake_encoders(monkeypatch, student, teacher):
    def encode_pairs(m, batch):
        return (STUDENT_IMG, STUDENT_TXT) if m is student else (TEACHER_IMG, TEACHER_TXT)

    monkeypatch.setattr(three_stage, "encode_pairs", encode_pairs)


def test_distillation_loss_by_hand_default_temperature_one():
    logits, teacher = torch.tensor([[1.2, 1.6], [1.6, 1.2]]), torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert float(three_stage.distillation_loss(logits, teacher)) == pytest.approx(KD_T1, rel=1e-5)
    assert float(three_stage.distillation_loss(logits, teacher, temperature=2.0)) == pytest.approx(KD_T2, rel=1e-5)


def test_remind_loss_is_contrastive_plus_kd_weight_times_distillation(monkeypatch):
    student, teacher = Toy(), Toy()
    fake_encoders(monkeypatch, student, teacher)
    batch = {"labels": torch.tensor([0, 1])}
    loss, logs = three_stage.remind_loss(student, teacher, batch)  # defaults: kd_weight 1, temperature 1
    assert float(loss.detach()) == pytest.approx(CONTRASTIVE + KD_T1, rel=1e-5)
    assert logs == {"contrastive": pytest.approx(CONTRASTIVE, rel=1e-5), "kd": pytest.approx(KD_T1, rel=1e-5)}
    loss, logs = three_stage.remind_loss(student, teacher, batch, kd_weight=0.5, kd_temperature=2.0)
    assert float(loss.detach()) == pytest.approx(CONTRASTIVE + 0.5 * KD_T2, rel=1e-5)
    assert logs["kd"] == pytest.approx(KD_T2, rel=1e-5)
    loss, logs = three_stage.remind_loss(student, teacher, batch, kd_weight=0.0)
    assert float(loss.detach()) == pytest.approx(CONTRASTIVE, rel=1e-5) and logs["kd"] == 0.0


# --------------------------------------------------------------------------- #
# choose_layers, candidate_layers
# --------------------------------------------------------------------------- #
CANDIDATES = ["a", "b", "c", "d", "e"]


def test_choose_layers_fisher_is_the_default_and_ranks_unscored_layers_last():
    scores = {"c": 3.0, "a": 1.0, "e": 2.0}
    assert three_stage.choose_layers(scores, CANDIDATES, n_layers=2) == ["c", "e"]
    assert three_stage.choose_layers(scores, CANDIDATES, n_layers=4) == ["c", "e", "a", "b"]
    assert three_stage.choose_layers({"e": -5.0}, CANDIDATES, n_layers=2) == ["e", "a"]
    assert three_stage.choose_layers(scores, CANDIDATES, n_layers=1) == ["c"]


def test_choose_layers_random_is_seeded_with_default_seed_zero():
    def expected(seed, n):
        g = torch.Generator().manual_seed(seed)
        return [CANDIDATES[i] for i in torch.randperm(5, generator=g)[:n].sort().values.tolist()]

    assert three_stage.choose_layers(None, CANDIDATES, n_layers=3, layer_choice="random") == ["a", "b", "e"]
    picks = {tuple(three_stage.choose_layers(None, CANDIDATES, n_layers=2, layer_choice="random", seed=s))
             for s in range(6)}
    assert len(picks) > 1
    assert three_stage.choose_layers(None, CANDIDATES, n_layers=3, layer_choice="random", seed=4) == expected(4, 3)
    assert expected(0, 3) == ["a", "b", "e"] and expected(1, 3) == ["a", "c", "e"]  # the default seed matters
    torch.manual_seed(123)
    a = three_stage.choose_layers(None, CANDIDATES, n_layers=2, layer_choice="random", seed=7)
    torch.manual_seed(321)
    assert three_stage.choose_layers(None, CANDIDATES, n_layers=2, layer_choice="random", seed=7) == a == expected(7, 2)


def test_choose_layers_all_and_its_errors():
    assert three_stage.choose_layers(None, CANDIDATES, n_layers=0, layer_choice="all") == CANDIDATES
    with pytest.raises(ValueError, match="^" + re.escape("unknown layer_choice 'top'; valid: fisher, all, random")
                       + "$"):
        three_stage.choose_layers({}, CANDIDATES, n_layers=1, layer_choice="top")
    with pytest.raises(ValueError, match="^" + re.escape("n_layers must be >= 1, got 0") + "$"):
        three_stage.choose_layers({}, CANDIDATES, n_layers=0)
    with pytest.raises(ValueError, match="^" + re.escape("layer_choice='fisher' needs the layer scores") + "$"):
        three_stage.choose_layers(None, CANDIDATES, n_layers=1)


def test_candidate_layers_per_encoder_and_its_error(tiny_clip):
    model = tiny_clip.model
    both = three_stage.candidate_layers(model)
    image = three_stage.candidate_layers(model, encoders=("image",))
    text = three_stage.candidate_layers(model, encoders=("text",))
    assert image and text and both == [n for n in both if n in image or n in text]
    assert all(n.startswith("visual.") for n in image) and not any(n.startswith("visual.") for n in text)
    assert sorted(image + text) == sorted(both)
    with pytest.raises(ValueError, match="^" + re.escape("unknown encoders ['audio', 'vision']; valid: image, text")
                       + "$"):
        three_stage.candidate_layers(model, encoders=("vision", "text", "audio"))


# --------------------------------------------------------------------------- #
# pair_similarities, _trainable, _read_tensor, _layer_tensors, clip.to_device, clip.RequiresGrad
# --------------------------------------------------------------------------- #
def test_pair_similarities_is_the_cosine_of_each_pair():
    model = Toy()
    batch = {"images": torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]),
             "texts": torch.tensor([[4.0, 3.0], [1.0, 1.0], [0.0, -1.0]])}
    torch.testing.assert_close(three_stage.pair_similarities(model, batch),
                               torch.tensor([24 / 25, 1 / math.sqrt(2), -1.0]))


def test_trainable_with_lora_adds_adapters_of_rank_and_alpha_and_returns_them():
    model = Toy()
    params = three_stage._trainable(model, ["visual"], use_lora=True, rank=1, lora_alpha=3.0)
    assert lora_parameter_names(model) == ["visual.parametrizations.weight.0.lora_A",
                                           "visual.parametrizations.weight.0.lora_B"]
    assert [tuple(p.shape) for p in params] == [(1, 2), (2, 1)]
    adapter = model.visual.parametrizations.weight[0]
    assert (adapter.rank, adapter.scaling) == (1, 3.0)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == lora_parameter_names(model)


def test_trainable_full_unfreezes_exactly_the_layers_tensors():
    model = Toy()
    params = three_stage._trainable(model, ["text"], use_lora=False, rank=1, lora_alpha=None)
    assert len(params) == 1 and params[0] is model.text.weight
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {
        "visual.weight": False, "text.weight": True, "logit_scale": False}


def test_read_tensor_and_layer_tensors():
    model = nn.Sequential(nn.Linear(2, 1), nn.Sequential(nn.Linear(1, 1, bias=False)))
    model.scale = nn.Parameter(torch.tensor(2.0))
    assert three_stage._layer_tensors(model, ["0", "1.0"]) == ["0.weight", "0.bias", "1.0.weight"]
    assert three_stage._layer_tensors(model, []) == []
    assert three_stage._read_tensor(model, "1.0.weight") is model[1][0].weight
    assert three_stage._read_tensor(model, "0.bias") is model[0].bias
    assert three_stage._read_tensor(model, "scale") is model.scale


def test_to_device_moves_tensors_and_keeps_the_rest():
    batch = {"images": torch.ones(2), "names": ["a", "b"], "n": 3}
    moved = to_device(batch, "meta")
    assert moved["images"].device.type == "meta" and moved["names"] is batch["names"] and moved["n"] == 3
    assert sorted(moved) == ["images", "n", "names"]


def test_requires_grad_puts_back_every_flag_and_leaves_new_parameters_alone():
    model = Toy()
    model.text.weight.requires_grad_(False)
    with RequiresGrad(model) as flags:
        assert flags.model is model
        for p in model.parameters():
            p.requires_grad_(not p.requires_grad)
        model.extra = nn.Parameter(torch.zeros(1), requires_grad=False)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {
        "visual.weight": True, "text.weight": False, "logit_scale": True, "extra": False}
