"""A run of :func:`~nas_sepconv.train.fit`, started: what it trains with.

:meth:`Run.start` seeds torch, moves the model to its device (channels-last on CUDA), chooses
the precision (bfloat16 or float16 autocast on CUDA), builds the feed of batches (an in-memory
Dataset's or the user's, :mod:`.feeds`), the optimizer (no weight decay on biases and norms) and
the learning-rate schedule, in the process group of ``torchrun`` when there is one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..data import Dataset
from ..errors import UserInputError
from .config import OPTIMIZERS, SCHEDULES, TrainConfig
from .distributed import World
from .feeds import DatasetFeed, LoaderFeed, Placement, as_loader, is_map_style

__all__ = ["Run"]


@dataclass
class Run:
    """What one :func:`~nas_sepconv.train.fit` trains with: the feed of batches, the precision,
    the optimizer and its schedule, the process group."""

    cfg: TrainConfig
    device: torch.device
    world: World
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    feed: DatasetFeed | LoaderFeed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @classmethod
    def start(
        cls,
        model: nn.Module,
        data: Any,
        val: Any,
        steps_per_epoch: int | None,
        cfg: TrainConfig,
        device: torch.device,
        resolution: int | None,
    ) -> Run:
        """Seed, move the model to ``device``, choose the precision, build the feed of batches,
        the optimizer and the schedule."""
        world = World.current()
        cuda = device.type == "cuda"
        if cuda and device.index is None and world.distributed:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.manual_seed(cfg.seed + world.rank)
        channels_last = cuda and cfg.channels_last
        amp_dtype = None
        if cuda and cfg.amp:
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        placement = Placement(device, world, channels_last=channels_last, amp_dtype=amp_dtype)
        feed = _feed(data, val, steps_per_epoch, cfg, resolution, placement)
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        optimizer = _make_optimizer(model, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg, feed.steps_per_epoch))
        return cls(cfg, device, world, amp_dtype, scaler, feed, optimizer, scheduler)


def _feed(
    data: Any,
    val: Any,
    steps_per_epoch: int | None,
    cfg: TrainConfig,
    resolution: int | None,
    placement: Placement,
) -> DatasetFeed | LoaderFeed:
    """The in-memory Dataset's feed, or the user's batches'."""
    if isinstance(data, Dataset):
        for name, value in (("val", val), ("steps_per_epoch", steps_per_epoch)):
            if value is not None:
                raise UserInputError(
                    name,
                    "applies to batches, not to a nas_sepconv Dataset (which has its own "
                    "validation split and batch size)",
                    f"drop {name}=, or pass data as a DataLoader",
                )
        return DatasetFeed(data, cfg, resolution, placement)
    if resolution is not None:
        raise UserInputError(
            "resolution", "applies to a nas_sepconv Dataset, not to batches", "resize in your DataLoader's transforms"
        )
    data, val = (as_loader(d, cfg, placement.world, train=d is data) if is_map_style(d) else d for d in (data, val))
    return LoaderFeed(data, val, cfg, placement, steps_per_epoch)


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    if not decay and not no_decay:
        raise UserInputError("model", "has no trainable parameters", "unfreeze some parameters (requires_grad=True)")
    groups = [
        g
        for g in ({"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0})
        if g["params"]
    ]
    return OPTIMIZERS[cfg.optimizer].build(groups, cfg.lr)


def _lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at each step (``LambdaLR``).  The warm-up is capped at 30% of
    the run, so a short run (one epoch of fine-tuning) still anneals."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(round(cfg.warmup_epochs * steps_per_epoch), int(0.3 * total))

    return SCHEDULES[cfg.schedule].factor(warm, total)
