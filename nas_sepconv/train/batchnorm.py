"""Re-estimation of BatchNorm running statistics from input batches (after a conversion)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import UserInputError

__all__ = ["reestimate_batchnorm"]

_BatchNorm = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[Tensor], *, device: str | torch.device = "cpu") -> None:
    """Recompute every BatchNorm's running mean and variance from ``batches``.

    Resets the running statistics, runs the batches through the model in train mode without
    gradients with cumulative averaging (``momentum=None``), then restores each layer's momentum
    and leaves the model in eval mode.  Use after converting a model, whose new layers change
    the statistics the BatchNorms downstream see.  ``batches`` may also yield ``(x, y)`` pairs.
    """
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise UserInputError("batches", "is empty", "pass at least one input batch (see data.calibration_batches)")
    device = torch.device(device)
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    model.to(device)
    if not norms:
        model.eval()
        return
    momenta = [m.momentum for m in norms]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for batch in _chain(first, it):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()


def _chain(first: Any, rest: Iterable) -> Iterable:
    yield first
    yield from rest
