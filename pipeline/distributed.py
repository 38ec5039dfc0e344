"""Multi-process helpers (torchrun / accelerate launch): who writes, waiting for each other, global sums.

Every helper is a no-op in a single process, so the same code runs either way.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def setup() -> None:
    """Make Accelerate and the Trainer see a multi-process CPU launch as one (they only do when asked for
    the CPU), and start the process group early so the runner can synchronise around stages."""
    if not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    if world_size() > 1 and not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(minutes=timeout_minutes()))


TIMEOUT_VARIABLE = "RLHF_DIST_TIMEOUT_MINUTES"
DEFAULT_TIMEOUT_MINUTES = 60.0  # NCCL's own 10 minutes is too short for a main-process-only phase at 7B


def timeout_minutes() -> float:
    """How long a collective may wait for the slowest process (`rlhf run --dist-timeout`)."""
    return float(os.environ.get(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_MINUTES))


def broadcast_from_main(value):
    """The main process's `value` on every process (any picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def ensure_process_group() -> None:
    """A process group even in a single process (a store in memory): what torch's sharding needs to run,
    so a sharded run can also resume, or be tested, on one process."""
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def launcher_mixed_precision() -> str | None:
    """The mixed precision `accelerate launch` was given (its launcher exports it to every process), if the
    run was started that way."""
    return os.environ.get("ACCELERATE_MIXED_PRECISION")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    return world_size() > 1 and dist.is_initialized()


def barrier() -> None:
    if active():
        dist.barrier()


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a copy; float64 on the CPU for gloo, exact enough for counts and statistics)."""
    if not active():
        return tensor
    out = tensor.detach().to("cpu" if dist.get_backend() == "gloo" else tensor.device, torch.float64).clone()
    dist.all_reduce(out)
    return out.to(tensor.device, tensor.dtype)


def all_max(value: float) -> float:
    """The largest of the processes' values (each process passes its own)."""
    if not active():
        return value
    out = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return float(out)


def all_true(condition: bool) -> bool:
    """True on every process when the condition holds on every process (a decision all of them share)."""
    return all_sum(torch.tensor(float(condition))).item() == world_size()


def shard(n: int) -> slice:
    """This process's contiguous part of n items (earlier ranks get one more when n does not divide)."""
    size, extra = divmod(n, world_size())
    start = rank() * size + min(rank(), extra)
    return slice(start, start + size + (rank() < extra))


def sync_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over processes in one flat all-reduce. A process without rows contributes zeros, so it
    takes part in every collective and nobody waits forever."""
    if not active():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g)
        offset += g.numel()
