"""What every family's training loop shares: processes under torchrun, CSV logs, the device's
name for the card."""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from napari_medood._progress import CancelledPredicate, ProgressCallback


def setup_distributed(device_name: str) -> tuple[int, int, str]:
    """``(rank, world, device)``; opens the process group under torchrun (NCCL on CUDA, gloo
    elsewhere), and gives each process the GPU of its local rank."""
    import torch

    from napari_medood.device import choose_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(device_name)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        # under torchrun each process takes the GPU of its local rank; alone, the one asked for
        index = local_rank if world > 1 or device == "cuda" else int(device.split(":")[1])
        torch.cuda.set_device(index)
        device = f"cuda:{index}"
    return rank, world, device


def distributed_model(model, device: str, world: int):
    """``model`` wrapped for DDP when there are several processes (as it is otherwise)."""
    if world <= 1:
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[torch.cuda.current_device()] if device.startswith("cuda") else None
    )


def training_loader(dataset, config, rank: int, world: int, start_step: int, device: str):
    """The loader of a training run: this process's share of ``dataset``'s items from the
    step it starts at (a resumed run goes on where it stopped), ``config.batch_size`` per
    step, ``config.workers`` workers."""
    from torch.utils.data import DataLoader

    from napari_medood.training.data import OffsetSampler

    sampler = OffsetSampler(len(dataset), rank, world, start_step * config.batch_size)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=device.startswith("cuda"),
        drop_last=True,
    )


def rank_of(world: int) -> int:
    """This process's rank (0 alone)."""
    if world <= 1:
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def from_first_process(world: int, value_of: Callable):
    """``value_of()`` as the first process computes it, on every process (a picklable
    value, sent over the process group); alone, simply ``value_of()``."""
    if world <= 1:
        return value_of()
    import torch.distributed as dist

    box = [value_of() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def finish_distributed(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def write_row(path: Path, row: dict, fields: tuple[str, ...]) -> None:
    """Append ``row`` to the CSV log at ``path`` (header first when the file is new)."""
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def training_record(
    config, execution, train_cases, val_cases, world: int, device: str, **entries
) -> dict:
    """The card's ``training`` entry a patch-trained family shares: precision, data and
    validation names, licence, the recipe (the configuration less where its data and
    outputs are), the processes and device; ``entries`` add the family's own."""
    import torch

    return {
        "precision": execution.precision,
        "data": [c.name for c in train_cases],
        "data_licence": config.data_licence,
        "validation": [c.name for c in val_cases],
        "recipe": {
            k: v
            for k, v in config.to_dict().items()
            if k not in ("train", "masks", "val", "out", "name", "description")
        },
        **entries,
        "processes": world,
        "device": device_description(device),
        "torch": torch.__version__,
    }


def device_description(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()})"


TRAIN_LOG_FIELDS = ("step", "loss", "lr", "seconds", "samples_per_second")
VAL_LOG_FIELDS = ("step", "pixel_ap", "pixel_auroc", "sample_auroc", "cases")


def run_patch_training(
    config,
    model,
    execution,
    dataset,
    loss_of: Callable,
    card_of: Callable[[dict, dict], dict],
    validate: Callable | None,
    training_info: dict,
    where: tuple[int, int, str],
    progress: ProgressCallback | None = None,
    cancelled: CancelledPredicate | None = None,
):
    """The step loop of a family that trains a map network on patches (the U-Net, the
    segmenter): AdamW with a one-cycle schedule, precision as ``execution`` plans it,
    ``config.batch_size`` items of ``dataset`` per step and process.

    Every ``val_interval`` steps the first process scores the network (``validate(module)
    -> metrics`` with ``pixel_ap``) and keeps the best weights as ``OUT/best`` with the card
    ``card_of(metrics, training)``; ``OUT/last`` holds the latest weights and the optimiser,
    scheduler and scaler state (``state.pt``, plain tensors read back with
    ``weights_only=True``), so the same command resumes there. Without ``validate`` the
    final weights are the best. ``where`` is ``(rank, world, device)``."""
    import torch

    from napari_medood._progress import check_cancelled, report
    from napari_medood.errors import MedoodError
    from napari_medood.models.checkpoint import save_checkpoint
    from napari_medood.training.registry import TrainResult

    rank, world, device = where
    is_main = rank == 0
    out = Path(config.out)
    last_dir, best_dir = out / "last", out / "best"
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.max_lr, total_steps=config.steps
    )
    scaler = torch.amp.GradScaler("cuda", enabled=execution.precision == "float16")
    start_step, best_ap, elapsed_before = 0, None, 0.0
    if (last_dir / "state.pt").exists():
        from safetensors.torch import load_file

        from napari_medood.training.hard_negatives import check_same_baseline

        check_same_baseline(last_dir / "card.json", training_info.get("ood_supervision"), out)
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
    loader = training_loader(dataset, config, rank, world, start_step, device)
    writer = None
    if config.tensorboard and is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            writer = None

    def save_last(step: int, seconds: float) -> None:
        save_checkpoint(module, last_dir, card_of({}, {**training_info, "steps_done": step}))
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

    def save_best(metrics: dict, step: int, seconds: float) -> None:
        training = {**training_info, "steps_done": step, "seconds": round(seconds, 1)}
        save_checkpoint(module, best_dir, card_of(metrics, training))

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
            loss = loss_of(outputs, targets)
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
                    if validate is not None:
                        was_training = module.training
                        module.eval()
                        metrics = validate(module)
                        module.train(was_training)
                        write_row(out / "val_log.csv", {"step": step, **metrics}, VAL_LOG_FIELDS)
                        ap = metrics["pixel_ap"] or 0.0
                        if best_ap is None or ap > best_ap:
                            best_ap = ap
                            save_best({"validation": {**metrics, "step": step}}, step, seconds)
                    save_last(step, seconds)
                barrier(world)
    except KeyboardInterrupt:
        if is_main:
            save_last(step, elapsed_before + time.perf_counter() - started)
        raise
    finally:
        if writer is not None:
            writer.close()
    seconds = elapsed_before + time.perf_counter() - started
    if is_main and validate is None:
        save_best({}, step, seconds)
    finish_distributed(world)
    return TrainResult(best_dir if best_dir.exists() else None, best_ap, "pixel AP", step, seconds)
