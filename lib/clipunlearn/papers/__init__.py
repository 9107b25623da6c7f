"""Each paper on the shared harness: its settings per profile, tasks, benchmark and ablation drivers.

:mod:`.paper_c` (notebook 10: CLIPErase is one registered loss and runs through the harness's drivers),
:mod:`.paper_b` (notebook 20; the authors' artefacts in :mod:`.authors_artefacts`) and :mod:`.paper_a`
(notebook 30).
"""
