"""
Processes and devices of a training run, as torchrun starts them.

As in torchvision's references (``utils.init_distributed_mode``): torchrun
sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them the run is one
process. Only rank 0 logs and saves (:class:`RunLog` is silent elsewhere).
"""

from dataclasses import dataclass
import os
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist


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
    """Print a line and append it to the run's log file; silent when ``path`` is None."""

    def __init__(self, path: Optional[Path]):
        self.path = path

    def __call__(self, message: str) -> None:
        """Log one message (rank 0 only: other ranks have no path)."""
        if self.path is None:
            return
        print(message, flush=True)
        with open(self.path, 'a') as stream:
            stream.write(message + '\n')
