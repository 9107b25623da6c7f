"""The statements of the notebooks' "What this shows", each checked on a notebook's records.

One function per notebook (:data:`CHECKS`), called by the notebook's assert cell and by
``benchmarks/robustness.py`` on the records of independently retrained mini models, so a
notebook asserts exactly what the robustness table reports. Each returns a list of
:class:`Finding`: the statement, whether it holds, and the numbers it compared. The
statements are about the mini profile; ``quick`` (the CI run: one seed, tiny settings)
checks looser bars and skips the full-mode statements.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from .attack_findings import check_attacks
from .benchmark import summary_table
from .finding import Finding, add_finding as _add
from .papers.paper_a import with_other_all
from .registry import REFERENCES
from .report import oracle_table, summarise
from .results import load_records
from .synthetic_prior import PRIOR_VARIANT, split_priors

__all__ = ["Finding", "CHECKS", "check_notebook", "check_results_dir", "assert_findings", "findings_frame"]


def _frame(records, task, metrics, by=("method",)):
    return summarise(records, task=task, numeric=True, metrics=metrics, by=by)


# --------------------------------------------------------------------------- #
# One function per notebook
# --------------------------------------------------------------------------- #
def check_cliperase(records: Sequence[dict], *, quick: bool = False) -> list[Finding]:
    """Notebook 10: CLIPErase and the baselines on forget-one-class, the forget ratio, the module ablation."""
    out: list[Finding] = []
    frame = _frame(records, "forget-class", ["forget_acc", "retain_acc", "other_acc", "other_forget_acc", "mia"])
    frame = frame.drop(index="retrain", errors="ignore")  # the gold standard, statement 7
    original, ours = frame.loc["original"], frame.loc["cliperase"]
    forget_bar, retain_drop = (0.30, 0.10) if quick else (0.01, 0.02)
    _add(out, "1", f"CLIPErase forgets the class (forget accuracy <= {forget_bar})", ours.forget_acc <= forget_bar,
         cliperase=ours.forget_acc, original=original.forget_acc)
    _add(out, "1", f"CLIPErase keeps retain accuracy within {retain_drop:.2f} of the original's",
         original.retain_acc - ours.retain_acc <= retain_drop, cliperase=ours.retain_acc,
         original=original.retain_acc)
    baselines = [m for m in ("ga", "graddiff", "neggrad_plus", "random_labels") if m in frame.index]
    _add(out, "1", "every baseline with a forget term lowers forget accuracy below the original's",
         all(frame.loc[m, "forget_acc"] < original.forget_acc for m in baselines),
         **{m: frame.loc[m, "forget_acc"] for m in baselines}, original=original.forget_acc)
    if quick:
        return out
    forgetting = [m for m in frame.index if m not in REFERENCES and frame.loc[m, "forget_acc"] <= 0.01]
    best = max(forgetting, key=lambda m: frame.loc[m, "retain_acc"]) if forgetting else ""
    _add(out, "2", "among the methods that forget (forget accuracy <= 0.01), CLIPErase keeps the most retain "
         "accuracy", best == "cliperase", best=best, **{m: frame.loc[m, "retain_acc"] for m in forgetting})
    _add(out, "3", "FT (retain photos only) loses more than 0.2 of the other styles' accuracy",
         frame.loc["ft", "other_acc"] < original.other_acc - 0.2, ft=frame.loc["ft", "other_acc"],
         original=original.other_acc)
    _add(out, "3", "GA leaves at least 0.3 of the forgotten class recognisable in the other styles "
         "(other_forget_acc)", frame.loc["ga", "other_forget_acc"] >= 0.3,
         ga=frame.loc["ga", "other_forget_acc"], cliperase=ours.other_forget_acc)
    ratio = _frame(records, "forget-ratio", ["forget_acc", "retain_acc"], by=("forget_ratio", "method"))
    top = max(r for r, _ in ratio.index)
    _add(out, "4", f"with {top:.0%} of the classes forgotten at once (drawn per seed, steps per class, lr selected "
         "per ratio), CLIPErase still forgets (forget accuracy <= 0.05)", ratio.loc[(top, "cliperase"), "forget_acc"]
         <= 0.05, cliperase=ratio.loc[(top, "cliperase"), "forget_acc"])
    kept = ratio.loc[(top, "cliperase"), "retain_acc"]
    _add(out, "4", "... and GA keeps at least 0.1 less retain accuracy than CLIPErase",
         ratio.loc[(top, "ga"), "retain_acc"] < kept - 0.1, ga=ratio.loc[(top, "ga"), "retain_acc"], cliperase=kept)
    abl = _frame(records, "ablation", ["forget_acc", "retain_acc", "other_acc"], by=("variant",))
    _add(out, "5", "FM alone already forgets (forget accuracy <= 0.01)", abl.loc["FM", "forget_acc"] <= 0.01,
         fm=abl.loc["FM", "forget_acc"])
    _add(out, "5", "the full method (FM+RM+CM) keeps the most retain accuracy of the three variants, every variant "
         "at its own selected learning rate", abl.loc["FM+RM+CM", "retain_acc"] > max(
             abl.loc["FM", "retain_acc"], abl.loc["FM+RM", "retain_acc"]),
         **{v: abl.loc[v, "retain_acc"] for v in ("FM", "FM+RM", "FM+RM+CM")})
    _add(out, "5", "with CM the other styles keep their accuracy (within 0.05 of the original's), at least as much "
         "as RM without CM keeps", abl.loc["FM+RM+CM", "other_acc"] >= abl.loc["FM+RM", "other_acc"]
         and abl.loc["FM+RM+CM", "other_acc"] >= original.other_acc - 0.05,
         fm_rm=abl.loc["FM+RM", "other_acc"], full=abl.loc["FM+RM+CM", "other_acc"], original=original.other_acc)
    adv = _frame(records, "forget-class", ["mia_advantage", "mia_se"])
    _add(out, "6", "the loss attack's advantage |AUC - 0.5| stays within two standard errors of chance for every "
         "method, the original and the retrained model", (adv["mia_advantage"] <= 2 * adv["mia_se"]).all(),
         highest=adv["mia_advantage"].max(), two_se=2 * adv["mia_se"].max())
    sneaker = _frame([r for r in records if r["config"].get("forget_class") == "sneaker"], "forget-class",
                     ["forget_acc", "retain_acc", "other_forget_acc", "gap_retrain", "js_retrain", "mia_efficacy"])
    if "retrain" not in sneaker.index:
        return out
    ref = sneaker.loc["retrain"]
    _add(out, "7", "the retrained model (never saw a sneaker photo) recognises no sneaker photo (forget accuracy "
         "<= 0.01) but at least 0.9 of the sneakers in the other styles, and keeps at least the original's retain "
         "accuracy", ref.forget_acc <= 0.01 and ref.other_forget_acc >= 0.9
         and ref.retain_acc >= sneaker.loc["original", "retain_acc"],
         forget=ref.forget_acc, other_forget=ref.other_forget_acc, retain=ref.retain_acc)
    methods = [m for m in sneaker.index if m not in REFERENCES]
    ascent = [m for m in ("ga", "graddiff") if m in methods]
    far = [m for m in ("ft", "random_labels", "neggrad_plus") if m in methods]
    _add(out, "7", "GA and GradDiff are both closer to the retrained model on sneaker than FT, random labels and "
         "NegGrad+ (gap to retrain)", ascent and far and max(sneaker.loc[ascent, "gap_retrain"])
         < min(sneaker.loc[far, "gap_retrain"]), **{m: sneaker.loc[m, "gap_retrain"] for m in methods})
    _add(out, "7", "FT, which erases the class in every style, is the farthest (gap >= 0.3)",
         sneaker.loc["ft", "gap_retrain"] >= 0.3 and sneaker.loc[methods, "gap_retrain"].idxmax() == "ft",
         ft=sneaker.loc["ft", "gap_retrain"], random_labels=sneaker.loc["random_labels", "gap_retrain"])
    _add(out, "8", "the entropy attack separates what the loss attack cannot: random labels' forget photos look "
         "far less like members than the retrained model's (MIA-efficacy at least 0.3 above it)",
         sneaker.loc["random_labels", "mia_efficacy"] >= ref.mia_efficacy + 0.3,
         random_labels=sneaker.loc["random_labels", "mia_efficacy"], retrain=ref.mia_efficacy)
    return out


def check_synthetic_lipschitz(records: Sequence[dict], *, quick: bool = False) -> list[Finding]:
    """Notebook 20: paper B's data-free forgetting, its selection and the oracle; the data-free comparison."""
    out: list[Finding] = []
    records = split_priors(records)  # the BatchNorm-prior runs apart from paper B's
    frame = _frame(records, "forget-class", ["forget_acc", "retain_acc", "stop_acc"])
    original, ours = frame.loc["original"], frame.loc["lipschitz_synthetic"]
    drop = 0.10 if quick else 0.06
    stops = [r["metrics"]["stop_acc"] for r in records
             if r["method"] == "lipschitz_synthetic" and r["task"] == "forget-class"]
    met = sum(v <= 0.1 + 1e-6 for v in stops)
    _add(out, "1", "the synthetic forget set is forgotten (synthetic accuracy <= 0.1, the stop rule) in all runs "
         "but at most one", met >= len(stops) - 1, met=f"{met}/{len(stops)}", worst=max(stops, default=math.nan))
    _add(out, "1", f"the other classes lose at most {drop:.2f} of their accuracy",
         original.retain_acc - ours.retain_acc <= drop, synthetic=ours.retain_acc, original=original.retain_acc)
    _add(out, "1", "no record of the data-free method was selected with real forget images",
         all(r["config"].get("data_free") for r in records
             if r["method"] == "lipschitz_synthetic" and r["task"] == "forget-class"))
    if quick:
        return out
    per_class = _frame(records, "forget-class", ["forget_acc"], by=("method", "forget_class"))["forget_acc"]
    syn = per_class.loc["lipschitz_synthetic"]
    _add(out, "2", "with synthetic images only, how much of the real class is forgotten depends on the class: the "
         "classes' real forget accuracies differ by more than 0.3", len(syn) > 1 and syn.max() - syn.min() > 0.3,
         synthetic=ours.forget_acc, **{c: v for c, v in syn.items()})
    oracle = oracle_table(list(records), method="lipschitz_synthetic")
    grid = next(r["config"]["grid"]["lr"] for r in records
                if r["method"] == "lipschitz_synthetic" and r["task"] == "forget-class")
    smaller = int((oracle["lr (criterion)"] < oracle["lr (oracle)"]).sum())
    _add(out, "3", "the data-free selection never picks a larger learning rate than an oracle on real forget "
         "images", (oracle["lr (criterion)"] <= oracle["lr (oracle)"]).all(),
         smaller=f"{smaller}/{len(oracle)}", smallest_in_grid=min(grid))
    _add(out, "3", "... and forget the class (forget accuracy <= 0.05)", (oracle["forget_acc (oracle)"] <= 0.05).all(),
         worst=oracle["forget_acc (oracle)"].max())
    abl = [r for r in records if r["task"] == "ablation" and r["method"] == "lipschitz_synthetic"]
    sigma2 = [r["metrics"]["forget_acc"] for r in abl if r["config"].get("ablation") == "sigma"
              and r["config"].get("value") == 2.0]
    others = [r["metrics"]["forget_acc"] for r in abl if r["config"]["selective"] and not (
        r["config"].get("ablation") == "sigma" and r["config"].get("value") == 2.0)]
    every = [r["metrics"]["retain_acc"] for r in abl if not r["config"]["selective"]]
    _add(out, "5", "on the ablation's class and seed, a constant sigma of 2 leaves more than half of the real images "
         "recognised (forget accuracy > 0.5)", bool(sigma2) and min(sigma2) > 0.5,
         sigma_2=min(sigma2, default=math.nan), others_highest=max(others, default=math.nan))
    _add(out, "5", "updating every tensor instead of the top-k collapses the model (retain accuracy < 0.3)",
         bool(every) and max(every) < 0.3, retain=max(every, default=math.nan))
    sneaker = _frame([r for r in records if r["config"].get("forget_class") == "sneaker"], "forget-class",
                     ["gap_retrain"])
    if "retrain" in sneaker.index and "gap_retrain" in sneaker.columns:  # records with the retrained reference
        sneaker = sneaker["gap_retrain"]
        _add(out, "6", "on sneaker, the real-image variant is closer to the retrained model than the synthetic one "
             "(gap to retrain)", sneaker["lipschitz_real"] < sneaker["lipschitz_synthetic"],
             real=sneaker["lipschitz_real"], synthetic=sneaker["lipschitz_synthetic"])
    out += _check_datafree(records)
    return out


