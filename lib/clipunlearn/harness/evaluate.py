"""The one evaluation of the project: test metrics of a model on a task, and its validation numbers.

:func:`evaluate_model` gives accuracy on each test subset, per-class accuracy, where the
forgotten images go (confusion row) and a membership-inference AUC, all with a classifier
rebuilt from the model's own text tower (a method may change it). :func:`validate_model`
scores the validation split that selection uses; :func:`calibration_fn` the calibration
images paper A's souping chooses alpha on.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .. import metrics
from ..scores import mia_advantage, selection_score
from .task import EVAL_SETS, Task, calibration_split

__all__ = ["MIA_FIT_IMAGES", "calibration_fn", "evaluate_coarse", "evaluate_model", "validate_model"]

#: Retain training images (a fixed draw) the entropy attack of ``mia_efficacy`` is fitted on as members.
MIA_FIT_IMAGES = 1000


@torch.no_grad()
def evaluate_model(model, task: Task, *, tokenizer, device="cpu", classifier: torch.Tensor | None = None,
                   batch_size: int = 1024) -> dict:
    """Return every test metric of ``model`` on ``task`` (the one evaluation of the project).

    ``{subset}_acc`` for each test subset (``forget``, ``retain``, ``sibling``, ``other``,
    ``other_forget``; for a style subgroup also ``sibling_acc@<style>`` and ``other_acc@<style>``
    per style of those subsets), ``per_class_acc``  (``forget`` + ``sibling`` + ``retain`` images, by
    class), ``forget_confusion`` (fraction of the forget images predicted as each class)
    and the membership-inference family (``docs/PAPERS.md``, "metric-mia-*"): ``mia`` (AUC of a
    loss-threshold attack separating the forget training images the original model saw, never a
    validation image, from unseen forget test images; 0.5 = indistinguishable), ``mia_advantage``
    ``|AUC - 0.5|`` with its standard error ``mia_se``, and ``mia_efficacy`` (an entropy attack fitted on
    retain training images against retain test images, applied to those forget training images: the
    fraction it calls non-members). With ``task.train_eval_sets``, ``forget_train_acc`` / ``retain_train_acc``:
    the same accuracy on the forget / retain training pairs. The zero-shot classifier is rebuilt from the
    model's current text tower unless given.
    """
    model.eval()
    clf = classifier if classifier is not None else metrics.build_classifier(
        model, tokenizer, task.classnames, task.templates, device=device)
    out: dict = {}
    logits = {}
    for name in EVAL_SETS:
        idx = task.eval_sets.get(name)
        if idx is None:
            continue
        lg, y = metrics.predict_logits(model, clf, task.test, indices=idx, batch_size=batch_size, device=device)
        logits[name] = (lg, y)
        out[f"{name}_acc"] = float((lg.argmax(1) == y).float().mean()) if len(y) else float("nan")
    styles = getattr(task.test, "styles", None)
    if task.kind == "forget-style-subgroup" and styles is not None:  # which styles keep or lose the class
        styles = torch.as_tensor(styles)
        for name in ("sibling", "other"):
            if name in logits:
                lg, y = logits[name]
                s = styles[task.eval_sets[name]]
                hit = (lg.argmax(1) == y).float()
                for k in s.unique().tolist():
                    out[f"{name}_acc@{task.test.stylenames[k]}"] = float(hit[s == k].mean())
    for name, idx in task.train_eval_sets.items():  # the training pairs the method saw (Task.train_eval_sets)
        out[f"{name}_train_acc"] = metrics.accuracy(model, clf, task.train, indices=idx, batch_size=batch_size,
                                                    device=device)
    others = {}
    for name, spec in task.extra_sets.items():
        extra_clf = metrics.build_classifier(model, tokenizer, spec["classnames"], spec["templates"], device=device)
        others[name] = metrics.accuracy(model, extra_clf, spec["dataset"], indices=spec.get("indices"),
                                        batch_size=batch_size, device=device)
        out[f"other_acc/{name}"] = others[name]
    if others and "other_acc" not in out:
        out["other_acc"] = sum(others.values()) / len(others)
    # per-class accuracy over the photo subsets, and the forget set's confusion row
    # (a style subgroup's forget images are in another style: per-class accuracy uses its siblings instead)
    names = ("sibling", "retain") if task.kind == "forget-style-subgroup" else ("forget", "sibling", "retain")
    parts = [logits[n] for n in names if n in logits]
    lg = torch.cat([p[0] for p in parts])
    y = torch.cat([p[1] for p in parts])
    pred = lg.argmax(1)
    out["per_class_acc"] = {task.classnames[c]: float((pred[y == c] == c).float().mean()) for c in y.unique().tolist()}
    f_pred = logits["forget"][0].argmax(1)
    counts = torch.bincount(f_pred, minlength=len(task.classnames)).float()
    out["forget_confusion"] = dict(zip(task.classnames, (counts / counts.sum().clamp_min(1)).tolist()))
    if len(task.member_idx):
        member_lg, member_y = metrics.predict_logits(model, clf, task.train, indices=task.member_idx,
                                                     batch_size=batch_size, device=device)
        member_loss = torch.nn.functional.cross_entropy(member_lg, member_y, reduction="none")
        nonmember_loss = torch.nn.functional.cross_entropy(*logits["forget"], reduction="none")
        out["mia"] = metrics.auc_score(-member_loss, -nonmember_loss)
        out.update(mia_advantage(out["mia"], len(member_loss), len(nonmember_loss)))
        fit = task.retain_train[torch.randperm(len(task.retain_train), generator=torch.Generator().manual_seed(0))
                                [:MIA_FIT_IMAGES]]
        retain_lg, _ = metrics.predict_logits(model, clf, task.train, indices=fit, batch_size=batch_size,
                                              device=device)
        out["mia_efficacy"] = metrics.mia_efficacy(metrics.prediction_entropy(retain_lg),
                                                   metrics.prediction_entropy(logits["retain"][0]),
                                                   metrics.prediction_entropy(member_lg))
    return out


@torch.no_grad()
def validate_model(model, task: Task, *, tokenizer, device="cpu", forget_data=None) -> dict:
    """Return ``{"val_forget_acc", "val_retain_acc", "score"}`` on the task's validation split.

    ``forget_data``: ``(dataset, indices)`` to score forgetting on instead of the real
    forget validation images (a data-free method passes held-out synthetic images).
    For subgroup tasks ``val_retain_acc`` averages the sibling and retain accuracies (a style subgroup's also
    the other classes' other styles, ``val_other_acc``).
    """
    model.eval()
    clf = metrics.build_classifier(model, tokenizer, task.classnames, task.templates, device=device)
    f_data, f_idx = forget_data if forget_data is not None else (task.train, task.forget_val)
    out = {"val_forget_acc": metrics.accuracy(model, clf, f_data, indices=f_idx, device=device)}
    retain = metrics.accuracy(model, clf, task.train, indices=task.retain_val, device=device)
    if task.val_sibling is not None and len(task.val_sibling):
        sibling = metrics.accuracy(model, clf, task.train, indices=task.val_sibling, device=device)
        out["val_sibling_acc"] = sibling
        kept = [retain, sibling]
        if task.val_other is not None and len(task.val_other):  # a style subgroup: the other classes' other styles
            out["val_other_acc"] = metrics.accuracy(model, clf, task.train, indices=task.val_other, device=device)
            kept.append(out["val_other_acc"])
        retain = sum(kept) / len(kept)
    out["val_retain_acc"] = retain
    out["score"] = selection_score(out)
    return out


def calibration_fn(task: Task, *, tokenizer, per_class: int = 30, device="cpu") -> Callable[[object], dict]:
    """Return ``calib(model) -> {"forget_acc", "sibling_acc", "retain_acc"[, "other_acc"]}`` on
    :func:`calibration_split`."""
    split = calibration_split(task, per_class=per_class)

    @torch.no_grad()
    def calib(model) -> dict:
        model.eval()
        clf = metrics.build_classifier(model, tokenizer, task.classnames, task.templates, device=device)
        return {f"{k}_acc": metrics.accuracy(model, clf, task.train, indices=idx, device=device)
                for k, idx in split.items()}

    return calib


@torch.no_grad()
def evaluate_coarse(model, task: Task, *, tokenizer, sets: Sequence[str] = ("forget", "sibling"), device="cpu",
                    batch_size: int = 1024) -> dict:
    """Return ``coarse_<set>_acc``: test accuracy of a zero-shot classifier over the *coarse* class names.

    The test images are relabelled with their coarse classes
    (``dataset.with_targets(coarse_targets, coarse_classnames)``; Fashion-MNIST: top,
    pants, dress, shoe, bag) and classified with the task's templates over those names:
    does a forgotten sandal still count as a shoe?
    """
    test = task.test
    if getattr(test, "coarse_targets", None) is None or not getattr(test, "coarse_classnames", None):
        raise ValueError("the task's test set has no coarse labels (coarse_targets / coarse_classnames); coarse "
                         "accuracy needs a dataset with a class hierarchy, e.g. data.load_fashion_mnist")
    unknown = [s for s in sets if s not in task.eval_sets]
    if unknown:
        raise ValueError(f"unknown test subsets {unknown}; valid: {', '.join(task.eval_sets)}")
    coarse = test.with_targets(test.coarse_targets, test.coarse_classnames)
    model.eval()
    clf = metrics.build_classifier(model, tokenizer, coarse.classnames, task.templates, device=device)
    return {f"coarse_{name}_acc": metrics.accuracy(model, clf, coarse, indices=task.eval_sets[name],
                                                   batch_size=batch_size, device=device) for name in sets}
