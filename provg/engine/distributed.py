"""Data-parallel training with ``torchrun``: process-group set-up (NCCL on GPU, gloo on CPU), samplers
and the exact reduction of evaluation metrics across ranks.

Training data is split with a `ResumableSampler` (a `DistributedSampler` that can start mid-epoch).
Evaluation is split by whole batches (batch ``i`` goes to rank ``i mod world``), so every rank runs the
very batches a single process would; the per-sample results are gathered and put back in dataset order
(`provg.metrics.GroundingEvaluator.merge`), so the metrics equal the single-process ones exactly.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

__all__ = ["Distributed", "ResumableSampler", "ShardedBatches", "resolve_device", "setup_distributed"]


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: ``rank`` of ``world`` processes, on ``device``."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather(self, value: object) -> list[object]:
        """``value`` of every rank, in rank order (``[value]`` without a process group)."""
        if not self.enabled:
            return [value]
        values: list[object] = [None] * self.world
        dist.all_gather_object(values, value)
        return values


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (a GPU when CUDA is available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; CUDA without a
    GPU raises."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use device=cpu")
    return device


def setup_distributed(device: str = "auto") -> Distributed:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), or run
    alone. ``device``: "auto" (a GPU per rank when CUDA is available), "cpu", "cuda" or "cuda:N"."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = resolve_device(device)
    use_cuda = chosen.type == "cuda"
    if use_cuda:
        if world > 1:
            chosen = torch.device("cuda", local_rank)
        if chosen.index is not None:
            torch.cuda.set_device(chosen)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return Distributed(rank, world, local_rank, chosen)


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` (shuffled by ``seed + epoch``, this rank's share) that skips the first
    ``skip`` samples of the epoch: what a run resumed mid-epoch has already trained on."""

    def __init__(self, dataset, world: int, rank: int, seed: int, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip :])

    def __len__(self) -> int:
        return max(self.num_samples - self.skip, 0)


class ShardedBatches(Sampler[list[int]]):
    """Consecutive batches of ``batch_size`` indices over ``length`` samples; this rank keeps batch ``i``
    when ``i % world == rank``."""

    def __init__(self, length: int, batch_size: int, world: int = 1, rank: int = 0) -> None:
        self.batches = [
            list(range(start, min(start + batch_size, length))) for start in range(0, length, batch_size)
        ][rank::world]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
