"""Calibration batches: normalised, un-augmented inputs for refits and BatchNorm re-estimation."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import UserInputError
from .datasets import Dataset, Split
from .loader import DeviceLoader

__all__ = ["calibration_batches"]


def calibration_batches(
    dataset: Dataset, *, n: int = 512, batch_size: int = 128, split: str = "train", seed: int = 0
) -> list[Tensor]:
    """Up to ``n`` normalised, un-augmented input batches drawn at random (seeded) from a split.

    For data-aware refits of converted models and :func:`~nas_sepconv.train.reestimate_batchnorm`;
    the batches lie on the split's device.  The images keep their random order, so each batch
    mixes the classes even where the split is stored class by class (ImageFolder trees are):
    BatchNorm re-estimation averages per-batch variances, and single-class batches would leave
    out the variance between classes.
    """
    if split not in ("train", "val", "test"):
        raise UserInputError("split", f"unknown split {split!r}", "use train, val or test")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserInputError("n", f"must be a positive int, got {n!r}", "use e.g. 512")
    source: Split = getattr(dataset, split)
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(len(source), generator=gen)[:n]  # not sorted: see above
    loader = DeviceLoader(source.subset(idx), batch_size=batch_size, mean=dataset.mean, std=dataset.std, shuffle=False)
    return [x for x, _ in loader]
