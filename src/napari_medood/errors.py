"""Errors that napari-medood reports to its users as one clear line.

Every error about a file names the file first, then the problem, so a batch log or a napari
notification says which input to look at without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class MedoodError(Exception):
    """Base class of every error meant for the user rather than for a traceback."""


class VolumeError(MedoodError, ValueError):
    """A problem with one input volume; the message starts with the file's path."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = Path(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


class VolumeNotFoundError(VolumeError):
    """The path does not exist."""


class UnsupportedFormatError(VolumeError):
    """The file is not one of the supported volume formats."""


class CorruptVolumeError(VolumeError):
    """The file has a supported format but cannot be decoded (corrupt or truncated)."""


class VolumeShapeError(VolumeError):
    """The data are not a single non-empty 3D volume (2D, 4D, or no voxels)."""


class NonFiniteVoxelsError(VolumeError):
    """The volume holds NaN or infinite voxels."""


class VolumeTooLargeError(VolumeError):
    """The volume would not fit into the memory that is available."""


class GridMismatchError(VolumeError):
    """Two volumes that must share a voxel grid (image and mask, say) do not."""


class PreprocessingError(MedoodError, ValueError):
    """Preprocessing cannot run on this input (empty mask, constant intensities, ...)."""


class NonFiniteOutputError(MedoodError):
    """A model computed NaN or infinite values (damaged weights, a diverged training run)."""


class Cancelled(MedoodError):  # noqa: N818 - reads as "the work was cancelled"
    """Long-running work stopped because the user asked for it."""


def look_up_option(name: str, options: Iterable[str], what: str = "option") -> str:
    """Return ``name`` if it is one of ``options``; otherwise raise a ValueError that lists them.

    Args:
        name: the value the user gave.
        options: the valid values.
        what: what the value is, for the message ("normalisation", "detector", ...).
    """
    valid = list(options)
    if name in valid:
        return name
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"unknown {what} {name!r}; valid choices: {', '.join(map(repr, valid))}.{hint}"
    )
