"""The three papers' settings as data: one JSON file per paper.

``paper_a`` (targeted forgetting of image subgroups), ``paper_b`` (zero-shot class
unlearning with synthetic samples) and ``paper_c`` (CLIPErase) hold each paper's
backbones, datasets, forget classes, prompts, hyper-parameters and the numbers it
reports (as fractions), so that notebooks print them beside their own. Values the
paper does not give are the project's choice: their keys are listed under
``"project_choice"`` (dotted paths) and explained under ``"notes"``; what is not
known at all is listed under ``"unknown"``.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def list_paper_configs() -> list[str]:
    """Return the names of the paper configs (``["paper_a", "paper_b", "paper_c"]``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("paper_*.json"))


def load_paper_config(name: str) -> dict:
    """Return the settings of paper ``name`` (a fresh dict); an unknown name lists the valid ones."""
    valid = list_paper_configs()
    if name not in valid:
        raise ValueError(f"unknown paper config {name!r}; valid: {', '.join(valid)}")
    return json.loads((CONFIG_DIR / f"{name}.json").read_text(encoding="utf-8"))


def split_names(text: str) -> list[str]:
    """Return the comma-separated names of a notebook parameter (``"a, b,"`` -> ``["a", "b"]``)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_seeds(seeds) -> list[int]:
    """Return the seeds of a notebook's ``SEEDS`` parameter (``"0,1,2"`` or a sequence) as ints."""
    items = split_names(seeds) if isinstance(seeds, str) else list(seeds)
    try:
        parsed = [int(s) for s in items]
    except (TypeError, ValueError):
        raise ValueError(f"seeds must be integers, comma-separated (e.g. '0,1,2'); got {seeds!r}") from None
    if not parsed:
        raise ValueError(f"no seed in {seeds!r}: give at least one, e.g. '0'")
    return parsed


def get_config_value(config: dict, key: str):
    """Return the value at dotted ``key`` (e.g. ``"hyperparameters.lr"``) of a paper config."""
    value = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            keys = ", ".join(value) if isinstance(value, dict) else "none: not a dict"
            raise KeyError(f"{key!r}: no {part!r} in the config (keys there: {keys})")
        value = value[part]
    return value


def mini_settings() -> dict:
    """Return a fresh copy of the mini profile's method settings: ``{"grids", "three_stage", "lipschitz"}``.

    ``grids``: ``{method: {"lr": [...]}}``; ``three_stage``: keyword arguments of
    ``experiment.run_three_stage``; ``lipschitz``: ``{"generation", "forgetting", "n_train", "n_val"}``
    (paper B's synthetic images and forgetting procedure, scaled to 32 px grey images).
    Read from ``configs/mini.json``, the one place these settings live.
    """
    settings = json.loads((CONFIG_DIR / "mini.json").read_text())
    settings.pop("description", None)
    return settings
