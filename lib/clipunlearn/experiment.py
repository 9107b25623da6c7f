"""The shared experiment harness: forgetting tasks, one evaluation, one selection protocol, one run.

Every notebook builds its tasks, evaluates every model and selects every
method's hyper-parameters through these functions, so numbers are comparable
across notebooks:

* :func:`build_task` turns a target ("sneaker", "sandal", "sketch:sneaker") into a
  :class:`Task`: training pairs (forget / retain), a validation split of them for
  selection, fixed test subsets (``forget``, ``retain``, ``other``, ``other_forget``,
  ``sibling``) and the MIA members.
* :func:`evaluate_model` is the one evaluation: accuracy on each test subset,
  per-class accuracy, where the forgotten images go (confusion row) and a
  membership-inference AUC, all with a classifier rebuilt from the model's own text
  tower (a method may change it).
* :func:`selection_score` is the one selection criterion (validation retain
  accuracy minus validation forget accuracy, :data:`CRITERION`); :func:`run_grid`
  runs a method over a small grid and keeps the best candidate by that score; the
  training loop also keeps the best evaluated step by it.
* :func:`run_method` runs one registered loss through the shared loop
  (``unlearning.unlearn``) on a fresh copy of the model, measures it and returns a
  result record (``results.make_record``).

Test subsets do not depend on the seed (the same images for every method, seed
and notebook); the seed changes the training / validation split, the batch order
and every random draw of a method.
"""

from __future__ import annotations

import copy
import gc
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from . import data, metrics
from .results import make_record

__all__ = ["CRITERION", "MINI_LR_GRID", "TASK_KINDS", "Task", "build_task", "evaluate_model", "validate_model",
           "selection_score", "class_prompts", "run_method", "run_grid", "run_selected", "run_forget_benchmark",
           "run_ablation", "run_forget_ratio", "pick_classes", "summarise_run", "ResultStore",
           "THREE_STAGE_ABLATIONS", "THREE_STAGE_PAPER_ABLATIONS", "calibration_split", "calibration_fn",
           "evaluate_coarse", "unlearning_score", "pick_examples", "run_three_stage", "record_original",
           "run_subgroup_benchmark", "run_three_stage_ablation", "stage_records", "paper_a_table"]

#: Name of the one selection criterion (see :func:`selection_score`).
CRITERION = "retain_minus_forget"
TASK_KINDS = ("forget-class", "forget-subgroup", "forget-style-subgroup")
#: Test subsets a task may define, in reporting order.
EVAL_SETS = ("forget", "sibling", "retain", "other", "other_forget")
#: The learning-rate grid of every loss-based method in the mini profile (log-spaced, a decade apart).
MINI_LR_GRID = (1e-5, 1e-4, 1e-3)
#: Methods whose forget term classifies forget images over every class prompt.
NEEDS_CLASS_TEXTS = ("ga", "graddiff", "neggrad_plus", "random_labels")


def selection_score(metrics_: dict) -> float:
    """Return the one selection criterion: ``val_retain_acc - val_forget_acc`` (higher is better).

    Rounded to ``metrics.SCORE_DECIMALS`` decimals so that float noise decides no choice;
    ties go to the earlier evaluated step and the first grid candidate (smaller lr).

    A candidate that forgets by destroying the model loses on retain accuracy; one
    that keeps everything loses on forget accuracy. For subgroup tasks the retain
    side is the mean of the sibling and retain validation accuracies.
    """
    return metrics.round_score(metrics_["val_retain_acc"] - metrics_["val_forget_acc"])


# --------------------------------------------------------------------------- #
# Tasks
# --------------------------------------------------------------------------- #
@dataclass
class Task:
    """One forgetting task on one seed.

    Index tensors point into ``train`` (training pairs, validation, MIA members) or
    ``test`` (``eval_sets``). ``forget_classes`` are label indices into
    ``classnames``; ``val_sibling`` / ``eval_sets["sibling"]`` exist for subgroup tasks.
    """

    kind: str
    target: str
    seed: int
    train: object = field(repr=False)
    test: object = field(repr=False)
    classnames: list
    templates: tuple
    forget_classes: list
    forget_train: torch.Tensor = field(repr=False)
    retain_train: torch.Tensor = field(repr=False)
    forget_val: torch.Tensor = field(repr=False)
    retain_val: torch.Tensor = field(repr=False)
    eval_sets: dict = field(repr=False)
    member_idx: torch.Tensor = field(repr=False)
    val_sibling: torch.Tensor | None = field(default=None, repr=False)
    #: other datasets evaluated with their own prompts: ``{name: {"dataset", "classnames", "templates"}}``
    #: (paper B's "other domains"); reported as ``other_acc/<name>`` and their mean ``other_acc``.
    extra_sets: dict = field(default_factory=dict, repr=False)

    @property
    def forget_name(self) -> str:
        """The target as records store it (``config.forget_class``)."""
        return self.target

    def sizes(self) -> dict[str, int]:
        """Return the number of images in every split (for a quick look in notebooks)."""
        out = {k: len(getattr(self, k)) for k in ("forget_train", "retain_train", "forget_val", "retain_val",
                                                  "member_idx")}
        if self.val_sibling is not None:
            out["val_sibling"] = len(self.val_sibling)
        out.update({f"test_{k}": len(v) for k, v in self.eval_sets.items()})
        return out


def _parse_target(kind: str, target: str, classnames: Sequence[str], stylenames: Sequence[str] | None,
                  hierarchy: dict[str, Sequence[str]] | None = None):
    """Return ``(forget_classes, forget_style or None, sibling_classes)`` of a task target.

    Siblings of a subgroup are the other classes of its group in ``hierarchy``
    (``{group: [class names]}``; default: ``data.FASHION_MNIST_HIERARCHY``).
    """
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; valid: {', '.join(TASK_KINDS)}")
    style = None
    if kind == "forget-style-subgroup":
        if ":" not in target:
            raise ValueError(f"a style subgroup is 'style:class' (e.g. 'sketch:sneaker'), got {target!r}")
        style, target = (s.strip() for s in target.split(":", 1))
        if not stylenames or style not in stylenames:
            raise ValueError(f"unknown style {style!r}; valid: {', '.join(stylenames or [])}")
    names = [t.strip() for t in target.split(",") if t.strip()]
    classes = data.check_classnames(names, classnames)
    siblings: list[int] = []
    if kind == "forget-subgroup":
        if len(classes) != 1:
            raise ValueError("a subgroup task forgets one fine class; give one name")
        hierarchy = data.FASHION_MNIST_HIERARCHY if hierarchy is None else hierarchy
        groups = [g for g, members in hierarchy.items() if names[0] in members]
        if not groups:
            raise ValueError(f"{names[0]!r} is in no group of the hierarchy; groups: {', '.join(hierarchy)}")
        group = groups[0]
        siblings = data.check_classnames([c for c in hierarchy[group] if c != names[0]], classnames)
        if not siblings:
            raise ValueError(f"{names[0]!r} has no sibling classes in its group {group!r}; pick one of "
                             + ", ".join(c for g in hierarchy.values() if len(g) > 1 for c in g))
    return classes, style, siblings


