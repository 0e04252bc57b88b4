"""Data-parallel training: several processes (``torchrun``), one shard of every global batch each.

Every process holds the whole model and visits the same global batches in the same order (the
epoch order depends on the seed and the epoch only). ``shard`` gives each process its part of a
global batch, balanced by atom count; the loss of a shard is normalised by the counts of the
*global* batch (``facet.train.loss.LossNorm``), so the shards' losses and gradients *sum* to
those of the global batch. ``reduce_gradients`` sums the gradients (and the loss) over the
processes with one all-reduce after the backward pass, after which every process takes the same
clipped optimiser step as one process on the whole global batch would, to float rounding.

Why an explicit all-reduce and not ``DistributedDataParallel``: DDP does handle the double
backward of force training (checked with torch 2.13 on gloo, two processes: the same gradients
as one process on the whole batch to 2e-16 relative, no warnings), but (1) a process whose shard
is empty (a last batch smaller than the number of processes) would still have to run a forward
and backward pass for DDP's reducer; (2) a loss that leaves a parameter without gradient makes
DDP stop at the next forward ("Expected to have finished reduction in the prior iteration"):
that happens with ``--energy-weight 0``, since the per-species energy shift does not enter the
forces (checked), and ``find_unused_parameters=True`` costs a graph traversal per step; (3) the
models are small (1e4-1e6 parameters: one all-reduce of at most a few MB per step, next to steps
of 0.1-1 s), so overlapping communication with the backward pass, DDP's advantage, buys little.
Here the gradient buffer and the loss travel in one collective, and a missing gradient is a
zero.

Backends: gloo on the CPU, nccl on CUDA. Processes are started by ``torchrun`` (or
``python -m torch.distributed.run``), which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Parallel:
    """This process's place among the data-parallel processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    comm_device: torch.device = torch.device("cpu")  # where collectives' tensors live

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and logs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over the processes (a new tensor on ``t``'s device; ``t`` itself
        with one process)."""
        if not self.active:
            return t
        x = t.detach().to(self.comm_device, copy=True)
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x.to(t.device)

    def broadcast_parameters(self, model: nn.Module) -> None:
        """Copy rank 0's parameters to every process (same start everywhere)."""
        if not self.active:
            return
        with torch.no_grad():
            for p in model.parameters():
                x = p.detach().to(self.comm_device, copy=True)
                dist.broadcast(x, src=0)
                p.copy_(x.to(p.device))

    def gather(self, obj: Any) -> list[Any] | None:
        """``obj`` of every process, in rank order, on rank 0 (None elsewhere)."""
        if not self.active:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out


def environment() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` as set by torchrun (``(0, 1, 0)`` otherwise)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def start(device: torch.device, timeout_s: float = 1800.0) -> Parallel:
    """Join the process group torchrun set up (nccl for a CUDA ``device``, gloo otherwise);
    one process (no ``WORLD_SIZE`` > 1 in the environment) needs nothing and gets rank 0 of 1."""
    rank, world, local = environment()
    if world <= 1:
        return Parallel()
    cuda = device.type == "cuda"
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": device} if cuda else {}),
        )
    return Parallel(dist.get_rank(), dist.get_world_size(), local,
                    device if cuda else torch.device("cpu"))


def stop() -> None:
    """Leave the process group, if any."""
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: Sequence[int], cost: Sequence[float] | np.ndarray, rank: int,
          world_size: int) -> list[int]:
    """This rank's part of a global batch ``indices`` (frame numbers; ``cost[k]``: the work of
    ``indices[k]``, e.g. its atom count). Largest first to the least-loaded rank (ties: the lower
    rank), a deterministic split that every process computes alike; each part keeps the global
    order. Every rank gets a frame when there are at least ``world_size`` frames of cost > 0."""
    if world_size == 1:
        return list(indices)
    load = [0.0] * world_size
    owner = [0] * len(indices)
    for k in sorted(range(len(indices)), key=lambda k: (-float(cost[k]), k)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owner[k] = r
        load[r] += float(cost[k])
    return [i for i, o in zip(indices, owner, strict=True) if o == rank]


def reduce_gradients(params: Iterable[nn.Parameter], loss: torch.Tensor,
                     parallel: Parallel) -> torch.Tensor:
    """Sum every parameter's gradient and ``loss`` over the processes (one all-reduce of one flat
    buffer). A parameter without a gradient on some process counts as zeros there; one without a
    gradient on every process keeps none (as with one process, so the optimiser skips it alike).
    Returns the summed loss (detached). With one process: ``loss`` detached, gradients
    untouched."""
    if not parallel.active:
        return loss.detach()
    params = list(params)
    dtype = params[0].dtype
    has = [p.grad is not None for p in params]
    flat = torch.cat(
        [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in params]
        + [torch.tensor(has, dtype=dtype, device=params[0].device),
           loss.detach().reshape(1).to(dtype)]
    )
    flat = parallel.all_reduce_sum(flat)
    n_grad = flat[-1 - len(params) : -1].tolist()
    offset = 0
    for p, n in zip(params, n_grad, strict=True):
        g = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
        if n == 0:
            p.grad = None
        elif p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
    return flat[-1]
