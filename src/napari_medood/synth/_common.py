"""Helpers shared by the synthetic anomaly generators."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Seed = int | np.random.Generator | np.random.SeedSequence | Sequence[int] | None


def as_rng(seed: Seed) -> np.random.Generator:
    """A numpy Generator: ``seed`` itself if it is one, else a new one seeded with it."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def as_shape3(value: int | Sequence[int], name: str = "size") -> tuple[int, int, int]:
    """Three positive integers from one or three values."""
    values = np.broadcast_to(np.asarray(value), (3,))
    if not np.all(np.equal(np.mod(values, 1), 0)) or np.any(values < 1):
        raise ValueError(f"{name} must be one or three positive integers, got {value}")
    return tuple(int(v) for v in values)


def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """3x3 rotation: about array axis 0, then 1, then 2, by ``angles`` radians."""
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        step = np.eye(3)
        step[i, i], step[i, j], step[j, i], step[j, j] = c, -s, s, c
        matrix = step @ matrix
    return matrix


def open_grid(shape: Sequence[int], start: Sequence[float]) -> list[np.ndarray]:
    """Broadcastable float32 coordinate vectors ``start[a] + arange(shape[a])`` per axis."""
    grids = []
    for axis, (n, s) in enumerate(zip(shape, start, strict=True)):
        view = [1, 1, 1]
        view[axis] = n
        grids.append((np.arange(n, dtype=np.float32) + np.float32(s)).reshape(view))
    return grids


def tight_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Slices of the smallest box holding every True voxel, or None when there is none."""
    slices = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        slices.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(slices)


def crop_clamped(array: np.ndarray, start, stop) -> np.ndarray:
    """``array[start:stop]`` as float32, repeating edge voxels where the box leaves it."""
    start, stop = np.asarray(start, int), np.asarray(stop, int)
    inside_start = np.clip(start, 0, np.asarray(array.shape))
    inside_stop = np.clip(stop, 0, np.asarray(array.shape))
    if np.all(inside_start == start) and np.all(inside_stop == stop):
        return np.array(
            array[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))], dtype=np.float32
        )
    index = [
        np.clip(np.arange(a, b), 0, n - 1) for a, b, n in zip(start, stop, array.shape, strict=True)
    ]
    return array[np.ix_(*index)].astype(np.float32)
