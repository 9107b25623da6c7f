"""Precision ``auto`` and ``fp16``: the choice per device, fp16 autocast and the gradient scaler of the loop."""

import pytest
import torch

from clipunlearn import clip, losses, unlearning
from clipunlearn.unlearning import unlearn

from .conftest import VIT_CFG, build_tiny_clip
from .test_unlearning import Interrupted, class_prompts, interrupt_at, loaders


# --------------------------------------------------------------------------- #
# resolve_precision
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(("device", "capability", "expected"), [
    ("cpu", None, "fp32"),
    ("cpu", (9, 0), "fp32"),  # a capability does not make a CPU a GPU
    ("mps", None, "fp32"),
    ("cuda", (7, 5), "fp16"),  # a T4 (Colab's free card)
    ("cuda:0", (7, 0), "fp16"),  # a V100
    ("cuda", (8, 0), "bf16"),  # an A100
    ("cuda", (8, 6), "bf16"),
    ("cuda:1", (9, 0), "bf16"),  # an H100
])
def test_auto_picks_per_device(device, capability, expected):
    assert clip.resolve_precision("auto", device, capability=capability) == expected


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_named_precision_passes_through(precision):
    assert clip.resolve_precision(precision, "cpu") == precision
    assert clip.resolve_precision(precision, "cuda", capability=(7, 5)) == precision


def test_an_unknown_precision_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown precision 'half'; valid: fp32, bf16, fp16, auto"):
        clip.resolve_precision("half", "cpu")
    with pytest.raises(ValueError, match="valid: fp32, bf16, fp16, auto"):
        clip.autocast("cpu", "float16")
    with pytest.raises(ValueError, match="valid: fp32, bf16, fp16, auto"):
        unlearn(torch.nn.Linear(2, 2), method="random_labels", forget_loader=[{}], precision="tf32", progress=False)


def test_the_synthetic_paths_keep_their_own_precisions():
    assert clip.PRECISIONS == ("fp32", "bf16")
    assert clip.AMP_PRECISIONS == ("fp32", "bf16", "fp16", "auto")


