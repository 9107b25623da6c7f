"""A notebook's run matrix on a Ray cluster: :class:`RayExecutor` and the worlds its workers load.

The drivers of ``harness`` (the benchmark, the ablation, the forget-ratio sweep) run each selection in two phases
of independent runs (``harness.executor``). With ``executor=RayExecutor(...)`` and ``world=<a world spec>`` every
run becomes a Ray task: a small JSON spec (the world, the driver's settings, the task's kind, target and seed, the
candidate values). A worker loads the world's model, data and retrained references itself (:func:`load_world`,
once per worker process; nothing of the driver's model or data is pickled), rebuilds the driver's ``run_fn``
(``harness.RUN_FACTORIES``), runs it and returns the record; the driver saves each record as it arrives, in the
file the serial run writes. A finished record is never run again (the store's resume), so a crashed worker or an
interrupted driver loses only the runs in flight. A run that raises is recorded as failed, with the last line of
its traceback (``metrics.error``), and the others go on; resuming runs it again.

Worlds: :data:`WORLD_LOADERS` (``"paper_c"``: notebook 10's, from its parameters, :func:`paper_c_world`;
``"paper_a"``: notebook 30's, ``papers.paper_a_matrix.load_paper_a_world``, whose runs are whole targets,
``harness.jobs``; ``"attacks"``: notebook 45's, ``papers.attacks_bench.load_attack_world``, whose runs are its
attacks; the last two in :data:`WORLD_RUNS`).
Ray is the optional extra ``[cluster]`` (``pip install -e ".[cluster]"``).
"""

from __future__ import annotations

import json
import socket
import time
import traceback
from urllib.parse import urlsplit
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .environment import default_progress
from .harness import (FACTORY_TASKS, RUN_FACTORIES, ModelArchive, RunCall, Selection, Task, build_task,
                      reference_fn, run_ablation, run_forget_benchmark, run_forget_ratio)
from .methods import retrain
from .harness.jobs import JOB_TASK
from .papers import attacks_bench, paper_a_matrix, paper_c
from .results import make_record

try:  # the optional extra [cluster]; everything else works without it
    import ray
except ImportError:  # pragma: no cover - exercised where ray is absent
    ray = None

__all__ = ["MINI_RUN_THREADS", "RayExecutor", "WORLD_LOADERS", "WORLD_RUNS", "World", "check_reachable",
           "check_world", "execute_run", "load_world", "make_executor", "make_local_executor", "make_matrix_executor",
           "paper_c_world", "paper_c_world_spec", "run_paper_c_matrix"]

#: Torch threads of every run of a mini matrix (notebook 10's benchmark, ablation and forget-ratio sweep), wherever
#: it runs: on a worker of one CPU, or here one after the other. One thread sums in another order than two, so the
#: records depend on it, and then not on the cores or on how many runs go at once.
MINI_RUN_THREADS = 1


@dataclass
class World:
    """What a worker runs a spec in: the model, its tokenizer, the tasks by target, the data to build others from,
    the retrained references and the notebook's settings (their selection protocol and task sizes)."""

    model: torch.nn.Module
    tokenizer: object
    tasks: dict
    train: object
    test: object
    templates: tuple
    n_seen: int | None
    settings: dict
    references: dict | None
    steps: int | None = None  # the world's steps per run (notebook 10: its epochs' steps in the paper profile)

    @property
    def selection(self) -> Selection | None:
        """The selection protocol of the settings."""
        return self.settings.get("selection")

    def find_task(self, kind: str, target: str, seed: int) -> Task:
        """Return the task of ``kind`` / ``target`` / ``seed``: one of :attr:`tasks`, or one built from the data
        (a forget-ratio draw, whose target names its classes)."""
        for task in self.tasks.get(target, []):
            if task.kind == kind and task.seed == seed:
                return task
        return build_task(self.train, self.test, kind=kind, target=target, seed=seed, templates=self.templates,
                          n_seen=self.n_seen, **self.settings["task"])


