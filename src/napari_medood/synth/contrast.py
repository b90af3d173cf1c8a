"""Images of any MRI contrast drawn from a label map (domain randomisation, as SynthSeg makes
its training images: Billot et al., Medical Image Analysis 2023), with lesion-like blobs.

A detector trained on one contrast learns what that contrast's healthy tissue looks like,
so a FLAIR or a T2 is abnormal everywhere to it. Trained on images whose tissue intensities
are drawn at random for every sample, it can only learn what stays true in every contrast:
tissue classes are homogeneous up to noise and a smooth bias, and their borders follow
anatomy. What breaks that (a blob brighter or darker than the tissue around it, a foreign
patch) is the anomaly.

The recipe, per sample (every draw from the caller's numpy generator, so a seed repeats it):

1. each tissue group gets a mean intensity uniform in ``mean_range`` and a within-tissue
   spread uniform in ``std_range`` (SynthSeg's Gaussian mixture); optionally, each label
   of a group deviates from the group's mean by ``label_jitter``.
   Groups matter with a fine parcellation: DLMUSE cuts the white matter into lobes along
   planes that are not tissue borders, and a random intensity per lobe would teach the
   network that a step inside white matter is normal. :data:`DLMUSE_STRUCTURES` groups
   DLMUSE's labels into the structures SynthSeg draws; a label set of whole structures
   (FreeSurfer's aseg, say) needs no grouping.
2. ``lesions`` blobs in real lesion shapes (the shipped lesion bank), each brighter or
   darker than the tissue under it by a contrast uniform in ``lesion_contrast``, faded in
   at the edges; the target is that fade (1 inside).
3. artefacts: TorchIO's blur (partial volume and resolution); a bias field as SynthSeg
   draws it (a 4^3 grid of log-gains, normal with a standard deviation uniform in
   [0, ``bias``], interpolated to the image and exponentiated: milliseconds, where TorchIO's
   polynomial field takes 0.4 s on a 2 mm head); then TorchIO's rescaling to [0, 1], gamma
   and Gaussian noise.

The label map's geometry is kept: the image is on the label map's grid, voxel for voxel.
Step 1 is a table lookup written here: TorchIO's ``RandomLabelsToImage`` draws one
intensity per label with no grouping and no per-label deviation within a group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_medood.synth._common import Seed, as_rng, tight_box


@dataclass
class ContrastSample:
    """One randomised image: ``image`` (float32, [0, 1] inside ``foreground``), ``target``
    (float32 lesion fade, 0 where there is no blob) and the drawn ``params``."""

    image: np.ndarray
    target: np.ndarray
    params: dict[str, Any]


def _muse_structures() -> dict[int, int]:
    # MUSE/DLMUSE label numbers (CBICA's MUSE ROI list) -> one group per structure, the two
    # hemispheres together, as SynthSeg draws its generation classes; the cortex (the MUSE
    # gyral ROIs, 100-207) and the cerebral white matter (the lobes, 81-95) are one
    # structure each, because the borders between their ROIs are not tissue borders
    structures = {
        "csf": (1, 4, 11, 46, 49, 50, 51, 52),
        "cortex": tuple(range(100, 208)),
        "white matter": (*range(81, 96), 69),
        "brain stem": (35,),
        "cerebellar cortex": (38, 39, 71, 72, 73),
        "cerebellar white matter": (40, 41),
        "accumbens": (23, 30),
        "amygdala": (31, 32),
        "caudate": (36, 37),
        "hippocampus": (47, 48),
        "pallidum": (55, 56),
        "putamen": (57, 58),
        "thalamus": (59, 60),
        "ventral DC": (61, 62),
        "basal forebrain": (75, 76),
    }
    return {label: g for g, labels in enumerate(structures.values(), 1) for label in labels}


#: DLMUSE parcellation labels -> structure groups (csf, cortex, white matter, brain stem,
#: cerebellar cortex and white matter, and each deep grey nucleus)
DLMUSE_STRUCTURES: dict[int, int] = _muse_structures()


@dataclass
class ContrastRandomiser:
    """Draws images of random contrast from a label map (see the module's docstring).

    Attributes:
        groups: ``{label: tissue group}`` (labels missing from it are groups of their own;
            None: every label is its own group, as in SynthSeg).
        mean_range, std_range: the tissue means and within-tissue spreads (image range 0-1).
        label_jitter: standard deviation of a label's mean around its group's (0: the
            labels of a group share its intensity; keep it 0 for groups whose inner label
            borders are not tissue borders).
        lesions: (fewest, most) blobs per image; lesion_contrast: their distance from the
            tissue under them (image range 0-1); lesion_box: side of the box a lesion shape
            is drawn into (voxels, min and max); min_lesion_voxels: smaller shapes are drawn
            again (up to five times).
        blur: Gaussian blur standard deviation (voxels, min and max); bias: the largest
            standard deviation of the bias field's log-gain; log_gamma: range of log(gamma); noise: standard deviation
            of the Gaussian noise after rescaling to [0, 1] (min and max).
        spacing: the label map's voxel size (mm), for lesion shapes and TorchIO.
        lesion_bank: real lesion shapes (default: the bank shipped with napari-medood).
    """

    groups: Mapping[int, int] | None = None
    mean_range: tuple[float, float] = (0.0, 1.0)
    std_range: tuple[float, float] = (0.0, 0.05)
    label_jitter: float = 0.0
    lesions: tuple[int, int] = (0, 3)
    lesion_contrast: tuple[float, float] = (0.15, 0.5)
    lesion_box: tuple[int, int] = (6, 20)
    min_lesion_voxels: int = 4
    blur: tuple[float, float] = (0.0, 1.0)
    bias: float = 0.5
    log_gamma: tuple[float, float] = (-0.4, 0.4)
    noise: tuple[float, float] = (0.0, 0.04)
    spacing: Sequence[float] = (2.0, 2.0, 2.0)
    lesion_bank: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("mean_range", "std_range", "lesions", "lesion_contrast", "lesion_box"):
            low, high = getattr(self, name)
            if low > high or low < 0:
                raise ValueError(f"{name} must be (low, high) with 0 <= low <= high")
        if self.lesion_box[0] < 1:
            raise ValueError("lesion_box must be at least one voxel")

    def _lookup(self, labels: np.ndarray, rng: np.random.Generator):
        """Per-label means and spreads (tables indexed by label)."""
        top = int(labels.max()) + 1
        group_of = np.arange(top)
        if self.groups is not None:
            offset = max(self.groups.values(), default=0) + 1
            group_of = group_of + offset  # labels without a group: a group of their own
            for label, group in self.groups.items():
                if 0 <= int(label) < top:
                    group_of[int(label)] = int(group)
        _, group_index = np.unique(group_of, return_inverse=True)
        n_groups = int(group_index.max()) + 1
        group_mean = rng.uniform(*self.mean_range, n_groups)
        group_std = rng.uniform(*self.std_range, n_groups)
        means = group_mean[group_index] + rng.normal(0.0, self.label_jitter, top)
        return means.astype(np.float32), group_std[group_index].astype(np.float32), n_groups

    def __call__(
        self, labels: np.ndarray, rng: Seed = None, foreground: np.ndarray | None = None
    ) -> ContrastSample:
        """One image of ``labels`` (integers >= 0) in a contrast drawn from ``rng``; blobs
        are placed inside ``foreground`` (default: every non-zero label)."""
        rng = as_rng(rng)
        labels = np.asarray(labels)
        if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError("labels must be a 3D array of integers")
        if labels.min() < 0:
            raise ValueError("labels must be >= 0")
        foreground = labels > 0 if foreground is None else np.asarray(foreground, dtype=bool)
        means, stds, n_groups = self._lookup(labels, rng)
        image = means[labels] + stds[labels] * rng.standard_normal(labels.shape, np.float32)
        target = np.zeros(labels.shape, np.float32)
        count = int(rng.integers(self.lesions[0], self.lesions[1] + 1)) if foreground.any() else 0
        drawn = [self._blob(image, target, foreground, rng) for _ in range(count)]
        image = self._artefacts(image, rng)
        return ContrastSample(
            image,
            target,
            {"groups": n_groups, "lesions": drawn, "seed_artefacts": "torch, from rng"},
        )

    def _blob(self, image, target, foreground, rng) -> dict:
        """Fade one lesion shape into ``image`` (in place) and record it in ``target``."""
        from napari_medood.synth.smoothing import smooth_alpha

        if self.lesion_bank is None:
            from napari_medood.synth.lesions import LesionShapeBank

            self.lesion_bank = LesionShapeBank.default()
        side = int(rng.integers(self.lesion_box[0], self.lesion_box[1] + 1))
        for _ in range(5):  # at coarse spacings the smallest real lesions are a voxel or two
            shape = self.lesion_bank.sample(side, rng, spacing=self.spacing)
            if shape.voxels >= self.min_lesion_voxels:
                break
        inside = np.argwhere(foreground)
        centre = inside[int(rng.integers(len(inside)))]
        start = centre - np.asarray(shape.mask.shape) // 2
        # the shape's crop, cut to the image
        lo = np.maximum(start, 0)
        hi = np.minimum(start + np.asarray(shape.mask.shape), image.shape)
        if np.any(hi <= lo):
            return {"voxels": 0}
        region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        crop = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start, strict=True))
        mask = np.zeros(image[region].shape, np.float32)
        mask[...] = shape.mask[crop]
        # the shape at full strength, faded out over about a voxel around it
        alpha = np.maximum(mask, np.clip(smooth_alpha(mask, 3), 0.0, 1.0)) * foreground[region]
        box = tight_box(alpha > 0)
        if box is None:
            return {"voxels": 0}
        tissue = (
            float(np.median(image[region][mask > 0])) if mask.any() else float(image[region].mean())
        )
        sign = 1.0 if rng.random() < 0.5 else -1.0
        delta = float(rng.uniform(*self.lesion_contrast))
        value = tissue + sign * delta
        if not 0.0 <= value <= 1.0:  # keep it inside the image range: turn the other way
            value = tissue - sign * delta
            sign = -sign
        spread = float(rng.uniform(*self.std_range))
        lesion = value + spread * rng.standard_normal(alpha.shape, np.float32)
        image[region] = (1 - alpha) * image[region] + alpha * lesion
        target[region] = np.maximum(target[region], alpha)
        return {
            "voxels": int((alpha >= 0.5).sum()),
            "centre": [int(c) for c in centre],
            "brighter": sign > 0,
            "contrast": round(delta, 3),
        }

    def _artefacts(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Blur, bias field, rescale, gamma and noise, seeded from ``rng``."""
        import torch
        import torchio as tio

        spacing = np.broadcast_to(np.asarray(self.spacing, dtype=np.float64), (3,))
        voxel = float(spacing.mean())  # TorchIO's blur is in mm
        gains = rng.normal(0.0, rng.uniform(0.0, self.bias), (4, 4, 4))
        image = image * np.exp(smooth_field(gains, image.shape)).astype(np.float32)
        # the subject is this function's own: TorchIO need not copy it at every transform
        blur = tio.RandomBlur(std=(self.blur[0] * voxel, self.blur[1] * voxel), copy=False)
        after = tio.Compose(
            [
                tio.RescaleIntensity(out_min_max=(0.0, 1.0), copy=False),
                tio.RandomGamma(log_gamma=tuple(self.log_gamma), copy=False),
                tio.RandomNoise(std=tuple(self.noise), copy=False),
            ],
            copy=False,
        )
        subject = tio.Subject(
            image=tio.ScalarImage(
                tensor=torch.from_numpy(np.ascontiguousarray(image, np.float32))[None],
                affine=np.diag([*spacing, 1.0]),
            )
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**31 - 1)))
            out = after(blur(subject))
        return out["image"].data[0].numpy().astype(np.float32, copy=False)