def _check_datafree(records: Sequence[dict]) -> list[Finding]:
    """Notebook 20's data-free comparison (records already split by prior): closeness, forgetting, nullspace."""
    out: list[Finding] = []
    runs = {m: {(r["config"]["forget_class"], r["config"]["seed"]): r["metrics"] for r in records
                if r["method"] == m and r["task"] == "forget-class"} for m in ("lipschitz_synthetic", PRIOR_VARIANT,
                                                                                "nullspace", "original")}
    none, bn, null = runs["lipschitz_synthetic"], runs[PRIOR_VARIANT], runs["nullspace"]
    if not bn or not all("syn_stats_distance" in m for m in [*none.values(), *bn.values()]):
        return out
    paired = sorted(set(none) & set(bn))
    _add(out, "7", "by their BatchNorm feature statistics paper B's synthetic images are farther from real images "
         "of the class than real images of the other classes are, in every run",
         all(none[k]["syn_stats_distance"] > none[k]["other_stats_distance"] for k in none),
         synthetic=_mean(m["syn_stats_distance"] for m in none.values()),
         other_classes=_mean(m["other_stats_distance"] for m in none.values()),
         real_floor=_mean(m["real_stats_distance"] for m in none.values()))
    _add(out, "7", "the BatchNorm prior brings them closer (a smaller mean statistics distance)",
         bool(paired) and _mean(bn[k]["syn_stats_distance"] for k in paired)
         < _mean(none[k]["syn_stats_distance"] for k in paired),
         prior=_mean(bn[k]["syn_stats_distance"] for k in paired),
         none=_mean(none[k]["syn_stats_distance"] for k in paired))
    _add(out, "8", "paper B's synthetic images already carry the class in the model's image features: a linear probe "
         "trained on real image features assigns most of them to it (mean share >= 0.5)",
         _mean(m["syn_probe_acc"] for m in none.values()) >= 0.5,
         share=_mean(m["syn_probe_acc"] for m in none.values()))
    _add(out, "8", "the hypothesis does not hold: forgetting on the prior's images, closer by their statistics, leaves "
         "more of the real class recognised than forgetting on paper B's images, not less (mean forget accuracy)",
         bool(paired) and _mean(bn[k]["forget_acc"] for k in paired) > _mean(none[k]["forget_acc"] for k in paired),
         prior=_mean(bn[k]["forget_acc"] for k in paired), none=_mean(none[k]["forget_acc"] for k in paired))
    if null:
        original = _mean(m["retain_acc"] for m in runs["original"].values())
        _add(out, "9", "the nullspace projection forgets every class (forget accuracy <= 0.05 in every run) and keeps "
             "the retain accuracy within 0.02 of the original's",
             all(m["forget_acc"] <= 0.05 for m in null.values())
             and _mean(m["retain_acc"] for m in null.values()) >= original - 0.02,
             forget=_mean(m["forget_acc"] for m in null.values()), retain=_mean(m["retain_acc"] for m in null.values()),
             original_retain=original)
        _add(out, "9", "the nullspace projection, its strength selected on synthetic images only, costs under a second",
             all(m["seconds"] < 1.0 for m in null.values()), slowest=max(m["seconds"] for m in null.values()),
             forget=_mean(m["forget_acc"] for m in null.values()), retain=_mean(m["retain_acc"] for m in null.values()),
             original_retain=original)
    return out


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


