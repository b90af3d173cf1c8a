"""What every family's training loop shares: processes under torchrun, CSV logs, the device's
name for the card."""

from __future__ import annotations

import csv
import os
from pathlib import Path


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


def device_description(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()})"
