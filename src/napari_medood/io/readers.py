"""Read NIfTI (nibabel), NRRD, MetaImage and DICOM series (SimpleITK) into a :class:`Volume`.

Every failure is raised as a :class:`~napari_medood.errors.VolumeError` whose message starts
with the path and says what is wrong, and nothing is ever written to the input.
"""

from __future__ import annotations

import os
import re
import warnings
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from napari_medood.errors import (
    CorruptVolumeError,
    NonFiniteVoxelsError,
    UnsupportedFormatError,
    VolumeNotFoundError,
    VolumeShapeError,
    VolumeTooLargeError,
    look_up_option,
)
from napari_medood.io.formats import SUPPORTED_DESCRIPTION, volume_format
from napari_medood.io.volume import LPS_TO_RAS, Volume

NonFinitePolicy = Literal["error", "zero"]
NONFINITE_POLICIES = ("error", "zero")


class NonFiniteVoxelsWarning(UserWarning):
    """NaN or infinite voxels were replaced by zero while reading."""


class DicomSeriesWarning(UserWarning):
    """A DICOM folder holds several series; the largest one was read."""


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation, or None when the system does not say."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def _check_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Return the 3D shape, or raise a clear error for 2D, 4D+ or empty data."""
    described = "x".join(map(str, shape)) or "scalar"
    if any(n == 0 for n in shape):
        raise VolumeShapeError(path, f"holds no voxels (shape {described})")
    # Trailing singleton axes beyond the third (a 3D NIfTI stored as x,y,z,1) are harmless.
    core = list(shape)
    while len(core) > 3 and core[-1] == 1:
        core.pop()
    if len(core) > 3:
        extra = int(np.prod(core[3:]))
        raise VolumeShapeError(
            path,
            f"is {len(core)}D ({described}): {extra} volumes or channels in one file; "
            "napari-medood needs a single 3D volume (split the series first)",
        )
    if len(core) < 3 or min(core) == 1:
        raise VolumeShapeError(
            path, f"is a 2D image ({described}); napari-medood needs a 3D volume"
        )
    return tuple(core)  # type: ignore[return-value]


def _check_memory(path: Path, shape: tuple[int, ...], itemsize: int, max_bytes: int | None) -> None:
    needed = int(np.prod(shape, dtype=np.float64)) * itemsize
    limit = max_bytes if max_bytes is not None else available_memory()
    if limit is not None and needed > limit:
        size = "x".join(map(str, shape))
        raise VolumeTooLargeError(
            path,
            f"the {size} volume needs {_format_bytes(needed)} of memory but only "
            f"{_format_bytes(limit)} is available; crop or downsample it first",
        )


def _check_dtype(path: Path, dtype: np.dtype) -> None:
    if dtype.kind not in "biuf":
        raise UnsupportedFormatError(
            path, f"voxel type {dtype} is not supported (need integer or real-valued scalars)"
        )


def _handle_nonfinite(path: Path, data: np.ndarray, policy: str) -> np.ndarray:
    if data.dtype.kind != "f":
        return data
    bad = ~np.isfinite(data)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return data
    n_nan = int(np.isnan(data).sum())
    problem = f"{n_nan} NaN and {n_bad - n_nan} infinite voxels out of {data.size}"
    if policy == "error":
        raise NonFiniteVoxelsError(path, f"holds {problem}")
    warnings.warn(f"{path}: replaced {problem} by 0", NonFiniteVoxelsWarning, stacklevel=3)
    data = np.array(data, copy=True)
    data[bad] = 0
    return data


def read_volume(
    path: str | os.PathLike,
    *,
    nonfinite: NonFinitePolicy = "error",
    max_bytes: int | None = None,
) -> Volume:
    """Read one 3D volume from a NIfTI, NRRD or MetaImage file or a DICOM series folder.

    Args:
        path: the file, or a folder holding one DICOM series.
        nonfinite: ``"error"`` refuses NaN/Inf voxels; ``"zero"`` replaces them by 0 and warns.
        max_bytes: refuse volumes larger than this (default: the memory available now).

    Returns:
        The volume, with ``data`` in the file's voxel order and a RAS+ ``affine``.

    Raises:
        VolumeError: a subclass naming the file and the problem.
    """
    look_up_option(nonfinite, NONFINITE_POLICIES, "non-finite voxel policy")
    path = Path(path)
    if not path.exists():
        raise VolumeNotFoundError(path, "no such file or folder")
    fmt = volume_format(path)
    if fmt is None:
        if path.is_dir():
            raise UnsupportedFormatError(path, "this folder holds no DICOM series")
        if path.name.lower().endswith(".dcm"):
            raise UnsupportedFormatError(
                path, "a single DICOM file; open the folder that holds the whole series"
            )
        raise UnsupportedFormatError(
            path, f"unsupported file type; napari-medood reads {SUPPORTED_DESCRIPTION}"
        )
    if fmt == "nifti":
        volume = _read_nifti(path, max_bytes)
    elif fmt == "dicom":
        volume = _read_dicom(path, max_bytes)
    else:
        volume = _read_with_sitk(path, fmt, max_bytes)
    data = _handle_nonfinite(path, volume.data, nonfinite)
    if data is not volume.data:
        volume = Volume(data, volume.affine, volume.source, volume.meta)
    return volume


