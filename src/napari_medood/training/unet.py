"""Train the self-supervised 3D U-Net: on one CPU, one GPU, or many under ``torchrun`` (DDP).

Every ``val_interval`` steps the first process scores the model on the labelled validation set
(pixel AP, MOOD semantics, brain voxels) and keeps the best weights as a checkpoint
(``OUT/best``: safetensors + card). ``OUT/last`` holds the latest weights plus the optimiser,
scheduler and scaler state (``state.pt``, plain tensors, read back with
``torch.load(weights_only=True)``): a run started again with the same ``out`` resumes there.
Logs: ``OUT/train_log.csv``, ``OUT/val_log.csv`` (and TensorBoard if asked for).
"""

from __future__ import annotations

from napari_medood._progress import CancelledPredicate, ProgressCallback
from napari_medood.errors import MedoodError
from napari_medood.execution import plan_execution
from napari_medood.preprocessing.model_space import ModelSpace
from napari_medood.training._loop import (
    run_patch_training,
    setup_distributed,
    training_record,
)
from napari_medood.training.config import UNetTrainConfig
from napari_medood.training.registry import Trainer, TrainResult

FAMILY = "unet3d"


def model_space(config: UNetTrainConfig) -> ModelSpace:
    """The model space of a run: what training applies and the card describes."""
    return ModelSpace(spacing=tuple(float(s) for s in config.spacing))


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


def validate(
    model, card: dict, cases, device: str, precision: str = "auto", detector_class=None
) -> dict:
    """Pixel AP (MOOD, all brain voxels pooled) and sample AUROC of ``model`` on ``cases``,
    predicted and scored exactly as ``medood-eval`` does (by ``detector_class``, a map
    detector with ``from_models``; default the U-Net's)."""
    from napari_medood.detectors.unet import UNetDetector
    from napari_medood.evaluation import DetectorPredictions, EvalOptions, evaluate

    was_training = model.training
    model.eval()
    detector = (detector_class or UNetDetector).from_models(
        [model], [card], device=device, precision=precision
    )
    result = evaluate(
        cases, DetectorPredictions(detector), options=EvalOptions(bootstrap=0, fprs=())
    )
    if was_training:
        model.train()
    failed = result.settings["failed"]
    if failed:
        raise MedoodError(f"validation failed on {failed[0]['case']}: {failed[0]['error']}")
    return {
        "pixel_ap": result.pixel.get("ap"),
        "pixel_auroc": result.pixel.get("auroc"),
        "sample_auroc": result.sample.get("auroc"),
        "cases": len(cases),
    }


def train_unet(
    config: UNetTrainConfig,
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
) -> TrainResult:
    """Train (or resume) as ``config`` says; returns where the best checkpoint is."""
    import torch

    from napari_medood.io.cohort import discover_cases
    from napari_medood.models.unet import PRESETS, UNet3DDeepSup, deep_supervision_loss
    from napari_medood.training.data import (
        SyntheticAnomalyPatches,
        any_contrast,
        contrast_randomiser,
        expected_scans,
        prepare_scans,
    )

    config.validate()
    rank, world, device = setup_distributed(config.device)
    torch.manual_seed(config.seed)

    features = tuple(config.features or PRESETS[config.preset])
    # precision and memory format as inference runs them: bfloat16 autocast where the CPU
    # computes it, float16 with a gradient scaler on CUDA; the weights stay float32
    execution = plan_execution(device, config.precision if config.amp else "float32")
    network = UNet3DDeepSup(1, 1, features)
    init = start_from(config, network) if config.init else None
    model = execution.prepare(network, fold_batch_norm=False).train()

    train_cases = discover_cases(config.train, masks=config.masks)
    space = model_space(config)
    randomised = config.contrast_randomisation > 0
    scans = prepare_scans(train_cases, space, labels=randomised)
    expects = expected_scans(scans, space, config.modality, config.contrast)
    if randomised:  # one model for every MR contrast: no contrast check before its maps
        expects = any_contrast(expects)
    val_cases = discover_cases(config.val) if config.val else []
    negatives, p_negative, ood_record = [], 0.0, None
    if config.ood_supervision not in (0, 0.0):
        negatives, p_negative, ood_record = hard_negative_mix(
            config, scans, space, execution, world, progress, cancelled
        )
    length = config.steps * config.batch_size * world
    dataset = SyntheticAnomalyPatches(
        scans,
        config.patch,
        length,
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
    training_info = training_record(
        config,
        execution,
        train_cases,
        val_cases,
        world,
        device,
        init=init,
        ood_supervision=ood_record,
    )

    def card_of(metrics: dict, training: dict) -> dict:
        return model_card(config, features, metrics, training, expects=expects)

    def validate_module(module) -> dict:
        card = card_of({}, training_info)
        return validate(module, card, val_cases, device, execution.precision)

    return run_patch_training(
        config,
        model,
        execution,
        dataset,
        deep_supervision_loss,
        card_of,
        validate_module if val_cases else None,
        training_info,
        (rank, world, device),
        progress,
        cancelled,
    )


TRAINER = Trainer(
    config=UNetTrainConfig,
    run=train_unet,
    description="the self-supervised 3D U-Net of the MOOD 2022 winner, on synthetic anomalies "
    "(foreign patches in random and real-lesion shapes, FPI-style outliers), with validation "
    "AP on a labelled synthetic set",
    example_config="configs/brain-t1-unet.yaml",
)
