"""Turn a command-line input (one file, one DICOM folder, or a folder of volumes) into cases."""

from __future__ import annotations

import os
from pathlib import Path

from napari_medood.errors import UnsupportedFormatError, VolumeNotFoundError
from napari_medood.io.formats import (
    SUPPORTED_DESCRIPTION,
    is_dicom_folder,
    volume_format,
    volume_suffix,
)


def find_volumes(path: str | os.PathLike) -> list[Path]:
    """The volumes an input names, sorted by name.

    A file is one case; a folder holding a DICOM series is one case; any other folder gives
    every supported volume file in it plus every subfolder that holds a DICOM series.

    Raises:
        VolumeNotFoundError: the path does not exist.
        UnsupportedFormatError: a file of an unsupported type, or a folder without volumes.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeNotFoundError(path, "no such file or folder")
    if path.is_file():
        if volume_format(path) is None:
            raise UnsupportedFormatError(
                path, f"unsupported file type; napari-medood reads {SUPPORTED_DESCRIPTION}"
            )
        return [path]
    if is_dicom_folder(path):
        return [path]
    cases = []
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        if (entry.is_file() and volume_suffix(entry)) or (
            entry.is_dir() and is_dicom_folder(entry)
        ):
            cases.append(entry)
    if not cases:
        raise UnsupportedFormatError(
            path, f"this folder holds no volumes ({SUPPORTED_DESCRIPTION})"
        )
    return cases
