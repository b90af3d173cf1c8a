"""How a scan of any size and spacing becomes the fixed input a feature network reads.

Two recipes, named in a feature-OOD card's ``input`` entry:

- ``resize`` (MedMNIST-style classifiers): the whole array resampled linearly to ``shape``
  and min-max scaled to [0, 1] (MedMNIST stores uint8 crops; the same scaling brings a CT in
  HU or an MRI in scanner units to the classifier's range);
- ``model-space`` (a detector's own encoder): the detector's model space (RAS, its spacing,
  its normalisation inside the brain mask, zero outside), cropped to the mask's bounding box
  plus ``margin`` voxels, zero-padded to a multiple of ``divisor`` so every encoder stage
  pools whole cells; with ``window``, cut into a grid of windows of that size (``stride``
  apart, default: the window), keeping those at least ``min_foreground`` inside the mask.
  Windows make the density model local (what does brain tissue look like here?) and give a
  few training scans many samples; a scan's confidence is the mean over its windows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from napari_medood.errors import MedoodError


def resize_to(array: np.ndarray, shape) -> np.ndarray:
    from scipy.ndimage import zoom

    array = np.asarray(array, dtype=np.float32)
    factors = [t / s for t, s in zip(shape, array.shape, strict=True)]
    out = zoom(array, factors, order=1, grid_mode=True, mode="nearest")
    return out[tuple(slice(0, t) for t in shape)].astype(np.float32)


def minmax01(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def pad_to_multiple(array: np.ndarray, divisor: int) -> np.ndarray:
    target = [int(np.ceil(s / divisor) * divisor) for s in array.shape]
    widths = [
        ((t - s) // 2, t - s - (t - s) // 2) for t, s in zip(target, array.shape, strict=True)
    ]
    return np.pad(array, widths)


def crop_to_mask(image: np.ndarray, mask: np.ndarray, margin: int) -> np.ndarray:
    from napari_medood.preprocessing.crop import foreground_box

    if not mask.any():
        raise MedoodError("the brain/foreground mask is empty: nothing to describe")
    return image[foreground_box(mask, margin).slices]


def feature_inputs(volume, mask: np.ndarray | None, spec: Mapping[str, Any]) -> list[np.ndarray]:
    """The 3D float32 arrays (one, or the windows) the feature network reads, by the card's
    ``input`` recipe."""
    kind = spec.get("kind")
    if kind == "resize":
        return [minmax01(resize_to(volume.data, spec["shape"]))]
    if kind == "model-space":
        from napari_medood.preprocessing.model_space import ModelSpace

        space = ModelSpace.from_card(spec["preprocessing"])
        prepared = space.prepare(volume, mask)
        return model_space_inputs(prepared.image, prepared.mask, spec)
    raise MedoodError(f"unknown feature input recipe {kind!r} (valid: resize, model-space)")


def feature_crop(volume, mask: np.ndarray | None, spec: Mapping[str, Any]) -> np.ndarray:
    """What a training view is made from: the resized volume, or the model-space crop
    (windows are cut after augmentation, by :func:`windows_of`)."""
    if spec.get("kind") == "model-space":
        from napari_medood.preprocessing.model_space import ModelSpace

        prepared = ModelSpace.from_card(spec["preprocessing"]).prepare(volume, mask)
        return model_space_crop(prepared.image, prepared.mask, spec)
    return feature_inputs(volume, mask, spec)[0]


def model_space_crop(image: np.ndarray, mask: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """The image (zero outside the mask) cropped to the mask's box and padded."""
    margin = int(spec.get("margin", 4))
    cropped = crop_to_mask(image, mask, margin).astype(np.float32)
    return pad_to_multiple(
        np.where(crop_to_mask(mask, mask, margin), cropped, 0.0), int(spec.get("divisor", 16))
    )


def windows_of(crop: np.ndarray, spec: Mapping[str, Any]) -> list[np.ndarray]:
    """The grid of windows of a model-space crop (the whole crop without ``window``);
    the foreground is where the crop is not zero (model space zeroes the outside)."""
    if "window" not in spec:
        return [np.ascontiguousarray(crop, dtype=np.float32)]
    window = [int(w) for w in spec["window"]]
    stride = [int(s) for s in spec.get("stride", window)]
    minimum = float(spec.get("min_foreground", 0.5))
    # pad up to one window so that small brains still give one
    widths = [
        (max(w - s, 0) // 2, max(w - s, 0) - max(w - s, 0) // 2)
        for w, s in zip(window, crop.shape, strict=True)
    ]
    image = np.pad(crop, widths)
    inside = image != 0
    starts = []
    for size, w, step in zip(image.shape, window, stride, strict=True):
        count = (size - w) // step + 1
        offset = (size - w - (count - 1) * step) // 2  # the grid centred on the box
        starts.append([offset + i * step for i in range(count)])
    windows, best, best_fraction = [], None, -1.0
    for a in starts[0]:
        for b in starts[1]:
            for c in starts[2]:
                box = (slice(a, a + window[0]), slice(b, b + window[1]), slice(c, c + window[2]))
                fraction = float(inside[box].mean())
                if fraction >= minimum:
                    windows.append(np.ascontiguousarray(image[box], dtype=np.float32))
                if fraction > best_fraction:
                    best, best_fraction = box, fraction
    return windows or [np.ascontiguousarray(image[best], dtype=np.float32)]


def model_space_inputs(
    image: np.ndarray, mask: np.ndarray, spec: Mapping[str, Any]
) -> list[np.ndarray]:
    """The ``model-space`` recipe on an image already in model space."""
    return windows_of(model_space_crop(image, mask, spec), spec)
