"""Data-parallel training under torchrun: which process this is, joining the group, and the few collective calls.

A plain `python train.py` has WORLD_SIZE unset and gets DistInfo() (rank 0 of 1): every function here is then a
no-op, and torch.distributed is never imported.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
from torch import nn

from .device import resolve_device


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: rank 0 of 1 for a single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the GPU index on this machine

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun set up (WORLD_SIZE > 1): NCCL on GPUs, Gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_name)
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get("DDPM_DIST_TIMEOUT", "300")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    return DistInfo(rank, world, local_rank), device


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """The module to train: model itself, or under torchrun a DistributedDataParallel wrapper that averages gradients."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def sum_over_processes(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """x summed over every process (in place); x itself in a single-process run. Every process must call it."""
    if info.enabled:
        import torch.distributed as dist

        dist.all_reduce(x)
    return x


def mean_over_processes(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """x averaged over every process (in place); x itself in a single-process run."""
    if info.enabled:
        import torch.distributed as dist

        dist.all_reduce(x)
        x /= info.world_size
    return x


def leave_distributed(info: DistInfo) -> None:
    """Wait for every process (rank 0 may still be writing the last checkpoint), then leave the group."""
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
