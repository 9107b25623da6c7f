"""Paper B on the shared harness (notebook 20): the synthetic-sample benchmark and ablations, the authors' class
names, the evaluation per dataset, and the settings, models and tasks of each profile (``paper_b.json`` for the
paper profile, ``configs/mini.json`` for mini)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .. import data, harness, metrics, models
from ..image_cache import QUICK_CACHE_BYTES, CachedImages, MemoryBudget, default_cache_bytes
from ..configs import load_paper_config, mini_settings, parse_seeds, split_names
from ..methods.lipschitz import (AUTHORS_GAIN_DIVISOR, AUTHORS_OPTIONS, generate_task_synthetic, paper_sigma_schedule,
                                 run_lipschitz)
from ..paths import check_profile, get_data_dir
from ..synthetic_prior import SYNTHETIC_PRIORS
from . import paper_b_datafree
from .authors_artefacts import (build_authors_reference, compare_zero_shot, format_zero_shot_comparison,
                                load_authors_synthetic, load_authors_zero_shot)


def evaluate_class_forgetting(model, *, tokenizer, classnames: Sequence[str], templates: Sequence, dataset,
                              forget_idx, retain_idx, other_sets: Sequence[dict] = (), member_dataset=None,
                              member_idx=None, batch_size: int = 512, device="cpu") -> dict[str, float]:
    """Return paper B's metrics of one forgotten class as a dict.

    ``forget_acc`` / ``retain_acc``: zero-shot accuracy on ``dataset[forget_idx]`` (the
    forgotten class) and ``dataset[retain_idx]`` (the other classes); ``other_acc``: mean
    accuracy over ``other_sets`` (other domains or datasets; each a dict with
    ``name``, ``dataset``, optional ``indices``, ``classnames``, ``templates``), also
    given per set as ``other_acc/<name>``; ``mia``: membership-inference AUC of
    ``member_dataset[member_idx]`` (training images of the class) against
    ``dataset[forget_idx]`` (unseen ones), when ``member_idx`` is given.
    """
    was_training = model.training
    model.eval()
    classifier = metrics.build_classifier(model, tokenizer, classnames, templates, device=device)
    out = {name: metrics.accuracy(model, classifier, dataset, indices=idx, batch_size=batch_size, device=device)
           for name, idx in (("forget_acc", forget_idx), ("retain_acc", retain_idx))}
    others = {}
    for spec in other_sets:
        names = spec.get("classnames")
        clf = classifier if names is None else metrics.build_classifier(
            model, tokenizer, names, spec.get("templates", templates), device=device)
        others[spec["name"]] = metrics.accuracy(model, clf, spec["dataset"], indices=spec.get("indices"),
                                                batch_size=batch_size, device=device)
    if others:
        out["other_acc"] = sum(others.values()) / len(others)
        out.update({f"other_acc/{k}": v for k, v in others.items()})
    if member_idx is not None:
        mia = metrics.membership_inference(model, classifier, member_dataset if member_dataset is not None else dataset,
                                           member_idx=member_idx, nonmember_idx=forget_idx, nonmember_dataset=dataset,
                                           batch_size=batch_size, device=device)
        out["mia"] = mia["mia"]
    model.train(was_training)
    return out

#: CoOp's renamed Caltech-101 classes (``datasets/caltech101.py``; also drops ``BACKGROUND_Google`` and ``Faces_easy``).
CALTECH101_COOP_NAMES = {"airplanes": "airplane", "faces": "face", "leopards": "leopard", "motorbikes": "motorbike"}

def authors_classnames(dataset: str, classnames: Sequence[str]) -> list[str]:
    """Return ``classnames`` of ``dataset`` as the authors' code (CoOp's loaders) names them.

    ``stanford-cars``: the year first ("Spyker C8 Coupe 2009" -> "2009 Spyker C8 Coupe", as
    CoOp's ``split_zhou_StanfordCars.json``); ``caltech101``: CoOp's renames
    (:data:`CALTECH101_COOP_NAMES`; torchvision's layout keeps ``faces easy``, which CoOp
    drops: use the split file for the authors' 100 classes). Other datasets unchanged.
    Names read from a CoOp split file are already the authors'.
    """
    out = []
    for name in classnames:
        if dataset == "stanford-cars":
            words = name.split()
            if len(words) > 1 and words[-1].isdigit() and len(words[-1]) == 4:
                name = " ".join([words[-1]] + words[:-1])
        elif dataset == "caltech101":
            name = CALTECH101_COOP_NAMES.get(name.lower(), name)
        out.append(name)
    return out

def run_synthetic_benchmark(tasks: dict, *, model, tokenizer, generation: dict, forgetting: dict, grid: dict,
                            n_train: int = 64, n_val: int = 32, n_real: int | None = 64, store,
                            device="cpu", avg_gain: bool = False, progress: bool = False,
                            selection: harness.Selection | None = None,
                            references: dict[str, harness.Reference] | None = None,
                            authors: dict | None = None, priors: Sequence[str] = ("none",),
                            prior_settings: dict | None = None, nullspace_grid: dict | None = None,
                            closeness=None) -> dict:
    """Paper B on every target of ``tasks`` (``{target: [task per seed]}``); return the synthetic sets by (target, seed).

    Per target: the original model (``original``), then ``lipschitz_synthetic`` (synthetic
    forget images only; its grid is scored on held-out *synthetic* images and real
    retain validation images, with the oracle score on real forget validation images
    recorded beside it, never used) and ``lipschitz_real`` (the same procedure on
    ``n_real`` real training images of the class, selected on real validation images),
    each through :func:`clipunlearn.harness.run_selected`. ``forgetting``: keyword
    arguments of :func:`run_lipschitz` (the authors' form: ``**AUTHORS_OPTIONS``). ``avg_gain``:
    add the authors' aggregate (:func:`compute_avg_gain`, against the original model, divided by 5
    as theirs) to every record. ``authors`` (:func:`load_authors_artefacts`): the authors' synthetic
    set of a class is its forget set (the held-out set is still generated here), and their stored
    zero-shot accuracies are its ``avg_gain`` reference, printed beside ours. ``progress``: progress
    bars of the ascent and the forgetting epochs. ``selection``
    (``harness.PROTOCOL``): the grids are searched on its seed (synthetic images of that seed for the
    data-free method), never reported; ``references`` (``{target: harness.Reference}``, mini): the retrained
    model's record beside the original's, and every reported run's distance to it.

    The data-free comparison (:mod:`.paper_b_datafree`): every ``lipschitz_synthetic`` record says its
    ``config.synthetic_prior``; ``priors`` other than ``"none"`` (``"bn"``: DeepInversion's BatchNorm prior
    with ``prior_settings``) run ``lipschitz_synthetic`` again on their own synthetic images (sets under
    ``(target, seed, prior)``); ``nullspace_grid`` (``{"alpha": [...]}``) runs the nullspace projection,
    selected on paper B's held-out synthetic images; ``closeness`` (``paper_b_datafree.make_closeness_fn``)
    adds how close each synthetic forget set is to real images of its class to its records.
    """
    sets = {}
    for target, seeded in tasks.items():
        original = harness.record_original({target: seeded}, model=model, tokenizer=tokenizer, store=store,
                                           precision=forgetting.get("precision", "fp32"), device=device,
                                           selection=selection, references=references)[target]
        finish = harness.reference_fn(references, tokenizer=tokenizer, device=device)
        theirs = (authors or {}).get("references", {}).get(target)
        if theirs is not None:  # data, splits and prompts match when the original's numbers do
            print(format_zero_shot_comparison(compare_zero_shot(original["metrics"], theirs),
                                              title=f"{target}: original zero-shot accuracy, ours and the authors'"))
        reference = {"reference": theirs or original["metrics"], "gain_divisor": AUTHORS_GAIN_DIVISOR} \
            if avg_gain else {}
        authors_set = (authors or {}).get("sets", {}).get(target)
        for task in seeded:
            forget, val, cost = generate_task_synthetic(
                model, task, tokenizer=tokenizer, n_train=0 if authors_set is not None else n_train, n_val=n_val,
                generation=generation, seed=task.seed, device=device, progress=progress)
            if authors_set is not None:  # their images to forget, ours held out
                forget, cost = authors_set, {**cost, "authors_forget_set": authors["files"][target]}
            sets[(target, task.seed)] = forget, val, cost

        gain_source = {"avg_gain_reference": "authors" if theirs is not None else "original"} if avg_gain else {}

        def synthetic_fn(task, **candidate):
            forget, val, cost = sets[(task.target, task.seed)]
            unlearned, record = run_lipschitz(
                task, model=model, tokenizer=tokenizer, forget_data=forget, val_forget=(val, None), data_free=True,
                method="lipschitz_synthetic", config={"synthetic": {k: v for k, v in cost.items()}, **gain_source,
                                                      "synthetic_prior": "none"},
                device=device, progress=progress, **reference, **{**forgetting, **candidate})
            if closeness is not None:
                record["metrics"].update(closeness(task, forget.images))
            return unlearned, record

        def real_fn(task, **candidate):
            idx = task.forget_train[torch.randperm(len(task.forget_train), generator=torch.Generator().manual_seed(
                task.seed))[:n_real]].sort().values if n_real else task.forget_train
            return run_lipschitz(task, model=model, tokenizer=tokenizer, forget_data=task.train, forget_idx=idx,
                                 val_forget=None, data_free=False, method="lipschitz_real", config=gain_source or None,
                                 device=device, progress=progress, **reference, **{**forgetting, **candidate})

        def oracle(m, task):
            with metrics.autocast(device, forgetting.get("precision", "fp32")):
                return harness.validate_model(m, task, tokenizer=tokenizer, device=device)

        harness.run_selected("lipschitz_synthetic", seeded, run_fn=synthetic_fn, grid=grid, store=store,
                             oracle_fn=oracle, selection=selection, finish_fn=finish, match={"synthetic_prior": "none"})
        harness.run_selected("lipschitz_real", seeded, run_fn=real_fn, grid=grid, store=store, selection=selection,
                             finish_fn=finish)
        for prior in [p for p in priors if p != "none"]:
            made = paper_b_datafree.run_prior_benchmark(
                seeded, model=model, tokenizer=tokenizer, generation=generation, prior=prior,
                prior_settings=prior_settings or {}, forgetting={**forgetting, **reference}, grid=grid,
                n_train=n_train, n_val=n_val, store=store, selection=selection, closeness=closeness,
                oracle_fn=oracle, finish_fn=finish, device=device)
            sets.update({(target, seed, prior): s for seed, s in made.items()})
        if nullspace_grid:
            paper_b_datafree.run_nullspace_benchmark(
                seeded, model=model, tokenizer=tokenizer, held_out=lambda t: sets[(t.target, t.seed)][1],
                grid=nullspace_grid, store=store, selection=selection, oracle_fn=oracle, finish_fn=finish,
                device=device, **reference)
    return sets

def run_synthetic_ablations(task, synthetic_set, *, model, tokenizer, forgetting: dict, ablations: dict, store,
                            device="cpu") -> list[dict]:
    """One factor at a time around the selected setting, on one task with its synthetic set; return the records.

    ``ablations``: ``{"n_samples": [...], "sigma": [...], "k": [...], "layers": ["all"]}``. The
    learning rate is the one ``lipschitz_synthetic`` selected on this task. Records have
    task ``ablation``, ``config.ablation`` (the factor) and ``config.value``; the main run
    is added once per factor as the reference row (``config.reference`` true).
    """
    main = store.find(method="lipschitz_synthetic", task=task.kind, forget_class=task.target, seed=task.seed,
                      synthetic_prior="none")
    if main is None:
        raise ValueError("run run_synthetic_benchmark on this task first (it selects the learning rate)")
    forget, val, _ = synthetic_set
    lr = main["config"]["selected"]["lr"]
    reference = {"n_samples": forgetting.get("n_samples", 25), "sigma": "schedule",
                 "k": forgetting.get("k_start") or "paper", "layers": "top-k"}
    out = []
    for factor, values in ablations.items():
        ref = dict(main, task="ablation", config={**main["config"], "ablation": factor, "value": reference[factor],
                                                  "reference": True})
        out.append(ref)
        for value in values:
            done = store.find(method="lipschitz_synthetic", task="ablation", forget_class=task.target,
                              seed=task.seed, ablation=factor, value=value)
            if done is None:
                override = {"n_samples": {"n_samples": value},
                            "sigma": {"sigma_schedule": (value,) * len(paper_sigma_schedule())},
                            "k": {"k_start": value}, "layers": {"selective": False}}[factor]
                _, done = run_lipschitz(task, model=model, tokenizer=tokenizer, forget_data=forget,
                                        val_forget=(val, None), device=device,
                                        config={"ablation": factor, "value": value, "reference": False},
                                        **{**forgetting, "lr": lr, **override})
                done["task"] = "ablation"
                store.add(done)
            out.append(done)
    store.add(*[r for r in out if r["config"].get("reference")])
    return out

# --------------------------------------------------------------------------- #
# Paper B's settings, models and tasks per profile (notebook 20)
# --------------------------------------------------------------------------- #
def _profile_settings(profile: str, *, precision: str) -> dict:
    """The full-size settings of ``profile``: mini from ``configs.mini_settings()``, paper from ``paper_b.json``."""
    if profile == "mini":
        mini = mini_settings()  # the method settings shared with notebooks 30 and 40
        return dict(
            backbones={"mini": None}, forget={"fashion-mnist": ["sneaker", "shirt", "trouser"]},
            generation=mini["lipschitz"]["generation"], forgetting=mini["lipschitz"]["forgetting"],
            grid=mini["grids"]["lipschitz_synthetic"], n_train=mini["lipschitz"]["n_train"],
            n_val=mini["lipschitz"]["n_val"], n_real=64,
            task=dict(retain_per_class=300, eval_per_class=300),
            ablations={"n_samples": [1, 5], "sigma": [0.5, 2.0], "k": [1, 15], "layers": ["all"]},
            priors=("none", "bn"), prior_settings=mini["lipschitz"]["bn_prior"],
            nullspace_grid=mini["grids"]["nullspace"],
        )
    paper = load_paper_config("paper_b")
    gen, forget = paper["generation"], paper["forgetting"]
    return dict(
        backbones=dict(paper["backbones"]), forget=paper["forget_classes"],
        generation=dict(image_size=gen["image_size"], steps=gen["steps"], step_size=gen["step_size"],
                        jitter=gen["jitter"], blur_every=gen["blur_every"], blur_sigma=gen["blur_sigma"],
                        norm_weight=gen["norm_weight"], init_std=gen["init_std"], threshold_decay=gen["threshold_decay"],
                        min_threshold=gen["min_threshold"], logit_scale="model", stop_logit_scale=gen["logit_scale"],
                        grayscale=False, batch_size=64, parametrisation="authors",
                        restart=gen["restart_after_failure"], max_attempts=20, precision=precision),
        forgetting=dict(n_samples=forget["n_samples"], threshold=forget["stop_accuracy"],
                        max_epochs=forget["max_epochs"], betas=tuple(forget["betas"]), eps=forget["eps"],
                        weight_decay=forget["weight_decay"], batch_size=forget["batch_size"],
                        caption_templates=(paper["loss_caption"],), **AUTHORS_OPTIONS, precision=precision),
        grid={"lr": [2e-5, forget["lr"], 1e-4]}, n_train=gen["n_per_class"], n_val=32, n_real=None,
        task=dict(retain_per_class=None, eval_per_class=None),
        ablations={"n_samples": [1, 5], "sigma": [0.5, 2.0], "k": [1, 50], "layers": ["all"]},
        priors=("none",), prior_settings=paper["project_variants"]["bn_prior"],
        nullspace_grid=paper["project_variants"]["nullspace_grid"],
    )

def paper_b_settings(profile: str, *, quick: bool = False, seeds="0,1,2", backbone: str = "", model: str = "",
                     pretrained: str = "", dataset: str = "", other_datasets: str = "", forget_classes: str = "",
                     precision: str = "fp32", priors: str = "") -> dict:
    """Return notebook 20's settings of paper B for ``profile`` (``"mini"`` or ``"paper"``), parameters applied.

    Keys: ``backbones`` (``{name: pretrained}``), ``forget`` (``{dataset: [class, ...]}``),
    ``generation`` / ``forgetting`` (keyword arguments of :func:`generate_task_synthetic` /
    :func:`run_lipschitz`), ``grid``, ``n_train``, ``n_val``, ``n_real``, ``task`` (sizes for
    ``harness.build_task``), ``ablations``, ``priors`` / ``prior_settings`` / ``nullspace_grid`` (the
    data-free comparison, :func:`run_synthetic_benchmark`), ``seeds`` (list of ints) and ``others``
    (``{dataset: [other datasets scored with their own prompts]}``, paper profile only).
    The mini settings come from ``configs.mini_settings()``; the paper's from ``paper_b.json``.
    The string arguments are the notebook's parameters: ``seeds`` and the lists comma-separated;
    ``backbone`` keeps one backbone; ``model`` / ``pretrained`` / ``dataset`` / ``other_datasets`` /
    ``priors``: the synthetic-image priors, comma-separated (empty: the profile's; mini ``none,bn``, paper
    ``none``). ``precision`` are for the paper profile (``model`` / ``pretrained`` are refused by mini,
    the others ignored). ``quick``: one class, one seed, one learning rate (the middle), short
    generation and small evaluation sets (the CI smoke test).
    """
    check_profile(profile)
    if precision not in metrics.PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(metrics.PRECISIONS)}")
    settings = _profile_settings(profile, precision=precision)
    if priors:
        wanted = split_names(priors)
        unknown = [p for p in wanted if p not in SYNTHETIC_PRIORS]
        if unknown or "none" not in wanted:
            raise ValueError(f"priors must name 'none' and any of {', '.join(SYNTHETIC_PRIORS)}; got {priors!r}")
        settings["priors"] = tuple(wanted)
    seed_list = parse_seeds(seeds)
    backbones = settings["backbones"]
    if backbone:
        if backbone not in backbones:
            raise ValueError(f"unknown backbone {backbone!r} for the {profile} profile; valid: {', '.join(backbones)}"
                             " (other architectures: model=)")
        backbones = {backbone: backbones[backbone]}
    if model and profile == "paper":  # other architectures (e.g. tiny test models with pretrained="random")
        backbones, model = {m: "openai" for m in split_names(model)}, ""
    # parses pretrained; the mini profile refuses model and pretrained
    settings["backbones"] = models.override_backbones(backbones, profile=profile, model=model, pretrained=pretrained)
    dataset = dataset if profile == "paper" else ""
    for name in ([dataset] if dataset else []) + (split_names(other_datasets) if profile == "paper" else []):
        data.get_dataset_spec(name)  # an unknown name lists the registered ones
    if dataset:  # one dataset, any registered one (its classes: forget_classes)
        settings["forget"] = {dataset: settings["forget"].get(dataset, [])}
    if forget_classes:
        wanted = split_names(forget_classes)
        if profile == "mini":
            data.check_classnames(wanted, data.FASHION_MNIST_CLASSES)  # an unknown class lists the valid ones
            settings["forget"] = {ds: wanted for ds in settings["forget"]}
        elif dataset:  # any class of that dataset (checked when it is loaded)
            settings["forget"] = {dataset: wanted}
        else:  # the paper's classes: each to its dataset; datasets with none are dropped
            every = [c for classes in settings["forget"].values() for c in classes]
            unknown = [c for c in wanted if c not in every]
            if unknown:
                raise ValueError(f"unknown forget class(es) {unknown}; valid: {', '.join(every)} (another "
                                 "dataset's classes: dataset=)")
            settings["forget"] = {ds: [c for c in wanted if c in classes]
                                  for ds, classes in settings["forget"].items() if set(wanted) & set(classes)}
    if not any(settings["forget"].values()):
        raise ValueError(f"no forget class for {', '.join(settings['forget'])}: name them in forget_classes")
    # paper B's "other" datasets: every other dataset of the run (or other_datasets), scored with their own prompts
    settings["others"] = {}
    if profile == "paper":
        pool = split_names(other_datasets) or list(load_paper_config("paper_b")["forget_classes"])
        settings["others"] = {ds: [o for o in pool if o != ds] for ds in settings["forget"]}
    if quick:  # CI smoke test: one class, one seed, one grid value, short generation, small evaluation sets
        seed_list = seed_list[:1]
        settings["forget"] = {ds: classes[:1] for ds, classes in list(settings["forget"].items())[:1]}
        settings["generation"].update(steps=min(200, settings["generation"]["steps"]))
        if profile == "paper":
            settings["generation"].update(max_attempts=2)
        settings["forgetting"].update(max_epochs=10, n_samples=10)
        settings["prior_settings"] = {**settings["prior_settings"],
                                      "steps": min(10, settings["prior_settings"]["steps"])}
        settings["nullspace_grid"] = {"alpha": settings["nullspace_grid"]["alpha"][-1:]}
        settings.update(grid={"lr": settings["grid"]["lr"][1:2]}, n_train=16, n_val=16, n_real=16,
                        task=dict(retain_per_class=50, eval_per_class=50), ablations={"n_samples": [3],
                                                                                       "layers": ["all"]})
        if profile == "paper":  # bounded in memory too (the quick budget, shared by every cached split)
            settings.update(task=dict(retain_per_class=5, eval_per_class=5, val_per_class=5),
                            cache_bytes=QUICK_CACHE_BYTES)
    settings["seeds"], settings["selection"] = seed_list, harness.protocol_for(seed_list, quick=quick)
    return settings

def paper_b_generation(generation: dict, *, profile: str, backbone: str, classes: Sequence[str], model) -> dict:
    """Return ``generation`` (``paper_b_settings(...)["generation"]``) for one backbone's ``classes``.

    The paper profile adds the authors' per-backbone, per-class starting thresholds
    (``paper_b.json``; 0.8, their default, for a class it does not list), no threshold decay
    for the classes they generated without it, and ``model``'s image size. Mini: a copy.
    """
    generation = dict(generation)
    if check_profile(profile) == "paper":
        paper = load_paper_config("paper_b")
        generation["thresholds"] = {c: paper["thresholds"].get(backbone, {}).get(c, 0.8) for c in classes}
        generation["threshold_decay"] = {c: 0.0 if c in paper["no_threshold_decay"].get(backbone, []) else
                                         generation["threshold_decay"] for c in classes}
        generation["image_size"] = models.get_image_size(model)
    return generation

def find_split_file(dataset: str, *, data_dir=None, split_fallback: Sequence[str] = ()):
    """Return the authors' split file of ``dataset``, None for a dataset without one or named in ``split_fallback``.

    Looked for in ``<data_dir>/<dataset>/`` and the authors' folder (``paper_b.json``:
    ``folders_in_code``, e.g. ``<data_dir>/caltech-101/``). A paper dataset whose file is missing
    raises FileNotFoundError saying where to get it, unless named in ``split_fallback``: then
    the registered loader is used (Stanford Dogs and Caltech101 have no official split, so their
    train and test are the same images).
    """
    paper = load_paper_config("paper_b")
    name = paper["split_files"].get(dataset)
    if name is None or dataset in split_fallback:
        return None
    base = get_data_dir(data_dir)
    folders = [base / dataset] + ([base / paper["folders_in_code"][dataset]] if dataset in paper["folders_in_code"]
                                  else [])
    found = next((folder / name for folder in folders if (folder / name).is_file()), None)
    if found is None:
        raise FileNotFoundError(
            f"{name} not found in {' or '.join(str(f) for f in folders)}: get {paper['split_sources'][dataset]} and "
            f"put it there beside the images, or name {dataset!r} in split_fallback (notebook 20: SPLIT_FALLBACK) to "
            "load it without (Stanford Dogs and Caltech101 then train and test on the same images).")
    return found

def _load_split(dataset: str, split: str, *, preprocess, data_dir, split_fallback: Sequence[str], device,
                workers: int, budget: MemoryBudget | None = None):
    """One split of a paper-profile dataset, decoded once and then kept in memory (``image_cache.CachedImages``).

    The authors' split file (:func:`find_split_file`: their splits and class names), else the
    registered loader with the authors' class names (:func:`authors_classnames`).
    """
    split_file = find_split_file(dataset, data_dir=data_dir, split_fallback=split_fallback)
    if split_file is not None:
        ds = data.load_dataset(dataset, split=split, transform=preprocess, split_file=split_file)
    else:
        ds = data.load_dataset(dataset, split=split, transform=preprocess, data_dir=data_dir)
        ds.classnames = authors_classnames(dataset, ds.classnames)
    return CachedImages(ds, device=device, num_workers=workers, budget=budget)

def load_authors_artefacts(authors_dir, *, backbone: str, dataset: str, tasks: dict, others: Sequence[str] = (),
                           model, device="cpu") -> dict:
    """Return the authors' artefacts for ``tasks`` (``{class: [task, ...]}``) of ``backbone`` on ``dataset``.

    ``authors_dir``: a checkout of the authors' repository where ``datagen.sh`` ran (empty: none
    used). Returns ``{"sets": {class: SyntheticSet}, "files": {class: path}, "references": {class:
    avg_gain reference}}`` (:mod:`.authors_artefacts`; paths from ``paper_b.json``:
    ``authors_artefacts``) with what exists: a backbone or dataset the authors did not run, or a
    missing file, leaves its entries out.
    """
    out = {"sets": {}, "files": {}, "references": {}}
    if not authors_dir:
        return out
    root, paper = Path(authors_dir).expanduser(), load_paper_config("paper_b")
    if not root.is_dir():
        raise FileNotFoundError(f"authors' folder {root} does not exist: clone "
                                f"{paper['code']} and run its datagen.sh there, or leave it empty")
    artefacts, names = paper["authors_artefacts"], paper["dataset_names_in_code"]
    folder, zero_shot_file = (artefacts[k].get(backbone) for k in ("synthetic_folder", "zero_shot_file"))
    if dataset not in names or folder is None:
        return out
    zero_shot = load_authors_zero_shot(root / zero_shot_file) if (root / zero_shot_file).is_file() else {}
    mean, std = models.get_normalization(model)
    for classname, seeded in tasks.items():
        path = root / folder / names[dataset] / f"{classname}.pt"
        if path.is_file():
            task = seeded[0]
            out["sets"][classname] = load_authors_synthetic(
                path, target=task.classnames.index(classname), classnames=task.classnames, mean=mean, std=std,
                image_size=models.get_image_size(model), device=device)
            out["files"][classname] = str(path)
        reference = build_authors_reference(zero_shot, dataset=names[dataset], classname=classname,
                                            others={o: names.get(o, o) for o in others})
        if reference is not None:
            out["references"][classname] = reference
    return out

def load_paper_b_tasks(*, backbones: dict, forget: dict, seeds: Sequence[int], others: dict | None = None,
                       retain_per_class: int | None = 300, eval_per_class: int | None = 300,
                       val_per_class: int = 100, device="cpu",
                       data_dir=None, workers: int = 8, split_fallback: Sequence[str] | str = (),
                       cache_bytes: int | None = None) -> tuple[dict, dict]:
    """Load paper B's models, datasets and ``forget-class`` tasks; return ``(tasks, worlds)``.

    ``tasks[(backbone, dataset)]`` is ``{class: [harness.Task per seed]}`` and
    ``worlds[(backbone, dataset)]`` is ``{"model", "tokenizer"}`` (one model per backbone,
    shared by its datasets; runs copy it). ``backbones``: ``{name: pretrained}``
    (``models.load_clip``); ``forget``: ``{dataset: [class, ...]}``; ``others``: ``{dataset:
    [other datasets]}`` whose test sets (``eval_per_class`` images per class) every task
    scores as ``extra_sets``. Fashion-MNIST is the mini world (every style, the mini model's
    ``n_seen``); other datasets are decoded once and cached on ``device``
    (``image_cache.CachedImages``, ``workers`` DataLoader workers), from the authors' split files
    (:func:`find_split_file`; a missing one is an error unless its dataset is in ``split_fallback``,
    a list or comma-separated names). ``data_dir``: empty for ``$CLIPUNLEARN_DATA`` or the cache.
    """
    data_dir = data_dir or None
    others = others or {}
    split_fallback = split_names(split_fallback) if isinstance(split_fallback, str) else list(split_fallback)
    for name in split_fallback:
        data.get_dataset_spec(name)  # an unknown name lists the registered ones
    loaded = {}  # one model per backbone and one cached split per (backbone, dataset, split)
    budget = MemoryBudget(cache_bytes or default_cache_bytes(device))  # shared by every cached split

    def load_model(backbone):
        if backbone not in loaded:
            loaded[backbone] = models.load_clip(backbone, backbones[backbone], device=device)
        return loaded[backbone]

    def load_split(backbone, dataset, split):
        key = (backbone, dataset, split)
        if key not in loaded:
            loaded[key] = _load_split(dataset, split, preprocess=load_model(backbone)[1], data_dir=data_dir,
                                      split_fallback=split_fallback, device=device, workers=workers, budget=budget)
        return loaded[key]

    tasks, worlds = {}, {}
    for backbone in backbones:
        for dataset, classes in forget.items():
            model, _, tokenizer = load_model(backbone)
            extra = {}
            if dataset == "fashion-mnist":
                train, test = data.load_mini_world(data_dir=data_dir)
                templates, n_seen = data.FASHION_MNIST_TEMPLATES, models.MINI_SEEN_IMAGES
            else:
                for other in others.get(dataset, []):
                    ds = load_split(backbone, other, "test")
                    extra[other] = dict(dataset=ds, classnames=ds.classnames, templates=data.get_templates(other),
                                        indices=data.select_indices(ds, limit_per_class=eval_per_class))
                train, test = load_split(backbone, dataset, "train"), load_split(backbone, dataset, "test")
                templates, n_seen = data.get_templates(dataset), None
            unknown = [c for c in classes if c not in train.classnames]
            if unknown:
                raise ValueError(f"unknown forget class(es) {unknown} of {dataset}; valid: "
                                 f"{', '.join(train.classnames)}")
            worlds[(backbone, dataset)] = dict(model=model, tokenizer=tokenizer)
            tasks[(backbone, dataset)] = {
                c: [harness.build_task(train, test, kind="forget-class", target=c, seed=s, templates=templates,
                                       n_seen=n_seen, retain_per_class=retain_per_class, eval_per_class=eval_per_class,
                                       val_per_class=val_per_class) for s in seeds] for c in classes}
            for seeded in tasks[(backbone, dataset)].values():
                for task in seeded:
                    task.extra_sets.update(extra)
    return tasks, worlds
