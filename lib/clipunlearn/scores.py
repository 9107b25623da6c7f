"""The project's two numbers on a run, as pure functions of its metrics (no model, no torch).

* :func:`selection_score` is the one selection criterion (validation retain accuracy
  minus validation forget accuracy, :data:`CRITERION`), rounded to :data:`SCORE_DECIMALS`
  decimals so that float noise decides no choice;
* :func:`unlearning_score` is the aggregate the benchmark reports (paper A's formula is
  not public): the harmonic mean of forgetting and retention against the untouched model.
"""

from __future__ import annotations

import math

__all__ = ["CRITERION", "SCORE_DECIMALS", "SCORE_RETAINED", "round_score", "selection_score", "unlearning_score"]

#: Name of the one selection criterion (see :func:`selection_score`).
CRITERION = "retain_minus_forget"
#: Decimals of every score that selection compares: differences below 1e-4 are ties.
SCORE_DECIMALS = 4
#: What :func:`unlearning_score` counts as retained accuracy.
SCORE_RETAINED = ("sibling_acc", "retain_acc", "other_acc")


def round_score(value: float) -> float:
    """Return ``value`` rounded to :data:`SCORE_DECIMALS` decimals (what selection compares)."""
    return round(float(value), SCORE_DECIMALS)


def selection_score(metrics_: dict) -> float:
    """Return the one selection criterion: ``val_retain_acc - val_forget_acc`` (higher is better).

    Rounded to ``:data:`SCORE_DECIMALS``` decimals so that float noise decides no choice;
    ties go to the earlier evaluated step and the first grid candidate (smaller lr).

    A candidate that forgets by destroying the model loses on retain accuracy; one
    that keeps everything loses on forget accuracy. For subgroup tasks the retain
    side is the mean of the sibling and retain validation accuracies.
    """
    return round_score(metrics_["val_retain_acc"] - metrics_["val_forget_acc"])


def unlearning_score(metrics_: dict, original: dict) -> float | None:
    """Return the project's aggregate score of a run against the untouched model (paper A's formula is not public).

    ``2 F R / (F + R)``, the harmonic mean of forgetting ``F = clip(1 - forget_acc /
    original forget_acc, 0, 1)`` and retention ``R`` = the mean, over ``sibling_acc``,
    ``retain_acc`` and ``other_acc`` (those both have), of ``min(1, acc / original acc)``;
    0 when both are 0. The untouched model scores 0, and so does a model that forgets
    everything. None when a number is missing.
    """
    f, f0 = metrics_.get("forget_acc"), original.get("forget_acc")
    kept = [min(1.0, metrics_[k] / original[k]) for k in SCORE_RETAINED
            if metrics_.get(k) is not None and original.get(k) and math.isfinite(metrics_[k])]
    if f is None or not f0 or not kept or not math.isfinite(f):
        return None
    forgetting = min(1.0, max(0.0, 1.0 - f / f0))
    retention = max(0.0, sum(kept) / len(kept))
    return 0.0 if forgetting + retention == 0 else 2 * forgetting * retention / (forgetting + retention)
