"""Where :func:`~nas_sepconv.train.fit`'s batches come from, and how it measures accuracy: an
in-memory :class:`~nas_sepconv.data.Dataset` (device-resident, :class:`~nas_sepconv.data.DeviceLoader`)
or the user's own pipeline, any re-iterable of ``(inputs, targets)`` batches (a
``torch.utils.data.DataLoader`` over an ``ImageFolder`` too large for memory), or a map-style
torch dataset, which becomes a DataLoader of global batches of ``TrainConfig.batch_size``.

Under ``torch.distributed`` each process trains on its shard.  A :class:`Dataset`: every
process draws the same order and augmentation (the same seed) and takes its slice of each
global batch of ``TrainConfig.batch_size`` images, so N processes see exactly the batches one
process would.  A DataLoader: its ``DistributedSampler`` shards (``fit`` refuses a loader
without one) and ``TrainConfig.batch_size`` is not used: the loader's batch size is per process.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import abc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..data import Dataset, DeviceLoader, Split
from ..errors import UserInputError
from .checks import check_batch, check_outputs, checked_forward
from .config import TrainConfig
from .distributed import World, check_sharded, set_loader_epoch

# used by fit, evaluate and the losses only (not re-exported by the package)
__all__ = [
    "EVAL_BATCH",
    "DatasetFeed",
    "LoaderFeed",
    "Placement",
    "amp_context",
    "as_loader",
    "batch_counts",
    "check_iterable",
    "is_map_style",
    "split_counts",
]

_FIX = (
    "pass a nas_sepconv Dataset, a DataLoader, a torch map-style dataset, or an iterable of (inputs, targets) "
    "tensor pairs"
)
_NO_VAL = "pass validation batches, or leave val out (val_accuracy is then NaN)"
EVAL_BATCH = 512


@dataclass(frozen=True)
class Placement:
    """Where a run's batches go and how they run there: the device, this process's place under
    torch.distributed, the channels-last memory format and the autocast precision (None: none)."""

    device: torch.device
    world: World
    channels_last: bool = False
    amp_dtype: torch.dtype | None = None


def amp_context(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device``, or a context that does nothing when ``dtype`` is None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def check_iterable(data: Any, field: str, epochs: int) -> None:
    """An iterable of batches that can be iterated once per epoch (refit's accepted forms)."""
    if isinstance(data, (str, bytes, Split)) or not isinstance(data, abc.Iterable):
        raise UserInputError(
            field, f"expected a Dataset, a DataLoader or batches of (inputs, targets), got {type(data).__name__}", _FIX
        )
    if isinstance(data, abc.Iterator) and epochs > 1:
        raise UserInputError(
            field,
            f"is a one-shot iterator ({type(data).__name__}) and train.epochs is {epochs}",
            "pass a DataLoader or a list, which can be iterated once per epoch",
        )


def is_map_style(data: Any) -> bool:
    """A torch map-style dataset (``__getitem__`` and ``__len__``: a TensorDataset, an ImageFolder)."""
    from torch.utils.data import Dataset as TorchDataset
    from torch.utils.data import IterableDataset

    return isinstance(data, TorchDataset) and not isinstance(data, IterableDataset) and hasattr(data, "__len__")


def as_loader(data: Any, cfg: TrainConfig, world: World, *, train: bool) -> Any:
    """A map-style dataset as a DataLoader in the main process: global batches of
    ``cfg.batch_size``, each process its share of every one (a ``DistributedSampler`` seeded with
    ``cfg.seed``, one process or N: the same order); training drops the last partial batch."""
    from torch.utils.data import DataLoader, DistributedSampler

    if cfg.batch_size % world.size:
        raise UserInputError(
            "train.batch_size",
            f"the global batch of {cfg.batch_size} does not split into {world.size} equal shards",
            f"use a multiple of {world.size}",
        )
    sampler = DistributedSampler(data, num_replicas=world.size, rank=world.rank, shuffle=train, seed=cfg.seed)
    return DataLoader(data, batch_size=cfg.batch_size // world.size, sampler=sampler, drop_last=train)


def _pair(batch: Any, i: int, field: str) -> tuple[Tensor, Tensor]:
    """The ``(inputs, targets)`` of batch ``i`` (a tuple or list; DataLoader's default collate
    gives ``[x, y]``; items after the first two are ignored)."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and all(isinstance(t, Tensor) for t in batch[:2]):
        return batch[0], batch[1]
    raise UserInputError(field, f"item {i} is a {type(batch).__name__}, not an (inputs, targets) pair of tensors", _FIX)


def _steps_of(data: Iterable[Any], steps_per_epoch: int | None) -> int:
    if steps_per_epoch is not None:
        if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
            raise UserInputError(
                "steps_per_epoch", f"must be a positive int or None, got {steps_per_epoch!r}", "use e.g. len(loader)"
            )
        return steps_per_epoch
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        raise UserInputError(
            "steps_per_epoch",
            f"the data ({type(data).__name__}) has no len(), and the learning-rate "
            "schedule needs the number of steps per epoch",
            "pass steps_per_epoch=N",
        ) from None
    if n < 1:
        raise UserInputError("data", "has no batches", _FIX)
    return n


class DatasetFeed:
    """An in-memory Dataset on the device; under torch.distributed, this process's slice of
    every global batch, and its share of the evaluation (counts summed across processes)."""

    def __init__(self, data: Dataset, cfg: TrainConfig, resolution: int | None, placement: Placement):
        world, channels_last = placement.world, placement.channels_last
        self.data, self.resolution, self.channels_last, self.amp_dtype, self.world = (
            data.to(placement.device),
            resolution,
            channels_last,
            placement.amp_dtype,
            world,
        )
        n_train = len(self.data.train)
        if n_train == 0:
            raise UserInputError("dataset", "the training split is empty", "use a larger data set or subset")
        self.shard = cfg.batch_size // world.size
        if world.distributed and (cfg.batch_size % world.size or n_train < cfg.batch_size):
            raise UserInputError(
                "train.batch_size",
                f"the global batch of {cfg.batch_size} does not split into {world.size} "
                f"equal shards of a training split of {n_train}",
                f"use a multiple of {world.size} of at most {n_train}",
            )
        self.loader = DeviceLoader(
            self.data.train,
            batch_size=cfg.batch_size,
            mean=self.data.mean,
            std=self.data.std,
            augment=self.data.augment,
            shuffle=True,
            drop_last=n_train >= cfg.batch_size,  # no ragged last batch (a batch of 1 breaks BatchNorm)
            seed=cfg.seed,
            resolution=resolution,
            channels_last=channels_last,
        )
        self.steps_per_epoch = len(self.loader)

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        if not self.world.distributed:
            yield from self.loader
            return
        lo = self.world.rank * self.shard
        for x, y in self.loader:
            yield x[lo : lo + self.shard], y[lo : lo + self.shard]

    def _accuracy(self, model: nn.Module, split: Split) -> float:
        n = len(split)
        if n == 0:
            return float("nan")
        if self.world.distributed:
            split = split.subset(torch.arange(self.world.rank, n, self.world.size))
        correct, _ = split_counts(
            model,
            split,
            self.data,
            resolution=self.resolution,
            amp_dtype=self.amp_dtype,
            channels_last=self.channels_last,
        )
        return self.world.sum(correct).item() / n

    def check_val(self, model: nn.Module) -> None:
        """Nothing to check: a Dataset's splits were checked when it was made."""

    def val_accuracy(self, model: nn.Module) -> float:
        return self._accuracy(model, self.data.val)

    def test_accuracy(self, model: nn.Module) -> float | None:
        return self._accuracy(model, self.data.test) if len(self.data.test) else None


class LoaderFeed:
    """The user's batches (a DataLoader or any re-iterable of (inputs, targets)), moved to the
    device; ``val`` the same or None.  ``steps_per_epoch`` caps an epoch when given."""

    def __init__(
        self,
        data: Iterable[Any],
        val: Iterable[Any] | None,
        cfg: TrainConfig,
        placement: Placement,
        steps_per_epoch: int | None,
    ):
        world = placement.world
        check_iterable(data, "data", cfg.epochs)
        if val is not None:
            check_iterable(val, "val", cfg.epochs)
            if isinstance(val, abc.Sized) and len(val) == 0:
                raise UserInputError("val", "has no batches", _NO_VAL)
        check_sharded(data, world, "data")
        check_sharded(val, world, "val")
        self.data, self.val, self.device, self.channels_last, self.amp_dtype, self.world = (
            data,
            val,
            placement.device,
            placement.channels_last,
            placement.amp_dtype,
            world,
        )
        self.cap = steps_per_epoch
        self.steps_per_epoch = _steps_of(data, steps_per_epoch)
        if world.distributed:  # a process with fewer batches would leave the others waiting forever
            lo, neg_hi = world.min(torch.tensor([self.steps_per_epoch, -self.steps_per_epoch])).tolist()
            if lo != -neg_hi:
                raise UserInputError(
                    "data",
                    f"the processes have {lo} to {-neg_hi} batches per epoch",
                    "give every process as many batches (DistributedSampler and drop_last=True do)",
                )

    def _moved(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        set_loader_epoch(self.data, epoch - 1)
        step = 0
        for step, batch in enumerate(self.data, 1):
            yield self._moved(*_pair(batch, step - 1, "data"))
            if self.cap is not None and step >= self.cap:
                break
        if step == 0:
            raise UserInputError(
                "data",
                f"epoch {epoch} yielded no batches",
                "pass a DataLoader or a list (a generator runs dry after one epoch)",
            )

    def check_val(self, model: nn.Module) -> None:
        """The first validation batch checked before training (checks.py), unless ``val`` is a
        one-shot iterator, whose first batch evaluation then checks."""
        if self.val is None or isinstance(self.val, abc.Iterator):
            return
        _, total = batch_counts(
            model,
            itertools.islice(self.val, 1),
            self.device,
            "val",
            amp_dtype=self.amp_dtype,
            channels_last=self.channels_last,
        )
        if total.item() == 0:
            raise UserInputError("val", "yielded no batches", _NO_VAL)

    def val_accuracy(self, model: nn.Module) -> float:
        if self.val is None:
            return float("nan")
        correct, total = batch_counts(
            model, self.val, self.device, "val", amp_dtype=self.amp_dtype, channels_last=self.channels_last
        )
        counts = self.world.sum(torch.stack([correct, total]))
        if counts[1].item() == 0:
            raise UserInputError("val", "yielded no batches", _NO_VAL)
        return counts[0].item() / counts[1].item()

    def test_accuracy(self, model: nn.Module) -> float | None:
        return None


@torch.no_grad()
def split_counts(
    model: nn.Module,
    split: Split,
    data: Dataset,
    *,
    resolution: int | None,
    batch_size: int = EVAL_BATCH,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[Tensor, int]:
    """Correct predictions (a tensor on the split's device) and images of a split, in eval mode."""
    correct = split_correct(
        model,
        split,
        data,
        resolution=resolution,
        batch_size=batch_size,
        amp_dtype=amp_dtype,
        channels_last=channels_last,
    )
    return correct.sum(), len(split)


@torch.no_grad()
def split_correct(
    model: nn.Module,
    split: Split,
    data: Dataset,
    *,
    resolution: int | None,
    batch_size: int = EVAL_BATCH,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Tensor:
    """Whether each image of a split is predicted right (a bool tensor on the split's device,
    in the split's order), in eval mode."""
    model.eval()
    loader = DeviceLoader(
        split,
        batch_size=batch_size,
        mean=data.mean,
        std=data.std,
        shuffle=False,
        resolution=resolution,
        channels_last=channels_last,
    )
    parts = [torch.zeros(0, dtype=torch.bool, device=split.device)]
    with amp_context(split.device, amp_dtype):
        for x, y in loader:
            parts.append(model(x).argmax(dim=1) == y)
    return torch.cat(parts)


@torch.no_grad()
def batch_counts(
    model: nn.Module,
    batches: Iterable[Any],
    device: torch.device,
    field: str,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[Tensor, Tensor]:
    """Correct predictions and targets over ``(inputs, targets)`` batches (class indices), in eval mode."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = torch.zeros((), dtype=torch.long, device=device)
    with amp_context(device, amp_dtype):
        for i, batch in enumerate(batches):
            x, y = _pair(batch, i, field)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if i == 0:  # the first batch is checked (checks.py): one line for what torch says deep down
                check_batch(x, y, field)
                logits = checked_forward(model, x, field, "the model")
                check_outputs(logits, y, field)
            else:
                logits = model(x)
            correct += (logits.argmax(dim=1) == y).sum()
            total += y.shape[0]
    return correct, total