def check_subgroup_forgetting(records: Sequence[dict], *, quick: bool = False) -> list[Finding]:
    """Notebook 30: paper A's three stages on the sandal and the sketch-sneaker subgroups."""
    out: list[Finding] = []
    sub = _frame(records, "forget-subgroup", ["forget_acc", "sibling_acc", "retain_acc", "coarse_forget_acc"])
    ours, original = sub.loc["three_stage"], sub.loc["original"]
    keep_drop, other_drop = (0.10, 0.10) if quick else (0.03, 0.08)
    runs = [r for r in records if "three_stage" in r]
    _add(out, "0", "every souped three-stage run chose alpha on its calibration images",
         bool(runs) and all(r["three_stage"]["alpha_curve"] for r in runs if r["config"]["soup"]))
    _add(out, "1", "three-stage lowers the sandal's accuracy", ours.forget_acc < original.forget_acc,
         three_stage=ours.forget_acc, original=original.forget_acc)
    if quick:  # the CI smoke run (shipped model, one seed): the target is met
        _add(out, "1", "sandal forgotten (forget accuracy <= 0.3)", ours.forget_acc <= 0.3, three_stage=ours.forget_acc)
        _add(out, "1", f"sandal's siblings kept (within {keep_drop})",
             original.sibling_acc - ours.sibling_acc <= keep_drop,
             three_stage=ours.sibling_acc, original=original.sibling_acc)
    _add(out, "1", f"other classes lose at most {other_drop}", original.retain_acc - ours.retain_acc <= other_drop,
         three_stage=ours.retain_acc, original=original.retain_acc)
    for method, label in (("ga", "GA"), ("cliperase", "CLIPErase")):
        if method in sub.index:
            _add(out, "4", f"{label} lowers the sandal's accuracy",
                 sub.loc[method, "forget_acc"] < original.forget_acc,
                 **{method: sub.loc[method, "forget_acc"]}, original=original.forget_acc)
    has_style = any(r.get("task") == "forget-style-subgroup" for r in records)
    if has_style:
        style = _frame(with_other_all(records), "forget-style-subgroup",
                       ["forget_acc", "sibling_acc", "other_all_acc"])
        st, so = style.loc["three_stage"], style.loc["original"]
        _add(out, "3", "three-stage lowers the sketches' accuracy", st.forget_acc < so.forget_acc,
             three_stage=st.forget_acc, original=so.forget_acc)
    if quick:
        return out
    style_runs = [r for r in records if r.get("task") == "forget-style-subgroup" and r["method"] == "three_stage"]
    _add(out, "3", "every style-subgroup run of three-stage says whether restoring fell back to the unlearned model",
         bool(style_runs) and all("soup_fallback" in r["metrics"] for r in style_runs),
         **{f"alpha seed {r['config']['seed']}": r["metrics"].get("alpha") for r in style_runs})
    for task, label in (("ablation", "sandal"), ("ablation-style", "style subgroup")):
        variants = set(_frame(records, task, ["unlearning_score"], by=("variant",)).index)
        _add(out, "2", f"paper A's ablations ran on the {label}, every part switched off once",
             {"full", "no_fisher_all", "no_align", "no_distill", "no_soup", "no_lora"} <= variants,
             variants=", ".join(sorted(variants)))
    if not quick:
        _check_stage_ranking(out, records)
    if "retrain" in style.index:
        _add(out, "5", "the model retrained without sneaker sketches still names at least 0.3 of them sneakers, more "
             "than the three stages leave: forgetting them goes further than retraining does",
             style.loc["retrain", "forget_acc"] >= 0.3 and st.forget_acc < style.loc["retrain", "forget_acc"],
             retrain=style.loc["retrain", "forget_acc"], three_stage=st.forget_acc)
    return out


