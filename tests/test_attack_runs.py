"""Notebook 45's attack runs on any executor: one thread a run, the same records here and on a worker, in the jobs'
order, a failed run recorded and run again (papers/attacks_bench.py, cluster.py)."""

from __future__ import annotations

import pytest
import torch

from clipunlearn import cluster, harness
from clipunlearn.environment import torch_threads
from clipunlearn.papers import attacks_bench

from .test_attacks import settings, task  # noqa: F401  (the fixture)

WORLD = {"name": "attacks", "params": {"seeds": "0", "kinds": "", "quick": True, "data_dir": ""}}


def fields(tokenizer) -> dict:
    return {k: v for k, v in vars(settings(tokenizer)).items() if k not in ("tokenizer", "device", "seed")}


@pytest.fixture
def world(task, tiny_tokenizer, tiny_clip, monkeypatch):  # noqa: F811
    """A GA run of the tiny world, its reference, and the attack world a worker would load (patched in)."""
    base = tiny_clip.model
    with torch_threads(1):  # the record keeps its threads (config.threads): a rebuild repeats them
        _, rec = harness.run_method("ga", task, model=base, tokenizer=tiny_tokenizer, lr=1e-3, steps=4, batch_size=8)
    ref = harness.Reference(model=base, record={"metrics": {"forget_acc": 0.0}})
    built = attacks_bench.AttackWorld(base, tiny_tokenizer, [rec], {task.kind: {task.target: [task]}},
                                      {task.kind: {task.target: ref}}, None, None, [0])
    monkeypatch.setitem(cluster.WORLD_LOADERS, "attacks", lambda **params: built)
    monkeypatch.setattr(cluster, "_WORLDS", {})
    return built


class InProcess:
    """An executor that runs each spec as a Ray worker would (``cluster.execute_run``), finishing in reverse."""

    concurrent = True

    def __init__(self, fail: str | None = None):
        self.fail = fail

    def run(self, calls, *, run_fn=None, finish_fn=None, ordered=True):
        for i in reversed(range(len(calls))):
            spec = calls[i].spec
            if spec["settings"]["method"] == self.fail:
                yield i, None, cluster.failed_record(spec, "RayTaskError: the worker died")
            else:
                yield i, None, cluster.execute_run(spec, threads=2)


def untimed(records):
    return [{**r, "metrics": {k: v for k, v in r["metrics"].items() if k != "seconds"}} for r in records]


def test_a_worker_gives_the_records_of_the_serial_run_in_the_same_order(world, task, tmp_path):  # noqa: F811
    kw = dict(methods=["ga"], model=world.model, tokenizer=world.tokenizer, references=world.references[task.kind],
              settings=fields(world.tokenizer), attacks=["relearn_retain", "probe_features"])
    with torch_threads(2):
        here = attacks_bench.run_attack_benchmark(world.records, world.tasks[task.kind],
                                                  store=harness.ResultStore(tmp_path / "here.json"), **kw)
        remote = attacks_bench.run_attack_benchmark(world.records, world.tasks[task.kind],
                                                    store=harness.ResultStore(tmp_path / "ray.json"),
                                                    executor=InProcess(), world=WORLD, **kw)
    assert [r["method"] for r in here] == ["original", "retrain", "ga"]
    assert untimed(remote) == untimed(here)
    assert untimed(harness.ResultStore(tmp_path / "ray.json", resume=True).records) == untimed(here)
    assert all(r["config"]["threads"] == attacks_bench.ATTACK_THREADS == 1 for r in here)
    assert here[2]["metrics"]["regenerated_matches"] and here[2]["config"]["model_source"] == "rebuilt"
    with pytest.raises(ValueError, match="needs world="):
        attacks_bench.run_attack_benchmark(world.records, world.tasks[task.kind], executor=InProcess(),
                                           store=harness.ResultStore(tmp_path / "none.json"), **kw)


