"""Where the runs of a selection execute: one after the other in this process, or as tasks elsewhere.

A selection (:func:`~clipunlearn.harness.select.run_selected`) has two phases of independent runs: the grid's
candidates on the selection seed, then the reported seeds at the chosen values. Each run is a :class:`RunCall`:
its task, its candidate values, whether it is reported (the driver's ``finish_fn`` then measures it against the
retrained model) and its ``spec``, a small JSON-serialisable dict that another process can rebuild the run from
(the world to load, the driver's settings, the task's kind, target and seed, the candidate). An executor takes a
phase's calls and yields ``(index, model or None, record)`` as runs finish: :class:`SerialExecutor` (the default,
the notebooks' loop) runs them here with the driver's own ``run_fn``, in order, releasing each model before the
next; ``clipunlearn.cluster.RayExecutor`` sends the specs to Ray workers, which load the model and data
themselves, and yields records in the order they finish. Either way the driver saves every record as it comes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from ..clip import release_memory
from .task import Task

__all__ = ["RunCall", "SerialExecutor", "make_spec", "map_selections"]


@dataclass(frozen=True)
class RunCall:
    """One run of a selection phase (``spec``: how another process rebuilds it; None: this process only)."""

    task: Task
    candidate: dict
    reported: bool
    spec: dict | None = field(default=None, compare=False)


def make_spec(remote: dict | None, task: Task, candidate: dict, *, reported: bool,
              finish: bool = False) -> dict | None:
    """Return the JSON spec of one run: ``remote`` (the world and the driver's settings, see
    ``clipunlearn.cluster``) with the task's kind, target and seed, the candidate, whether it is reported and
    whether the worker measures it against the retrained model (``finish``: the driver has a ``finish_fn``);
    None without ``remote``."""
    if remote is None:
        return None
    return {**remote, "kind": task.kind, "target": task.target, "seed": task.seed, "candidate": dict(candidate),
            "reported": bool(reported), "finish": bool(finish)}


def map_selections(executor, jobs: Sequence, fn: Callable) -> list:
    """Return ``[fn(job) for job in jobs]``: one after the other, or, with a concurrent executor, every job's
    selection at once (a driver thread each, waiting on its runs), so that the runs of all of them fill the
    workers; the results keep the jobs' order."""
    if not getattr(executor, "concurrent", False) or len(jobs) < 2:
        return [fn(job) for job in jobs]
    pool = ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="selection")
    try:
        return list(pool.map(fn, jobs))
    finally:  # an error (or an interrupt) in one selection returns at once; the others' runs are in flight
        pool.shutdown(wait=False, cancel_futures=True)


class SerialExecutor:
    """Run every call here, one after the other, in order (the notebooks' loop): ``run_fn(task, **candidate)``,
    then ``finish_fn(model, record, task)`` on a reported run, whose model is released before the next run."""

    #: Whether calls of one phase run at the same time (a remote executor: the driver then submits a whole phase).
    concurrent = False

    def run(self, calls: Sequence[RunCall], *, run_fn: Callable, finish_fn: Callable | None = None,
            ordered: bool = True) -> Iterator[tuple[int, object, dict]]:
        """Yield ``(index into calls, model, record)`` for every call, in order."""
        for i, call in enumerate(calls):
            model, record = run_fn(call.task, **call.candidate)
            if call.reported:
                if finish_fn is not None:
                    finish_fn(model, record, call.task)
                model = None  # measured: nothing keeps a reported run's model
                release_memory()
            yield i, model, record
