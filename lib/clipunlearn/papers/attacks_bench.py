"""The attack benchmark: every reported run of the benchmark regenerated, attacked, and set beside the retrained model.

The benchmark's records (``results/<profile>/40_benchmark.json``) hold each reported run's selected configuration and
seed; the run's model is read from the ``harness.ModelArchive`` the reported run kept it in, or, where it was not kept,
rebuilt: runs are deterministic, so :func:`regenerate_model` rebuilds the unlearned model from them (a registered loss
through ``harness.run_method``; the three stages and the data-free Lipschitz method through their procedures with the
mini settings); either way the forget accuracy is checked against the record. :func:`run_attack_benchmark` runs
``harness.attacks.run_attacks`` on every such model, on the untouched model (``original``) and on the retrained model
(``retrain``), per task and seed; :func:`add_retrain_gaps` adds each attack's gap to the retrained model of the same
task and seed. A method added to the benchmark as a loss flows in without code changes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .. import data, models
from ..configs import mini_settings
from ..environment import torch_threads
from ..harness import ModelArchive, Reference, RunCall, Task, protocol_for, reported_tasks, run_method
from ..harness.attacks import ATTACKS, AttackSettings, measure_accuracies, run_attacks, unseen_forget_pool
from ..methods import retrain
from ..methods.lipschitz import generate_task_synthetic, run_lipschitz
from ..methods.nullspace import run_nullspace
from ..methods.three_stage import run_three_stage
from ..paths import get_results_path
from ..registry import LOSSES, METHODS, REFERENCES  # REFERENCES: the two models every method is compared with
from ..report import label_variants
from ..results import load_records, make_record
from .benchmark_tasks import BENCHMARK_TASKS, build_benchmark_tasks

__all__ = ["ATTACK_TASK", "ATTACK_THREADS", "AttackWorld", "REFERENCES", "add_retrain_gaps", "attack_methods",
           "attack_run", "attack_spec", "attack_targets", "attack_world_spec", "load_attack_world", "recorded_threads",
           "regenerate_model", "run_attack_benchmark", "run_attack_spec", "unseen_forget_pool"]

#: The record task of every attack record (``config.run_task`` holds the benchmark task).
ATTACK_TASK = "attacks"
#: The executor's name of an attack run (``cluster.execute_run``).
ATTACK_FACTORY = "attack"
#: Torch threads of one attack run, here or on a worker: torch sums in an order that depends on its threads, so the
#: records are the same whatever runs them and however many cores the machine has (two runs of one thread each
#: on 2 cores did 1.5x the work of one run of two threads).
ATTACK_THREADS = 1
#: Quick mode (CI): one task, one seed, tiny attacks and a tiny retrained model.
QUICK_TARGETS = {"forget-subgroup": "sandal"}
QUICK_ATTACK_SETTINGS = dict(retain_steps=(2, 4), forget_sizes=(2,), forget_steps=(2,), measure_per_class=10,
                             probe_per_class=20)
QUICK_REFERENCE_TRAINING = {"epochs": 1, "max_train_images": 2000}
#: A regenerated run matches its record when its forget accuracy is within this of the recorded one.
MATCH_TOLERANCE = 1e-4


@dataclass
class AttackWorld:
    """What the attack runs read: the mini CLIP and its tokenizer, notebook 40's ``records``, the ``tasks``
    (``{kind: {target: [task per seed]}}``, built as notebook 40 built them), the retrained ``references``
    (``{kind: {target: Reference}}``), the ``archive`` of reported runs and the ``selection`` protocol."""

    model: object
    tokenizer: object
    records: list
    tasks: dict
    references: dict
    archive: ModelArchive
    selection: object
    seeds: list


def attack_targets(kinds: str = "", *, quick: bool = False) -> dict[str, str]:
    """Return ``{kind: target}``: the benchmark's three tasks, or those of ``kinds`` (comma-separated); quick:
    :data:`QUICK_TARGETS`. A ValueError names the valid kinds."""
    if quick:
        return dict(QUICK_TARGETS)
    chosen = [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in BENCHMARK_TASKS]
    if unknown:
        raise ValueError(f"unknown task kinds {unknown}; valid: {', '.join(BENCHMARK_TASKS)}")
    return {k: BENCHMARK_TASKS[k] for k in chosen} if chosen else dict(BENCHMARK_TASKS)


def load_attack_world(*, seeds: str = "0,1,2", kinds: str = "", quick: bool = False, data_dir: str = "",
                      device="cpu") -> AttackWorld:
    """Load notebook 45's world from its parameters (the mini profile): the model, data, notebook 40's records,
    the tasks, the retrained references (quick: a tiny one) and the archive."""
    seeded = [int(s) for s in str(seeds).split(",") if s.strip()][:1 if quick else None]
    base, _, tokenizer = models.load_clip("mini", device=device)
    train, test = data.load_mini_world(data_dir=data_dir or None)
    records = load_records(get_results_path("mini", "40_benchmark", quick=quick))
    selection = protocol_for(seeded, quick=quick)
    tasks = build_benchmark_tasks(train, test, tasks=attack_targets(kinds, quick=quick),
                                  seeds=selection.with_seeds(seeded), n_seen=models.MINI_SEEN_IMAGES, quick=quick)
    training = QUICK_REFERENCE_TRAINING if quick else None  # None: the shipped recipe
    references = {kind: retrain.load_references(by_target, tokenizer=tokenizer, selection=selection, device=device,
                                                training=training) for kind, by_target in tasks.items()}
    return AttackWorld(base, tokenizer, records, tasks, references, ModelArchive(base), selection, seeded)


def attack_world_spec(*, seeds: str = "0,1,2", kinds: str = "", quick: bool = False, data_dir: str = "") -> dict:
    """Return the JSON world spec a Ray worker loads notebook 45's world from (``cluster.WORLD_LOADERS``)."""
    return {"name": "attacks", "params": {"seeds": str(seeds), "kinds": kinds, "quick": bool(quick),
                                          "data_dir": data_dir or ""}}


