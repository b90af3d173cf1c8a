"""Anomaly-free training samples as supervision (the Med-OoD method, methods.md section 4, in 3D).

Med-OoD adds to a segmenter's training set copies of its images whose labelled objects are
removed, labelled all background, and keeps only the "hard" ones: those on which the baseline
model still predicts foreground. How many it adds is chosen by the share of positive and
negative samples in the mix (the reference picks the fraction of hard samples whose
positive/negative ratio is closest to 0.65). This module holds the three data steps, for
any family that trains:

- :func:`remove_objects`: the image with its labelled voxels removed, either blacked out (the
  reference) or filled with the surrounding healthy tissue (biharmonic inpainting, so that the
  sample is a plausible healthy brain rather than one with holes);
- :func:`hard_negatives`: the samples on which a baseline predicts any foreground;
- :func:`choose_ood_fraction`: the reference's ratio rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: how labelled objects are removed
REMOVAL_MODES = ("black", "inpaint")
#: the reference's positive/negative target ratio and the fractions it tries
TARGET_RATIO = 0.65
FRACTIONS = tuple(round(0.1 * i, 1) for i in range(11))


def remove_objects(
    image: np.ndarray,
    labels: np.ndarray,
    mode: str = "inpaint",
    mask: np.ndarray | None = None,
    margin: int = 1,
) -> np.ndarray:
    """``image`` with every voxel of ``labels > 0`` removed; every other voxel is kept as it
    is. ``black`` sets them to 0, as the reference does; ``inpaint`` fills them from the
    tissue around them (scikit-image's biharmonic inpainting, one region at a time), with the
    objects grown by ``margin`` voxels first so that their partial-volume rim does not leak
    into the fill (the rim is filled too). ``mask`` (the brain) bounds what is filled: voxels
    outside it stay as they are. The sample's label is all background."""
    from scipy import ndimage

    from napari_medood.errors import look_up_option

    look_up_option(mode, REMOVAL_MODES, "removal mode")
    image = np.asarray(image)
    objects = np.asarray(labels) > 0
    if objects.shape != image.shape:
        raise ValueError(f"labels {objects.shape} and image {image.shape} differ in shape")
    out = np.array(image, dtype=np.float32, copy=True)
    if not objects.any():
        return out
    if mode == "black":
        out[objects] = 0.0
        return out
    from skimage.restoration import inpaint_biharmonic

    removed = ndimage.binary_dilation(objects, iterations=margin) if margin else objects
    if mask is not None:
        removed &= np.asarray(mask, dtype=bool) | objects
    # inpaint each object within its own box (plus a rim of known tissue): the solve is
    # local, and a brain-sized system would be slow
    regions, count = ndimage.label(removed)
    for index, box in enumerate(ndimage.find_objects(regions), start=1):
        grown = tuple(
            slice(max(s.start - 4, 0), min(s.stop + 4, n))
            for s, n in zip(box, image.shape, strict=True)
        )
        hole = regions[grown] == index
        # other removed voxels in the box are not known tissue either
        unknown = regions[grown] > 0
        filled = inpaint_biharmonic(out[grown], unknown)
        out[grown][hole] = filled[hole].astype(np.float32)
    return out


@dataclass(frozen=True)
class OoDSample:
    """An anomaly-free sample made from a labelled one: its image with the objects removed
    (label all background), and whether the baseline still predicted foreground on it."""

    name: str
    image: np.ndarray
    hard: bool


def hard_negatives(
    images: Sequence[np.ndarray],
    predict: Callable[[np.ndarray], np.ndarray],
    threshold: float = 0.5,
    names: Sequence[str] | None = None,
    masks: Sequence[np.ndarray] | None = None,
    min_voxels: int = 1,
) -> list[OoDSample]:
    """Each anomaly-free image with ``hard`` set where ``predict`` (the baseline model: an
    image to a foreground probability map) puts at least ``min_voxels`` voxels above
    ``threshold``: with the default 1, the reference's IoU < 1 against an all-background
    label. ``masks`` (one per image) limit the count to the voxels that matter (the brain).
    Keep ``[s for s in ... if s.hard]``."""
    names = list(names) if names is not None else [f"ood_{i:04d}" for i in range(len(images))]
    masks = list(masks) if masks is not None else [None] * len(images)
    if len(masks) != len(images):
        raise ValueError(f"{len(masks)} masks for {len(images)} images")
    out = []
    for name, image, mask in zip(names, images, masks, strict=True):
        fired = np.asarray(predict(image)) > threshold
        if mask is not None:
            fired &= np.asarray(mask, dtype=bool)
        out.append(OoDSample(name, image, int(np.count_nonzero(fired)) >= max(int(min_voxels), 1)))
    return out


def choose_ood_fraction(
    positive: Sequence[bool],
    negative: Sequence[bool],
    hard: int,
    target: float = TARGET_RATIO,
    fractions: Sequence[float] = FRACTIONS,
) -> float:
    """The reference's rule: the fraction r of the ``hard`` negatives to add such that the
    training mix's positive/negative count ratio is closest to ``target``. ``positive`` and
    ``negative`` flag each training sample as holding foreground and background (a mixed
    sample counts as both); every added sample is negative only. Ties go to the smaller r."""
    positives = int(np.count_nonzero(positive))
    negatives = int(np.count_nonzero(negative))
    best, best_gap = 0.0, np.inf
    for r in fractions:
        added = int(round(float(r) * hard))
        denominator = negatives + added
        ratio = positives / denominator if denominator else np.inf
        gap = abs(ratio - target)
        if gap < best_gap - 1e-12:
            best, best_gap = float(r), gap
    return best
