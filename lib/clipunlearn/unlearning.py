"""The one unlearning loop shared by every method.

``unlearn`` owns the optimiser, the steps, the evaluation cadence, checkpoint
selection, logging, the progress bar, early stops (non-finite loss, ``stop_fn``)
and resume; a method only contributes its loss (``losses.LOSSES``).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

import torch
from tqdm.auto import tqdm

from .checkpoints import load_checkpoint, save_checkpoint
from .clip import RequiresGrad, autocast, copy_frozen, make_adamw, resolve_precision, to_device
from .embedding_rows import EmbeddingRows, step_tokens
from .losses import get_loss
from .metrics import NonFiniteOutputError, round_score
from .pairs import CaptionPairLoader, PairLoader, make_caption_pair_loader, make_pair_loader  # noqa: F401 (re-exported)


# --------------------------------------------------------------------------- #
# The loop
# --------------------------------------------------------------------------- #
RESUME_MODES = ("auto", "restart")
#: Settings a checkpoint may leave out (written only when not the default): compared with these values.
SETTING_DEFAULTS = {"precision": "fp32", "logit_scale": "trainable", "compile": ""}
#: What happens to CLIP's learned temperature (``logit_scale``) during unlearning: ``trainable`` (updated like any
#: weight, unbounded), ``clamped`` (updated, then clamped to [0, ln 100] after every step as open_clip's training
#: does) or ``frozen`` (not trained).
LOGIT_SCALE_MODES = ("trainable", "clamped", "frozen")
LOGIT_SCALE_MAX = math.log(100)
#: How ``unlearn`` may compile a step's loss computation (``torch.compile``): ``""`` eager (the default), ``inductor``
#: (generated kernels), ``cudagraphs`` (inductor replaying CUDA graphs, ``mode="reduce-overhead"``: CUDA only) or
#: ``aot_eager`` (traced forward and backward run by eager kernels, no code generation: a check on any machine).
COMPILE_MODES = ("", "inductor", "cudagraphs", "aot_eager")


@dataclass
class UnlearnResult:
    """What ``unlearn`` did: per-step history, steps taken, the selected step, the wall time and how it ended.

    ``stopped_early`` says why the run ended before its last step (None: it did not);
    ``failed`` is True when the run broke down (a non-finite loss): its numbers are
    not a result of the method, and a caller should record the failure, not the metrics.
    ``precision``: the precision the loss ran in (``"auto"`` resolved for the device).
    """

    history: list = field(default_factory=list)
    steps: int = 0
    best_step: int | None = None
    seconds: float = 0.0
    stopped_early: str | None = None
    failed: bool = False
    precision: str = "fp32"

    @property
    def evals(self) -> list[dict]:
        """The evaluations, as ``{"step": s, **eval_dict}``."""
        return [{"step": h["step"], **h["eval"]} for h in self.history if "eval" in h]

    def summary(self) -> dict:
        """Return ``{"steps", "best_step", "seconds", "stopped_early", "failed"}`` (JSON-ready, for a record)."""
        return {"steps": self.steps, "best_step": self.best_step, "seconds": self.seconds,
                "stopped_early": self.stopped_early, "failed": self.failed}


def _select_trainable(model, trainable) -> list[tuple[str, torch.nn.Parameter]]:
    named = list(model.named_parameters())
    if trainable is None:
        chosen = named
    elif callable(trainable):
        chosen = [(n, p) for n, p in named if trainable(n, p)]
    else:
        wanted = set(trainable)
        unknown = wanted - {n for n, _ in named}
        if unknown:
            raise ValueError(f"unknown parameter names in trainable: {sorted(unknown)[:5]}")
        chosen = [(n, p) for n, p in named if n in wanted]
    if not chosen:
        raise ValueError("no trainable parameters selected")
    return chosen


def _is_count(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def check_run_settings(*, lr=None, epochs=None, max_steps=None, steps=None, batch_size=None,
                       eval_every=None) -> None:
    """Raise a ValueError naming every setting out of range: ``lr`` a positive finite number; ``epochs``,
    ``steps``, ``batch_size`` and ``eval_every`` whole numbers >= 1; ``max_steps`` a whole number >= 0
    (0: evaluate the starting model only). None: not given."""
    problems = []
    if lr is not None and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr)
                               and lr > 0):
        problems.append(f"lr must be a positive finite number, got {lr!r}")
    for name, value, least in (("epochs", epochs, 1), ("max_steps", max_steps, 0), ("steps", steps, 1),
                               ("batch_size", batch_size, 1), ("eval_every", eval_every, 1)):
        if value is not None and not _is_count(value, least):
            problems.append(f"{name} must be a whole number >= {least}, got {value!r}")
    if problems:
        raise ValueError("; ".join(problems))


def _finite_weights(model) -> bool:
    """True when every parameter of ``model`` is finite (no NaN, no infinity).

    One fp32 sum per tensor and one check of the sums: a NaN or an infinity makes its tensor's sum NaN or
    infinite (``inf - inf`` is NaN), and a finite sum can overflow only beyond 3e38, itself a diverged state.
    It reads each weight once instead of building elementwise masks (a tenth of a short run's time before).
    """
    sums = [p.detach().sum(dtype=torch.float32) for p in model.parameters()]
    return not sums or bool(torch.isfinite(torch.stack(sums)).all())


def _fail(model, tracker, result, reason: str, *, method: str) -> None:
    """Stop a diverged run: warn, put back the last good state and mark the result failed with ``reason``."""
    warnings.warn(f"{method}: {reason}; restoring the last good state")
    model.load_state_dict(tracker.good_state)
    result.stopped_early, result.failed = reason, True


def _check_and_evaluate(model, tracker, result, step: int, *, method: str, evaluate: bool = True) -> bool:
    """Fail the run (:func:`_fail`) on non-finite weights, else evaluate at ``step`` (when ``evaluate``) and fail
    it on non-finite outputs: a diverged state is never kept or scored. Return whether the run goes on."""
    if not _finite_weights(model):
        _fail(model, tracker, result, f"non-finite weights at step {step}", method=method)
        return False
    if evaluate:
        try:
            tracker.evaluate(step)
        except NonFiniteOutputError:
            _fail(model, tracker, result, f"non-finite outputs at step {step}", method=method)
            return False
    return True


def make_grad_scaler(device, precision: str) -> torch.amp.GradScaler:
    """Return the loop's gradient scaler: enabled for ``fp16`` on a CUDA ``device`` (small fp16 gradients would
    flush to zero), else a disabled one whose steps are plain optimiser steps."""
    kind = torch.device(device).type
    return torch.amp.GradScaler(kind, enabled=precision == "fp16" and kind == "cuda")


def step_optimizer(loss: torch.Tensor, *, optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward ``loss`` and step ``optimizer`` through ``scaler``: scale, backward, step (skipped by an enabled
    scaler when a gradient is not finite), update the scale."""
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def check_compile(mode: str, device) -> None:
    """Raise a ValueError naming :data:`COMPILE_MODES` for an unknown ``mode``, or for ``cudagraphs`` off CUDA."""
    valid = ", ".join(repr(m) for m in COMPILE_MODES)
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; valid: {valid}")
    if mode == "cudagraphs" and torch.device(device).type != "cuda":
        raise ValueError(f"compile='cudagraphs' needs a CUDA device, not {torch.device(device).type}; use 'inductor' "
                         f"there (valid: {valid})")