def _recorded(config: dict, defaults: dict) -> dict:
    """``defaults`` with every value the record's ``config`` holds under the same name (the run's own settings)."""
    return {k: config.get(k, v) for k, v in defaults.items()}


def _regenerate_three_stage(record: dict, task: Task, *, model, tokenizer, device):
    mini, config = mini_settings()["three_stage"], record["config"]
    return run_three_stage(task, model=model, tokenizer=tokenizer, lr=config["lr"],
                           batch_size=config.get("batch_size", mini["batch_size"]),
                           settings=_recorded(config, mini["settings"]),
                           calib_per_class=config.get("calib_per_class", mini["calib_per_class"]),
                           stage_metrics=False, device=device)[0]


def _regenerate_lipschitz(record: dict, task: Task, *, model, tokenizer, device):
    """The synthetic images are made with the record's generation settings (``config.generation``; records written
    before it was kept: the mini settings), the forgetting with the record's own settings."""
    lip, config = mini_settings()["lipschitz"], record["config"]
    prior = config.get("synthetic_prior", "none")
    generation = {**lip["generation"], **config.get("generation", {}),
                  **({"synthetic_prior": prior, "prior_settings": lip["bn_prior"]} if prior != "none" else {})}
    n_train = config.get("forget_images", lip["n_train"])
    n_val = config.get("synthetic", {}).get("images", n_train + lip["n_val"]) - n_train
    forget, val, _ = generate_task_synthetic(model, task, tokenizer=tokenizer, n_train=n_train, n_val=n_val,
                                             generation=generation, seed=task.seed, device=device)
    return run_lipschitz(task, model=model, tokenizer=tokenizer, forget_data=forget, val_forget=(val, None),
                         data_free=True, method="lipschitz_synthetic", device=device,
                         **{**_recorded(config, lip["forgetting"]), "lr": config["lr"]})[0]


def _regenerate_nullspace(record: dict, task: Task, *, model, tokenizer, device):
    return run_nullspace(task, model=model, tokenizer=tokenizer, alpha=record["config"]["alpha"], evaluate=False,
                         device=device)[0]


#: How a procedure's run is rebuilt from its record (a registered loss needs no entry); a variant of a method
#: (``report.label_variants``: the BatchNorm-prior synthetic images) is rebuilt by its method's entry.
REGENERATORS = {"three_stage": _regenerate_three_stage, "lipschitz_synthetic": _regenerate_lipschitz,
                "lipschitz_synthetic_bn": _regenerate_lipschitz, "nullspace": _regenerate_nullspace}


def attack_methods(records: Sequence[dict], *, tasks: Sequence[str], regenerable: bool | None = None) -> list[str]:
    """Return the methods with a reported run (``config.seed`` set) on any of ``tasks``, in the registry's order (a
    variant's label, ``<method>_<value>``, after its method; methods the registry lacks last, in the records'
    order), whatever order the records were saved in (runs on Ray are saved as they finish); ``regenerable``: only
    those :func:`regenerate_model` can rebuild (True) or only the others (False)."""
    records = label_variants(records)
    found = dict.fromkeys(r["method"] for r in records if r["task"] in tasks and r["method"] not in REFERENCES
                          and r["config"].get("seed") is not None)
    return [m for m in sorted(found, key=_registry_rank)
            if regenerable is None or (m in LOSSES or m in REGENERATORS) == regenerable]


