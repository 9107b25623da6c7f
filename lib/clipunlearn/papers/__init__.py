"""Each paper on the shared harness: its settings per profile, tasks, benchmark and ablation drivers.

:mod:`.paper_b` (notebook 20). Paper A's glue is still in :mod:`clipunlearn.experiment` and
:mod:`clipunlearn.three_stage`.
"""
