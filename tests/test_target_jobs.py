"""Whole targets as jobs (``harness.jobs``): the records of every job land in the notebook's file in the order of
the targets whatever ran them, a job resumes from its part file and from the finished records, a failed job keeps
its part file and names itself, and the jobs take the threads they are given."""

from types import SimpleNamespace

import pytest
import torch

from clipunlearn.harness import ResultStore
from clipunlearn.harness.jobs import JOB_TASK, open_part, part_path, run_target_jobs, timed_job
from clipunlearn.results import make_record

TARGETS = ("sandal", "sketch:sneaker")


def tasks():
    """``{target: [task per seed]}`` with what a job spec reads of a task (its kind and target)."""
    return {t: [SimpleNamespace(kind="forget-subgroup", target=t, seed=s) for s in (100, 0)] for t in TARGETS}


def record(target, seed, value):
    return make_record(method="ga", task="forget-subgroup", config={"forget_class": target, "seed": seed},
                       metrics={"forget_acc": value})


class Job:
    """A job that adds one record per seed, counts what it ran and sees the torch threads it ran with."""

    def __init__(self, fail=()):
        self.ran, self.threads, self.fail = [], [], set(fail)

    def __call__(self, spec):
        def run(part):
            self.threads.append(torch.get_num_threads())
            for seed in (0, 1):
                if part.find(method="ga", task="forget-subgroup", forget_class=spec["target"], seed=seed) is None:
                    self.ran.append((spec["target"], seed))
                    part.add(record(spec["target"], seed, seed / 10))
                    if spec["target"] in self.fail:
                        raise RuntimeError("boom")
        return timed_job(spec, run)


class ReversedExecutor:
    """Runs the calls here, the last one first (a concurrent executor whose jobs finish in another order)."""

    concurrent = True

    def __init__(self, job):
        self.job = job

    def run(self, calls, *, ordered=True):
        for i in reversed(range(len(calls))):
            try:
                yield i, None, self.job(calls[i].spec)
            except RuntimeError as err:
                yield i, None, make_record(method="job", task=JOB_TASK, config={}, metrics={"failed": True,
                                                                                            "error": str(err)})


def test_the_records_follow_the_targets_order_whatever_ran_the_jobs(tmp_path):
    here = ResultStore(tmp_path / "a.json", match={"profile": "mini"})
    run_target_jobs(here, tasks(), factory="job", run_job=Job())
    there = ResultStore(tmp_path / "b.json", match={"profile": "mini"})
    run_target_jobs(there, tasks(), factory="job", run_job=None, world={"name": "w"},
                    executor=ReversedExecutor(Job()))
    assert [(r["config"]["forget_class"], r["config"]["seed"]) for r in here.records] == \
        [(t, s) for t in TARGETS for s in (0, 1)]
    assert here.records == there.records
    assert all(r["config"]["profile"] == "mini" for r in here.records)  # the store's match, as on any add
    assert not list(tmp_path.glob("*.part.json"))  # merged, then removed


def test_a_job_takes_the_threads_it_is_given(tmp_path):
    job = Job()
    before = torch.get_num_threads()
    run_target_jobs(ResultStore(tmp_path / "a.json"), tasks(), factory="job", run_job=job, threads=1)
    assert job.threads == [1, 1] and torch.get_num_threads() == before


def test_a_failed_job_keeps_its_part_and_the_rerun_goes_on_from_it(tmp_path):
    store = ResultStore(tmp_path / "a.json")
    job = Job(fail={"sketch:sneaker"})
    with pytest.raises(RuntimeError, match=r"1 of 2 target jobs failed \(sketch:sneaker: boom\).*RESUME=True"):
        run_target_jobs(store, tasks(), factory="job", run_job=None, world={"name": "w"},
                        executor=ReversedExecutor(job))
    assert [r["config"]["forget_class"] for r in store.records] == ["sandal", "sandal"]  # the finished job's
    part = part_path(store.path, "sketch:sneaker")
    assert part.name == "a.sketch_sneaker.part.json" and part.exists()
    again = Job()
    run_target_jobs(ResultStore(store.path, resume=True), tasks(), factory="job", run_job=again, resume=True)
    assert again.ran == [("sketch:sneaker", 1)]  # sandal from the store, seed 0 of the sketches from its part
    assert len(ResultStore(store.path, resume=True).records) == 4 and not part.exists()


def test_a_fresh_run_starts_every_part_afresh(tmp_path):
    store = ResultStore(tmp_path / "a.json")
    stale = ResultStore(part_path(store.path, "sandal"))
    stale.add(record("sandal", 0, 0.9))  # left by an interrupted run
    job = Job()
    run_target_jobs(store, tasks(), factory="job", run_job=job)
    assert ("sandal", 0) in job.ran
    assert store.find(method="ga", task="forget-subgroup", forget_class="sandal", seed=0)["metrics"]["forget_acc"] \
        == 0


def test_a_part_store_holds_its_file_and_the_specs_records(tmp_path):
    path = tmp_path / "p.json"
    ResultStore(path).add(record("sandal", 0, 0.5))
    spec = {"settings": {"part": str(path), "match": {}, "records": [record("sandal", 1, 0.25)]}}
    assert [r["config"]["seed"] for r in open_part(spec).records] == [0, 1]
