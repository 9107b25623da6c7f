"""The shared experiment harness: tasks, one evaluation, one selection protocol, one run.

Every notebook builds its tasks, evaluates every model and selects every method's
hyper-parameters through these modules, so numbers are comparable across notebooks:
:mod:`.task` (what to forget and keep), :mod:`.evaluate` (test and validation metrics),
:mod:`.select` (the grid on a selection seed, extended at its ends, the tie rule), :mod:`.store` (records
saved as they come, resumable), :mod:`.reference` (every run beside the retrained model), :mod:`.archive`
(the reported runs' models, kept as differences from the starting model), :mod:`.run`
(a registered loss through the one loop), :mod:`.executor` (where a selection's runs execute) and
:mod:`.retrieval` (a concept's caption pairs: the retrieval task,
its one evaluation, one run). The harness
imports no method: methods and papers import it.
"""

from ..scores import CRITERION, SCORE_RETAINED, selection_score, unlearning_score
from .archive import ModelArchive
from .evaluate import MIA_FIT_IMAGES, calibration_fn, evaluate_coarse, evaluate_model, validate_model
from .executor import RunCall, SerialExecutor, make_spec
from .run import (FACTORY_TASKS, MINI_LR_GRID, RUN_FACTORIES, record_original, run_ablation, run_forget_benchmark,
                  run_forget_ratio, run_method)
from .reference import Reference, compare_to_reference, reference_fn
from .retrieval import (RETRIEVAL_KS, RETRIEVAL_TASK, RetrievalPool, RetrievalTask, build_retrieval_pool,
                        build_retrieval_tasks, evaluate_retrieval, retrieval_score, run_retrieval_method,
                        summarise_retrieval)
from .select import (EVALUATIONS, PROTOCOL, QUICK_PROTOCOL, SELECTION_SEED, GridExtension, Selection,
                     find_selection_task, is_search, protocol_for, reported_tasks, run_grid, run_selected,
                     summarise_run)
from .store import ResultStore
from .task import (EVAL_SETS, TASK_KINDS, Task, build_task, calibration_split, class_prompts, pick_classes,
                   pick_examples)

__all__ = ["FACTORY_TASKS", "ModelArchive", "RUN_FACTORIES", "RunCall", "SerialExecutor", "make_spec",
           "CRITERION", "EVALUATIONS", "EVAL_SETS", "GridExtension", "MIA_FIT_IMAGES", "MINI_LR_GRID", "PROTOCOL",
           "QUICK_PROTOCOL", "RETRIEVAL_KS", "RETRIEVAL_TASK", "Reference", "RetrievalPool", "RetrievalTask",
           "SCORE_RETAINED", "build_retrieval_pool", "build_retrieval_tasks", "evaluate_retrieval", "retrieval_score",
           "run_retrieval_method", "summarise_retrieval", "SELECTION_SEED", "TASK_KINDS", "ResultStore",
           "Selection", "Task", "build_task", "calibration_fn", "calibration_split", "class_prompts",
           "compare_to_reference", "evaluate_coarse", "evaluate_model", "find_selection_task", "is_search",
           "pick_classes", "pick_examples", "protocol_for", "record_original", "reference_fn", "reported_tasks",
           "run_ablation", "run_forget_benchmark", "run_forget_ratio", "run_grid", "run_method", "run_selected",
           "selection_score", "summarise_run", "unlearning_score", "validate_model"]
