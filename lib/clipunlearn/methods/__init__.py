"""Unlearning methods with a schedule of their own, on the shared loop and harness.

The loss-based methods are one decorated loss each (:mod:`clipunlearn.losses`); the methods here
register themselves with :func:`clipunlearn.registry.register_procedure` when imported:
:mod:`.lipschitz` (paper B; the authors' form in :mod:`.lipschitz_authors`).
"""

from . import lipschitz  # noqa: F401  (registers lipschitz_synthetic and lipschitz_real)