def paper_c_world(*, profile: str = "mini", quick: bool = False, seeds: str = "0,1,2", data_dir: str = "",
                  retrain_references: bool = True, workers: int = 0, device="cpu", **params) -> World:
    """Notebook 10's world from its parameters (``paper_c.paper_c_settings``; ``params``: its other string
    parameters, e.g. ``forget_classes``), as the notebook loads it."""
    settings = paper_c.paper_c_settings(profile, quick=quick, seeds=seeds, **params)
    world = paper_c.load_paper_c_tasks(settings, device=device, data_dir=data_dir or None, workers=workers)
    references = retrain.load_references(world.tasks, tokenizer=world.tokenizer, selection=settings["selection"],
                                         device=device, archive=ModelArchive(world.model)) \
        if profile == "mini" and retrain_references and not quick else None  # as the notebook: runs kept for 45
    return World(world.model, world.tokenizer, world.tasks, world.train, world.test, world.templates, world.n_seen,
                 settings, references, world.steps)


def paper_c_world_spec(profile: str, *, quick: bool, seeds: str, data_dir: str = "", retrain: bool = True,
                       workers: int = 0, **params) -> dict:
    """Return the JSON world spec of notebook 10 from its parameters (``params``: the other string parameters of
    ``paper_c.paper_c_settings``, e.g. ``forget_classes``, ``model``, ``pretrained``, ``dataset``)."""
    return {"name": "paper_c", "params": {"profile": profile, "quick": bool(quick), "seeds": str(seeds),
                                          "data_dir": data_dir or "", "retrain_references": bool(retrain),
                                          "workers": int(workers), **params}}


def run_paper_c_matrix(store, *, world: dict, executor=None, methods: Sequence[str] | None = None) -> list[dict]:
    """Run notebook 10's matrix of ``world`` (a :func:`paper_c_world_spec`: its sections 1, 3 and 4, the benchmark,
    the module ablation and the forget-ratio sweep, as the notebook calls them) into ``store``; return its records.
    ``executor``: None (here, one run after the other) or a :class:`RayExecutor`; ``methods``: section 1 alone,
    with these methods."""
    w = load_world(world)  # the driver's own copy; a worker loads its own
    settings, steps = w.settings, w.steps
    remote = dict(world=world if executor is not None else None, executor=executor)
    kw = dict(model=w.model, tokenizer=w.tokenizer, store=store, selection=settings["selection"], **remote)
    run_forget_benchmark(methods or settings["methods"], w.tasks, grid=settings["grid"], steps=steps,
                         batch_size=settings["batch_size"], references=w.references, progress=False, **kw)
    if methods:
        return store.records
    run_ablation("cliperase", w.tasks[settings["forget"][0]], variants=settings["ablations"], steps=steps,
                 batch_size=settings["batch_size"], full_variant="FM+RM+CM", grid=settings["grid"], **kw)
    run_forget_ratio(settings["ratio_methods"], ratios=settings["ratios"][:2 if world["params"]["quick"] else None],
                     train=w.train, test=w.test, templates=w.templates, n_seen=w.n_seen, seeds=settings["seeds"],
                     steps=steps, grid=settings["grid"], batch_size=settings["batch_size"],
                     task_kwargs=settings["task"], steps_per_class=settings["ratio_steps_per_class"], **kw)
    return store.records


#: World name -> loader (keyword arguments: the world spec's ``params`` and ``device``).
WORLD_LOADERS: dict[str, Callable[..., object]] = {"paper_c": paper_c_world,
                                                  "paper_a": paper_a_matrix.load_paper_a_world,
                                                  "attacks": attacks_bench.load_attack_world}
#: Runs a world runs itself, by the spec's ``factory`` (the others: ``harness.RUN_FACTORIES``): ``fn(world, spec,
#: device=...) -> record`` and the task of its records.
WORLD_RUNS: dict[str, tuple[Callable[..., dict], str]] = {
    attacks_bench.ATTACK_FACTORY: (attacks_bench.run_attack_spec, attacks_bench.ATTACK_TASK),
    paper_a_matrix.PAPER_A_FACTORY: (paper_a_matrix.run_target_spec, JOB_TASK)}
_WORLDS: dict[str, World] = {}  # loaded worlds of this process, by spec


def load_world(spec: dict, *, device="cpu") -> World:
    """Return the world of ``spec`` (``{"name", "params"}``), loaded once per process and device."""
    if spec.get("name") not in WORLD_LOADERS:
        raise ValueError(f"unknown world {spec.get('name')!r}; valid: {', '.join(WORLD_LOADERS)}")
    key = json.dumps([spec, str(device)], sort_keys=True)
    if key not in _WORLDS:
        _WORLDS[key] = WORLD_LOADERS[spec["name"]](device=device, **spec.get("params", {}))
    return _WORLDS[key]


