"""The gold standard of unlearning: the mini CLIP retrained from scratch without the forget images.

Exact unlearning, which no CLIP-unlearning paper could run: the shipped mini CLIP's recipe and training seed
(``models.MINI_TRAINING``), with every training image of the task's forget target in its forget style left out,
and every caption that describes only those images (``models.train_mini_clip(exclude=...)``). It is trained once
per target and cached (``models.get_mini_clip``: about 4 minutes on 2 cores), then scored on the task like any
method. Recorded as method ``retrain``: a reference, like ``original``, not a method to select.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..harness import Reference, Selection, Task, evaluate_model, reported_tasks, summarise_run, validate_model
from ..models import get_mini_clip
from ..paths import get_mini_seed
from ..registry import register_label

__all__ = ["RETRAIN", "RETRAIN_TARGETS", "load_references", "retrain_exclusion", "run_retrain"]

#: The record name of the retrained model.
RETRAIN = "retrain"
#: The benchmark's three tasks, the ones the notebooks retrain for: ``{task kind: target}``.
RETRAIN_TARGETS = {"forget-class": "sneaker", "forget-subgroup": "sandal", "forget-style-subgroup": "sketch:sneaker"}


def retrain_exclusion(task: Task) -> dict[str, list[str]]:
    """Return ``{class name: [style]}``: the training images the retrained model never sees for ``task``.

    The forget classes in the forget style: photos for a class or subgroup task (their forget images),
    ``sketch`` for ``sketch:sneaker``. The other styles of the class stay, as they stay for the unlearner.
    """
    style = task.target.split(":", 1)[0].strip() if task.kind == "forget-style-subgroup" else "photo"
    return {task.classnames[c]: [style] for c in task.forget_classes}


def run_retrain(task: Task, *, tokenizer=None, cache_dir=None, device="cpu", progress: bool = False,
                training: dict | None = None):
    """Return ``(model, record)``: the mini CLIP retrained without ``task``'s forget images, scored on ``task``.

    The benchmark's three references ship with the package (``checkpoints.REFERENCES_DIR``: the same weights on
    every machine); any other is trained on first use and cached (``cache_dir``: default the project's cache) with
    the shipped model's recipe and training seed, or ``$CLIPUNLEARN_MINI_SEED``'s when set (a retrained mini world's
    reference: ``run_all.sh --retrained-mini``); ``training`` overrides the recipe (tests: a tiny run). The
    record (method ``retrain``) holds the test metrics of ``evaluate_model``, the validation numbers, the
    exclusion, the training time and the cache folder's name (``models/<cache_key>/`` in the cache).
    """
    exclude = retrain_exclusion(task)
    model, _, own_tokenizer, info = get_mini_clip(exclude=exclude, cache_dir=cache_dir, device=device,
                                                  progress=progress, seed=get_mini_seed(), **(training or {}))
    tokenizer = tokenizer or own_tokenizer
    test = evaluate_model(model, task, tokenizer=tokenizer, device=device)
    val = validate_model(model, task, tokenizer=tokenizer, device=device)
    record = summarise_run(task, method=RETRAIN, config={"seed": None, "exclude": exclude,
                                                         "train_config": info.get("config"),
                                                         "cache_key": Path(info["path"]).parent.name
                                                         if info.get("path") else None},
                           test_metrics=test, cost={"train_seconds": info.get("train_seconds")}, val=val)
    return model, record


def load_references(tasks: dict[str, Sequence[Task]], *, tokenizer=None, selection: Selection | None = None,
                    cache_dir=None, device="cpu", progress: bool = False, training: dict | None = None,
                    targets: dict[str, str] | None = RETRAIN_TARGETS, archive=None) -> dict[str, Reference]:
    """Return ``{target: harness.Reference}``: the retrained model of each target of ``tasks`` (``{target: [task
    per seed]}``) and its record on the first reported seed's task (``selection``'s seed skipped), for the
    drivers' ``references``. Only the targets of ``targets`` (``{task kind: target}``, default the benchmark's
    three; None: every target). Each model ships with the package or is trained on first use (minutes) and
    cached. ``archive`` (a ``harness.ModelArchive`` of the starting model): every run measured against these
    references keeps its model there (notebook 45 attacks them instead of rebuilding them)."""
    out = {}
    for target, seeded in tasks.items():
        if targets is not None and targets.get(seeded[0].kind) != target:
            continue
        model, record = run_retrain(reported_tasks(seeded, selection)[0], tokenizer=tokenizer, cache_dir=cache_dir,
                                    device=device, progress=progress, training=training)
        out[target] = Reference(model=model, record=record, archive=archive)
    return out


register_label(RETRAIN, "retrain (gold standard)")