def _check_stage_ranking(out: list, records: Sequence[dict]) -> None:
    """Notebook 30's "which stage matters most" on the style subgroup: the part whose removal costs most. (On the
    sandal no ranking holds on every trained model: on one the three stages barely forget it at all.)"""
    parts = ("no_fisher_all", "no_align", "no_distill", "no_soup", "no_lora")
    sandal = _frame(records, "ablation", ["forget_acc", "other_acc"], by=("variant",))
    style = _frame(records, "ablation-style", ["forget_acc", "other_acc"], by=("variant",))
    if not (set(parts) | {"full"}) <= set(sandal.index) & set(style.index):
        return
    rise = style.loc[list(parts), "forget_acc"] - style.loc["full", "forget_acc"]
    _add(out, "2", "on the style subgroup how the forgetting stage tunes matters most: switching off the "
         "relative-Fisher layer selection or LoRA leaves the most sketches recognised (the largest rise of forget "
         "accuracy of any part)", rise.idxmax() in ("no_fisher_all", "no_lora"), most=rise.idxmax(),
         rise=rise.max(), no_fisher_all=rise["no_fisher_all"], no_lora=rise["no_lora"], no_align=rise["no_align"])


def check_benchmark(records: Sequence[dict], *, quick: bool = False) -> list[Finding]:
    """Notebook 40: every method on every task kind, by the one unlearning score."""
    out: list[Finding] = []
    records = split_priors(records)  # the BatchNorm-prior runs apart from paper B's
    tasks = [k for k in ("forget-class", "forget-subgroup", "forget-style-subgroup")
             if any(r["task"] == k for r in records)]
    # the trained methods' statements; the data-free comparison (BatchNorm prior, nullspace) is notebook 20's
    present = sorted({r["method"] for r in records if r["task"] in tasks} - set(REFERENCES)
                     - {PRIOR_VARIANT, "nullspace"})
    numeric = summary_table(records, tasks=tasks, methods=present, numeric=True)
    # the benchmark's methods: those run on every task (lipschitz_real, reused from notebook 20, is not)
    methods = [m for m in present if all(numeric.loc[m, (k, "score")] == numeric.loc[m, (k, "score")] for k in tasks)]
    score = lambda m, k: numeric.loc[m, (k, "score")]  # noqa: E731
    scores = {f"{m}@{k}": score(m, k) for k in tasks for m in methods}
    _add(out, "0", "every score lies in [0, 1]", all(0.0 <= v <= 1.0 for v in scores.values()))
    if quick:
        return out
    ranked = {k: sorted(methods, key=lambda m: -score(m, k)) for k in tasks}
    subgroups = ("forget-subgroup", "forget-style-subgroup")
    _add(out, "1", "CLIPErase scores at least 0.97 on both subgroup tasks",
         all(score("cliperase", k) >= 0.97 for k in subgroups), **{k: score("cliperase", k) for k in subgroups})
    _add(out, "2", "on the class task, where the score counts the forgotten class in the other styles, the highest "
         "score goes to a method that keeps it there (the three stages or GA), not to CLIPErase",
         ranked["forget-class"][0] in ("three_stage", "ga"), first=ranked["forget-class"][0],
         second=ranked["forget-class"][1], ga=score("ga", "forget-class"),
         three_stage=score("three_stage", "forget-class"), cliperase=score("cliperase", "forget-class"))
    _add(out, "3", "on the style subgroup CLIPErase is first (at least 0.97)",
         ranked["forget-style-subgroup"][0] == "cliperase" and score("cliperase", "forget-style-subgroup") >= 0.97,
         first=ranked["forget-style-subgroup"][0], second=ranked["forget-style-subgroup"][1],
         second_score=score(ranked["forget-style-subgroup"][1], "forget-style-subgroup"))
    _add(out, "4", "FT scores lowest on the class task (at most 0.7) and on the style subgroup",
         ranked["forget-class"][-1] == "ft" and ranked["forget-style-subgroup"][-1] == "ft"
         and score("ft", "forget-class") <= 0.7, ft_class=score("ft", "forget-class"),
         ft_subgroup=score("ft", "forget-subgroup"), ft_style=score("ft", "forget-style-subgroup"))
    _check_nullspace(out, records)
    if "retrain" in numeric.index:
        ref = {k: numeric.loc["retrain", (k, "score")] for k in tasks}
        _add(out, "5", "the retrained gold standard scores at least 0.99 on the class and class-subgroup tasks but "
             "below 0.8 on the style subgroup, where it still recognises part of the sketches",
             ref["forget-class"] >= 0.99 and ref["forget-subgroup"] >= 0.99 and ref["forget-style-subgroup"] < 0.8,
             **ref)
    return out


