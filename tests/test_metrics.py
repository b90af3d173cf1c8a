"""Metrics: hand-computed values, sklearn on random data, MOOD's semantics on edge cases,
threshold calibration, Dice searches, sample-level OOD metrics and their intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from napari_medood.evaluation.metrics import (
    VoxelHistogram,
    auroc,
    average_precision,
    best_dice_bisection,
    best_dice_sweep,
    bootstrap_ci,
    dice_from_counts,
    ood_metrics,
    threshold_at_fpr,
)


def test_average_precision_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    labels = np.array([1, 0, 1, 0, 0, 1, 0, 0, 0, 0])
    # hits at ranks 1, 3 and 6: precision 1/1, 2/3, 3/6, each for a third of the recall
    expected = (1 + 2 / 3 + 3 / 6) / 3
    histogram = VoxelHistogram()
    histogram.add(scores, labels)
    assert histogram.average_precision() == pytest.approx(expected)
    assert average_precision(scores, labels) == pytest.approx(expected)
    # AUROC by hand: of the 3 x 7 (abnormal, normal) pairs, 17 are ranked right
    pairs = sum(s1 > s0 for s1 in scores[labels == 1] for s0 in scores[labels == 0])
    assert histogram.auroc() == pytest.approx(pairs / 21)


@pytest.mark.parametrize("seed", range(5))
def test_voxel_metrics_equal_sklearn_on_the_same_float16_values(seed):
    rng = np.random.default_rng(seed)
    histogram, preds, labels = VoxelHistogram(), [], []
    for _ in range(4):  # four "volumes" streamed one by one
        label = rng.random((20, 24, 16)) < rng.uniform(0.01, 0.2)
        pred = (rng.normal(0.4, 0.25, label.shape) + 0.3 * label).astype(np.float32)
        counts = histogram.add(pred, label)
        truth = np.clip(pred.astype(np.float16), 0, 1).ravel()  # MOOD: float16, clipped
        assert counts.average_precision() == pytest.approx(
            average_precision_score(label.ravel(), truth), abs=1e-12
        )
        preds.append(truth)
        labels.append(label.ravel())
    pred, label = np.concatenate(preds), np.concatenate(labels)
    assert histogram.average_precision() == pytest.approx(
        average_precision_score(label, pred), abs=1e-12
    )
    assert histogram.auroc() == pytest.approx(roc_auc_score(label, pred), abs=1e-12)


def test_mood_semantics_edge_cases():
    label = np.zeros((8, 8, 8))
    label[2:4, 2:4, 2:4] = 1
    perfect = VoxelHistogram()
    perfect.add(label.astype(np.float32), label)
    assert perfect.average_precision() == 1.0
    empty = VoxelHistogram()
    empty.add(np.zeros_like(label), label)  # an all-zero (or missing) prediction
    assert empty.average_precision() == pytest.approx(label.mean())
    # predictions are clipped to [0, 1]; labels are rounded and clipped (0.6 -> 1, 2 -> 1)
    clipped = VoxelHistogram()
    clipped.add(np.array([-3.0, 0.2, 7.0, np.nan]), np.array([0.4, 0.6, 2.0, 0.0]))
    assert clipped.n_pos == 2 and clipped.n_neg == 2
    assert clipped.counts_at(1.0) == (1, 0, 1, 2)  # 7.0 counts as 1.0, NaN as 0.0
    # values that round to the same float16 tie, as in MOOD's evaluator
    ties = VoxelHistogram()
    ties.add(np.array([0.50001, 0.50002]), np.array([0, 1]))
    assert ties.average_precision() == pytest.approx(0.5)


def test_threshold_calibration_keeps_the_false_positive_rate_below_target():
    rng = np.random.default_rng(1)
    healthy = VoxelHistogram()
    maps = [rng.beta(2, 5, (30, 30, 30)) for _ in range(3)]
    for m in maps:
        healthy.add(m, None)
    values = np.clip(np.concatenate([m.ravel() for m in maps]).astype(np.float16), 0, 1)
    for target in (0.01, 0.05, 0.10):
        threshold = threshold_at_fpr(healthy, target)
        fpr = np.mean(values >= threshold)
        assert fpr < target
        # it is the lowest such value: the next lower value seen flags at least the target
        lower = values[values < threshold].max()
        assert np.mean(values >= lower) >= target
        # sklearn's ROC lists the same threshold
        fprs, _, thresholds = roc_curve(np.r_[np.zeros(values.size), 1], np.r_[values, 2.0])
        assert threshold in thresholds[fprs < target]
    with pytest.raises(ValueError, match=r"within \(0, 1\)"):
        threshold_at_fpr(healthy, 1.5)


def test_dice_searches_on_separable_data():
    rng = np.random.default_rng(2)
    histogram, cases = VoxelHistogram(), []
    for _ in range(3):
        label = rng.random((16, 16, 16)) < 0.1
        pred = np.where(
            label, rng.uniform(0.6, 0.9, label.shape), rng.uniform(0.0, 0.4, label.shape)
        )
        cases.append(histogram.add(pred, label))
    threshold, dice, curve = best_dice_sweep(cases, np.arange(0, 1, 0.05))
    assert dice == pytest.approx(1.0) and 0.4 <= threshold <= 0.6
    assert curve.shape == (20,)
    t_bis, d_bis = best_dice_bisection(histogram)
    assert d_bis == pytest.approx(1.0) and 0.4 <= t_bis <= 0.6
    assert dice_from_counts(0, 0, 0) == 1.0  # nothing to find, nothing found
    assert dice_from_counts(5, 5, 0) == pytest.approx(2 / 3)


def test_sample_level_ood_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    labels = rng.random(200) < 0.3
    scores = rng.normal(0, 1, 200) + 1.2 * labels
    metrics = ood_metrics(scores, labels)
    assert metrics["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert metrics["aupr_out"] == pytest.approx(average_precision_score(labels, scores))
    assert metrics["aupr_in"] == pytest.approx(average_precision_score(~labels, -scores))
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert metrics["fpr_at_95_tpr"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)])
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(4)
    labels = rng.random(80) < 0.4
    scores = rng.normal(0, 1, 80) + labels
    low, high = bootstrap_ci(auroc, scores, labels, n_resamples=300, seed=7)
    assert low < auroc(scores, labels) < high
    assert (low, high) == bootstrap_ci(auroc, scores, labels, n_resamples=300, seed=7)
    assert np.isnan(bootstrap_ci(auroc, scores, np.zeros(80, bool))[0])
