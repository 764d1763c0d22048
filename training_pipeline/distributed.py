"""Process group, device and rank for single-process and ``torchrun`` runs alike.

``torchrun`` (or any launcher setting ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and the rendezvous
variables) gives several processes; without it the run is one process and every collective is
a no-op. NCCL on GPUs, gloo on CPU.

Imports only torch and ``shared.errors`` (no pydantic, no config module): the GPU check
(``benchmarks/gpu_check.py``) runs the real loop on GPU boxes without the store's packages.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from shared.errors import ConfigurationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process with side effects (checkpoints, MLflow, files)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return [float(v) for v in tensor.tolist()]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel when there are several processes: gradients are averaged."""
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


def choose_device(preference: str, local_rank: int = 0) -> torch.device:
    """CUDA when present (one GPU per local rank), else CPU; ``cuda`` without a GPU is an error.

    ``preference`` is ``FTI_DEVICE`` (``training_pipeline.config.Device``, a string enum)."""
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if preference == "cuda":
        raise ConfigurationError("FTI_DEVICE=cuda but no CUDA device is available")
    return torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)  # set by torchrun; read only
    return default if value is None else int(value)


@contextmanager
def distributed_context(preference: str) -> Iterator[DistContext]:
    """Join the process group when launched by torchrun; leave it on the way out."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = choose_device(preference, local_rank)
    if world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        log.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, device)
    try:
        yield DistContext(rank, world_size, local_rank, device)
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