def _check_nullspace(out: list, records: Sequence[dict]) -> None:
    """Notebook 40's data-free baseline: close to the retrained model on the sandal, an eraser on the class."""
    sub = _frame(records, "forget-subgroup", ["gap_retrain"])
    cls = _frame(records, "forget-class", ["forget_acc", "other_forget_acc", "gap_retrain"])
    if "nullspace" not in sub.index or "nullspace" not in cls.index:
        return
    others = sub.drop(index=[m for m in ("nullspace", *REFERENCES) if m in sub.index])["gap_retrain"]
    _add(out, "6", "the nullspace projection (data-free, no training) comes within 0.03 of the retrained model on "
         "the class subgroup (gap to retrain), but on the class task it erases the class in every style "
         "(other-style forget accuracy <= 0.05, where the retrained model keeps it)",
         sub.loc["nullspace", "gap_retrain"] <= 0.03 and cls.loc["nullspace", "other_forget_acc"] <= 0.05
         and cls.loc["nullspace", "forget_acc"] <= 0.05, gap_subgroup=sub.loc["nullspace", "gap_retrain"],
         next_best=others.min(), other_forget_class=cls.loc["nullspace", "other_forget_acc"],
         gap_class=cls.loc["nullspace", "gap_retrain"])


#: Notebook stem -> its check. ``benchmarks/robustness.py`` evaluates every entry.
CHECKS = {
    "10_cliperase": check_cliperase,
    "20_synthetic_lipschitz": check_synthetic_lipschitz,
    "30_subgroup_forgetting": check_subgroup_forgetting,
    "40_benchmark": check_benchmark,
    "45_attacks": check_attacks,
}


