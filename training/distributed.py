"""Data-parallel training across processes (`torchrun --nproc-per-node N -m rnnserve train …`): PyTorch DDP, gloo on
the CPU and NCCL on GPUs. Every rank reads its own rows of each global batch (its share of the text streams),
gradients are averaged across ranks, and rank 0 alone writes checkpoints and reports."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist

from rnnserve.errors import UsageError
from rnnserve.training.batches import Batch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def leader(self) -> bool:
        """The rank that writes checkpoints and logs."""
        return self.rank == 0

    def rows(self, batch: Batch) -> Batch:
        """This rank's share of a global batch: its contiguous rows (so each keeps its own streams across windows)."""
        if self.size == 1:
            return batch
        share = batch.inputs.size(0) // self.size
        cut = slice(self.rank * share, (self.rank + 1) * share)
        return Batch(**{f.name: _rows(getattr(batch, f.name), cut) for f in fields(Batch)})

    def agreed(self, value: float) -> float:
        """Rank 0's value on every rank (a time budget must end on the same step everywhere)."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(tensor, 0)
        return float(tensor.item())

    def mean(self, value: float) -> float:
        """The mean over ranks (a loss reported for the global batch, not one rank's share)."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.size

    def close(self) -> None:
        if self.size > 1:
            dist.destroy_process_group()


def join(batch_size: int) -> World:
    """The process group torchrun describes in the environment, or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if batch_size % size:
        raise UsageError(f"--batch-size {batch_size} does not split over {size} processes: make it a multiple of {size}")
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(dist.get_rank(), size)


def _rows(value, cut: slice):
    return value[cut] if isinstance(value, torch.Tensor) else value