def execute_run(spec: dict, *, device="cpu", threads: int | None = None) -> dict:
    """Run one spec (``harness.make_spec``) in this process and return its record; a run that raises returns a
    failed record holding the last line of its traceback."""
    if threads is not None:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        world = load_world(spec["world"], device=device)
        if spec.get("factory") in WORLD_RUNS:
            return WORLD_RUNS[spec["factory"]][0](world, spec, device=device)
        settings = dict(spec["settings"])
        run_fn = RUN_FACTORIES[spec["factory"]](**settings, model=world.model, tokenizer=world.tokenizer,
                                                device=device, selection=world.selection)
        task = world.find_task(spec["kind"], spec["target"], spec["seed"])
        model, record = run_fn(task, **spec["candidate"])
        # as the driver does: only a run whose driver measures it against the retrained model (the benchmark's)
        finish = reference_fn(world.references, tokenizer=world.tokenizer, device=device) if spec.get("finish") \
            else None
        if finish is not None:
            finish(model, record, task)
        return record
    except Exception:  # noqa: BLE001 - recorded as a failed run; the matrix goes on
        return failed_record(spec, traceback.format_exc().strip().splitlines()[-1],
                             seconds=time.perf_counter() - start)


def failed_record(spec: dict, error: str, *, seconds: float | None = None) -> dict:
    """Return the record of a run of ``spec`` that did not finish (``metrics.failed``, ``metrics.error``): saved
    like any record, and run again on resume."""
    settings = spec.get("settings", {})
    if spec.get("factory") in WORLD_RUNS:  # a world's own run: its records name the task kind run_task
        return make_record(method=settings.get("method", "unknown"), task=WORLD_RUNS[spec["factory"]][1],
                           config={"run_task": spec.get("kind"), "forget_class": spec.get("target"),
                                   "seed": spec.get("seed")},
                           metrics={"failed": True, "error": error, "seconds": seconds})
    extra = {k: settings[s] for k, s in (("variant", "variant"), ("forget_ratio", "ratio")) if s in settings}
    return make_record(method=settings.get("method", "unknown"),
                       task=FACTORY_TASKS.get(spec.get("factory"), spec.get("kind")),
                       config={"task": spec.get("kind"), "forget_class": spec.get("target"),
                               "seed": spec.get("seed"), **extra, **spec.get("candidate", {})},
                       metrics={"failed": True, "error": error, "seconds": seconds})


def check_world(spec: dict, *, device="cpu") -> str | None:
    """Load the world of ``spec`` here; return None, or why it cannot be loaded (a worker's preflight)."""
    try:
        load_world(spec, device=device)
    except Exception:  # noqa: BLE001 - reported to the driver before any run starts
        return traceback.format_exc().strip().splitlines()[-1]
    return None


def check_reachable(address: str, *, timeout: float = 5.0) -> None:
    """Raise a ConnectionError that says what to do when ``ray://HOST:PORT`` does not answer within ``timeout``
    seconds (Ray's client would wait about 30 s before saying so)."""
    parts = urlsplit(address)
    if not parts.hostname:
        raise ValueError(f"{address!r} is not a Ray address; give it as ray://HOST:PORT")
    port = parts.port or 10001
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return
    except OSError as err:
        raise ConnectionError(f"cannot reach the Ray cluster at {address!r} ({err}): start one on that machine "
                              f"(ray start --head --ray-client-server-port={port}), check the host and port, or "
                              "run without --cluster") from err


def _describe(spec: dict | None) -> str:
    if not spec:
        return "run"
    if spec.get("seed") is None:  # a whole target's job (harness.jobs)
        return f"{spec['factory']} {spec['target']}"
    cand = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in spec["candidate"].items())
    part = "".join(f" {k} {spec['settings'][k]}" for k in ("variant", "ratio") if k in spec["settings"])
    return f"{spec['factory']} {spec['settings'].get('method')}{part} {spec['target']} seed {spec['seed']} ({cand})"


