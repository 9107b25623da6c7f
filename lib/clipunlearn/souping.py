"""Model souping as pure functions over state dicts (model-soups / WiSE-FT style).

Paper A's restoring stage: ``theta = alpha * theta_unlearned + (1 - alpha) * theta_original``,
with ``alpha`` searched on a small calibration set.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from .metrics import round_score


def check_same_keys(*state_dicts: Mapping[str, torch.Tensor]) -> None:
    """Raise a ValueError naming the differing keys or shapes unless all state dicts match."""
    first = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=1):
        if sd.keys() != first.keys():
            diff = sorted(set(sd) ^ set(first))
            raise ValueError(f"state dict {i} has different keys than state dict 0: {diff[:5]}")
        bad = [k for k in first if sd[k].shape != first[k].shape]
        if bad:
            raise ValueError(f"state dict {i} has different shapes for {bad[:5]}")


def soup_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]],
                     weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """Return the weighted average of ``state_dicts`` (uniform soup when ``weights`` is None).

    Floating-point tensors are averaged; integer buffers (e.g. BatchNorm's
    ``num_batches_tracked``) are taken from the first state dict.
    """
    if not state_dicts:
        raise ValueError("need at least one state dict to soup")
    check_same_keys(*state_dicts)
    weights = [1.0 / len(state_dicts)] * len(state_dicts) if weights is None else list(weights)
    if len(weights) != len(state_dicts):
        raise ValueError(f"{len(weights)} weights for {len(state_dicts)} state dicts")
    out = {}
    for key, ref in state_dicts[0].items():
        if ref.is_floating_point():
            out[key] = sum(w * sd[key].to(torch.float32) for w, sd in zip(weights, state_dicts)).to(ref.dtype)
        else:
            out[key] = ref.clone()
    return out


def interpolate_state_dicts(theta_0: Mapping[str, torch.Tensor], theta_1: Mapping[str, torch.Tensor],
                            alpha: float) -> dict[str, torch.Tensor]:
    """Return ``(1 - alpha) * theta_0 + alpha * theta_1`` (alpha=0: theta_0, alpha=1: theta_1)."""
    return soup_state_dicts([theta_0, theta_1], [1.0 - alpha, alpha])


def search_alpha(model, theta_original, theta_unlearned, *, score_fn: Callable[[torch.nn.Module], float],
                 alphas: Sequence[float] = tuple(a / 10 for a in range(11))) -> tuple[float, list[dict]]:
    """Load each interpolation into ``model``, score it, and return ``(best_alpha, [{"alpha", "score"}])``.

    ``alpha`` weighs the unlearned weights; ``score_fn`` (higher is better) runs on a
    calibration set. ``model`` is left holding the best interpolation.
    """
    trials = []
    for alpha in alphas:
        model.load_state_dict(interpolate_state_dicts(theta_original, theta_unlearned, alpha))
        trials.append({"alpha": float(alpha), "score": float(score_fn(model))})
    best = max(trials, key=lambda t: round_score(t["score"]))["alpha"]  # ties: the first (smaller) alpha
    model.load_state_dict(interpolate_state_dicts(theta_original, theta_unlearned, best))
    return best, trials


def select_alpha(trials: Sequence[Mapping], *, forget_key: str = "forget_acc",
                 retain_key: str | Sequence[str] = "retain_acc", max_forget: float = 0.05) -> float:
    """Return the alpha of ``trials`` (dicts ``{"alpha", **metrics}``) that paper A's restoring stage keeps.

    Criterion (project's choice; the paper only says alpha is searched on a calibration
    set): among the trials whose ``forget_key`` accuracy is ``<= max_forget``, the one
    with the largest retained accuracy (``retain_key``, or the mean of several keys, e.g.
    ``("sibling_acc", "retain_acc")``); ties go to the lower forget accuracy, then to the
    larger alpha. When no trial forgets enough, the one with the lowest forget accuracy
    (ties: larger retained accuracy, then larger alpha). Accuracies are compared after
    rounding to ``metrics.SCORE_DECIMALS`` decimals, so float noise breaks no tie.
    """
    if not trials:
        raise ValueError("no trials to choose alpha from: score at least one alpha")
    keys = [retain_key] if isinstance(retain_key, str) else list(retain_key)
    missing = {k for t in trials for k in ("alpha", forget_key, *keys) if k not in t}
    if missing:
        raise ValueError(f"trials lack the keys {sorted(missing)}; each needs alpha, {forget_key} and {keys}")
    retained = lambda t: round_score(sum(float(t[k]) for k in keys) / len(keys))
    forget = lambda t: round_score(t[forget_key])
    ok = [t for t in trials if forget(t) <= max_forget]
    if ok:
        best = max(ok, key=lambda t: (retained(t), -forget(t), float(t["alpha"])))
    else:
        best = max(trials, key=lambda t: (-forget(t), retained(t), float(t["alpha"])))
    return float(best["alpha"])
