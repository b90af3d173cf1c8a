"""Intensity normalisation presets used by the detectors' preprocessing.

Each preset computes its statistics inside a mask (default: every voxel, or the non-zero
voxels for z-score) and returns float32. None of them modifies its input.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from napari_medood.errors import PreprocessingError, look_up_option


def _voxels(data: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return data.ravel()
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != data.shape:
        raise PreprocessingError(f"the mask has shape {mask.shape}, the image {data.shape}")
    values = data[mask]
    if values.size == 0:
        raise PreprocessingError("the mask is empty: no voxel to compute intensity statistics on")
    return values


def percentile_bounds(
    data: np.ndarray, mask: np.ndarray | None = None, lower: float = 1.0, upper: float = 99.0
) -> tuple[float, float]:
    """The ``lower`` and ``upper`` percentiles of the voxels inside ``mask`` (distinct)."""
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(
            f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}"
        )
    low, high = np.percentile(_voxels(data, mask), [lower, upper])
    if high <= low:
        raise PreprocessingError(
            f"cannot normalise: the {lower:g}th and {upper:g}th percentiles are equal ({low:g})"
        )
    return float(low), float(high)


def percentile_in_mask(
    data: np.ndarray, mask: np.ndarray | None = None, lower: float = 1.0, upper: float = 99.0
) -> np.ndarray:
    """Map the ``lower``..``upper`` percentiles of the voxels inside ``mask`` to 0..1, clipped."""
    low, high = percentile_bounds(data, mask, lower, upper)
    out = (np.asarray(data, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(out, 0.0, 1.0, out=out)


def zscore_nonzero(data: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Subtract the mean and divide by the standard deviation of the non-zero voxels (or of
    ``mask``); voxels outside keep the value 0."""
    inside = (data != 0) if mask is None else np.asarray(mask, dtype=bool)
    values = _voxels(data, inside)
    mean, std = float(values.mean()), float(values.std())
    if std == 0.0:
        raise PreprocessingError(f"cannot normalise: every voxel in the mask equals {mean:g}")
    out = np.zeros(data.shape, dtype=np.float32)
    out[inside] = (data[inside] - mean) / std
    return out


def minmax(data: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Map the minimum and maximum inside ``mask`` to 0 and 1, clipped."""
    values = _voxels(data, mask)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        raise PreprocessingError(f"cannot normalise: every voxel in the mask equals {low:g}")
    out = (np.asarray(data, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(out, 0.0, 1.0, out=out)


def clip01(data: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Clip to [0, 1] (for data already scaled that way, as in MOOD)."""
    return np.clip(np.asarray(data, dtype=np.float32), 0.0, 1.0)


NORMALISATIONS: dict[str, Callable[..., np.ndarray]] = {
    "percentile": percentile_in_mask,
    "zscore": zscore_nonzero,
    "minmax": minmax,
    "clip01": clip01,
}


def normalise(
    data: np.ndarray, method: str = "percentile", mask: np.ndarray | None = None, **options
) -> np.ndarray:
    """Normalise intensities with a named preset (``percentile``, ``zscore``, ``minmax``,
    ``clip01``); ``options`` go to the preset (``lower``/``upper`` for ``percentile``)."""
    look_up_option(method, NORMALISATIONS, "normalisation")
    return NORMALISATIONS[method](np.asarray(data), mask, **options)
