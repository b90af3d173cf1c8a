"""Where a scan's confidence falls among the in-distribution scans a head was fitted on.

A head's raw confidence (a log-likelihood, an energy, ...) means little by itself; its
percentile among the reference scans' confidences does: "97th percentile" reads at once.
The empirical CDF is interpolated between the reference values and continued beyond them
by exponential tails scaled by the reference's spread, so the percentile is strictly
increasing in the confidence (the MOOD score ``1 - percentile / 100`` ranks scans exactly as
the raw confidence does, and far-out scans stay ordered).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReferenceScores:
    """The sorted confidences of the in-distribution reference scans."""

    values: np.ndarray

    @classmethod
    def of(cls, confidences) -> ReferenceScores:
        values = np.sort(np.asarray(confidences, dtype=np.float64).ravel())
        values = values[np.isfinite(values)]
        if values.size < 2:
            raise ValueError("a reference distribution needs at least two finite scores")
        return cls(values)

    @property
    def scale(self) -> float:
        q25, q75 = np.percentile(self.values, [25, 75])
        spread = (q75 - q25) / 1.349 if q75 > q25 else float(np.std(self.values))
        return float(spread) if spread > 0 else 1.0

    def percentile(self, confidence) -> np.ndarray:
        """Percentile (0..100, exclusive) of each confidence among the reference."""
        c = np.asarray(confidence, dtype=np.float64)
        v = self.values
        n = v.size
        # plotting positions (i + 0.5) / n at the reference values, linear between them
        positions = (np.arange(n) + 0.5) / n
        # distinct knots keep np.interp increasing where reference values tie
        knots, first = np.unique(v, return_index=True)
        last = np.r_[first[1:] - 1, n - 1]
        at_knots = (positions[first] + positions[last]) / 2
        low, high = at_knots[0], at_knots[-1]
        inside = np.interp(c, knots, at_knots)
        below = low * np.exp(np.clip((c - knots[0]) / self.scale, -700, 0))
        above = 1.0 - (1.0 - high) * np.exp(-np.clip((c - knots[-1]) / self.scale, 0, 700))
        p = np.where(c < knots[0], below, np.where(c > knots[-1], above, inside))
        return 100.0 * p

    def ood_score(self, confidence) -> np.ndarray:
        """MOOD's sample score: 1 - percentile / 100 (higher = more out of distribution)."""
        return 1.0 - self.percentile(confidence) / 100.0

    def histogram(self, bins: int = 30) -> tuple[np.ndarray, np.ndarray]:
        counts, edges = np.histogram(self.values, bins=bins)
        return counts, edges
