"""Cohorts of scans: a folder, a CSV list (UAD-IMAG style) or a BIDS dataset, with masks.

A :class:`Case` is one scan and, optionally, its brain/foreground mask. Masks come from the
CSV's mask column, from a BIDS derivative, or from a folder of masks named like the scans
(the same name, or the scan's name followed by ``_something``).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from napari_medood.errors import MedoodError, VolumeError, VolumeNotFoundError
from napari_medood.io.discovery import find_volumes
from napari_medood.io.formats import strip_volume_suffix, volume_suffix

PATH_COLUMNS = ("path", "image", "img_path", "filename")
MASK_COLUMNS = ("mask", "mask_path", "brain_mask", "brainmask")
NAME_COLUMNS = ("name", "case", "id", "subject", "participant_id")


@dataclass(frozen=True)
class Case:
    """One scan of a cohort: a name, the image, an optional mask and free columns."""

    name: str
    image: Path
    mask: Path | None = None
    info: dict[str, str] = field(default_factory=dict)


def find_mask(mask_source: str | os.PathLike, image: str | os.PathLike) -> Path:
    """The mask for ``image``: ``mask_source`` itself if it is a file, else the file in that
    folder named like the image (same name, or the image's name + ``_...``).

    Raises:
        VolumeError: no mask, or several candidates.
    """
    mask_source, image = Path(mask_source), Path(image)
    if mask_source.is_file():
        return mask_source
    if not mask_source.is_dir():
        raise VolumeNotFoundError(mask_source, "no such mask file or folder")
    stem = strip_volume_suffix(image.name)
    candidates = [p for p in sorted(mask_source.iterdir()) if volume_suffix(p)]
    exact = [p for p in candidates if strip_volume_suffix(p.name) == stem]
    if exact:
        return exact[0]
    prefixed = [p for p in candidates if strip_volume_suffix(p.name).startswith(stem + "_")]
    if len(prefixed) == 1:
        return prefixed[0]
    if not prefixed:
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
        raise VolumeNotFoundError(source, "no such file or folder")
    if source.is_file() and source.suffix.lower() == ".csv":
        cases = _from_csv(source)
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
        cases = [Case(c.name, c.image, find_mask(masks, c.image), c.info) for c in cases]
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise MedoodError(f"{source}: several scans share the name(s) {', '.join(duplicates)}")
    return cases


def _column(header: list[str], options: tuple[str, ...]) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    return next((lowered[o] for o in options if o in lowered), None)


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
    cases = []
    for row in rows:
        image = Path(row[path_column])
        image = image if image.is_absolute() else path.parent / image
        mask_text = (row.get(mask_column) or "").strip() if mask_column else ""
        mask = None
        if mask_text:
            mask = Path(mask_text) if Path(mask_text).is_absolute() else path.parent / mask_text
        name = (row.get(name_column) or "").strip() if name_column else ""
        cases.append(Case(name or strip_volume_suffix(image.name), image, mask, dict(row)))
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
        cases.append(Case(name, image, mask))
    return cases
