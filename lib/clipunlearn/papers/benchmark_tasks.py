"""The benchmark's three tasks, built exactly as the notebooks whose runs the benchmark reuses build them.

Notebook 40 reuses notebook 10's runs on the class task and notebook 30's on the two subgroup tasks, and notebook 45
rebuilds and attacks them. A run is only comparable with another on the same task: the same retain pairs, the same
validation images (which pick the best step) and the same test subsets. :func:`benchmark_task_sizes` returns the
``harness.build_task`` sizes of each task kind from the settings of the notebook that owns it, so notebooks 40 and
45 cannot drift from notebooks 10 and 30.
"""

from __future__ import annotations

from ..harness import build_task
from ..methods.retrain import RETRAIN_TARGETS
from .paper_a import paper_a_settings
from .paper_c import paper_c_settings

__all__ = ["BENCHMARK_TASKS", "benchmark_task_sizes", "build_benchmark_tasks"]

#: The benchmark's tasks, ``{task kind: target}``: those the retrained references are trained for.
BENCHMARK_TASKS = RETRAIN_TARGETS
#: The settings each task kind is built with: those of the notebook that owns its runs (notebook 10: paper C's;
#: notebook 30: paper A's).
OWNER_SETTINGS = {"forget-class": paper_c_settings, "forget-subgroup": paper_a_settings,
                  "forget-style-subgroup": paper_a_settings}


def benchmark_task_sizes(kind: str, *, quick: bool = False) -> dict:
    """Return the mini ``harness.build_task`` size arguments of task ``kind`` (its owner's, :data:`OWNER_SETTINGS`);
    ``quick``: the owner's CI sizes."""
    if kind not in OWNER_SETTINGS:
        raise ValueError(f"unknown benchmark task kind {kind!r}; valid: {', '.join(OWNER_SETTINGS)}")
    return dict(OWNER_SETTINGS[kind]("mini", quick=quick)["task"])


def build_benchmark_tasks(train, test, *, tasks: dict[str, str], seeds, n_seen: int | None,
                          quick: bool = False) -> dict[str, dict[str, list]]:
    """Return ``{kind: {target: [task per seed]}}`` for ``tasks`` (``{kind: target}``), each built by
    ``harness.build_task`` with :func:`benchmark_task_sizes`."""
    return {kind: {target: [build_task(train, test, kind=kind, target=target, seed=s, n_seen=n_seen,
                                       **benchmark_task_sizes(kind, quick=quick)) for s in seeds]}
            for kind, target in tasks.items()}