def compile_loss(loss_fn: Callable, mode: str = "") -> Callable:
    """Return ``step_loss(model, original, forget_batch, retain_batch, loss_kwargs) -> (loss, logs)``, one step's
    loss computation, compiled as ``mode`` (:data:`COMPILE_MODES`) says: ``""`` as it is, else ``torch.compile``
    (``cudagraphs``: a new CUDA-graph step begins at every call). Compiled lazily, at the first call; dynamo keeps
    the graphs of one process's calls by code, up to ``torch._dynamo.config.recompile_limit`` (8) kinds of call
    (losses, architectures, precisions), beyond which it runs the step eagerly and warns."""
    def step_loss(model, original, forget_batch, retain_batch, loss_kwargs):
        return loss_fn(model, original, forget_batch, retain_batch, **loss_kwargs)
    if mode == "":
        return step_loss
    if mode == "cudagraphs":
        graphed = torch.compile(step_loss, mode="reduce-overhead")

        def graphed_step(*args):
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are no longer read
            return graphed(*args)
        return graphed_step
    return torch.compile(step_loss, backend=mode)  # dynamo's "inductor" and "aot_eager" backends


def _cpu_state(model) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _cycle(loader, *, start_step: int = 0):
    """Yield batches of ``loader`` forever, epoch after epoch, starting after ``start_step`` batches."""
    epoch, skip = divmod(start_step, len(loader))
    while True:
        batches = loader.batches(epoch) if hasattr(loader, "batches") else iter(loader)
        for i, batch in enumerate(batches):
            if i >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


