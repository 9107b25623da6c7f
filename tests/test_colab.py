"""The notebooks' Colab cell (scripts/colab_setup.py), run as on Colab in a simulated Colab environment.

The simulation: a fresh virtualenv (no pip, no site-packages of its own) sees this
project's installed packages through a folder of links, except open_clip_torch,
ftfy and papermill ("what Colab lacks"); torch, numpy, pandas, ipykernel are there,
as on Colab. ``pip`` in it is a fake that records its arguments and "installs" a
package (and its dependencies) by linking it from this environment. The cell is
taken from the notebooks themselves and run with ``CLIPUNLEARN_FORCE_COLAB=1``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
HIDDEN = ("open-clip-torch", "ftfy", "papermill")  # what the simulated Colab lacks
COLAB_STACK = ("torch", "torchvision", "numpy", "pandas", "ipykernel")  # never installed by the cell


def load_colab_setup():
    spec = importlib.util.spec_from_file_location("colab_setup", REPO_ROOT / "scripts" / "colab_setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


colab_setup = load_colab_setup()


def notebook_cells(index: int = 1) -> dict[str, str]:
    cells = {}
    for path in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(path.read_text())
        source = nb["cells"][index]["source"]
        cells[path.name] = "".join(source) if isinstance(source, list) else source
    return cells


# --------------------------------------------------------------------------- #
# The cell and the requirement logic
# --------------------------------------------------------------------------- #
def test_every_notebook_has_the_same_colab_cell():
    cells = notebook_cells()
    assert len(cells) >= 3
    assert len(set(cells.values())) == 1, "run: python scripts/colab_setup.py --write-cells"
    cell = next(iter(cells.values()))
    url = re.search(r'os.environ.get\("CLIPUNLEARN_REPO"\) or "([^"]+)"', cell).group(1)
    assert cell == colab_setup.render_cell(url)
    assert "pip install -e" not in cell and "chdir" not in cell  # relative paths and restarts are gone


def test_requirements_leave_colab_stack_alone(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["torch==9.0", "numpy==9.0", "open_clip_torch==3.3.0",'
                         ' "Pandas>=1", "tqdm==4.0"]\n[project.optional-dependencies]\n'
                         'notebooks = ["ipykernel==7.4.0", "papermill==2.7.0", "jupyterlab==4"]\ntest = ["pytest"]\n')
    wanted = colab_setup.project_requirements(pyproject)
    assert wanted == ["open_clip_torch==3.3.0", "tqdm==4.0", "papermill==2.7.0"]
    # nothing installed: still never torch / numpy / pandas / ipykernel; installed ones stay as they are
    installed = {"tqdm": "1.0"}
    assert colab_setup.missing_requirements(wanted, version_of=installed.get) == ["open_clip_torch==3.3.0",
                                                                                  "papermill==2.7.0"]
    pins = colab_setup.keep_constraints(version_of={"torch": "2.5.1", "numpy": "1.26.4"}.get)
    assert pins == ["torch==2.5.1", "numpy==1.26.4"]


def test_default_repo_url(tmp_path):
    git = ["git", "-C", str(tmp_path)]
    subprocess.run(git + ["init", "-q"], check=True)
    assert colab_setup.default_repo_url(tmp_path) == colab_setup.PLACEHOLDER_REPO_URL
    subprocess.run(git + ["remote", "add", "origin", "git@github.com:someone/clip-unlearning.git"], check=True)
    assert colab_setup.default_repo_url(tmp_path) == "https://github.com/someone/clip-unlearning.git"
    assert "someone/clip-unlearning.git" in colab_setup.render_cell(colab_setup.default_repo_url(tmp_path))


# --------------------------------------------------------------------------- #
# The simulated Colab run
# --------------------------------------------------------------------------- #
FAKE_PIP = r'''
"""A fake pip: records its arguments; "installs" by linking distributions (and their dependencies) from SOURCE."""
import importlib.metadata as md, json, os, re, sys
from pathlib import Path

SITE = Path(__file__).resolve().parents[1]
SOURCE = os.environ["FAKE_PIP_SOURCE"]
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
name_of = lambda req: norm(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1))
find = lambda name, path: next((d for d in md.distributions(path=[str(path)])
                                if norm(d.metadata["Name"]) == name), None)

args, entry, requested, i = sys.argv[1:], {"args": sys.argv[1:], "installed": []}, [], 1
while i < len(args):
    if args[i] in ("-c", "--constraint"):
        entry["constraints"] = Path(args[i + 1]).read_text()
        i += 2
        continue
    if not args[i].startswith("-"):
        requested.append(args[i])
    i += 1
entry["requested"] = requested

def install(name, top):
    if find(name, SITE) is not None:
        return
    dist = find(name, SOURCE)
    if dist is None:
        if top:
            sys.exit(f"fake pip: no distribution {name}")
        return
    for top_level in {Path(f).parts[0] for f in dist.files if not str(f).startswith("..")}:
        if not (SITE / top_level).exists():
            (SITE / top_level).symlink_to(Path(SOURCE) / top_level)
    entry["installed"].append(name)
    for req in dist.requires or []:
        if "extra ==" not in req:
            install(name_of(req), False)

if args and args[0] == "install":
    for req in requested:
        install(name_of(req), True)
with open(os.environ["FAKE_PIP_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\n")
'''

CHECK = r'''
import json, os, sys
import clipunlearn, open_clip
from clipunlearn import explorer
print("RESULT " + json.dumps({"clipunlearn": clipunlearn.__file__, "open_clip": open_clip.__file__, "cwd": os.getcwd(),
                              "lib_on_path": sys.path.count(os.path.join(REPO_DIR, "lib")),
                              "pythonpath": os.environ.get("PYTHONPATH", "")}))
'''


def _top_levels(dist) -> set[str]:
    return {Path(f).parts[0] for f in dist.files or () if not str(f).startswith("..")}


def make_colab(tmp: Path) -> tuple[Path, Path]:
    """Return ``(python, site)``: a virtualenv whose packages are this environment's less HIDDEN, and a fake pip."""
    source = Path(sysconfig.get_paths()["purelib"])
    hide = {"pip", "__pycache__"}
    for dist in importlib.metadata.distributions(path=[str(source)]):
        if colab_setup.normalize(dist.metadata["Name"]) in HIDDEN + ("pip", "clipunlearn"):
            hide |= _top_levels(dist)
    site = tmp / "colab-site"
    site.mkdir()
    for entry in source.iterdir():
        if entry.name not in hide and not entry.name.endswith(".pth") and not entry.name.startswith("__editable__"):
            (site / entry.name).symlink_to(entry)
    (site / "pip").mkdir()
    (site / "pip" / "__init__.py").write_text("")
    (site / "pip" / "__main__.py").write_text(FAKE_PIP)
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    purelib = Path(sysconfig.get_paths(vars={"base": str(env_dir), "platbase": str(env_dir)})["purelib"])
    (purelib / "colab.pth").write_text(str(site) + "\n")
    return env_dir / "bin" / "python", source


