"""Preprocessing: intensity presets, resampling there and back, masks, crop and paste back."""

from napari_medood.preprocessing.crop import CropBox, crop, foreground_box, paste
from napari_medood.preprocessing.intensity import NORMALISATIONS, normalise
from napari_medood.preprocessing.masks import (
    align_to_grid,
    check_mask,
    load_mask,
    mask_from_threshold,
)
from napari_medood.preprocessing.resample import (
    grid_with_spacing,
    resample_to_grid,
    resample_to_spacing,
)

__all__ = [
    "NORMALISATIONS",
    "CropBox",
    "align_to_grid",
    "check_mask",
    "crop",
    "foreground_box",
    "grid_with_spacing",
    "load_mask",
    "mask_from_threshold",
    "normalise",
    "paste",
    "resample_to_grid",
    "resample_to_spacing",
]
