"""Notebook 10's quick mini matrix through the Ray executor: the same records as the serial loop, and an interrupted
driver that finishes the matrix on rerun without redoing a finished run. Runs on a local Ray instance of 2 CPUs
(the optional extra ``[cluster]``; skipped where Ray is not installed)."""

import json
import math
import time
from dataclasses import replace as dataclass_replace

import psutil
import pytest
import torch

from clipunlearn import cluster
from clipunlearn.harness import (RUN_FACTORIES, SELECTION_SEED, ResultStore, RunCall, Selection, SerialExecutor,
                                 make_spec, run_selected, summarise_run)
from clipunlearn.papers import paper_a_matrix
from clipunlearn.results import make_record

ray = pytest.importorskip("ray")

#: Wall time and memory: measured, never compared.
MEASURED = {"seconds", "val_seconds", "method_seconds", "train_seconds", "peak_mem_mb", "base_mem_mb"}
WORLD = cluster.paper_c_world_spec("mini", quick=True, seeds="0")


class Interrupt(Exception):
    """Stands in for a killed driver."""


def run_matrix(store, *, executor=None, world=None, methods=None):
    """Notebook 10's quick matrix (``cluster.run_paper_c_matrix``) with or without the Ray executor."""
    return cluster.run_paper_c_matrix(store, world=world or WORLD, executor=executor, methods=methods)


def identity(record):
    c = record["config"]
    return (record["method"], record["task"], c.get("run_task"), c.get("forget_class"), c.get("seed"),
            c.get("variant"), c.get("forget_ratio"), json.dumps(c.get("lr")))


def unmeasured(value):
    """``value`` without the measured entries (:data:`MEASURED`) of its nested dicts (a run's config keeps the cost
    of its synthetic images)."""
    if isinstance(value, dict):
        return {k: unmeasured(v) for k, v in value.items() if k not in MEASURED}
    return value


def assert_same_records(got, want):
    got, want = {identity(r): r for r in got}, {identity(r): r for r in want}
    assert set(got) == set(want)
    for key, rec in want.items():
        other = got[key]
        assert set(other["metrics"]) == set(rec["metrics"]), key
        assert unmeasured(other["config"]) == unmeasured(rec["config"]), key
        for name, value in rec["metrics"].items():
            if name in MEASURED:
                continue
            if isinstance(value, float) and isinstance(other["metrics"][name], float):
                assert math.isclose(other["metrics"][name], value, rel_tol=0, abs_tol=1e-6), (key, name)
            else:
                assert other["metrics"][name] == value, (key, name)