def _pick(dataset, *, classes=None, exclude=(), styles=None, limit=None, seed=0) -> torch.Tensor:
    has_styles = getattr(dataset, "styles", None) is not None
    return data.select_indices(dataset, classes=classes, exclude_classes=exclude,
                               styles=styles if has_styles else None, limit_per_class=limit, seed=seed)


def build_task(train, test, *, kind: str = "forget-class", target: str, seed: int = 0,
               templates: Sequence = data.FASHION_MNIST_TEMPLATES, retain_per_class: int | None = 300,
               forget_limit: int | None = None, val_fraction: float = 0.1, val_per_class: int = 100,
               eval_per_class: int | None = 300, members_limit: int = 300, n_seen: int | None = None,
               hierarchy: dict[str, Sequence[str]] | None = None) -> Task:
    """Return the :class:`Task` forgetting ``target`` (class names comma-separated, or ``style:class``).

    ``kind``: ``forget-class`` (whole classes; siblings none), ``forget-subgroup`` (one
    fine class of a coarse group; its siblings must stay) or ``forget-style-subgroup``
    (one class in one style, e.g. ``sketch:sneaker``; the class in other styles must
    stay). Datasets with ``styles`` (Fashion-MNIST) use style 0 ("photo") for the
    forget / retain / sibling test sets and the other styles for ``other`` and
    ``other_forget``; training pairs are photos except the style subgroup's.
    Training images are split ``1 - val_fraction`` / ``val_fraction`` per seed;
    ``retain_per_class`` caps the retain pairs per class (None: all); ``eval_per_class``
    caps every test subset per class with a fixed draw (seed 0, the same for every
    seed and notebook). MIA members: up to ``members_limit`` forget training images
    the model saw in training (``image_ids < n_seen`` when given). ``hierarchy``
    (``{group: [class names]}``, default the Fashion-MNIST one) names a subgroup's siblings.
    """
    stylenames = getattr(train, "stylenames", None) if getattr(train, "styles", None) is not None else None
    classes, style, siblings = _parse_target(kind, target, train.classnames, stylenames, hierarchy)
    styled = stylenames is not None
    photo = [0] if styled else None
    other_styles = list(range(1, len(stylenames))) if styled else None
    forget_style = [stylenames.index(style)] if style is not None else photo
    g = torch.Generator().manual_seed(seed)

    def split(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        train_part, val_part = data.split_indices(idx, [1 - val_fraction, val_fraction], seed=seed)
        return train_part, val_part

    # forget pairs and their validation split
    forget_all = _pick(train, classes=classes, styles=forget_style)
    forget_train, forget_val = split(forget_all)
    if forget_limit is not None:
        forget_train = forget_train[torch.randperm(len(forget_train), generator=g)[:forget_limit]].sort().values
    forget_val = forget_val[:val_per_class * len(classes)]

    # retain pairs: other classes (photo; a subgroup's siblings are split on their own below, so that no
    # sibling validation image is also a training pair); for a style subgroup also the class in its other styles
    retain_all = _pick(train, exclude=classes + siblings, styles=photo)
    retain_train, retain_val = split(retain_all)
    if retain_per_class is not None:
        retain_train = _cap_per_class(train, retain_train, retain_per_class, seed)
    retain_val = _cap_per_class(train, retain_val, val_per_class, seed)
    val_sibling = None
    if kind == "forget-subgroup":
        sib_all = _pick(train, classes=siblings, styles=photo)
        sib_train, val_sibling = split(sib_all)
        # siblings are part of the retain set (they must be kept), capped like the others
        retain_train = torch.cat([retain_train, _cap_per_class(train, sib_train, retain_per_class, seed)])
        val_sibling = _cap_per_class(train, val_sibling, val_per_class, seed)
    elif kind == "forget-style-subgroup":
        keep_styles = [s for s in range(len(stylenames)) if s not in forget_style]
        sib_all = _pick(train, classes=classes, styles=keep_styles)
        sib_train, val_sibling = split(sib_all)
        retain_train = torch.cat([retain_train, _cap_per_class(train, sib_train, retain_per_class, seed)])
        sib_styles = torch.as_tensor(train.styles)[val_sibling]  # val_per_class of each kept style
        val_sibling = torch.cat([val_sibling[sib_styles == s][:val_per_class] for s in keep_styles])
    retain_train = retain_train.sort().values

    # fixed test subsets (seed 0 for every seed)
    evals = {"forget": _pick(test, classes=classes, styles=forget_style, limit=eval_per_class)}
    if kind == "forget-subgroup":
        evals["sibling"] = _pick(test, classes=siblings, styles=photo, limit=eval_per_class)
        evals["retain"] = _pick(test, exclude=classes + siblings, styles=photo, limit=eval_per_class)
    elif kind == "forget-style-subgroup":
        evals["sibling"] = _pick(test, classes=classes, styles=keep_styles, limit=eval_per_class)
        evals["retain"] = _pick(test, exclude=classes, styles=photo, limit=eval_per_class)
    else:
        evals["retain"] = _pick(test, exclude=classes, styles=photo, limit=eval_per_class)
    if styled:
        evals["other"] = _pick(test, exclude=classes + siblings, styles=other_styles, limit=eval_per_class)
        if kind == "forget-class":
            evals["other_forget"] = _pick(test, classes=classes, styles=other_styles, limit=eval_per_class)

    # MIA members: forget training images the model was trained on
    members = forget_all
    if n_seen is not None and hasattr(train, "image_ids"):
        members = members[train.image_ids[members] < n_seen]
    members = members[torch.randperm(len(members), generator=torch.Generator().manual_seed(0))[:members_limit]]
    return Task(kind=kind, target=target, seed=seed, train=train, test=test, classnames=list(train.classnames),
                templates=tuple(templates), forget_classes=classes, forget_train=forget_train,
                retain_train=retain_train, forget_val=forget_val, retain_val=retain_val, eval_sets=evals,
                member_idx=members.sort().values, val_sibling=val_sibling)


def _cap_per_class(dataset, idx: torch.Tensor, limit: int | None, seed: int) -> torch.Tensor:
    if limit is None or len(idx) == 0:
        return idx
    targets = torch.as_tensor(dataset.targets)[idx]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(idx), generator=g)
    idx, targets = idx[perm], targets[perm]
    return torch.cat([idx[targets == c][:limit] for c in targets.unique()]).sort().values


# --------------------------------------------------------------------------- #
# Evaluation
# --------------------------------------------------------------------------- #
def class_prompts(task: Task, *, tokenizer, template: str | None = None) -> torch.Tensor:
    """Return tokenised prompts, one per class (``[C, ctx]``; first template), for the forget terms of the losses."""
    template = template or task.templates[0]
    return tokenizer([template.format(c) for c in task.classnames])


