"""
Processes and devices of a training run, as torchrun starts them.

As in torchvision's references (``utils.init_distributed_mode``): torchrun
sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them the run is one
process. Only rank 0 logs and saves (:class:`RunLog` is silent elsewhere).

A run on N processes with batch B each takes the same optimiser steps as one
process with batch N x B and the same seed (training/README.md says how
close): the ranks cut their batches from one shared order
(:class:`ShardedRandomSampler`), and the default loss is normalised over the
global batch (:class:`GlobalBatchCrossEntropy`). What still differs is what
each rank computes alone: BatchNorm statistics of its own shard (no
SyncBatchNorm on the CPU) and its own dropout and augmentation draws.
"""

from dataclasses import dataclass
import os
from pathlib import Path
import sys
from typing import Iterator, Optional

import torch
from torch import nn
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import Sampler
from tqdm import tqdm


@dataclass(frozen=True)
class DistributedEnv:
    """This process's place in the run and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Return True on rank 0, the process that logs and saves."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Return True when several processes train together (DistributedDataParallel)."""
        return self.world_size > 1


def pick_device(choice: str, local_rank: int) -> torch.device:
    """Resolve ``--device`` (auto, cpu, cuda, cuda:N); plain cuda means this process's GPU."""
    if choice == 'auto':
        choice = 'cuda' if torch.cuda.is_available() else 'cpu'
    if choice == 'cuda':
        return torch.device('cuda', local_rank)
    return torch.device(choice)


def init_distributed(device_choice: str, deterministic: bool) -> DistributedEnv:
    """Read the torchrun variables, join the process group if there is one, set up the device."""
    rank = int(os.environ.get('RANK', 0))
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    device = pick_device(device_choice, local_rank)
    if world_size > 1:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return DistributedEnv(rank, world_size, local_rank, device)


def cleanup_distributed(env: DistributedEnv) -> None:
    """Leave the process group joined by :func:`init_distributed`, if any."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


class RunLog:
    """
    Print a line and append it to the run's log file; silent when ``path`` is None.

    Printed through ``tqdm.write``, which keeps a progress bar on the terminal intact.
    """

    def __init__(self, path: Optional[Path]):
        self.path = path

    def __call__(self, message: str) -> None:
        """Log one message (rank 0 only: other ranks have no path)."""
        if self.path is None:
            return
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()
        with open(self.path, 'a') as stream:
            stream.write(message + '\n')


def average_over_ranks(value: torch.Tensor, env: DistributedEnv) -> torch.Tensor:
    """Return the mean of a scalar tensor over the ranks (itself in one process)."""
    if not env.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / env.world_size


class ShardedRandomSampler(Sampler):
    """
    A rank's part of each global batch, cut from one shuffled order shared by all ranks.

    Every rank draws the same permutation of the ``size`` frames,
    ``torch.randperm`` from a generator seeded with :meth:`set_seed` (the draw
    ``RandomSampler`` makes for one process from the same seed), and of each
    global batch of ``world_size x batch_size`` frames takes its own slice of
    ``batch_size``: rank r the r-th. The ranks' frames are disjoint, and the
    global batches are exactly those of a one-process run with batch
    ``world_size x batch_size`` and the same seed. An incomplete last global
    batch is left out (``drop_last``), as that run's loader leaves it out.
    """

    def __init__(self, size: int, world_size: int, rank: int, batch_size: int):
        self.size, self.world_size, self.rank = size, world_size, rank
        self.batch_size = batch_size
        self.seed = 0

    def set_seed(self, seed: int) -> None:
        """Seed the order of the next passes (the run re-seeds every epoch)."""
        self.seed = seed

    def __iter__(self) -> Iterator[int]:
        """Yield this rank's frame indices, batch by batch."""
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        order = torch.randperm(self.size, generator=generator).tolist()
        step = self.world_size * self.batch_size
        for start in range(0, self.size - step + 1, step):
            first = start + self.rank * self.batch_size
            yield from order[first:first + self.batch_size]

    def __len__(self) -> int:
        """Return how many frames this rank takes per pass."""
        return self.size // (self.world_size * self.batch_size) * self.batch_size


class GlobalBatchCrossEntropy(nn.Module):
    """
    Class-weighted cross entropy (void ignored) normalised over the global batch.

    One process's ``nn.CrossEntropyLoss`` divides the weighted sum over its
    pixels by the sum of their weights. Each rank of a distributed run would
    divide by its own shard's sum, and DistributedDataParallel's average of
    such gradients is not the global batch's gradient when the shards' sums
    differ (class weights, void pixels). This loss divides each rank's
    weighted sum by the sum of the weights of every rank's labelled pixels
    (one all-reduce of a scalar) and multiplies by the world size, which the
    gradient average divides out again: the gradient is that of the global
    batch's weighted mean, as in one process. The value is the rank's share
    times the world size; :func:`average_over_ranks` of it is the global mean.
    """

    def __init__(self, weight: torch.Tensor, ignore_index: int, world_size: int):
        super().__init__()
        self.register_buffer('weight', weight)
        self.ignore_index = ignore_index
        self.world_size = world_size

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Map NxCxHxW logits and NxH'xW' int64 targets (H' = H or H/8) to the scalar loss."""
        total = F.cross_entropy(logits, target, weight=self.weight,
                                ignore_index=self.ignore_index, reduction='sum')
        with torch.no_grad():
            norm = self.weight[target[target != self.ignore_index]].sum()
            dist.all_reduce(norm)
        return total * self.world_size / norm.clamp_min(torch.finfo(norm.dtype).tiny)
