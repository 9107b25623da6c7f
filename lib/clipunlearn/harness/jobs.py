"""Whole targets as jobs: a notebook whose runs share work within a target runs each target's matrix as one job.

Paper A's three-stage runs of one target reuse each other's stages (``run_three_stage``'s ``cache``: the relative
Fisher scores, the aligned retain batches, the forgetting and reminding of the ablation variants), so notebook 30
sends a whole target (its benchmark, and its ablation where it has one) to one worker rather than each run to
any worker. A job writes its records to a part file of its own (``<results>.<target>.part.json``, resumable: a
killed job loses only its runs in flight) and returns them; the driver adds every job's records to the notebook's
file in the order of the targets, so the file is the same whatever ran the jobs and in which order they finished.

A job is a world run of ``clipunlearn.cluster`` (``WORLD_RUNS``): ``fn(world, spec, device=...) -> record``,
whose record is :func:`job_record` (the job's own summary, with its ``records``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Sequence

from ..environment import torch_threads
from ..results import make_record
from .executor import RunCall
from .store import ResultStore
from .task import Task

__all__ = ["JOB_TASK", "job_record", "job_spec", "open_part", "part_path", "run_target_jobs", "timed_job"]

#: The task of a job's own summary record (never saved: its ``records`` are).
JOB_TASK = "target-job"


def part_path(path, target: str) -> Path:
    """Return the part file of ``target``'s job beside the notebook's results file ``path``."""
    path = Path(path)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", target)
    return path.with_name(f"{path.stem}.{safe}.part.json")


def job_spec(world: dict | None, factory: str, task: Task, *, part: Path, match: dict, records: Sequence[dict],
             settings: dict | None = None) -> dict:
    """Return the JSON spec of ``task.target``'s job (``task``: any of its seeds): the world, the job's
    ``factory`` (a ``cluster.WORLD_RUNS`` name), its part file, the store's ``match`` and the target's finished
    ``records`` (resumed), with ``settings`` for the job itself."""
    return {"world": world, "factory": factory, "kind": task.kind, "target": task.target, "seed": None,
            "candidate": {}, "reported": False,
            "settings": {"method": factory, "part": str(part), "match": dict(match), "records": list(records),
                         **(settings or {})}}


def open_part(spec: dict) -> ResultStore:
    """Return the job's part store: what its file holds (an earlier, interrupted job), with the finished records
    of its spec added."""
    settings = spec["settings"]
    store = ResultStore(settings["part"], match=settings["match"], resume=True)
    if settings["records"]:
        store.add(*settings["records"])
    return store


def job_record(spec: dict, store: ResultStore, *, seconds: float) -> dict:
    """Return a job's summary: the target, its seconds, and every record of its part store (``records``)."""
    record = make_record(method=spec["factory"], task=JOB_TASK,
                         config={"run_task": spec["kind"], "forget_class": spec["target"], "seed": None},
                         metrics={"seconds": seconds, "records": len(store.records)})
    record["records"] = list(store.records)
    return record


def _owned(record: dict, target: str) -> bool:
    return record["config"].get("forget_class") == target


def run_target_jobs(store: ResultStore, tasks: dict[str, Sequence[Task]], *, factory: str,
                    run_job: Callable[[dict], dict], world: dict | None = None, executor=None, resume: bool = False,
                    threads: int | None = None, settings: dict | None = None) -> list[dict]:
    """Run the job of every target of ``tasks`` (``{target: [task per seed]}``) and add their records to ``store``.

    ``run_job(spec) -> job_record`` runs one job here (``executor`` None: the jobs one after the other, with
    ``threads`` torch threads each, None: as they are); with a ``cluster.RayExecutor`` every job is a Ray task of
    ``world`` (its workers take one thread each). ``resume``: a job starts from its target's records in ``store``
    and from its part file; else the part files are started afresh. Each job's records are added in the order of
    ``tasks`` and its part file removed; a RuntimeError names the jobs that failed (their part files are kept, and
    a rerun with ``resume`` goes on from them). ``settings``: the jobs' own (in every spec). Returns
    ``store.records``.
    """
    parts = {target: part_path(store.path, target) for target in tasks}
    if not resume:
        for part in parts.values():
            part.unlink(missing_ok=True)
    specs = [job_spec(world, factory, seeded[0], part=parts[target], match=store.match,
                      records=[r for r in store.records if _owned(r, target)] if resume else [], settings=settings)
             for target, seeded in tasks.items()]
    results: dict[int, dict] = {}
    if executor is None:
        for i, spec in enumerate(specs):
            with torch_threads(threads):
                results[i] = run_job(spec)
    else:
        calls = [RunCall(seeded[0], {}, False, spec=spec) for seeded, spec in zip(tasks.values(), specs)]
        for i, _, record in executor.run(calls, ordered=False):
            results[i] = record
    failed = []
    for i, target in enumerate(tasks):
        record = results[i]
        if record["metrics"].get("failed"):
            failed.append(f"{target}: {record['metrics'].get('error')}")
            continue
        store.add(*record["records"])
        parts[target].unlink(missing_ok=True)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(specs)} target jobs failed ({'; '.join(failed)}); the others' "
                           "records are saved and a failed job's finished runs are in its part file: fix the cause "
                           "and rerun with RESUME=True")
    return store.records


def timed_job(spec: dict, run: Callable[[ResultStore], object]) -> dict:
    """Run ``run(part store)`` for ``spec`` and return its :func:`job_record`."""
    start = time.perf_counter()
    part = open_part(spec)
    run(part)
    return job_record(spec, part, seconds=time.perf_counter() - start)