class RayExecutor:
    """Send every run of a phase to Ray at once (``harness.executor``); yield records as they finish.

    ``address``: ``"local"`` (a Ray instance on this machine with ``num_cpus`` CPUs, every GPU it has), ``"auto"``
    (the cluster this machine belongs to) or ``"ray://HOST:PORT"`` (a remote cluster). Each run asks for
    ``cpus_per_run`` CPUs (and torch uses that many threads) and ``gpus_per_run`` GPUs; ``device``: the workers'
    device. An unreachable address, or ``gpus_per_run`` on a cluster without GPUs, raises before any run starts.
    ``log``: one line per finished run (None: quiet); ``progress``: one bar over the matrix, its total growing as
    each selection submits a phase.
    """

    concurrent = True

    def __init__(self, address: str = "local", *, num_cpus: int | None = None, cpus_per_run: int = 1,
                 gpus_per_run: float = 0, device: str = "cpu", log=print, progress: bool = False):
        if ray is None:
            raise RuntimeError("Ray is not installed: pip install -e \".[cluster]\" (the optional extra), or run "
                               "without a cluster")
        self.cpus_per_run, self.gpus_per_run, self.device = cpus_per_run, gpus_per_run, device
        self.log, self.progress = log, progress
        self.finished: list[dict] = []  # the spec of every run that came back, in order
        self._bar = tqdm(total=0, desc="runs", unit="run", disable=not progress)  # one bar over the matrix
        if address.startswith("ray://"):
            check_reachable(address)
        try:
            if address == "local":
                ray.init(num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                         configure_logging=False)
            else:
                ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ConnectionError(f"cannot reach the Ray cluster at {address!r} ({err}); start one (ray start --head) "
                                  "or give its address as ray://HOST:PORT (port 10001 by default)") from err
        resources = ray.cluster_resources()
        if gpus_per_run and resources.get("GPU", 0) < gpus_per_run:
            raise RuntimeError(f"the Ray cluster at {address!r} has {resources.get('GPU', 0):g} GPUs, and each run "
                               f"asks for {gpus_per_run:g}: start it on GPU machines, or run the mini profile on CPUs")
        options = dict(num_cpus=cpus_per_run, num_gpus=gpus_per_run or None, max_retries=0)
        self._remote, self._check = ray.remote(execute_run).options(**options), ray.remote(check_world).options(
            **options)
        self._checked: set[str] = set()

    def preflight(self, world: dict) -> None:
        """Load ``world`` on a worker once; a RuntimeError that says what to do when it cannot be loaded."""
        key = json.dumps(world, sort_keys=True)
        if key in self._checked:
            return
        problem = ray.get(self._check.remote(world, device=self.device))
        if problem:
            raise RuntimeError(f"a Ray worker cannot load the world {world.get('name')!r}: {problem}. Every worker "
                               "needs the data (DATA_DIR or $CLIPUNLEARN_DATA on its machine, e.g. python -m "
                               "clipunlearn data --fetch there) and the model weights; fix that and rerun (finished "
                               "runs are kept)")
        self._checked.add(key)

    def run(self, calls: Sequence[RunCall], *, run_fn=None, finish_fn=None,
            ordered: bool = True):
        """Yield ``(index, None, record)`` of every call (its ``spec`` rebuilt on a worker): in order, or as they
        finish (``ordered=False``). A run whose worker died is a failed record (``cluster.failed_record``) and
        the others go on; a rerun with resume runs it again."""
        missing = [i for i, c in enumerate(calls) if c.spec is None]
        if missing:
            raise ValueError("a Ray run needs its spec (pass world= to the driver: the JSON description a worker "
                             "loads the model and data from)")
        for world in {json.dumps(c.spec["world"], sort_keys=True) for c in calls}:
            self.preflight(json.loads(world))
        refs = [self._remote.remote(c.spec, device=self.device, threads=self.cpus_per_run) for c in calls]
        index = {ref: i for i, ref in enumerate(refs)}
        self._bar.total += len(refs)
        self._bar.refresh()
        pending = list(refs)
        done_early: dict[int, dict] = {}
        next_out = 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            i = index[ready[0]]
            try:
                record = ray.get(ready[0])
            except ray.exceptions.RayError as err:  # the worker died (killed, out of memory, its node lost)
                first = (str(err).strip().splitlines() or [""])[0]
                record = failed_record(calls[i].spec, f"{type(err).__name__}: {first}")
            self.finished.append(calls[i].spec)
            self._bar.update(1)
            if self.log is not None:
                status = f"FAILED: {record['metrics']['error']}" if record["metrics"].get("error") else \
                    f"done in {record['metrics'].get('seconds') or 0:.1f} s"
                self.log(f"[ray] {_describe(calls[i].spec)} {status}")
            if not ordered:
                yield i, None, record
                continue
            done_early[i] = record
            while next_out in done_early:
                yield next_out, None, done_early.pop(next_out)
                next_out += 1

    def shutdown(self) -> None:
        """Disconnect from Ray (a local instance stops) and close the progress bar."""
        self._bar.close()
        ray.shutdown()


