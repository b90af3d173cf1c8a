"""Soft anomaly edges: a Gaussian blur of the alpha map with a randomly drawn kernel size.

mood22 draws the kernel size from [1, 1, 1, 1, 3, 3, 5, 7] (1 = no smoothing), blurs with a
normalised Gaussian of sigma 1 and zero padding, after the shape was multiplied by alpha.
Its kernel was written as exp(-((x - mu) / (2 sigma))^2), an effective sigma of sqrt(2);
``legacy_sigma=True`` reproduces that.
"""

from __future__ import annotations

import numpy as np

from napari_medood.synth._common import Seed, as_rng

KERNEL_SIZES = (1, 3, 5, 7)
KERNEL_WEIGHTS = (4, 2, 1, 1)  # P(1) = 1/2, P(3) = 1/4, P(5) = P(7) = 1/8


def sample_kernel_size(rng: Seed = None, sizes=KERNEL_SIZES, weights=KERNEL_WEIGHTS) -> int:
    """A kernel size drawn with the reference weights."""
    weights = np.asarray(weights, dtype=np.float64)
    return int(as_rng(rng).choice(np.asarray(sizes), p=weights / weights.sum()))


def gaussian_kernel_1d(size: int, sigma: float = 1.0, legacy_sigma: bool = False) -> np.ndarray:
    """A normalised 1D Gaussian of odd ``size`` (size 1 is the identity)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd number, got {size}")
    x = np.arange(size, dtype=np.float64) - size // 2
    weights = np.exp(-((x / (2 * sigma)) ** 2)) if legacy_sigma else np.exp(-0.5 * (x / sigma) ** 2)
    return weights / weights.sum()


def smooth_alpha(
    alpha: np.ndarray, size: int, sigma: float = 1.0, legacy_sigma: bool = False
) -> np.ndarray:
    """Blur ``alpha`` with a ``size``^3 normalised Gaussian, zero padded (float32 result).

    The 3D kernel is separable, so three 1D passes give the same result as the 3D
    convolution at a fraction of the cost. Values stay within [0, max(alpha)].
    """
    from scipy import ndimage

    out = np.asarray(alpha, dtype=np.float32)
    if size == 1:
        return out.copy()
    kernel = gaussian_kernel_1d(size, sigma, legacy_sigma)
    for axis in range(3):
        out = ndimage.correlate1d(out, kernel, axis=axis, mode="constant", cval=0.0)
    return out
