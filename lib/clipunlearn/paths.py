"""Where things live: the repository, caches, data, results and figures.

Everything is resolved from this file's location or from environment variables,
never from the current working directory, so notebooks, scripts and tests agree.

Environment overrides:
    CLIPUNLEARN_CACHE  cache folder for trained models and downloads
                       (default ``~/.cache/clipunlearn``)
    CLIPUNLEARN_DATA   data folder for datasets (default ``<cache>/data``)
    CLIPUNLEARN_MINI_SEED
                       unset (or ``shipped``): the mini profile uses the shipped mini CLIP
                       (``lib/clipunlearn/model_weights/``); an integer N: a mini CLIP
                       retrained here with training seed N (cached; trained on first use),
                       whose results and figures go to ``results/mini-seedN/`` and
                       ``figures/mini-seedN/`` so the shipped model's records are never mixed
                       with another model's (``./run_all.sh --retrained-mini N``)
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES = ("mini", "paper")
#: Environment variable choosing the mini model (see the module docstring).
MINI_SEED_ENV = "CLIPUNLEARN_MINI_SEED"


def get_cache_dir() -> Path:
    """Return the cache folder (created on first use)."""
    root = os.environ.get("CLIPUNLEARN_CACHE") or Path.home() / ".cache" / "clipunlearn"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def get_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return ``data_dir`` if given, else ``$CLIPUNLEARN_DATA``, else ``<cache>/data``."""
    root = data_dir or os.environ.get("CLIPUNLEARN_DATA") or get_cache_dir() / "data"
    return Path(root).expanduser()


def check_profile(profile: str) -> str:
    """Return ``profile`` or raise a ValueError listing the valid ones."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    return profile


def get_mini_seed() -> int | None:
    """Return the training seed of the retrained mini model in use, or None for the shipped one.

    Read from ``$CLIPUNLEARN_MINI_SEED`` (unset, empty or ``shipped``: the shipped model).
    """
    value = os.environ.get(MINI_SEED_ENV, "").strip()
    if value in ("", "shipped"):
        return None
    try:
        seed = int(value)
    except ValueError:
        raise ValueError(f"{MINI_SEED_ENV}={value!r}: give a training seed (an integer, e.g. 1) for a retrained "
                         "mini model, or leave it unset (or 'shipped') for the shipped one") from None
    if seed < 0:
        raise ValueError(f"{MINI_SEED_ENV}={value!r}: the training seed must be >= 0")
    return seed


def get_run_name(profile: str, *, quick: bool = False) -> str:
    """Return the folder name of a run under ``results/`` and ``figures/``: ``[quick-]<profile>[-seed<N>]``."""
    check_profile(profile)
    seed = get_mini_seed() if profile == "mini" else None
    name = profile if seed is None else f"{profile}-seed{seed}"
    return f"quick-{name}" if quick else name


def get_results_path(profile: str, stem: str, *, quick: bool = False) -> Path:
    """Return ``results/<profile>/<stem>.json`` (``results/quick-<profile>/`` in quick mode).

    With a retrained mini model (:func:`get_mini_seed`) the folder is ``results/mini-seed<N>/``.
    """
    return REPO_ROOT / "results" / get_run_name(profile, quick=quick) / f"{stem}.json"


def get_figures_dir(profile: str, *, quick: bool = False) -> Path:
    """Return ``figures/<profile>/`` (``figures/quick-<profile>/`` in quick mode), created."""
    path = REPO_ROOT / "figures" / get_run_name(profile, quick=quick)
    path.mkdir(parents=True, exist_ok=True)
    return path