# ----------------------------------------------------------------------------------- NIfTI
def _read_nifti(path: Path, max_bytes: int | None) -> Volume:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        image = nib.load(path, mmap=False)
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise CorruptVolumeError(path, f"not a readable NIfTI file ({_short(exc)})") from exc
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise UnsupportedFormatError(path, f"is a {type(image).__name__}, not a NIfTI image")
    shape = _check_shape(path, tuple(image.shape))
    stored = np.dtype(image.dataobj.dtype)
    _check_dtype(path, stored)
    # nibabel applies scl_slope/scl_inter on reading; scaled integers arrive as float64.
    proxy = image.dataobj
    scaled = getattr(proxy, "slope", 1.0) != 1.0 or getattr(proxy, "inter", 0.0) != 0.0
    itemsize = 8 if scaled else stored.itemsize
    _check_memory(path, shape, itemsize, max_bytes)
    try:
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise CorruptVolumeError(
            path, f"the voxel data are truncated or corrupt ({_short(exc)})"
        ) from exc
    data = np.asarray(data).reshape(shape)
    header = image.header.copy()
    return Volume(data, image.affine, path, {"format": "nifti", "nifti_header": header})


# ------------------------------------------------------------------------- NRRD, MetaImage
def _sitk_itemsize(pixel_id: int) -> int:
    import SimpleITK as sitk

    probe = sitk.Image([1, 1, 1], pixel_id)
    return sitk.GetArrayViewFromImage(probe).dtype.itemsize


def _read_with_sitk(path: Path, fmt: str, max_bytes: int | None) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise CorruptVolumeError(path, f"not a readable {fmt} file ({_itk_message(exc)})") from exc
    components = reader.GetNumberOfComponents()
    if components != 1:
        raise UnsupportedFormatError(
            path,
            f"has {components} components per voxel (vector or RGB); a scalar volume is needed",
        )
    shape = _check_shape(path, tuple(reader.GetSize()))  # (x, y, z[, t]) = (i, j, k[, t])
    _check_memory(path, shape, _sitk_itemsize(reader.GetPixelID()), max_bytes)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise CorruptVolumeError(
            path, f"the voxel data are truncated or corrupt ({_itk_message(exc)})"
        ) from exc
    return _volume_from_sitk(image, path, {"format": fmt})


def _volume_from_sitk(image, path: Path, meta: dict) -> Volume:
    import SimpleITK as sitk

    dim = image.GetDimension()
    array = sitk.GetArrayFromImage(image)  # (k, j, i) or (t, k, j, i)
    array = array.reshape(array.shape[-3:]) if array.ndim > 3 else array
    data = np.ascontiguousarray(array.transpose(2, 1, 0))  # -> (i, j, k)
    _check_dtype(path, data.dtype)
    spacing = np.array(image.GetSpacing()[:3], dtype=np.float64)
    origin = np.array(image.GetOrigin()[:3], dtype=np.float64)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing
    lps[:3, 3] = origin
    return Volume(data, LPS_TO_RAS @ lps, path, meta)


# ---------------------------------------------------------------------------------- DICOM
def _read_dicom(folder: Path, max_bytes: int | None) -> Volume:
    import SimpleITK as sitk

    series_reader = sitk.ImageSeriesReader()
    try:
        series_ids = list(series_reader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError as exc:
        raise CorruptVolumeError(
            folder, f"cannot scan for DICOM series ({_itk_message(exc)})"
        ) from exc
    if not series_ids:
        raise CorruptVolumeError(folder, "no readable DICOM series in this folder")
    files_by_series = {
        uid: list(series_reader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in series_ids
    }
    uid = max(files_by_series, key=lambda u: len(files_by_series[u]))
    files = files_by_series[uid]
    if len(files_by_series) > 1:
        others = ", ".join(f"{u} ({len(f)} files)" for u, f in files_by_series.items() if u != uid)
        warnings.warn(
            f"{folder}: holds {len(files_by_series)} DICOM series; reading the largest, {uid} "
            f"({len(files)} files), and ignoring {others}",
            DicomSeriesWarning,
            stacklevel=3,
        )
    if len(files) < 2:
        raise VolumeShapeError(
            folder, "holds a single DICOM slice; napari-medood needs a 3D series"
        )
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    try:
        first.ReadImageInformation()
    except RuntimeError as exc:
        raise CorruptVolumeError(
            Path(files[0]), f"unreadable DICOM file ({_itk_message(exc)})"
        ) from exc
    width, height = first.GetSize()[:2]
    _check_memory(
        folder, (width, height, len(files)), _sitk_itemsize(first.GetPixelID()), max_bytes
    )
    series_reader.SetFileNames(files)
    try:
        image = series_reader.Execute()
    except RuntimeError as exc:
        raise CorruptVolumeError(
            folder, f"the DICOM series cannot be read ({_itk_message(exc)})"
        ) from exc
    _check_shape(folder, tuple(image.GetSize()))
    meta = {"format": "dicom", "dicom_series_uid": uid, "dicom_files": len(files)}
    for tag, key in (("0008|0060", "modality"), ("0008|103e", "series_description")):
        if first.HasMetaDataKey(tag):
            meta[key] = first.GetMetaData(tag).strip()
    return _volume_from_sitk(image, folder, meta)


# -------------------------------------------------------------------------------- helpers
def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _itk_message(exc: BaseException) -> str:
    """The useful sentence of a SimpleITK/ITK exception, without source paths and addresses."""
    text = str(exc)
    if "ITK ERROR:" in text:
        text = text.split("ITK ERROR:", 1)[1]
        text = re.sub(r"^\s*\w+\(0x[0-9a-fA-F]+\):\s*", "", text)
    return _short(text)