@torch.no_grad()
def evaluate_model(model, task: Task, *, tokenizer, device="cpu", classifier: torch.Tensor | None = None,
                   batch_size: int = 1024) -> dict:
    """Return every test metric of ``model`` on ``task`` (the one evaluation of the project).

    ``{subset}_acc`` for each test subset (``forget``, ``retain``, ``sibling``, ``other``,
    ``other_forget``; for a style subgroup also ``sibling_acc@<style>`` and ``other_acc@<style>``
    per style of those subsets), ``per_class_acc``  (``forget`` + ``sibling`` + ``retain`` images, by
    class), ``forget_confusion`` (fraction of the forget images predicted as each class)
    and ``mia`` (AUC of a loss-threshold attack separating the forget training images
    the model saw from unseen forget test images; 0.5 = indistinguishable). The
    zero-shot classifier is rebuilt from the model's current text tower unless given.
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
    return out


@torch.no_grad()
def validate_model(model, task: Task, *, tokenizer, device="cpu", forget_data=None) -> dict:
    """Return ``{"val_forget_acc", "val_retain_acc", "score"}`` on the task's validation split.

    ``forget_data``: ``(dataset, indices)`` to score forgetting on instead of the real
    forget validation images (a data-free method passes held-out synthetic images).
    For subgroup tasks ``val_retain_acc`` averages the sibling and retain accuracies.
    """
    model.eval()
    clf = metrics.build_classifier(model, tokenizer, task.classnames, task.templates, device=device)
    f_data, f_idx = forget_data if forget_data is not None else (task.train, task.forget_val)
    out = {"val_forget_acc": metrics.accuracy(model, clf, f_data, indices=f_idx, device=device)}
    retain = metrics.accuracy(model, clf, task.train, indices=task.retain_val, device=device)
    if task.val_sibling is not None and len(task.val_sibling):
        sibling = metrics.accuracy(model, clf, task.train, indices=task.val_sibling, device=device)
        out["val_sibling_acc"] = sibling
        retain = (retain + sibling) / 2
    out["val_retain_acc"] = retain
    out["score"] = selection_score(out)
    return out


# --------------------------------------------------------------------------- #
# Running methods
# --------------------------------------------------------------------------- #
def summarise_run(task: Task, *, method: str, config: dict, test_metrics: dict, cost: dict | None = None,
                  history: Sequence[dict] = (), val: dict | None = None, **extra) -> dict:
    """Return a result record of one run (``config`` gets the task fields; ``metrics`` the test numbers)."""
    config = {"task": task.kind, "forget_class": task.target, "seed": task.seed, "criterion": CRITERION,
              **config}
    m = {**test_metrics, **(cost or {}), **(val or {})}
    return make_record(method=method, task=task.kind, config=config, metrics=m, history=list(history), **extra)


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_method(method: str, task: Task, *, model, tokenizer, lr: float, steps: int, batch_size: int = 32,
               eval_every: int | None = None, loss_kwargs: dict | None = None, trainable=None,
               device="cpu", precision: str = "fp32", progress: bool = False, evaluate: bool = True,
               config: dict | None = None):
    """Unlearn a fresh copy of ``model`` on ``task`` with registered loss ``method``; return ``(model, record)``.

    The copy is trained for ``steps`` steps of ``batch_size`` forget and retain pairs
    (``unlearning.unlearn``), evaluated on the validation split every ``eval_every``
    steps (default ``steps // 5``); the best evaluated step by :func:`selection_score`
    is kept. The record holds the test metrics (:func:`evaluate_model`, skipped with
    ``evaluate=False``), the validation numbers at the kept step, the wall time and
    the rise of peak memory of the run, and the validation history. A run stopped by
    a non-finite loss is recorded with ``metrics.failed = True``. ``precision="bf16"``:
    the loss under bf16 autocast (a GPU's speed-up; ``unlearning.unlearn``), kept in the config.
    """
    from .models import copy_frozen
    from .unlearning import make_pair_loader, unlearn

    _release()
    kwargs = dict(loss_kwargs or {})
    if method in NEEDS_CLASS_TEXTS:
        kwargs.setdefault("class_texts", class_prompts(task, tokenizer=tokenizer).to(device))

    def pairs(idx, shift):
        return make_pair_loader(task.train, tokenizer=tokenizer, templates=task.templates, indices=idx,
                                batch_size=batch_size, seed=task.seed * 7 + shift, device=device)

    eval_every = eval_every or max(1, steps // 5)
    unlearned = copy.deepcopy(model)
    original = copy_frozen(model)
    with metrics.measure_run(device=device) as cost:
        run = unlearn(unlearned, method=method, forget_loader=pairs(task.forget_train, 0),
                      retain_loader=pairs(task.retain_train, 1), original=original, epochs=math.ceil(
                          steps / max(1, len(pairs(task.forget_train, 0)))) or 1, max_steps=steps, lr=lr,
                      loss_kwargs=kwargs, trainable=trainable,
                      eval_fn=lambda m: validate_model(m, task, tokenizer=tokenizer, device=device),
                      eval_every=eval_every, select_fn=selection_score, device=device, precision=precision,
                      seed=task.seed, progress=progress)
    del original
    evals = run.evals
    best = next((e for e in evals if e["step"] == run.best_step), evals[-1] if evals else {})
    val = {k: best[k] for k in ("val_forget_acc", "val_retain_acc", "score") if k in best}
    failed = bool(getattr(run, "failed", False) or (run.stopped_early or "").startswith("non-finite"))
    test = evaluate_model(unlearned, task, tokenizer=tokenizer, device=device) if evaluate else {}
    hparams = {k: v for k, v in kwargs.items() if k != "class_texts"}
    record = summarise_run(
        task, method=method,
        config={"lr": lr, "steps": steps, "batch_size": batch_size, "eval_every": eval_every, **hparams,
                **({"precision": precision} if precision != "fp32" else {}), **(config or {})},
        test_metrics=test, cost=cost, val=val,
        history=[{"step": e["step"], **{k: e[k] for k in ("val_forget_acc", "val_retain_acc", "score") if k in e}}
                 for e in evals])
    record["metrics"].update(steps=run.steps, best_step=run.best_step, stopped_early=run.stopped_early,
                             failed=failed)
    return unlearned, record


def run_grid(run_fn: Callable[..., tuple], *, grid: dict[str, Sequence], score_key: str = "score",
             oracle_fn: Callable[[object], dict] | None = None) -> tuple[object, dict, list[dict]]:
    """Run ``run_fn(**candidate)`` for every candidate of ``grid``; keep the best by validation score.

    ``grid``: ``{name: values}`` (the product is taken; keep it small). ``run_fn``
    returns ``(model, record)``; candidates are ranked by ``record["metrics"][score_key]``
    (the validation :func:`selection_score` at the kept step); failed runs rank last.
    Returns ``(best_model, best_record, candidates)``, where ``candidates`` are
    ``{**candidate, "score", "val_forget_acc", "val_retain_acc", "failed", "selected"}``
    rows (plus ``oracle_score`` from ``oracle_fn(model)`` when given — a reference that
    peeks at data the method may not use, never used for the choice). The best record
    gets ``config.grid`` and ``config.selected``; the other models are released.
    """
    import itertools

    names = list(grid)
    best_model, best_record, rows = None, None, []
    for values in itertools.product(*(grid[n] for n in names)):
        candidate = dict(zip(names, values))
        model, record = run_fn(**candidate)
        m = record["metrics"]
        score = -math.inf if m.get("failed") else float(m.get(score_key, -math.inf))
        score = score if math.isinf(score) else metrics.round_score(score)  # ties: the earlier candidate
        row = {**candidate, "score": score, "val_forget_acc": m.get("val_forget_acc"),
               "val_retain_acc": m.get("val_retain_acc"), "failed": bool(m.get("failed")), "record": record}
        if oracle_fn is not None:
            row["oracle"] = oracle_fn(model)
        rows.append(row)
        if best_record is None or score > best_record["_score"]:
            best_model, best_record = model, dict(record, _score=score)
        else:
            del model
        _release()
    best_record.pop("_score")
    for row in rows:
        row["selected"] = row["record"] is best_record or all(row.get(n) == best_record["config"].get(n)
                                                               for n in names)
    best_record["config"]["grid"] = {n: list(grid[n]) for n in names}
    best_record["config"]["selected"] = {n: best_record["config"].get(n) for n in names}
    return best_model, best_record, rows


# --------------------------------------------------------------------------- #
# Many runs: selection on the first seed, the other seeds with the chosen values
# --------------------------------------------------------------------------- #
def run_selected(method: str, tasks: Sequence[Task], *, run_fn: Callable[..., tuple], grid: dict[str, Sequence],
                 store=None, oracle_fn: Callable | None = None, keep_models: bool = False) -> list[dict]:
    """Run ``method`` on ``tasks`` (one forget target, several seeds) with one selection protocol.

    The grid is searched on the first task (its seed's validation split, by
    :func:`selection_score`); the other seeds run with the selected values. ``run_fn(task,
    **candidate) -> (model, record)`` runs one candidate. Returns the result records (one
    per seed, ``config.grid`` / ``config.selected`` filled) followed by the ``selection``
    records of the grid (one per candidate, ``config.selected`` true/false, and an
    ``oracle_score`` where ``oracle_fn`` is given). With ``store`` (a :class:`ResultStore`)
    every record is saved as soon as it exists and finished runs are not repeated.
    """
    first, rest = tasks[0], list(tasks[1:])
    cached = store.find(method=method, task=first.kind, forget_class=first.target, seed=first.seed) if store else None
    sel_cached = store.find_all(method=method, task="selection", forget_class=first.target, seed=first.seed,
                                run_task=first.kind) if store else []
    if cached is not None and sel_cached:
        best, selection = cached, sel_cached
    else:
        model, best, rows = run_grid(lambda **c: run_fn(first, **c), grid=grid,
                                     oracle_fn=None if oracle_fn is None else (lambda m: oracle_fn(m, first)))
        del model
        selection = []
        for row in rows:
            rec = row["record"]
            cand = {k: row[k] for k in grid}
            m = {k: row[k] for k in ("score", "val_forget_acc", "val_retain_acc", "failed")}
            if "oracle" in row:
                m.update({f"oracle_{k}": v for k, v in row["oracle"].items()})
            m.update({k: rec["metrics"].get(k) for k in ("forget_acc", "retain_acc", "best_step")})
            selection.append(make_record(method=method, task="selection",
                                         config={**rec["config"], **cand, "run_task": first.kind,
                                                 "selected": bool(row["selected"]), "grid": None},
                                         metrics=m))
        if store is not None:
            store.add(best, *selection)
    chosen = {k: best["config"]["selected"][k] for k in grid}
    out = [best]
    for task in rest:
        rec = store.find(method=method, task=task.kind, forget_class=task.target, seed=task.seed) if store else None
        if rec is None:
            model, rec = run_fn(task, **chosen)
            del model
            _release()
            rec["config"]["grid"] = {k: list(v) for k, v in grid.items()}
            rec["config"]["selected"] = dict(chosen)
            rec["config"]["selected_on_seed"] = first.seed
            if store is not None:
                store.add(rec)
        out.append(rec)
    return out + selection


class ResultStore:
    """The records of one notebook, saved atomically after every addition (``results.save_records``).

    ``resume=True`` loads the records already at ``path`` whose ``config`` matches
    ``match`` (e.g. ``{"profile": "mini", "quick": False}``), so a restarted notebook
    skips finished runs (:meth:`find`); otherwise the file is started afresh.
    """

    def __init__(self, path, *, match: dict | None = None, resume: bool = False):
        from pathlib import Path

        from .results import load_records

        self.path, self.match = Path(path), dict(match or {})
        self.records: list[dict] = []
        if resume and self.path.exists():
            self.records = [r for r in load_records(self.path)
                            if all(r["config"].get(k) == v for k, v in self.match.items())]

    def add(self, *records: dict) -> None:
        """Append ``records`` (replacing earlier ones with the same identity) and save the file."""
        from .results import save_records

        for rec in records:
            rec["config"].update({k: v for k, v in self.match.items() if k not in rec["config"]})
            key = _identity(rec)
            self.records = [r for r in self.records if _identity(r) != key]
            self.records.append(rec)
        save_records(self.path, self.records)

    def find_all(self, *, method: str, task: str, **config) -> list[dict]:
        """Return the stored records of ``method`` / ``task`` whose config has every given value."""
        return [r for r in self.records if r["method"] == method and r["task"] == task
                and all(r["config"].get(k) == v for k, v in config.items())]

    def find(self, *, method: str, task: str, **config) -> dict | None:
        """Return the one stored record matching (see :meth:`find_all`), or None."""
        found = self.find_all(method=method, task=task, **config)
        return found[-1] if found else None


def _identity(record: dict) -> tuple:
    c = record["config"]
    keys = ("forget_class", "seed", "variant", "forget_ratio", "lr", "run_task", "ablation", "value", "oracle")
    ident = tuple((k, repr(c.get(k))) for k in keys)
    if record["task"] != "selection":  # one result per method / task / target / seed / variant
        ident = tuple(x for x in ident if x[0] not in ("lr",))
    return (record["method"], record["task"]) + ident


def run_forget_benchmark(methods: Sequence[str], tasks: dict[str, Sequence[Task]], *, model, tokenizer,
                         grid: dict[str, Sequence], steps: int, batch_size: int = 32, eval_every: int | None = None,
                         store=None, device="cpu", precision: str = "fp32", progress: bool = True) -> list[dict]:
    """Run every registered loss in ``methods`` on every target of ``tasks`` (``{target: [task per seed]}``).

    Records the untouched model once per target (method ``original``, ``config.seed``
    None), then each method through :func:`run_selected` (grid on the first seed,
    the other seeds with the selected values). Returns every record; with ``store``
    they are saved as they come and finished runs are skipped on resume.
    """
    from tqdm.auto import tqdm

    records = []
    for target, seeded in tasks.items():
        first = seeded[0]
        rec = store.find(method="original", task=first.kind, forget_class=target) if store else None
        if rec is None:
            rec = summarise_run(first, method="original", config={"seed": None},
                                test_metrics=evaluate_model(model, first, tokenizer=tokenizer, device=device))
            if store is not None:
                store.add(rec)
        records.append(rec)
    jobs = [(m, t) for t in tasks for m in methods]
    for method, target in tqdm(jobs, desc="methods x targets", disable=not progress):
        def run_fn(task, **candidate):
            return run_method(method, task, model=model, tokenizer=tokenizer, steps=steps, batch_size=batch_size,
                              eval_every=eval_every, device=device, precision=precision, **candidate)
        records += run_selected(method, tasks[target], run_fn=run_fn, grid=grid, store=store)
    return records


def run_ablation(method: str, tasks: Sequence[Task], *, variants: dict[str, dict], model, tokenizer, steps: int,
                 batch_size: int = 32, store, device="cpu", precision: str = "fp32", full_variant: str = "full",
                 none_variant: str = "none") -> list[dict]:
    """Rerun ``method`` on ``tasks`` (one target, every seed) with each variant's loss kwargs; return the records.

    Uses the learning rate ``method`` selected on this target (its stored
    ``forget-class`` record of the first seed). Also adds, as ``ablation`` records,
    the original model (``none_variant``) and the main runs (``full_variant``), so
    the ablation table is complete from the file alone.
    """
    first = tasks[0]
    main = store.find(method=method, task=first.kind, forget_class=first.target, seed=first.seed)
    original = store.find(method="original", task=first.kind, forget_class=first.target)
    if main is None or original is None:
        raise ValueError(f"run the {first.kind} benchmark of {method!r} on {first.target!r} first (it selects the lr)")
    lr = main["config"]["selected"]["lr"]
    out = [make_record(method=method, task="ablation", config={**original["config"], "variant": none_variant},
                       metrics=original["metrics"])]
    for task in tasks:
        rec = store.find(method=method, task=first.kind, forget_class=task.target, seed=task.seed)
        if rec is not None:
            out.append(make_record(method=method, task="ablation", config={**rec["config"], "variant": full_variant},
                                   metrics=rec["metrics"], history=rec.get("history", [])))
        for variant, kwargs in variants.items():
            done = store.find(method=method, task="ablation", forget_class=task.target, seed=task.seed,
                              variant=variant)
            if done is None:
                _, done = run_method(method, task, model=model, tokenizer=tokenizer, lr=lr, steps=steps,
                                     batch_size=batch_size, loss_kwargs=kwargs, device=device, precision=precision,
                                     config={"variant": variant})
                done["task"] = "ablation"
                store.add(done)
                _release()
            out.append(done)
    store.add(*out[:1], *[r for r in out[1:] if r["config"].get("variant") == full_variant])
    return out


def pick_classes(classnames: Sequence[str], *, seed: int = 0) -> list[str]:
    """Return every class name in a seeded random order (the forget-ratio sweep takes a prefix)."""
    order = torch.randperm(len(classnames), generator=torch.Generator().manual_seed(seed))
    return [classnames[i] for i in order.tolist()]


def run_forget_ratio(methods: Sequence[str], *, ratios: Sequence[float], classes: Sequence[str], train, test, model,
                     tokenizer, templates, seed: int = 0, steps: int, batch_size: int = 32, n_seen: int | None = None,
                     store, device="cpu", precision: str = "fp32", task_kwargs: dict | None = None) -> list[dict]:
    """Forget the first ``round(ratio * C)`` of ``classes`` at once, for each ratio and method; return the records.

    Each method runs at the learning rate it selected on ``classes[0]`` (its stored
    ``forget-class`` record of ``seed``). Records have task ``forget-ratio`` and
    ``config.forget_ratio``; the ratio whose first class alone is that main task reuses it.
    """
    out = []
    n_classes = len(train.classnames)
    for ratio in ratios:
        k = max(1, round(ratio * n_classes))
        target = ",".join(classes[:k])
        task = build_task(train, test, kind="forget-class", target=target, seed=seed, templates=templates,
                          n_seen=n_seen, **(task_kwargs or {}))
        for method in methods:
            main = store.find(method=method, task="forget-class", forget_class=classes[0], seed=seed)
            if main is None:
                raise ValueError(f"run the forget-class benchmark of {method!r} on {classes[0]!r} first")
            rec = store.find(method=method, task="forget-ratio", forget_class=target, seed=seed, forget_ratio=ratio)
            if rec is None:
                if k == 1:
                    rec = make_record(method=method, task="forget-ratio", config={**main["config"]},
                                      metrics=main["metrics"])
                else:
                    _, rec = run_method(method, task, model=model, tokenizer=tokenizer,
                                        lr=main["config"]["selected"]["lr"], steps=steps, batch_size=batch_size,
                                        device=device, precision=precision)
                    rec["task"] = "forget-ratio"
                    _release()
                rec["config"].update(forget_ratio=ratio, forget_classes=classes[:k])
                store.add(rec)
            out.append(rec)
    return out


# --------------------------------------------------------------------------- #
# Paper A: forgetting an image subgroup in three stages, on the same harness
# --------------------------------------------------------------------------- #
#: Paper A's ablations: method name -> switches of ``three_stage.three_stage_unlearn`` (variant = name after "-").
THREE_STAGE_ABLATIONS = {
    "three_stage-no_fisher_all": {"layer_choice": "all"},
    "three_stage-no_fisher_random": {"layer_choice": "random"},
    "three_stage-no_align": {"align": False},
    "three_stage-no_distill": {"distill": False},
    "three_stage-no_soup": {"soup": False},
    "three_stage-no_lora": {"use_lora": False},
    "three_stage-text_only": {"encoders": ("text",)},
    "three_stage-long_remind": {"remind_steps": 60},
}
#: Paper A's ablation table (relative Fisher, alignment, distillation, souping, LoRA); the other variants of
#: :data:`THREE_STAGE_ABLATIONS` change a project's choice: the text tower's layers only (both towers by
#: default), and 60 reminding steps (30 by default).
THREE_STAGE_PAPER_ABLATIONS = ("three_stage-no_fisher_all", "three_stage-no_fisher_random", "three_stage-no_align",
                               "three_stage-no_distill", "three_stage-no_soup", "three_stage-no_lora")
#: Three-stage records keep the test metrics after the first two stages as ``after_<stage>/<metric>``.
STAGE_LABELS = {"forget": "after forgetting", "remind": "after reminding", "restore": "after restoring"}
#: What :func:`unlearning_score` counts as retained accuracy.
SCORE_RETAINED = ("sibling_acc", "retain_acc", "other_acc")


def calibration_split(task: Task, *, per_class: int = 30, seed: int | None = None) -> dict[str, torch.Tensor]:
    """Return paper A's calibration images, ``{"forget", "sibling", "retain"}`` indices into ``task.train``.

    Carved from the task's *validation* images (``forget_val``, ``val_sibling``,
    ``retain_val``; never test images): at most ``per_class`` per class, a seeded draw
    (default: the task's seed). They are a subset of what :func:`validate_model`
    scores: both are validation images, used only to choose (alpha here, the grid there).
    """
    seed = task.seed if seed is None else seed
    parts = {"forget": task.forget_val, "retain": task.retain_val}
    if task.val_sibling is not None and len(task.val_sibling):
        parts["sibling"] = task.val_sibling
    return {k: _cap_per_class(task.train, v, per_class, seed) for k, v in parts.items()}


def calibration_fn(task: Task, *, tokenizer, per_class: int = 30, device="cpu") -> Callable[[object], dict]:
    """Return ``calib(model) -> {"forget_acc", "sibling_acc", "retain_acc"}`` on :func:`calibration_split`."""
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


def pick_examples(task: Task, *, per_set: int = 4, sets: Sequence[str] = ("forget", "sibling")) -> torch.Tensor:
    """Return test indices of a few images of the forget and sibling subsets (for before / after pictures).

    Siblings are spread over their classes; the draw is fixed (the first images of each class).
    """
    out = []
    for name in sets:
        idx = task.eval_sets.get(name)
        if idx is None or not len(idx):
            continue
        targets = torch.as_tensor(task.test.targets)[idx]
        classes = targets.unique().tolist()
        take = -(-per_set // len(classes))
        out += [idx[targets == c][:take] for c in classes]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def _scalars(metrics_: dict) -> dict:
    return {k: v for k, v in metrics_.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_three_stage(task: Task, *, model, tokenizer, lr: float = 1e-3, batch_size: int = 32,
                    settings: dict | None = None, method: str = "three_stage", calib_per_class: int = 30,
                    stage_metrics: bool = True, extra_metrics: Callable[[object, Task], dict] | None = None,
                    examples: int = 0, cache: dict | None = None, device="cpu",
                    seed: int | None = None, progress: bool = False, config: dict | None = None):
    """Run paper A's three stages on a fresh copy of ``model`` for ``task``; return ``(model, record)``.

    Forget / retain pairs: ``unlearning.make_pair_loader`` over ``task.forget_train`` /
    ``task.retain_train`` (siblings included) with ``task.templates``, ``batch_size``.
    ``lr`` is the forgetting stage's learning rate (what the grid searches); ``settings``:
    other keyword arguments of ``three_stage.three_stage_unlearn`` (the ablation switches
    among them). Alpha is chosen on :func:`calibration_fn` (validation images, largest
    mean of sibling and retain accuracy with forget accuracy <= ``max_forget``).

    The record holds the test metrics of :func:`evaluate_model` on the final model (plus
    ``extra_metrics(model, task)``), the validation numbers of :func:`validate_model`
    (``score``: the selection criterion), ``seconds`` (the method's time, reports left
    out) and ``peak_mem_mb`` (``metrics.measure_run``); with ``stage_metrics`` also the test
    metrics after forgetting and after reminding (``after_forget/<metric>``,
    ``after_remind/<metric>``; computed once per stage, never used for a choice). The
    record's ``three_stage`` entry keeps each stage's report: the relative-Fisher ranking
    (``layer_scores``, ``[layer, score]`` high to low), the tuned ``layers``, the forgetting
    stage's similarity curve, alignment and reminding losses, ``alpha_curve`` and
    ``alpha``, per-stage ``seconds`` (``reused``: the stages taken from ``cache``; ``seconds`` counts
    them at their original time), and with ``examples`` the predicted classes of that many
    forget and sibling test images (:func:`pick_examples`) before and after each stage.
    ``cache``: see ``three_stage_unlearn`` (one dict per model).
    """
    from . import three_stage
    from .models import copy_frozen
    from .unlearning import make_pair_loader

    settings = dict(settings or {})
    if "forget_lr" in settings:
        raise ValueError("give the forgetting stage's learning rate as lr=, not settings['forget_lr']")
    seed = task.seed if seed is None else seed

    def pairs(idx, shift):
        return make_pair_loader(task.train, tokenizer=tokenizer, templates=task.templates, indices=idx,
                                batch_size=batch_size, seed=task.seed * 7 + shift, device=device)

    def predict(m) -> list[int]:
        clf = metrics.build_classifier(m, tokenizer, task.classnames, task.templates, device=device)
        logits, _ = metrics.predict_logits(m, clf, task.test, indices=example_idx, device=device)
        return logits.argmax(1).tolist()

    example_idx = pick_examples(task, per_set=examples) if examples else None
    shown = None
    if example_idx is not None and len(example_idx):
        shown = {"indices": example_idx.tolist(), "labels": torch.as_tensor(task.test.targets)[example_idx].tolist(),
                 "original": predict(model)}

    def stage_fn(stage: str, m) -> dict:
        out = {}
        if stage_metrics or stage == "restore":
            out.update(evaluate_model(m, task, tokenizer=tokenizer, device=device))
            if extra_metrics is not None:
                out.update(extra_metrics(m, task))
        if shown is not None:
            shown[stage] = predict(m)
        return out

    calib = calibration_fn(task, tokenizer=tokenizer, per_class=calib_per_class, device=device)
    has_siblings = task.val_sibling is not None and len(task.val_sibling) > 0  # as calibration_split
    unlearned = copy.deepcopy(model)
    original = copy_frozen(model)
    with metrics.measure_run(device=device) as cost:
        result = three_stage.three_stage_unlearn(
            unlearned, original=original, forget_loader=pairs(task.forget_train, 0),
            retain_loader=pairs(task.retain_train, 1), calib_fn=calib, forget_key="forget_acc",
            retain_key=("sibling_acc", "retain_acc") if has_siblings else "retain_acc", forget_lr=lr,
            stage_fn=stage_fn, cache=cache, device=device, seed=seed, progress=progress, **settings)
    del original
    # the method's own cost: stage reports left out, work reused from the cache counted at its original time
    cost["seconds"] = max(0.0, cost["seconds"] - result.seconds.get("report", 0.0)) + result.seconds.get("reused", 0.0)
    stages = result.stages
    test = stages["restore"]
    val = validate_model(unlearned, task, tokenizer=tokenizer, device=device)
    info = result.to_dict()
    forget = info["forget"]
    remind = info["remind"]
    report = {
        "layer_scores": [[name, float(s)] for name, s in info["layer_scores"].items()],
        "layers": info["layers"], "alpha": info["alpha"], "alpha_curve": info["alpha_curve"],
        "forget": {"steps": forget["steps"], "stopped": forget["stopped"],
                   "similarity": [h["similarity"] for h in forget["history"]]},
        "alignment": info["alignment"],
        "remind": {k: remind[k] for k in ("steps", "loss_before", "loss_after", "skipped") if k in remind},
        "seconds": info["seconds"], "reused": info["reused"],
    }
    if shown is not None:
        report["examples"] = shown
    hparams = {k: v for k, v in info["config"].items() if k not in ("forget_lr", "seed")}
    record = summarise_run(task, method=method,
                           config={"lr": lr, "batch_size": batch_size, "calib_per_class": calib_per_class, **hparams,
                                   **(config or {})},
                           test_metrics=test, cost=cost, val=val, three_stage=report)
    m = record["metrics"]
    for stage in ("forget", "remind"):
        m.update({f"after_{stage}/{k}": v for k, v in _scalars(stages.get(stage, {})).items()})
    finite = all(math.isfinite(v) for v in (forget["similarity_after"], remind.get("loss_after", 0.0)))
    m.update(alpha=info["alpha"], forget_steps=forget["steps"], steps=forget["steps"] + remind.get("steps", 0),
             best_step=None, stopped_early=None if finite else "non-finite loss", failed=not finite)
    return unlearned, record


def _with_extras(run_fn: Callable[..., tuple], *, original: dict | None,
                 extra_metrics: Callable[[object, Task], dict] | None, skip_extra: bool = False) -> Callable:
    """Wrap ``run_fn(task, **candidate)``: add ``extra_metrics(model, task)`` and ``unlearning_score`` to its record."""
    def wrapped(task, **candidate):
        model, record = run_fn(task, **candidate)
        if extra_metrics is not None and not skip_extra:
            record["metrics"].update(extra_metrics(model, task))
        if original is not None:
            record["metrics"]["unlearning_score"] = unlearning_score(record["metrics"], original["metrics"])
        return model, record
    return wrapped


def record_original(tasks: dict[str, Sequence[Task]], *, model, tokenizer, store=None,
                    extra_metrics: Callable[[object, Task], dict] | None = None, device="cpu") -> dict[str, dict]:
    """Return ``{target: record}`` of the untouched model (method ``original``, ``config.seed`` None) per target."""
    out = {}
    for target, seeded in tasks.items():
        first = seeded[0]
        rec = store.find(method="original", task=first.kind, forget_class=target) if store is not None else None
        if rec is None:
            test = evaluate_model(model, first, tokenizer=tokenizer, device=device)
            if extra_metrics is not None:
                test.update(extra_metrics(model, first))
            rec = summarise_run(first, method="original", config={"seed": None}, test_metrics=test,
                                val=validate_model(model, first, tokenizer=tokenizer, device=device))
            rec["metrics"]["unlearning_score"] = unlearning_score(rec["metrics"], rec["metrics"])
            if store is not None:
                store.add(rec)
        out[target] = rec
    return out


def run_subgroup_benchmark(tasks: dict[str, Sequence[Task]], *, model, tokenizer, methods: Sequence[str],
                           grids: dict[str, dict], steps: int = 30, batch_size: int = 32,
                           three_stage: dict | None = None, lipschitz: dict | None = None,
                           extra_metrics: Callable[[object, Task], dict] | None = None, store,
                           cache: dict | None = None, device="cpu", progress: bool = True) -> list[dict]:
    """Run paper A's comparison on ``tasks`` (``{target: [task per seed]}``); return every record.

    The untouched model first (:func:`record_original`), then each of ``methods`` on every
    target through :func:`run_selected` (``grids[method]`` searched on the first seed by
    :func:`selection_score`, the other seeds rerun the chosen values):

    * ``"three_stage"``: :func:`run_three_stage` (``three_stage``: its keyword arguments,
      e.g. ``settings``, ``batch_size``, ``calib_per_class``, ``examples``);
    * ``"lipschitz_synthetic"``: paper B on synthetic images of the forgotten *class*
      (``lipschitz.generate_task_synthetic`` per target and seed, then
      ``lipschitz.run_lipschitz``), selected data-free on held-out synthetic images, the
      oracle score on real forget validation images recorded beside it (never used);
      ``lipschitz``: ``{"generation", "forgetting", "n_train", "n_val"}``;
    * a registered loss (``"ft"``, ``"ga"``, ``"cliperase"``, ...): :func:`run_method` with
      ``steps`` and ``batch_size``.

    Every record gets ``extra_metrics(model, task)`` and ``unlearning_score`` (against the
    original of its target). With ``store`` records are saved as they come and finished
    runs are skipped on resume; ``cache`` is ``run_three_stage``'s.
    """
    from tqdm.auto import tqdm

    from .losses import LOSSES

    valid = ("three_stage", "lipschitz_synthetic", *LOSSES)
    unknown = [m for m in methods if m not in valid]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid: {', '.join(valid)}")
    missing = [m for m in methods if m not in grids]
    if missing:
        raise ValueError(f"no grid for {missing}: give grids={{method: {{'lr': [...]}}}} for every method")
    originals = record_original(tasks, model=model, tokenizer=tokenizer, store=store, extra_metrics=extra_metrics,
                                device=device)
    records = list(originals.values())
    synthetic: dict = {}
    three_kwargs = dict(three_stage or {})
    lip = dict(lipschitz or {})

    def synthetic_set(task):
        from .lipschitz import generate_task_synthetic

        key = (task.kind, task.target, task.seed)
        if key not in synthetic:
            synthetic[key] = generate_task_synthetic(model, task, tokenizer=tokenizer, n_train=lip.get("n_train", 64),
                                                     n_val=lip.get("n_val", 32), generation=lip["generation"],
                                                     seed=task.seed, device=device)
        return synthetic[key]

    jobs = [(m, t) for t in tasks for m in methods]
    for method, target in tqdm(jobs, desc="methods x targets", disable=not progress):
        oracle_fn = None
        if method == "three_stage":
            def run_fn(task, **candidate):
                return run_three_stage(task, model=model, tokenizer=tokenizer, cache=cache, device=device,
                                       extra_metrics=extra_metrics, **{**three_kwargs, **candidate})
        elif method == "lipschitz_synthetic":
            if "generation" not in lip:
                raise ValueError("lipschitz_synthetic needs lipschitz={'generation': {...}, 'forgetting': {...}}")

            def run_fn(task, **candidate):
                from .lipschitz import run_lipschitz

                forget, val, cost = synthetic_set(task)
                return run_lipschitz(task, model=model, tokenizer=tokenizer, forget_data=forget,
                                     val_forget=(val, None), data_free=True, method="lipschitz_synthetic",
                                     config={"synthetic": dict(cost)}, device=device,
                                     **{**lip.get("forgetting", {}), **candidate})

            oracle_fn = lambda m, task: validate_model(m, task, tokenizer=tokenizer, device=device)  # noqa: E731
        else:
            def run_fn(task, **candidate):
                return run_method(method, task, model=model, tokenizer=tokenizer, steps=steps, batch_size=batch_size,
                                  device=device, **candidate)
        wrapped = _with_extras(run_fn, original=originals[target], extra_metrics=extra_metrics,
                               skip_extra=method == "three_stage")  # run_three_stage adds them per stage
        records += run_selected(method, tasks[target], run_fn=wrapped, grid=grids[method], store=store,
                                oracle_fn=oracle_fn)
    return records


def run_three_stage_ablation(tasks: Sequence[Task], *, model, tokenizer, store,
                             variants: dict[str, dict] | Sequence[str] = THREE_STAGE_PAPER_ABLATIONS,
                             record_task: str = "ablation",
                             extra_metrics: Callable[[object, Task], dict] | None = None,
                             cache: dict | None = None, device="cpu", progress: bool = True,
                             **three_stage_kwargs) -> list[dict]:
    """Rerun three-stage on ``tasks`` (one target, every seed) with each ablation's switches; return the records.

    ``variants``: ``{method name: switches}``, or names of :data:`THREE_STAGE_ABLATIONS`
    (default: paper A's table, :data:`THREE_STAGE_PAPER_ABLATIONS`); the
    forgetting learning rate is the one ``three_stage`` selected on this target (its
    stored record of the first seed), every other setting as in ``three_stage_kwargs``
    (:func:`run_three_stage`'s; ``settings`` is updated with the switches; no stage metrics
    or examples are recorded). Records have
    task ``record_task`` (default ``ablation``; one name per target when several targets are
    ablated in one file) and ``config.variant`` (the name after ``three_stage-``); the original
    model (variant ``none``) and the main runs (``full``) are added as ablation rows, so
    the table is complete from the file alone.
    """
    from tqdm.auto import tqdm

    if not isinstance(variants, dict):
        unknown = [n for n in variants if n not in THREE_STAGE_ABLATIONS]
        if unknown:
            raise ValueError(f"unknown three-stage variants {unknown}; valid: {', '.join(THREE_STAGE_ABLATIONS)}")
        variants = {n: THREE_STAGE_ABLATIONS[n] for n in variants}

    first = tasks[0]
    main = store.find(method="three_stage", task=first.kind, forget_class=first.target, seed=first.seed)
    original = store.find(method="original", task=first.kind, forget_class=first.target)
    if main is None or original is None:
        raise ValueError(f"run run_subgroup_benchmark with 'three_stage' on {first.target!r} ({first.kind}) first: "
                         "it selects the learning rate")
    lr = main["config"]["selected"]["lr"]
    base = dict(three_stage_kwargs.pop("settings", None) or {})
    out = [make_record(method="original", task=record_task, config={**original["config"], "variant": "none"},
                       metrics=original["metrics"])]
    for task in tasks:
        rec = store.find(method="three_stage", task=task.kind, forget_class=task.target, seed=task.seed)
        if rec is not None:
            out.append(make_record(method="three_stage", task=record_task,
                                   config={**rec["config"], "variant": "full"}, metrics=rec["metrics"]))
    store.add(*out)  # the reference rows first, so tables list them first
    jobs = [(task, name) for task in tasks for name in variants]
    for task, name in tqdm(jobs, desc="ablations", disable=not progress):
        variant = name.split("-", 1)[1] if name.startswith("three_stage-") else name
        done = store.find(method=name, task=record_task, forget_class=task.target, seed=task.seed, variant=variant)
        if done is None:
            _, done = run_three_stage(task, model=model, tokenizer=tokenizer, lr=lr, method=name,
                                      settings={**base, **variants[name]}, extra_metrics=extra_metrics, cache=cache,
                                      device=device, config={"variant": variant, "selected_on_seed": first.seed},
                                      **{**three_stage_kwargs, "stage_metrics": False, "examples": 0})
            done["task"] = record_task
            done["metrics"]["unlearning_score"] = unlearning_score(done["metrics"], original["metrics"])
            store.add(done)
        out.append(done)
    return out


def stage_records(records: Sequence[dict], *, task: str, method: str = "three_stage") -> list[dict]:
    """Return ``method``'s runs on ``task`` stage by stage, as records whose ``method`` is the stage.

    The untouched model (``original``), then one record per run and stage: "after
    forgetting" and "after reminding" from the ``after_<stage>/<metric>`` test metrics,
    "after restoring" = the run's own metrics; each gets ``unlearning_score`` against the
    original. For ``report.summarise`` and ``plots.plot_method_bars`` (derived, not saved).
    """
    chosen = [r for r in records if r.get("task") == task]
    originals = [r for r in chosen if r["method"] == "original"]
    runs = [r for r in chosen if r["method"] == method and not r["metrics"].get("failed")]
    if not runs:
        raise ValueError(f"no {method!r} records of task {task!r}; tasks present: "
                         + ", ".join(sorted({str(r.get('task')) for r in records})))
    by_target = {r["config"].get("forget_class"): r["metrics"] for r in originals}
    out = [dict(r) for r in originals]
    for stage, label in STAGE_LABELS.items():
        for r in runs:
            if stage == "restore":
                m = {k: v for k, v in r["metrics"].items() if "/" not in k}
            else:
                prefix = f"after_{stage}/"
                m = {k[len(prefix):]: v for k, v in r["metrics"].items() if k.startswith(prefix)}
                if not m:
                    continue
            original = by_target.get(r["config"].get("forget_class"))
            if original is not None:
                m["unlearning_score"] = unlearning_score(m, original)
            out.append(make_record(method=label, task=task, config={**r["config"], "stage": stage}, metrics=m))
    return out


#: Paper A's reported quantities -> ours (the settings differ: ImageNet monkeys vs Fashion-MNIST shoes).
PAPER_A_COLUMNS = {"target": "forget_acc", "retain (siblings)": "sibling_acc", "all classes": "retain_acc",
                   "transfer": "other_acc", "score": "unlearning_score"}
#: Paper A's transfer columns that ``transfer`` averages (ObjectNet is not a registered dataset here).
PAPER_A_TRANSFER = ("cifar10", "food101", "stl10", "objectnet")
PAPER_A_METHODS = {"original": "original", "ga": "ga", "lip": "lipschitz_synthetic", "three_stage": "three_stage",
                   "emmn": None}


def paper_a_table(records: Sequence[dict], *, reported: dict, task: str = "forget-subgroup",
                  target: str = "marmoset", backbone: str = "RN50"):
    """Return a DataFrame of paper A's reported numbers (``reported[target][backbone]``) beside ours on ``task``.

    Rows: the paper's methods (EMMN has no counterpart here: ours empty); columns
    ``(quantity, "paper" | "ours")`` per :data:`PAPER_A_COLUMNS`: target -> ``forget_acc``;
    retain, the paper's other subgroups of the group -> ``sibling_acc``; ImageNet-all ->
    ``retain_acc`` (the other classes); transfer, the mean of the paper's CIFAR-10 /
    Food-101 / STL-10 / ObjectNet zero-shot accuracies -> ``other_acc`` (other styles in the
    mini world, the ``transfer`` datasets in the paper profile); Score -> ``unlearning_score`` (our formula,
    the paper's is not public). Ours: mean ± sd over seeds. The settings do not really
    correspond; the table puts the shapes side by side.
    """
    import pandas as pd

    from .report import format_mean_std, mean_std

    if target not in reported or backbone not in reported[target]:
        raise ValueError(f"no reported numbers for {target!r} / {backbone!r}; targets: "
                         + ", ".join(k for k, v in reported.items() if isinstance(v, dict) and backbone in v))
    rows, index = [], []
    for name, values in reported[target][backbone].items():
        ours_method = PAPER_A_METHODS.get(name, name)
        group = [r for r in records if r.get("task") == task and r["method"] == ours_method
                 and not r["metrics"].get("failed")] if ours_method else []
        transfer = [values[k] for k in PAPER_A_TRANSFER if values.get(k) is not None]
        theirs = {"target": values.get("target"), "retain (siblings)": values.get("retain"),
                  "all classes": values.get("imagenet"), "score": values.get("score"),
                  "transfer": sum(transfer) / len(transfer) if transfer else None}
        row = {}
        for col, metric in PAPER_A_COLUMNS.items():
            row[(col, "paper")] = "" if theirs[col] is None else f"{theirs[col]:.3f}"
            mean, std, _ = mean_std(group, metric)
            row[(col, "ours")] = format_mean_std(mean, std)
        rows.append(row)
        index.append(f"{name} ({ours_method or 'not run'})")
    frame = pd.DataFrame(rows, index=pd.Index(index, name="method (ours)"))
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame
