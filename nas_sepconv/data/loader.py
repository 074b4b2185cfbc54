"""The device-resident loader: batches gathered, augmented, normalised and resized on the
split's device, with no per-sample Python."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UserInputError
from .images import stream_batches

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .datasets import Split

__all__ = ["AUGMENTS", "DeviceLoader", "stream_workers"]


#: Augmentations: name -> (zero padding of the random crop, random horizontal flip).
#: ``shift`` is a random translation by up to 2 px; ``crop_flip`` the CIFAR recipe (pad 4,
#: random crop back to size, horizontal flip).
_AUGMENT_PARAMS: dict[str, tuple[int, bool]] = {
    "none": (0, False),
    "shift": (2, False),
    "crop_flip": (4, True),
}
AUGMENTS = tuple(_AUGMENT_PARAMS)


class DeviceLoader:
    """Batches of a :class:`Split`, augmented and normalised on the split's device.

    Each batch is gathered by index from the device-resident tensors; augmentation is one
    vectorised gather (random crop of the zero-padded batch at per-sample offsets, with the
    horizontal flip folded into the column indices), then the batch becomes float, normalised
    with ``mean``/``std`` and, with ``resolution``, resized (bilinear, no antialias).  All random
    draws come from one ``torch.Generator`` seeded with ``seed``: two loaders with the same seed
    yield the same batches, and each new iteration (epoch) draws a new order.

    Args:
        split: the images and labels (moved to ``device`` once, if given).
        batch_size: images per batch.
        mean, std: per-channel normalisation on the [0, 1] scale (``Dataset.mean``/``std``).
        augment: ``"none"``, ``"shift"`` (translate by up to 2 px) or ``"crop_flip"``
            (pad 4, random crop, horizontal flip).
        shuffle: draw a new random order every iteration.
        drop_last: leave out the last, smaller batch.
        seed: seeds the order and the augmentation.
        device: where to put the split; ``None`` keeps its device.
        resolution: resize batches to this height (width scaled alike), for ``resolution_mult``.
        channels_last: return batches in channels-last memory format.
        workers: DataLoader worker processes decoding a streamed split's batches ahead (default:
            :func:`stream_workers`); an in-memory split needs none.
    """

    def __init__(
        self,
        split: Split,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str = "none",
        shuffle: bool,
        drop_last: bool = False,
        seed: int = 0,
        device: str | torch.device | None = None,
        resolution: int | None = None,
        channels_last: bool = False,
        workers: int | None = None,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserInputError("batch_size", f"must be a positive int, got {batch_size!r}", "use e.g. 128")
        if augment not in _AUGMENT_PARAMS:
            raise UserInputError("augment", f"unknown augmentation {augment!r}", f"use one of {', '.join(AUGMENTS)}")
        if resolution is not None and (
            isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1
        ):
            raise UserInputError("resolution", f"must be a positive int or None, got {resolution!r}", "use e.g. 24")
        self.split = split if device is None else split.to(device)
        self.device = self.split.device
        self.batch_size = batch_size
        self.augment = augment
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.resolution = resolution
        self.channels_last = channels_last
        self.workers = stream_workers() if workers is None else workers
        self._pad, self._flip = _AUGMENT_PARAMS[augment]

        channels = self.split.image_shape[0]
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean_t.numel() == 1:
            mean_t = mean_t.expand(channels)
        if std_t.numel() == 1:
            std_t = std_t.expand(channels)
        if mean_t.numel() != channels or std_t.numel() != channels:
            raise UserInputError(
                "dataset.mean", f"has {mean_t.numel()} values for {channels} channels", "give one per channel"
            )
        if bool((std_t <= 0).any()):
            raise UserInputError("dataset.std", "must be positive", "give the per-channel standard deviation")
        # x_norm = x * scale + shift, with uint8 -> [0, 1] folded into the scale.
        unit = 255.0 if self.split.dtype == torch.uint8 else 1.0
        self._scale = (1.0 / (unit * std_t)).reshape(1, -1, 1, 1).to(self.device)
        self._shift = (-mean_t / std_t).reshape(1, -1, 1, 1).to(self.device)
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(int(seed))

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.split)
        order = torch.randperm(n, generator=self._gen, device=self.device) if self.shuffle else None
        batches = [
            torch.arange(b * self.batch_size, min((b + 1) * self.batch_size, n))
            if order is None
            else order[b * self.batch_size : (b + 1) * self.batch_size]
            for b in range(len(self))
        ]
        if not self.split.streamed:
            for idx in batches:
                yield self._prepare(self.split.take(idx)), self.split.y[idx.to(self.split.y.device)]
            return
        rows = [_rows(self.split, idx) for idx in batches]
        decoded = stream_batches(self.split.images, rows, workers=self.workers, pin=self.device.type == "cuda")
        for idx, x in zip(batches, decoded):
            yield self._prepare(x.to(self.device, non_blocking=True)), self.split.y[idx.to(self.split.y.device)]

    def _prepare(self, x: Tensor) -> Tensor:
        if self._pad:
            x = self._random_crop(x)
        x = (x.to(torch.float32) * self._scale).add_(self._shift)  # out of place first: x may be a view of the split
        if self.resolution is not None and x.shape[-2] != self.resolution:
            width = max(1, round(x.shape[-1] * self.resolution / x.shape[-2]))
            x = F.interpolate(x, size=(self.resolution, width), mode="bilinear", align_corners=False, antialias=False)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _random_crop(self, x: Tensor) -> Tensor:
        """Random crop of the zero-padded batch at per-sample offsets, optional flip: one gather."""
        n, c, h, w = x.shape
        p = self._pad
        padded = F.pad(x, (p, p, p, p))
        offsets = torch.randint(0, 2 * p + 1, (2, n, 1), generator=self._gen, device=self.device)
        rows = offsets[0] + torch.arange(h, device=self.device)  # (n, h)
        cols = torch.arange(w, device=self.device).expand(n, w)
        if self._flip:
            flip = torch.rand(n, 1, generator=self._gen, device=self.device) < 0.5
            cols = torch.where(flip, (w - 1) - cols, cols)
        cols = offsets[1] + cols  # (n, w)
        batch = torch.arange(n, device=self.device).view(n, 1, 1, 1)
        chan = torch.arange(c, device=self.device).view(1, c, 1, 1)
        return padded[batch, chan, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def _rows(split: Split, idx: Tensor) -> np.ndarray:
    """Rows of the split's images at positions ``idx``, for the workers that decode them."""
    idx = idx.cpu()
    return (idx if split.rows is None else split.rows[idx]).numpy()


def stream_workers() -> int:
    """DataLoader worker processes decoding a streamed split: half this machine's cores (at least 1,
    at most 8), so that training keeps the rest."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // 2))
