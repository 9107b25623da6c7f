"""Paper-profile smoke test: the ``paper`` branch of every notebook that has one, end to end, in minutes.

Each ``notebooks/NN_*.ipynb`` whose parameters include ``PROFILE``, ``QUICK``, ``MODEL``,
``PRETRAINED`` and ``DATA_DIR`` runs under papermill with ``PROFILE="paper"``,
``QUICK=True``, a tiny random-weight open_clip model (``tiny-vit`` / ``tiny-rn``,
``PRETRAINED="random"``) and real images from ``../shared/data`` standing in for the
papers' datasets: the CIFAR-10 test images as an ImageFolder for CIFAR-10, CIFAR-100
and paper B's four datasets, PACS for itself, and a tiny Flickr30K written here (a few
PNG images and Karpathy's split file, :func:`write_caption_folder`) for notebook 10's
retrieval section. Only the parameters a notebook declares
are passed (:data:`STANDARD`); a notebook adds or overrides its own in its metadata,
``metadata.clipunlearn.paper_smoke`` (``{"MODEL": "tiny-rn", ...}``, or ``{"skip": "why"}``).
Afterwards every notebook must have written its records file
(``results/quick-paper/<notebook>.json``) with at least one record (and a record of every task
:data:`EXPECTED_TASKS` names for it: notebook 10's retrieval section), and every accuracy,
AUC, retrieval recall (``*_r1``, ``*_r10``, ...) and score in it must be finite and in [0, 1]
(nothing else is checked: the models are random). Before the notebooks, paper B's loaders of the
authors' artefacts read tiny files written here in the authors' formats (:func:`check_authors_artefacts`).

    python scripts/paper_smoke.py                      # every notebook with a paper branch
    python scripts/paper_smoke.py --notebooks 20 --device cuda --precision bf16
    python scripts/paper_smoke.py --in-process         # no Jupyter kernel (a GPU box without Jupyter)

``--in-process`` runs the code cells in this Python process, one namespace per notebook,
the parameters set right after the parameters cell (what papermill injects); it needs
neither papermill nor a kernel, only the notebooks' own imports.

Exit status: 0 when every notebook ran and passed the checks, or when ``../shared/data``
is missing (skipped, with a message); 1 otherwise. Executed notebooks are kept in
``runs/paper-smoke/`` (git-ignored) for inspection.
"""

from __future__ import annotations

import argparse
import ast
import gc
import json
import math
import os
import pickle
import random
import re
import sys
import time
import traceback
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
WORK_DIR = REPO_ROOT / "runs" / "paper-smoke"
#: Parameters a notebook must declare to take part.
REQUIRED = ("PROFILE", "QUICK", "MODEL", "PRETRAINED", "DATA_DIR")
#: What every taking-part notebook gets, for the parameters it declares (DATA_DIR is filled in).
STANDARD = {"PROFILE": "paper", "QUICK": True, "SEEDS": "0", "MODEL": "tiny-vit", "PRETRAINED": "random",
            "FORGET_CLASSES": "cat", "WORKERS": 0, "RESUME": False}
#: Folders of the smoke data: ``(link, target)`` relative to the data folder and ``../shared/data``.
#: paper B's loaders read ``<name>/<split>/`` ImageFolder exports (Stanford Dogs: ``Images/``).
CIFAR = "cifar10-test-2k"
LINKS = [(f"{name}/{split}", CIFAR) for name in ("cifar10", "cifar100", "stanford-cars", "caltech101", "flowers102")
         for split in ("train", "test")] + [("stanford-dogs/Images", CIFAR), ("pacs", "pacs-mini")]
#: Metrics that must be finite and in [0, 1]: accuracies (``acc``, ``acc_*``, ``*_acc``, ``*_acc/<set>``,
#: per-class values), confusion fractions and membership-inference AUCs.
IN_UNIT_RANGE = ("acc", "confusion", "mia", "auc")
#: Retrieval recalls (``forget_i2t_r10``, ``retain_r1``, ``val_forget_r10``): fractions too.
RECALL = re.compile(r"(^|_)r\d+$")
#: Record tasks a notebook's paper branch must write (a section that did not run shows here): notebook 10's
#: retrieval section (``paper_c.run_retrieval``) writes task ``retrieval``.
EXPECTED_TASKS = {"10_cliperase": ("forget-class", "retrieval")}
#: The tiny Flickr30K of the smoke test: images per Karpathy split, of which the first ``CAPTION_FORGET`` show
#: the concept (their captions mention "dog", notebook 10's retrieval concept).
CAPTION_SPLITS = {"train": 12, "val": 8, "test": 8}
CAPTION_FORGET = 3


