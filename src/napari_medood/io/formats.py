"""Which files napari-medood can read, decided cheaply from names and a few bytes."""

from __future__ import annotations

import os
from pathlib import Path

#: Suffix (lower case) -> format name. Longest suffixes first so ".nii.gz" wins over ".gz".
VOLUME_SUFFIXES: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
}
#: Human-readable list for error messages.
SUPPORTED_DESCRIPTION = (
    "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) "
    "or a folder holding one DICOM series"
)
_DICOM_PROBE_FILES = 8


def volume_suffix(path: str | os.PathLike) -> str | None:
    """The supported suffix ``path`` ends with (``".nii.gz"``, ...), or None."""
    name = os.fspath(path).lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def strip_volume_suffix(name: str) -> str:
    """``"sub-01_T1w.nii.gz"`` -> ``"sub-01_T1w"``; other names are returned unchanged."""
    suffix = volume_suffix(name)
    return name[: -len(suffix)] if suffix else name


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """True when one of the first files of the folder is a DICOM file (cheap check)."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    try:
        with os.scandir(folder) as entries:
            files = []
            for entry in entries:
                if entry.is_file():
                    files.append(entry.path)
                    if len(files) >= _DICOM_PROBE_FILES:
                        break
    except OSError:
        return False
    return any(f.lower().endswith(".dcm") or is_dicom_file(f) for f in files)


def volume_format(path: str | os.PathLike) -> str | None:
    """``"nifti"``, ``"nrrd"``, ``"metaimage"``, ``"dicom"`` or None when napari-medood cannot read it.

    Only names and, for folders, a few bytes are looked at; the file is not decoded.
    """
    if Path(path).is_dir():
        return "dicom" if is_dicom_folder(path) else None
    suffix = volume_suffix(path)
    return VOLUME_SUFFIXES[suffix] if suffix else None
