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
    """Arrays ready for the network (float32, 3D each), their labels (or None), names, and
    the subject each array comes from (None: one subject each; random-contrast copies share
    their scan's)."""

    arrays: list[np.ndarray]
    labels: np.ndarray | None
    names: list[str]
    subjects: list[int] | None = None

    def __len__(self) -> int:
        return len(self.arrays)

    def subject_of(self, index):
        """The subject of array ``index`` (an int or an integer array)."""
        if self.subjects is None:
            return index
        return np.asarray(self.subjects)[index]


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


def load_scans(
    source: str,
    masks: str | None,
    spec: Mapping[str, Any],
    contrast_copies: int = 0,
    contrast_groups: str = "dlmuse",
    seed: int = 0,
) -> VolumeSet:
    """Scans brought to the network's input by ``spec`` (no labels; model-space scans as
    whole crops, cut into windows after augmentation). With ``contrast_copies``, each scan
    is followed by that many healthy copies drawn in random contrasts from its parcellation
    (its mask file; :func:`random_contrast_copies`)."""
    from napari_medood.io.cohort import discover_cases
    from napari_medood.io.readers import read_volume
    from napari_medood.preprocessing.feature_input import feature_crop
    from napari_medood.preprocessing.masks import load_mask

    cases = discover_cases(source, masks=masks)
    if contrast_copies:
        return random_contrast_copies(cases, spec, contrast_copies, contrast_groups, seed)
    arrays, names = [], []
    for case in cases:
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


def random_contrast_copies(
    cases, spec: Mapping[str, Any], copies: int, groups: str, seed: int
) -> VolumeSet:
    """Each scan's model-space crop, then ``copies`` healthy copies of it drawn from its
    parcellation in random contrasts (the draw contrast-randomised detectors train on,
    ``training.data.draw_random_contrast``, at the recipe's spacing; seeded by ``seed`` and
    the scan's place), for a feature model of a detector that reads any MR contrast."""
    from napari_medood.preprocessing.feature_input import model_space_crop
    from napari_medood.preprocessing.model_space import ModelSpace
    from napari_medood.training.data import (
        contrast_randomiser,
        draw_random_contrast,
        prepare_scans,
    )

    if spec.get("kind") != "model-space":
        raise MedoodError("random-contrast copies need a detector's encoder (model-space input)")
    preprocessing = spec["preprocessing"]
    space = ModelSpace.from_card(preprocessing)
    randomiser = contrast_randomiser(groups, space.spacing, lesions=(0, 0))
    arrays, names, subjects = [], [], []
    for index, scan in enumerate(prepare_scans(cases, space, labels=True)):
        rng = np.random.default_rng([seed, index])
        arrays.append(model_space_crop(scan.image, scan.mask, spec))
        names.append(scan.name)
        for copy in range(copies):
            image, _ = draw_random_contrast(
                randomiser, scan, rng, preprocessing.get("normalisation")
            )
            arrays.append(model_space_crop(image, scan.mask, spec))
            names.append(f"{scan.name} contrast {copy + 1}")
        subjects += [index] * (copies + 1)
    if not arrays:
        raise MedoodError("no scans found")
    return VolumeSet(arrays, None, names, subjects)


def load_source(
    source: str,
    spec: Mapping[str, Any],
    masks: str | None = None,
    contrast_copies: int = 0,
    contrast_groups: str = "dlmuse",
    seed: int = 0,
) -> VolumeSet:
    if is_npz_source(source):
        if contrast_copies:
            raise MedoodError(f"{source}: random-contrast copies need scans with parcellations")
        return load_npz(source, spec.get("shape"))
    return load_scans(source, masks, spec, contrast_copies, contrast_groups, seed)
