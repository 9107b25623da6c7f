"""Notebook 45's statements: relearning, probe and quantisation attacks on every method, against the retrained model.

Checked by :func:`check_attacks` (``findings.CHECKS["45_attacks"]``) on the attack records of
``papers.attacks_bench``.
"""

from __future__ import annotations

from typing import Sequence

from .finding import Finding, add_finding as _add
from .registry import REFERENCES

__all__ = ["attack_means", "attack_statements", "check_attacks"]


def check_attacks(records: Sequence[dict], *, quick: bool = False) -> list[Finding]:
    """Notebook 45: relearning, probe and quantisation attacks on every method, against the retrained model."""
    out: list[Finding] = []
    attacked = [r for r in records if r["task"] == "attacks"]
    values = [v for r in attacked for k, v in r["metrics"].items() if k.endswith("_acc") and not k.startswith("gap/")]
    ref_gaps = [v for r in attacked if r["method"] == "retrain" for k, v in r["metrics"].items()
                if k.startswith("gap/")]
    rebuilt = [r for r in attacked if "recorded_forget_acc" in r["metrics"]]
    drift = {}  # largest |rebuilt - recorded| forget accuracy per task
    for r in rebuilt:
        k, m = r["config"]["run_task"], r["metrics"]
        drift[k] = max(drift.get(k, 0.0), abs(m["regenerated_forget_acc"] - m["recorded_forget_acc"]))
    _add(out, "0", "every accuracy lies in [0, 1], the retrained model's gaps are 0 and every attacked run, rebuilt "
         "from its benchmark record, reproduces its recorded forget accuracy (within 1e-4) on every task",
         values and all(0.0 <= v <= 1.0 for v in values) and ref_gaps and all(g == 0.0 for g in ref_gaps)
         and rebuilt and all(r["metrics"].get("regenerated_matches") for r in rebuilt),
         records=len(attacked), rebuilt=len(rebuilt), **{f"drift {k}": v for k, v in drift.items()})
    if quick:
        return out
    out += attack_statements(attacked)
    return out


def attack_means(attacked: Sequence[dict], metric: str) -> dict[tuple[str, str], float]:
    """Return ``{(method, benchmark task): mean over seeds}`` of ``metric`` in the attack records."""
    out: dict = {}
    for r in attacked:
        if r["metrics"].get(metric) is not None:
            out.setdefault((r["method"], r["config"]["run_task"]), []).append(float(r["metrics"][metric]))
    return {k: sum(v) / len(v) for k, v in out.items()}


def attack_statements(attacked: Sequence[dict]) -> list[Finding]:
    """The full-mode statements of notebook 45 on its attack records."""
    out: list[Finding] = []
    fp32, bf16, int8 = (attack_means(attacked, f"quantise_weights/{p}/forget_acc") for p in ("fp32", "bf16", "int8"))
    shift = max(abs(q[k] - fp32[k]) for q in (bf16, int8) for k in fp32)
    _add(out, "1", "quantisation brings nothing back: bf16 weights and int8 linear layers move no model's forget "
         "accuracy by more than 0.05", shift <= 0.05, largest_shift=shift)
    probe = attack_means(attacked, "probe_features/forget_acc")
    ref_probe = {k: v for k, v in probe.items() if k[0] == "retrain"}
    _add(out, "2", "the image features of the retrained model still separate the forget class (its probe finds at "
         "least half the forget test images): the probe's gap to retrain, not its level, is the measure",
         ref_probe and min(ref_probe.values()) >= 0.5, **{k[1]: v for k, v in ref_probe.items()})
    task = "forget-class"
    gap = lambda metric: attack_means(attacked, f"gap/{metric}")  # noqa: E731
    forgot = sorted(m for (m, k), v in fp32.items() if k == task and m not in REFERENCES and v <= 0.1)
    probe_gap = gap("probe_features/forget_acc")
    _add(out, "3", "every method that forgets the sneaker at the output (zero-shot forget accuracy <= 0.1) keeps it in "
         "its image features: its probe finds more than 0.1 of the forget test images beyond the retrained model's",
         forgot and all(probe_gap[(m, task)] > 0.1 for m in forgot), **{m: probe_gap[(m, task)] for m in forgot})
    benign = gap("relearn_retain/100/forget_acc")
    ascent, steady = ("ga", "graddiff", "neggrad_plus"), ("ft", "random_labels", "nullspace")
    # no bound on the steady methods' gap: one run's 100-step number moves by up to 0.19 with the summation order
    # (one thread or two), so an absolute bound of a few hundredths claims more than this attack measures
    _add(out, "4", "100 steps of fine-tuning on retain pairs only bring more of the sneaker back (mean gap to retrain) "
         "in GA and in GradDiff than in FT, random labels and the nullspace projection; the retrained model stays "
         "at 0",
         min(benign.get((m, task), 0.0) for m in ascent[:2]) > max(benign.get((m, task), 1.0) for m in steady)
         and attack_means(attacked, "relearn_retain/100/forget_acc").get(("retrain", task)) == 0.0,
         **{m: benign.get((m, task), float("nan")) for m in (*ascent, *steady, "cliperase")})
    targeted = gap("relearn_forget/n20/30/forget_acc")
    _add(out, "5", "targeted relearning on 20 unseen sneaker photos for 30 steps brings back nothing beyond the "
         "retrained model in any method that forgot (gap at most 0.05)",
         forgot and all(targeted[(m, task)] <= 0.05 for m in forgot), **{m: targeted[(m, task)] for m in forgot})
    sub = "forget-subgroup"
    forgot_sub = sorted(m for (m, k), v in fp32.items() if k == sub and m not in REFERENCES and v <= 0.1)
    _add(out, "6", "on the sandal too, every method that forgets it at the output (zero-shot forget accuracy <= 0.1) "
         "keeps more of it in its image features than the retrained model: its probe finds more of the forget test "
         "images (a positive gap)", forgot_sub and all(probe_gap[(m, sub)] > 0.0 for m in forgot_sub),
         **{m: probe_gap[(m, sub)] for m in forgot_sub})
    style = "forget-style-subgroup"
    forgot_style = sorted(m for (m, k), v in fp32.items() if k == style and m not in REFERENCES and v <= 0.1)
    back = [m for m in forgot_style if m != "neggrad_plus"]
    _add(out, "7", "on the style subgroup, 100 benign steps (retain pairs only, sneaker photos among them) bring the "
         "sketches back beyond the retrained model (gap above 0.1) for every method that forgot them (zero-shot <= "
         "0.1) except NegGrad+, which comes back the least",
         back and all(benign[(m, style)] > 0.1 for m in back)
         and ("neggrad_plus" not in forgot_style
              or benign[("neggrad_plus", style)] == min(benign[(m, style)] for m in forgot_style)),
         **{m: benign[(m, style)] for m in forgot_style})
    return out
