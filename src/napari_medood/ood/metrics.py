"""Metrics of scores against binary labels: shared by the OOD heads (the flow's epoch
selection), ``evaluation`` (which builds its MOOD metrics on them) and the OOD tables.

Scores are abnormality scores (higher = more out of distribution); ``labels`` are 1 for
OOD / abnormal, 0 for in distribution. :func:`openood_metrics` reports what OpenOOD (and
MedOODFlow's tables) report: AUROC with OOD as positive, FPR@95 as OpenOOD's ``fpr_recall``
(the fraction of OOD samples accepted at the threshold that accepts 95 % of the
in-distribution ones; ``evaluation.metrics.fpr_at_tpr`` is the other common reading, the
false-positive rate at 95 % of the OOD samples found), AUPR-In (in distribution as the
positive class, scored by -score) and AUPR-Out.
"""

from __future__ import annotations

import numpy as np


def _average_precision(tps: np.ndarray, fps: np.ndarray) -> float:
    """Step-wise average precision from cumulative true/false positives per threshold."""
    if tps.size == 0 or tps[-1] == 0:
        return float("nan")
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _auroc(tps: np.ndarray, fps: np.ndarray) -> float:
    """Area under the ROC curve (ties count half) from cumulative true/false positives."""
    if tps.size == 0 or tps[-1] == 0 or fps[-1] == 0:
        return float("nan")
    tpr = np.concatenate([[0.0], tps / tps[-1]])
    fpr = np.concatenate([[0.0], fps / fps[-1]])
    return float(np.trapezoid(tpr, fpr))


def _binary_curve(scores: np.ndarray, labels: np.ndarray):
    """Distinct thresholds from the highest down, with cumulative true/false positives."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    distinct = np.flatnonzero(np.diff(scores)) if scores.size else np.array([], int)
    ends = np.concatenate([distinct, [scores.size - 1]]) if scores.size else distinct
    tps = np.cumsum(labels)[ends]
    fps = (ends + 1) - tps
    return scores[ends], tps.astype(np.float64), fps.astype(np.float64)


def average_precision(scores, labels) -> float:
    """sklearn-equivalent average precision (abnormal = label 1, higher score = abnormal)."""
    _, tps, fps = _binary_curve(scores, labels)
    return _average_precision(tps, fps)


def auroc(scores, labels) -> float:
    _, tps, fps = _binary_curve(scores, labels)
    return _auroc(tps, fps)


def _checked(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores for {labels.size} labels")
    if labels.all() or not labels.any():
        raise ValueError("OOD metrics need both in-distribution and OOD samples")
    return scores, labels


def fpr_at_id_recall(scores, labels, recall: float = 0.95) -> float:
    """The fraction of OOD samples accepted as in-distribution when ``recall`` of the
    in-distribution samples are (OpenOOD's ``fpr_recall``)."""
    scores, labels = _checked(scores, labels)
    id_scores = np.sort(scores[~labels])
    threshold = id_scores[max(int(np.ceil(recall * id_scores.size)) - 1, 0)]
    return float(np.mean(scores[labels] <= threshold))


def openood_metrics(scores, labels) -> dict[str, float]:
    """AUROC, FPR@95, AUPR-In and AUPR-Out of OOD ``scores`` as OpenOOD reports them."""
    scores, labels = _checked(scores, labels)
    return {
        "auroc": auroc(scores, labels),
        "fpr95": fpr_at_id_recall(scores, labels),
        "aupr_in": average_precision(-scores, ~labels),
        "aupr_out": average_precision(scores, labels),
    }
