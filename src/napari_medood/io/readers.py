"""Read NIfTI (nibabel), NRRD, MetaImage and DICOM series (SimpleITK) into a :class:`Volume`.

Every failure is raised as a :class:`~napari_medood.errors.VolumeError` whose message starts
with the path and says what is wrong, and nothing is ever written to the input.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np

from napari_medood.errors import (
    CorruptVolumeError,
    NonFiniteVoxelsError,
    UnsupportedFormatError,
    VolumeShapeError,
    VolumeTooLargeError,
    look_up_option,
)
from napari_medood.io.discovery import missing_path_error
from napari_medood.io.formats import SUPPORTED_DESCRIPTION, is_dicom_file, volume_format
from napari_medood.io.volume import LPS_TO_RAS, Volume

NonFinitePolicy = Literal["error", "zero"]
NONFINITE_POLICIES = ("error", "zero")

#: no scanner measures intensities this large; values beyond it are a corrupt or mis-scaled
#: file, and float32 arithmetic on them overflows (squares pass float32's 3.4e38 from 1.8e19)
MAX_INTENSITY = 1e15
#: consecutive DICOM slices this many times further apart than the usual step leave a gap
DICOM_GAP_FACTOR = 1.5
#: steps between DICOM slices may differ from the usual one by this share, or by this many
#: mm (positions are rounded in the headers), before the spacing counts as uneven
DICOM_SPACING_TOLERANCE = 0.01
DICOM_SPACING_TOLERANCE_MM = 0.01


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
        raise missing_path_error(path)
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
    _check_magnitude(path, data)
    if data is not volume.data:
        volume = Volume(data, volume.affine, volume.source, volume.meta)
    return volume


def _check_magnitude(path: Path, data: np.ndarray) -> None:
    """Refuse finite values no intensity can have (1e37: a corrupt or mis-scaled file) here,
    before they overflow in the detectors' arithmetic as a cascade of numpy warnings."""
    wide_integers = data.dtype.kind in "iu" and data.dtype.itemsize == 8
    if data.dtype.kind != "f" and not wide_integers:
        return  # narrower integers cannot hold such values
    low, high = float(data.min()), float(data.max())  # NaN and Inf are gone by now
    if max(abs(low), abs(high)) > MAX_INTENSITY:
        raise CorruptVolumeError(
            path,
            f"holds values up to {high if abs(high) >= abs(low) else low:.3g}, beyond what "
            "intensities can be; the file is probably corrupt or mis-scaled",
        )


# ----------------------------------------------------------------------------------- NIfTI
def _read_nifti(path: Path, max_bytes: int | None) -> Volume:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        with _nibabel_repairs() as repairs:
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
    meta = {"format": "nifti", "nifti_header": header}
    notes = _nifti_header_notes(path, image, repairs)
    if notes:
        meta["notes"] = notes
    return Volume(data, image.affine, path, meta)


@contextmanager
def _nibabel_repairs():
    """Collect the header repairs nibabel logs while loading ("pixdim[1,2,3] should be
    non-zero; setting 0 dims to 1") instead of letting it print them to stderr."""
    from nibabel.imageglobals import logger

    repairs: list[str] = []

    def collect(record: logging.LogRecord) -> bool:
        repairs.append(record.getMessage())
        return False  # handled here: not printed

    logger.addFilter(collect)
    try:
        yield repairs
    finally:
        logger.removeFilter(collect)


def _nifti_header_notes(path: Path, image, repairs: list[str]) -> list[str]:
    """What the user should know about a header nibabel had to complete or repair."""
    from nibabel.openers import ImageOpener

    notes = []
    try:  # the header as stored: nibabel's loaded copy has its zero voxel sizes set to 1
        with ImageOpener(path) as handle:
            stored = type(image.header).from_fileobj(handle, check=False)
        pixdim = np.asarray(stored["pixdim"][1:4], dtype=np.float64)
        sform, qform = int(stored["sform_code"]), int(stored["qform_code"])
    except Exception:  # noqa: BLE001 - nibabel has read it once; the notes are a bonus
        return [f"the header was repaired on reading: {r}" for r in repairs]
    unsized = [axis for axis, size in enumerate(pixdim) if size == 0 or not np.isfinite(size)]
    if unsized and sform == 0:
        codes = "no sform/qform" if qform == 0 else "no sform"
        if len(unsized) == 3:
            notes.append(
                f"the header gives no voxel size (pixdim all 0, {codes}): 1 mm isotropic "
                "voxels were assumed; distances and volumes in ml may be wrong"
            )
        else:
            axes = ", ".join(str(axis + 1) for axis in unsized)
            notes.append(
                f"the header gives no voxel size along axis {axes} (pixdim 0, {codes}): 1 mm "
                "was assumed; distances and volumes in ml may be wrong"
            )
        repairs = [r for r in repairs if not r.startswith("pixdim")]
    notes += [f"the header was repaired on reading: {r}" for r in repairs]
    return notes