def make_executor(cluster: str = "", *, profile: str = "mini", num_cpus: int | None = None, runs_per_gpu: int = 1,
                  log=print):
    """Return the executor a notebook's ``CLUSTER`` parameter names: ``""`` (None: this process, the serial loop),
    ``"auto"`` (a local Ray instance: in the paper profile one GPU per run, else one CPU per run) or
    ``"ray://HOST:PORT"`` (an existing cluster). ``runs_per_gpu`` (paper profile): runs sharing one GPU, each in its
    own worker process (Ray's fractional GPUs: a run asks for ``1 / runs_per_gpu`` of a card), so that several
    small-batch runs keep a large card busy where one alone is launch bound; each needs its share of the memory."""
    if not isinstance(runs_per_gpu, int) or runs_per_gpu < 1:
        raise ValueError(f"runs_per_gpu must be a whole number >= 1, got {runs_per_gpu!r}")
    if not cluster:
        return None
    if cluster != "auto" and not cluster.startswith("ray://"):
        raise ValueError(f"unknown CLUSTER {cluster!r}; valid: empty (no cluster), auto (Ray on this machine), "
                         "ray://HOST:PORT (an existing Ray cluster)")
    gpu = profile == "paper"
    return RayExecutor("local" if cluster == "auto" else cluster, num_cpus=num_cpus,
                       gpus_per_run=1 / runs_per_gpu if gpu else 0, device="cuda" if gpu else "cpu", log=log,
                       progress=default_progress())


def make_local_executor(workers: int = 0, *, log=print):
    """Return the executor of a matrix of one-thread runs on this machine: a local Ray instance of ``workers`` CPUs
    (0: as many as this process has torch threads, ``CLIPUNLEARN_THREADS`` under ``./run_all.sh``), or None (here,
    one after the other) for one worker or where Ray is not installed (said once)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a whole number >= 0 (0: one per torch thread), got {workers!r}")
    workers = workers or torch.get_num_threads()
    if workers < 2:
        return None
    if ray is None:
        print(f"Ray is not installed, so the runs go one after the other here instead of {workers} at once "
              "(same records; pip install -e \".[cluster]\" for the faster way)")
        return None
    return RayExecutor("local", num_cpus=workers, log=log, progress=default_progress())


def make_matrix_executor(cluster: str = "", *, profile: str = "mini", runs_at_once: int = 0, quick: bool = False,
                         runs_per_gpu: int = 1, log=print):
    """Return the executor of a notebook's run matrix (notebooks 10's and 30's ``CLUSTER`` and ``RUNS_AT_ONCE``,
    notebook 45's ``CLUSTER`` and ``WORKERS``): ``cluster`` when given (:func:`make_executor`); else in the paper
    profile None (here, one after the other, on its GPU); in the mini profile :func:`make_local_executor` of
    ``runs_at_once`` workers (0: one per torch thread; quick mode: 1, here), whose runs take one thread each
    (notebooks 10's and 30's :data:`MINI_RUN_THREADS`, notebook 45's ``attacks_bench.ATTACK_THREADS``; notebook
    30's runs are whole targets, ``harness.jobs``). Where it returns None in the mini profile, notebooks 10 and 30
    run with :data:`MINI_RUN_THREADS` threads too (the same records), but in quick mode (a smoke run whose records
    nothing compares)."""
    if cluster or profile != "mini":
        return make_executor(cluster, profile=profile, runs_per_gpu=runs_per_gpu, log=log)
    return make_local_executor(runs_at_once or (1 if quick else 0), log=log)
