"""Each paper on the shared harness: its settings per profile, tasks, benchmark and ablation drivers.

:mod:`.paper_a` (notebook 30) and :mod:`.paper_b` (notebook 20); CLIPErase (paper C) is one registered loss
and runs through the harness's benchmark (notebook 10).
"""
