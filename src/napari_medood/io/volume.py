"""The volume record every part of napari-medood passes around.

Axis convention (one for the whole core): ``Volume.data`` is indexed ``data[i, j, k]`` in the
file's own voxel order, as nibabel returns it; ``Volume.affine`` maps ``(i, j, k, 1)`` to
RAS+ world coordinates in millimetres (x grows to the patient's Right, y to Anterior, z to
Superior), the NIfTI convention. Files read with SimpleITK (LPS world, arrays in ``k, j, i``
order) are converted on reading, so a voxel's world coordinate is the same whichever library
reads the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: World coordinates in RAS+ = LPS_TO_RAS @ world coordinates in LPS (ITK, DICOM), and back.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _as_affine(affine: Any) -> np.ndarray:
    matrix = np.array(affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"an affine must be a 4x4 matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("the affine holds NaN or infinite values")
    if not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise ValueError(f"the affine's last row must be [0, 0, 0, 1], got {matrix[3]}")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise ValueError("the affine is singular: a voxel axis has zero length or two coincide")
    return matrix


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid in the world: its shape and its voxel-to-RAS+ affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"a grid needs three positive sizes, got {self.shape}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "affine", _as_affine(self.affine))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along each array axis in mm (the lengths of the affine's columns)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def origin(self) -> np.ndarray:
        """RAS+ world coordinate (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS+ directions of the array axes."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Anatomical direction each array axis points to, e.g. ``('P', 'S', 'R')``."""
        import nibabel as nib

        return tuple(nib.aff2axcodes(self.affine))

    @property
    def obliquity_degrees(self) -> float:
        """Largest angle between an array axis and the world axis nearest to it."""
        cosines = np.abs(self.direction).max(axis=0).clip(-1.0, 1.0)
        return float(np.degrees(np.arccos(cosines)).max())

    @property
    def is_orthogonal(self) -> bool:
        """True when the array axes are mutually perpendicular (no shear)."""
        gram = self.direction.T @ self.direction
        return bool(np.allclose(gram, np.eye(3), atol=1e-5))

    def voxel_to_world(self, ijk: Any) -> np.ndarray:
        """RAS+ mm coordinates of voxel indices (``(..., 3)`` in, ``(..., 3)`` out)."""
        points = np.asarray(ijk, dtype=np.float64)
        return points @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, xyz: Any) -> np.ndarray:
        """Fractional voxel indices of RAS+ mm coordinates."""
        inverse = np.linalg.inv(self.affine)
        points = np.asarray(xyz, dtype=np.float64)
        return points @ inverse[:3, :3].T + inverse[:3, 3]

    def corners(self) -> np.ndarray:
        """Indices of the 8 corner voxels, shape (8, 3)."""
        ni, nj, nk = (n - 1 for n in self.shape)
        return np.array(
            [[i, j, k] for i in (0, ni) for j in (0, nj) for k in (0, nk)], dtype=np.float64
        )

    def same_as(self, other: Grid, atol: float = 1e-3) -> bool:
        """True when both grids have the same shape and place every voxel within ``atol`` mm."""
        if self.shape != other.shape:
            return False
        return bool(
            np.allclose(
                self.voxel_to_world(self.corners()), other.voxel_to_world(self.corners()), atol=atol
            )
        )

    def differences(self, other: Grid) -> list[str]:
        """How this grid differs from ``other``, in words for a message: the shape, the
        voxel size, the angle between the axes, the distance between the origins."""
        found = []
        if self.shape != other.shape:
            found.append(
                f"shape {'x'.join(map(str, self.shape))} vs {'x'.join(map(str, other.shape))}"
            )
        if not np.allclose(self.spacing, other.spacing, atol=1e-3):
            mine, theirs = ("x".join(f"{s:g}" for s in g.spacing) for g in (self, other))
            found.append(f"voxels of {mine} mm vs {theirs} mm")
        # the rotation taking the other grid's axes onto these, as one angle
        turn = self.direction @ np.linalg.inv(other.direction)
        if np.linalg.det(turn) < 0:
            found.append("an axis is mirrored")
        else:
            cosine = np.clip((np.trace(turn) - 1.0) / 2.0, -1.0, 1.0)
            degrees = float(np.degrees(np.arccos(cosine)))
            if degrees >= 0.05:
                found.append(f"axes rotated by {degrees:.1f} degrees")
        distance = float(np.linalg.norm(self.origin - other.origin))
        if distance >= 0.05:
            found.append(f"origins {distance:.1f} mm apart")
        if not found and self.shape == other.shape:  # small shifts and tilts add up
            corners = self.corners()
            apart = np.linalg.norm(
                self.voxel_to_world(corners) - other.voxel_to_world(corners), axis=1
            ).max()
            if apart > 1e-6:
                found.append(f"voxels up to {apart:.2g} mm apart")
        return found

    def describe(self) -> str:
        """One line for messages: shape, spacing and orientation."""
        size = "x".join(map(str, self.shape))
        spacing = "x".join(f"{s:g}" for s in self.spacing)
        return f"{size} voxels of {spacing} mm, orientation {''.join(self.axcodes)}"


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D scan: voxels plus the geometry that places them in the world.

    Attributes:
        data: voxel array ``(i, j, k)`` in the file's voxel order.
        affine: 4x4 voxel-to-RAS+ (mm) matrix.
        source: the file or DICOM folder it came from, if any.
        meta: free metadata (format, NIfTI header, DICOM series, attribution, ...).
    """

    data: np.ndarray
    affine: np.ndarray
    source: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = np.asanyarray(self.data)
        if data.ndim != 3:
            raise ValueError(f"a Volume holds a 3D array, got {data.ndim}D with shape {data.shape}")
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "affine", _as_affine(self.affine))
        if self.source is not None:
            object.__setattr__(self, "source", Path(self.source))

    @property
    def grid(self) -> Grid:
        return Grid(self.data.shape, self.affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.grid.spacing

    @property
    def origin(self) -> np.ndarray:
        return self.grid.origin

    @property
    def direction(self) -> np.ndarray:
        return self.grid.direction

    @property
    def axcodes(self) -> tuple[str, str, str]:
        return self.grid.axcodes

    @property
    def name(self) -> str:
        """The source's file name without a volume extension, or ``"volume"``."""
        if self.source is None:
            return "volume"
        from napari_medood.io.formats import strip_volume_suffix

        return strip_volume_suffix(self.source.name)

    def voxel_to_world(self, ijk: Any) -> np.ndarray:
        return self.grid.voxel_to_world(ijk)

    def world_to_voxel(self, xyz: Any) -> np.ndarray:
        return self.grid.world_to_voxel(xyz)

    def with_data(self, data: np.ndarray, **meta: Any) -> Volume:
        """A new Volume on the same grid with other voxels (and extra metadata)."""
        data = np.asanyarray(data)
        if data.shape != self.shape:
            raise ValueError(f"new data have shape {data.shape}, the grid has {self.shape}")
        return Volume(data, self.affine, self.source, {**self.meta, **meta})
