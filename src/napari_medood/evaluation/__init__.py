"""Evaluation: MOOD-exact voxel and sample metrics from histograms, threshold calibration,
streaming cohort evaluation, bias tables, reports, and the UAD-IMAG slice cache."""

from napari_medood.evaluation.evaluate import EvalOptions, EvaluationResult, evaluate
from napari_medood.evaluation.metrics import (
    CaseCounts,
    VoxelHistogram,
    best_dice_bisection,
    best_dice_sweep,
    bootstrap_ci,
    ood_metrics,
    threshold_at_fpr,
)
from napari_medood.evaluation.predictions import DetectorPredictions, FolderPredictions

__all__ = [
    "CaseCounts",
    "DetectorPredictions",
    "EvalOptions",
    "EvaluationResult",
    "FolderPredictions",
    "VoxelHistogram",
    "best_dice_bisection",
    "best_dice_sweep",
    "bootstrap_ci",
    "evaluate",
    "ood_metrics",
    "threshold_at_fpr",
]