def check_notebook(stem: str, records: Sequence[dict], *, quick: bool = False) -> list[Finding]:
    """Return the checked statements of notebook ``stem`` (a key of :data:`CHECKS`) on ``records``."""
    if stem not in CHECKS:
        raise ValueError(f"no statements registered for {stem!r}; notebooks with statements: {', '.join(CHECKS)}")
    return CHECKS[stem](list(records), quick=quick)


def check_results_dir(results_dir, *, quick: bool = False) -> dict[str, list[Finding]]:
    """Return ``{stem: findings}`` for every notebook of :data:`CHECKS` with a results file in ``results_dir``."""
    out = {}
    for stem in CHECKS:
        path = Path(results_dir) / f"{stem}.json"
        if path.exists():
            out[stem] = check_notebook(stem, load_records(path), quick=quick)
    return out


def findings_frame(findings: Sequence[Finding]):
    """Return the findings as a pandas DataFrame (statement, holds, values), for display."""
    return pd.DataFrame([{"#": f.key, "statement": f.statement, "holds": f.holds,
                          "values": ", ".join(f"{k}={v:.3f}" if isinstance(v, float) and math.isfinite(v)
                                              else f"{k}={v}" for k, v in f.values.items())}
                         for f in findings])


def assert_findings(findings: Sequence[Finding]) -> None:
    """Raise an AssertionError listing every statement that does not hold (with its numbers)."""
    failing = [f for f in findings if not f.holds]
    if failing:
        raise AssertionError("statements that do not hold:\n" + "\n".join(
            f"  {f.key}. {f.statement}: {f.values}" for f in failing))