def make_origin(tmp: Path) -> Path:
    """A git repository with this checkout's library, scripts and pyproject (what the cell clones)."""
    origin = tmp / "origin"
    origin.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("lib", "scripts"):
        shutil.copytree(REPO_ROOT / name, origin / name, ignore=ignore)
    for name in ("pyproject.toml", "constraints.txt"):
        if (REPO_ROOT / name).exists():
            shutil.copy(REPO_ROOT / name, origin / name)
    (origin / "notebooks").mkdir()
    (origin / "notebooks" / ".keep").write_text("")
    git = ["git", "-C", str(origin), "-c", "user.name=test", "-c", "user.email=test@example.com",
           "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "snapshot"], check=True)
    return origin


def run_cell(python: Path, code: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(python), "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def result_of(proc) -> dict:
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_colab_cell_in_a_simulated_colab(tmp_path):
    python, source = make_colab(tmp_path)
    origin = make_origin(tmp_path)
    repo_dir = tmp_path / "content" / "clip-unlearning"
    data_dir = tmp_path / "data"
    (data_dir / "fashion-mnist").mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (data_dir / "fashion-mnist" / name).write_bytes(b"")
    pip_log = tmp_path / "pip.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(CLIPUNLEARN_FORCE_COLAB="1", CLIPUNLEARN_REPO=origin.as_uri(), CLIPUNLEARN_REPO_DIR=str(repo_dir),
               CLIPUNLEARN_DATA=str(data_dir), CLIPUNLEARN_CACHE=str(tmp_path / "cache"), FAKE_PIP_SOURCE=str(source),
               FAKE_PIP_LOG=str(pip_log), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    cell = notebook_cells()["00_setup_and_baseline.ipynb"]

    # before the cell, the simulated Colab really lacks open_clip, and has torch
    probe = subprocess.run([str(python), "-c", "import importlib.util\nassert importlib.util.find_spec('torch')\nimport open_clip"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert "No module named 'open_clip'" in probe.stderr

    # first run, then a re-run of the cell in the same kernel
    first = run_cell(python, f"{cell}\n{cell}\n{CHECK}", env, cwd=tmp_path)
    out = result_of(first)
    assert Path(out["clipunlearn"]).is_relative_to(repo_dir / "lib")  # importable without a restart
    assert Path(out["cwd"]) == repo_dir / "notebooks"
    assert out["lib_on_path"] == 1 and out["pythonpath"].split(os.pathsep)[0] == str(repo_dir / "lib")
    assert first.stderr.count("Cloning into") == 1
    assert "Fashion-MNIST in" in first.stdout
    calls = [json.loads(line) for line in pip_log.read_text().splitlines()]
    assert len(calls) == 1, calls  # the re-run installed nothing
    requested = {colab_setup.requirement_name(r) for r in calls[0]["requested"]}
    assert requested == {"open-clip-torch", "papermill"}
    assert not (requested | set(calls[0]["installed"])) & set(COLAB_STACK)
    assert "ftfy" in calls[0]["installed"]  # a dependency Colab lacks comes along
    assert f"torch=={importlib.metadata.version('torch')}" in calls[0]["constraints"].split()

    # a new kernel (runtime restart): no second clone, nothing to install, still importable
    (repo_dir / "marker").write_text("kept")
    second = run_cell(python, f"{cell}\n{CHECK}", env, cwd=tmp_path)
    assert "Cloning into" not in second.stderr and (repo_dir / "marker").exists()
    assert not (repo_dir / "clip-unlearning").exists()
    assert len(pip_log.read_text().splitlines()) == 1
    assert Path(result_of(second)["clipunlearn"]).is_relative_to(repo_dir / "lib")