def test_an_attack_runs_with_one_thread_and_gives_the_count_back(world, task, monkeypatch):  # noqa: F811
    seen = []
    monkeypatch.setattr(attacks_bench, "run_attacks", lambda *a, **k: seen.append(torch.get_num_threads()) or {})
    with torch_threads(2):
        rec = attacks_bench.attack_run("original", task, records=world.records, model=world.model,
                                       tokenizer=world.tokenizer, reference=world.references[task.kind][task.target],
                                       settings=fields(world.tokenizer))
        assert torch.get_num_threads() == 2
    assert seen == [1] and rec["config"]["threads"] == 1 and rec["metrics"]["seconds"] >= 0
    with pytest.raises(ValueError, match=r"threads must be a whole number >= 1 or None, got 0"):
        with torch_threads(0):
            pass


def test_a_failed_run_is_saved_as_failed_named_and_run_again_on_resume(world, task, tmp_path):  # noqa: F811
    kw = dict(methods=["ga"], model=world.model, tokenizer=world.tokenizer, references=world.references[task.kind],
              settings=fields(world.tokenizer), attacks=["probe_features"])
    path = tmp_path / "a.json"
    with pytest.raises(RuntimeError, match=r"1 attack runs failed \(ga forget-subgroup/sandal/seed 0: RayTaskError"
                                           r": the worker died\).*RESUME=True"):
        attacks_bench.run_attack_benchmark(world.records, world.tasks[task.kind], store=harness.ResultStore(path),
                                           executor=InProcess(fail="ga"), world=WORLD, **kw)
    saved = harness.ResultStore(path, resume=True)
    failed = saved.find(method="ga", task=attacks_bench.ATTACK_TASK, run_task=task.kind, seed=0)
    assert failed["metrics"]["failed"] and saved.find(method="original", task="attacks")["metrics"].get(
        "probe_features/forget_acc") is not None
    again = attacks_bench.run_attack_benchmark(world.records, world.tasks[task.kind], store=saved, **kw)
    assert not any(r["metrics"].get("failed") for r in again) and "gap/probe_features/forget_acc" in again[2]["metrics"]


def test_a_spec_for_a_task_the_world_lacks_is_a_failed_record_naming_it(world, task):  # noqa: F811
    spec = attacks_bench.attack_spec(WORLD, "ga", task, settings=fields(world.tokenizer), attacks=["probe_features"])
    rec = cluster.execute_run({**spec, "seed": 7})
    assert rec["task"] == "attacks" and rec["config"] == {"run_task": task.kind, "forget_class": "sandal", "seed": 7}
    assert rec["metrics"]["error"] == "ValueError: the attack world has no task forget-subgroup/sandal/seed 7"


def test_the_executor_is_ray_only_for_several_workers(monkeypatch, capsys):
    assert cluster.make_local_executor(1) is None
    with pytest.raises(ValueError, match=r"workers must be a whole number >= 0 .* got -1"):
        cluster.make_local_executor(-1)
    with pytest.raises(ValueError, match=r"unknown CLUSTER 'nowhere'; valid: empty"):
        cluster.make_matrix_executor("nowhere", runs_at_once=2)
    monkeypatch.setattr(cluster, "ray", None)
    assert cluster.make_local_executor(2) is None
    assert "Ray is not installed, so the runs go one after the other here instead of 2 at once" in \
        capsys.readouterr().out


def test_the_targets_are_the_benchmark_tasks_and_a_wrong_kind_names_the_valid_ones():
    assert attacks_bench.attack_targets() == dict(attacks_bench.BENCHMARK_TASKS)
    assert attacks_bench.attack_targets("forget-class") == {"forget-class": "sneaker"}
    assert attacks_bench.attack_targets("anything", quick=True) == {"forget-subgroup": "sandal"}
    with pytest.raises(ValueError, match=r"unknown task kinds \['forget-dog'\]; valid: forget-class, forget-subgroup"):
        attacks_bench.attack_targets("forget-class,forget-dog")
    assert attacks_bench.attack_world_spec(seeds="1,2") == {
        "name": "attacks", "params": {"seeds": "1,2", "kinds": "", "quick": False, "data_dir": ""}}


