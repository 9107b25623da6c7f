"""Do the notebooks' findings hold on other mini models? Retrain, rerun, check, tabulate.

The committed results come from the shipped mini CLIP. A finding about a *method*
should not depend on the last bits of one trained model, so this script

1. trains mini CLIPs with other training seeds (``models.get_mini_clip(seed=N)``,
   cached; about 4 min each on 2 cores);
2. runs notebooks 10-45 in full mode on each (papermill, ``CLIPUNLEARN_MINI_SEED=N``:
   records in ``results/mini-seed<N>/``, executed copies in ``runs/mini-seed<N>/``),
   continuing past a notebook whose own asserts fail (its records are saved first);
3. evaluates every statement of the notebooks' "What this shows" on the shipped
   model's records (``results/mini/``, from ``./run_all.sh``) and on each retrained
   model's with the same library functions the notebooks assert
   (``findings.check_notebook``);
4. writes ``results/mini/robustness.json``: statement x model, holds or not, with the
   numbers, and the spread of the main metrics across models next to their spread
   across unlearning seeds.

    python benchmarks/robustness.py                      # seeds 1 and 2, then evaluate (about 40 min)
    python benchmarks/robustness.py --shipped            # the shipped model's notebooks 00-50 first
    python benchmarks/robustness.py --evaluate-only      # only step 3-4, from the records there
    python benchmarks/robustness.py --seeds 1 --only 10  # one model, one notebook

Run it after changing a method or a statement; the notebooks assert only statements
that hold on all models.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("10_cliperase", "20_synthetic_lipschitz", "30_subgroup_forgetting", "40_benchmark", "45_attacks")


def snapshot_notebooks(tag: str) -> Path:
    """Copy ``notebooks/`` to ``runs/robustness-sources-<tag>/``: editing a notebook during a run changes nothing."""
    src_dir = REPO / "runs" / f"robustness-sources-{tag}"
    shutil.rmtree(src_dir, ignore_errors=True)
    shutil.copytree(REPO / "notebooks", src_dir, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    return src_dir


def set_aside_earlier_protocol(path: Path, log=print) -> bool:
    """Move a results file written before the selection protocol (selection seed, retrained references) to
    ``<name>.pre-protocol`` (kept, never overwritten) and return True, so that resuming never mixes its runs
    with the current protocol's. Its runs are recognised by result records without ``config.selected_on_seed``
    (every run of the current protocol has it; the untouched and retrained models' records have no selection
    at all)."""
    if not path.exists():
        return False
    from clipunlearn.results import load_records  # the library, installed in the environment that runs this

    runs = [r for r in load_records(path) if r["method"] not in ("original", "retrain")
            and r["task"] not in ("selection", "zeroshot") and r["config"].get("grid") is not None]
    if all("selected_on_seed" in r["config"] for r in runs):  # none at all (the attacks' file): nothing to judge
        return False
    kept = path.with_name(path.name + ".pre-protocol")
    os.replace(path, kept)
    log(f"{path.name}: written under the earlier selection protocol; kept as {kept.name}, the notebook starts afresh")
    return True


def run_notebooks(seed: int | None, *, only: list[str], src_dir: Path, threads: str = "2",
                  log=print) -> dict[str, dict]:
    """Run notebooks 10-45 (full mode) on the mini model retrained with ``seed``; return ``{stem: status}``.

    ``seed=None``: the shipped model, notebooks 00-50 (what ``./run_all.sh --force`` runs), records
    in ``results/mini/``, but going on past a failing notebook.
    """
    import papermill
    import torch

    from clipunlearn import models

    if seed is None and threads != "2":
        raise ValueError("the shipped model's records are run with 2 threads, as ./run_all.sh runs them")
    os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, CLIPUNLEARN_PROGRESS="0")
    torch.set_num_threads(int(threads))
    if seed is None:
        os.environ.pop("CLIPUNLEARN_MINI_SEED", None)
        stems = sorted(p.stem for p in src_dir.glob("[0-9][0-9]_*.ipynb"))
    else:
        os.environ["CLIPUNLEARN_MINI_SEED"] = str(seed)
        stems = list(NOTEBOOKS)
    name = "shipped" if seed is None else f"seed{seed}"
    start = time.perf_counter()
    _, _, _, info = models.get_mini_clip("mini", seed=seed, progress=False)
    log(f"{name}: mini CLIP {info['path']} (zero-shot photo acc {info['eval']['acc']:.4f}; "
        f"{time.perf_counter() - start:.0f} s)")
    out_dir = REPO / "runs" / ("mini" if seed is None else f"mini-seed{seed}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # retrained models resume an interrupted run (their own folder); the shipped model's records start afresh
    status, resume = {}, ({} if seed is None else {"RESUME": True})
    for stem in stems:
        if only and not any(stem.startswith(o) for o in only):
            continue
        src = src_dir / f"{stem}.ipynb"
        if seed is not None:  # a resumed run must not reuse the records of an earlier protocol
            set_aside_earlier_protocol(REPO / "results" / f"mini-seed{seed}" / f"{stem}.json", log=log)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(str(src), str(out_dir / f"{stem}.ipynb"),
                                       parameters={"PROFILE": "mini", "QUICK": False, **resume},
                                       cwd=str(REPO / "notebooks"), progress_bar=False, log_output=False)
            status[stem] = {"ok": True}
        except papermill.PapermillExecutionError as err:  # its own asserts failed; records are saved
            status[stem] = {"ok": False, "error": f"{err.ename}: {err.evalue}"[:300]}
        status[stem]["seconds"] = round(time.perf_counter() - start, 1)
        log(f"{name}: {stem} {'ok' if status[stem]['ok'] else 'FAILED ' + status[stem]['error']} "
            f"({status[stem]['seconds']:.0f} s)")
    return status


def collect_model_info(seeds, *, evaluate_only: bool, out: Path) -> dict:
    """Return ``{model name: its training seed, sha256, training seconds and zero-shot accuracies}`` of the shipped
    model and of the retrained ones of ``seeds``. With ``evaluate_only`` a retrained model is taken as ``out``
    records it (the one the records of ``results/mini-seed<N>/`` were made with): training one here would make
    another model (CPUs of other kinds train other weights); without a record it must be cached here."""
    from clipunlearn import checkpoints, models

    recorded = json.loads(out.read_text()).get("model_info", {}) if evaluate_only and out.exists() else {}
    model_info = {}
    for name, seed in [("shipped", None), *((f"seed{s}", s) for s in seeds)]:
        if seed is not None and evaluate_only:
            if name in recorded:
                model_info[name] = recorded[name]
                continue
            if not models.mini_clip_cached("mini", seed=seed):
                raise SystemExit(f"{name}: no mini model of training seed {seed} here and none recorded in {out}; "
                                 f"run without --evaluate-only (trains it and reruns its notebooks)")
        _, _, _, info = models.get_mini_clip("mini", seed=seed, progress=False)
        model_info[name] = {"train_seed": info["config"]["seed"], "sha256": checkpoints.sha256_file(info["path"]),
                            "train_seconds": round(info["train_seconds"], 1), "zero_shot": info["eval"]}
    return model_info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2", help="training seeds of the retrained models (default 1,2)")
    parser.add_argument("--shipped", action="store_true",
                        help="also rerun every notebook on the shipped model first (else: results/mini/ as it is)")
    parser.add_argument("--only", action="append", default=[], help="notebook stem prefix (repeatable)")
    parser.add_argument("--evaluate-only", action="store_true", help="no runs: evaluate the records there")
    parser.add_argument("--threads", default="2",
                        help="CPU threads per run (default 2, as run_all.sh; the shipped model needs 2). With 1, two "
                             "retrained models can run at once (--seeds 1 & --seeds 2): two 2-thread torch processes "
                             "on 2 cores slow each other down many times over")
    parser.add_argument("--out", default=str(REPO / "results" / "mini" / "robustness.json"))
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    runs = {}
    if not args.evaluate_only:
        src_dir = snapshot_notebooks(args.seeds.replace(",", "-") + ("-shipped" if args.shipped else ""))
        if args.shipped:
            runs["shipped"] = run_notebooks(None, only=args.only, src_dir=src_dir)
        for seed in seeds:
            runs[f"seed{seed}"] = run_notebooks(seed, only=args.only, src_dir=src_dir, threads=args.threads)
    from clipunlearn import robustness

    os.environ.pop("CLIPUNLEARN_MINI_SEED", None)
    model_info = collect_model_info(seeds, evaluate_only=args.evaluate_only, out=Path(args.out))
    table = robustness.evaluate_models({"shipped": REPO / "results" / "mini",
                                        **{f"seed{s}": REPO / "results" / f"mini-seed{s}" for s in seeds}},
                                       runs=runs or None, model_info=model_info)
    robustness.write_robustness(table, args.out)
    readme = REPO / "benchmarks" / "README.md"
    text = readme.read_text()
    start, end = "<!-- robustness -->\n", "<!-- /robustness -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        readme.write_text(head + start + robustness.robustness_markdown(table) + end + rest.split(end, 1)[1])
        print(f"{readme}: robustness tables rendered")
    failing = [f for f in table["statements"] if False in f["holds"].values()]
    not_run = [f for f in table["statements"] if None in f["holds"].values()]
    print(f"{len(table['statements'])} statements; {len(failing)} fail on at least one model; {len(not_run)} not run "
          f"on every model -> {args.out}")
    for f in failing:
        print(f"  {f['notebook']} {f['statement']}: {f['holds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
