"""Sample-level OOD metrics as OpenOOD reports them (MedOODFlow's tables).

Scores are OOD scores (higher = more out of distribution); ``labels`` are 1 for OOD, 0 for
in-distribution. AUROC treats OOD as positive; FPR@95 is the fraction of OOD samples
accepted at the threshold that accepts 95 % of the in-distribution ones; AUPR-In takes the
in-distribution samples as positives (scored by -score), AUPR-Out the OOD ones.
"""

from __future__ import annotations

import numpy as np


def _checked(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores for {labels.size} labels")
    if labels.all() or not labels.any():
        raise ValueError("OOD metrics need both in-distribution and OOD samples")
    return scores, labels


def auroc(scores, labels) -> float:
    """Area under the ROC curve (ties count half), via the rank-sum statistic."""
    from scipy.stats import rankdata

    scores, labels = _checked(scores, labels)
    ranks = rankdata(scores)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(scores, labels) -> float:
    """Step-wise average precision (as scikit-learn's), tied scores taken together."""
    scores, labels = _checked(scores, labels)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = np.cumsum(labels)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall = tp / labels.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(scores, labels, tpr: float = 0.95) -> float:
    """The fraction of OOD samples accepted as in-distribution when ``tpr`` of the
    in-distribution samples are (OpenOOD's ``fpr_recall``)."""
    scores, labels = _checked(scores, labels)
    id_scores = np.sort(scores[~labels])
    threshold = id_scores[max(int(np.ceil(tpr * id_scores.size)) - 1, 0)]
    return float(np.mean(scores[labels] <= threshold))


def ood_metrics(scores, labels) -> dict[str, float]:
    """AUROC, FPR@95, AUPR-In and AUPR-Out of OOD ``scores`` (higher = more OOD)."""
    scores, labels = _checked(scores, labels)
    return {
        "auroc": auroc(scores, labels),
        "fpr95": fpr_at_tpr(scores, labels),
        "aupr_in": average_precision(-scores, ~labels),
        "aupr_out": average_precision(scores, labels),
    }