# ------------------------------------------------------------------------- NRRD, MetaImage
def _sitk_itemsize(pixel_id: int) -> int:
    import SimpleITK as sitk

    probe = sitk.Image([1, 1, 1], pixel_id)
    return sitk.GetArrayViewFromImage(probe).dtype.itemsize


def _read_with_sitk(path: Path, fmt: str, max_bytes: int | None) -> Volume:
    import SimpleITK as sitk

    # ITK's own messages for these carry build paths, and MetaIO prints to stderr: look first
    _check_data_size(path, fmt)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _sitk_error(path, exc, f"not a readable {fmt} file") from exc
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
        raise _sitk_error(path, exc, "the voxel data are truncated or corrupt") from exc
    return _volume_from_sitk(image, path, {"format": fmt})


#: bytes per voxel of the NRRD and MetaImage element types (others are not size-checked)
_NRRD_TYPE_BYTES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8"), 1),
    **dict.fromkeys(("uint8_t", "short", "short int", "signed short", "int16", "int16_t"), 2),
    **dict.fromkeys(("signed short int", "ushort", "unsigned short", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("unsigned short int", "int", "signed int", "int32", "int32_t"), 4),
    **dict.fromkeys(("uint", "unsigned int", "uint32", "uint32_t", "float"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "int64", "int64_t"), 8),
    **dict.fromkeys(("ulonglong", "unsigned long long", "uint64", "uint64_t", "double"), 8),
}
_META_TYPE_BYTES = {
    **dict.fromkeys(("MET_CHAR", "MET_UCHAR"), 1),
    **dict.fromkeys(("MET_SHORT", "MET_USHORT"), 2),
    **dict.fromkeys(("MET_INT", "MET_UINT", "MET_FLOAT"), 4),
    **dict.fromkeys(("MET_LONG_LONG", "MET_ULONG_LONG", "MET_DOUBLE"), 8),
}
_HEADER_PROBE_BYTES = 1 << 16


