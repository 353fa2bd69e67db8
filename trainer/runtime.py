"""Process-level setup for a run: threads, device, torch.distributed (torchrun), seeding."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer.errors import ConfigError

__all__ = [
    "auto_threads",
    "Runtime",
    "setup_runtime",
    "teardown_runtime",
    "all_reduce_max",
    "all_reduce_min",
    "all_reduce_mean",
]


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(device: str, num_threads: int) -> Runtime:
    """Pick the device; join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU,
    nccl on GPU, one GPU per local rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but torch sees no GPU (use --device cpu or auto)")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"unknown device {device!r}; expected cpu, cuda, cuda:N or auto")
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    elif world > 1 and device == "cpu":
        # Several CPU ranks on one machine: split the cores instead of oversubscribing them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    elif device == "cpu":
        torch.set_num_threads(auto_threads())
    if device.startswith("cuda") and world > 1:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Runtime(device=dev, rank=rank, world_size=world)


def auto_threads() -> int:
    """CPU threads for a run: the cores that are not already busy (1-minute load average). On a shared
    machine, OpenMP threads that outnumber the free cores spin against other processes; measured here,
    two threads on two loaded cores ran a matmul 6x slower than one thread."""
    n = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return n
    return max(1, min(n, int(n - busy + 0.5)))


def teardown_runtime(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


# dist.ReduceOp.MAX etc. are members of the nested enum RedOpType, which is what all_reduce takes.
def _reduce(rt: Runtime, value: float, op: dist.ReduceOp.RedOpType) -> float:
    if not rt.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=rt.device if rt.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=op)
    return float(t.item())


def all_reduce_max(rt: Runtime, value: float) -> float:
    return _reduce(rt, value, dist.ReduceOp.MAX)


def all_reduce_min(rt: Runtime, value: float) -> float:
    return _reduce(rt, value, dist.ReduceOp.MIN)


def all_reduce_mean(rt: Runtime, value: float) -> float:
    return _reduce(rt, value, dist.ReduceOp.SUM) / rt.world_size
