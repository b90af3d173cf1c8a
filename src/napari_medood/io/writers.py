"""Write volumes as NIfTI so that every voxel lands where the source put it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from napari_medood.errors import UnsupportedFormatError, look_up_option
from napari_medood.io.atomic import write_atomic
from napari_medood.io.formats import volume_suffix
from napari_medood.io.volume import Volume

VolumeKind = Literal["image", "labels"]
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def label_dtype(data: np.ndarray) -> np.dtype:
    """The smallest integer type that holds every label in ``data``."""
    if data.size == 0:
        return np.dtype(np.uint8)
    low, high = int(data.min()), int(data.max())
    for candidate in (np.uint8, np.uint16, np.int16, np.int32, np.int64):
        info = np.iinfo(candidate)
        if info.min <= low and high <= info.max:
            return np.dtype(candidate)
    raise ValueError(f"labels span {low}..{high}, beyond int64")


def _prepare_data(data: np.ndarray, kind: str, path: Path) -> np.ndarray:
    data = np.asarray(data)
    if kind == "labels":
        if data.dtype.kind == "f":
            if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
                raise ValueError(f"{path}: label maps must hold whole numbers")
        elif data.dtype.kind == "b":
            data = data.astype(np.uint8)
        return data.astype(label_dtype(data), copy=False)
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    if data.dtype.kind == "f" and data.dtype != np.float32:
        return data.astype(np.float32)
    return data


def _header_for(volume: Volume, data: np.ndarray, kind: str):
    import nibabel as nib

    source = volume.meta.get("nifti_header")
    if isinstance(source, nib.Nifti1Header) and not isinstance(source, nib.Nifti2Header):
        header = source.copy()
        keep_geometry = np.array_equal(header.get_best_affine(), volume.affine)
    else:
        header = nib.Nifti1Header()
        keep_geometry = False
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    # Stored values are the voxel values: never let an old scale factor rescale them.
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0.0, 0.0
    if kind == "labels":
        header.set_intent("label")
    elif header.get_intent()[0] == "label":
        header.set_intent("none")
    header.set_xyzt_units(xyz="mm")
    if volume.meta.get("description"):
        header["descrip"] = str(volume.meta["description"]).encode("ascii", "replace")[:79]
    if not keep_geometry:
        # New or moved geometry: the exact matrix goes into the sform (the qform cannot hold
        # shear); the codes say "aligned to another scan" unless the source had its own codes.
        sform_code = int(header["sform_code"]) or 2
        qform_code = int(header["qform_code"]) or 2
        header.set_sform(volume.affine, code=sform_code)
        header.set_qform(volume.affine, code=qform_code, strip_shears=True)
    return header, keep_geometry


def write_nifti(
    volume: Volume,
    path: str | os.PathLike,
    kind: VolumeKind = "image",
    check: Callable[[Path], str | None] | None = None,
) -> Path:
    """Write ``volume`` to ``path`` (``.nii`` or ``.nii.gz``) atomically; ``check(temp)``,
    if given, reads the written file back and says what is wrong with it (None: nothing),
    before it takes ``path``'s name.

    A volume read from NIfTI keeps its header: the same sform/qform fields and codes, so
    nibabel reads back exactly the same affine. Other volumes get their affine in the sform.
    Images are stored as float32 (or their integer type), labels as the smallest integer type
    with the NIfTI "label" intent.

    Returns:
        The path written.
    """
    import nibabel as nib

    look_up_option(kind, ("image", "labels"), "volume kind")
    path = Path(path)
    if volume_suffix(path) not in NIFTI_SUFFIXES:
        raise UnsupportedFormatError(
            path, "write volumes as NIfTI: the name must end in .nii.gz or .nii"
        )
    data = _prepare_data(volume.data, kind, path)
    header, keep_geometry = _header_for(volume, data, kind)
    image = nib.Nifti1Image(data, None if keep_geometry else volume.affine, header)
    if not keep_geometry:
        image.update_header()
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    return write_atomic(path, lambda temp: nib.save(image, temp), suffix=suffix, check=check)
