"""Data-parallel training under torchrun: one process per GPU (or per CPU share), joined by
PyTorch's own DistributedDataParallel — NCCL between GPUs, gloo between CPU processes.

    torchrun --standalone --nproc_per_node N -m train ...     (docs/training.md)

Without torchrun's environment (WORLD_SIZE unset or 1) there is no process group and every
helper here is the identity, so a single-process run is exactly what it was.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from .device import pick_device

log = logging.getLogger("train")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the job."""
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs progress and writes the split, checkpoints and the model folder."""
        return self.rank == 0

    def on_main(self, compute: Callable[[], Any]) -> Any:
        """`compute()` run once, on rank 0, and its result (or its exception) on every rank: one
        source for facts all ranks must share, such as the split or the resumed state."""
        if not self.enabled:
            return compute()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = (compute(), None)
            except Exception as error:  # every rank raises it, rather than waiting on rank 0 forever
                box[0] = (None, error)
        dist.broadcast_object_list(box, src=0, device=self._comm_device)
        value, error = box[0]
        if error is not None:
            raise error
        return value

    def sum(self, *values: float) -> list[float]:
        """Each value summed over all ranks (loss sums, image counts)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        return t.tolist()

    def gather_rows(self, rows: np.ndarray, n: int) -> np.ndarray:
        """The full array from each rank's shard of an unshuffled DistributedSampler: rank r holds
        rows r, r+N, r+2N, … of the padded list; interleaving restores the order, and the padding
        (repeats of the first rows) is cut off at `n`."""
        if not self.enabled:
            return rows
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, rows)
        full = np.empty((sum(len(p) for p in parts), *rows.shape[1:]), dtype=rows.dtype)
        for r, part in enumerate(parts):
            full[r::self.world_size] = part
        return full[:n]

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def start(device_name: str) -> Ranks:
    """Join the process group that torchrun describes in the environment. Each process drives
    the GPU of its LOCAL_RANK (so `--device cuda` is enough on any number of GPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world_size == 1:
        return Ranks(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return Ranks(rank, world_size, device)


def stop(ranks: Ranks) -> None:
    if ranks.enabled and dist.is_initialized():
        dist.destroy_process_group()


def default_workers() -> int:
    """Loader workers per process: this node's cores shared by the processes torchrun started
    on it, one core left for each process's main loop; at most 16."""
    per_process = (os.cpu_count() or 2) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(16, per_process - 1))
