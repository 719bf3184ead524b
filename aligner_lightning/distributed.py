"""The few collective operations the trainer needs, each a no-op in a single process."""

from __future__ import annotations

import gc
from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def gather_objects(obj: Any) -> list:
    """Every rank's ``obj`` (picklable), in rank order."""
    if world_size() == 1:
        return [obj]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(value: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The sum over ranks, on CPU (``device``: where the process group's backend wants the tensor)."""
    if world_size() > 1:
        value = value.to(device)
        dist.all_reduce(value)
    return value.cpu()


def shut_down() -> None:
    """Destroy the process group, if any, before the interpreter finalizes.

    Lightning destroys it at exit only for NCCL. A gloo group left alive is freed during finalization, when its
    worker threads may still release tensors that need the GIL, and the process then aborts (SIGABRT, "terminate
    called without an active exception") after a run that succeeded."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()  # whatever still held the group in a reference cycle goes now, not at finalization