def _check_data_size(path: Path, fmt: str) -> None:
    """Refuse a header whose data file is missing, or whose raw voxel data are shorter
    than its sizes say, with one plain line. Headers this cannot follow (several data
    files, byte skips, compressed data without a stated size) are left to ITK."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEADER_PROBE_BYTES)
        file_size = path.stat().st_size
    except OSError:
        return  # ITK will report the file itself
    layout = _nrrd_layout(head) if fmt == "nrrd" else _metaimage_layout(head)
    if layout is None:
        return
    data_file, data_offset, expected = layout
    if data_file is not None:
        attached = path.parent / data_file
        if not attached.exists():
            raise CorruptVolumeError(path, f"its data file {data_file} is missing")
        available = attached.stat().st_size
    else:
        available = file_size - data_offset
    if expected is not None and available < expected:
        raise CorruptVolumeError(
            path,
            f"the voxel data are shorter than the header says ({available:,} of {expected:,} "
            "bytes): the file is truncated or corrupt",
        )


def _nrrd_layout(head: bytes) -> tuple[str | None, int, int | None] | None:
    """(detached data file or None, offset of attached data, bytes of raw data or None)."""
    if not head.startswith(b"NRRD"):
        return None
    end = re.search(rb"\r?\n\r?\n", head)
    header, offset = (head[: end.start()], end.end()) if end else (head, -1)
    fields = {}
    for line in header.decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":=" in line or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file and (data_file.startswith("LIST") or " " in data_file or "%" in data_file):
        return None  # a list or a pattern of data files
    if not data_file and offset < 0:
        return None  # a header longer than the probe: where the data start is unknown
    expected = None
    sizes = fields.get("sizes", "").split()
    item = _NRRD_TYPE_BYTES.get(" ".join(fields.get("type", "").lower().split()))
    plain = fields.get("byte skip", "0") == "0" and fields.get("line skip", "0") == "0"
    if fields.get("encoding", "").lower() == "raw" and sizes and item and plain:
        try:
            expected = int(np.prod([int(n) for n in sizes], dtype=np.int64)) * item
        except ValueError:
            expected = None
    return data_file or None, offset, expected


def _metaimage_layout(head: bytes) -> tuple[str | None, int, int | None] | None:
    """The same for a MetaImage header (``ElementDataFile`` is its last line)."""
    fields, offset = {}, 0
    for line in head.splitlines(keepends=True):
        offset += len(line)
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep:
            return None
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    else:
        return None
    data_file = fields["ElementDataFile"]
    if data_file.startswith("LIST") or " " in data_file or "%" in data_file:
        return None
    data_file = None if data_file == "LOCAL" else data_file
    if fields.get("HeaderSize", "0") != "0" or fields.get("BinaryData", "True").lower() != "true":
        return data_file, offset, None  # data after a skip, or as text: sizes unknown
    expected = None
    try:
        if fields.get("CompressedData", "False").lower() == "true":
            if "CompressedDataSize" in fields:
                expected = int(fields["CompressedDataSize"])
        elif fields.get("ElementType") in _META_TYPE_BYTES:
            sizes = [int(n) for n in fields["DimSize"].split()]
            channels = int(fields.get("ElementNumberOfChannels", "1"))
            expected = int(np.prod(sizes, dtype=np.int64)) * channels
            expected *= _META_TYPE_BYTES[fields["ElementType"]]
    except (KeyError, ValueError):
        expected = None
    return data_file, offset, expected


def _sitk_error(path: Path, exc: BaseException, problem: str) -> CorruptVolumeError:
    """One plain line for what ITK raised about ``path`` (its text names build paths)."""
    text = str(exc)
    missing = re.search(r"couldn't open \"([^\"]+)\" \(data file", text)
    if missing:
        return CorruptVolumeError(path, f"its data file {Path(missing.group(1)).name} is missing")
    if re.search(r"fread got only|expected \d+ bytes but received|data not read completely", text):
        return CorruptVolumeError(
            path,
            "the voxel data are shorter than the header says: the file is truncated or corrupt",
        )
    if "File cannot be read" in text:  # MetaIO's "Reason: No such file" is a leftover errno
        return CorruptVolumeError(path, f"{problem} (the data cannot be decoded)")
    return CorruptVolumeError(path, f"{problem} ({_itk_message(exc)})")


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
#: file suffixes DICOM files carry (besides none at all, or a number as in 1.2.840....7)
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", ".dic")


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
    # GDCM leaves out, without a word, every file it cannot parse (a truncated slice, a text
    # file named like one); SimpleITK then stacks the rest across the gap at an averaged
    # spacing. Read each slice's position to find gaps, and name the files left out.
    in_a_series = {os.path.abspath(f) for series in files_by_series.values() for f in series}
    unreadable = _unreadable_dicom_files(folder, in_a_series)
    first = sitk.ImageFileReader()
    first.SetFileName(files[0])
    try:
        first.ReadImageInformation()
    except RuntimeError as exc:
        raise CorruptVolumeError(
            Path(files[0]), "is not a readable DICOM file (truncated, corrupt or not DICOM)"
        ) from exc
    width, height = first.GetSize()[:2]
    _check_memory(
        folder, (width, height, len(files)), _sitk_itemsize(first.GetPixelID()), max_bytes
    )
    # one read of the files: the slices' positions come with the voxels (no second pass
    # over every file's header)
    series_reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = _execute_quietly(series_reader, files)
    except RuntimeError as exc:
        # name what spoils the series: a slice of another size, a gap, an unreadable file
        slices = [_dicom_slice(Path(f)) for f in files]
        _check_slice_sizes(folder, files, slices)
        _check_slice_spacing(folder, files, slices, unreadable)
        raise _dicom_read_error(folder, files, exc) from exc
    slices = [
        (
            None,
            _dicom_numbers(_series_tag(series_reader, i, "0020|0032"), 3),
            _dicom_numbers(_series_tag(series_reader, i, "0020|0037"), 6),
        )
        for i in range(len(files))
    ]
    ordered = _check_slice_spacing(folder, files, slices, unreadable)
    if ordered != files:  # GDCM's order was not the slices' order along their normal
        files = ordered
        image = _execute_quietly(series_reader, files)
    _check_shape(folder, tuple(image.GetSize()))
    meta = {"format": "dicom", "dicom_series_uid": uid, "dicom_files": len(files)}
    for tag, key in (("0008|0060", "modality"), ("0008|103e", "series_description")):
        if first.HasMetaDataKey(tag):
            meta[key] = first.GetMetaData(tag).strip()
    if unreadable:
        names = ", ".join(p.name for p in unreadable)
        meta["notes"] = [
            f"{names} in the DICOM folder could not be read as DICOM and "
            f"{'was' if len(unreadable) == 1 else 'were'} left out; the series has no gap, "
            "so no slice of it is missing"
        ]
    return _volume_from_sitk(image, folder, meta)


def _execute_quietly(series_reader, files: list[str]):
    """Read ``files`` as one series without ITK's warning lines on stderr (slight spacing
    differences within the tolerance checked here would print its raw text)."""
    import SimpleITK as sitk

    series_reader.SetFileNames(files)
    warned = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    try:
        return series_reader.Execute()
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(warned)


def _series_tag(series_reader, index: int, tag: str) -> str | None:
    if not series_reader.HasMetaDataKey(index, tag):
        return None
    return series_reader.GetMetaData(index, tag)


def _check_slice_sizes(folder: Path, files: list[str], slices: list) -> None:
    """Refuse a series whose slices differ in rows or columns, naming one that does."""
    width, height = slices[0][0].GetSize()[:2]
    for (reader, _, _), name in zip(slices, files, strict=True):
        if tuple(reader.GetSize()[:2]) != (width, height):
            size = "x".join(map(str, reader.GetSize()[:2]))
            raise CorruptVolumeError(
                folder,
                f"the slices of the series differ in size: {Path(name).name} is {size}, "
                f"{Path(files[0]).name} is {width}x{height}",
            )


def _looks_like_dicom(path: Path) -> bool:
    """A name DICOM files carry (.dcm, no suffix, a UID) or the DICOM preamble."""
    suffix = path.suffix.lower()
    return suffix in _DICOM_SUFFIXES or suffix == "" or suffix[1:].isdigit() or is_dicom_file(path)


def _unreadable_dicom_files(folder: Path, in_a_series: set[str]) -> list[Path]:
    """The folder's files that look like DICOM but that no series took (GDCM could not
    parse them): truncated, corrupt, or not DICOM at all."""
    import SimpleITK as sitk

    found = []
    for entry in sorted(folder.iterdir()):
        if (
            entry.name.startswith(".")
            or entry.name.upper() == "DICOMDIR"  # the index of a DICOM medium, not an image
            or os.path.abspath(entry) in in_a_series
            or not entry.is_file()
            or not _looks_like_dicom(entry)
        ):
            continue
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(entry))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            found.append(entry)
    return found


def _dicom_slice(path: Path):
    """A slice's reader (header read) with its position (0020|0032) and its row and column
    directions (0020|0037) as arrays, or None where the header lacks them."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise CorruptVolumeError(
            path, "is not a readable DICOM file (truncated, corrupt or not DICOM)"
        ) from exc

    def tag(key: str) -> str | None:
        return reader.GetMetaData(key) if reader.HasMetaDataKey(key) else None

    return reader, _dicom_numbers(tag("0020|0032"), 3), _dicom_numbers(tag("0020|0037"), 6)


