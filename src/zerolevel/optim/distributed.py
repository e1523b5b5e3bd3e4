"""This process's place in a (possibly trivial) process group, and the one reduction the loop needs.

Launched with `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in the
environment) or inside an initialised process group, a run is data-parallel: gloo on CPU, NCCL on
CUDA. Everything else is one process of a group of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    """Rank and size of the process group; `owned`: this process created it, so it destroys it."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owned: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the process that decides, evaluates and writes files."""
        return self.rank == 0

    def agree(self, values: list[float], flags: list[bool]) -> tuple[list[float], list[bool]]:
        """The mean over the processes of `values`, and rank 0's `flags`, on every process.

        Decisions that depend on a clock (the budget, time-based checkpoints) are rank 0's, since
        the processes' clocks differ; the mean is summed from values divided by the world size first,
        so that one process reproduces the same arithmetic.
        """
        local = torch.tensor(values, dtype=torch.float64) / self.world
        decisions = torch.tensor([float(flag and self.main) for flag in flags], dtype=torch.float64)
        both = torch.cat([local, decisions])
        if self.world > 1:
            both = both.to(self.device)  # NCCL reduces CUDA tensors only
            dist.all_reduce(both)
            both = both.cpu()
        return both[:len(values)].tolist(), [bool(v > 0) for v in both[len(values):].tolist()]

    def close(self) -> None:
        """Destroy the process group if this process created it."""
        if self.owned:
            dist.destroy_process_group()
            self.owned = False


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device of this process: CUDA when available by default; cuda:LOCAL_RANK under torchrun."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def join(device: torch.device) -> Distributed:
    """Join the initialised process group, or create one from torchrun's environment variables."""
    if dist.is_available() and dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size(), device, False)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), device, True)
