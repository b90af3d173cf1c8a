"""Anomaly shapes: rotated cuboids, spheres and random-walk "brush" shapes.

Every generator draws inside a box (the foreign-patch box, 128^3 by default) and returns a
:class:`Shape`: the tight crop of the mask and where that crop sits in the box, so later steps
(smoothing, texture, blending) only touch the voxels near the anomaly. Sizes are in voxels of
the box. Real lesion shapes come from :mod:`napari_medood.synth.lesions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_medood.synth._common import (
    Seed,
    as_rng,
    as_shape3,
    open_grid,
    rotation_matrix,
    tight_box,
)


@dataclass(frozen=True, eq=False)
class Shape:
    """A binary shape in a box: ``mask`` (tight crop) placed at ``offset`` in ``box_shape``."""

    mask: np.ndarray
    offset: tuple[int, int, int]
    box_shape: tuple[int, int, int]
    kind: str = ""

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def extent(self) -> tuple[int, int, int]:
        """Size of the tight crop along each axis (voxels)."""
        return tuple(self.mask.shape)

    def full(self) -> np.ndarray:
        """The mask in the whole box (a new bool array of ``box_shape``)."""
        out = np.zeros(self.box_shape, dtype=bool)
        out[tuple(slice(o, o + n) for o, n in zip(self.offset, self.mask.shape, strict=True))] = (
            self.mask
        )
        return out

    @classmethod
    def from_crop(cls, mask: np.ndarray, offset, box_shape, kind: str) -> Shape:
        """Trim ``mask`` to its tight box and clip it to ``box_shape``."""
        box_shape = tuple(int(n) for n in box_shape)
        offset = np.asarray(offset, dtype=int)
        # clip the crop to the box
        start = np.maximum(-offset, 0)
        stop = np.minimum(np.asarray(mask.shape), np.asarray(box_shape) - offset)
        if np.any(stop <= start):
            return cls(np.zeros((1, 1, 1), bool), (0, 0, 0), box_shape, kind)
        mask = mask[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))]
        offset = offset + start
        tight = tight_box(mask)
        if tight is None:
            return cls(np.zeros((1, 1, 1), bool), (0, 0, 0), box_shape, kind)
        trimmed = np.ascontiguousarray(mask[tight])
        offset = offset + np.array([s.start for s in tight])
        return cls(trimmed, tuple(int(o) for o in offset), box_shape, kind)


def _centre(rng: np.random.Generator, box: np.ndarray, half: np.ndarray) -> np.ndarray:
    """A random centre (voxel coordinates) keeping ``half``-extents inside the box if they fit."""
    low = half - 0.5
    high = box - half - 0.5
    fits = high >= low
    centre = (box - 1) / 2.0
    centre[fits] = rng.uniform(low[fits], high[fits])
    return centre


def sphere_mask(
    box_shape: int | Sequence[int],
    rng: Seed = None,
    min_diameter: int = 10,
    max_diameter: int | None = None,
) -> Shape:
    """A ball with an integer diameter drawn from ``min_diameter..max_diameter`` voxels
    (default maximum: the box's smallest side), placed so that it fits in the box."""
    rng = as_rng(rng)
    box = np.asarray(as_shape3(box_shape, "box_shape"))
    high = int(box.min()) if max_diameter is None else min(int(max_diameter), int(box.min()))
    low = min(int(min_diameter), high)
    if low < 1:
        raise ValueError(f"sphere diameters must be >= 1 voxel, got {min_diameter}")
    radius = rng.integers(low, high + 1) / 2.0
    centre = _centre(rng, box.astype(float), np.full(3, radius))
    start = np.maximum(np.floor(centre - radius).astype(int), 0)
    stop = np.minimum(np.ceil(centre + radius).astype(int) + 1, box)
    z, y, x = open_grid(stop - start, start - centre)
    inside = z * z + y * y + x * x <= np.float32(radius * radius)
    return Shape.from_crop(inside, start, box, "sphere")


def cuboid_mask(
    box_shape: int | Sequence[int],
    rng: Seed = None,
    min_size: int | Sequence[int] = 10,
    max_size: int | Sequence[int] | None = None,
    rotate_p: float = 0.5,
    max_angle: float = 3.0,
) -> Shape:
    """A box with integer sides drawn from ``min_size..max_size`` voxels per axis (default
    maximum: the box), rotated with probability ``rotate_p`` by angles drawn from
    [-max_angle, max_angle] radians about each axis. A rotated cuboid that does not fit is
    cut by the box."""
    rng = as_rng(rng)
    box = np.asarray(as_shape3(box_shape, "box_shape"))
    high = box if max_size is None else np.minimum(np.asarray(as_shape3(max_size)), box)
    low = np.minimum(np.asarray(as_shape3(min_size, "min_size")), high)
    sides = rng.integers(low, high + 1).astype(float)
    if rng.random() < rotate_p:
        rotation = rotation_matrix(rng.uniform(-max_angle, max_angle, 3))
    else:
        rotation = np.eye(3)
    half = np.abs(rotation) @ (sides / 2.0)
    centre = _centre(rng, box.astype(float), half)
    start = np.maximum(np.floor(centre - half).astype(int), 0)
    stop = np.minimum(np.ceil(centre + half).astype(int) + 1, box)
    grid = open_grid(stop - start, start - centre)
    inside = np.ones(tuple(stop - start), dtype=bool)
    limits = (sides / 2.0).astype(np.float32)
    for k in range(3):
        # coordinate along the cuboid's own axis k: (R^T d)_k = sum_j R[j, k] d_j
        along = (
            grid[0] * np.float32(rotation[0, k])
            + grid[1] * np.float32(rotation[1, k])
            + grid[2] * np.float32(rotation[2, k])
        )
        inside &= np.abs(along) <= limits[k] + np.float32(1e-4)
    return Shape.from_crop(inside, start, box, "cuboid")


@dataclass(frozen=True)
class BrushParameters:
    """Settings of the random-walk brush (sizes as fractions of the box's smallest side).

    A brush shape is one to ``max_strokes`` strokes. Each stroke is a random walk of
    ``steps`` points whose direction drifts by ``turn`` (std of a Gaussian nudge per step)
    and whose step length is ``step`` times the stroke's radius; a ball is painted at every
    point, with a radius that wanders around the stroke's own radius. A new stroke branches
    off an earlier one with probability ``branch_p`` (one connected lesion), else it starts
    elsewhere near the centre (a satellite lesion). No point strays further than ``reach``
    from the box centre along any axis. The painted union is blurred with
    ``blur`` times the radius and thresholded at 0.5, which rounds it into an organic outline.

    The defaults were tuned (``tests/test_synth_shapes.py``) so that 128^3 boxes give the
    shape statistics of the mood22 bank of complex shapes: median foreground 2-5 % of the box,
    range about 0.5-11 %, extents 25-85 voxels, 1-9 connected components.
    """

    max_strokes: int = 7
    steps: tuple[int, int] = (3, 12)
    radius: tuple[float, float] = (0.05, 0.125)
    step: tuple[float, float] = (0.4, 0.8)
    turn: float = 0.45
    branch_p: float = 0.45
    spread: float = 0.14
    reach: float = 0.21
    blur: float = 0.35


def brush_mask(
    box_shape: int | Sequence[int],
    rng: Seed = None,
    params: BrushParameters | None = None,
) -> Shape:
    """A random-walk "brush" shape with an organic outline (see :class:`BrushParameters`)."""
    from scipy import ndimage

    rng = as_rng(rng)
    params = params or BrushParameters()
    box = np.asarray(as_shape3(box_shape, "box_shape"))
    side = float(box.min())
    canvas = np.zeros(tuple(box), dtype=bool)
    centre = (box - 1) / 2.0
    reach = params.reach * side
    points: list[np.ndarray] = []
    radii = []
    for stroke in range(int(rng.integers(1, params.max_strokes + 1))):
        radius0 = rng.uniform(*params.radius) * side
        if stroke and points and rng.random() < params.branch_p:
            point = points[int(rng.integers(len(points)))].copy()
        else:
            point = centre + rng.normal(0.0, params.spread * side, 3)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        radius = radius0
        for _ in range(int(rng.integers(params.steps[0], params.steps[1] + 1))):
            radius = 0.7 * radius + 0.3 * radius0 * rng.uniform(0.6, 1.4)
            point = np.clip(
                point,
                np.maximum(radius, centre - reach),
                np.minimum(box - 1 - radius, centre + reach),
            )
            points.append(point.copy())
            radii.append(radius)
            direction = direction + rng.normal(0.0, params.turn, 3)
            direction /= np.linalg.norm(direction)
            point = point + direction * radius * rng.uniform(*params.step)
    for point, radius in zip(points, radii, strict=True):
        start = np.maximum(np.floor(point - radius).astype(int), 0)
        stop = np.minimum(np.ceil(point + radius).astype(int) + 1, box)
        z, y, x = open_grid(stop - start, start - point)
        region = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
        canvas[region] |= z * z + y * y + x * x <= np.float32(radius * radius)
    tight = tight_box(canvas)
    if tight is None:  # cannot happen with radius >= 0.5; keep the contract anyway
        return Shape(np.zeros((1, 1, 1), bool), (0, 0, 0), tuple(box), "brush")
    sigma = params.blur * float(np.mean(radii))
    pad = int(np.ceil(3 * sigma))
    start = np.maximum(np.array([s.start for s in tight]) - pad, 0)
    stop = np.minimum(np.array([s.stop for s in tight]) + pad, box)
    region = canvas[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))]
    smooth = ndimage.gaussian_filter(region.astype(np.float32), sigma, mode="constant") > 0.5
    return Shape.from_crop(smooth, start, box, "brush")


SHAPE_KINDS = ("cuboid", "sphere", "brush", "lesion")
