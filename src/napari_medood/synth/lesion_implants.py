"""Real lesion shapes implanted into a brain image of any contrast, each given an intensity of
its own relative to the tissue it replaces: what a lesion segmenter trains on when it has
healthy scans only (``medood-train seg`` with ``implant_lesions``).

With ``tumour_p``, an image may also get one tumour-like lesion: a larger real shape (the
core) inside a halo a few millimetres wide, the halo changed half as much as the core, in the
same direction (oedema around a mass); its label covers both, as a whole-tumour label does.

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
        tumour_p: the probability that an image also gets one tumour-like lesion;
        tumour_box: the side (voxels, min and max) of its core's box; halo_mm: the width
        (mm, min and max) of its halo.
    """

    darker: tuple[float, float] = (0.45, 0.8)
    brighter: tuple[float, float] = (1.3, 2.0)
    polarity: str = "any"
    box: tuple[int, int] = (6, 20)
    min_voxels: int = 8
    edge: int = 3
    spacing: Sequence[float] = (2.0, 2.0, 2.0)
    bank: Any = field(default=None, repr=False)
    tumour_p: float = 0.0
    tumour_box: tuple[int, int] = (14, 28)
    halo_mm: tuple[float, float] = (4.0, 10.0)

    def __post_init__(self) -> None:
        if self.polarity not in POLARITIES:
            raise ValueError(f"polarity must be one of {', '.join(POLARITIES)}")
        if not 0 < self.darker[0] <= self.darker[1] < 1:
            raise ValueError("darker factors must lie within (0, 1)")
        if not 1 < self.brighter[0] <= self.brighter[1]:
            raise ValueError("brighter factors must be above 1")
        if not 1 <= self.box[0] <= self.box[1] or not 1 <= self.tumour_box[0] <= self.tumour_box[1]:
            raise ValueError("box and tumour_box must be (min, max) sides of at least one voxel")
        if not 0 <= self.tumour_p <= 1 or not 0 <= self.halo_mm[0] <= self.halo_mm[1]:
            raise ValueError("tumour_p must be within [0, 1] and halo_mm (min, max) >= 0")

    def __call__(
        self, image: np.ndarray, brain: np.ndarray, count: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """``(image with lesions, binary target as float32, what was drawn)``; lesions are
        centred on brain voxels and cut to the brain; ``image`` is not modified."""
        if self.bank is None:
            from napari_medood.synth.lesions import LesionShapeBank

            self.bank = LesionShapeBank.default()
        out = np.array(image, dtype=np.float32)
        target = np.zeros(image.shape, np.float32)
        inside = np.flatnonzero(brain)
        brighter = (
            self.polarity == "brighter" if self.polarity != "any" else bool(rng.random() < 0.5)
        )
        drawn: list[dict] = []
        info = {"brighter": brighter, "lesions": drawn}
        if inside.size == 0:
            return out, target, info
        for _ in range(int(count)):
            shape = self._shape(self.box, rng)
            centre = np.unravel_index(int(inside[rng.integers(inside.size)]), brain.shape)
            factor = float(rng.uniform(*(self.brighter if brighter else self.darker)))
            voxels = self._place(image, out, target, brain, shape, centre, factor)
            if voxels:
                drawn.append({"voxels": voxels, "factor": round(factor, 3)})
        if self.tumour_p > 0 and rng.random() < self.tumour_p:
            info["tumour"] = self._tumour(image, out, target, brain, inside, brighter, rng)
        return out, target, info

    def _shape(self, box: tuple[int, int], rng: np.random.Generator):
        side = int(rng.integers(box[0], box[1] + 1))
        for _ in range(5):  # at coarse spacings the smallest real lesions are a voxel or two
            shape = self.bank.sample(side, rng, spacing=self.spacing)
            if shape.voxels >= self.min_voxels:
                break
        return shape

    def _place(self, image, out, target, brain, shape, centre, factor: float) -> int:
        """Fade ``shape`` (centred on ``centre``) into ``out`` at ``factor`` times the tissue
        of ``image`` (the scan as it was: overlapping lesions do not compound) and label it
        in ``target``; the voxels labelled."""
        from napari_medood.synth.anomaly import implant

        # the shape's own crop centred on the voxel (its box may be far larger)
        corner = np.asarray(centre) - np.asarray(shape.offset) - np.asarray(shape.mask.shape) // 2

        def tissue_times(start, stop):
            box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
            return np.asarray(image[box], dtype=np.float32) * factor

        placed = implant(
            out, shape, corner, 1.0, tissue_times, self.edge, foreground=brain, out=out
        )
        # where its opacity reaches half its own peak: a small shape, blurred at its edge,
        # may never reach half of full opacity, and is still visible
        peak = float(placed.alpha_map.max())
        label = placed.alpha_map >= 0.5 * peak if peak > 0 else placed.alpha_map > 0
        if label.any():
            target[placed.region] = np.maximum(target[placed.region], label)
        return int(label.sum())

    def _tumour(self, image, out, target, brain, inside, brighter: bool, rng) -> dict:
        """A core (a larger real shape) inside a halo changed half as much, in the same
        direction; both labelled."""
        from scipy.ndimage import binary_dilation

        from napari_medood.synth.shapes import Shape

        core = self._shape(self.tumour_box, rng)
        spacing = float(np.mean(np.broadcast_to(np.asarray(self.spacing, float), (3,))))
        width = max(1, int(round(float(rng.uniform(*self.halo_mm)) / spacing)))
        padded = np.pad(core.mask, width)
        shell = binary_dilation(padded, iterations=width) & ~padded  # the halo around the core
        offset = tuple(int(o) - width for o in core.offset)
        halo = Shape(shell, offset, tuple(int(n) + 2 * width for n in core.box_shape), "halo")
        centre = np.unravel_index(int(inside[rng.integers(inside.size)]), brain.shape)
        factor = float(rng.uniform(*(self.brighter if brighter else self.darker)))
        halo_factor = 1.0 + 0.5 * (factor - 1.0)
        halo_voxels = self._place(image, out, target, brain, halo, centre, halo_factor)
        core_voxels = self._place(image, out, target, brain, core, centre, factor)
        return {
            "core_voxels": core_voxels,
            "halo_voxels": halo_voxels,
            "halo_mm": round(width * spacing, 1),
            "factor": round(factor, 3),
            "halo_factor": round(halo_factor, 3),
        }