def in_unit_range(key: str) -> bool:
    """Whether metric ``key`` (``a/b`` for nested values) is a fraction that must lie in [0, 1]."""
    head = key.split("/", 1)[0]
    return (any(head == w or head.startswith(f"{w}_") or head.endswith(f"_{w}") for w in IN_UNIT_RANGE)
            or RECALL.search(head) is not None)


def write_caption_folder(folder: Path, *, splits: dict | None = None, forget: int = CAPTION_FORGET,
                         seed: int = 0) -> Path:
    """Write a tiny Flickr30K at ``folder``: ``flickr30k-images/<n>.png`` (8x8 colour images) and
    ``dataset_flickr30k.json`` in Karpathy's format, ``splits`` images per split (:data:`CAPTION_SPLITS`), two
    captions each; the first ``forget`` of every split are captioned as a dog. Return ``folder``."""
    rng = random.Random(seed)
    images, n = [], 0
    for split, count in (splits or CAPTION_SPLITS).items():
        for i in range(count):
            colour = tuple(rng.randrange(256) for _ in range(3))
            name = f"{n}.png"
            (folder / "flickr30k-images").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), colour).save(folder / "flickr30k-images" / name)
            thing = "a brown dog" if i < forget else f"a red bus number {n}"
            raws = [f"{thing.capitalize()} in picture {n} .", f"There is {thing} here ."]
            images.append({"filename": name, "imgid": n, "split": split, "sentids": [2 * n, 2 * n + 1],
                           "sentences": [{"raw": raw, "tokens": raw.lower().split(), "imgid": n, "sentid": 2 * n + j}
                                         for j, raw in enumerate(raws)]})
            n += 1
    (folder / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return folder


def prepare_data(shared: Path, dest: Path) -> Path:
    """Create ``dest`` with symbolic links to ``shared``'s image folders in the layouts the loaders read, and
    the tiny Flickr30K (:func:`write_caption_folder`) at ``dest/flickr30k``."""
    for link, target in LINKS:
        path = dest / link
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to((shared / target).resolve(), target_is_directory=True)
    write_caption_folder(dest / "flickr30k")
    return dest


def read_notebook(path: Path) -> dict:
    """The notebook as JSON (no nbformat needed)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def declared_parameters(notebook: dict) -> list[str]:
    """Names assigned in the notebook's cell tagged ``parameters`` (papermill's convention)."""
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse(_source(cell))
            return [t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(t, ast.Name)]
    return []


def notebook_parameters(path: Path, *, data_dir: Path, extra: dict | None = None) -> dict | None:
    """Return the papermill parameters of notebook ``path``, or None when it has no paper branch to test.

    :data:`STANDARD` (and ``extra``) restricted to what the notebook declares, then its own
    ``metadata.clipunlearn.paper_smoke``; a ``skip`` entry there (or a missing required
    parameter) means None.
    """
    notebook = read_notebook(path)
    declared = declared_parameters(notebook)
    if not all(name in declared for name in REQUIRED):
        return None
    own = dict(notebook.get("metadata", {}).get("clipunlearn", {}).get("paper_smoke", {}))
    if own.get("skip"):
        return None
    return select_parameters(declared, {**STANDARD, "DATA_DIR": str(data_dir), **(extra or {})}, own)


def select_parameters(declared, standard: dict, own: dict) -> dict:
    """``standard`` values of the ``declared`` parameters, overridden by the notebook's ``own`` (all kept)."""
    return {**{k: v for k, v in standard.items() if k in declared}, **{k: v for k, v in own.items() if k != "skip"}}


