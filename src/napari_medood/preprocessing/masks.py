"""Foreground and brain masks: from a mask file on the image's grid, or from a threshold."""

from __future__ import annotations

import os

import numpy as np

from napari_medood.errors import GridMismatchError, PreprocessingError
from napari_medood.io.volume import Grid, Volume


def mask_from_threshold(
    data: np.ndarray,
    threshold: float | str = 0.0,
    *,
    fill_holes: bool = True,
    largest_component: bool = True,
) -> np.ndarray:
    """Foreground = voxels above ``threshold`` (a number, or ``"otsu"``), cleaned up.

    Args:
        fill_holes: fill enclosed holes in 3D and slice by slice (ventricles, dark CSF and
            skull inside a bright scalp, dark lesions).
        largest_component: keep only the largest connected component (drops noise specks).
    """
    from scipy import ndimage

    data = np.asarray(data)
    if isinstance(threshold, str):
        if threshold != "otsu":
            raise ValueError(f"threshold must be a number or 'otsu', got {threshold!r}")
        from skimage.filters import threshold_otsu

        finite = data[np.isfinite(data)]
        if finite.size == 0 or finite.min() == finite.max():
            raise PreprocessingError("cannot compute an Otsu threshold on a constant image")
        threshold = float(threshold_otsu(finite))
    mask = data > threshold
    if not mask.any():
        raise PreprocessingError(
            f"no voxel is above the threshold {threshold:g}: the mask is empty"
        )
    if largest_component:
        labels, count = ndimage.label(mask)
        if count > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            mask = labels == int(sizes.argmax())
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
        # A head is rarely closed in 3D (the neck leaves the field of view), but each slice
        # through it is: fill slice by slice along every axis as well.
        for axis in range(3):
            for index in range(mask.shape[axis]):
                plane = np.take(mask, index, axis=axis)
                filled = ndimage.binary_fill_holes(plane)
                if filled.sum() != plane.sum():
                    mask[(slice(None),) * axis + (index,)] = filled
    return mask


#: a skull-stripped scan has at least this share of its voxels at one background value (0,
#: or its minimum); a whole-head MR zeroed outside the head has as many, so the volume decides
SKULL_STRIPPED_BACKGROUND = 0.3
#: the volume (ml) of what a skull-stripped scan keeps: a brain, from a small child's to the
#: largest adult intracranial volumes; heads are well above (the IXI heads: 5,600-7,000 ml)
BRAIN_ML = (250.0, 2200.0)
#: voxels below the background value (interpolation overshoot at the brain's edge after
#: registration) may be at most this share
BELOW_BACKGROUND = 0.02


def skull_stripped_brain(data: np.ndarray, voxel_ml: float) -> np.ndarray | None:
    """The brain of a skull-stripped (brain-extracted) scan given without a mask, or None
    when ``data`` does not look skull-stripped.

    Skull-stripping tools set everything outside the brain to one background value (0, or
    the minimum), so a third or more of the voxels hold it; what is left is one brain-sized
    region (:data:`BRAIN_ML`). The brain is then the voxels above the background, with
    enclosed holes filled: the mask the tool itself applied, which is what a brain mask file
    would have held. A whole head with a zeroed background passes the first test, not the
    second; a CT or an MR with noise in its background passes neither.
    """
    from scipy import ndimage

    data = np.asarray(data)
    if data.size == 0 or not np.isfinite(data).all():
        return None
    low = data.min()
    counts = {value: int(np.count_nonzero(data == value)) for value in {0, low}}
    background = max(counts, key=counts.get)
    if counts[background] < SKULL_STRIPPED_BACKGROUND * data.size:
        return None
    if np.count_nonzero(data < background) > BELOW_BACKGROUND * data.size:
        return None
    brain = data > background
    kept_ml = float(np.count_nonzero(brain)) * voxel_ml
    if not BRAIN_ML[0] <= kept_ml <= BRAIN_ML[1]:
        return None
    labels, count = ndimage.label(brain)
    if count > 1:  # one brain, perhaps with a few detached specks, not several bodies
        sizes = np.bincount(labels.ravel())[1:]
        if sizes.max() < 0.9 * sizes.sum():
            return None
    return ndimage.binary_fill_holes(brain)


def check_mask(mask: np.ndarray, grid: Grid, name: str | os.PathLike | None = None) -> np.ndarray:
    """Return ``mask`` as bool after checking it matches the image grid and is not empty."""
    mask = np.asarray(mask)
    if mask.shape != grid.shape:
        raise GridMismatchError(
            name, f"the mask has shape {mask.shape} but the image has {grid.shape}"
        )
    mask = mask > 0 if mask.dtype != bool else mask
    if not mask.any():
        raise GridMismatchError(name, "the mask is empty (no voxel is inside)")
    return mask


def align_to_grid(volume: Volume, grid: Grid, atol: float = 1e-3) -> Volume:
    """Return ``volume`` on ``grid`` when both cover the same voxels, only stored in another
    axis order or direction (a mask saved in RAS for an image stored in PSR, say).

    Raises:
        GridMismatchError: the voxels differ (another spacing, origin or field of view).
    """
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    if volume.grid.same_as(grid, atol):
        return volume
    transform = ornt_transform(io_orientation(volume.affine), io_orientation(grid.affine))
    data = apply_orientation(volume.data, transform)
    affine = volume.affine @ inv_ornt_aff(transform, volume.shape)
    moved = Volume(np.ascontiguousarray(data), affine, volume.source, dict(volume.meta))
    if not moved.grid.same_as(grid, atol):
        # the two descriptions alone may read the same (an oblique scan and a straight mask
        # both "91x109x91 voxels of 1x1x1 mm, orientation LAS"): say what differs
        differs = "; ".join(moved.grid.differences(grid))
        raise GridMismatchError(
            volume.source,
            f"is on another voxel grid than the image ({differs}; mask: "
            f"{volume.grid.describe()}, origin {np.round(volume.origin, 2).tolist()}; image: "
            f"{grid.describe()}, origin {np.round(grid.origin, 2).tolist()}); resample it "
            "onto the image first",
        )
    return moved


def load_labels(path: str | os.PathLike, grid: Grid) -> np.ndarray:
    """Read a label file (a parcellation given as the mask, say) as integers on ``grid``."""
    from napari_medood.io.readers import read_volume

    aligned = align_to_grid(read_volume(path), grid)
    check_mask(aligned.data, grid, path)
    data = np.asarray(aligned.data)
    return data if data.dtype.kind in "iub" else np.rint(data).astype(np.int32)


def load_mask(path: str | os.PathLike, grid: Grid) -> np.ndarray:
    """Read a mask file (non-zero = inside) and return it as bool on ``grid``."""
    from napari_medood.io.readers import read_volume

    volume = read_volume(path)
    aligned = align_to_grid(volume, grid)
    return check_mask(aligned.data, grid, path)