def _registry_rank(method: str) -> tuple[int, int]:
    """Sort key of ``method`` in the registry's order: its own place, or its method's for a variant's label."""
    order = list(METHODS)
    if method in order:
        return order.index(method), 0
    bases = [m for m in order if method.startswith(f"{m}_")]
    return (order.index(max(bases, key=len)), 1) if bases else (len(order), 0)


def regenerate_model(record: dict, task: Task, *, model, tokenizer, device="cpu"):
    """Return the unlearned model of a reported benchmark ``record`` on ``task`` (its target and seed), rebuilt
    from ``model`` with the record's selected configuration."""
    method, config = record["method"], record["config"]
    if (task.kind, task.target, task.seed) != (record["task"], config.get("forget_class"), config.get("seed")):
        raise ValueError(f"the record is {record['task']}/{config.get('forget_class')}/seed {config.get('seed')}, "
                         f"the task {task.kind}/{task.target}/seed {task.seed}")
    if method in LOSSES:
        kwargs = {k: config[k] for k in ("eval_every", "logit_scale") if k in config}
        return run_method(method, task, model=model, tokenizer=tokenizer, lr=config["lr"], steps=config["steps"],
                          batch_size=config["batch_size"], device=device, evaluate=False, **kwargs)[0]
    if method in REGENERATORS:
        return REGENERATORS[method](record, task, model=model, tokenizer=tokenizer, device=device)
    raise ValueError(f"cannot regenerate {method!r}: valid methods are the registered losses "
                     f"({', '.join(LOSSES)}) and {', '.join(REGENERATORS)}")


def _find(records, method, kind, target, seed):
    found = [r for r in records if r["method"] == method and r["task"] == kind
             and r["config"].get("forget_class") == target and r["config"].get("seed") == seed]
    return found[-1] if found else None


def _find_raw(records: Sequence[dict], method, kind, target, seed) -> tuple[dict | None, dict | None]:
    """Return ``(labelled, raw)``: the reported record of ``method`` (a variant's label, ``report.label_variants``)
    and the same record as written (the archive knows a run by its own method)."""
    labelled = label_variants(records)
    source = _find(labelled, method, kind, target, seed)
    raw = next((r for r, lab in zip(records, labelled) if lab is source), None) if source is not None else None
    return source, raw


def attack_run(method: str, task: Task, *, records: Sequence[dict], model, tokenizer, reference: Reference,
               archive=None, settings: dict | None = None, attacks: Sequence[str] = tuple(ATTACKS),
               rebuild_threads: int | None = None, rebuilt: bool = False, device="cpu") -> dict:
    """Return the attack record of ``method`` (``original``, ``retrain`` or a reported run of the benchmark
    ``records``) on ``task``, attacked with :data:`ATTACK_THREADS` torch threads whatever runs it (here or on a
    worker), so that the record does not depend on the machine's cores or on how many runs go at once. A run not
    in the archive is rebuilt, and every run's forget accuracy checked against its record, with the threads its
    record was made with (:func:`recorded_threads`: its ``config.threads``, else ``rebuild_threads``, None: as
    they are); ``rebuilt``: the archive's copy was rebuilt by the driver (:func:`run_attack_benchmark`).
    ``reference``: the retrained model of ``task``'s target; ``archive``: see :func:`run_attack_benchmark`."""
    start = time.perf_counter()
    source, raw = _find_raw(records, method, task.kind, task.target, task.seed)
    if method in REFERENCES:
        attacked, check = model if method == "original" else reference.model, {}
    else:
        with torch_threads(recorded_threads(source, rebuild_threads)):  # rebuilt and checked as its record was made
            attacked = archive.load(raw) if archive is not None else None
            model_source = "rebuilt" if attacked is None or rebuilt else "archive"
            if attacked is None:
                attacked = regenerate_model(source, task, model=model, tokenizer=tokenizer, device=device)
            attacked = attacked.to(device)
            again = measure_accuracies(attacked, task, tokenizer=tokenizer, device=device, sets=("forget",))
        check = {"regenerated_forget_acc": again["forget_acc"], "recorded_forget_acc": source["metrics"].get(
            "forget_acc"), "regenerated_matches": abs(again["forget_acc"] - source["metrics"]["forget_acc"])
                 <= MATCH_TOLERANCE}
    with torch_threads(ATTACK_THREADS):
        attack_settings = AttackSettings(tokenizer=tokenizer, device=device, seed=task.seed, **(settings or {}))
        result = run_attacks(attacked, task, attack_settings, attacks=attacks)
    config = {"run_task": task.kind, "forget_class": task.target, "seed": task.seed, "attacks": list(attacks),
              **{k: list(v) if isinstance(v, tuple) else v for k, v in vars(attack_settings).items()
                 if k not in ("tokenizer", "device")},
              "source_lr": (source or {}).get("config", {}).get("lr"), "threads": ATTACK_THREADS}
    if method not in REFERENCES:
        config["model_source"] = model_source
    return make_record(method=method, task=ATTACK_TASK, config=config,
                       metrics={**result, **check, "seconds": time.perf_counter() - start})


