"""Train the supervised lesion segmenter (``medood-train seg``): MONAI's 3D U-Net on scans with
lesion masks, with Med-OoD's anomaly-free samples as supervision (methods.md section 4).

With ``ood_supervision`` set, a baseline segmenter of the same model space reads candidate
anomaly-free patches:

- the training scans with their lesions removed (``ood_removal``: blacked out as the
  reference does, inpainted from the tissue around them, or both), centred where the lesions
  were, which is where a segmenter confuses tissue with lesion;
- clean patches of healthy scans (``ood_healthy``).

Those where the baseline still predicts lesion are kept and mixed into training with an
all-background target, at a share set by hand or by the reference's ratio rule. The step
loop, checkpoints, resume, budget, logs and DDP are the training spine's
(``training.spine``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_medood._progress import CancelledPredicate, ProgressCallback
from napari_medood.errors import MedoodError, look_up_option
from napari_medood.synth.lesion_implants import POLARITIES
from napari_medood.training.config import (
    CONTRAST_GROUPS,
    OodSupervisionSettings,
    StepRunSettings,
    check_ood_supervision,
    check_run_settings,
)
from napari_medood.training.data import model_space
from napari_medood.training.registry import Trainer, TrainResult

FAMILY = "seg3d"
ARCHITECTURE = "MonaiUNet"
#: how the training scans' lesions are removed for OoD samples
REMOVALS = ("black", "inpaint", "both")


@dataclass
class SegTrainConfig(StepRunSettings, OodSupervisionSettings):
    """How to train the lesion segmenter.

    Data: train: scans with lesion masks (a CSV with Path, Mask and Label columns, or BIDS
        with derivatives); masks: brain masks overriding the cohort's; val: a labelled set
        scored by pixel AP every ``val_interval`` steps to keep the best checkpoint.
    Model space: spacing (mm), patch (training patch and inference window, voxels),
        preset (``small``, ``tiny``) or channels, residual_units.
    Sampling: foreground_p, the share of patches centred on a lesion voxel (nnU-Net's 1/3);
        flip_p (left-right); intensity_jitter, the range of a random scale and shift of the
        normalised intensities.
    OoD supervision (Med-OoD): ood_supervision, the share of the samples that are
        anomaly-free hard negatives, or ``auto`` (the ratio rule); ood_removal: ``black``,
        ``inpaint`` or ``both``; ood_healthy (+ ood_healthy_masks): healthy scans to draw
        patches from as well; ood_baseline: the segmenter that filters them (default
        ``init``); ood_candidates, ood_threshold, ood_min_voxels: how many candidates it
        reads, and when it "fires" (the reference: any voxel above 0.5).
    Optimisation: max_lr, weight_decay, as the U-Net; the run's settings (steps, batch_size,
        precision, budget_s...) are the spine's (``training.config.StepRunSettings``).
    Healthy scans only (``implant_lesions``: [fewest, most] per patch): no lesion masks are
        read; each patch gets real lesion shapes (the shipped bank) implanted, darker or
        brighter than the tissue they replace (``lesion_polarity``: any, darker, brighter;
        ``synth.lesion_implants``); tumour_p, the share of patches that also get a
        tumour-like lesion (a core in an oedema-like halo). contrast_randomisation: the share of patches cut from the
        scan drawn in a random contrast from its parcellation (its mask file, DLMUSE say;
        ``synth.contrast``, as the U-Net's), so that one segmenter reads any MR contrast;
        contrast_groups as for the U-Net.
    """

    name: str = "lesion-seg"
    description: str = "supervised 3D lesion segmenter (MONAI U-Net)"
    masks: str | None = None
    val: str | None = None
    out: str = "runs/seg"
    spacing: list[float] = field(default_factory=lambda: [2.0, 2.0, 2.0])
    patch: list[int] = field(default_factory=lambda: [64, 64, 64])
    preset: str = "small"
    channels: list[int] | None = None
    residual_units: int = 2
    foreground_p: float = 0.33
    flip_p: float = 0.5
    intensity_jitter: float = 0.1
    ood_removal: str = "both"
    ood_healthy: str | None = None
    ood_healthy_masks: str | None = None
    init: str | None = None
    steps: int = 1000
    max_lr: float = 1e-3
    weight_decay: float = 1e-5
    modality: str = "MR"
    contrast: str = "T1w"
    implant_lesions: list[int] | None = None
    lesion_polarity: str = "any"
    tumour_p: float = 0.0
    contrast_randomisation: float = 0.0
    contrast_groups: str = "dlmuse"

    def validate(self) -> SegTrainConfig:
        from napari_medood.models.segmenter import SEGMENTER_PRESETS

        check_run_settings(self, "scans with lesion masks")
        check_ood_supervision(self)
        try:
            look_up_option(self.ood_removal, REMOVALS, "ood_removal")
        except ValueError as exc:
            raise MedoodError(str(exc)) from None
        if not 0 <= self.foreground_p <= 1 or not 0 <= self.flip_p <= 1:
            raise MedoodError("foreground_p and flip_p must be within [0, 1]")
        if len(self.spacing) != 3 or len(self.patch) != 3:
            raise MedoodError("spacing and patch need three values")
        channels = self.channels or SEGMENTER_PRESETS.get(self.preset)
        if channels is None:
            raise MedoodError(
                f"unknown preset {self.preset!r}; valid: {', '.join(SEGMENTER_PRESETS)}"
            )
        divisor = 2 ** (len(channels) - 1)
        if any(p % divisor for p in self.patch):
            raise MedoodError(
                f"patch sides must be multiples of {divisor} for {len(channels)} stages, "
                f"got {self.patch}"
            )
        if self.implant_lesions is not None and (
            len(self.implant_lesions) != 2
            or not 0 <= self.implant_lesions[0] <= self.implant_lesions[1]
        ):
            raise MedoodError(
                f"implant_lesions must be [fewest, most] lesions per patch, not {self.implant_lesions}"
            )
        look_up_option(self.lesion_polarity, POLARITIES, "lesion_polarity")
        if not 0 <= self.contrast_randomisation <= 1 or not 0 <= self.tumour_p <= 1:
            raise MedoodError("contrast_randomisation and tumour_p must be within [0, 1]")
        look_up_option(self.contrast_groups, CONTRAST_GROUPS, "contrast_groups")
        return self

    @property
    def synthetic(self) -> bool:
        """Trained on healthy scans with implanted lesions (no lesion masks read)."""
        return self.implant_lesions is not None


class LesionPatches:
    """A map-style dataset of (patch, lesion target) pairs, item ``i`` drawn from its own
    generator ``[seed, i]``; a share ``p_negative`` are hard negatives (target all zero)."""

    def __init__(
        self,
        scans: Sequence,
        patch: Sequence[int],
        length: int,
        seed: int = 0,
        foreground_p: float = 0.33,
        flip_p: float = 0.5,
        jitter: float = 0.1,
        negatives: Sequence[tuple[np.ndarray, np.ndarray]] = (),
        p_negative: float = 0.0,
        implanter=None,
        lesions: Sequence[int] = (1, 3),
        contrast=None,
        p_contrast: float = 0.0,
        normalisation: dict | None = None,
    ):
        """With an ``implanter`` (``synth.lesion_implants.LesionImplanter``) the scans are
        healthy and each patch gets ``lesions`` (fewest, most) real lesion shapes implanted;
        a share ``p_contrast`` of them is cut from the scan drawn in a random contrast by
        ``contrast`` (a healthy ``ContrastRandomiser``), normalised as ``normalisation``
        (the card's entry) says."""
        self.implanter = implanter
        self.lesions = tuple(int(n) for n in lesions)
        self.contrast = contrast
        self.p_contrast = float(p_contrast) if contrast is not None else 0.0
        self.normalisation = normalisation
        self.scans = list(scans)
        self.patch = tuple(int(p) for p in patch)
        self.length = int(length)
        self.seed = int(seed)
        self.foreground_p = float(foreground_p)
        self.flip_p = float(flip_p)
        self.jitter = float(jitter)
        self.negatives = list(negatives)
        self.p_negative = float(p_negative) if self.negatives else 0.0
        for image, _ in self.negatives:
            if image.shape != self.patch:
                raise ValueError(f"a hard negative of shape {image.shape}, not {self.patch}")

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        from napari_medood.training.data import random_patch

        rng = np.random.default_rng([self.seed, int(index)])
        if self.p_negative > 0 and rng.random() < self.p_negative:
            # the reference leaves its OoD samples unaugmented; a mirror changes no label
            image, _ = self.negatives[int(rng.integers(len(self.negatives)))]
            if rng.random() < self.flip_p:
                image = image[::-1]
            image = np.ascontiguousarray(image, dtype=np.float32)
            return image, np.zeros_like(image), "hard-negative"
        scan = self.scans[int(rng.integers(len(self.scans)))]
        if self.implanter is not None:
            return self._implanted(scan, rng)
        on_lesion = scan.lesion.any() and rng.random() < self.foreground_p
        image, mask, target = random_patch(
            scan,
            self.patch,
            rng,
            target=scan.lesion.astype(np.float32),
            centres=scan.lesion if on_lesion else None,
        )
        return (
            *self._flipped_and_jittered(image, mask, target, rng),
            "lesion" if on_lesion else "any",
        )

    def _flipped_and_jittered(self, image, mask, target, rng: np.random.Generator):
        """``(image, target)`` mirrored left-right (``flip_p``) and the brain's intensities
        scaled and shifted by up to ``jitter``, as float32 arrays."""
        if rng.random() < self.flip_p:
            image, mask, target = image[::-1], mask[::-1], target[::-1]
        if self.jitter > 0:
            scale = 1.0 + rng.uniform(-self.jitter, self.jitter)
            shift = rng.uniform(-self.jitter, self.jitter)
            image = np.where(mask, image * scale + shift, 0.0)
        return (
            np.ascontiguousarray(image, dtype=np.float32),
            np.ascontiguousarray(target, dtype=np.float32),
        )

    def _implanted(self, scan, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
        """A patch of a healthy scan (in its own or a random contrast) with lesions."""
        from napari_medood.training.data import draw_random_contrast, random_patch

        kind = "implanted"
        image = None
        if self.p_contrast > 0 and rng.random() < self.p_contrast:
            image, _ = draw_random_contrast(self.contrast, scan, rng, self.normalisation)
            kind = "contrast+implanted"
        image, mask = random_patch(scan, self.patch, rng, image=image)
        count = int(rng.integers(self.lesions[0], self.lesions[1] + 1))
        image, target, _ = self.implanter(image, mask, count, rng)
        return (*self._flipped_and_jittered(image, mask, target, rng), kind)

    def __getitem__(self, index: int):
        import torch

        image, target, _ = self.sample(index)
        return torch.from_numpy(image)[None], torch.from_numpy(target)[None]


def training_patches(
    config: SegTrainConfig, scans, length: int, seed: int, negatives=(), p_negative=0.0
) -> LesionPatches:
    """The run's patches as ``config`` says: of its scans' own lesions, or of healthy scans
    with lesions implanted (in random contrasts where asked)."""
    implanter, contrast = None, None
    if config.synthetic:
        from napari_medood.synth.lesion_implants import LesionImplanter
        from napari_medood.training.data import contrast_randomiser

        implanter = LesionImplanter(
            polarity=config.lesion_polarity,
            spacing=tuple(config.spacing),
            tumour_p=config.tumour_p,
        )
        if config.contrast_randomisation > 0:
            contrast = contrast_randomiser(config.contrast_groups, config.spacing, lesions=(0, 0))
    return LesionPatches(
        scans,
        config.patch,
        length,
        seed,
        config.foreground_p,
        config.flip_p,
        config.intensity_jitter,
        negatives,
        p_negative,
        implanter=implanter,
        lesions=config.implant_lesions or (1, 3),
        contrast=contrast,
        p_contrast=config.contrast_randomisation,
        normalisation=model_space(config).normalisation,
    )


def model_card(config: SegTrainConfig, network, metrics: dict, training: dict, expects: dict):
    return {
        "name": config.name,
        "detector": FAMILY,
        "description": config.description,
        "method": "supervised 3D lesion segmenter (MONAI U-Net)"
        + (", with Med-OoD anomaly-free supervision" if training.get("ood_supervision") else ""),
        "architecture": {
            "type": ARCHITECTURE,
            "channels": list(network.channels),
            "residual_units": network.residual_units,
            "in_channels": 1,
            "out_channels": 1,
        },
        "preprocessing": {**model_space(config).to_card(), "roi": list(config.patch)},
        "inference": {"overlap": 0.5, "blend": "gaussian", "sample_score": "mean of top 100"},
        "expects": expects,
        "training": training,
        "metrics": metrics,
    }


def ood_candidates(config: SegTrainConfig, scans: Sequence, healthy: Sequence):
    """``draw(rng) -> (image, brain mask)``: a patch of a training scan with its lesions
    removed (centred on where one was), or of a healthy scan. A scan's lesions are removed
    the first time it is drawn and kept for the next draws: a large cohort is not inpainted
    whole for a few dozen candidates."""
    from napari_medood.synth.ood_supervision import remove_objects
    from napari_medood.training.data import random_patch

    modes = ("black", "inpaint") if config.ood_removal == "both" else (config.ood_removal,)
    removable = [
        (index, mode)
        for index, scan in enumerate(scans)
        if scan.lesion is not None and scan.lesion.any()
        for mode in modes
    ]
    pools = [pool for pool in (removable, list(healthy)) if pool]
    if not pools:
        raise MedoodError(
            "ood_supervision needs anomaly-free samples: training scans with lesions to "
            "remove, or healthy scans (ood_healthy)"
        )
    removed: dict[tuple[int, str], np.ndarray] = {}

    def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pool = pools[int(rng.integers(len(pools)))]
        item = pool[int(rng.integers(len(pool)))]
        if isinstance(item, tuple):  # (training scan, removal mode)
            scan = scans[item[0]]
            if item not in removed:
                removed[item] = remove_objects(scan.image, scan.lesion, item[1], scan.mask)
            return random_patch(scan, config.patch, rng, image=removed[item], centres=scan.lesion)
        return random_patch(item, config.patch, rng)

    return draw, {
        "removed_images": len(removable),
        "healthy_scans": len(healthy),
        "modes": modes,
    }


def anomaly_free_mix(config, scans, space, execution, world=1, progress=None, cancelled=None):
    """``(hard negatives, their share, the card's record)`` for ``config.ood_supervision``:
    the candidates of :func:`ood_candidates` on which the baseline fires. For the ratio rule,
    a pass of training patches drawn as training draws them is counted as the reference
    counts its patches: positive when it holds lesion."""
    from napari_medood.io.cohort import discover_cases
    from napari_medood.training.data import prepare_scans
    from napari_medood.training.hard_negatives import mine_for_run

    healthy = []
    if config.ood_healthy:
        healthy = prepare_scans(
            discover_cases(config.ood_healthy, masks=config.ood_healthy_masks), space
        )
    draw, sources = ood_candidates(config, scans, healthy)

    def positives_of(count: int) -> int:
        sample = training_patches(config, scans, count, config.seed + 1)
        return sum(bool(sample.sample(i)[1].any()) for i in range(count))

    patches, share, record = mine_for_run(
        config, FAMILY, space.to_card(), execution, draw, positives_of, world, progress, cancelled
    )
    record.update(
        removal=list(sources["modes"]),
        removed_images=sources["removed_images"],
        healthy_scans=sources["healthy_scans"],
    )
    return patches, share, record


def train_segmenter(
    config: SegTrainConfig,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> TrainResult:
    """Train (or resume) the segmenter as ``config`` says."""
    from monai.losses import DiceCELoss

    from napari_medood.detectors.segmenter import SegmenterDetector
    from napari_medood.models.segmenter import SEGMENTER_PRESETS, LesionSegmenter
    from napari_medood.training.data import (
        any_contrast,
        expected_scans,
        prepare_scans,
        training_cases,
    )
    from napari_medood.training.patch_maps import patch_map_plan
    from napari_medood.training.spine import open_run, train_steps

    run = open_run(config)
    execution, world = run.execution, run.world
    network = LesionSegmenter(
        config.channels or SEGMENTER_PRESETS[config.preset], config.residual_units
    )
    init = start_from(config.init, network) if config.init else None
    model = execution.prepare(network, fold_batch_norm=False).train()

    train_cases = training_cases(config.train, masks=config.masks)
    space = model_space(config)
    scans = prepare_scans(
        train_cases, space, labels=config.contrast_randomisation > 0, lesions=not config.synthetic
    )
    expects = expected_scans(scans, space, config.modality, config.contrast)
    if config.contrast_randomisation > 0:  # any MR contrast: no contrast check before its maps
        expects = any_contrast(expects)
    val_cases = training_cases(config.val) if config.val else []
    negatives, p_negative, ood_record = [], 0.0, None
    if config.ood_supervision not in (0, 0.0):
        negatives, p_negative, ood_record = anomaly_free_mix(
            config, scans, space, execution, world, progress, cancelled
        )
    dataset = training_patches(
        config, scans, config.steps * config.batch_size * world, config.seed, negatives, p_negative
    )
    lesion_ml = [
        round(float(s.lesion.sum()) * float(np.prod(config.spacing)) / 1000, 3)
        for s in scans
        if s.lesion is not None
    ]
    training = run.record(
        train_cases, val_cases, lesion_ml=lesion_ml, init=init, ood_supervision=ood_record
    )
    # batch Dice: a hard negative's empty target does not make its own Dice undefined
    dice_ce = DiceCELoss(sigmoid=True, batch=True)

    def card_of(metrics: dict, training: dict) -> dict:
        return model_card(config, network, metrics, training, expects)

    def loss(outputs, targets):
        return dice_ce(outputs.float(), targets)

    plan = patch_map_plan(
        run, model, dataset, loss, card_of, training, val_cases, SegmenterDetector
    )
    return train_steps(run, plan, progress, cancelled)


def start_from(name: str, network) -> dict:
    """Load a seg3d checkpoint of the same architecture into ``network`` (checked against
    its sha256); what the card records of it."""
    from napari_medood.models.checkpoint import Checkpoint

    checkpoint = Checkpoint.open(name)
    if checkpoint.family != FAMILY:
        raise MedoodError(f"init={name}: a {checkpoint.family} checkpoint, not {FAMILY}")
    channels = list(checkpoint.card.get("architecture", {}).get("channels") or [])
    if channels != list(network.channels):
        raise MedoodError(
            f"init={name}: its segmenter has channels {channels}, this run "
            f"{list(network.channels)}; set channels (or preset) to match"
        )
    network.load_state_dict(checkpoint.load_state())
    return {"model": checkpoint.name, "sha256": checkpoint.card["weights"].get("sha256")}


TRAINER = Trainer(
    config=SegTrainConfig,
    run=train_segmenter,
    description="a supervised 3D lesion segmenter (MONAI U-Net) on scans with lesion masks, "
    "with Med-OoD anomaly-free samples as supervision (--ood-supervision)",
    example_config="configs/brain-t1-seg.yaml",
)
