"""Voxel- and sample-level metrics with the MOOD challenge's semantics, computed from histograms.

Voxel metrics follow MOOD's evaluator: a prediction is cast to float16 and clipped to [0, 1],
a label is rounded and clipped, and a voxel is abnormal when its label is 1. A float16 in
[0, 1] is one of 15,361 values whose bit patterns sort like the values, so a voxel can be
counted in the bin of its bit pattern: two 15,361-bin histograms (abnormal, normal) hold all
that average precision, AUROC, Dice at any threshold and threshold calibration need, exactly
as sklearn computes them on the same float16 values, and a cohort is scored one volume at a
time without ever concatenating the voxels.

Per-case results keep a sparse copy of the case's histogram (:class:`CaseCounts`) so that
Dice can be computed per case at thresholds chosen after all cases were seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

# the curve metrics of scores against labels live one layer down, where the OOD heads use them
from napari_medood.ood.metrics import (  # noqa: F401 - re-exported
    _auroc,
    _average_precision,
    _binary_curve,
    auroc,
    average_precision,
)

#: float16 bit patterns 0x0000 (0.0) to 0x3C00 (1.0)
N_BINS = 0x3C00 + 1
BIN_VALUES = np.arange(N_BINS, dtype=np.uint16).view(np.float16).astype(np.float64)


def prediction_bins(prediction: np.ndarray) -> np.ndarray:
    """MOOD's reading of a prediction: float16, clipped to [0, 1] (NaN counts as 0), as the
    bin index (the float16 bit pattern) of each voxel."""
    values = np.asarray(prediction).astype(np.float16, copy=False).ravel()
    values = np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0)
    bits = np.clip(values, 0.0, 1.0).view(np.uint16)
    bits = np.where(bits >= 0x8000, np.uint16(0), bits)  # -0.0 -> +0.0
    return bits


def label_truth(label: np.ndarray) -> np.ndarray:
    """MOOD's reading of a label: rounded, clipped to [0, 1], abnormal where it equals 1."""
    return np.clip(np.rint(np.asarray(label, dtype=np.float64)), 0, 1).ravel() == 1


def threshold_bin(threshold: float) -> int:
    """The first bin counted as abnormal at ``prediction >= threshold``."""
    return int(np.searchsorted(BIN_VALUES, threshold, side="left"))


def _curve_from_counts(pos: np.ndarray, neg: np.ndarray, values: np.ndarray):
    """Cumulative true/false positives at each distinct value, from the highest down."""
    keep = (pos + neg) > 0
    order = np.flatnonzero(keep)[::-1]
    return values[order], np.cumsum(pos[order]), np.cumsum(neg[order])


