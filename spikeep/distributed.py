"""Data-parallel training over torch.distributed, as started by torchrun: NCCL on GPUs, gloo on CPU.

Every process draws the same random numbers and takes its own slice of each global batch; the EP
estimates are averaged, weighted by slice size, with one all-reduce, so the result equals one process
on the same global batch. Collectives run on the device of the run (NCCL takes CUDA tensors only).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist
import torch.nn as nn


class Dist(NamedTuple):
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where this process's collectives run

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU.
    Returns the process's Dist and its device (cuda:LOCAL_RANK on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), device), device


def shard(ddp: Dist, n_global: int) -> Optional[torch.Tensor]:
    """The positions of this process's slice of a global batch of n_global (None: one process)."""
    if ddp.world <= 1:
        return None
    return torch.tensor_split(torch.arange(n_global), ddp.world)[ddp.rank].to(ddp.device)


def average_gradients(net: nn.Module, n_local: int, n_global: int) -> None:
    """.grad <- the mean over the global batch: sum_r n_r * grad_r / n (one all-reduce)."""
    params = list(net.parameters())
    flat = torch.cat([p.grad.reshape(-1) for p in params]) * n_local
    dist.all_reduce(flat)
    flat /= n_global
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def any_process(ddp: Dist, flag: bool) -> bool:
    """True if `flag` holds in any process (one tiny all-reduce; just `flag` in a single process)."""
    if ddp.world <= 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ddp.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_over_processes(ddp: Dist, values: list[float]) -> list[float]:
    """Element-wise sums of `values` over every process (float64, one all-reduce)."""
    if ddp.world <= 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ddp.device)
    dist.all_reduce(t)
    return t.tolist()


def share_run_dir(ddp: Dist, run_dir: Optional[Path]) -> Path:
    """Every process learns the folder that rank 0 made."""
    if ddp.world <= 1:
        return Path(run_dir)
    box = [str(run_dir) if ddp.main else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def barrier(ddp: Dist) -> None:
    if ddp.world > 1:
        dist.barrier()
