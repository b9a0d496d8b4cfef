"""Multi-process training under torchrun: process-group set-up, rank queries and the guard that keeps I/O on rank 0.

``torchrun --standalone --nproc_per_node=N train.py ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; a plain
``python train.py`` sets none and everything here degrades to a single process (rank 0 of 1), as in torchvision's
``utils.init_distributed_mode``. NCCL joins GPU processes (one device each, by local rank), gloo joins CPU ones.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank among world_size processes, local_rank on its host, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' means this process's CUDA device when there is one, else the CPU; 'cuda' takes the local rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda asked but CUDA is not available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"--device {name} asked but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when launched by torchrun; otherwise a single-process DistInfo."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(0, 1, 0, pick_device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, dev)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one process allowed to write files and print results."""
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_gather_objects(obj) -> list:
    """Every rank's obj, in rank order (one item when not distributed)."""
    if not is_dist():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], device: torch.device, op: str = "sum") -> list[float]:
    """Element-wise sum (or "max") of a short list of floats over all ranks (float64 for exact counts)."""
    if not is_dist():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Make every rank's buffers (BatchNorm running statistics and counts) rank src's, in place.

    Why: DDP broadcasts rank 0's buffers at the start of each forward, so after the last step of an epoch every rank
    holds the statistics of its own last batch. Validation, checkpoints and the end-of-run check must see one model.
    A no-op in a single process and for a module without buffers.
    """
    if not is_dist():
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src)


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
