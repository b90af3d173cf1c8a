"""Labelled volumes for the classifier and the feature-OOD heads.

A data source is either a MedMNIST 3D archive with its split, ``path.npz:train`` (uint8
crops, scaled to [0, 1]; labels from ``<split>_labels``), or scans (file, folder, CSV or BIDS)
read and brought to the model's input by a feature-input recipe
(``preprocessing.feature_input``), with their masks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_medood.errors import MedoodError


@dataclass
class VolumeSet:
    """Arrays ready for the network (float32, 3D each), their labels (or None), names."""

    arrays: list[np.ndarray]
    labels: np.ndarray | None
    names: list[str]

    def __len__(self) -> int:
        return len(self.arrays)


def is_npz_source(source: str) -> bool:
    path, _, _ = str(source).rpartition(":")
    return bool(path) and path.endswith(".npz")


def load_npz(source: str, shape=None) -> VolumeSet:
    """``path.npz:split`` of a MedMNIST 3D archive."""
    from napari_medood.preprocessing.feature_input import resize_to

    path, _, split = str(source).rpartition(":")
    if not Path(path).is_file():
        raise MedoodError(f"{path}: no such MedMNIST archive")
    with np.load(path) as archive:
        key = f"{split}_images"
        if key not in archive.files:
            splits = sorted(k[: -len("_images")] for k in archive.files if k.endswith("_images"))
            raise MedoodError(f"{path}: no split {split!r} (valid: {', '.join(splits)})")
        images = archive[key].astype(np.float32) / 255.0
        labels = archive[f"{split}_labels"].reshape(len(images), -1)[:, 0].astype(np.int64)
    arrays = [
        im if shape is None or tuple(im.shape) == tuple(shape) else resize_to(im, shape)
        for im in images
    ]
    return VolumeSet(arrays, labels, [f"{split}_{i:04d}" for i in range(len(arrays))])


def load_scans(source: str, masks: str | None, spec: Mapping[str, Any]) -> VolumeSet:
    """Scans brought to the network's input by ``spec`` (no labels; model-space scans as
    whole crops, cut into windows after augmentation)."""
    from napari_medood.io.cohort import discover_cases
    from napari_medood.io.readers import read_volume
    from napari_medood.preprocessing.feature_input import feature_crop
    from napari_medood.preprocessing.masks import load_mask

    arrays, names = [], []
    for case in discover_cases(source, masks=masks):
        volume = read_volume(case.image)
        mask = load_mask(case.mask, volume.grid) if case.mask is not None else None
        if mask is None:
            from napari_medood.preprocessing.masks import mask_from_threshold

            mask = mask_from_threshold(volume.data, "otsu")
        arrays.append(feature_crop(volume, mask, spec))
        names.append(case.name)
    if not arrays:
        raise MedoodError(f"{source}: no scans found")
    return VolumeSet(arrays, None, names)


def load_source(source: str, spec: Mapping[str, Any], masks: str | None = None) -> VolumeSet:
    if is_npz_source(source):
        return load_npz(source, spec.get("shape"))
    return load_scans(source, masks, spec)