def _describe(value: Any) -> str:
    """A stable text form of a setting: ``repr``, with tensors as shape + content hash and no memory addresses."""
    if isinstance(value, torch.Tensor):
        raw = value.detach().cpu().contiguous().reshape(-1)
        digest = hashlib.sha1(raw.view(torch.uint8).numpy().tobytes()).hexdigest()[:12] if raw.numel() else "empty"
        return f"tensor(shape={list(value.shape)}, dtype={value.dtype}, sha1={digest})"
    if isinstance(value, torch.Generator):
        return f"Generator(initial_seed={value.initial_seed()})"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_describe(v) for v in value) + "]"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


class _Tracker:
    """Evaluation and selection bookkeeping: the history, the last good state and the best evaluated state."""

    def __init__(self, model, *, eval_fn, select_fn, result: UnlearnResult):
        self.model, self.eval_fn, self.select_fn, self.result = model, eval_fn, select_fn, result
        self.best_score, self.best_state, self.last_eval = -math.inf, None, {}
        self.good_state = _cpu_state(model)

    def evaluate(self, step: int) -> dict:
        """Run ``eval_fn``, log it, remember the state as good and keep it if ``select_fn`` scores it best."""
        out = dict(self.eval_fn(self.model)) if self.eval_fn is not None else {}
        self.result.history.append({"step": step, "eval": out})
        self.good_state, self.last_eval = _cpu_state(self.model), out
        if self.select_fn is not None and step > 0:
            score = round_score(self.select_fn(out))  # metrics.SCORE_DECIMALS: noise breaks no tie
            if score > self.best_score:  # ties: the earlier step
                self.best_score, self.best_state, self.result.best_step = score, self.good_state, step
        return out

    def evaluated_at(self, step: int) -> bool:
        history = self.result.history
        return bool(history) and history[-1].get("step") == step and "eval" in history[-1]

    def state_dict(self) -> dict:
        return {"history": self.result.history, "best_score": self.best_score, "best_state": self.best_state,
                "best_step": self.result.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.result.history = list(state["history"])
        self.best_score, self.best_state = float(state["best_score"]), state.get("best_state")
        self.result.best_step = state.get("best_step")
        self.good_state = _cpu_state(self.model)
        self.last_eval = next((h["eval"] for h in reversed(self.result.history) if "eval" in h), {})


class _Checkpoint:
    """``checkpoint_dir/state.pt``: the run's state and settings, saved atomically; checked before resuming."""

    def __init__(self, checkpoint_dir, *, settings: dict, resume: str):
        if resume not in RESUME_MODES:
            raise ValueError(f"unknown resume mode {resume!r}; valid: {', '.join(RESUME_MODES)}")
        self.path = Path(checkpoint_dir) / "state.pt" if checkpoint_dir is not None else None
        self.settings = settings
        if self.path is not None and resume == "restart":
            self.path.unlink(missing_ok=True)

    def load(self) -> dict | None:
        """Return the saved state of this run, None when there is none; raise when it cannot be resumed."""
        if self.path is None or not self.path.exists():
            return None
        state = load_checkpoint(self.path, restore="delete it (or pass resume='restart') to start the run afresh")
        fresh = f"delete {self.path.parent} (or pass resume='restart') to start afresh"
        saved = state.get("settings")
        if saved is None:
            raise ValueError(f"checkpoint {self.path} records no run settings (an older version wrote it); {fresh}")
        now = {**SETTING_DEFAULTS, **self.settings}
        then = {**SETTING_DEFAULTS, **saved}
        differ = [f"{k}: {_short(then.get(k))} in the checkpoint, {_short(now.get(k))} now"
                  for k in dict.fromkeys([*now, *then]) if then.get(k) != now.get(k)]
        if differ:
            raise ValueError(f"checkpoint {self.path} was written by a run with other settings ({'; '.join(differ)});"
                             f" {fresh}")
        if state.get("failed"):
            raise ValueError(f"checkpoint {self.path} is of a failed run ({state.get('stopped_early')}); its state is "
                             f"not a result to continue from; {fresh}")
        return state

    def restore(self, *, model, optimizer, scaler, tracker: _Tracker) -> tuple[int, bool]:
        """Load a resumable saved state into the run; return ``(step, finished)`` (``(0, False)``: none)."""
        saved = self.load()
        if saved is None:
            return 0, False
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if saved.get("scaler"):  # fp16 on CUDA: the loss scale goes on where it was
            scaler.load_state_dict(saved["scaler"])
        tracker.load_state_dict(saved)
        tracker.result.stopped_early = saved["stopped_early"]
        return int(saved["step"]), bool(saved["finished"])

    def save(self, *, model, optimizer, scaler, step: int, tracker: _Tracker, finished: bool) -> None:
        if self.path is not None:
            result = tracker.result
            extra = {"scaler": scaler.state_dict()} if scaler.is_enabled() else {}
            save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                             **tracker.state_dict(), "settings": self.settings, "finished": finished,
                             "failed": result.failed, "stopped_early": result.stopped_early, **extra}, self.path)


