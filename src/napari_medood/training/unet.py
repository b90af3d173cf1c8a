"""Train the self-supervised 3D U-Net: on one CPU, one GPU, or many under ``torchrun`` (DDP).

Every ``val_interval`` steps the first process scores the model on the labelled validation set
(pixel AP, MOOD semantics, brain voxels) and keeps the best weights as a checkpoint
(``OUT/best``: safetensors + card). ``OUT/last`` holds the latest weights plus the optimiser,
scheduler and scaler state (``state.pt``, plain tensors, read back with
``torch.load(weights_only=True)``): a run started again with the same ``out`` resumes there.
Logs: ``OUT/train_log.csv``, ``OUT/val_log.csv`` (and TensorBoard if asked for).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from napari_medood._progress import CancelledPredicate, ProgressCallback, check_cancelled, report
from napari_medood.errors import MedoodError
from napari_medood.execution import plan_execution
from napari_medood.preprocessing.model_space import ModelSpace
from napari_medood.training._loop import (
    device_description,
    distributed_model,
    setup_distributed,
    training_loader,
    write_row,
)
from napari_medood.training.config import UNetTrainConfig
from napari_medood.training.registry import Trainer, TrainResult

FAMILY = "unet3d"

TRAIN_LOG_FIELDS = ("step", "loss", "lr", "seconds", "samples_per_second")


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


def validate(model, card: dict, cases, device: str, precision: str = "auto") -> dict:
    """Pixel AP (MOOD, all brain voxels pooled) and sample AUROC of ``model`` on ``cases``,
    predicted and scored exactly as ``medood-eval`` does."""
    from napari_medood.detectors.unet import UNetDetector
    from napari_medood.evaluation import DetectorPredictions, EvalOptions, evaluate

    was_training = model.training
    model.eval()
    detector = UNetDetector.from_models([model], [card], device=device, precision=precision)
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
    from napari_medood.models.checkpoint import save_checkpoint
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
    is_main = rank == 0
    out = Path(config.out)
    last_dir, best_dir = out / "last", out / "best"
    torch.manual_seed(config.seed)

    features = tuple(config.features or PRESETS[config.preset])
    # precision and memory format as inference runs them: bfloat16 autocast where the CPU
    # computes it, float16 with a gradient scaler on CUDA; the weights stay float32
    execution = plan_execution(device, config.precision if config.amp else "float32")
    network = UNet3DDeepSup(1, 1, features)
    init = start_from(config, network) if config.init else None
    model = execution.prepare(network, fold_batch_norm=False).train()
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.max_lr, total_steps=config.steps
    )
    use_scaler = execution.precision == "float16"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    start_step, best_ap, elapsed_before = 0, None, 0.0
    if (last_dir / "state.pt").exists():
        from safetensors.torch import load_file

        previous = (
            json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
        )
        if previous.get("steps", config.steps) != config.steps:
            raise MedoodError(
                f"{out}: this run was started with steps={previous['steps']}; "
                "resume with the same steps, or train into another folder"
            )

        state = torch.load(last_dir / "state.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(load_file(str(last_dir / "model.safetensors"), device="cpu"))
        model.to(device)
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_step = int(state["step"])
        best_ap = float(state["best_ap"]) if state["best_ap"] >= 0 else None
        elapsed_before = float(state["seconds"])
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1) + "\n")
    model = distributed_model(model, device, world)
    module = getattr(model, "module", model)

    train_cases = discover_cases(config.train, masks=config.masks)
    space = model_space(config)
    randomised = config.contrast_randomisation > 0
    scans = prepare_scans(train_cases, space, labels=randomised)
    expects = expected_scans(scans, space, config.modality, config.contrast)
    if randomised:  # one model for every MR contrast: no contrast check before its maps
        expects = any_contrast(expects)
    val_cases = discover_cases(config.val) if config.val else []
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
    )
    loader = training_loader(dataset, config, rank, world, start_step, device)
    writer = None
    if config.tensorboard and is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            writer = None

    training_info = {
        "precision": execution.precision,
        "data": [c.name for c in train_cases],
        "data_licence": config.data_licence,
        "validation": [c.name for c in val_cases],
        "recipe": {
            k: v
            for k, v in config.to_dict().items()
            if k not in ("train", "masks", "val", "out", "name", "description")
        },
        "init": init,
        "processes": world,
        "device": device_description(device),
        "torch": torch.__version__,
    }

    def save_last(step: int, seconds: float) -> None:
        card = model_card(
            config, features, {}, {**training_info, "steps_done": step}, expects=expects
        )
        save_checkpoint(module, last_dir, card)
        temp = last_dir / "state.pt.part"
        torch.save(
            {
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "best_ap": -1.0 if best_ap is None else best_ap,
                "seconds": seconds,
            },
            temp,
        )
        os.replace(temp, last_dir / "state.pt")

    model.train()
    step = start_step
    started = time.perf_counter()
    window_start, window_samples = time.perf_counter(), 0
    try:
        for images, targets in loader:
            if step >= config.steps:
                break
            check_cancelled(cancelled)
            images = execution.inputs(images)
            targets = targets.to(device, non_blocking=True)
            optimiser.zero_grad(set_to_none=True)
            with execution.autocast():
                outputs = model(images)
            loss = deep_supervision_loss(outputs, targets)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            scheduler.step()
            step += 1
            window_samples += images.shape[0] * world
            if is_main and (step % config.log_interval == 0 or step == config.steps):
                now = time.perf_counter()
                row = {
                    "step": step,
                    "loss": float(loss.detach()),
                    "lr": scheduler.get_last_lr()[0],
                    "seconds": round(elapsed_before + now - started, 2),
                    "samples_per_second": round(window_samples / max(now - window_start, 1e-9), 3),
                }
                write_row(out / "train_log.csv", row, TRAIN_LOG_FIELDS)
                if writer is not None:
                    writer.add_scalar("loss", row["loss"], step)
                window_start, window_samples = now, 0
            report(progress, step, config.steps, f"loss {float(loss.detach()):.4f}")
            if step % config.val_interval == 0 or step == config.steps:
                seconds = elapsed_before + time.perf_counter() - started
                if is_main:
                    if val_cases:
                        card = model_card(config, features, {}, training_info, expects=expects)
                        metrics = validate(module, card, val_cases, device, execution.precision)
                        write_row(
                            out / "val_log.csv",
                            {"step": step, **metrics},
                            ("step", "pixel_ap", "pixel_auroc", "sample_auroc", "cases"),
                        )
                        ap = metrics["pixel_ap"] or 0.0
                        if best_ap is None or ap > best_ap:
                            best_ap = ap
                            save_checkpoint(
                                module,
                                best_dir,
                                model_card(
                                    config,
                                    features,
                                    {"validation": {**metrics, "step": step}},
                                    {
                                        **training_info,
                                        "steps_done": step,
                                        "seconds": round(seconds, 1),
                                    },
                                    expects=expects,
                                ),
                            )
                    save_last(step, seconds)
                if world > 1:
                    import torch.distributed as dist

                    dist.barrier()
    except KeyboardInterrupt:
        if is_main:
            save_last(step, elapsed_before + time.perf_counter() - started)
        raise
    finally:
        if writer is not None:
            writer.close()
    seconds = elapsed_before + time.perf_counter() - started
    if is_main and not val_cases:
        save_checkpoint(
            module,
            best_dir,
            model_card(
                config,
                features,
                {},
                {**training_info, "steps_done": step, "seconds": round(seconds, 1)},
                expects=expects,
            ),
        )
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(best_dir if best_dir.exists() else None, best_ap, "pixel AP", step, seconds)


TRAINER = Trainer(
    config=UNetTrainConfig,
    run=train_unet,
    description="the self-supervised 3D U-Net of the MOOD 2022 winner, on synthetic anomalies "
    "(foreign patches in random and real-lesion shapes, FPI-style outliers), with validation "
    "AP on a labelled synthetic set",
    example_config="configs/brain-t1-unet.yaml",
)