@dataclass
class VoxelHistogram:
    """Counts of abnormal (``pos``) and normal (``neg``) voxels per float16 prediction value."""

    pos: np.ndarray = field(default_factory=lambda: np.zeros(N_BINS, np.int64))
    neg: np.ndarray = field(default_factory=lambda: np.zeros(N_BINS, np.int64))

    def add(
        self, prediction: np.ndarray, label: np.ndarray | None, mask: np.ndarray | None = None
    ) -> CaseCounts:
        """Count one volume (``label`` None: all normal); returns its own counts."""
        bins = prediction_bins(prediction)
        truth = np.zeros(bins.shape, bool) if label is None else label_truth(label)
        if truth.shape != bins.shape:
            raise ValueError(f"prediction has {bins.size} voxels, label {truth.size}")
        if mask is not None:
            inside = np.asarray(mask, dtype=bool).ravel()
            if inside.shape != bins.shape:
                raise ValueError(f"prediction has {bins.size} voxels, mask {inside.size}")
            bins, truth = bins[inside], truth[inside]
        pos = np.bincount(bins[truth], minlength=N_BINS)
        neg = np.bincount(bins[~truth], minlength=N_BINS)
        self.pos += pos
        self.neg += neg
        return CaseCounts.from_dense(pos, neg)

    @property
    def n_pos(self) -> int:
        return int(self.pos.sum())

    @property
    def n_neg(self) -> int:
        return int(self.neg.sum())

    def curve(self):
        """``(thresholds descending, true positives, false positives)`` at each distinct value."""
        return _curve_from_counts(self.pos, self.neg, BIN_VALUES)

    def average_precision(self) -> float:
        """Average precision over all counted voxels (NaN when none is abnormal)."""
        _, tps, fps = self.curve()
        return _average_precision(tps, fps)

    def auroc(self) -> float:
        """Area under the ROC curve (NaN without both classes)."""
        _, tps, fps = self.curve()
        return _auroc(tps, fps)

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(precision, recall, thresholds)`` from the highest threshold down."""
        thresholds, tps, fps = self.curve()
        total = max(int(tps[-1]) if tps.size else 0, 1)
        return tps / np.maximum(tps + fps, 1), tps / total, thresholds

    def counts_at(self, threshold: float) -> tuple[int, int, int, int]:
        """``(tp, fp, fn, tn)`` when ``prediction >= threshold`` is called abnormal."""
        start = threshold_bin(threshold)
        tp, fp = int(self.pos[start:].sum()), int(self.neg[start:].sum())
        return tp, fp, self.n_pos - tp, self.n_neg - fp

    def dice_at(self, threshold: float) -> float:
        tp, fp, fn, _ = self.counts_at(threshold)
        return dice_from_counts(tp, fp, fn)

    def max_value(self) -> float:
        counted = np.flatnonzero(self.pos + self.neg)
        return float(BIN_VALUES[counted[-1]]) if counted.size else 0.0


@dataclass(frozen=True)
class CaseCounts:
    """One case's histogram, sparse: the bins that hold voxels, and their counts."""

    bins: np.ndarray  # uint16, ascending
    pos: np.ndarray  # int64
    neg: np.ndarray  # int64

    @classmethod
    def from_dense(cls, pos: np.ndarray, neg: np.ndarray) -> CaseCounts:
        keep = np.flatnonzero(pos + neg)
        return cls(keep.astype(np.uint16), pos[keep].astype(np.int64), neg[keep].astype(np.int64))

    @property
    def n_pos(self) -> int:
        return int(self.pos.sum())

    @property
    def n_neg(self) -> int:
        return int(self.neg.sum())

    def counts_at(self, thresholds: Sequence[float] | np.ndarray):
        """``(tp, fp, fn)`` arrays, one entry per threshold (``prediction >= t``)."""
        starts = np.searchsorted(BIN_VALUES, np.asarray(thresholds, float), side="left")
        first = np.searchsorted(self.bins, starts, side="left")
        tail_pos = np.concatenate([np.cumsum(self.pos[::-1])[::-1], [0]])
        tail_neg = np.concatenate([np.cumsum(self.neg[::-1])[::-1], [0]])
        tp, fp = tail_pos[first], tail_neg[first]
        return tp, fp, self.n_pos - tp

    def dice_at(self, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
        tp, fp, fn = self.counts_at(thresholds)
        return dice_from_counts(tp, fp, fn)

    def fpr_at(self, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
        _, fp, _ = self.counts_at(thresholds)
        return fp / max(self.n_neg, 1)

    def average_precision(self) -> float:
        _, tps, fps = _curve_from_counts(self.pos, self.neg, self.bins)
        return _average_precision(tps, fps)

    def auroc(self) -> float:
        _, tps, fps = _curve_from_counts(self.pos, self.neg, self.bins)
        return _auroc(tps, fps)

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(precision, recall, thresholds)`` from the highest threshold down."""
        thresholds, tps, fps = _curve_from_counts(self.pos, self.neg, BIN_VALUES[self.bins])
        total = max(int(tps[-1]) if tps.size else 0, 1)
        return tps / np.maximum(tps + fps, 1), tps / total, thresholds


def dice_from_counts(tp, fp, fn):
    """2 TP / (2 TP + FP + FN); 1 where prediction and label are both empty."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    dice = np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 1.0)
    return float(dice) if dice.ndim == 0 else dice


# ------------------------------------------------------------------------- thresholds
def threshold_at_fpr(healthy: VoxelHistogram | CaseCounts, fpr: float) -> float:
    """The lowest threshold whose voxel false-positive rate on healthy data is below ``fpr``.

    ``healthy`` counts normal voxels (brain voxels of healthy scans). Calling
    ``prediction >= threshold`` abnormal then flags fewer than ``fpr`` of them.
    """
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"the false-positive rate must be within (0, 1), got {fpr}")
    if isinstance(healthy, VoxelHistogram):
        counts = healthy.neg + healthy.pos
        present = np.flatnonzero(counts)
        values, counts = BIN_VALUES[present], counts[present]
    else:
        values, counts = BIN_VALUES[healthy.bins], healthy.neg + healthy.pos
    total = counts.sum()
    if total == 0:
        raise ValueError("no healthy voxels to calibrate on")
    # FPR when the threshold is each distinct value (the thresholds of an ROC curve)
    above = np.cumsum(counts[::-1])[::-1] / total
    ok = np.flatnonzero(above < fpr)
    if ok.size == 0:  # the highest value alone is too frequent: flag nothing seen here
        return float(np.nextafter(np.float16(values[-1]), np.float16(np.inf)))
    return float(values[ok[0]])


def best_dice_bisection(histogram: VoxelHistogram, steps: int = 10) -> tuple[float, float]:
    """Zimmerer's search used by the cDDPM/MHD code: on [0, max], evaluate pooled Dice at the
    25 % and 75 % points, keep the better half, ``steps`` times. Returns (threshold, dice)."""
    low, high = 0.0, histogram.max_value()
    best = (high, histogram.dice_at(high))
    for _ in range(steps):
        q1, q3 = low + 0.25 * (high - low), low + 0.75 * (high - low)
        d1, d3 = histogram.dice_at(q1), histogram.dice_at(q3)
        for t, d in ((q1, d1), (q3, d3)):
            if d > best[1]:
                best = (t, d)
        middle = 0.5 * (low + high)
        if d1 > d3:
            high = middle
        else:
            low = middle
    return best


def best_dice_sweep(
    cases: Sequence[CaseCounts], thresholds: Sequence[float] | np.ndarray
) -> tuple[float, float, np.ndarray]:
    """Mean per-case Dice at each threshold (UAD-IMAG's "optimal" oracle).

    Returns ``(best threshold, its mean Dice, mean Dice per threshold)``.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if not cases:
        raise ValueError("no case to sweep thresholds on")
    curve = np.mean([case.dice_at(thresholds) for case in cases], axis=0)
    best = int(np.argmax(curve))
    return float(thresholds[best]), float(curve[best]), curve


# ------------------------------------------------------------------- sample-level metrics
def fpr_at_tpr(scores, labels, tpr: float = 0.95) -> float:
    """False-positive rate at the first threshold whose true-positive rate reaches ``tpr``."""
    _, tps, fps = _binary_curve(scores, labels)
    if tps.size == 0 or tps[-1] == 0 or fps[-1] == 0:
        return float("nan")
    index = int(np.argmax(tps / tps[-1] >= tpr))
    return float(fps[index] / fps[-1])


def ood_metrics(scores, labels) -> dict[str, float]:
    """Image-level out-of-distribution metrics (OpenOOD conventions, OOD = label 1 = positive,
    higher score = more abnormal): AUROC, FPR at 95 % TPR, AUPR-In (in-distribution as the
    positive class, scores negated), AUPR-Out (= MOOD's sample-wise AP)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    return {
        "auroc": auroc(scores, labels),
        "fpr_at_95_tpr": fpr_at_tpr(scores, labels, 0.95),
        "aupr_in": average_precision(-scores, ~labels),
        "aupr_out": average_precision(scores, labels),
    }


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    scores: Sequence[float],
    labels: Sequence[int],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(scores, labels)`` over cases (resamples that
    lack a class are drawn again; seeded, so the interval is reproducible)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    while len(values) < n_resamples:
        index = rng.integers(0, len(scores), len(scores))
        if labels[index].all() or not labels[index].any():
            continue
        values.append(metric(scores[index], labels[index]))
    low, high = np.nanpercentile(values, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(low), float(high)
