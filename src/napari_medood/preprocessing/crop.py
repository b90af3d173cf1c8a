"""Crop a volume to its foreground box and paste results back onto the full grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_medood.errors import PreprocessingError
from napari_medood.io.volume import Volume


@dataclass(frozen=True)
class CropBox:
    """Half-open index box ``[start, stop)`` inside a grid of ``full_shape``."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    full_shape: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))


def foreground_box(mask: np.ndarray, margin: int = 0) -> CropBox:
    """The smallest box holding every foreground voxel, grown by ``margin`` voxels."""
    mask = np.asarray(mask)
    if not mask.any():
        raise PreprocessingError("the foreground mask is empty: nothing to crop to")
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        start.append(max(int(hits[0]) - margin, 0))
        stop.append(min(int(hits[-1]) + 1 + margin, mask.shape[axis]))
    return CropBox(tuple(start), tuple(stop), tuple(mask.shape))


def crop(volume: Volume, box: CropBox) -> Volume:
    """The part of ``volume`` inside ``box``, with its affine moved so voxels stay in place."""
    if volume.shape != box.full_shape:
        raise ValueError(
            f"the box was made for shape {box.full_shape}, the volume has {volume.shape}"
        )
    affine = volume.affine.copy()
    affine[:3, 3] = volume.voxel_to_world(box.start)
    return Volume(volume.data[box.slices].copy(), affine, volume.source, dict(volume.meta))


def paste(data: np.ndarray, box: CropBox, fill: float = 0, dtype=None) -> np.ndarray:
    """Put a cropped array back at its place in a full-size array filled with ``fill``."""
    data = np.asarray(data)
    if data.shape != box.shape:
        raise ValueError(f"the array has shape {data.shape}, the box {box.shape}")
    full = np.full(box.full_shape, fill, dtype=dtype or data.dtype)
    full[box.slices] = data
    return full
