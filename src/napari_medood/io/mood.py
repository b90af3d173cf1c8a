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
    """Write a case's map, checked before and after: values that a resume would reject are
    never written, and the file is read back (as a resume reads it) before it takes its
    final name."""
    from napari_medood.errors import MedoodError
    from napari_medood.io.writers import write_nifti

    target = output_path(out_dir, image, "pixel")
    problem = map_values_problem(np.asarray(anomaly_map.data))
    if problem is not None:
        raise MedoodError(f"{target.name} not written: the map {problem}")
    shape = tuple(anomaly_map.data.shape[:3])
    return write_nifti(anomaly_map, target, check=lambda temp: output_problem(temp, "pixel", shape))


def write_score(score: float, out_dir: str | os.PathLike, image: str | os.PathLike) -> Path:
    """Write a case's score; a NaN or infinite score is refused, never written as a number."""
    from napari_medood.errors import MedoodError
    from napari_medood.io.atomic import write_text_atomic

    target = output_path(out_dir, image, "sample")
    if not np.isfinite(float(score)):
        raise MedoodError(f"{target.name} not written: the score is {float(score)}")
    return write_text_atomic(target, f"{float(score):.6f}\n")


#: the hidden folder of an OUTPUT where runs keep their own records: what they wrote (a
#: file's record proves a run wrote it, so a resume may redo it) and which case a process
#: is computing now (its claim)
RECORDS = ".medood"


def record_path(target: str | os.PathLike, kind: str = "written") -> Path:
    """Where the ``kind`` (``written`` or ``claim``) record of the output ``target`` goes."""
    target = Path(target)
    return target.parent / RECORDS / f"{target.name}.{kind}.json"


def record_written(target: str | os.PathLike, record: dict) -> Path:
    """Record that a run wrote ``target`` (its sha256 and what wrote it), atomically."""
    import json

    from napari_medood.io.atomic import file_sha256, write_text_atomic

    entry = {**record, "file": Path(target).name, "sha256": file_sha256(target)}
    return write_text_atomic(record_path(target), json.dumps(entry, indent=1) + "\n")


def written_by_medood(target: str | os.PathLike, task: str) -> bool:
    """Did a napari-medood run write ``target``, the ``task`` output of a case, so that a
    resume may skip or redo it?

    Its record says so and the file is still the one recorded (same sha256), or it is a
    damaged output a run left (empty or unloadable; a score file holding no number); or,
    for outputs from before records were kept, a map's NIfTI header names napari-medood or
    a score file holds one number. A file that was replaced since (a mask copied over a map)
    is not the run's.
    """
    import json

    from napari_medood.io.atomic import file_sha256

    target = Path(target)
    if not target.is_file():
        return False
    try:
        recorded = json.loads(record_path(target).read_text(encoding="utf-8")).get("sha256")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded is not None:
        if file_sha256(target) == recorded:
            return True
        problem = output_problem(target, task)
        return problem is not None and (
            task == "sample" or problem == "empty file" or problem.startswith("does not load")
        )
    if task == "sample":
        return output_problem(target, task) is None
    try:
        import nibabel as nib

        descrip = bytes(nib.load(os.fspath(target)).header["descrip"]).rstrip(b"\0")
    except Exception:  # noqa: BLE001 - a file nibabel cannot read names no writer
        return False
    return descrip.startswith(b"napari-medood")


def findings_path(out_dir: str | os.PathLike, image: str | os.PathLike) -> Path:
    """Where the table of findings of ``image``'s map goes, beside the map."""
    return Path(out_dir) / (output_name(image) + ".findings.csv")


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
    return map_values_problem(data)


def map_values_problem(data: np.ndarray) -> str | None:
    """Why a map's values are not a MOOD map's (None: all finite, within [0, 1]); the one
    rule for a map being written and a written map a resume would trust."""
    finite = np.isfinite(data)
    if not finite.all():
        return f"holds {data.size - int(np.count_nonzero(finite)):,} NaN or infinite values"
    if data.size and (data.min() < 0 or data.max() > 1):
        return "holds values outside [0, 1]"
    return None