def _attack_jobs(records, tasks, *, methods, references, selection) -> list[tuple[str, Task]]:
    """Every (method, task) to attack, the references first on each task; a ValueError naming the valid values
    when a method has no reported run or a target no retrained model."""
    labelled, jobs = label_variants(records), []
    for target, seeded in tasks.items():
        if target not in references:
            raise ValueError(f"no retrained model for {target!r}; references exist for {', '.join(references)}")
        for task in reported_tasks(seeded, selection):
            for method in (*REFERENCES, *methods):
                if method not in REFERENCES and _find(labelled, method, task.kind, target, task.seed) is None:
                    valid = attack_methods(records, tasks=[task.kind])
                    raise ValueError(f"no benchmark record of {method!r} on {task.kind}/{target}/seed {task.seed}; "
                                     f"methods with records: {', '.join(valid)}")
                jobs.append((method, task))
    return jobs


def run_attack_benchmark(records: Sequence[dict], tasks: dict[str, Sequence[Task]], *, methods: Sequence[str],
                         model, tokenizer, references: dict[str, Reference], store, settings: dict | None = None,
                         selection=None, attacks: Sequence[str] = tuple(ATTACKS), device="cpu",
                         progress: bool = False, archive=None, executor=None, world: dict | None = None) -> list[dict]:
    """Attack every reported run of ``methods`` in the benchmark ``records``, the original and the retrained model.

    ``tasks``: ``{target: [task per seed]}`` (``selection``'s seed is skipped); ``references``: ``{target:
    Reference}``. One record per method, task and seed (:func:`attack_run`; task :data:`ATTACK_TASK`; ``config``:
    the benchmark task, target, seed, the attack settings, the source run's lr), resumable through ``store`` (a
    failed record is run again). ``settings``: ``AttackSettings`` fields besides the tokenizer, device and seed.
    ``archive`` (a ``harness.ModelArchive`` of ``model``): a run's model is read from it where the run kept it
    (``config.model_source``: ``archive``), else rebuilt (``rebuilt``); either way its forget accuracy is checked
    against the record. ``executor``: None (one run after the other, here) or a ``cluster.RayExecutor`` with
    ``world`` (:func:`attack_world_spec`: what its workers load); the records are the same. Returns every attack
    record; a RuntimeError after the others when a run failed.
    """
    settings, rebuild_threads = dict(settings or {}), torch.get_num_threads()  # the threads the benchmark ran with
    jobs, out = _attack_jobs(records, tasks, methods=methods, references=references, selection=selection), {}
    for i, (method, task) in enumerate(jobs):
        done = store.find(method=method, task=ATTACK_TASK, run_task=task.kind, forget_class=task.target,
                          seed=task.seed)
        if done is not None and not done["metrics"].get("failed"):
            out[i] = done
    todo = [i for i in range(len(jobs)) if i not in out]
    if executor is None:
        for i in tqdm(todo, desc="attacks", disable=not progress):
            method, task = jobs[i]
            out[i] = attack_run(method, task, records=records, model=model, tokenizer=tokenizer,
                                reference=references[task.target], archive=archive, settings=settings,
                                attacks=attacks, rebuild_threads=rebuild_threads, device=device)
            store.add(out[i])
    else:
        if world is None:
            raise ValueError("a Ray run of the attacks needs world= (attack_world_spec(...): what a worker loads)")
        rebuilt = _rebuild_missing([jobs[i] for i in todo], records, model=model, tokenizer=tokenizer,
                                   archive=archive, progress=progress, device=device)
        calls = [RunCall(jobs[i][1], {}, False, spec=attack_spec(
            world, jobs[i][0], jobs[i][1], settings=settings, attacks=attacks, rebuild_threads=rebuild_threads,
            rebuilt=(jobs[i][0], jobs[i][1].kind, jobs[i][1].seed) in rebuilt)) for i in todo]
        for k, _, record in executor.run(calls, ordered=False):
            out[todo[k]] = record
            store.add(record)
    gapped = add_retrain_gaps([out[i] for i in range(len(jobs))])
    store.add(*gapped)
    failed = [f"{r['method']} {r['config'].get('run_task')}/{r['config'].get('forget_class')}/seed "
              f"{r['config'].get('seed')}: {r['metrics'].get('error')}" for r in gapped if r["metrics"].get("failed")]
    if failed:
        raise RuntimeError(f"{len(failed)} attack runs failed ({'; '.join(failed)}); the others are saved: fix the "
                           "cause and rerun with RESUME=True to run only these")
    return gapped


