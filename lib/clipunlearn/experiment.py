"""The harness's and paper A's names for code written before ``harness/``, ``methods/`` and ``papers/``.

Nothing is defined here: the harness is :mod:`clipunlearn.harness` (tasks, evaluation, selection, runs),
the selection and aggregate scores :mod:`clipunlearn.scores`, paper A's three stages
:mod:`clipunlearn.methods.three_stage` and its notebook glue :mod:`clipunlearn.papers.paper_a`.
"""

from __future__ import annotations

from .harness import *  # noqa: F401,F403  (every harness name)
from .harness.task import _cap_per_class  # noqa: F401  (tests pin it)
from .methods.three_stage import (THREE_STAGE_ABLATIONS, THREE_STAGE_PAPER_ABLATIONS,  # noqa: F401
                                  explore_three_stage, run_three_stage)
from .papers.paper_a import (PAPER_A_COLUMNS, PAPER_A_METHODS, PAPER_A_TRANSFER, paper_a_table,  # noqa: F401
                             run_subgroup_benchmark, run_three_stage_ablation)
from .report import STAGE_LABELS, stage_records  # noqa: F401
from .scores import CRITERION, SCORE_RETAINED, selection_score, unlearning_score  # noqa: F401
