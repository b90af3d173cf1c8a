"""The MOOD challenge's output conventions: one writer, one reader, one check for resumes.

For an input ``<name>`` a map is ``OUT/<name>`` (NIfTI on the input's grid and affine,
values in [0, 1]; ``<stem>.nii.gz`` for non-NIfTI inputs) and a sample score is
``OUT/<name>.txt`` holding one number. Both are written atomically. Before a resumed run
skips a case, :func:`output_problem` checks that its output loads and fits: a zero-byte,
truncated, unreadable or misshapen output is redone, not trusted.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_medood.io.formats import strip_volume_suffix, volume_suffix
from napari_medood.io.volume import Volume

TASKS = ("pixel", "sample")


def output_name(case: str | os.PathLike) -> str:
    """File name of a case's output map: the input's own name for NIfTI (MOOD convention),
    ``<name>.nii.gz`` for other formats and DICOM folders."""
    case = Path(case)
    if volume_suffix(case) in (".nii.gz", ".nii"):
        return case.name
    return strip_volume_suffix(case.name) + ".nii.gz"


def output_path(out_dir: str | os.PathLike, image: str | os.PathLike, task: str) -> Path:
    """Where the ``task`` output (``pixel``: map, ``sample``: score) of ``image`` goes."""
    name = output_name(image)
    return Path(out_dir) / (name + ".txt" if task == "sample" else name)


def write_map(anomaly_map: Volume, out_dir: str | os.PathLike, image: str | os.PathLike) -> Path:
    from napari_medood.io.writers import write_nifti

    return write_nifti(anomaly_map, output_path(out_dir, image, "pixel"))


def write_score(score: float, out_dir: str | os.PathLike, image: str | os.PathLike) -> Path:
    from napari_medood.io.atomic import write_text_atomic

    return write_text_atomic(output_path(out_dir, image, "sample"), f"{float(score):.6f}\n")


def trust_path(out_dir: str | os.PathLike, image: str | os.PathLike) -> Path:
    """Where the trust gate's verdict on ``image`` goes, beside its map and score."""
    return Path(out_dir) / (output_name(image) + ".trust.json")


def write_trust(report: dict, out_dir: str | os.PathLike, image: str | os.PathLike) -> Path:
    """The trust gate's report (score, percentile, verdict) as JSON, atomically."""
    import json

    from napari_medood.io.atomic import write_text_atomic

    return write_text_atomic(trust_path(out_dir, image), json.dumps(report, indent=1) + "\n")


def read_score(path: str | os.PathLike) -> float:
    """The number in a score file (ValueError/OSError when it holds none)."""
    value = float(Path(path).read_text().strip())
    if not np.isfinite(value):
        raise ValueError(f"{path}: the score is {value}")
    return value


def input_shape(image: str | os.PathLike) -> tuple[int, ...] | None:
    """The voxel shape of a NIfTI input from its header alone (None for other formats)."""
    if volume_suffix(Path(image)) not in (".nii.gz", ".nii"):
        return None
    import nibabel as nib

    try:
        return tuple(int(n) for n in nib.load(os.fspath(image)).shape[:3])
    except Exception:  # noqa: BLE001 - an unreadable input fails later, with its own message
        return None


def output_problem(
    target: str | os.PathLike, task: str, expected_shape: tuple[int, ...] | None = None
) -> str | None:
    """Why ``target`` is not a finished output (None: it loads and fits)."""
    target = Path(target)
    if not target.is_file():
        return "missing"
    if target.stat().st_size == 0:
        return "empty file"
    if task == "sample":
        try:
            read_score(target)
        except (OSError, ValueError):
            return "holds no number"
        return None
    import nibabel as nib

    try:
        image = nib.load(os.fspath(target))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - nibabel, gzip and zlib raise many kinds
        return f"does not load ({type(exc).__name__})"
    if expected_shape is not None and tuple(data.shape[:3]) != tuple(expected_shape):
        return f"has shape {data.shape}, the input {tuple(expected_shape)}"
    if not np.isfinite(data).all():
        return "holds NaN or infinite values"
    if data.size and (data.min() < 0 or data.max() > 1):
        return "holds values outside [0, 1]"
    return None
