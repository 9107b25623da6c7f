"""The shared experiment harness: tasks, one evaluation, one selection protocol, one run.

Every notebook builds its tasks, evaluates every model and selects every method's
hyper-parameters through these modules, so numbers are comparable across notebooks:
:mod:`.task` (what to forget and keep), :mod:`.evaluate` (test and validation metrics),
:mod:`.select` (the grid on the first seed, the tie rule), :mod:`.store` (records saved as
they come, resumable) and :mod:`.run` (a registered loss through the one loop). The harness
imports no method: methods and papers import it.
"""

from ..scores import CRITERION, SCORE_RETAINED, selection_score, unlearning_score
from .evaluate import calibration_fn, evaluate_coarse, evaluate_model, validate_model
from .run import MINI_LR_GRID, record_original, run_ablation, run_forget_benchmark, run_forget_ratio, run_method
from .select import GridExtension, run_grid, run_selected, summarise_run
from .store import ResultStore
from .task import (EVAL_SETS, TASK_KINDS, Task, build_task, calibration_split, class_prompts, pick_classes,
                   pick_examples)

__all__ = ["CRITERION", "EVAL_SETS", "GridExtension", "MINI_LR_GRID", "SCORE_RETAINED", "TASK_KINDS",
           "ResultStore", "Task", "build_task", "calibration_fn", "calibration_split", "class_prompts",
           "evaluate_coarse", "evaluate_model", "pick_classes", "pick_examples", "record_original", "run_ablation",
           "run_forget_benchmark", "run_forget_ratio", "run_grid", "run_method", "run_selected", "selection_score",
           "summarise_run", "unlearning_score", "validate_model"]
