"""Data-parallel training over torch.distributed, as started by torchrun (one or several machines):
NCCL for CUDA tensors, gloo for CPU ones.

Sharded: each epoch's permutation P of the training set (the same in every process: one seeded
generator) gives process r the samples P[r::world], which it alone holds on its device, augments and
masks (per-sample random numbers keyed by seed, epoch and sample index: spikeep.data.keyed_uniform).
Iteration i of process r takes its samples [i*B, (i+1)*B) (B = train.batch_size per process), so the
global batch i is P[i*G:(i+1)*G] with G = B * world whatever the number of processes; the estimates are
averaged over it, weighted by slice size, with one all-reduce. So one process with batch G and world
processes with batch G / world train the same (up to the order of float sums). Evaluation is sharded the
same way and reduced. Only process 0 reads or writes the run folder: a resumed run's config and
checkpoint reach the others by broadcast, so machines need no shared filesystem.
"""
from __future__ import annotations

import math
import os
from typing import Callable, NamedTuple, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn


T = TypeVar("T")


class Dist(NamedTuple):
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where this process's collectives run

    @property
    def main(self) -> bool:
        return self.rank == 0


def join_process_group() -> Dist:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), before the run's device is
    known (a resumed run learns its config from process 0): gloo for CPU tensors, and NCCL for CUDA
    ones where CUDA is available. One process: Dist() and nothing else."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def place(procs: Dist, device: torch.device) -> tuple[Dist, torch.device]:
    """The process's device (cuda:LOCAL_RANK for a CUDA run of several processes), where its
    collectives run from now on."""
    if procs.world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return procs._replace(device=device), device


class ProcessZeroError(RuntimeError):
    """Raised in the other processes when process 0 stopped on an error (its message included)."""


def on_main(procs: Dist, fn: Callable[[], T]) -> T:
    """fn() run by process 0 alone (e.g. reading or making the run folder), its result broadcast to
    every process; an error there stops every process (ProcessZeroError elsewhere) instead of leaving
    them waiting at the next collective."""
    if procs.world <= 1:
        return fn()
    box: list = [None]
    error = None
    if procs.main:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # noqa: BLE001 (re-raised below, after the others know)
            error, box[0] = e, ("error", f"{type(e).__name__}: {e}")
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0][0] == "error":
        raise ProcessZeroError(f"process 0 stopped: {box[0][1]}")
    return box[0][1]


def epoch_shard(perm: torch.Tensor, procs: Dist) -> torch.Tensor:
    """This process's samples of an epoch's permutation: P[rank::world] (all of it in one process)."""
    return perm if procs.world <= 1 else perm[procs.rank::procs.world]


def batches_per_epoch(n_train: int, batch_size: int, procs: Dist) -> int:
    """Iterations of an epoch, the same in every process (the longest shard's)."""
    return math.ceil(math.ceil(n_train / procs.world) / batch_size)


def global_batch_size(n_train: int, batch_size: int, procs: Dist, i: int) -> int:
    """How many samples iteration i averages over in all processes together (shard r has
    len(range(r, n_train, world)) samples; its batch i the part of them in [i*B, (i+1)*B))."""
    sizes = (len(range(r, n_train, procs.world)) for r in range(procs.world))
    return sum(min(max(n - i * batch_size, 0), batch_size) for n in sizes)


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


def any_process(procs: Dist, flag: bool) -> bool:
    """True if `flag` holds in any process (one tiny all-reduce; just `flag` in a single process)."""
    if procs.world <= 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=procs.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sum_over_processes(procs: Dist, values: list[float]) -> list[float]:
    """Element-wise sums of `values` over every process (float64, one all-reduce)."""
    if procs.world <= 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=procs.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(procs: Dist) -> None:
    if procs.world > 1:
        dist.barrier()
