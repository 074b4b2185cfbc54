"""Data-parallel training under ``torchrun``: :func:`init_distributed`, :func:`is_main_process`,
and what :func:`~nas_sepconv.train.fit` does when ``torch.distributed`` is initialised.

One process per device, each with a copy of the model; every step each process runs its own
shard of the global batch, and the gradients are averaged across processes (all-reduce) before
the optimizer step, so every copy stays the same: PyTorch's DistributedDataParallel (S. Li et
al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020).

When a process group of more than one process exists, :func:`~nas_sepconv.train.fit` (and
``distill``) wraps the model in DistributedDataParallel (gloo on CPUs, nccl on GPUs).  Each
process trains on its shard: a :class:`~nas_sepconv.data.Dataset`, its slice of every global
batch of ``TrainConfig.batch_size`` (same order and augmentation in every process, so N
processes see the batches one process would); a DataLoader, what its ``DistributedSampler``
gives it (``set_epoch`` is called every epoch; a loader with the default sampler is refused).
Every process must yield as many batches per epoch (``DistributedSampler`` with
``drop_last=True`` on the loader does; ``fit`` compares the ``len()`` of the processes' loaders
and refuses a mismatch), or one would wait for the others forever.  The loss and the accuracy
are summed across processes, so every process returns the same ``FitResult`` (a
``DistributedSampler`` pads the last shard with repeated images, so the validation accuracy
may count up to N − 1 images twice); rank 0 alone shows progress.  A loss that is not finite
in any process stops every process at the same step (checked every 50 steps and at the end
of each epoch).  The teacher is not wrapped: each process runs it,
in eval mode, on its own shard.

BatchNorm: in training each process normalises its shard with the shard's own batch
statistics (smaller batches than one process would see, so not the same training as one
process at the global batch); convert the model with
``torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)`` first to normalise over the global
batch (CUDA only).  DistributedDataParallel copies rank 0's running statistics to every process
before each training forward, and ``fit`` again after each epoch, so every process evaluates
and ends with rank 0's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from ..errors import UserInputError

__all__ = [
    "World",
    "broadcast_buffers",
    "check_sharded",
    "init_distributed",
    "is_main_process",
    "set_loader_epoch",
    "wrap_ddp",
]

#: the environment torchrun sets in every process it starts
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_BACKENDS = ("nccl", "gloo")


def init_distributed(*, backend: str | None = None) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment; return the
    device this process should train on.

    Under ``torchrun --nproc-per-node N script.py`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT`` set): calls ``torch.distributed.init_process_group``
    with ``backend`` (default ``"nccl"`` when CUDA is available, else ``"gloo"``), unless a
    group already exists; with ``"nccl"`` it selects GPU ``LOCAL_RANK`` and returns
    ``cuda:LOCAL_RANK``, with ``"gloo"`` it returns ``cpu``.  Without those variables (a plain
    ``python script.py``) nothing is initialised and the script runs as one process on
    ``cuda`` when available, else ``cpu``.  End the script with
    ``torch.distributed.destroy_process_group()`` when ``torch.distributed.is_initialized()``.
    """
    if backend is not None and backend not in _BACKENDS:
        raise UserInputError("backend", f"unknown backend {backend!r}", f"use one of {', '.join(_BACKENDS)}, or None")
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
    elif all(k in os.environ for k in TORCHRUN_ENV):
        if not dist.is_available():
            raise UserInputError("backend", "this torch build has no torch.distributed", "run without torchrun")
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend)
    else:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def is_main_process() -> bool:
    """True in the process that writes files and shows progress: rank 0, or the only process
    when ``torch.distributed`` is not initialised."""
    return World.current().rank == 0


@dataclass(frozen=True)
class World:
    """This process's rank and the number of processes (0 and 1 without a process group)."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> World:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def sum(self, values: Tensor) -> Tensor:
        """``values`` summed over every process (itself when alone)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def min(self, values: Tensor) -> Tensor:
        return self._reduce(values, dist.ReduceOp.MIN)

    def _reduce(self, values: Tensor, op: Any) -> Tensor:
        if not self.distributed:
            return values
        on = _collective_device(values.device)
        out = values.detach().to(on).clone()
        dist.all_reduce(out, op=op)
        return out.to(values.device)


def _collective_device(device: torch.device) -> torch.device:
    """Where a collective's tensors must live: a GPU for nccl, the CPU for gloo."""
    if dist.get_backend() != "nccl":
        return torch.device("cpu")
    return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (rank 0's parameters and buffers are broadcast to
    every process now, its buffers again before each training forward)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every process, so that all copies
    evaluate, and end, the same."""
    for buf in model.buffers():
        on = _collective_device(buf.device)
        tmp = buf.detach().to(on)
        dist.broadcast(tmp, src=0)
        if tmp is not buf:
            buf.copy_(tmp)


def check_sharded(loader: Any, world: World, field: str) -> None:
    """Refuse a DataLoader that would give every process the same batches: one built with the
    default sampler (sequential or random) rather than a DistributedSampler."""
    from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, SequentialSampler

    if not world.distributed or not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return
    sampler = getattr(loader.batch_sampler, "sampler", loader.sampler)
    if isinstance(sampler, (RandomSampler, SequentialSampler)):
        raise UserInputError(
            field,
            f"is a DataLoader without a DistributedSampler in a group of {world.size} processes: "
            "every process would read the same batches",
            "build it with sampler=DistributedSampler(dataset) (and no shuffle=)",
        )
    if isinstance(sampler, DistributedSampler) and sampler.num_replicas != world.size:
        raise UserInputError(
            field,
            f"its DistributedSampler has num_replicas={sampler.num_replicas} in a group of {world.size} processes",
            "build the DistributedSampler after init_distributed()",
        )


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """``set_epoch(epoch)`` on the loader's samplers that have it (a DistributedSampler draws a
    new order per epoch only when told), and on the loader itself if it has one."""
    seen: list[Any] = []
    batch_sampler = getattr(loader, "batch_sampler", None)
    for obj in (loader, getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
        if obj is not None and callable(getattr(obj, "set_epoch", None)) and not any(obj is s for s in seen):
            obj.set_epoch(epoch)
            seen.append(obj)