@pytest.fixture(scope="module")
def serial_records(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each Ray worker uses (cpus_per_run=1): the same sums, the same numbers
    try:
        return run_matrix(ResultStore(tmp_path_factory.mktemp("serial") / "10.json"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def executor():
    ex = cluster.RayExecutor("local", num_cpus=2, log=None)
    yield ex
    ex.shutdown()


def test_ray_gives_the_serial_records(serial_records, executor, tmp_path):
    assert len(serial_records) > 20
    got = run_matrix(ResultStore(tmp_path / "10.json"), executor=executor, world=WORLD)
    assert_same_records(got, serial_records)
    on_disk = ResultStore(tmp_path / "10.json", resume=True).records  # saved where the serial run saves
    assert_same_records(on_disk, serial_records)


def test_paper_a_targets_on_ray_give_the_serial_records(executor, tmp_path):
    """Notebook 30's quick matrix: each target one job (its comparison and ablation), here with one thread and on
    a Ray worker, the same records in the same order."""
    world = paper_a_matrix.paper_a_world_spec("mini", quick=True, seeds="0")
    loaded = cluster.load_world(world)
    serial = paper_a_matrix.run_paper_a_matrix(ResultStore(tmp_path / "here.json"), world=world, loaded=loaded,
                                               threads=1)
    got = paper_a_matrix.run_paper_a_matrix(ResultStore(tmp_path / "ray.json"), world=world, loaded=loaded,
                                            executor=executor)
    assert len(serial) > 10 and {r["task"] for r in serial} >= {"selection", "ablation"}
    assert [identity(r) for r in got] == [identity(r) for r in serial]
    assert_same_records(got, serial)


def run_key(spec):
    """What identifies a run of the matrix, from its spec."""
    settings = spec["settings"]
    return (spec["factory"], settings["method"], settings.get("variant"), settings.get("ratio"), spec["target"],
            spec["seed"])


def record_key(record):
    """The same from a saved record (a selection record names its driver's task in run_task)."""
    c = record["config"]
    kind = c.get("run_task") if record["task"] == "selection" else record["task"]
    factory = {"ablation": "ablation", "forget-ratio": "ratio"}.get(kind, "benchmark")
    return (factory, record["method"], c.get("variant"), c.get("forget_ratio"), c.get("forget_class"), c.get("seed"))


def test_an_interrupted_driver_reruns_only_what_did_not_finish(serial_records, executor, tmp_path):
    path, seen = tmp_path / "10.json", []

    def stop_after_five(line):
        seen.append(line)
        if len(seen) == 5:
            raise Interrupt(line)
    methods = ["ga", "graddiff", "neggrad_plus", "cliperase"]  # section 1 with four methods: 8 runs
    want = [r for r in serial_records if r["method"] in (*methods, "original") and identity(r)[1] in (
        "forget-class", "selection") and r["config"].get("run_task", "forget-class") == "forget-class"]
    executor.log, executor.finished = stop_after_five, []
    with pytest.raises(Interrupt):
        run_matrix(ResultStore(path), executor=executor, world=WORLD, methods=methods)
    kept = [r for r in ResultStore(path, resume=True).records if r["method"] != "original"]
    assert 0 < len(kept) < len(want) - 1
    executor.log, executor.finished = None, []
    got = run_matrix(ResultStore(path, resume=True), executor=executor, world=WORLD, methods=methods)
    assert_same_records(got, want)
    redone = {run_key(spec) for spec in executor.finished} & {record_key(r) for r in kept}
    assert executor.finished and not redone, redone  # only what had not finished ran again


def kill_a_busy_worker(*, timeout: float = 30.0) -> int:
    """SIGKILL one Ray worker process while it runs a run (its title is ``ray::execute_run``); return its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if " ".join(proc.info["cmdline"] or []).startswith("ray::execute_run"):
                proc.kill()
                return proc.pid
        time.sleep(0.02)
    raise AssertionError("no Ray worker was running a run")


def test_a_killed_worker_loses_only_its_run_and_the_rerun_finishes_the_matrix(serial_records, executor, tmp_path):
    path, seen, killed = tmp_path / "10.json", [], []

    def kill_after_three(line):
        seen.append(line)
        if len(seen) == 3 and not killed:
            killed.append(kill_a_busy_worker())
    methods = ["ga", "graddiff", "neggrad_plus", "cliperase"]  # section 1 with four methods: 8 runs
    want = [r for r in serial_records if r["method"] in (*methods, "original") and identity(r)[1] in (
        "forget-class", "selection") and r["config"].get("run_task", "forget-class") == "forget-class"]
    executor.log, executor.finished = kill_after_three, []
    run_matrix(ResultStore(path), executor=executor, world=WORLD, methods=methods)  # goes on past the dead worker
    first = [r for r in ResultStore(path, resume=True).records if r["method"] != "original"]
    failed = [r for r in first if r["metrics"].get("error")]
    assert killed and len(failed) == 1, [r["metrics"].get("error") for r in failed]
    assert failed[0]["metrics"]["error"].startswith(("WorkerCrashedError", "NodeDiedError", "RayTaskError"))
    # what must not run again: every finished run but those of a search one of whose candidates died (that search
    # is searched again, and its seeds rerun only if the choice moved)
    died = record_key(failed[0])
    searched_again = died[:5] if died[5] == SELECTION_SEED else None
    kept = {record_key(r) for r in first if not r["metrics"].get("error") and record_key(r)[:5] != searched_again}
    executor.log, executor.finished = None, []
    got = run_matrix(ResultStore(path, resume=True), executor=executor, world=WORLD, methods=methods)
    assert_same_records(got, want)  # the serial records, the dead worker's run included
    ran = {run_key(spec) for spec in executor.finished}
    assert died in ran and not ran & kept, ran & kept
    assert not any(r["metrics"].get("error") for r in ResultStore(path, resume=True).records)


def test_a_failed_run_is_recorded_and_the_others_go_on(executor, tmp_path):
    w = cluster.load_world(WORLD)
    task = w.tasks["sneaker"][1]
    good = make_spec({"world": WORLD, "factory": "benchmark",
                      "settings": {"method": "ga", "steps": 2, "batch_size": 8}}, task, {"lr": 1e-4}, reported=False)
    bad = dict(good, settings={**good["settings"], "method": "no-such-method"})
    calls = [RunCall(task, {"lr": 1e-4}, False, spec) for spec in (bad, good)]
    out = {i: rec for i, _, rec in executor.run(calls)}
    assert out[0]["metrics"]["failed"] and "no-such-method" in out[0]["metrics"]["error"]
    assert not out[1]["metrics"].get("failed") and out[1]["metrics"]["val_forget_acc"] is not None
    assert set(RUN_FACTORIES) == {"benchmark", "ablation", "ratio"}


def test_bad_input_stops_before_any_run(executor):
    with pytest.raises(ValueError, match="unknown CLUSTER 'gpu'; valid: empty"):
        cluster.make_executor("gpu")
    assert cluster.make_executor("") is None
    with pytest.raises(RuntimeError, match="has 0 GPUs, and each run asks for 1"):
        cluster.RayExecutor("local", gpus_per_run=1, log=None)
    with pytest.raises(RuntimeError, match="has 0 GPUs, and each run asks for 0.25"):  # four runs share a card
        cluster.make_executor("auto", profile="paper", runs_per_gpu=4)
    with pytest.raises(ValueError, match="runs_per_gpu must be a whole number >= 1, got 0"):
        cluster.make_executor("auto", profile="paper", runs_per_gpu=0)
    task = cluster.load_world(WORLD).tasks["sneaker"][1]
    missing = cluster.paper_c_world_spec("mini", quick=True, seeds="0", forget_classes="no-such-class")
    spec = make_spec({"world": missing, "factory": "benchmark", "settings": {"method": "ga", "steps": 2}}, task,
                     {"lr": 1e-4}, reported=False)
    with pytest.raises(RuntimeError, match="cannot load the world 'paper_c'.*no-such-class.*DATA_DIR"):
        list(executor.run([RunCall(task, {"lr": 1e-4}, False, spec)]))
    with pytest.raises(ConnectionError, match="cannot reach the Ray cluster at 'ray://127.0.0.1:1'.*ray start"):
        cluster.make_executor("ray://127.0.0.1:1")  # nothing listens there: refused at once, before Ray starts
    with pytest.raises(ValueError, match="needs its spec"):
        list(executor.run([RunCall(task, {"lr": 1e-4}, False, None)]))
    assert list(SerialExecutor().run([], run_fn=None)) == []


class FlakyExecutor(SerialExecutor):
    """A concurrent executor in this process whose runs of seed 1 raise once, as a lost worker's would."""

    concurrent = True

    def __init__(self):
        self.calls, self.failed = [], set()

    def run(self, calls, *, run_fn, finish_fn=None, ordered=True):
        for i, call in enumerate(calls):
            self.calls.append((call.task.seed, call.candidate["lr"]))
            if call.task.seed == 1 and 1 not in self.failed:
                self.failed.add(1)
                yield i, None, make_record(method="x", task=call.task.kind, config={
                    "forget_class": call.task.target, "seed": call.task.seed, **call.candidate},
                    metrics={"failed": True, "error": "RuntimeError: worker lost"})
                continue
            model, record = run_fn(call.task, **call.candidate)
            yield i, model, record


def test_a_run_that_raised_is_run_again_on_resume(tmp_path):
    w = cluster.load_world(WORLD)
    tasks = w.tasks["sneaker"]  # the selection seed's task, then seed 0
    tasks = [tasks[0], tasks[1], dataclass_replace(tasks[1], seed=1)]

    def run_fn(task, lr):
        m = {"score": 0.5, "val_forget_acc": 0.1, "val_retain_acc": 0.6, "failed": False, "forget_acc": 0.2}
        return None, summarise_run(task, method="x", config={"lr": lr}, test_metrics=m)
    flaky, path = FlakyExecutor(), tmp_path / "r.json"
    first = run_selected("x", tasks, run_fn=run_fn, grid={"lr": [1e-4]}, store=ResultStore(path),
                         selection=Selection(extend=None), executor=flaky)
    failed = [r for r in first if r["metrics"].get("error")]
    assert [r["config"]["seed"] for r in failed] == [1]  # recorded, and the other seed went on
    flaky.calls.clear()
    again = run_selected("x", tasks, run_fn=run_fn, grid={"lr": [1e-4]}, store=ResultStore(path, resume=True),
                         selection=Selection(extend=None), executor=flaky)
    assert flaky.calls == [(1, 1e-4)]  # only the run that raised
    assert not any(r["metrics"].get("error") for r in again)
    assert not any(r["metrics"].get("error") for r in ResultStore(path, resume=True).records)


def test_a_search_searched_again_reruns_the_seeds_whose_value_it_no_longer_chose(tmp_path):
    w = cluster.load_world(WORLD)
    tasks = w.tasks["sneaker"]
    tasks = [tasks[0], tasks[1], dataclass_replace(tasks[1], seed=1)]  # the selection seed's task, seeds 0 and 1
    scores, ran = {1e-4: 0.9, 1e-3: 0.5}, []

    def run_fn(task, lr):
        ran.append((task.seed, lr))
        m = {"score": scores[lr], "val_forget_acc": 0.1, "val_retain_acc": 0.6, "failed": False, "forget_acc": 0.2}
        return None, summarise_run(task, method="x", config={"lr": lr}, test_metrics=m)
    path, grid = tmp_path / "r.json", {"lr": [1e-4, 1e-3]}
    run_selected("x", tasks, run_fn=run_fn, grid=grid, store=ResultStore(path), selection=Selection(extend=None))
    store = ResultStore(path, resume=True)
    lost = next(r for r in store.records if r["task"] == "selection" and r["config"]["lr"] == 1e-3)
    lost["metrics"]["error"] = "WorkerCrashedError: the worker died"  # one candidate's worker died: search again
    store.add(lost)
    scores[1e-3] = 0.95  # and this time the other value wins
    ran.clear()
    out = run_selected("x", tasks, run_fn=run_fn, grid=grid, store=ResultStore(path, resume=True),
                       selection=Selection(extend=None))
    assert sorted(ran) == [(0, 1e-3), (1, 1e-3), (100, 1e-4), (100, 1e-3)]  # both seeds ran at the new choice
    assert [r["config"]["lr"] for r in out if r["task"] != "selection"] == [1e-3, 1e-3]
    scores[1e-3] = 0.5
    ran.clear()
    run_selected("x", tasks, run_fn=run_fn, grid=grid, store=ResultStore(path, resume=True),
                 selection=Selection(extend=None))
    assert ran == []  # a finished search and its seeds at its choice: nothing runs again


class SpecRecorder(SerialExecutor):
    """A concurrent executor in this process that keeps each call's spec and runs it as a worker would."""

    concurrent = True

    def __init__(self):
        self.specs = []

    def run(self, calls, *, run_fn=None, finish_fn=None, ordered=True):
        for i, call in enumerate(calls):
            self.specs.append(call.spec)
            yield i, None, cluster.execute_run(call.spec)


def test_a_worker_measures_against_the_retrained_model_only_the_runs_its_driver_does(monkeypatch):
    """The ablation's reported runs keep no model and their driver has no finish_fn: a worker must not measure
    them against the retrained model (it did, on None, and every full-mode ablation run failed on Ray)."""
    measured = []

    def fake_reference_fn(references, **kw):
        return lambda model, record, task: measured.append((record["method"], model is not None))
    monkeypatch.setattr(cluster, "reference_fn", fake_reference_fn)
    ablation = {"world": WORLD, "factory": "ablation", "settings": {
        "method": "cliperase", "variant": "FM", "loss_kwargs": {"lambda1": 0.0, "lambda2": 3.0, "lambda3": 0.0},
        "steps": 2, "batch_size": 8}}
    benchmark = {"world": WORLD, "factory": "benchmark", "settings": {"method": "ga", "steps": 2, "batch_size": 8}}
    for remote, finish_fn, want in ((ablation, None, []), (benchmark, lambda *a: None, [("ga", True)])):
        measured.clear()
        recorder = SpecRecorder()
        run_fn = RUN_FACTORIES[remote["factory"]](**remote["settings"], model=None, tokenizer=None)
        records = run_selected(remote["settings"]["method"], cluster.load_world(WORLD).tasks["sneaker"][:2],
                               run_fn=run_fn, grid={"lr": [1e-4]}, selection=Selection(extend=None),
                               executor=recorder, remote=remote, finish_fn=finish_fn)
        reported = [s for s in recorder.specs if s["reported"]]
        assert [s["finish"] for s in reported] == [finish_fn is not None]
        assert measured == want
        assert not any(r["metrics"].get("failed") for r in records)


def test_notebook_10s_matrix_goes_to_ray_in_the_mini_profile_and_stays_here_in_the_paper_one(monkeypatch):
    made = []
    monkeypatch.setattr(cluster, "make_local_executor", lambda workers, **kw: made.append(("local", workers)) or "L")
    monkeypatch.setattr(cluster, "make_executor", lambda where, **kw: made.append((where, kw["profile"])) or "R")
    assert cluster.make_matrix_executor("", profile="mini") == "L"  # one worker per torch thread
    assert cluster.make_matrix_executor("", profile="mini", runs_at_once=3) == "L"
    assert cluster.make_matrix_executor("", profile="mini", quick=True) == "L"  # CI's smoke run: here, in turn
    assert cluster.make_matrix_executor("auto", profile="mini", runs_at_once=3) == "R"  # CLUSTER decides
    assert cluster.make_matrix_executor("", profile="paper") == "R"  # make_executor(""): None, here on the GPU
    assert made == [("local", 0), ("local", 3), ("local", 1), ("auto", "mini"), ("", "paper")]
    assert cluster.MINI_RUN_THREADS == 1


def test_a_workers_world_keeps_its_reported_runs_in_the_archive_as_the_notebook_does(monkeypatch):
    """Notebook 45 attacks notebook 10's runs from the archive: a worker's runs must be kept there too."""
    seen = {}
    real = cluster.load_world(WORLD)  # loaded once for the module: its model, data and tasks stand in
    monkeypatch.setattr(cluster.paper_c, "load_paper_c_tasks", lambda settings, **kw: real)
    monkeypatch.setattr(cluster.retrain, "load_references", lambda tasks, **kw: seen.update(kw) or {"sneaker": None})
    world = cluster.paper_c_world(profile="mini", quick=False, seeds="0")
    assert world.references == {"sneaker": None}
    assert isinstance(seen["archive"], cluster.ModelArchive) and seen["archive"].base is real.model
    seen.clear()
    assert cluster.paper_c_world(profile="mini", quick=True, seeds="0").references is None and not seen