def _linear_weights(coarse: int, fine: int) -> np.ndarray:
    """``(fine, coarse)`` weights of linear interpolation from a grid of ``coarse`` cells
    to ``fine`` cells spanning the same extent (cell centres aligned, edges held: scipy's
    ``zoom(..., order=1, grid_mode=True, mode="nearest")`` along one axis)."""
    where = np.clip((np.arange(fine) + 0.5) * coarse / fine - 0.5, 0.0, coarse - 1.0)
    below = np.minimum(np.floor(where).astype(int), coarse - 2) if coarse > 1 else 0 * where
    weights = np.zeros((fine, coarse))
    if coarse == 1:
        weights[:, 0] = 1.0
        return weights
    above = where - below
    rows = np.arange(fine)
    weights[rows, below] = 1.0 - above
    weights[rows, below + 1] += above
    return weights


def smooth_field(coarse: np.ndarray, shape) -> np.ndarray:
    """The small 3D grid ``coarse`` interpolated (trilinearly) to ``shape``. Trilinear
    interpolation is separable, so it is three small matrix products: at a brain's size
    that is about twenty times faster than ``scipy.ndimage.zoom``, which gave the same
    field and was half the cost of drawing a random-contrast brain."""
    field = np.asarray(coarse, dtype=np.float64)
    for axis, length in enumerate(shape):
        weights = _linear_weights(field.shape[axis], int(length))
        field = np.moveaxis(np.tensordot(weights, field, axes=([1], [axis])), 0, axis)
    return field
