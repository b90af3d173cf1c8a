"""Cohorts of scans: a folder, a CSV list (UAD-IMAG style), a BIDS dataset or a MOOD-layout
set, with brain masks and, for evaluation, lesion labels.

A :class:`Case` is one scan with, optionally, its brain/foreground mask, its voxel label map
and its sample label. Brain masks come from the CSV's mask column, a BIDS derivative, or a
folder of masks named like the scans (the same name, or the scan's name + ``_something``).
Labels come from the MOOD layout's ``pixel/label`` and ``sample/label``, a CSV ``Label``
column, or UAD-IMAG's convention: ``<prefix>_seg-anomaly_mask.nii.gz`` next to
``<prefix>_T1w.nii.gz`` (no such file: the scan is healthy).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from napari_medood.errors import MedoodError, VolumeError
from napari_medood.io.discovery import find_volumes, missing_path_error
from napari_medood.io.formats import strip_volume_suffix, volume_suffix

PATH_COLUMNS = ("path", "image", "img_path", "filename")
MASK_COLUMNS = ("brain_mask", "brainmask", "mask", "mask_path")
LABEL_COLUMNS = ("label", "seg", "segmentation", "lesion", "anomaly_mask", "label_path")
SAMPLE_COLUMNS = ("anomalous", "sample_label", "ood", "abnormal")
UAD_LABEL_SUFFIX = "_seg-anomaly_mask.nii.gz"
NAME_COLUMNS = ("name", "case", "id", "subject", "participant_id")


@dataclass(frozen=True)
class Case:
    """One scan of a cohort.

    Attributes:
        name: the case's name (the scan's file name without its volume suffix).
        image: the scan.
        mask: its brain/foreground mask, if any.
        label: its voxel label map (abnormal > 0), if any.
        anomalous: its sample label (True = abnormal), if known.
        info: free columns (from a CSV).
    """

    name: str
    image: Path
    mask: Path | None = None
    info: dict[str, str] = field(default_factory=dict)
    label: Path | None = None
    anomalous: bool | None = None


def find_mask(mask_source: str | os.PathLike, image: str | os.PathLike) -> Path:
    """The mask for ``image``: ``mask_source`` itself if it is a file, else the file in that
    folder named like the image: the same name, or the image's name + ``_...``, or, for a scan
    derived from another (``<scan>_shift``), the mask of that scan (``<scan>_mask``).

    Raises:
        VolumeError: no mask, or several candidates.
    """
    mask_source, image = Path(mask_source), Path(image)
    if mask_source.is_file():
        return mask_source
    if not mask_source.is_dir():
        raise missing_path_error(mask_source, "mask file or folder")
    stem = strip_volume_suffix(image.name)
    candidates = [p for p in sorted(mask_source.iterdir()) if volume_suffix(p)]
    exact = [p for p in candidates if strip_volume_suffix(p.name) == stem]
    if exact:
        return exact[0]
    prefixed = [p for p in candidates if strip_volume_suffix(p.name).startswith(stem + "_")]
    if len(prefixed) == 1:
        return prefixed[0]
    if not prefixed:
        # a scan derived from the mask's scan: "<scan>_shift" for the mask "<scan>_mask"
        bases = [
            (strip_volume_suffix(p.name).rsplit("_", 1)[0], p)
            for p in candidates
            if "_" in strip_volume_suffix(p.name)
        ]
        derived = sorted(
            ((len(b), p) for b, p in bases if stem.startswith(b + "_")), key=lambda item: -item[0]
        )
        if derived and (len(derived) == 1 or derived[0][0] > derived[1][0]):
            return derived[0][1]
        raise VolumeError(image, f"no mask named {stem}.* or {stem}_* in {mask_source}")
    names = ", ".join(p.name for p in prefixed)
    raise VolumeError(image, f"several masks could belong to it in {mask_source}: {names}")


def is_bids(path: str | os.PathLike) -> bool:
    """True for a folder with a BIDS ``dataset_description.json`` or ``sub-*`` folders."""
    path = Path(path)
    return path.is_dir() and (
        (path / "dataset_description.json").exists()
        or any(p.is_dir() and p.name.startswith("sub-") for p in path.iterdir())
    )


def discover_cases(
    source: str | os.PathLike,
    masks: str | os.PathLike | None = None,
    bids_suffix: str = "T1w",
) -> list[Case]:
    """The cases of a scan file or folder, a CSV file, or a BIDS dataset.

    Args:
        source: a scan, a DICOM folder, a folder of scans, a ``.csv`` with a path column
            (``Path``/``image``/...; relative paths are relative to the CSV), or a BIDS root.
        masks: a mask file (one scan) or a folder of masks named like the scans; overrides
            masks found in a CSV or BIDS derivatives.
        bids_suffix: the BIDS suffix of the images to take (``T1w``, ``FLAIR``, ...).
    """
    source = Path(source)
    if not source.exists():
        raise missing_path_error(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        cases = _from_csv(source)
    elif is_mood_layout(source):
        cases = _from_mood(source)
    elif source.is_dir() and is_bids(source):
        cases = _from_bids(source, bids_suffix)
    else:
        cases = [Case(strip_volume_suffix(p.name), p) for p in find_volumes(source)]
    if masks is not None:
        if Path(masks).is_file() and len(cases) > 1:
            raise MedoodError(
                f"{masks}: one mask file for {len(cases)} scans; pass a folder "
                "with one mask per scan"
            )
        cases = [replace(c, mask=find_mask(masks, c.image)) for c in cases]
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise MedoodError(f"{source}: several scans share the name(s) {', '.join(duplicates)}")
    return cases


def _column(header: list[str], options: tuple[str, ...]) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    return next((lowered[o] for o in options if o in lowered), None)


def _resolve(base: Path, text: str) -> Path | None:
    text = (text or "").strip()
    if not text:
        return None
    path = Path(text)
    return path if path.is_absolute() else base / path


def _flag(text: str | None) -> bool | None:
    text = (text or "").strip().lower()
    if text in ("1", "true", "yes", "abnormal", "ood"):
        return True
    if text in ("0", "false", "no", "normal", "healthy", "id"):
        return False
    try:  # spreadsheets and pandas write 1.0 and 0.0
        number = float(text)
    except ValueError:
        return None
    return {1.0: True, 0.0: False}.get(number)


def _from_csv(path: Path) -> list[Case]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    header = list(rows[0]) if rows else []
    path_column = _column(header, PATH_COLUMNS)
    if path_column is None:
        raise VolumeError(
            path,
            f"no path column; expected one of {', '.join(PATH_COLUMNS)} "
            f"(found: {', '.join(header) or 'no rows'})",
        )
    mask_column, name_column = _column(header, MASK_COLUMNS), _column(header, NAME_COLUMNS)
    label_column, sample_column = _column(header, LABEL_COLUMNS), _column(header, SAMPLE_COLUMNS)
    cases = []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        image = _resolve(path.parent, row[path_column])
        if image is None:
            continue
        label = _resolve(path.parent, row.get(label_column, "")) if label_column else None
        if label is None and label_column is None:
            label = _uad_label(image)
        anomalous = _flag(row.get(sample_column)) if sample_column else None
        if anomalous is None and (row.get(sample_column) or "").strip():
            raise VolumeError(
                path,
                f"line {number}: {sample_column} is {row[sample_column].strip()!r}, neither "
                "abnormal (1, true, yes, abnormal, ood) nor normal (0, false, no, normal, "
                "healthy, id); leave it empty if unknown",
            )
        name = (row.get(name_column) or "").strip() if name_column else ""
        cases.append(
            Case(
                name or strip_volume_suffix(image.name),
                image,
                _resolve(path.parent, row.get(mask_column, "")) if mask_column else None,
                dict(row),
                label,
                anomalous,
            )
        )
    return cases


def _uad_label(image: Path) -> Path | None:
    """UAD-IMAG's lesion mask beside a scan: ``<prefix>_seg-anomaly_mask.nii.gz`` for
    ``<prefix>_<suffix>.nii.gz``; None when there is none (a healthy scan)."""
    stem = strip_volume_suffix(image.name)
    prefix = stem.rsplit("_", 1)[0] if "_" in stem else stem
    candidate = image.parent / (prefix + UAD_LABEL_SUFFIX)
    return candidate if candidate.exists() else None


def is_mood_layout(path: str | os.PathLike) -> bool:
    """True for a folder with ``pixel/data`` or ``pixel/label`` (as ``medood-synth`` writes)."""
    path = Path(path)
    return (path / "pixel" / "data").is_dir() or (path / "pixel" / "label").is_dir()


def read_sample_label(path: Path) -> bool:
    """A MOOD sample label file: one number, >= 0.5 means abnormal."""
    try:
        return float(path.read_text().strip()) >= 0.5
    except ValueError as exc:
        raise VolumeError(path, "a sample label must hold one number (0 or 1)") from exc


def _from_mood(root: Path) -> list[Case]:
    data, labels, masks = root / "pixel" / "data", root / "pixel" / "label", root / "pixel" / "mask"
    sample_labels = root / "sample" / "label"
    source = data if data.is_dir() else labels
    cases = []
    for image in sorted(source.glob("*.nii*")):
        label = labels / image.name if (labels / image.name).exists() else None
        flag = sample_labels / f"{image.name}.txt"
        anomalous = read_sample_label(flag) if flag.exists() else None
        mask = masks / image.name if (masks / image.name).exists() else None
        cases.append(
            Case(strip_volume_suffix(image.name), data / image.name, mask, {}, label, anomalous)
        )
    if not cases:
        raise VolumeError(root, "MOOD layout without pixel/data/*.nii.gz or pixel/label/*.nii.gz")
    return cases


def _from_bids(root: Path, suffix: str) -> list[Case]:
    images = sorted(root.glob(f"sub-*/anat/*_{suffix}.nii*")) + sorted(
        root.glob(f"sub-*/ses-*/anat/*_{suffix}.nii*")
    )
    if not images:
        raise VolumeError(root, f"BIDS dataset without sub-*/[ses-*/]anat/*_{suffix}.nii[.gz]")
    derivatives = root / "derivatives"
    cases = []
    for image in images:
        name = strip_volume_suffix(image.name)
        entities = name[: -len(suffix)].rstrip("_")  # sub-01_ses-1
        mask = None
        if derivatives.is_dir():
            found = sorted(derivatives.rglob(f"{entities}*mask.nii*"))
            mask = found[0] if found else None
        label = _uad_label(image)
        cases.append(Case(name, image, mask, {}, label, label is not None))
    return cases


def discover_labels(
    source: str | os.PathLike, masks: str | os.PathLike | None = None
) -> list[Case]:
    """The labelled cases of an evaluation set: a MOOD layout, a CSV, a BIDS dataset, or a
    plain folder of labels as MOOD's own evaluator takes it (``<case>.nii.gz`` label maps
    named like the predicted maps, and/or ``<case>.nii.gz.txt`` sample labels)."""
    source = Path(source)
    if source.is_dir() and not is_mood_layout(source) and not is_bids(source):
        return _from_label_folder(source, masks)
    cases = discover_cases(source, masks=masks)
    if cases and all(case.label is None and case.anomalous is None for case in cases):
        columns = ""
        if source.suffix.lower() == ".csv":
            columns = f" (no Label or Anomalous column; found: {', '.join(cases[0].info)})"
        raise VolumeError(
            source,
            f"gives no case a label map or a sample label{columns}; expected {LABEL_LAYOUTS}",
        )
    return cases


def _from_label_folder(folder: Path, masks: str | os.PathLike | None) -> list[Case]:
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    maps = {p.name: p for p in files if volume_suffix(p)}
    flags = {p.name[: -len(".txt")]: p for p in files if p.name.endswith(".txt")}
    if not maps and not flags:
        raise VolumeError(folder, f"holds no labels: expected {LABEL_LAYOUTS}")
    if maps:
        _check_label_map(next(iter(maps.values())), folder)
    cases = []
    for name in sorted(set(maps) | set(flags)):
        anomalous = read_sample_label(flags[name]) if name in flags else None
        mask = find_mask(masks, folder / name) if masks is not None else None
        cases.append(
            Case(strip_volume_suffix(name), folder / name, mask, {}, maps.get(name), anomalous)
        )
    return cases


LABEL_LAYOUTS = (
    "a MOOD layout (pixel/label, sample/label), a CSV with Path and Label columns, a BIDS "
    "dataset, or a folder of <case>.nii.gz label maps and/or <case>.nii.gz.txt sample labels "
    "named like the predictions"
)


def _check_label_map(path: Path, folder: Path) -> None:
    """Refuse a folder of scans given where label maps are expected."""
    import numpy as np

    from napari_medood.io.readers import read_volume

    data = read_volume(path).data
    values = np.unique(data[:: max(1, data.shape[0] // 16)])
    if values.size > 256 or not np.all(np.equal(np.mod(values, 1), 0)):
        raise VolumeError(
            folder,
            f"holds scans, not label maps ({path.name} has {values.size} distinct, not only "
            f"whole-number values); expected {LABEL_LAYOUTS}",
        )