def check_records(records: list[dict]) -> list[str]:
    """Return what is wrong with ``records`` (empty: fine): none at all, or a metric non-finite / out of range."""
    if not records:
        return ["no records were written"]
    problems = []

    def check(where: str, key: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                check(where, f"{key}/{k}", v)
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not in_unit_range(key):
            return
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            problems.append(f"{where}: {key} = {value}")

    for record in records:
        where = f"{record.get('method')} / {record.get('task')} / {record.get('config', {}).get('forget_class')}"
        for key, value in record.get("metrics", {}).items():
            check(where, key, value)
        gain = record.get("metrics", {}).get("avg_gain")
        if gain is not None and not (math.isfinite(gain) and gain >= 0):
            problems.append(f"{where}: avg_gain = {gain}")
    return problems


def missing_tasks(records: list[dict], stem: str) -> list[str]:
    """Return a problem for each task of :data:`EXPECTED_TASKS` that notebook ``stem``'s records lack."""
    present = {r.get("task") for r in records}
    return [f"no {task!r} records: the section that writes them did not run"
            for task in EXPECTED_TASKS.get(stem, ()) if task not in present]


def check_authors_artefacts(folder: Path) -> list[str]:
    """Write tiny artefacts in paper B's authors' formats under ``folder``, read them with the library; return problems.

    As their ``gen_data.py``: ``torch.save`` of one raw ImageNet-normalised tensor ``[N, 3, H, W]`` at
    ``generated_RN50/StanfordDogs/<label>.pt``; as their ``generated/results_zs_all_RN50.pkl``: a pickle of
    ``{Dataset: {class: {cls_acc_test, no_cls_acc, acc_train, full_acc}}}`` with numpy float64 values.
    """
    import torch
    from clipunlearn.papers import authors_artefacts  # importable once main() has put lib/ on sys.path

    raw = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    pt = folder / "generated_RN50" / "StanfordDogs" / "toy poodle.pt"
    pkl = folder / "generated" / "results_zs_all_RN50.pkl"
    for path in (pt, pkl):
        path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(raw, pt)
    entry = {"cls_acc_test": np.float64(0.5), "no_cls_acc": np.float64(0.6), "acc_train": np.float64(0.4)}
    zero_shot = {"StanfordDogs": {"toy poodle": {**entry, "full_acc": 0.59}},
                 "StanfordCars": {"2009 Spyker C8 Coupe": {**entry, "full_acc": 0.55}}}
    pkl.write_bytes(pickle.dumps(zero_shot, protocol=4))
    problems = []
    syn = authors_artefacts.load_authors_synthetic(pt, target=1, classnames=["Pekinese", "toy poodle"],
                                                   mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), image_size=8)
    if tuple(syn.images.shape) != (4, 3, 8, 8) or not torch.isfinite(syn.images).all():
        problems.append(f"{pt.name}: images {tuple(syn.images.shape)}, finite {bool(torch.isfinite(syn.images).all())}")
    low, high = (syn.images * 0.25 + 0.5).amin().item(), (syn.images * 0.25 + 0.5).amax().item()
    if abs(low) > 1e-5 or abs(high - 1) > 1e-5 or syn.targets.tolist() != [1] * 4 or not bool(syn.reached.all()):
        problems.append(f"{pt.name}: not min-max rescaled to [0, 1] ({low:.3g}, {high:.3g}) or wrong targets")
    reference = authors_artefacts.build_authors_reference(
        authors_artefacts.load_authors_zero_shot(pkl), dataset="StanfordDogs", classname="toy poodle",
        others={"stanford-cars": "StanfordCars"})
    if reference != {"forget_acc": 0.5, "retain_acc": 0.6, "other_acc/stanford-cars": 0.55}:
        problems.append(f"{pkl.name}: reference {reference}")
    return problems