# --------------------------------------------------------------------------- #
# autocast
# --------------------------------------------------------------------------- #
def test_autocast_fp16_and_auto_on_the_cpu():
    with clip.autocast("cpu", "fp16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16
        assert torch.nn.Linear(4, 2)(torch.randn(3, 4)).dtype == torch.float16
    with clip.autocast("cpu", "auto"):  # a CPU: fp32, autocast off
        assert not torch.is_autocast_enabled("cpu")
    with clip.autocast(torch.device("cpu"), "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


# --------------------------------------------------------------------------- #
# The gradient scaler
# --------------------------------------------------------------------------- #
def test_the_scaler_is_on_for_fp16_on_cuda_only(monkeypatch):
    made = []
    monkeypatch.setattr(torch.amp, "GradScaler", lambda kind, enabled: made.append((kind, enabled)) or kind)
    for device, precision in (("cuda", "fp16"), (torch.device("cuda:1"), "fp16"), ("cuda", "bf16"),
                              ("cuda", "fp32"), ("cpu", "fp16"), ("cpu", "fp32"), ("mps", "fp16")):
        unlearning.make_grad_scaler(device, precision)
    assert made == [("cuda", True), ("cuda", True), ("cuda", False), ("cuda", False), ("cpu", False),
                    ("cpu", False), ("mps", False)]


class ScaledLoss:
    """What ``RecordingScaler.scale`` returns: a loss times 4 whose ``backward`` is recorded."""

    def __init__(self, loss, calls):
        self.loss, self.calls = loss, calls

    def backward(self):
        self.calls.append("backward")
        (self.loss * 4.0).backward()


class RecordingScaler:
    """Records what the loop asks of a gradient scaler, in order (a scale of 4, undone at the step)."""

    def __init__(self):
        self.calls = []

    def scale(self, loss):
        self.calls.append("scale")
        return ScaledLoss(loss, self.calls)

    def step(self, optimizer):
        self.calls.append("step")
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad /= 4.0
        optimizer.step()

    def update(self):
        self.calls.append("update")


def test_step_optimizer_scales_backs_steps_and_updates_in_order():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = torch.optim.SGD([w], lr=0.5)
    scaler = RecordingScaler()
    unlearning.step_optimizer((w ** 2).sum(), optimizer=optimizer, scaler=scaler)
    assert scaler.calls == ["scale", "backward", "step", "update"]
    assert torch.allclose(w.detach(), torch.tensor([0.0, 0.0]))  # w - 0.5 * 2w


def test_a_disabled_scaler_is_a_plain_step():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 3)
    opt_a, opt_b = clip.make_adamw(a.parameters(), lr=0.1), clip.make_adamw(b.parameters(), lr=0.1)
    unlearning.step_optimizer(a(x).pow(2).mean(), optimizer=opt_a,
                              scaler=unlearning.make_grad_scaler("cpu", "fp16"))
    b(x).pow(2).mean().backward()
    opt_b.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# --------------------------------------------------------------------------- #
# The loop
# --------------------------------------------------------------------------- #
def run_tiny(tokenizer, *, precision, lr=1e-3, seed=0, checkpoint_dir=None, stop_fn=None, method="random_labels"):
    """A short unlearning run of a fresh tiny ViT CLIP (6 steps); return ``(model, result)``."""
    model = build_tiny_clip(VIT_CFG, tokenizer).model
    forget, retain = loaders(tokenizer)
    result = unlearn(model, method=method, forget_loader=forget, retain_loader=retain, epochs=3, lr=lr,
                     loss_kwargs={"class_texts": class_prompts(tokenizer)}, seed=seed, precision=precision,
                     checkpoint_dir=checkpoint_dir, checkpoint_every=1, stop_fn=stop_fn, progress=False)
    return model, result


def test_fp16_on_the_cpu_runs_the_loss_in_fp16_and_lowers_it(tiny_clip, monkeypatch):
    model, tokenizer = tiny_clip.model, tiny_clip.tokenizer
    forget, _ = loaders(tokenizer)
    dtypes = []

    def spy(model, original, fb, rb):
        dtypes.append(model.encode_image(fb["images"]).dtype)
        return losses.forgetting_loss(model, fb), {}

    monkeypatch.setitem(losses.LOSSES, "spy_fp16", spy)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = None
    for _ in range(2):  # the same forget batches twice: their similarity falls
        result = unlearn(model, method="spy_fp16", forget_loader=forget, epochs=1, lr=1e-2, precision="fp16",
                         progress=False)
        first = result.history[0]["loss"] if first is None else first
    assert set(dtypes) == {torch.float16} and result.precision == "fp16"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert result.history[-1]["loss"] < first
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_auto_on_the_cpu_is_exactly_fp32(tiny_tokenizer, tmp_path):
    explicit, explicit_result = run_tiny(tiny_tokenizer, precision="fp32", checkpoint_dir=tmp_path / "fp32")
    auto, auto_result = run_tiny(tiny_tokenizer, precision="auto", checkpoint_dir=tmp_path / "auto")
    assert auto_result.precision == explicit_result.precision == "fp32" and auto_result.steps == 6
    assert all(torch.equal(x, y) for x, y in zip(explicit.state_dict().values(), auto.state_dict().values()))
    assert [h["loss"] for h in auto_result.history] == [h["loss"] for h in explicit_result.history]
    saved = torch.load(tmp_path / "auto" / "state.pt", weights_only=True)
    assert "precision" not in saved["settings"] and "scaler" not in saved  # as an fp32 run writes it
    _, again = run_tiny(tiny_tokenizer, precision="auto", checkpoint_dir=tmp_path / "fp32")  # resumes fp32's
    assert again.steps == 6 and len(again.history) == len(explicit_result.history)


def test_auto_records_the_precision_it_resolved(tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(unlearning, "resolve_precision", lambda precision, device: "bf16")  # as on an A100
    _, result = run_tiny(tiny_tokenizer, precision="auto", checkpoint_dir=tmp_path)
    assert result.precision == "bf16"
    assert torch.load(tmp_path / "state.pt", weights_only=True)["settings"]["precision"] == "bf16"


def test_an_enabled_scaler_runs_through_the_loop_and_resumes(tiny_tokenizer, tmp_path, monkeypatch):
    """A CPU GradScaler stands in for a CUDA one: scaled fp16 steps, the scale saved and resumed."""
    scalers = []

    def enabled_scaler(device, precision):
        scalers.append(torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2))
        return scalers[-1]

    monkeypatch.setattr(unlearning, "make_grad_scaler", enabled_scaler)
    full, full_result = run_tiny(tiny_tokenizer, precision="fp16")
    assert full_result.steps == 6 and full_result.precision == "fp16"
    assert scalers[-1].get_scale() == 2.0 ** 13  # grown every 2 finite steps: every step was taken
    with pytest.raises(Interrupted):
        run_tiny(tiny_tokenizer, precision="fp16", checkpoint_dir=tmp_path, stop_fn=interrupt_at(3))
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    assert saved["scaler"]["scale"] == 2.0 ** 11 and saved["settings"]["precision"] == "fp16"
    resumed, result = run_tiny(tiny_tokenizer, precision="fp16", checkpoint_dir=tmp_path)
    assert result.steps == 6 and scalers[-1].get_scale() == 2.0 ** 13  # the scale went on where it was
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(full.state_dict().values(),
                                                               resumed.state_dict().values()))