def _dicom_numbers(text: str | None, count: int) -> np.ndarray | None:
    """A DICOM multi-value decimal string (``a\\b\\c``) as ``count`` finite numbers, or None."""
    if text is None:
        return None
    try:
        values = np.array([float(v) for v in text.split("\\")])
    except ValueError:
        return None
    return values if values.size == count and np.all(np.isfinite(values)) else None


def _check_slice_spacing(
    folder: Path, files: list[str], slices: list, unreadable: list[Path]
) -> list[str]:
    """Refuse a series whose slices are not evenly spaced (a missing slice leaves a gap
    that SimpleITK would average away); return the files in slice order."""
    positions = [position for _, position, _ in slices]
    orientations = [orientation for _, _, orientation in slices]
    if any(p is None for p in positions) or any(o is None for o in orientations):
        return files  # no geometry to check; GDCM ordered them by what it found
    for orientation, name in zip(orientations, files, strict=True):
        if not np.allclose(orientation, orientations[0], atol=1e-3):
            raise CorruptVolumeError(
                folder,
                f"the slices are not parallel: {Path(name).name} is tilted against "
                f"{Path(files[0]).name} (ImageOrientationPatient 0020|0037 differs)",
            )
    row, column = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, column)
    depth = np.array(positions) @ normal  # mm along the slice normal
    order = np.argsort(depth, kind="stable")
    steps = np.diff(depth[order])
    names = [Path(files[i]).name for i in order]
    if steps.size == 0:
        return files
    nearest = int(np.argmin(steps))
    if steps[nearest] < DICOM_SPACING_TOLERANCE_MM:
        raise CorruptVolumeError(
            folder,
            f"two slices lie at the same position: {names[nearest]} and "
            f"{names[nearest + 1]} (a duplicated file, or two series sharing one UID)",
        )
    usual = float(np.median(steps))
    # positions are decimal strings, often rounded (1.25 mm slices at one decimal step
    # 1.3, 1.2, 1.3 mm): allow what the rounding of three coordinates can add to a step
    # (capped: whole-number positions may be exact, and a missing slice must still show)
    rounding = min(2.0 * np.sqrt(3.0) * _rounding_unit(np.array(positions)), 0.4 * usual)
    tolerance = max(DICOM_SPACING_TOLERANCE_MM, DICOM_SPACING_TOLERANCE * usual, rounding)
    worst = int(np.argmax(np.abs(steps - usual)))
    step = float(steps[worst])
    if abs(step - usual) > tolerance:
        between = f"{names[worst]} and {names[worst + 1]}"
        others = f"(the other slices are {usual:.3g} mm apart)"
        if step > DICOM_GAP_FACTOR * usual:
            missing = max(1, round(step / usual) - 1)
            uneven = f"a gap of {step:.3g} mm between {between} {others}"
            lost = "a slice is missing" if missing == 1 else f"{missing} slices are missing"
            culprit = "; this file is probably the missing slice"
        else:
            uneven = f"{step:.3g} mm between {between} {others}"
            lost, culprit = "the volume would be distorted", ""
        if unreadable:
            # the file GDCM left out is most likely the missing slice: name it first
            more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
            raise CorruptVolumeError(
                unreadable[0],
                f"is not a readable DICOM file (truncated, corrupt or not DICOM){more}, and "
                f"its series is not evenly spaced: {uneven}{culprit}",
            )
        raise CorruptVolumeError(folder, f"slices are not evenly spaced: {uneven}; {lost}")
    monotonic = np.all(np.diff(depth) > 0) or np.all(np.diff(depth) < 0)
    return files if monotonic else [files[i] for i in order]


