"""Turn a command-line input (one file, one DICOM folder, or a folder of volumes) into cases."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from napari_medood.errors import UnsupportedFormatError, VolumeNotFoundError
from napari_medood.io.formats import (
    SUPPORTED_DESCRIPTION,
    is_dicom_folder,
    volume_format,
    volume_suffix,
)


def _loops(path: Path) -> bool:
    """True for a path that runs into a loop of symbolic links."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def missing_path_error(
    path: str | os.PathLike, what: str = "file or folder"
) -> VolumeNotFoundError:
    """The error for a path that cannot be followed: no such ``what``, or a symbolic link
    that loops or points nowhere (``Path.exists`` says False for all three)."""
    path = Path(path)
    if _loops(path):
        return VolumeNotFoundError(
            path, "is a symbolic link that loops (it leads back to itself); fix or remove it"
        )
    if path.is_symlink():
        return VolumeNotFoundError(
            path, f"is a symbolic link that points nowhere ({os.readlink(path)} does not exist)"
        )
    return VolumeNotFoundError(path, f"no such {what}")


def _is_broken_link(entry: Path) -> bool:
    """A symbolic link that cannot be followed (it loops, or its target is gone)."""
    return entry.is_symlink() and not entry.exists()


def find_volumes(path: str | os.PathLike) -> list[Path]:
    """The volumes an input names, sorted by name.

    A file is one case; a folder holding a DICOM series is one case; any other folder gives
    every supported volume file in it plus every subfolder that holds a DICOM series. A
    symbolic link in it that cannot be followed, named like a volume or without a suffix
    (it may have been a DICOM folder), is not skipped without a word: one that points
    nowhere is a case, whose read fails and is listed among the run's failures; one that
    loops stops the search with an error naming it (paths cannot even be compared with it).

    Raises:
        VolumeNotFoundError: the path does not exist, or a link in the folder loops.
        UnsupportedFormatError: a file of an unsupported type, or a folder without volumes.
    """
    path = Path(path)
    if not path.exists():
        raise missing_path_error(path)
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
        volume_file = entry.is_file() and volume_suffix(entry)
        if volume_file or (entry.is_dir() and is_dicom_folder(entry)):
            cases.append(entry)
        elif _is_broken_link(entry) and (volume_suffix(entry) or not entry.suffix):
            if _loops(entry):
                raise missing_path_error(entry)
            cases.append(entry)  # its read names it: a listed failure
    if not cases:
        raise UnsupportedFormatError(
            path, f"this folder holds no volumes ({SUPPORTED_DESCRIPTION})"
        )
    return cases
