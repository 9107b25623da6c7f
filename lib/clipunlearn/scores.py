"""The project's two numbers on a run, as pure functions of its metrics (no model, no torch).

* :func:`selection_score` is the one selection criterion (validation retain accuracy
  minus validation forget accuracy, :data:`CRITERION`), rounded to :data:`SCORE_DECIMALS`
  decimals so that float noise decides no choice;
* :func:`unlearning_score` is the aggregate the benchmark reports (paper A's formula is
  not public): the harmonic mean of forgetting and retention against the untouched model;
* :func:`gap_to_retrain` is the unlearning literature's "average gap" to the retrained gold standard;
* :func:`mia_advantage` is a membership-inference AUC as its distance from chance, with the AUC's
  standard error (Hanley and McNeil, 1982).
"""

from __future__ import annotations

import math

__all__ = ["CRITERION", "GAP_METRICS", "SCORE_DECIMALS", "SCORE_RETAINED", "auc_standard_error", "gap_to_retrain",
           "mia_advantage", "round_score", "score_components", "selection_score", "unlearning_score"]

#: Name of the one selection criterion (see :func:`selection_score`).
CRITERION = "retain_minus_forget"
#: Decimals of every score that selection compares: differences below 1e-4 are ties.
SCORE_DECIMALS = 4
#: What :func:`unlearning_score` counts as retained accuracy: the siblings, the other classes, the other
#: classes in the other styles and the forgotten class in the other styles (which the retrained model keeps).
SCORE_RETAINED = ("sibling_acc", "retain_acc", "other_acc", "other_forget_acc")
#: What :func:`gap_to_retrain` averages: the forget, sibling and retain accuracies and the other styles' ones
#: (the other classes, and the forgotten class, in the other styles).
GAP_METRICS = ("forget_acc", "sibling_acc", "retain_acc", "other_acc", "other_forget_acc")


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


def score_components(metrics_: dict, original: dict) -> dict | None:
    """Return the parts of :func:`unlearning_score`: ``score_forgetting`` ``F = clip(1 - forget_acc /
    original forget_acc, 0, 1)``, ``score_retention`` ``R`` (the mean over :data:`SCORE_RETAINED`, those both
    have, of ``min(1, acc / original acc)``) and ``score_retention_uncapped`` (the same mean without the cap:
    above 1 when a run gains accuracy somewhere). None when a number is missing."""
    f, f0 = metrics_.get("forget_acc"), original.get("forget_acc")
    ratios = [metrics_[k] / original[k] for k in SCORE_RETAINED
              if metrics_.get(k) is not None and original.get(k) and math.isfinite(metrics_[k])]
    if f is None or not f0 or not ratios or not math.isfinite(f):
        return None
    return {"score_forgetting": min(1.0, max(0.0, 1.0 - f / f0)),
            "score_retention": max(0.0, sum(min(1.0, r) for r in ratios) / len(ratios)),
            "score_retention_uncapped": max(0.0, sum(ratios) / len(ratios))}


def unlearning_score(metrics_: dict, original: dict) -> float | None:
    """Return the project's aggregate score of a run against the untouched model (paper A's formula is not public).

    ``2 F R / (F + R)``, the harmonic mean of forgetting ``F`` and retention ``R`` of
    :func:`score_components` (``R`` counts the forgotten class in the other styles too); 0 when both are 0.
    The untouched model scores 0, and so does a model that forgets everything. None when a number is missing.
    """
    parts = score_components(metrics_, original)
    if parts is None:
        return None
    forgetting, retention = parts["score_forgetting"], parts["score_retention"]
    return 0.0 if forgetting + retention == 0 else 2 * forgetting * retention / (forgetting + retention)


def gap_to_retrain(metrics_: dict, retrain: dict) -> float | None:
    """Return the mean absolute difference to the retrained model over :data:`GAP_METRICS` (those both have).

    The "average gap" of the unlearning literature: 0 means the run's accuracies are the gold standard's.
    None when the two share no finite accuracy.
    """
    gaps = [abs(metrics_[k] - retrain[k]) for k in GAP_METRICS
            if metrics_.get(k) is not None and retrain.get(k) is not None
            and math.isfinite(metrics_[k]) and math.isfinite(retrain[k])]
    return sum(gaps) / len(gaps) if gaps else None


def auc_standard_error(auc: float, n_positive: int, n_negative: int) -> float:
    """Return the standard error of an ROC AUC from ``n_positive`` and ``n_negative`` samples.

    Hanley and McNeil (1982): ``Q1 = A / (2 - A)``, ``Q2 = 2 A^2 / (1 + A)``,
    ``SE^2 = (A (1 - A) + (n_pos - 1)(Q1 - A^2) + (n_neg - 1)(Q2 - A^2)) / (n_pos n_neg)``.
    """
    if n_positive < 1 or n_negative < 1:
        raise ValueError(f"an AUC needs samples on both sides, got {n_positive} and {n_negative}")
    a = float(auc)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_positive - 1) * (q1 - a * a) + (n_negative - 1) * (q2 - a * a)) / (n_positive * n_negative)
    return math.sqrt(max(var, 0.0))


def mia_advantage(auc: float, n_positive: int, n_negative: int) -> dict:
    """Return ``{"mia_advantage": |AUC - 0.5|, "mia_se": its standard error}`` (:func:`auc_standard_error`).

    0 means the attack cannot tell members from non-members; an advantage within about two standard errors
    of 0 is no evidence of memorisation.
    """
    return {"mia_advantage": abs(float(auc) - 0.5), "mia_se": auc_standard_error(auc, n_positive, n_negative)}
