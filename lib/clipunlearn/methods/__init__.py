"""Unlearning methods with a schedule of their own, on the shared loop and harness.

The loss-based methods are one decorated loss each (:mod:`clipunlearn.losses`); the methods here
register themselves with :func:`clipunlearn.registry.register_procedure` when imported:
:mod:`.lipschitz` (paper B; the authors' form in :mod:`.lipschitz_authors`) and :mod:`.three_stage`
(paper A; its stages in :mod:`.three_stage_stages`).
"""

from . import lipschitz, nullspace, retrain, three_stage  # noqa: F401  (register the procedures; label retrain)
