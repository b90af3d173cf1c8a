"""Train the self-supervised 3D U-Net (``medood-train unet``): the mood22 recipe on synthetic
anomalies, through the training spine (``training.spine``: processes, resume, budget, logs,
checkpoints).

What the family brings: its configuration, the network (``init`` starts from another
checkpoint), the patches with synthetic anomalies (with ``contrast_randomisation``, drawn
from the scans' parcellations in random contrasts; with ``ood_supervision``, clean patches
on which a baseline fires, target all zero), the deep-supervision loss, validation by pixel
AP on a labelled set (``training.patch_maps``) and the card.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from napari_medood._progress import CancelledPredicate, ProgressCallback
from napari_medood.errors import MedoodError
from napari_medood.preprocessing.model_space import ModelSpace
from napari_medood.training.config import (
    CONTRAST_GROUPS,
    OodSupervisionSettings,
    StepRunSettings,
    check_ood_supervision,
    check_run_settings,
)
from napari_medood.training.data import model_space
from napari_medood.training.registry import Trainer, TrainResult

FAMILY = "unet3d"


@dataclass
class UNetTrainConfig(StepRunSettings, OodSupervisionSettings):
    """How to train the self-supervised 3D U-Net (mood22 recipe, methods.md R5, R8-R10).

    Data and preprocessing:
        train: normal scans (folder, CSV or BIDS); masks: their brain masks (folder or CSV/
            BIDS column); val: a labelled validation set (MOOD layout, e.g. from medood-synth)
            scored by pixel AP every ``val_interval`` steps to keep the best checkpoint.
        spacing: model voxel size (mm); patch: training patch and inference window (voxels).
        modality, contrast: what the training scans are (``MR``, ``T1w``); written into the
            card so that scans of another kind are flagged before their map is read.
    Anomalies:
        p_anomaly: share of patches that get one; fpi_fraction: share of those that are FPI-style
        outliers (noise, deformation, shift, reflection) rather than foreign patches;
        fp_size: foreign-patch box (voxels); shape_weights: odds of the foreign-patch shapes.
    Contrast randomisation (SynthSeg-style, ``synth.contrast``):
        contrast_randomisation: share of samples drawn from the scans' parcellations (their
            ``masks`` must be parcellations) in a random contrast, with lesion-like blobs, so
            that one model serves T1, T2 and FLAIR; 0 trains on the real scans only.
        contrast_groups: ``dlmuse`` (DLMUSE labels grouped into structures) or ``labels``
            (every label its own structure).
    Resolution augmentation: resolution_augmentation, the share of samples whose whole
        patch is first smoothed by a Gaussian of ``resolution_blur`` voxels (min, max; drawn
        per axis, so thick slices too) before anomalies go in, so that a smoother scan (one
        resampled, registered or acquired at lower resolution) is not abnormal as a whole.
    OoD supervision (Med-OoD hard negatives, ``training.hard_negatives``):
        ood_supervision: share of the samples that are hard negatives (clean healthy patches,
            target all zero), or ``auto`` for the reference's ratio rule; 0 mines nothing.
        ood_baseline: the checkpoint that mines them (default: ``init``), of this model space.
        ood_candidates: clean patches it reads; ood_threshold, ood_min_voxels: it "fires" on
            a patch with at least that many brain voxels above that probability;
        ood_blur: share of the candidates smoothed by ``resolution_blur`` first.
    init: a unet3d checkpoint (name or folder) of the same architecture to start from
        (fine-tuning; a resumed run continues from its own last weights instead).
    Optimisation (mood22: AdamW, wd 1e-5, one-cycle to max_lr 1e-3, AMP on CUDA):
        max_lr, weight_decay; the run's settings (steps, batch_size, precision, budget_s...)
        are the spine's (``training.config.StepRunSettings``).
    """

    name: str = "unet"
    description: str = "self-supervised 3D U-Net (synthetic anomalies)"
    masks: str | None = None
    val: str | None = None
    out: str = "runs/unet"
    spacing: list[float] = field(default_factory=lambda: [2.0, 2.0, 2.0])
    patch: list[int] = field(default_factory=lambda: [96, 96, 96])
    preset: str = "small"
    features: list[int] | None = None
    p_anomaly: float = 0.9
    fpi_fraction: float = 0.3
    fp_size: int = 64
    shape_weights: dict[str, float] = field(
        default_factory=lambda: {"cuboid": 1.0, "sphere": 1.0, "brush": 1.0, "lesion": 2.0}
    )
    flip_p: float = 0.5
    resolution_augmentation: float = 0.0
    resolution_blur: list[float] = field(default_factory=lambda: [0.3, 1.2])
    contrast_randomisation: float = 0.0
    contrast_groups: str = "dlmuse"
    ood_blur: float = 0.0
    init: str | None = None
    max_lr: float = 1e-3
    weight_decay: float = 1e-5
    modality: str = "MR"
    contrast: str = "T1w"

    def validate(self) -> UNetTrainConfig:
        check_run_settings(self, "normal scans")
        if not 0 <= self.p_anomaly <= 1 or not 0 <= self.fpi_fraction <= 1:
            raise MedoodError("p_anomaly and fpi_fraction must be within [0, 1]")
        if not 0 <= self.contrast_randomisation <= 1:
            raise MedoodError("contrast_randomisation must be within [0, 1]")
        if not 0 <= self.resolution_augmentation <= 1:
            raise MedoodError("resolution_augmentation must be within [0, 1]")
        if (
            len(self.resolution_blur) != 2
            or not 0 <= self.resolution_blur[0] <= (self.resolution_blur[1])
        ):
            raise MedoodError(
                f"resolution_blur is [min, max] Gaussian sigma in voxels, got {self.resolution_blur}"
            )
        if self.contrast_groups not in CONTRAST_GROUPS:
            raise MedoodError(
                f"unknown contrast_groups {self.contrast_groups!r}; valid: "
                f"{', '.join(CONTRAST_GROUPS)}"
            )
        check_ood_supervision(self)
        if len(self.spacing) != 3 or len(self.patch) != 3:
            raise MedoodError("spacing and patch need three values")
        from napari_medood.models.unet import PRESETS

        features = self.features or PRESETS.get(self.preset)
        if features is None:
            raise MedoodError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        divisor = 2 ** (len(features) - 1)
        if any(p % divisor for p in self.patch):
            raise MedoodError(
                f"patch sides must be multiples of {divisor} for {len(features)} "
                f"stages, got {self.patch}"
            )
        return self


def start_from(config: UNetTrainConfig, network) -> dict:
    """Load the weights of ``config.init`` (a unet3d checkpoint of the same architecture,
    checked against its sha256) into ``network``; what the card records of it."""
    from napari_medood.models.checkpoint import Checkpoint

    checkpoint = Checkpoint.open(config.init)
    if checkpoint.family != FAMILY:
        raise MedoodError(f"init={config.init}: a {checkpoint.family} checkpoint, not {FAMILY}")
    features = list(checkpoint.card.get("architecture", {}).get("features") or [])
    if features != [int(f) for f in network.features]:
        raise MedoodError(
            f"init={config.init}: its U-Net has features {features}, this run "
            f"{list(network.features)}; set features (or preset) to match"
        )
    network.load_state_dict(checkpoint.load_state())
    return {"model": checkpoint.name, "sha256": checkpoint.card["weights"].get("sha256")}


def hard_negative_mix(
    config: UNetTrainConfig,
    scans,
    space: ModelSpace,
    execution,
    world: int = 1,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> tuple[list, float, dict]:
    """``(hard negatives, their share of the mix, the card's record)`` for
    ``config.ood_supervision``: clean patches of the training scans (a share ``ood_blur``
    of them smoothed) on which the baseline fires. For the ratio rule, ``p_anomaly`` of the
    training patches hold an anomaly."""
    from napari_medood.training.hard_negatives import clean_patch_draw, mine_for_run

    draw = clean_patch_draw(scans, config.patch, config.ood_blur, config.resolution_blur)
    patches, share, record = mine_for_run(
        config,
        FAMILY,
        space.to_card(),
        execution,
        draw,
        lambda count: round(config.p_anomaly * count),
        world,
        progress,
        cancelled,
    )
    record["blur"] = config.ood_blur
    return patches, share, record


def model_card(
    config: UNetTrainConfig,
    features,
    metrics: dict,
    training: dict,
    ds_heads: int | None = None,
    expects: dict | None = None,
) -> dict:
    """The card written beside the weights: its ``preprocessing`` is the model space that
    training applied, which the detector replays."""
    return {
        "name": config.name,
        "detector": FAMILY,
        "description": config.description,
        "method": "self-supervised 3D U-Net on synthetic anomalies (MOOD 2022 winner, mood22)",
        "architecture": {
            "type": "UNet3DDeepSup",
            "features": list(features),
            "in_channels": 1,
            "out_channels": 1,
            "convs_per_stage": 2,
            "ds_heads": ds_heads or min(4, len(features) - 1),
        },
        "preprocessing": {**model_space(config).to_card(), "roi": list(config.patch)},
        "inference": {"overlap": 0.5, "blend": "gaussian", "sample_score": "mean of top 100"},
        "expects": expects or {},
        "training": training,
        "metrics": metrics,
    }


def train_unet(
    config: UNetTrainConfig,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> TrainResult:
    """Train (or resume) as ``config`` says; returns where the best checkpoint is."""
    from napari_medood.models.unet import PRESETS, UNet3DDeepSup, deep_supervision_loss
    from napari_medood.training.data import (
        SyntheticAnomalyPatches,
        any_contrast,
        contrast_randomiser,
        expected_scans,
        prepare_scans,
        training_cases,
    )
    from napari_medood.training.patch_maps import patch_map_plan
    from napari_medood.training.spine import open_run, train_steps

    run = open_run(config)
    execution, world = run.execution, run.world
    features = tuple(config.features or PRESETS[config.preset])
    # precision and memory format as inference runs them; the weights stay float32
    network = UNet3DDeepSup(1, 1, features)
    init = start_from(config, network) if config.init else None
    model = execution.prepare(network, fold_batch_norm=False).train()

    train_cases = training_cases(config.train, masks=config.masks)
    space = model_space(config)
    randomised = config.contrast_randomisation > 0
    scans = prepare_scans(train_cases, space, labels=randomised)
    expects = expected_scans(scans, space, config.modality, config.contrast)
    if randomised:  # one model for every MR contrast: no contrast check before its maps
        expects = any_contrast(expects)
    val_cases = training_cases(config.val) if config.val else []
    negatives, p_negative, ood_record = [], 0.0, None
    if config.ood_supervision not in (0, 0.0):
        negatives, p_negative, ood_record = hard_negative_mix(
            config, scans, space, execution, world, progress, cancelled
        )
    dataset = SyntheticAnomalyPatches(
        scans,
        config.patch,
        config.steps * config.batch_size * world,
        config.seed,
        config.p_anomaly,
        config.fpi_fraction,
        config.fp_size,
        dict(config.shape_weights),
        config.spacing,
        config.flip_p,
        contrast_randomiser(config.contrast_groups, config.spacing) if randomised else None,
        config.contrast_randomisation,
        space.normalisation,
        config.resolution_augmentation,
        config.resolution_blur,
        negatives,
        p_negative,
    )
    training = run.record(train_cases, val_cases, init=init, ood_supervision=ood_record)

    def card_of(metrics: dict, training: dict) -> dict:
        return model_card(config, features, metrics, training, expects=expects)

    plan = patch_map_plan(run, model, dataset, deep_supervision_loss, card_of, training, val_cases)
    return train_steps(run, plan, progress, cancelled)


TRAINER = Trainer(
    config=UNetTrainConfig,
    run=train_unet,
    description="the self-supervised 3D U-Net of the MOOD 2022 winner, on synthetic anomalies "
    "(foreign patches in random and real-lesion shapes, FPI-style outliers), with validation "
    "AP on a labelled synthetic set",
    example_config="configs/brain-t1-unet.yaml",
)
