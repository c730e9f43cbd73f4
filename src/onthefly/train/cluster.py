"""The processes of a run: a single one, or the ranks ``torchrun`` describes (DistributedDataParallel)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__: list[str] = []


@dataclass
class _Cluster:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _cluster(device: str) -> _Cluster:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for, but torch finds no CUDA device "
                         f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); use device='cpu'")
    if world <= 1:
        return _Cluster(device=chosen)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        owns = True
    if chosen.type == "cuda":
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(chosen)
    return _Cluster(rank=dist.get_rank(), world=dist.get_world_size(), device=chosen, owns_group=owns)


# ---------------------------------------------------------------------------
# Evaluation
