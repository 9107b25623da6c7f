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

import copy
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


#: The mini profile's settings of the methods that are not plain registered losses, and every method's grid;
#: shared by notebooks 20 (paper B), 30 (paper A) and 40 (benchmark). Use :func:`mini_settings` for a copy.
_MINI_SETTINGS = dict(
    grids={**{m: {"lr": [1e-5, 1e-4, 1e-3]} for m in ("ft", "ga", "graddiff", "neggrad_plus", "random_labels",
                                                      "cliperase")},
           "lipschitz_synthetic": {"lr": [5e-3, 1e-2, 2e-2]}, "three_stage": {"lr": [3e-4, 1e-3, 3e-3]}},
    three_stage=dict(batch_size=32, calib_per_class=20, examples=0,
                     settings=dict(n_layers=2, rank=4, margin=-0.2, forget_steps=100, align_steps=2,
                                   remind_lr=3e-3, remind_steps=30, kd_weight=1.0, ema_decay=0.9,
                                   alphas=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0))),
    lipschitz=dict(
        generation=dict(image_size=32, steps=600, step_size=3.5, jitter=2, blur_every=10, blur_sigma=0.5,
                        norm_weight=1e-3, thresholds=0.99, threshold_decay=0.025, min_threshold=0.45,
                        patience=60, logit_scale="model", grayscale=True, batch_size=96),
        forgetting=dict(n_samples=25, threshold=0.1, max_epochs=30, betas=(0.9, 0.98), eps=1e-6,
                        weight_decay=0.2, batch_size=64),
        n_train=64, n_val=32),
)


def mini_settings() -> dict:
    """Return a fresh copy of the mini profile's method settings: ``{"grids", "three_stage", "lipschitz"}``.

    ``grids``: ``{method: {"lr": [...]}}``; ``three_stage``: keyword arguments of
    ``experiment.run_three_stage``; ``lipschitz``: ``{"generation", "forgetting", "n_train", "n_val"}``
    (paper B's synthetic images and forgetting procedure, scaled to 32 px grey images).
    """
    return copy.deepcopy(_MINI_SETTINGS)
