"""Every run beside the retrained gold standard: the gap of its accuracies and the distance of its outputs.

A :class:`Reference` holds a model that never saw the forget images (``methods.retrain`` builds it; the
harness imports no method) and its record. :func:`compare_to_reference` puts two numbers on a run:
``gap_retrain`` (:func:`~clipunlearn.scores.gap_to_retrain`, the literature's "average gap" of the forget,
sibling, retain and other-style accuracies) and ``js_retrain`` (the mean Jensen-Shannon divergence of the two
models' zero-shot output distributions on the forget test images). :func:`reference_fn` turns a
``{target: Reference}`` map into the hook the drivers call on every reported run; a reference with an
``archive`` (``harness.archive.ModelArchive``) also keeps each such run's model there, for the attacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .. import metrics
from ..scores import gap_to_retrain
from .task import Task

__all__ = ["Reference", "compare_to_reference", "reference_fn"]


@dataclass
class Reference:
    """The retrained model of one target and its record (method ``retrain``)."""

    model: object = field(repr=False)
    record: dict
    #: the reference's output distribution on each task's forget test images, computed once
    probs: dict = field(default_factory=dict, repr=False)
    #: where the runs measured against it keep their models (a ``ModelArchive``; None: not kept)
    archive: object = field(default=None, repr=False)


def compare_to_reference(model, task: Task, run_metrics: dict, reference: Reference, *, tokenizer,
                         device="cpu") -> dict:
    """Return ``{"gap_retrain", "js_retrain"}`` of a run (``model`` after unlearning, ``run_metrics`` its test
    metrics) against ``reference`` on ``task``'s forget test images."""
    idx = task.eval_sets["forget"]
    kw = dict(tokenizer=tokenizer, classnames=task.classnames, templates=task.templates, indices=idx, device=device)
    key = (task.kind, task.target, tuple(idx.tolist()[:3]), len(idx))
    if key not in reference.probs:
        reference.probs[key] = metrics.zero_shot_probs(reference.model, task.test, **kw)
    js = metrics.output_divergence(model, None, task.test, reference_probs=reference.probs[key], **kw)
    return {"gap_retrain": gap_to_retrain(run_metrics, reference.record["metrics"]), "js_retrain": js}


def reference_fn(references: dict[str, Reference] | None, *, tokenizer,
                 device="cpu") -> Callable[[object, dict, Task], None] | None:
    """Return ``finish(model, record, task)``, which adds :func:`compare_to_reference` to a run's metrics when
    ``references`` has its target (a failed run, without test metrics, is left as it is) and keeps the model in
    the reference's ``archive`` when it has one; None without references."""
    if not references:
        return None

    def finish(model, record: dict, task: Task) -> None:
        ref = references.get(task.target)
        if ref is None or record["metrics"].get("failed") or record["metrics"].get("forget_acc") is None:
            return
        record["metrics"].update(compare_to_reference(model, task, record["metrics"], ref, tokenizer=tokenizer,
                                                      device=device))
        if ref.archive is not None:
            ref.archive.save(model, record)

    return finish
