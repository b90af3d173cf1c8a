"""Training patches: normal scans in model space, corrupted on the fly with synthetic anomalies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_medood.io.cohort import Case
from napari_medood.preprocessing.model_space import ModelSpace
from napari_medood.preprocessing.profile import ScanProfile


def training_cases(source, masks=None) -> list[Case]:
    """The cases of a run's ``train`` (or ``val``) source, as ``io.cohort.discover_cases``
    reads them, after a CSV's rows are checked to name files that exist: a scan missing
    from a CSV is named by its row, rather than by what a later step could not find for
    it (its mask in a mask folder, say)."""
    from napari_medood.io.cohort import discover_cases

    check_csv_files(source, check_masks=masks is None)
    return discover_cases(source, masks=masks)


def check_csv_files(source, check_masks: bool = True) -> None:
    """Refuse a CSV ``source`` whose path column (or mask column, with ``check_masks``)
    names a file that does not exist, by row as a spreadsheet numbers it (the header is
    row 1); relative paths are relative to the CSV, as ``discover_cases`` reads them.
    Anything else is left to ``discover_cases``."""
    import csv
    from pathlib import Path

    from napari_medood.errors import VolumeNotFoundError
    from napari_medood.io.cohort import MASK_COLUMNS, PATH_COLUMNS

    table = Path(source)
    if not (table.is_file() and table.suffix.lower() == ".csv"):
        return
    with open(table, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        by_name = {name.strip().lower(): name for name in reader.fieldnames or []}
        columns = [("scan", next((by_name[c] for c in PATH_COLUMNS if c in by_name), None))]
        if check_masks:
            columns.append(("mask", next((by_name[c] for c in MASK_COLUMNS if c in by_name), None)))
        for row in reader:
            for what, column in columns:
                text = (row.get(column) or "").strip() if column else ""
                path = Path(text)
                path = path if path.is_absolute() else table.parent / path
                if text and not path.exists():
                    raise VolumeNotFoundError(
                        table, f"row {reader.line_num}: the {what} {path} does not exist"
                    )


def model_space(config) -> ModelSpace:
    """The model space of a run at ``config.spacing``: what training applies to its scans
    and the card describes, so that the detector replays it."""
    return ModelSpace(spacing=tuple(float(s) for s in config.spacing))


@dataclass
class ModelSpaceScan:
    """A normal scan prepared as the model sees it: RAS, model spacing, normalised, masked."""

    name: str
    image: np.ndarray  # float32
    mask: np.ndarray  # bool
    profile: ScanProfile | None = None
    labels: np.ndarray | None = None  # int32 parcellation in model space, for random contrasts
    lesion: np.ndarray | None = None  # bool lesion mask in model space, for a segmenter


def prepare_scans(
    cases: Sequence[Case], space: ModelSpace, labels: bool = False, lesions: bool = False
) -> list[ModelSpaceScan]:
    """Read each normal scan and put it into ``space`` (the model space that the card will
    describe): RAS, the model's spacing, normalised and masked. With ``labels``, each
    case's mask file must be a parcellation (DLMUSE, say: brain = label > 0); its labels
    come along in model space, for contrast randomisation. With ``lesions``, each case's
    label (its lesion mask, voxels > 0) comes along in model space."""
    from napari_medood.io.readers import read_volume
    from napari_medood.preprocessing.masks import check_mask, load_mask, mask_from_threshold
    from napari_medood.preprocessing.profile import scan_profile

    scans = []
    for case in cases:
        volume = read_volume(case.image)
        parcellation = _parcellation(case, volume) if labels else None
        if parcellation is not None:  # the file read once: its brain is the mask
            mask = check_mask(parcellation > 0, volume.grid, case.mask)
        elif case.mask is not None:
            mask = load_mask(case.mask, volume.grid)
        else:
            mask = mask_from_threshold(volume.data, "otsu")
        prepared = space.prepare(volume, mask)
        profile = scan_profile(volume, mask, brain_mask=case.mask is not None)
        label_map = None
        if parcellation is not None:
            label_map = space.labels_to_model(parcellation, prepared)
        lesion = _lesion_in_model_space(case, volume, space, prepared) if lesions else None
        scans.append(
            ModelSpaceScan(case.name, prepared.image, prepared.mask, profile, label_map, lesion)
        )
    return scans


def _lesion_in_model_space(case: Case, volume, space: ModelSpace, prepared) -> np.ndarray:
    from napari_medood.errors import MedoodError
    from napari_medood.io.readers import read_volume
    from napari_medood.preprocessing.masks import align_to_grid

    if case.label is None:
        raise MedoodError(
            f"{case.image}: a segmenter trains on scans with lesion masks, and this scan has "
            "none; give them in a CSV Label column (or a BIDS derivative)"
        )
    label = np.asarray(align_to_grid(read_volume(case.label), volume.grid).data) > 0
    return space.labels_to_model(label.astype(np.int32), prepared) > 0


def _parcellation(case: Case, volume) -> np.ndarray:
    """The case's mask file as integer labels on the scan's grid, checked to be a
    parcellation (many labels), not a brain mask."""
    from napari_medood.errors import MedoodError
    from napari_medood.io.readers import read_volume
    from napari_medood.preprocessing.masks import align_to_grid

    if case.mask is None:
        raise MedoodError(
            f"{case.image}: contrast randomisation draws images from a parcellation, and "
            "this scan has none; give parcellations (DLMUSE, say) as its masks"
        )
    data = np.asarray(align_to_grid(read_volume(case.mask), volume.grid).data)
    if not np.allclose(data, np.round(data)) or data.min() < 0:
        raise MedoodError(f"{case.mask}: a parcellation holds non-negative whole numbers")
    data = np.round(data).astype(np.int32)
    if np.unique(data[data > 0]).size < 2:
        raise MedoodError(
            f"{case.mask}: contrast randomisation needs a parcellation (many labels: "
            "DLMUSE, say), and this mask holds a single label"
        )
    return data


def smoothed(image: np.ndarray, mask: np.ndarray, sigma) -> np.ndarray:
    """``image`` as a lower-resolution acquisition or a resampled scan would show it: a
    Gaussian of ``sigma`` voxels per axis over the brain alone (normalised by the smoothed
    mask, so the brain's edge is not darkened by the zeros around it), zero outside."""
    from scipy.ndimage import gaussian_filter

    inside = mask.astype(np.float32)
    weight = gaussian_filter(inside, sigma)
    blurred = gaussian_filter(image.astype(np.float32) * inside, sigma)
    out = np.divide(blurred, weight, out=np.zeros_like(blurred), where=weight > 1e-3)
    out[~mask] = 0.0
    return out.astype(np.float32, copy=False)


def contrast_randomiser(groups: str, spacing, lesions: tuple[int, int] = (0, 3)):
    """A run's SynthSeg-style generator (``synth.contrast``) at the model's ``spacing``,
    grouping DLMUSE labels into structures (``groups="dlmuse"``) or drawing each label on
    its own (``"labels"``); ``lesions=(0, 0)`` draws healthy brains only."""
    from napari_medood.synth.contrast import DLMUSE_STRUCTURES, ContrastRandomiser

    grouping = DLMUSE_STRUCTURES if groups == "dlmuse" else None
    return ContrastRandomiser(groups=grouping, spacing=tuple(spacing), lesions=tuple(lesions))


#: voxels drawn around the brain's box in a random-contrast draw (more than the blur reaches)
BOX_MARGIN = 4


def draw_random_contrast(
    randomiser, scan: ModelSpaceScan, rng: np.random.Generator, normalisation: dict | None
):
    """``(image, blob target)``: the whole ``scan`` drawn from its parcellation in a random
    contrast, normalised inside the brain as model space normalises a scan
    (``normalisation``, the card's entry), zero outside.

    Only the brain's box (and a margin for the blur) is drawn: the rest is zero in the end,
    and a 2 mm head's box is about half its volume, so a draw costs about half as much. The
    draws are of the same kind, not the same images as a whole-volume draw: the bias field
    spans the box, and the rescaling before gamma reads the box's range."""
    from napari_medood.preprocessing.intensity import normalise
    from napari_medood.synth._common import tight_box

    normalisation = dict(normalisation or {"method": "percentile"})
    box = tight_box(scan.mask)
    if box is None:
        box = tuple(slice(0, n) for n in scan.mask.shape)
    box = tuple(
        slice(max(0, b.start - BOX_MARGIN), min(n, b.stop + BOX_MARGIN))
        for b, n in zip(box, scan.mask.shape, strict=True)
    )
    mask = scan.mask[box]
    sample = randomiser(scan.labels[box], rng, foreground=mask)
    options = {k: v for k, v in normalisation.items() if k != "method"}
    inside = normalise(
        sample.image, normalisation.get("method", "percentile"), mask, **options
    ).astype(np.float32, copy=False)
    image = np.zeros(scan.mask.shape, np.float32)
    target = np.zeros(scan.mask.shape, np.float32)
    image[box] = np.where(mask, inside, 0.0)
    target[box] = sample.target * mask
    return image, target


def any_contrast(expects: dict) -> dict:
    """A card's ``expects`` for a model trained on randomised contrasts: any MR contrast,
    so no contrast check runs before its maps."""
    return {**expects, "contrast": "any", "deep_to_superficial": None}


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


def random_patch(
    scan: ModelSpaceScan,
    size: Sequence[int],
    rng: np.random.Generator,
    image: np.ndarray | None = None,
    target: np.ndarray | None = None,
    centres: np.ndarray | None = None,
):
    """A random crop of ``size`` (zero-padded where the scan is smaller), biased to hold
    brain: ``(image, mask)``, or ``(image, mask, target)`` when a ``target`` of the scan's
    shape is given; ``image`` replaces the scan's own. The crop is centred on a random
    voxel of ``centres`` (default: the brain mask)."""
    size = np.asarray(size)
    shape = np.asarray(scan.image.shape)
    pad = np.maximum(size - shape, 0)
    image = scan.image if image is None else image
    mask = scan.mask
    centres = mask if centres is None else centres
    if pad.any():
        widths = [(int(p) // 2, int(p) - int(p) // 2) for p in pad]
        image, mask = np.pad(image, widths), np.pad(mask, widths)
        centres = np.pad(centres, widths)
        target = None if target is None else np.pad(target, widths)
        shape = np.asarray(image.shape)
    # centre the crop on a random voxel of centres, clamped to the volume
    brain = np.flatnonzero(centres)
    centre = np.asarray(np.unravel_index(int(brain[rng.integers(len(brain))]), mask.shape))
    start = np.clip(centre - size // 2, 0, shape - size)
    region = tuple(slice(int(a), int(a + s)) for a, s in zip(start, size, strict=True))
    crops = (np.ascontiguousarray(image[region]), np.ascontiguousarray(mask[region]))
    return crops if target is None else (*crops, np.ascontiguousarray(target[region]))


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
        contrast=None,
        p_contrast: float = 0.0,
        normalisation: dict | None = None,
        p_resolution: float = 0.0,
        resolution_blur: Sequence[float] = (0.3, 1.2),
        negatives: Sequence[tuple[np.ndarray, np.ndarray]] = (),
        p_negative: float = 0.0,
    ):
        """``contrast`` (a :class:`~napari_medood.synth.contrast.ContrastRandomiser`) draws
        a share ``p_contrast`` of the samples from the scans' parcellations in a random
        contrast, normalised as model space normalises a scan (``normalisation``, the
        card's entry); their lesion-like blobs are anomalies like the implanted ones. A
        share ``p_resolution`` of the patches is smoothed as a whole first (a Gaussian of
        ``resolution_blur`` voxels, drawn per axis), its target unchanged: a smoother scan
        is not abnormal. A share ``p_negative`` of the samples are ``negatives`` (clean
        patches, image and brain mask, on which a baseline fired: Med-OoD's hard negatives),
        flipped like the others, with an all-zero target."""
        from napari_medood.synth.anomaly import SyntheticAnomaly3D

        self.scans = list(scans)
        self.patch = tuple(int(p) for p in patch)
        self.length = int(length)
        self.seed = int(seed)
        self.p_anomaly = p_anomaly
        self.fpi_fraction = fpi_fraction
        self.flip_p = flip_p
        self.contrast = contrast
        self.p_contrast = float(p_contrast) if contrast is not None else 0.0
        self.normalisation = dict(normalisation or {"method": "percentile"})
        self.p_resolution = float(p_resolution)
        self.resolution_blur = tuple(float(v) for v in resolution_blur)
        self.negatives = list(negatives)
        self.p_negative = float(p_negative) if self.negatives else 0.0
        for image, _ in self.negatives:
            if image.shape != self.patch:
                raise ValueError(f"a hard negative of shape {image.shape}, not {self.patch}")
        if self.p_contrast > 0 and any(scan.labels is None for scan in self.scans):
            raise ValueError("contrast randomisation needs every scan's parcellation (labels)")
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
        # drawn only when there are hard negatives, so a run without them is unchanged
        if self.p_negative > 0 and rng.random() < self.p_negative:
            image, mask = self.negatives[int(rng.integers(len(self.negatives)))]
            if rng.random() < self.flip_p:
                image = image[::-1]
            image = np.ascontiguousarray(image, dtype=np.float32)
            return image, np.zeros_like(image), "hard-negative"
        scan = self.scans[int(rng.integers(len(self.scans)))]
        prefix = ""
        if self.p_contrast > 0 and rng.random() < self.p_contrast:
            image, blobs = self.random_contrast(scan, rng)
            image, mask, base = random_patch(scan, self.patch, rng, image, blobs)
            prefix = "contrast+"
        else:
            image, mask = random_patch(scan, self.patch, rng)
            base = np.zeros_like(image)
        if self.p_resolution > 0 and rng.random() < self.p_resolution:
            image = smoothed(image, mask, rng.uniform(*self.resolution_blur, size=3))
            prefix += "smooth+"
        if rng.random() < self.flip_p:  # left-right (RAS axis 0): brains are near symmetric
            image, mask, base = image[::-1].copy(), mask[::-1].copy(), base[::-1].copy()
        draw = rng.random()
        if draw >= self.p_anomaly or not mask.any():
            # keep the foreign-patch bank fed with normal tissue as well
            self.foreign.bank.push_from(image, rng)
            return image, base, prefix + ("blobs" if base.any() else "normal")
        if draw < self.p_anomaly * self.fpi_fraction:
            kind = str(rng.choice(OUTLIER_KINDS))
            corrupted, label, _ = make_outlier(
                image, kind, rng, foreground=mask, edges=str(rng.choice(EDGE_MODES)), reflect_axis=0
            )
            return corrupted, np.maximum(base, label.astype(np.float32)), prefix + kind
        result = self.foreign.generate(image, rng, foreground=mask)
        kind = result.params.get("kind", "none")
        return result.image, np.maximum(base, result.target), prefix + kind

    def random_contrast(self, scan: ModelSpaceScan, rng: np.random.Generator):
        """``(image, blob target)``: the whole scan drawn in a random contrast
        (:func:`draw_random_contrast`)."""
        return draw_random_contrast(self.contrast, scan, rng, self.normalisation)

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
