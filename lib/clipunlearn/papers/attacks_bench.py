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

from typing import Sequence

from tqdm.auto import tqdm

from ..configs import mini_settings
from ..harness import Reference, Task, reported_tasks, run_method
from ..harness.attacks import ATTACKS, AttackSettings, measure_accuracies, run_attacks, unseen_forget_pool
from ..methods.lipschitz import generate_task_synthetic, run_lipschitz
from ..methods.nullspace import run_nullspace
from ..methods.three_stage import run_three_stage
from ..registry import LOSSES, REFERENCES  # the two models every method is compared with
from ..report import label_variants
from ..results import make_record

__all__ = ["ATTACK_TASK", "REFERENCES", "add_retrain_gaps", "attack_methods", "regenerate_model",
           "run_attack_benchmark", "unseen_forget_pool"]

#: The record task of every attack record (``config.run_task`` holds the benchmark task).
ATTACK_TASK = "attacks"
#: A regenerated run matches its record when its forget accuracy is within this of the recorded one.
MATCH_TOLERANCE = 1e-4


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
    """Return the methods with a reported run (``config.seed`` set) on any of ``tasks``, in the records' order;
    ``regenerable``: only those :func:`regenerate_model` can rebuild (True) or only the others (False)."""
    records = label_variants(records)
    found = dict.fromkeys(r["method"] for r in records if r["task"] in tasks and r["method"] not in REFERENCES
                          and r["config"].get("seed") is not None)
    return [m for m in found if regenerable is None or (m in LOSSES or m in REGENERATORS) == regenerable]


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


def run_attack_benchmark(records: Sequence[dict], tasks: dict[str, Sequence[Task]], *, methods: Sequence[str],
                         model, tokenizer, references: dict[str, Reference], store, settings: dict | None = None,
                         selection=None, attacks: Sequence[str] = tuple(ATTACKS), device="cpu",
                         progress: bool = False, archive=None) -> list[dict]:
    """Attack every reported run of ``methods`` in the benchmark ``records``, the original and the retrained model.

    ``tasks``: ``{target: [task per seed]}`` (``selection``'s seed is skipped); ``references``: ``{target:
    Reference}``. One record per method, task and seed (task :data:`ATTACK_TASK`; ``config``: the benchmark task,
    target, seed, the attack settings, the source run's lr), resumable through ``store``. ``settings``:
    ``AttackSettings`` fields besides the tokenizer, device and seed. ``archive`` (a ``harness.ModelArchive`` of
    ``model``): a run's model is read from it where the run kept it (``config.model_source``: ``archive``), else
    rebuilt (``rebuilt``); either way its forget accuracy is checked against the record. Returns every attack
    record.
    """
    settings = dict(settings or {})
    labelled = label_variants(records)  # a variant's runs (another synthetic prior) are a method of their own
    unlabelled = {id(r): raw for r, raw in zip(labelled, records)}  # the archive knows a run by its own method
    records, out = labelled, []
    jobs = []
    for target, seeded in tasks.items():
        if target not in references:
            raise ValueError(f"no retrained model for {target!r}; references exist for {', '.join(references)}")
        for task in reported_tasks(seeded, selection):
            for method in (*REFERENCES, *methods):
                if method not in REFERENCES and _find(records, method, task.kind, target, task.seed) is None:
                    valid = attack_methods(records, tasks=[task.kind])
                    raise ValueError(f"no benchmark record of {method!r} on {task.kind}/{target}/seed {task.seed}; "
                                     f"methods with records: {', '.join(valid)}")
                jobs.append((method, task))
    for method, task in tqdm(jobs, desc="attacks", disable=not progress):
        done = store.find(method=method, task=ATTACK_TASK, run_task=task.kind, forget_class=task.target,
                          seed=task.seed)
        if done is not None:
            out.append(done)
            continue
        source = _find(records, method, task.kind, task.target, task.seed)
        if method == "original":
            attacked, check = model, {}
        elif method == "retrain":
            attacked, check = references[task.target].model, {}
        else:
            attacked = archive.load(unlabelled[id(source)]) if archive is not None else None
            model_source = "rebuilt" if attacked is None else "archive"
            if attacked is None:
                attacked = regenerate_model(source, task, model=model, tokenizer=tokenizer, device=device)
            attacked = attacked.to(device)
            again = measure_accuracies(attacked, task, tokenizer=tokenizer, device=device, sets=("forget",))
            check = {"regenerated_forget_acc": again["forget_acc"], "recorded_forget_acc": source["metrics"].get(
                "forget_acc"), "regenerated_matches": abs(again["forget_acc"] - source["metrics"]["forget_acc"])
                     <= MATCH_TOLERANCE}
        attack_settings = AttackSettings(tokenizer=tokenizer, device=device, seed=task.seed, **settings)
        result = run_attacks(attacked, task, attack_settings, attacks=attacks)
        config = {"run_task": task.kind, "forget_class": task.target, "seed": task.seed, "attacks": list(attacks),
                  **{k: list(v) if isinstance(v, tuple) else v for k, v in vars(attack_settings).items()
                     if k not in ("tokenizer", "device")},
                  "source_lr": (source or {}).get("config", {}).get("lr")}
        if method not in REFERENCES:
            config["model_source"] = model_source
        record = make_record(method=method, task=ATTACK_TASK, config=config, metrics={**result, **check})
        store.add(record)
        out.append(record)
    gapped = add_retrain_gaps(out)
    store.add(*gapped)
    return gapped


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