def _rounding_unit(values: np.ndarray) -> float:
    """The finest decimal unit the numbers were written to (0.1 for 12.3 and 4.5), at most
    1e-4 (0 for numbers written with more digits than that)."""
    for decimals in range(5):
        scaled = values * 10.0**decimals
        if np.allclose(scaled, np.round(scaled), rtol=0, atol=1e-6 * 10.0**decimals):
            return 10.0**-decimals
    return 0.0


def _dicom_read_error(folder: Path, files: list[str], exc: BaseException) -> CorruptVolumeError:
    """Name the slice that spoils the series' read, if one alone does."""
    import SimpleITK as sitk

    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.Execute()
        except RuntimeError:
            return CorruptVolumeError(
                Path(name), "the voxel data of this DICOM slice are truncated or corrupt"
            )
    return CorruptVolumeError(folder, f"the DICOM series cannot be read ({_itk_message(exc)})")


# -------------------------------------------------------------------------------- helpers
def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _itk_message(exc: BaseException) -> str:
    """The useful sentence of a SimpleITK/ITK exception, without source paths and addresses."""
    text = str(exc)
    # "Exception thrown in SimpleITK ...: /build/.../itkNrrdImageIO.cxx:410:\nitk::ERROR:
    # NrrdImageIO(0x55...): sentence": the sentence follows the last marker
    for marker in ("sitk::ERROR:", "itk::ERROR:", "ITK ERROR:"):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
            break
    text = re.sub(r"^\s*\w+\(0x[0-9a-fA-F]+\):\s*", "", text)
    # teem (NRRD) chains "[nrrd] function: ..." from outermost to innermost; the last says why
    reasons = [r.strip() for r in re.split(r"\[\w+\]\s*\w+:", text) if r.strip()]
    text = reasons[-1] if reasons else text
    text = re.sub(r"\S+\.(?:cxx|hxx|cpp|txx|h)(?::\d+)+:?", "", text)  # source locations
    text = re.sub(r"\(?0x[0-9a-fA-F]+\)?", "", text)
    return _short(text)