def _short(value, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def unlearn(model, *, method: str, forget_loader=None, retain_loader=None, original=None, epochs: int = 1,
            max_steps: int | None = None, lr: float = 1e-5, weight_decay: float = 0.0,
            betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, loss_kwargs: dict | None = None,
            trainable: Callable | Collection[str] | None = None, eval_fn: Callable | None = None,
            eval_every: int | None = None, eval_at_start: bool = False, select_fn: Callable | None = None,
            stop_fn: Callable | None = None, checkpoint_dir=None, checkpoint_every: int = 50, device=None,
            precision: str = "fp32", seed: int = 0, progress: bool = True, resume: str = "auto",
            logit_scale: str = "trainable", embedding_rows: bool = True, compile: str = "") -> UnlearnResult:
    """Unlearn in place with method ``method``; return an ``UnlearnResult``.

    Steps: ``max_steps`` when given (the loaders cycle through as many epochs as
    needed), else ``epochs`` passes over the forget loader (the retain loader when
    there is none); each step draws one forget and one retain batch, moved to
    ``device`` (None: left where the loaders put them). Only ``trainable`` parameters
    (None: all; a callable ``(name, param) -> bool``; or names) get gradients and AdamW
    state. ``original`` (default: a frozen copy of the model at the start, same
    device) gets neither. Every ``eval_every`` steps and at the end,
    ``eval_fn(model) -> dict`` is logged; ``select_fn(eval) -> score`` keeps the best
    evaluated state and restores it at the end; ``stop_fn(model, step, eval) -> bool``
    stops early (checked after every step, ``eval`` = last evaluation).

    A non-finite loss stops the run and restores the last evaluated good state (the
    best one with ``select_fn``); the result then has ``failed=True`` and
    ``stopped_early`` says where. With ``checkpoint_dir`` the run saves ``state.pt``
    (state, history and settings) every ``checkpoint_every`` steps and at the end.
    ``resume="auto"`` continues from it when the settings (method, lr, weight decay,
    betas, eps, loss_kwargs, epochs, max_steps, seed, trainable tensors) match, returns
    a finished run as it ended, and raises a ValueError when the settings differ or
    the saved run failed; ``resume="restart"`` deletes it and starts afresh. The model
    stays in eval mode (BatchNorm statistics of the original are kept). ``precision="bf16"`` or
    ``"fp16"`` computes the loss under autocast (``clip.autocast``; weights, gradients and AdamW
    state stay float32), for GPUs, fp16 on CUDA through a gradient scaler (:func:`make_grad_scaler`);
    ``"auto"`` is resolved once for the device (``clip.resolve_precision``: bf16 on Ampere or newer,
    fp16 on older cards, fp32 on a CPU) and the settings and ``result.precision`` hold what ran; the
    default ``"fp32"`` changes nothing. ``logit_scale``: one of
    :data:`LOGIT_SCALE_MODES` (the temperature trained freely, clamped to [0, ln 100] after every step, or
    frozen). ``embedding_rows``: without weight decay or checkpoints, AdamW steps only the token-embedding rows
    the run reads (``embedding_rows.EmbeddingRows``: the dense run's weights, without its dense work).
    ``compile``: one of :data:`COMPILE_MODES`, the loss computation of a step (forward, and its backward through
    AOT autograd) compiled once per call (:func:`compile_loss`) and kept in the settings; ``"cudagraphs"`` needs a
    CUDA device. What dynamo cannot trace runs eagerly between the compiled graphs: a loss's logs (``.item()``),
    the label-aware targets' boolean masks and the embedding rows' bookkeeping (``aot_eager`` gives the eager run's
    weights bit for bit, rows on or off); a later call on a copy of the model reuses the compiled graphs.
    """
    loss_fn = get_loss(method)
    check_run_settings(lr=lr, epochs=epochs, max_steps=max_steps)
    if logit_scale not in LOGIT_SCALE_MODES:
        raise ValueError(f"unknown logit_scale mode {logit_scale!r}; valid: {', '.join(LOGIT_SCALE_MODES)}")
    amp_device = torch.device(device if device is not None else next(model.parameters()).device)
    precision = resolve_precision(precision, amp_device)  # once; an unknown precision fails here, before any work
    autocast(amp_device, precision)  # and a device that cannot autocast in it
    check_compile(compile, amp_device)
    loss_kwargs = dict(loss_kwargs or {})
    driver = forget_loader if forget_loader is not None else retain_loader
    if driver is None:
        raise ValueError("unlearn needs a forget_loader or a retain_loader")
    total = epochs * len(driver) if max_steps is None else int(max_steps)
    model.eval()
    if original is None:
        original = copy_frozen(model)
    chosen = _select_trainable(model, trainable)
    if logit_scale == "frozen":
        chosen = [(n, p) for n, p in chosen if n != "logit_scale"] or _select_trainable(model, [])
    scale = getattr(model, "logit_scale", None) if logit_scale == "clamped" else None
    settings = {"method": method, "lr": float(lr), "weight_decay": float(weight_decay),
                "betas": [float(b) for b in betas], "eps": float(eps), "loss_kwargs": _describe(loss_kwargs),
                "epochs": int(epochs), "max_steps": max_steps, "seed": int(seed),
                "trainable": sorted(n for n, _ in chosen)}
    if precision != "fp32":  # fp32 checkpoints of earlier versions still resume
        settings["precision"] = precision
    if logit_scale != "trainable":  # as precision: checkpoints of earlier versions still resume
        settings["logit_scale"] = logit_scale
    if compile:  # as precision
        settings["compile"] = compile
    checkpoint = _Checkpoint(checkpoint_dir, settings=settings, resume=resume)
    rows = EmbeddingRows.for_run(model, chosen, weight_decay=weight_decay) \
        if embedding_rows and checkpoint_dir is None else None
    params = rows.parameters(chosen) if rows else [p for _, p in chosen]
    optimizer = make_adamw(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if rows:
        rows.optimizer = optimizer
    scaler = make_grad_scaler(amp_device, precision)
    result = UnlearnResult(precision=precision)
    step_loss = compile_loss(loss_fn, compile)
    tracker = _Tracker(model, eval_fn=eval_fn, select_fn=select_fn, result=result)
    step, finished = checkpoint.restore(model=model, optimizer=optimizer, scaler=scaler, tracker=tracker)

    start = time.perf_counter()
    bar = tqdm(total=total, initial=step, desc=method, disable=not progress, leave=False)
    with RequiresGrad(model, only=[n for n, _ in chosen]), rows or nullcontext(), bar:
        if eval_at_start and step == 0 and eval_fn is not None:
            tracker.evaluate(0)
        forget_iter = _cycle(forget_loader, start_step=step) if forget_loader is not None else None
        retain_iter = _cycle(retain_loader, start_step=step) if retain_loader is not None else None
        while step < total and not finished:
            forget_batch = to_device(next(forget_iter), device) if forget_iter else None
            retain_batch = to_device(next(retain_iter), device) if retain_iter else None
            torch.manual_seed(seed * 1_000_003 + step)  # stochastic losses repeat on resume
            if rows:
                rows.include(step_tokens(forget_batch, retain_batch, loss_kwargs=loss_kwargs))
            with autocast(amp_device, precision):
                loss, logs = step_loss(model, original, forget_batch, retain_batch, loss_kwargs)
            loss = loss.float()
            if not torch.isfinite(loss):
                _fail(model, tracker, result, f"non-finite loss at step {step}", method=method)
                break
            optimizer.zero_grad(set_to_none=True)
            step_optimizer(loss, optimizer=optimizer, scaler=scaler)
            if rows:
                rows.write_back()
            if scale is not None:
                with torch.no_grad():
                    scale.clamp_(0, LOGIT_SCALE_MAX)
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            result.history.append({"step": step, "loss": float(loss.detach()), **logs})
            at_eval = eval_every and step % eval_every == 0 and step < total
            if at_eval and not _check_and_evaluate(model, tracker, result, step, method=method):
                break
            if step % checkpoint_every == 0:
                checkpoint.save(model=model, optimizer=optimizer, scaler=scaler, step=step, tracker=tracker,
                                finished=False)
            if stop_fn is not None and stop_fn(model, step, tracker.last_eval):
                result.stopped_early = f"stop_fn at step {step}"
                break
        if not result.failed:
            _check_and_evaluate(model, tracker, result, step, method=method,
                                evaluate=eval_fn is not None and not tracker.evaluated_at(step))
        checkpoint.save(model=model, optimizer=optimizer, scaler=scaler, step=step, tracker=tracker, finished=True)
    if tracker.best_state is not None:
        model.load_state_dict(tracker.best_state)
    result.steps, result.seconds = step, time.perf_counter() - start
    return result
