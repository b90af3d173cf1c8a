"""Volume <-> napari layer: where each voxel goes in the viewer, and back.

napari's world frame used by this plugin is (S, P, L) in millimetres: axis 0 runs inferior to
superior, axis 1 anterior to posterior, axis 2 right to left. The default 2D view then shows
axial slices in radiological convention (anterior at the top, the patient's right on the
screen's left), and the slider steps through them from the feet up.

The layer's array is the volume's array transposed and flipped (no resampling) so that its
axes point along (S, P, L); its ``scale`` is the voxel spacing and its ``translate`` the world
position of its first voxel. What is left of the affine after that (an oblique acquisition, a
shear) goes into ``rotate``/``affine`` with a visible warning, because napari's 2D slicing
does not apply out-of-plane rotations. The volume's own affine and voxel order stay in the
layer metadata, so the writer restores the source file's geometry exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from napari_medood.io.volume import Volume

DISPLAY_AXCODES = ("S", "P", "L")
AXIS_LABELS = ("inferior-superior (S)", "anterior-posterior (P)", "right-left (L)")
#: napari world (S, P, L) = RAS_TO_WORLD @ RAS+.
RAS_TO_WORLD = np.array(
    [[0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
WORLD_TO_RAS = np.linalg.inv(RAS_TO_WORLD)
METADATA_KEY = "medood"
#: Obliquity (degrees) below which the residual rotation is treated as rounding noise.
OBLIQUE_TOLERANCE_DEGREES = 1e-3


class ObliqueOrientationWarning(UserWarning):
    """The scan's axes are not aligned with the world axes; 2D slices ignore the tilt."""


def _display_transform(volume: Volume) -> np.ndarray:
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    return ornt_transform(io_orientation(volume.affine), axcodes2ornt(DISPLAY_AXCODES))


