"""What kind of scan is this? Cheap facts that a model card can be compared with.

A :class:`ScanProfile` holds the scan's voxel spacing, the volume of its foreground (brain)
mask, the contrast its name or header claims (FLAIR, T2w, T1w, CT, ...), whether its
intensities look like CT Hounsfield units, and, when a brain mask is known, a tissue-contrast
ratio: the median intensity deep inside the brain (8-20 mm from its surface: mostly white
matter) over that near the surface (1-5 mm: mostly cortex). White matter is brighter than
cortex on T1-weighted MRI (ratio > 1) and darker on T2-weighted and FLAIR (ratio <= 1).
Training writes the profiles of its scans into the card; detectors compare each scan with
them before it is read (``detectors.compatibility``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_medood.errors import VolumeError, VolumeShapeError
from napari_medood.io.volume import Volume

#: file-name and header words -> the contrast they name (checked in this order)
CONTRAST_WORDS: tuple[tuple[str, str], ...] = (
    ("flair", "FLAIR"),
    ("t2flair", "FLAIR"),
    ("t2w", "T2w"),
    ("t2", "T2w"),
    ("pd", "PD"),
    ("pdw", "PD"),
    ("dwi", "DWI"),
    ("adc", "DWI"),
    ("swi", "SWI"),
    ("t1post", "T1w+contrast"),
    ("t1ce", "T1w+contrast"),
    ("t1gd", "T1w+contrast"),
    ("t1c", "T1w+contrast"),
    ("t1w", "T1w"),
    ("t1", "T1w"),
    ("mprage", "T1w"),
    ("ct", "CT"),
)
_WORD = re.compile(r"[a-z0-9]+")
DEEP_MM = (8.0, 20.0)
SUPERFICIAL_MM = (1.0, 5.0)


@dataclass(frozen=True)
class ScanProfile:
    """Facts about one scan (see the module docstring)."""

    spacing_mm: tuple[float, float, float]
    foreground_ml: float
    named_contrast: str | None = None
    looks_like_ct: bool = False
    deep_to_superficial: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def named_contrast(volume: Volume) -> str | None:
    """The contrast that the scan's file name or header description names, if any."""
    texts = []
    if volume.source is not None:
        texts.append(volume.source.name)
    header = volume.meta.get("nifti_header")
    if header is not None:
        texts.append(bytes(header["descrip"]).decode("latin-1", "ignore"))
    texts += [str(volume.meta[k]) for k in ("series_description", "modality") if volume.meta.get(k)]
    words = [w for text in texts for w in _WORD.findall(text.lower())]
    for word, contrast in CONTRAST_WORDS:
        if word in words:
            return contrast
    return None


def deep_to_superficial(
    data: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float]
) -> float | None:
    """Median intensity 8-20 mm inside the mask's surface over that 1-5 mm inside it (None
    when the mask is too thin to hold both shells)."""
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(mask, sampling=spacing)
    deep = (depth > DEEP_MM[0]) & (depth <= DEEP_MM[1])
    superficial = (depth > SUPERFICIAL_MM[0]) & (depth <= SUPERFICIAL_MM[1])
    if deep.sum() < 100 or superficial.sum() < 100:
        return None
    values = np.asarray(data, dtype=np.float32)
    low = float(np.percentile(values[mask], 1))
    outer = float(np.median(values[superficial])) - low
    inner = float(np.median(values[deep])) - low
    if outer <= 0:
        return None
    return round(inner / outer, 3)


def scan_profile(volume: Volume, mask: np.ndarray, brain_mask: bool) -> ScanProfile:
    """The profile of ``volume`` with its foreground ``mask``; ``brain_mask``: the mask is a
    real brain mask (given by the user), so the tissue-contrast ratio means something."""
    spacing = tuple(float(s) for s in volume.spacing)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    data = volume.data
    # air around a CT reads about -1000 HU; no MR intensity goes below -500
    sample = np.asarray(data).ravel()[:: max(1, data.size // 200_000)]
    low = float(np.percentile(sample, 1)) if sample.size else 0.0
    return ScanProfile(
        spacing_mm=spacing,  # type: ignore[arg-type]
        foreground_ml=round(float(mask.sum()) * voxel_ml, 1),
        named_contrast=named_contrast(volume),
        looks_like_ct=bool(np.issubdtype(data.dtype, np.number) and low < -500),
        deep_to_superficial=deep_to_superficial(data, mask, spacing) if brain_mask else None,
    )


#: a scan thinner than this along any axis holds nothing a detector can read
MIN_VOXELS = 8


def check_scan(volume: Volume) -> None:
    """Refuse a scan too small or too uniform to hold anything to detect."""
    if min(volume.shape) < MIN_VOXELS:
        size = "x".join(map(str, volume.shape))
        raise VolumeShapeError(
            volume.source,
            f"has only {size} voxels; a detector needs at least {MIN_VOXELS} along every axis",
        )
    data = volume.data
    low, high = float(data.min()), float(data.max())
    if low == high:
        raise VolumeError(
            volume.source, f"every voxel equals {low:g}: a constant scan holds nothing to detect"
        )
