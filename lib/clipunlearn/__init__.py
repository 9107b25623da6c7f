"""clipunlearn: machine unlearning in CLIP, a thin library under reproducible notebooks.

The small public API; the modules hold the rest (see docs/ARCHITECTURE.md).
"""

from .data import load_dataset, load_fashion_mnist, make_loader, select_indices, split_indices
from .registry import LOSSES, METHODS, get_loss, get_method, register_loss, register_method, register_procedure
from . import losses, methods  # noqa: F401  (register the loss methods, then the procedures)
from .experiment import build_task, evaluate_model, run_method, selection_score  # registers three_stage
from .metrics import (accuracy, build_classifier, measure_run, membership_inference, per_class_accuracy,
                      retrieval_recall)
from .models import copy_frozen, get_mini_clip, get_normalization, load_clip
from .results import load_records, make_record, save_records
from .souping import interpolate_state_dicts, soup_state_dicts
from .unlearning import make_pair_loader, unlearn

__version__ = "0.1.0"

__all__ = [
    "LOSSES", "METHODS", "accuracy", "build_classifier", "build_task", "copy_frozen", "evaluate_model", "get_loss", "get_method", "get_mini_clip",
    "get_normalization", "interpolate_state_dicts", "load_clip", "load_dataset", "load_fashion_mnist",
    "load_records", "make_loader", "make_pair_loader", "make_record", "measure_run", "membership_inference",
    "per_class_accuracy", "register_loss", "register_method", "register_procedure", "retrieval_recall", "run_method", "save_records", "select_indices",
    "selection_score",
    "soup_state_dicts", "split_indices", "unlearn",
]
