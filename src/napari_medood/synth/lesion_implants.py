"""Real lesion shapes implanted into a brain image of any contrast, each given an intensity of
its own relative to the tissue it replaces: what a lesion segmenter trains on when it has
healthy scans only (``medood-train seg`` with ``implant_lesions``).

A lesion's intensity is the tissue under it times a factor drawn per lesion: below 1 (darker,
as MS plaques are in T1) or above 1 (brighter, as they are in T2 and FLAIR); which of the two
is drawn once per image, as one contrast shows a scan's lesions with one polarity. The edge is
blurred over a few voxels (partial volume, ``synth.anomaly.implant``), and the label is where
a lesion's opacity reaches half of its own peak.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: the polarity of an image's lesions: chosen at random, or always darker / brighter
POLARITIES = ("any", "darker", "brighter")


@dataclass
class LesionImplanter:
    """Implants ``count`` real lesion shapes into an image (see the module's docstring).

    Attributes:
        darker, brighter: the ranges of the factor on the tissue intensity.
        polarity: ``any`` (each image's drawn at random), ``darker`` or ``brighter``.
        box: the side (voxels, min and max) of the box a lesion shape is drawn into.
        min_voxels: smaller shapes are drawn again (up to five times).
        edge: the edge blur kernel (voxels; 1 = hard edges).
        spacing: the image's voxel size (mm), for the shapes' physical size.
        bank: real lesion shapes (default: the bank shipped with napari-medood).
    """

    darker: tuple[float, float] = (0.45, 0.8)
    brighter: tuple[float, float] = (1.3, 2.0)
    polarity: str = "any"
    box: tuple[int, int] = (6, 20)
    min_voxels: int = 8
    edge: int = 3
    spacing: Sequence[float] = (2.0, 2.0, 2.0)
    bank: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.polarity not in POLARITIES:
            raise ValueError(f"polarity must be one of {', '.join(POLARITIES)}")
        if not 0 < self.darker[0] <= self.darker[1] < 1:
            raise ValueError("darker factors must lie within (0, 1)")
        if not 1 < self.brighter[0] <= self.brighter[1]:
            raise ValueError("brighter factors must be above 1")
        if not 1 <= self.box[0] <= self.box[1]:
            raise ValueError("box must be (min, max) sides of at least one voxel")

    def __call__(
        self, image: np.ndarray, brain: np.ndarray, count: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """``(image with lesions, binary target as float32, what was drawn)``; lesions are
        centred on brain voxels and cut to the brain; ``image`` is not modified."""
        from napari_medood.synth.anomaly import implant

        if self.bank is None:
            from napari_medood.synth.lesions import LesionShapeBank

            self.bank = LesionShapeBank.default()
        out = np.array(image, dtype=np.float32)
        target = np.zeros(image.shape, np.float32)
        inside = np.flatnonzero(brain)
        brighter = (
            self.polarity == "brighter" if self.polarity != "any" else bool(rng.random() < 0.5)
        )
        drawn = []
        if inside.size == 0:
            return out, target, {"brighter": brighter, "lesions": drawn}
        for _ in range(int(count)):
            side = int(rng.integers(self.box[0], self.box[1] + 1))
            for _ in range(5):  # at coarse spacings the smallest real lesions are a voxel or two
                shape = self.bank.sample(side, rng, spacing=self.spacing)
                if shape.voxels >= self.min_voxels:
                    break
            centre = np.asarray(
                np.unravel_index(int(inside[rng.integers(inside.size)]), brain.shape)
            )
            # the shape's own crop centred on the voxel (its box may be far larger)
            corner = centre - np.asarray(shape.offset) - np.asarray(shape.mask.shape) // 2
            factor = float(rng.uniform(*(self.brighter if brighter else self.darker)))

            def tissue_times(start, stop, f=factor):
                box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
                return out[box] * f

            placed = implant(
                out, shape, corner, 1.0, tissue_times, self.edge, foreground=brain, out=out
            )
            # where its opacity reaches half its own peak: a small shape, blurred at its
            # edge, may never reach half of full opacity, and is still visible
            peak = float(placed.alpha_map.max())
            label = placed.alpha_map >= 0.5 * peak if peak > 0 else placed.alpha_map > 0
            if label.any():
                target[placed.region] = np.maximum(target[placed.region], label)
                drawn.append({"voxels": int(label.sum()), "factor": round(factor, 3)})
        return out, target, {"brighter": brighter, "lesions": drawn}