def run_in_process(path: Path, parameters: dict) -> tuple[float, str | None]:
    """Execute the code cells of ``path`` here, ``parameters`` set after its parameters cell; ``(seconds, error)``."""
    try:
        from IPython.display import display
    except ImportError:  # no IPython: show tables as text
        def display(*objects):
            print(*objects)
    namespace = {"__name__": "__main__", "display": display}
    start, cwd = time.perf_counter(), os.getcwd()
    os.chdir(path.parent)
    try:
        for i, cell in enumerate(read_notebook(path)["cells"]):
            if cell["cell_type"] != "code":
                continue
            try:
                exec(compile(_source(cell), f"{path.name} cell {i} ({cell.get('id')})", "exec"), namespace)
            except Exception as err:  # noqa: BLE001  (reported as the notebook's failure)
                traceback.print_exc()
                return time.perf_counter() - start, f"cell {i} ({cell.get('id')}): {type(err).__name__}: {err}"
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                namespace.update(parameters)
        return time.perf_counter() - start, None
    finally:
        os.chdir(cwd)
        namespace.clear()
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def run_notebook(path: Path, parameters: dict, *, out_dir: Path, timeout: int) -> tuple[float, str | None]:
    """Execute ``path`` with ``parameters``; return ``(seconds, error or None)``. A dead kernel is retried once."""
    import papermill
    from nbclient.exceptions import DeadKernelError

    start = time.perf_counter()
    for attempt in range(2):
        try:
            papermill.execute_notebook(str(path), str(out_dir / path.name), parameters=parameters,
                                       cwd=str(path.parent), kernel_name="python3", progress_bar=False,
                                       log_output=False, execution_timeout=timeout)
            return time.perf_counter() - start, None
        except DeadKernelError as err:  # the kernel process died (e.g. killed for memory): once more
            if attempt:
                return time.perf_counter() - start, f"kernel died twice: {err}"
        except papermill.PapermillExecutionError as err:
            return time.perf_counter() - start, f"cell {err.exec_count}: {err.ename}: {err.evalue}"
    return time.perf_counter() - start, "unreachable"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--shared-data", default=str(SHARED_DATA), help="folder with cifar10-test-2k/ and pacs-mini/")
    parser.add_argument("--notebooks", default="", help="comma-separated notebook numbers (default: all)")
    parser.add_argument("--device", default="", help="DEVICE parameter (default: the notebook's, auto)")
    parser.add_argument("--precision", default="", help="PRECISION parameter, fp32 or bf16 (where declared)")
    parser.add_argument("--workers", type=int, default=None, help="WORKERS parameter (default 0: decode in-process)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--in-process", action="store_true", help="run the cells here, without papermill or a kernel")
    args = parser.parse_args(argv)

    shared = Path(args.shared_data)
    if not all((shared / d).is_dir() for d in (CIFAR, "pacs-mini")):
        print(f"paper smoke test skipped: {shared} (with {CIFAR}/ and pacs-mini/) not found; it runs where the "
              "shared data folder exists (CI)")
        return 0
    os.environ.setdefault("CLIPUNLEARN_PROGRESS", "0")  # no progress bars in the executed notebooks
    if args.in_process:
        os.environ.setdefault("MPLBACKEND", "Agg")  # figures are saved, never shown
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    data_dir = prepare_data(shared, WORK_DIR / "data")
    wanted = {n.strip() for n in args.notebooks.split(",") if n.strip()}
    extra = {k: v for k, v in (("DEVICE", args.device), ("PRECISION", args.precision)) if v}
    if args.workers is not None:
        extra["WORKERS"] = args.workers
    sys.path.insert(0, str(REPO_ROOT / "lib"))
    from clipunlearn.paths import get_results_path
    from clipunlearn.results import load_records

    failures, total = [], time.perf_counter()
    problems = check_authors_artefacts(WORK_DIR / "authors")
    print(f"paper B's loaders of the authors' artefacts: {'ok' if not problems else 'FAILED'}", flush=True)
    for p in problems:
        print(f"    {p}")
    if problems:
        failures.append("authors' artefacts")
    for path in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        if wanted and path.name[:2] not in wanted:
            continue
        parameters = notebook_parameters(path, data_dir=data_dir, extra=extra)
        if parameters is None:
            print(f"{path.name}: no paper branch to smoke-test (parameters {', '.join(REQUIRED)} not all declared, "
                  "or skipped in its metadata)")
            continue
        results = get_results_path("paper", path.stem, quick=True)
        results.unlink(missing_ok=True)
        if args.in_process:
            seconds, error = run_in_process(path, parameters)
        else:
            seconds, error = run_notebook(path, parameters, out_dir=WORK_DIR, timeout=args.timeout)
        if error is None:
            if results.exists():
                records = load_records(results)
                problems = check_records(records) + missing_tasks(records, path.stem)
            else:
                problems = [f"{results} not written"]
        else:
            problems = [error]
        shown = {k: v for k, v in parameters.items() if k != "DATA_DIR"}
        print(f"{path.name}: {'ok' if not problems else 'FAILED'} in {seconds:.0f} s ({shown})", flush=True)
        for p in problems[:20]:
            print(f"    {p}")
        if problems:
            failures.append(path.name)
    print(f"paper smoke test: {time.perf_counter() - total:.0f} s; executed notebooks in {WORK_DIR}")
    if failures:
        print(f"paper smoke test FAILED: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
