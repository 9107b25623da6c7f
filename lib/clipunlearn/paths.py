"""Where things live: the repository, caches, data, results and figures.

Everything is resolved from this file's location or from environment variables,
never from the current working directory, so notebooks, scripts and tests agree.

Environment overrides:
    CLIPUNLEARN_CACHE  cache folder for trained models and downloads
                       (default ``~/.cache/clipunlearn``)
    CLIPUNLEARN_DATA   data folder for datasets (default ``<cache>/data``)
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES = ("mini", "paper")


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


def _run_name(profile: str, quick: bool) -> str:
    check_profile(profile)
    return f"quick-{profile}" if quick else profile


def get_results_path(profile: str, stem: str, *, quick: bool = False) -> Path:
    """Return ``results/<profile>/<stem>.json`` (``results/quick-<profile>/`` in quick mode)."""
    return REPO_ROOT / "results" / _run_name(profile, quick) / f"{stem}.json"


def get_figures_dir(profile: str, *, quick: bool = False) -> Path:
    """Return ``figures/<profile>/`` (``figures/quick-<profile>/`` in quick mode), created."""
    path = REPO_ROOT / "figures" / _run_name(profile, quick)
    path.mkdir(parents=True, exist_ok=True)
    return path
