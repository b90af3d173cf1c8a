"""Resample a volume to another voxel spacing and exactly back onto its own grid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_medood.errors import look_up_option
from napari_medood.io.volume import Grid, Volume

INTERPOLATIONS = {"nearest": 0, "linear": 1, "cubic": 3}


def grid_with_spacing(grid: Grid, spacing: float | Sequence[float]) -> Grid:
    """A grid with voxels of ``spacing`` mm over (about) the same field of view.

    Axes, orientation and the centre of voxel (0, 0, 0) are kept (the ITK/MONAI convention);
    each axis gets ``round(size * old_spacing / new_spacing)`` voxels. When the new spacing
    divides the old one, every old voxel centre is also a new voxel centre, so going there
    and back with :func:`resample_to_grid` returns the original values.
    """
    new = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if np.any(new <= 0) or not np.all(np.isfinite(new)):
        raise ValueError(f"spacing must be positive, got {spacing}")
    old = np.asarray(grid.spacing)
    shape = np.maximum(np.round(np.asarray(grid.shape) * old / new).astype(int), 1)
    affine = grid.affine.copy()
    affine[:3, :3] = grid.direction * new
    return Grid(tuple(int(n) for n in shape), affine)


def resample_to_grid(
    volume: Volume, grid: Grid, interpolation: str = "linear", fill: float | None = None
) -> Volume:
    """Resample ``volume`` onto ``grid`` (any shape and affine) by world coordinates.

    Args:
        interpolation: ``"nearest"`` (labels), ``"linear"`` or ``"cubic"``.
        fill: value outside the source's field of view; None repeats the nearest edge voxel.
    """
    from scipy import ndimage

    order = INTERPOLATIONS[look_up_option(interpolation, INTERPOLATIONS, "interpolation")]
    if volume.grid.same_as(grid, atol=1e-6):
        return Volume(volume.data.copy(), grid.affine, volume.source, dict(volume.meta))
    # target voxel -> world -> source voxel
    matrix = np.linalg.inv(volume.affine) @ grid.affine
    data = volume.data
    if order == 0:
        out_dtype = data.dtype
    else:
        out_dtype = np.float32
        data = data.astype(np.float32, copy=False)
    resampled = ndimage.affine_transform(
        data,
        matrix[:3, :3],
        offset=matrix[:3, 3],
        output_shape=grid.shape,
        output=out_dtype,
        order=order,
        mode="nearest" if fill is None else "constant",
        cval=0.0 if fill is None else fill,
        prefilter=order > 1,
    )
    return Volume(resampled, grid.affine, volume.source, dict(volume.meta))


def resample_to_spacing(
    volume: Volume, spacing: float | Sequence[float], interpolation: str = "linear"
) -> Volume:
    """Resample to ``spacing`` mm over the same field of view (see :func:`grid_with_spacing`).

    To go back exactly, call ``resample_to_grid(result, volume.grid)``.
    """
    return resample_to_grid(volume, grid_with_spacing(volume.grid, spacing), interpolation)
