"""Splitting work across processes: ``torchrun`` ranks, or scheduler array tasks.

Prediction (:class:`Shard`): under ``torchrun`` (``WORLD_SIZE`` > 1) a gloo process group is
opened so ranks can share small results (failure lists, metrics); with
``--part-id/--num-parts`` (SLURM arrays and the like) the parts never talk to each other.

Training (:func:`open_processes` and the helpers after it): one process per device under
torchrun, NCCL between GPUs and gloo elsewhere, the model wrapped for DDP. torch is imported
only when a group is opened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from napari_medood.errors import MedoodError


@dataclass(frozen=True)
class Shard:
    """This process's share of the work: ``items[rank::world]``."""

    rank: int = 0
    world: int = 1
    process_group: bool = False

    def take(self, items: list) -> list:
        return items[self.rank :: self.world]

    @property
    def label(self) -> str:
        return f"part {self.rank + 1}/{self.world}" if self.world > 1 else ""


def check_parts(part_id: int | None, num_parts: int | None) -> None:
    """Refuse a ``--part-id``/``--num-parts`` pair that names no part (before any work)."""
    if num_parts is None and part_id is None:
        return
    if num_parts is None or part_id is None:
        raise MedoodError("give both --part-id and --num-parts")
    if num_parts < 1:
        raise MedoodError(f"--num-parts must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise MedoodError(f"--part-id must be within 0..{num_parts - 1}, got {part_id}")


def shard_from(part_id: int | None = None, num_parts: int | None = None) -> Shard:
    """The shard given explicitly, else from torchrun's ``RANK``/``WORLD_SIZE`` (opening a
    gloo process group), else the whole job."""
    if num_parts is not None or part_id is not None:
        check_parts(part_id, num_parts)
        return Shard(part_id, num_parts)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard()
    rank = int(os.environ.get("RANK", "0"))
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return Shard(rank, world, True)


def gather(value: Any, shard: Shard) -> list[Any]:
    """Every rank's ``value`` (a list of one without a process group)."""
    if not shard.process_group:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * shard.world
    dist.all_gather_object(values, value)
    return values


def finish(shard: Shard) -> None:
    """Close the process group this module opened."""
    if shard.process_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# -- training processes ---------------------------------------------------------------


def open_processes(device: str) -> tuple[int, int, str]:
    """``(rank, world, device)`` of a training process on ``device`` (as ``device`` chose
    it); opens the process group under torchrun (NCCL on CUDA, gloo elsewhere) and gives
    each process the GPU of its local rank."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
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


def rank_of(world: int) -> int:
    """This process's rank (0 alone)."""
    if world <= 1:
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def from_first_process(world: int, value_of):
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


def finish_processes(world: int) -> None:
    """Wait for every training process, then close the group."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
