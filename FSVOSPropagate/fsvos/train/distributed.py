"""Several processes (GPUs or machines) under ``torchrun``: process group, devices, gathering.

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT) in each process's
environment; :func:`setup` then joins the process group (NCCL on CUDA, Gloo on the CPU)
and gives each process its device (``cuda:LOCAL_RANK`` when the config asks for CUDA).
Without those variables everything is a single process (rank 0 of 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch

from ..errors import FsvosInputError


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # setup() started the process group (and cleanup() ends it)

    @property
    def main(self) -> bool:
        """The process that writes logs, checkpoints and runs validation."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(device: str = "cpu") -> DistInfo:
    """Join the torchrun process group when there is one; pick this process's device."""
    import torch.distributed as dist

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FsvosInputError(f"device {device!r} requested but PyTorch sees no CUDA GPU")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not dist.is_initialized():
        return DistInfo(device=dev)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, device=dev,
                    owns_group=owns)


def cleanup(info: DistInfo) -> None:
    import torch.distributed as dist

    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def gather(info: DistInfo, obj: Any) -> List[Any]:
    """``obj`` of every process, in rank order (a one-item list in a single process)."""
    if not info.distributed:
        return [obj]
    import torch.distributed as dist

    out: List[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` in every process."""
    if not info.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
