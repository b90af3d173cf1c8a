"""Training patches: normal scans in model space, corrupted on the fly with synthetic anomalies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_medood.io.cohort import Case
from napari_medood.preprocessing.model_space import ModelSpace
from napari_medood.preprocessing.profile import ScanProfile


@dataclass
class ModelSpaceScan:
    """A normal scan prepared as the model sees it: RAS, model spacing, normalised, masked."""

    name: str
    image: np.ndarray  # float32
    mask: np.ndarray  # bool
    profile: ScanProfile | None = None


def prepare_scans(cases: Sequence[Case], space: ModelSpace) -> list[ModelSpaceScan]:
    """Read each normal scan and put it into ``space`` (the model space that the card will
    describe): RAS, the model's spacing, normalised and masked."""
    from napari_medood.io.readers import read_volume
    from napari_medood.preprocessing.masks import load_mask, mask_from_threshold
    from napari_medood.preprocessing.profile import scan_profile

    scans = []
    for case in cases:
        volume = read_volume(case.image)
        mask = (
            load_mask(case.mask, volume.grid)
            if case.mask is not None
            else mask_from_threshold(volume.data, "otsu")
        )
        prepared = space.prepare(volume, mask)
        profile = scan_profile(volume, mask, brain_mask=case.mask is not None)
        scans.append(ModelSpaceScan(case.name, prepared.image, prepared.mask, profile))
    return scans


def expected_scans(
    scans: Sequence[ModelSpaceScan], space: ModelSpace, modality: str, contrast: str
) -> dict:
    """The card's ``expects`` entry: what the training scans were like, for the checks a
    detector makes before it reads a scan (``detectors.compatibility``)."""
    profiles = [scan.profile for scan in scans if scan.profile is not None]

    def span(values):
        values = [v for v in values if v is not None]
        return [round(min(values), 3), round(max(values), 3)] if values else None

    return {
        "modality": modality,
        "contrast": contrast,
        "spacing_mm": list(space.spacing) if space.spacing is not None else None,
        "foreground_ml": span(p.foreground_ml for p in profiles),
        "deep_to_superficial": span(p.deep_to_superficial for p in profiles),
        "scans": len(profiles),
    }


def random_patch(scan: ModelSpaceScan, size: Sequence[int], rng: np.random.Generator):
    """A random crop of ``size`` (zero-padded where the scan is smaller), biased to hold brain."""
    size = np.asarray(size)
    shape = np.asarray(scan.image.shape)
    pad = np.maximum(size - shape, 0)
    image, mask = scan.image, scan.mask
    if pad.any():
        widths = [(int(p) // 2, int(p) - int(p) // 2) for p in pad]
        image, mask = np.pad(image, widths), np.pad(mask, widths)
        shape = np.asarray(image.shape)
    # centre the crop on a random brain voxel, clamped to the volume
    brain = np.flatnonzero(mask)
    centre = np.asarray(np.unravel_index(int(brain[rng.integers(len(brain))]), mask.shape))
    start = np.clip(centre - size // 2, 0, shape - size)
    region = tuple(slice(int(a), int(a + s)) for a, s in zip(start, size, strict=True))
    return np.ascontiguousarray(image[region]), np.ascontiguousarray(mask[region])


class SyntheticAnomalyPatches:
    """A map-style dataset: item ``i`` is a (corrupted patch, soft target) pair drawn from its
    own generator ``[seed, i]``, so any process or worker reproduces it."""

    def __init__(
        self,
        scans: Sequence[ModelSpaceScan],
        patch: Sequence[int],
        length: int,
        seed: int = 0,
        p_anomaly: float = 0.9,
        fpi_fraction: float = 0.3,
        fp_size: int = 64,
        shape_weights: dict | None = None,
        spacing=(2.0, 2.0, 2.0),
        flip_p: float = 0.5,
    ):
        from napari_medood.synth.anomaly import SyntheticAnomaly3D

        self.scans = list(scans)
        self.patch = tuple(int(p) for p in patch)
        self.length = int(length)
        self.seed = int(seed)
        self.p_anomaly = p_anomaly
        self.fpi_fraction = fpi_fraction
        self.flip_p = flip_p
        self.foreign = SyntheticAnomaly3D(
            p_anomaly=1.0,
            fp_size=fp_size,
            spacing=spacing,
            axcodes=("R", "A", "S"),
            shape_weights=shape_weights or {"cuboid": 1, "sphere": 1, "brush": 1, "lesion": 2},
        )

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """``(image, target, kind)`` as float32 arrays of the patch size."""
        from napari_medood.synth.validation import EDGE_MODES, OUTLIER_KINDS, make_outlier

        rng = np.random.default_rng([self.seed, int(index)])
        scan = self.scans[int(rng.integers(len(self.scans)))]
        image, mask = random_patch(scan, self.patch, rng)
        if rng.random() < self.flip_p:  # left-right (RAS axis 0): brains are near symmetric
            image, mask = image[::-1].copy(), mask[::-1].copy()
        draw = rng.random()
        if draw >= self.p_anomaly or not mask.any():
            # keep the foreign-patch bank fed with normal tissue as well
            self.foreign.bank.push_from(image, rng)
            return image, np.zeros_like(image), "normal"
        if draw < self.p_anomaly * self.fpi_fraction:
            kind = str(rng.choice(OUTLIER_KINDS))
            corrupted, label, _ = make_outlier(
                image, kind, rng, foreground=mask, edges=str(rng.choice(EDGE_MODES)), reflect_axis=0
            )
            return corrupted, label.astype(np.float32), kind
        result = self.foreign.generate(image, rng, foreground=mask)
        return result.image, result.target, result.params.get("kind", "none")

    def __getitem__(self, index: int):
        import torch

        image, target, _ = self.sample(index)
        return torch.from_numpy(image)[None], torch.from_numpy(target)[None]


class OffsetSampler:
    """Indices ``rank + world * k`` for k from ``start`` on: each process its own samples, and
    a resumed run continues where it stopped."""

    def __init__(self, length: int, rank: int = 0, world: int = 1, start: int = 0):
        self.indices = list(range(rank + world * start, length, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
