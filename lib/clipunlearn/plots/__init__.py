"""Figures shared by the notebooks; each takes plain tensors or records, never a model.

The record-based functions (``plot_method_bars`` ... ``plot_tradeoff``) take a list
of result records (``docs/RESULTS.md``) and return a matplotlib Figure: bars carry
their value, the untouched model is grey or a dashed line, error bars are the
standard deviation over seeds (aggregation as in :mod:`clipunlearn.report`), and a
metric that the records lack is left out. ``FIGURES`` maps a notebook stem to the
function that draws all its figures from its records, so
``python -m clipunlearn figures`` redraws ``figures/<profile>/`` from
``results/<profile>/`` without a model.
"""

from __future__ import annotations

from .attacks import ATTACK_COLUMNS, attack_table, plot_relearning
from .common import NoDataError, ORACLE_LABEL, ORIGINAL_COLOUR, method_colour, save_figure, save_figures
from .records import (plot_ablation, plot_benchmark_heatmap, plot_forget_confusion, plot_forget_ratio,
                      plot_forgetting_curves, plot_method_bars, plot_per_class, plot_selection, plot_tradeoff)
from .tensors import plot_confusion, plot_curves, plot_embedding_map, plot_image_grid, plot_prediction_grid
from .paper_a import (SUBGROUP_TASKS, plot_alpha_curve, plot_layer_ranking, plot_stages, plot_stages_by_style,
                      plot_three_stage_ablation, plot_three_stage_examples, reported_three_stage_ablation)
from .notebooks import (FIGURES, FORGET_TASKS, draw_figures, figures_benchmark, figures_cliperase,
                        figures_setup_and_baseline, figures_subgroup_forgetting, figures_synthetic_lipschitz,
                        figures_unlearning, image_figure_name, main, reported_ablation,
                        save_notebook_figures)

__all__ = ["ATTACK_COLUMNS", "attack_table", "plot_relearning",
           "FIGURES", "FORGET_TASKS", "NoDataError", "ORACLE_LABEL", "ORIGINAL_COLOUR", "SUBGROUP_TASKS",
           "draw_figures", "figures_benchmark", "figures_cliperase", "figures_setup_and_baseline",
           "figures_subgroup_forgetting", "figures_synthetic_lipschitz", "figures_unlearning", "image_figure_name", "main",
           "method_colour",
           "plot_ablation", "plot_alpha_curve", "plot_benchmark_heatmap", "plot_confusion", "plot_curves",
           "plot_embedding_map", "plot_forget_confusion", "plot_forget_ratio", "plot_forgetting_curves",
           "plot_image_grid", "plot_layer_ranking", "plot_method_bars", "plot_per_class", "plot_prediction_grid",
           "plot_selection", "plot_stages", "plot_stages_by_style", "plot_three_stage_ablation",
           "plot_three_stage_examples", "plot_tradeoff", "reported_ablation", "reported_three_stage_ablation",
           "save_figure", "save_figures", "save_notebook_figures"]