def test_a_run_not_kept_is_rebuilt_with_the_threads_of_its_record_and_attacked_with_one(world, task,  # noqa: F811
                                                                                         monkeypatch):
    seen = {}
    rebuild = attacks_bench.regenerate_model

    def spy_rebuild(*a, **k):
        seen["rebuild"] = torch.get_num_threads()
        return rebuild(*a, **k)

    monkeypatch.setattr(attacks_bench, "regenerate_model", spy_rebuild)
    monkeypatch.setattr(attacks_bench, "run_attacks", lambda *a, **k: seen.setdefault("attack",
                                                                                      torch.get_num_threads()) and {})
    assert world.records[0]["config"]["threads"] == 1
    with torch_threads(2):
        rec = attacks_bench.attack_run("ga", task, records=world.records, model=world.model,
                                       tokenizer=world.tokenizer, reference=world.references[task.kind][task.target],
                                       settings=fields(world.tokenizer), rebuild_threads=2)
    assert seen == {"rebuild": 1, "attack": 1} and rec["metrics"]["regenerated_matches"]  # the record's threads
    unsaid = {**world.records[0], "config": {k: v for k, v in world.records[0]["config"].items() if k != "threads"}}
    seen.clear()
    with torch_threads(1):  # a record of an earlier release says nothing: the driver's threads
        attacks_bench.attack_run("ga", task, records=[unsaid], model=world.model, tokenizer=world.tokenizer,
                                 reference=world.references[task.kind][task.target], settings=fields(world.tokenizer),
                                 rebuild_threads=2)
    assert seen == {"rebuild": 2, "attack": 1}
    assert attacks_bench.recorded_threads(None, 3) == 3 and attacks_bench.recorded_threads({"config": {}}, None) is None
    spec = attacks_bench.attack_spec(WORLD, "ga", task, settings={}, attacks=["probe_features"], rebuild_threads=2)
    assert spec["settings"]["rebuild_threads"] == 2


def test_the_driver_rebuilds_what_the_archive_lacks_once_and_the_worker_reads_it(world, task, tmp_path,  # noqa: F811
                                                                                 monkeypatch):
    world.archive = harness.ModelArchive(world.model, root=tmp_path / "archive")  # the worker's world too
    threads, rebuild = [], attacks_bench.regenerate_model
    monkeypatch.setattr(attacks_bench, "regenerate_model",
                        lambda *a, **k: threads.append(torch.get_num_threads()) or rebuild(*a, **k))
    kw = dict(methods=["ga"], model=world.model, tokenizer=world.tokenizer, references=world.references[task.kind],
              settings=fields(world.tokenizer), attacks=["probe_features"], archive=world.archive)
    with torch_threads(2):
        out = attacks_bench.run_attack_benchmark(world.records, world.tasks[task.kind], executor=InProcess(),
                                                 world=WORLD, store=harness.ResultStore(tmp_path / "a.json"), **kw)
    assert threads == [1] and world.archive.path_for(world.records[0]).is_file()  # with the record's threads
    assert out[2]["config"]["model_source"] == "rebuilt" and out[2]["metrics"]["regenerated_matches"]
    with torch_threads(2):  # kept: read from the archive, not rebuilt again
        again = attacks_bench.run_attack_benchmark(world.records, world.tasks[task.kind], executor=InProcess(),
                                                   world=WORLD, store=harness.ResultStore(tmp_path / "b.json"), **kw)
    assert threads == [1] and again[2]["config"]["model_source"] == "archive"
    assert untimed(again)[2]["metrics"] == untimed(out)[2]["metrics"]
