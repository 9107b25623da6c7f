"""Set this repository up inside a running Colab kernel, without touching what Colab pins.

The second cell of every notebook (:func:`render_cell`) clones the repository once
into an absolute folder, then calls :func:`setup`, which

1. installs only the project's requirements that are missing here (on Colab:
   open_clip_torch and its dependencies such as ftfy, papermill): never torch,
   torchvision, numpy, pandas, ipykernel or jupyter, and with the packages in
   :data:`KEEP` pinned to their installed versions so resolving dependencies
   cannot upgrade them;
2. makes ``clipunlearn`` importable in the running kernel: ``<repo>/lib`` goes first
   on ``sys.path`` (and on ``PYTHONPATH`` for subprocesses), no editable install
   and no kernel restart;
3. gets Fashion-MNIST (``clipunlearn.data.fetch_fashion_mnist``, what
   ``python -m clipunlearn data --fetch`` does: torchvision's download on Colab);
4. changes into ``<repo>/notebooks``.

Every step is idempotent: re-running the cell clones nothing and installs nothing.
Standard library only (it runs before anything is installed).

    python scripts/colab_setup.py                 # steps 1-3 for the current python (scripts/colab_install.sh)
    python scripts/colab_setup.py --print-cell    # the notebook cell
    python scripts/colab_setup.py --write-cells   # put that cell into every notebooks/NN_*.ipynb

The repository URL of the cell is :func:`default_repo_url`: ``git remote get-url
origin`` of this checkout, else :data:`PLACEHOLDER_REPO_URL`; on Colab
``os.environ["CLIPUNLEARN_REPO"]`` overrides it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The clone URL the notebooks use when this checkout has no ``origin`` remote (see the README).
PLACEHOLDER_REPO_URL = "https://github.com/YOUR-GITHUB-USER/clip-unlearning.git"
PLACEHOLDER_MARK = "YOUR-GITHUB-USER"
#: Where the cell clones the repository on Colab (``CLIPUNLEARN_REPO_DIR`` overrides it).
DEFAULT_REPO_DIR = "/content/clip-unlearning"
#: Optional dependency groups of pyproject.toml installed besides the runtime dependencies.
EXTRAS = ("notebooks",)
#: Never installed here, even when missing: Colab's own stack (and the notebook server it runs).
NEVER_INSTALL = ("torch", "torchvision", "torchaudio", "numpy", "pandas", "ipykernel", "ipython", "jupyterlab",
                 "jupyter-server", "notebook")
#: Pinned to their installed versions while installing, so no dependency can upgrade them.
KEEP = NEVER_INSTALL + ("ipywidgets", "matplotlib", "scipy", "scikit-learn", "pillow", "tornado", "jupyter-client",
                        "jupyter-core", "traitlets")

CELL = '''\
# Colab: clone this repository once, install only what Colab lacks (never its torch, numpy or pandas), make
# clipunlearn importable in this kernel and fetch Fashion-MNIST (scripts/colab_setup.py). Elsewhere: nothing.
import os, subprocess, sys
if "google.colab" in sys.modules or os.environ.get("CLIPUNLEARN_FORCE_COLAB") == "1":
    REPO_URL = os.environ.get("CLIPUNLEARN_REPO") or "{repo_url}"
    REPO_DIR = os.path.abspath(os.environ.get("CLIPUNLEARN_REPO_DIR") or "{repo_dir}")
    if not os.path.isdir(os.path.join(REPO_DIR, ".git")):
        if "{mark}" in REPO_URL:
            raise RuntimeError("set os.environ['CLIPUNLEARN_REPO'] to this repository's git URL, then re-run")
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, REPO_DIR], check=True)
    if os.path.join(REPO_DIR, "scripts") not in sys.path:
        sys.path.insert(0, os.path.join(REPO_DIR, "scripts"))
    import colab_setup
    colab_setup.setup(REPO_DIR)'''


def _say(message: str) -> None:
    print(f"colab: {message}", flush=True)


def normalize(name: str) -> str:
    """Return the canonical form of a distribution name (PEP 503: ``Open_CLIP.torch`` -> ``open-clip-torch``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """Return the normalised distribution name of a requirement string (``"torch==2.1; ..."`` -> ``"torch"``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot read a package name from requirement {requirement!r}")
    return normalize(match.group(1))


def project_requirements(pyproject: Path, *, extras=EXTRAS) -> list[str]:
    """Return the runtime dependencies and ``extras`` of ``pyproject``, less :data:`NEVER_INSTALL`."""
    import tomllib

    project = tomllib.loads(Path(pyproject).read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for extra in extras:
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    never = {normalize(n) for n in NEVER_INSTALL}
    return [r for r in dict.fromkeys(requirements) if requirement_name(r) not in never]


def installed_version(name: str) -> str | None:
    """Return the installed version of distribution ``name``, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(requirements, *, version_of=installed_version) -> list[str]:
    """Return the ``requirements`` whose distribution is not installed (whatever version is, stays)."""
    return [r for r in requirements if version_of(requirement_name(r)) is None]


def keep_constraints(*, version_of=installed_version) -> list[str]:
    """Return ``name==version`` for every installed package of :data:`KEEP`."""
    return [f"{name}=={version}" for name in KEEP if (version := version_of(name)) is not None]


def install(requirements, *, python: str = sys.executable) -> None:
    """``pip install`` ``requirements`` with :func:`keep_constraints`; retry without their version pins once.

    The project's exact pins may not fit the packages Colab keeps; the retry lets pip
    pick versions that do. Raises RuntimeError with pip's output if both fail.
    """
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "keep.txt"
        constraints.write_text("\n".join(keep_constraints()) + "\n")
        base = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-c", str(constraints)]
        attempts = [list(requirements), [requirement_name(r) for r in requirements]]
        for i, attempt in enumerate(attempts):
            proc = subprocess.run(base + attempt, capture_output=True, text=True)
            if proc.returncode == 0:
                return
            if i == 0:
                _say("the pinned versions do not fit the installed packages; retrying without pins")
    raise RuntimeError(f"pip could not install {', '.join(requirements)}:\n{(proc.stdout + proc.stderr)[-3000:]}")


def make_importable(repo: Path) -> None:
    """Put ``<repo>/lib`` first on ``sys.path`` and ``PYTHONPATH`` (once), so ``import clipunlearn`` works now."""
    lib = str(repo / "lib")
    if lib not in sys.path:
        sys.path.insert(0, lib)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if lib not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([lib, *paths])
    importlib.invalidate_caches()
    loaded = sys.modules.get("clipunlearn")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(lib):
        _say(f"clipunlearn was already imported from {loaded.__file__}: restart the runtime and re-run this cell")


def fetch_data() -> bool:
    """Get Fashion-MNIST (Debian's copy, the cache or a download); say how to retry on failure."""
    from clipunlearn import data

    try:
        _say(f"Fashion-MNIST in {data.fetch_fashion_mnist()}")
        return True
    except FileNotFoundError as err:
        _say(f"could not get Fashion-MNIST ({err}); retry with: python -m clipunlearn data --fetch")
        return False


def setup(repo_dir=DEFAULT_REPO_DIR, *, extras=EXTRAS, data: bool = True, chdir: bool = True) -> Path:
    """Install what is missing, make ``clipunlearn`` importable, get the data, change into notebooks/.

    ``extras``: optional dependency groups of pyproject.toml to install besides the runtime ones.

    Returns the repository folder. Raises RuntimeError when torch is missing (this
    path keeps an existing torch and never installs one) or pip fails.
    """
    repo = Path(repo_dir).expanduser().resolve()
    if not (repo / "pyproject.toml").is_file() or not (repo / "lib" / "clipunlearn").is_dir():
        raise RuntimeError(f"{repo} is not a clipunlearn checkout (no pyproject.toml / lib/clipunlearn)")
    if installed_version("torch") is None:
        raise RuntimeError("torch is not installed: this set-up keeps the installed torch and never installs one; "
                           "outside Colab use scripts/setup_env.sh (or pip install -c constraints.txt -e .)")
    missing = missing_requirements(project_requirements(repo / "pyproject.toml", extras=extras))
    kept = ", ".join(f"{n} {v}" for n in ("torch", "numpy", "pandas") if (v := installed_version(n)))
    if missing:
        _say(f"installing what is missing: {', '.join(missing)} (keeping {kept})")
        install(missing)
    else:
        _say(f"every requirement is installed (keeping {kept})")
    make_importable(repo)
    if data:
        fetch_data()
    if chdir:
        os.chdir(repo / "notebooks")
    _say(f"ready: import clipunlearn from {repo / 'lib'}")
    return repo


# --------------------------------------------------------------------------- #
# The notebook cell
# --------------------------------------------------------------------------- #
def default_repo_url(repo: Path = REPO_ROOT) -> str:
    """Return ``git remote get-url origin`` of ``repo`` as an https URL, else :data:`PLACEHOLDER_REPO_URL`."""
    try:
        url = subprocess.run(["git", "-C", str(repo), "remote", "get-url", "origin"], capture_output=True,
                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return PLACEHOLDER_REPO_URL
    ssh = re.match(r"^(?:ssh://)?git@([^:/]+)[:/](.+)$", url)
    if ssh:  # Colab has no SSH key: clone over https
        url = f"https://{ssh.group(1)}/{ssh.group(2)}"
    return url or PLACEHOLDER_REPO_URL


def render_cell(repo_url: str | None = None, *, repo_dir: str = DEFAULT_REPO_DIR) -> str:
    """Return the Colab cell, the second cell of every notebook (``repo_url`` default: :func:`default_repo_url`)."""
    return CELL.format(repo_url=repo_url or default_repo_url(), repo_dir=repo_dir, mark=PLACEHOLDER_MARK)


def is_colab_cell(source: str) -> bool:
    """Tell whether a cell's source is (a version of) the Colab cell."""
    return source.lstrip().startswith(("# Colab", "# On Colab"))


def write_cells(notebooks, *, repo_url: str | None = None) -> list[Path]:
    """Replace the Colab cell (second cell) of each notebook by :func:`render_cell`, keeping its id.

    Returns the notebooks that changed."""
    import nbformat

    cell = render_cell(repo_url)
    changed = []
    for path in map(Path, notebooks):
        nb = nbformat.read(path, as_version=4)
        if len(nb.cells) < 2 or not is_colab_cell(nb.cells[1].source):
            raise ValueError(f"{path}: the second cell is not the Colab cell; add one there first")
        if nb.cells[1].source != cell:
            nb.cells[1].source = cell
            nbformat.write(nb, path)
            changed.append(path)
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/colab_setup.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo-dir", default=str(REPO_ROOT), help="the checkout to set up (default: this one)")
    parser.add_argument("--no-data", action="store_true", help="skip the Fashion-MNIST fetch")
    parser.add_argument("--extras", default=",".join(EXTRAS),
                        help="comma-separated optional dependency groups to install too (default: %(default)s)")
    parser.add_argument("--print-cell", action="store_true", help="print the notebooks' Colab cell and exit")
    parser.add_argument("--write-cells", action="store_true", help="write that cell into notebooks/NN_*.ipynb")
    parser.add_argument("--repo-url", default=None, help="URL for the cell (default: git remote get-url origin)")
    args = parser.parse_args(argv)
    if args.print_cell:
        print(render_cell(args.repo_url))
        return 0
    if args.write_cells:
        changed = write_cells(sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), repo_url=args.repo_url)
        print("\n".join(f"updated {p.relative_to(REPO_ROOT)}" for p in changed) or "every notebook is up to date")
        return 0
    try:
        setup(args.repo_dir, extras=[e for e in args.extras.split(",") if e], data=not args.no_data, chdir=False)
    except RuntimeError as err:
        print(f"colab: ERROR: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