def recorded_threads(record: dict | None, default: int | None) -> int | None:
    """Return the torch threads ``record``'s run was made with (``config.threads``, kept since runs record it), else
    ``default``: a rebuild repeats the run's sums in their order only with its threads."""
    return ((record or {}).get("config") or {}).get("threads", default)


def _rebuild_missing(jobs, records, *, model, tokenizer, archive, progress: bool, device) -> set[tuple]:
    """Rebuild here, with the threads each record was made with (:func:`recorded_threads`; this process's where the
    record does not say), every run of ``jobs`` the ``archive`` lacks, and keep it there for the workers to read
    (one worker of one CPU would rebuild it slower, with more threads than its CPU); return the ``(method, kind,
    seed)`` of each run kept."""
    kept = set()
    if archive is None:
        return kept
    missing = []
    for method, task in jobs:
        source, raw = _find_raw(records, method, task.kind, task.target, task.seed) if method not in REFERENCES \
            else (None, None)
        if raw is not None and not archive.path_for(raw).is_file():
            missing.append((method, task, source, raw))
    for method, task, source, raw in tqdm(missing, desc="rebuilding", disable=not progress):
        with torch_threads(recorded_threads(source, None)):
            rebuilt = regenerate_model(source, task, model=model, tokenizer=tokenizer, device=device)
        if archive.save(rebuilt, raw) is not None:
            kept.add((method, task.kind, task.seed))
    return kept


def attack_spec(world: dict, method: str, task: Task, *, settings: dict, attacks: Sequence[str],
                rebuild_threads: int | None = None, rebuilt: bool = False) -> dict:
    """Return the JSON spec of one attack run (``cluster.execute_run`` runs it on a worker)."""
    return {"world": world, "factory": ATTACK_FACTORY, "kind": task.kind, "target": task.target, "seed": task.seed,
            "candidate": {}, "reported": False,
            "settings": {"method": method, "attack_settings": dict(settings), "attacks": list(attacks),
                         "rebuild_threads": rebuild_threads, "rebuilt": bool(rebuilt)}}


def run_attack_spec(world: AttackWorld, spec: dict, *, device="cpu") -> dict:
    """Run the attack of ``spec`` (:func:`attack_spec`) in ``world`` (:func:`load_attack_world`)."""
    kind, target, seed = spec["kind"], spec["target"], spec["seed"]
    found = [t for t in world.tasks.get(kind, {}).get(target, []) if t.seed == seed]
    if not found:
        raise ValueError(f"the attack world has no task {kind}/{target}/seed {seed}")
    settings = spec["settings"]
    return attack_run(settings["method"], found[0], records=world.records, model=world.model,
                      tokenizer=world.tokenizer, reference=world.references[kind][target], archive=world.archive,
                      settings=settings["attack_settings"], attacks=settings["attacks"],
                      rebuild_threads=settings.get("rebuild_threads"), rebuilt=settings.get("rebuilt", False),
                      device=device)


def add_retrain_gaps(records: Sequence[dict]) -> list[dict]:
    """Return ``records`` with ``gap/<metric>`` beside every ``<attack>/.../forget_acc``: the value minus the
    retrained model's on the same task, target and seed (positive: the attack brings back more than a model that
    never saw the forget images has); records without a retrained counterpart are returned unchanged."""
    retrained = {(r["config"]["run_task"], r["config"]["forget_class"], r["config"]["seed"]): r["metrics"]
                 for r in records if r["method"] == "retrain" and r["task"] == ATTACK_TASK}
    out = []
    for rec in records:
        ref = retrained.get((rec["config"].get("run_task"), rec["config"].get("forget_class"),
                             rec["config"].get("seed")))
        if rec["task"] == ATTACK_TASK and ref is not None:
            rec = {**rec, "metrics": {k: v for k, v in rec["metrics"].items() if not k.startswith("gap/")}}
            rec["metrics"].update({f"gap/{k}": v - ref[k] for k, v in list(rec["metrics"].items())
                                   if k.split("/")[0] in ATTACKS and k.endswith("forget_acc") and k in ref})
        out.append(rec)
    return out
