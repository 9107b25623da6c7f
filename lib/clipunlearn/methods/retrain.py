"""The gold standard of unlearning: the mini CLIP retrained from scratch without the forget images.

Exact unlearning, which no CLIP-unlearning paper could run: the shipped mini CLIP's recipe and training seed
(``models.MINI_TRAINING``), with every training image of the task's forget target in its forget style left out,
and every caption that describes only those images (``models.train_mini_clip(exclude=...)``). It is trained once
per target and cached (``models.get_mini_clip``: about 4 minutes on 2 cores), then scored on the task like any
method. Recorded as method ``retrain``: a reference, like ``original``, not a method to select.
"""

from __future__ import annotations

from ..harness import Task, evaluate_model, summarise_run, validate_model
from ..models import get_mini_clip
from ..registry import register_label

__all__ = ["RETRAIN", "retrain_exclusion", "run_retrain"]

#: The record name of the retrained model.
RETRAIN = "retrain"


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

    The model is trained on first use and cached (``cache_dir``: default the project's cache); ``training``
    overrides the recipe (tests: a tiny run). The record (method ``retrain``) holds the test metrics of
    ``evaluate_model``, the validation numbers, the exclusion, the training time and the weights' path.
    """
    exclude = retrain_exclusion(task)
    model, _, own_tokenizer, info = get_mini_clip(exclude=exclude, cache_dir=cache_dir, device=device,
                                                  progress=progress, **(training or {}))
    tokenizer = tokenizer or own_tokenizer
    test = evaluate_model(model, task, tokenizer=tokenizer, device=device)
    val = validate_model(model, task, tokenizer=tokenizer, device=device)
    record = summarise_run(task, method=RETRAIN, config={"exclude": exclude, "train_config": info.get("config"),
                                                         "weights": info.get("path")},
                           test_metrics=test, cost={"train_seconds": info.get("train_seconds")}, val=val)
    return model, record


register_label(RETRAIN, "retrain (gold standard)")