def to_display(volume: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The volume as napari shows it.

    Returns:
        ``(data, world_affine, transform)``: the reoriented array, its 4x4 data-to-world
        (S, P, L) matrix, and the nibabel orientation transform that was applied.
    """
    from nibabel.orientations import apply_orientation, inv_ornt_aff

    transform = _display_transform(volume)
    data = np.ascontiguousarray(apply_orientation(volume.data, transform))
    world = RAS_TO_WORLD @ volume.affine @ inv_ornt_aff(transform, volume.shape)
    return data, world, transform


def layer_kwargs_for(world_affine: np.ndarray, source: str = "") -> dict[str, Any]:
    """napari placement keywords (``scale``, ``translate``, maybe ``rotate``/``affine``).

    Warns with :class:`ObliqueOrientationWarning` when the placement needs a rotation or shear.
    """
    linear = world_affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    residual = linear / spacing
    kwargs: dict[str, Any] = {
        "scale": tuple(float(s) for s in spacing),
        "translate": tuple(float(t) for t in world_affine[:3, 3]),
        "units": ("mm", "mm", "mm"),
        "axis_labels": AXIS_LABELS,
    }
    angle = float(np.degrees(np.arccos(np.clip(np.abs(residual).max(axis=0), -1, 1))).max())
    if angle <= OBLIQUE_TOLERANCE_DEGREES:
        return kwargs
    orthogonal = np.allclose(residual.T @ residual, np.eye(3), atol=1e-5)
    where = f"{source}: " if source else ""
    if orthogonal:
        kwargs["rotate"] = residual
        what = f"is oblique (axes tilted by up to {angle:.1f} degrees)"
    else:
        # A sheared grid: hand napari the whole matrix, it decomposes it itself.
        kwargs = {k: v for k, v in kwargs.items() if k not in ("scale", "translate")}
        kwargs["affine"] = world_affine
        what = f"has a non-orthogonal (sheared) voxel grid, tilted by up to {angle:.1f} degrees"
    warnings.warn(
        f"{where}the scan {what}. It is placed correctly in 3D, but napari's 2D slices show it "
        "without the out-of-plane tilt; measure in 3D view or reslice the scan first.",
        ObliqueOrientationWarning,
        stacklevel=3,
    )
    return kwargs


def volume_to_layer_data(
    volume: Volume, layer_type: str = "image", name: str | None = None, **layer_kwargs: Any
) -> tuple[np.ndarray, dict[str, Any], str]:
    """A napari LayerDataTuple for ``volume`` placed in physical space."""
    data, world, transform = to_display(volume)
    source = str(volume.source) if volume.source is not None else ""
    kwargs = layer_kwargs_for(world, source)
    if layer_type == "labels" and data.dtype.kind not in "iub":
        data = data.astype(np.int32)
    elif layer_type == "image":
        if data.dtype == np.float64:
            data = data.astype(np.float32)
        limits = display_contrast(data)
        if limits is not None:
            kwargs["contrast_limits"] = limits
    metadata = dict(layer_kwargs.pop("metadata", {}) or {})
    metadata[METADATA_KEY] = {
        "source": source,
        "affine": volume.affine.copy(),
        "shape": volume.shape,
        "display_transform": transform,
        "meta": dict(volume.meta),
    }
    kwargs.update(name=name or volume.name, metadata=metadata)
    kwargs.update(layer_kwargs)
    return data, kwargs, layer_type


def display_contrast(data: np.ndarray, max_samples: int = 1_000_000) -> tuple[float, float] | None:
    """Contrast limits that show tissue rather than the few brightest voxels: the 0.5th and
    99.9th percentiles of the non-zero voxels (a strided sample of them on big volumes)."""
    step = max(1, data.size // max_samples)
    sample = np.asarray(data).ravel()[::step]
    sample = sample[np.isfinite(sample) & (sample != 0)]
    if sample.size < 100:
        return None
    low, high = (float(v) for v in np.percentile(sample, [0.5, 99.9]))
    return (min(low, 0.0), high) if high > low else None


def _layer_world_affine(state: Mapping[str, Any], ndim: int = 3) -> np.ndarray:
    """The 4x4 data-to-world matrix napari composes from a layer's transform keywords."""
    from napari.utils.transforms import Affine, CompositeAffine

    inner = CompositeAffine(
        scale=state.get("scale", (1.0,) * ndim),
        translate=state.get("translate", (0.0,) * ndim),
        rotate=state.get("rotate"),
        shear=state.get("shear"),
        ndim=ndim,
    )
    outer = state.get("affine")
    if outer is None:
        return inner.affine_matrix
    outer_matrix = outer.affine_matrix if isinstance(outer, Affine) else np.asarray(outer)
    return outer_matrix @ inner.affine_matrix


def layer_data_to_volume(data: Any, state: Mapping[str, Any]) -> Volume:
    """A Volume for a layer's data and its transform/metadata (``layer.as_layer_data_tuple``'s
    keywords, or what napari hands a writer).

    A layer this plugin made, still where it was put, gets back its source's voxel order and
    exact affine; any other layer gets the affine napari uses to draw it.
    """
    from nibabel.orientations import apply_orientation, inv_ornt_aff

    array = np.asarray(data)
    if array.ndim != 3:
        raise ValueError(f"napari-medood writes 3D layers; this one is {array.ndim}D {array.shape}")
    world = _layer_world_affine(state)
    info = (state.get("metadata") or {}).get(METADATA_KEY)
    if info is not None:
        transform = np.asarray(info["display_transform"])
        affine = np.asarray(info["affine"])
        shape = tuple(info["shape"])
        expected_world = RAS_TO_WORLD @ affine @ inv_ornt_aff(transform, shape)
        expected_shape = tuple(shape[int(ax)] for ax in np.argsort(transform[:, 0]))
        if array.shape == expected_shape and np.allclose(world, expected_world, atol=1e-4):
            native = np.ascontiguousarray(apply_orientation(array, _inverse(transform)))
            return Volume(native, affine, info.get("source") or None, dict(info.get("meta", {})))
    return Volume(array, WORLD_TO_RAS @ world)


def _inverse(transform: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``transform`` (both nibabel ``ornt`` arrays)."""
    inverse = np.zeros_like(transform)
    for source_axis, (target_axis, flip) in enumerate(transform):
        inverse[int(target_axis)] = (source_axis, flip)
    return inverse
